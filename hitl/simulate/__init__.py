"""``hitl simulate``: the whole loop in rounds on a labelled data set, with simulated annotators."""

from hitl.simulate.loop import RunResult, SimulatedAnnotators, SimulationConfig, run
from hitl.simulate.report import labels_to_reach, write_html

__all__ = ["RunResult", "SimulatedAnnotators", "SimulationConfig", "labels_to_reach", "run", "write_html"]
