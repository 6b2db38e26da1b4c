"""What the simulated runs' results share: the review share and their JSON-ready figures."""

from __future__ import annotations

from typing import Any, ClassVar


class RunFigures:
    """Mixed into a run's result dataclass with ``items``, ``reviewed`` and the per-item ``pool``
    and ``final`` (left out of the figures); ``KIND`` names the run's shape."""

    KIND: ClassVar[str]
    items: int
    reviewed: int

    @property
    def review_share(self) -> float:
        return self.reviewed / self.items if self.items else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The figures, JSON-ready (without the per-item ``pool`` and ``final``)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("pool", "final")}
        return out | {"review_share": self.review_share, "kind": self.KIND}
