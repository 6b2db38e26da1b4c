"""Parse a Label Studio labeling config into what a text classifier needs.

Supports ``<Choices>`` (``choice="single"``, ``"single-radio"`` or ``"multiple"``) attached
by ``toName`` to a ``<Text>`` or ``<HyperText>`` object tag whose ``value`` is ``$field``.

A config with a DTD (``<!DOCTYPE ...>``) is refused before any entity is declared: Label Studio's
configs have none, and a DTD is how entity tricks come in. The stdlib parser (expat 2.5 here)
already fetches no external entity and stops the billion laughs at its amplification limit, but
an older libexpat expands it; refusing the DTD does not depend on the version.
"""

from __future__ import annotations

import hashlib
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass

TEXT_OBJECT_TAGS = frozenset({"Text", "HyperText"})


class LabelingConfigError(ValueError):
    """The labeling config is not one this backend can serve."""


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that stops the parse at ``<!DOCTYPE``, before its internal subset is read."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise LabelingConfigError(f"labeling config declares a DTD (<!DOCTYPE {name}>); Label Studio configs "
                                  "have none, and entity declarations are refused")


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
    """Return every ``<Choices>`` control of ``config`` bound to a text object tag.

    Raises :class:`LabelingConfigError` with the reason when the XML is malformed or there is no
    usable ``<Choices>``/text pair.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelingConfigError("labeling config is empty")
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(config)
        root = parser.close()
    except ET.ParseError as exc:
        raise LabelingConfigError(f"labeling config is not valid XML: {exc}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in the JSON): no XML character
        raise LabelingConfigError(f"labeling config is not valid XML: {exc.reason} at character {exc.start}") from exc

    objects: dict[str, ET.Element] = {el.get("name"): el for el in root.iter() if el.get("name") and el.tag in TEXT_OBJECT_TAGS}
    controls: list[ChoicesControl] = []
    problems: list[str] = []
    for el in root.iter("Choices"):
        from_name, to_name = el.get("name"), el.get("toName")
        if not from_name or not to_name:
            problems.append("a <Choices> tag lacks name or toName")
            continue
        target = objects.get(to_name.split(",")[0])
        if target is None:
            problems.append(f"<Choices name={from_name!r}> points to {to_name!r}, which is not a <Text> or <HyperText> tag")
            continue
        value = target.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            problems.append(f"<{target.tag} name={to_name!r}> has value={value!r}; expected '$field'")
            continue
        labels = tuple(c.get("alias") or c.get("value") for c in el.iter("Choice") if c.get("alias") or c.get("value"))
        if not labels:
            problems.append(f"<Choices name={from_name!r}> has no <Choice> values")
            continue
        controls.append(ChoicesControl(
            from_name=from_name,
            to_name=target.get("name"),
            data_key=value[1:],
            labels=labels,
            multiple=el.get("choice", "single") == "multiple",
        ))
    if not controls:
        detail = "; ".join(problems) or "no <Choices> tag bound to a <Text> tag"
        raise LabelingConfigError(f"unsupported labeling config: {detail}")
    return controls


class ConfigCache:
    """Parsed configs by the SHA-256 of their text, least recently used dropped past ``maxsize``.

    Keyed by the digest, not the text: a config can be megabytes, and the cache would hold every
    one it saw. Errors are not cached. Thread-safe.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, ChoicesControl] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def digests(self) -> list[bytes]:
        with self._lock:
            return list(self._entries)

    def get(self, config: str) -> ChoicesControl:
        """The first usable ``<Choices>`` control of ``config`` (see :func:`parse_labeling_config`)."""
        if not isinstance(config, str):
            return parse_labeling_config(config)[0]  # raises with the reason
        key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        control = parse_labeling_config(config)[0]
        with self._lock:
            self._entries[key] = control
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return control


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
