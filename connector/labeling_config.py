"""Parse a Label Studio labeling config into what the models need, and say what they will predict.

Supports ``<Choices>`` (``choice="single"``, ``"single-radio"`` or ``"multiple"``), several of them
in one config, and ``<Labels>`` (entity spans), attached by ``toName`` to a ``<Text>`` or
``<HyperText>`` object tag whose ``value`` is ``$field``. :func:`parse_labeling_config` returns the
``<Choices>`` (and raises when there is none); :func:`parse_config` returns every control, those it
cannot serve with the reason; :func:`coverage` checks a config against a model's heads, control by
control, in sentences a person reads.

A config with a DTD (``<!DOCTYPE ...>``) is refused before any entity is declared: Label Studio's
configs have none, and a DTD is how entity tricks come in. The stdlib parser (expat 2.5 here)
already fetches no external entity and stops the billion laughs at its amplification limit, but
an older libexpat expands it; refusing the DTD does not depend on the version.
"""

from __future__ import annotations

import hashlib
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

TEXT_OBJECT_TAGS = frozenset({"Text", "HyperText"})


class LabelingConfigError(ValueError):
    """The labeling config is not one this backend can serve."""


#: what a control's name may be to name its model directory (``connector.control_models``)
CONTROL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def check_control_name(name: str) -> str:
    """``name`` when it can name a directory (letters, digits, ``_``, ``.``, ``-``; not starting with a
    dot), else ``ValueError``: a control's name never reaches outside the model root's ``controls/``."""
    if not isinstance(name, str) or not CONTROL_NAME_RE.match(name):
        raise ValueError(f"control name {name!r} cannot name a model directory: use letters, digits, "
                         "'_', '.' and '-' (not first), at most 128 characters")
    return name


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that stops the parse at ``<!DOCTYPE``, before its internal subset is read."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise LabelingConfigError(f"labeling config declares a DTD (<!DOCTYPE {name}>); Label Studio configs "
                                  "have none, and entity declarations are refused")


#: Control tags this backend predicts (bound to a text object tag).
SERVED_CONTROL_TAGS = frozenset({"Choices", "Labels"})
#: Tags with a ``toName`` that are not controls of their own.
_NOT_CONTROLS = frozenset({"Relations", "Relation"})
HeadKind = Literal["choices", "multilabel", "spans"]


@dataclass(frozen=True)
class ChoicesControl:
    """One ``<Choices>`` control bound to a text field.

    ``labels`` are the values Label Studio stores in results (a ``<Choice>``'s ``alias`` when
    it has one, else its ``value``), in config order.
    """

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    multiple: bool

    def result(self, choices: list[str]) -> dict:
        """One Label Studio result item selecting ``choices``."""
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": list(choices)},
        }


def parse_labeling_config(config: str) -> list[ChoicesControl]:
    """Return every ``<Choices>`` control of ``config`` bound to a text object tag (document order).

    Raises :class:`LabelingConfigError` with the reason when the XML is malformed or there is no
    usable ``<Choices>``/text pair. :func:`parse_config` reads every control.
    """
    return _choices_or_raise(parse_config(config))


def first_text_control(config: str) -> ChoicesControl | LabelsControl:
    """The config's first ``<Choices>`` bound to a text, else its first ``<Labels>`` (a span-only
    config); :class:`LabelingConfigError` when it has neither."""
    parsed = parse_config(config)
    if parsed.choices:
        return parsed.choices[0]
    if parsed.spans:
        return parsed.spans[0]
    return _choices_or_raise(parsed)[0]


def _choices_or_raise(parsed: LabelingConfig) -> list[ChoicesControl]:
    if not parsed.choices:
        problems = [u.reason for u in parsed.unsupported if u.tag == "Choices"]
        detail = "; ".join(problems) or "no <Choices> tag bound to a <Text> tag"
        raise LabelingConfigError(f"unsupported labeling config: {detail}")
    return list(parsed.choices)


def _parse_xml(config: str) -> ET.Element:
    if not isinstance(config, str) or not config.strip():
        raise LabelingConfigError("labeling config is empty")
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(config)
        return parser.close()
    except ET.ParseError as exc:
        raise LabelingConfigError(f"labeling config is not valid XML: {exc}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in the JSON): no XML character
        raise LabelingConfigError(f"labeling config is not valid XML: {exc.reason} at character {exc.start}") from exc


def parse_config(config: str) -> LabelingConfig:
    """Every control tag of ``config``: the ``<Choices>`` and ``<Labels>`` bound to a text tag, and
    every other control (a tag with ``toName``) with the reason it is not served.

    Raises :class:`LabelingConfigError` only when the config cannot be read (empty, not XML, a
    DTD); a config with no usable control parses, and :func:`coverage` says so.
    """
    root = _parse_xml(config)
    objects: dict[str, ET.Element] = {el.get("name"): el for el in root.iter() if el.get("name") and el.tag in TEXT_OBJECT_TAGS}
    choices: list[ChoicesControl] = []
    spans: list[LabelsControl] = []
    unsupported: list[UnsupportedControl] = []

    def skip(el: ET.Element, reason: str) -> None:
        unsupported.append(UnsupportedControl(el.tag, el.get("name"), el.get("toName"), reason))

    for el in root.iter():
        if el.tag not in SERVED_CONTROL_TAGS:
            if el.get("toName") is not None and el.tag not in _NOT_CONTROLS:
                skip(el, f"a <{el.tag}> control; this backend predicts only <Choices> and <Labels> on a text")
            continue
        what = f"<{el.tag}>"
        from_name, to_name = el.get("name"), el.get("toName")
        if not from_name or not to_name:
            skip(el, f"a {what} tag lacks name or toName")
            continue
        if el.tag == "Choices" and el.get("perRegion", "").lower() == "true":
            skip(el, f"<Choices name={from_name!r}> is per-region (it classifies spans, not the text)")
            continue
        target = objects.get(to_name.split(",")[0])
        if target is None:
            skip(el, f"{what[:-1]} name={from_name!r}> points to {to_name!r}, which is not a <Text> or <HyperText> tag")
            continue
        value = target.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            skip(el, f"<{target.tag} name={to_name!r}> has value={value!r}; expected '$field'")
            continue
        item = "Choice" if el.tag == "Choices" else "Label"
        labels = tuple(c.get("alias") or c.get("value") for c in el.iter(item) if c.get("alias") or c.get("value"))
        if not labels:
            dynamic = " (dynamic, from the task data)" if el.get("value", "").startswith("$") else ""
            skip(el, f"{what[:-1]} name={from_name!r}> has no <{item}> values{dynamic}")
            continue
        if el.tag == "Choices":
            choices.append(ChoicesControl(from_name=from_name, to_name=target.get("name"), data_key=value[1:],
                                          labels=labels, multiple=el.get("choice", "single") == "multiple"))
        else:
            spans.append(LabelsControl(from_name=from_name, to_name=target.get("name"), data_key=value[1:],
                                       labels=labels))
    return LabelingConfig(tuple(choices), tuple(spans), tuple(unsupported))


@dataclass(frozen=True)
class LabelsControl:
    """One ``<Labels>`` control (entity spans) on a text field; ``labels`` as Label Studio stores
    them in a ``labels`` result (a ``<Label>``'s ``alias`` when it has one, else its ``value``)."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class UnsupportedControl:
    """A control tag this backend does not predict, and why."""

    tag: str
    name: str | None
    to_name: str | None
    reason: str


@dataclass(frozen=True)
class LabelingConfig:
    """Every control of a labeling config (:func:`parse_config`), in document order per kind."""

    choices: tuple[ChoicesControl, ...] = ()
    spans: tuple[LabelsControl, ...] = ()
    unsupported: tuple[UnsupportedControl, ...] = ()

    @property
    def controls(self) -> tuple[ChoicesControl | LabelsControl, ...]:
        """The controls that can be predicted: the choices, then the spans."""
        return (*self.choices, *self.spans)

    def control(self, name: str) -> ChoicesControl | LabelsControl:
        """The served control named ``name`` (``KeyError`` naming those there are)."""
        for c in self.controls:
            if c.from_name == name:
                return c
        raise KeyError(f"no <Choices> or <Labels> named {name!r}; there are {[c.from_name for c in self.controls]}")


class ConfigCache:
    """Parsed configs by the SHA-256 of their text, least recently used dropped past ``maxsize``.

    Keyed by the digest, not the text: a config can be megabytes, and the cache would hold every
    one it saw. Errors are not cached (nor, for :meth:`get`, a config without a usable
    ``<Choices>``). Thread-safe.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, LabelingConfig] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def digests(self) -> list[bytes]:
        with self._lock:
            return list(self._entries)

    def get(self, config: str) -> ChoicesControl:
        """The first usable ``<Choices>`` control of ``config`` (see :func:`parse_labeling_config`)."""
        return self._lookup(config, require_choices=True).choices[0]

    def get_config(self, config: str) -> LabelingConfig:
        """Every control of ``config`` (see :func:`parse_config`)."""
        return self._lookup(config, require_choices=False)

    def _lookup(self, config: str, *, require_choices: bool) -> LabelingConfig:
        if not isinstance(config, str):
            return parse_config(config)  # raises with the reason
        key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        parsed = parse_config(config)
        if require_choices:
            _choices_or_raise(parsed)
        with self._lock:
            self._entries[key] = parsed
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return parsed


# -- coverage: what a model will and will not predict for a config -----------------------------

@dataclass(frozen=True)
class Head:
    """What a model predicts for one control: ``kind`` ``"choices"`` (one label: a softmax head),
    ``"multilabel"`` (a set: yes/no heads) or ``"spans"`` (entities), over ``labels``."""

    kind: HeadKind
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ControlCoverage:
    """One control of a config against the model: ``predicted`` says whether results will come for
    it; ``labels`` the config labels that can be predicted, ``missing`` those the model lacks,
    ``unused`` the model's labels the config lacks; ``notes`` what else to know; ``reason`` why
    nothing comes (``""`` when something does)."""

    name: str | None
    tag: str
    to_name: str | None
    predicted: bool
    labels: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reason: str = ""

    def sentence(self) -> str:
        """One line a person reads."""
        who = f"<{self.tag}{f' name={self.name!r}' if self.name else ''}>"
        if not self.predicted:
            return f"{who}: not predicted: {self.reason}"
        n = len(self.labels)
        parts = [f"{who}: predicted ({n} label{'s' if n != 1 else ''}: {', '.join(self.labels)})"]
        if self.missing:
            parts.append(f"never predicted, the model lacks them: {', '.join(map(repr, self.missing))}")
        if self.unused:
            parts.append(f"model labels the config lacks (never returned): {', '.join(map(repr, self.unused))}")
        return "; ".join(parts + list(self.notes))


@dataclass(frozen=True)
class Coverage:
    """What a model will and will not predict for a labeling config, control by control."""

    controls: tuple[ControlCoverage, ...]

    @property
    def predicted(self) -> tuple[ControlCoverage, ...]:
        return tuple(c for c in self.controls if c.predicted)

    @property
    def ok(self) -> bool:
        """Whether anything at all will be predicted."""
        return bool(self.predicted)

    def warnings(self) -> list[str]:
        """One line per control that is not (fully) served."""
        return [c.sentence() for c in self.controls
                if not c.predicted or c.missing or c.unused or c.notes]

    def summary(self) -> str:
        """A human sentence: what will be predicted, and what will not and why."""
        if not self.controls:
            return "nothing will be predicted: the config has no control tag (no tag with toName)"
        served = [c.name or c.tag for c in self.predicted]
        head = (f"will predict {len(served)} of {len(self.controls)} control{'s' if len(self.controls) != 1 else ''} "
                f"({', '.join(served)})" if served else "nothing will be predicted")
        rest = self.warnings()
        return head + (": " + "; ".join(rest) if rest else "")


def coverage(config: str | LabelingConfig, heads: Mapping[str, Head]) -> Coverage:
    """Each control of ``config`` against a model's ``heads`` (control name -> :class:`Head`; a
    single-head model passes its one head under the name of the control it serves). Never empty
    when the config has controls: a control without a head, an unknown control type, a label the
    model lacks each get a line saying so."""
    parsed = parse_config(config) if isinstance(config, str) else config
    out: list[ControlCoverage] = []
    for control in (*parsed.choices, *parsed.spans):
        is_span = isinstance(control, LabelsControl)
        tag = "Labels" if is_span else "Choices"
        head = heads.get(control.from_name)
        if head is None:
            known = ", ".join(sorted(heads)) or "none"
            out.append(ControlCoverage(control.from_name, tag, control.to_name, False,
                                       missing=control.labels,
                                       reason=f"the model has no head for this control (its heads: {known})"))
            continue
        wanted = "spans" if is_span else ("multilabel" if control.multiple else "choices")
        if (head.kind == "spans") != is_span:
            out.append(ControlCoverage(control.from_name, tag, control.to_name, False, missing=control.labels,
                                       reason=f"the model's head for it predicts {head.kind}, the control takes {wanted}"))
            continue
        known = set(head.labels)
        usable = tuple(label for label in control.labels if label in known)
        missing = tuple(label for label in control.labels if label not in known)
        unused = tuple(label for label in head.labels if label not in set(control.labels))
        notes: list[str] = []
        if head.kind != wanted:
            notes.append("the control takes several choices but the model picks one" if wanted == "multilabel"
                         else "the control takes one choice but the model's head predicts a set: the most "
                              "probable label is returned")
        if not usable:
            out.append(ControlCoverage(control.from_name, tag, control.to_name, False, missing=missing,
                                       unused=unused, reason=f"none of its labels is known to the model "
                                                             f"(the model knows {', '.join(head.labels) or 'none'})"))
            continue
        out.append(ControlCoverage(control.from_name, tag, control.to_name, True, usable, missing, unused,
                                   tuple(notes)))
    for u in parsed.unsupported:
        out.append(ControlCoverage(u.name, u.tag, u.to_name, False, reason=u.reason))
    return Coverage(tuple(out))


def build_choices_config(*, text_field: str, labels: list[str], multiple: bool = False,
                         instructions: str = "", from_name: str = "label", to_name: str = "text") -> str:
    """A Label Studio labeling config for text classification, as the task file describes it."""
    from xml.sax.saxutils import quoteattr

    if not labels:
        raise LabelingConfigError("a classification task needs at least one label")
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    header = f"  <Header value={quoteattr(instructions)}/>\n" if instructions else ""
    return (f"<View>\n{header}  <Text name={quoteattr(to_name)} value={quoteattr('$' + text_field)}/>\n"
            f"  <Choices name={quoteattr(from_name)} toName={quoteattr(to_name)} "
            f"choice=\"{'multiple' if multiple else 'single-radio'}\" showInLine=\"true\">\n{choices}\n"
            f"  </Choices>\n</View>")


def build_controls_config(*, text_field: str, controls: list[tuple[str, list[str], bool, str]],
                          instructions: str = "", to_name: str = "text",
                          spans: list[tuple[str, list[str], str]] | None = None) -> str:
    """A Label Studio labeling config with one ``<Choices>`` per control on one text: ``controls``
    are ``(name, labels, multiple, instructions)``, in order (a control's instructions as a header
    above it); ``spans``: ``(name, labels, instructions)`` of ``<Labels>`` controls on the same text."""
    from xml.sax.saxutils import quoteattr

    if not controls and not spans:
        raise LabelingConfigError("a config of several controls needs at least one")
    header = f"  <Header value={quoteattr(instructions)}/>\n" if instructions else ""
    parts = [f"<View>\n{header}  <Text name={quoteattr(to_name)} value={quoteattr('$' + text_field)}/>"]
    for name, labels, multiple, note in controls:
        if not labels:
            raise LabelingConfigError(f"control {name!r} needs at least one label")
        choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
        if note:
            parts.append(f"  <Header value={quoteattr(note)}/>")
        parts.append(f"  <Choices name={quoteattr(name)} toName={quoteattr(to_name)} "
                     f"choice=\"{'multiple' if multiple else 'single-radio'}\" showInLine=\"true\">\n{choices}\n"
                     f"  </Choices>")
    for name, labels, note in spans or []:
        if not labels:
            raise LabelingConfigError(f"control {name!r} needs at least one label")
        if note:
            parts.append(f"  <Header value={quoteattr(note)}/>")
        entries = "\n".join(f"    <Label value={quoteattr(label)}/>" for label in labels)
        parts.append(f"  <Labels name={quoteattr(name)} toName={quoteattr(to_name)}>\n{entries}\n  </Labels>")
    return "\n".join(parts) + "\n</View>"
