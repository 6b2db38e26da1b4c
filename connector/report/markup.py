"""HTML building blocks of the report: its stylesheet, number and time formatting, tables, and the
"no data yet" line. Every text from the store goes through :func:`esc` (:func:`html.escape`)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:980px;margin:0 auto;padding:1.5em 2em 3em;background:#fff}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #e3e3e3;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}
nav ol{columns:2;font-size:.95em}nav a{color:#1f5fa8;text-decoration:none}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.current td{background:#eef6ee;font-weight:600}tr.flagged td{background:#fdecea}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.8em;font-weight:600;color:#fff}
.badge.current{background:#2e7d32}.badge.flagged{background:#c62828}.badge.failed{background:#c62828}
.nodata{color:#777;font-style:italic}.meta{color:#666;font-size:.85em}
.note{background:#f6f8fa;border-left:3px solid #1f5fa8;padding:.5em .8em;font-size:.9em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
"""

NO_DATA = {
    "calibration": "the retrain job (`hitl scheduler once retrain`) keeps held-out predictions of each candidate",
    "accuracy": "the retrain job (`hitl scheduler once retrain`) keeps held-out predictions of each candidate",
    "thresholds": "the threshold review (`hitl scheduler once thresholds`, also run after each retraining)",
    "counts": "the metrics job (`hitl scheduler once metrics`) records label counts each run",
    "agreement": "the metrics job (`hitl scheduler once metrics`) once two annotators answered shared items",
    "quality": "the metrics job (`hitl scheduler once metrics`) once annotations came back",
    "versions": "`hitl train` or the retrain job saves model versions",
}


def finite(value: Any) -> float | None:
    """A finite float, or ``None`` (for None, NaN, text...)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or a dash."""
    v = finite(value)
    return "–" if v is None else f"{v:.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A share as a percentage, or a dash."""
    v = finite(value)
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def or_dash(value: Any) -> Any:
    """``value``, or a dash for ``None``."""
    return "–" if value is None else value


def esc(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value))


def mpl_text(text: Any) -> str:
    """Text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def naive_utc(when: datetime) -> datetime:
    """UTC without tzinfo (SQLite hands back naive UTC times; keep them comparable)."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def stamp(when: datetime | str | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM UTC`` (a dash when missing; unparsable text as is)."""
    if when is None or when == "":
        return "–"
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            return when
    return f"{naive_utc(when):%Y-%m-%d %H:%M} UTC"


def nodata(what: str) -> str:
    """The line a section without data shows, naming what produces its data."""
    return f'<p class="nodata">no data yet: {esc(what)}</p>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, row_classes: Sequence[str] | None = None,
          numeric: Sequence[int] = ()) -> str:
    """A table from cells that are already HTML (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = row_classes[r] if row_classes else ""
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

