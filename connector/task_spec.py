"""The task file: one description drives the model, the router and both annotation tools.

A TOML file, e.g.::

    name = "reviews"
    tool = "label_studio"            # or "argilla": switching tools is this one setting
    text_field = "text"
    labels = ["fresh", "rotten"]
    multi_label = false
    instructions = "Is the review fresh or rotten?"
    overlap = 1                      # answers wanted per item

    [label_studio]
    url = "http://127.0.0.1:8080"
    api_key_env = "HITL_LS_API_KEY"

    [routing]
    accept_threshold = 0.95
    spot_check_rate = 0.05

Several classification controls on the same text (e.g. sentiment and topics) are declared as
``[[controls]]`` tables instead of ``labels``/``multi_label``; the first is the primary one (routing,
thresholds and stopping follow it), the others are predicted, pulled, consolidated and retrained::

    [[controls]]
    name = "sentiment"               # Label Studio from_name / Argilla question name
    labels = ["positive", "negative"]

    [[controls]]
    name = "topics"
    labels = ["politics", "sport", "tech"]
    multi_label = true

    [[controls]]                     # entity spans (a <Labels> / an Argilla SpanQuestion); first: an NER
                                     # project, routed on its span task score
    name = "entities"
    kind = "spans"
    labels = ["PER", "ORG", "LOC"]
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector.consolidation import ConsensusPolicy
from connector.decisions import DecisionPolicy
from connector.labeling_config import (
    build_choices_config,
    build_controls_config,
    check_control_name,
    parse_labeling_config,
)
from connector.redaction import RedactionPolicy
from connector.retraining import RetrainPolicy
from connector.review_kinds import OUTCOMES, ExtractionSpec, Kind, build_review_config
from connector.stopping import StoppingPolicy


class _Target(BaseModel):
    url: str
    api_key_env: str

    def api_key(self) -> str:
        """The key, read from the environment variable the task file names (never from the file)."""
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(f"set {self.api_key_env} to the {type(self).__name__[:-6]} API key")
        return key


class LabelStudioTarget(_Target):
    url: str = "http://127.0.0.1:8080"
    api_key_env: str = "HITL_LS_API_KEY"
    project_title: str | None = None
    label_config: str | None = Field(None, description="use this config instead of generating one")


class ArgillaTarget(_Target):
    url: str = "http://127.0.0.1:6900"
    api_key_env: str = "HITL_ARGILLA_API_KEY"
    workspace: str = "default"
    dataset: str | None = None


class ThresholdPolicy(BaseModel):
    """How the auto-accept threshold adapts (the task file's ``[thresholds]`` table): keep the
    error among auto-accepted items under ``target_error`` with confidence ``1 - delta``, and the
    review rate inside ``review_band`` when the data allows.

    The guarantee needs evidence that represents the items the threshold accepts: with
    ``evidence = "random"`` (the default) only labels of randomly drawn items count (the seed set,
    and the router's ``audit_share``). Certifying ``target_error`` needs at least about
    ``log(delta) / log(1 - target_error)`` error-free such labels above the threshold (59 for 5 %,
    149 for 2 % at ``delta = 0.05``); until then nothing is auto-accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapt: bool = True
    target_error: float = Field(0.02, gt=0.0, lt=1.0)
    delta: float = Field(0.05, gt=0.0, lt=1.0)
    review_band: tuple[float, float] = (0.0, 1.0)
    min_evidence: int = Field(30, ge=1, description="labeled items needed before the threshold moves")
    min_n: int = Field(50, ge=1, description="labeled items at or above a threshold before it is tested; "
                                             "chosen without looking at correctness, so the bound stays valid")
    evidence: Literal["random", "all"] = Field(
        "random", description="'random': only labels of items drawn uniformly at random (the seed set and the "
                              "router's audits), an unbiased sample of the items a threshold accepts; 'all': every "
                              "honest prediction on a human label (biased towards hard items when a strategy picks)")
    per_label: bool = Field(False, description="a label set: a threshold per label (connector/thresholds_sets.py) "
                                               "instead of one on the least sure label; same bound, measured to "
                                               "accept no more sets on calibrated labels (benchmarks/RESULTS.md)")


#: a reserved key of a prediction's ``probabilities``: the task's other controls (``sync.service``)
CONTROLS_KEY = "@controls"


class ControlSpec(BaseModel):
    """One classification control of a task: ``name`` is the Label Studio ``from_name`` and the
    Argilla question name; ``labels`` its labels; ``multi_label`` whether it takes a set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    labels: list[str]
    multi_label: bool = False
    kind: Literal["choices", "spans"] = Field("choices", description="'choices' (a <Choices> / label question) or "
                                                                       "'spans' (entity spans: a <Labels> / SpanQuestion)")
    instructions: str = ""

    @model_validator(mode="after")
    def _check(self) -> ControlSpec:
        check_control_name(self.name)
        if self.kind == "spans" and self.multi_label:
            raise ValueError(f"control {self.name!r}: a spans control is not multi_label (each span has one label)")
        least = 1 if self.multi_label or self.kind == "spans" else 2
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < least:
            raise ValueError(f"control {self.name!r}: labels must be distinct, at least "
                             f"{'one' if self.multi_label else 'two'}")
        if CONTROLS_KEY in self.labels:
            raise ValueError(f"control {self.name!r}: {CONTROLS_KEY!r} is a reserved name")
        return self


class TaskSpec(BaseModel):
    """What is being labelled, by whom, and where."""

    name: str
    kind: Kind = Field("label", description="'label' (classification), 'extraction' (structured outputs against a "
                                            "JSON Schema) or 'answer' (generated answers): the two review kinds' "
                                            "labels are the outcomes approve / correct / reject")
    tool: Literal["label_studio", "argilla"] = "label_studio"
    text_field: str = "text"
    labels: list[str] = Field(default_factory=list)
    multi_label: bool = False
    controls: list[ControlSpec] = Field(default_factory=list, description="several classification controls; the "
                                                                           "first is the primary one (labels and "
                                                                           "multi_label are its own)")
    instructions: str = ""
    overlap: int = Field(1, ge=1)
    show_suggestion: Literal["except_checks", "always", "never"] = Field(
        "except_checks", description="when annotators see the model's label: 'except_checks' hides it on gold "
                                     "items, audits and spot checks, and on a random blind_share of the others")
    blind_share: float = Field(0.5, ge=0.0, le=1.0, description="share of ordinary items shown without a "
                                                              "suggestion under 'except_checks', so that a "
                                                              "missing suggestion does not mark a check")
    label_studio: LabelStudioTarget = LabelStudioTarget()
    argilla: ArgillaTarget = ArgillaTarget()
    routing: dict[str, Any] = Field(default_factory=dict, description="RoutingPolicy fields")
    consensus: ConsensusPolicy = ConsensusPolicy()
    retraining: RetrainPolicy = RetrainPolicy()
    stopping: StoppingPolicy = StoppingPolicy()
    thresholds: ThresholdPolicy = ThresholdPolicy()
    decisions: DecisionPolicy = DecisionPolicy()
    extraction: ExtractionSpec | None = None
    redaction: RedactionPolicy = RedactionPolicy()

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v: list[str]) -> list[str]:
        if v and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("labels must be at least two distinct strings")
        return v

    @model_validator(mode="after")
    def _labels_of_kind(self) -> TaskSpec:
        if self.controls:
            first = self.controls[0]
            if self.kind != "label":
                raise ValueError(f"controls: a '{self.kind}' task has no classification controls")
            if len({c.name for c in self.controls}) != len(self.controls):
                raise ValueError("controls: each control needs a name of its own")
            if self.labels and self.labels != first.labels:
                raise ValueError("labels: with [[controls]], the labels are the first control's; leave them out")
            if "multi_label" in self.model_fields_set and self.multi_label != first.multi_label:
                raise ValueError("multi_label: with [[controls]], it is the first control's; leave it out")
            self.labels, self.multi_label = list(first.labels), first.multi_label
        if CONTROLS_KEY in self.labels:
            raise ValueError(f"labels: {CONTROLS_KEY!r} is a reserved name")
        if self.kind == "label":
            if not self.labels:
                raise ValueError("labels: a 'label' task needs at least two distinct labels")
        elif self.labels and tuple(self.labels) != OUTCOMES:
            raise ValueError(f"labels: a '{self.kind}' task's labels are the outcomes {list(OUTCOMES)}; leave them out")
        else:
            self.labels = list(OUTCOMES)
        if self.kind == "extraction" and self.extraction is None:
            raise ValueError("an 'extraction' task needs an [extraction] table with its JSON Schema")
        return self

    @property
    def project_name(self) -> str:
        if self.tool == "argilla":
            return self.argilla.dataset or self.name
        return self.label_studio.project_title or self.name

    @property
    def control_specs(self) -> list[ControlSpec]:
        """The task's classification controls, the primary one first: ``controls`` when declared,
        else one control named as the labeling config's first ``<Choices>`` over ``labels``."""
        if self.controls:
            return list(self.controls)
        name = parse_labeling_config(self.label_config())[0].from_name if self.kind == "label" else "label"
        return [ControlSpec.model_construct(name=name, labels=list(self.labels), multi_label=self.multi_label,
                                            kind="choices", instructions=self.instructions)]

    @property
    def primary(self) -> ControlSpec:
        """The control routing, thresholds and stopping follow."""
        return self.control_specs[0]

    @property
    def spans_primary(self) -> bool:
        """Whether the routed control is an entity-span one (an NER project): its items route on the
        span task score, settle by span majority and retrain a span tagger."""
        return self.kind == "label" and self.primary.kind == "spans"

    @property
    def secondary(self) -> list[ControlSpec]:
        """The other controls: predicted, pulled, consolidated and retrained, never routed on."""
        return self.control_specs[1:]

    def model_dir(self, control: ControlSpec) -> str | None:
        """Where ``control``'s model versions live under the model root: ``None`` for the model
        root itself (a single-label primary control, the layout of a one-control task), else the
        control's name under ``controls/`` (:mod:`connector.control_models`)."""
        if control.name == self.primary.name and not control.multi_label and control.kind == "choices":
            return None
        return control.name

    def label_config(self) -> str:
        """The Label Studio labeling config: the task file's own, else the kind's (``build_review_config``
        for the review kinds, one ``<Choices>`` per control, or over the labels, for ``label``)."""
        if self.label_studio.label_config:
            return self.label_studio.label_config
        if self.kind != "label":
            return build_review_config(self)
        if self.controls:
            return build_controls_config(text_field=self.text_field, controls=[
                (c.name, c.labels, c.multi_label, c.instructions) for c in self.controls if c.kind == "choices"],
                instructions=self.instructions,
                spans=[(c.name, c.labels, c.instructions) for c in self.controls if c.kind == "spans"])
        return build_choices_config(
            text_field=self.text_field, labels=self.labels, multiple=self.multi_label, instructions=self.instructions)

    @classmethod
    def load(cls, path: str | Path) -> TaskSpec:
        with open(path, "rb") as fh:
            return cls.model_validate(tomllib.load(fh))
