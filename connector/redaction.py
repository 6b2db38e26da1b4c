"""PII kept from reviewers: configured fields are redacted before an item is pushed.

The task file's ``[redaction]`` table names the fields; the original stays in our store::

    [redaction]
    fields = ["text", "note"]            # the task's text_field stands for the item's text
    # entities = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"]
    # phone_regions = ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"]
    rules = { ACCOUNT = 'ACC-\\d{6}' }   # the task's own patterns: name -> regular expression
    # min_score = 0.3

A :class:`Redactor` runs Microsoft Presidio's analyzer with its pattern recognizers only (no NLP
engine, no spaCy model) and its anonymizer's ``replace`` operator: each finding becomes
``<ENTITY_TYPE>`` (``<ACCOUNT>`` for the rule above). Strictly offline: the email recognizer checks
the domain against the public suffix list bundled with ``tldextract`` and never fetches it.
Presidio is imported on first use only; a policy without fields imports nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Presidio's pattern recognizers that work offline (no spaCy model)
DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS")
#: Presidio's own default: numbers in these regions' national formats (``030 1234567``) are found;
#: numbers written with a country code (``+34 912 345 678``) are found whatever the region
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")

#: what may separate a card number's groups (Presidio's own: "-" and " "; no-break spaces come
#: with text pasted from web pages)
_CARD_SEPARATORS = [(c, "") for c in ("-", " ", ".", "\t", "\u00a0", "\u2007", "\u202f")]
_RULE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class RedactionPolicy(BaseModel):
    """``fields``: the item fields to redact (the text field included by name); ``entities``:
    Presidio entity types; ``rules``: the task's own patterns, name -> regular expression;
    ``min_score``: Presidio's score a finding needs; ``phone_regions``: where national-format
    phone numbers are looked for (each region costs time and catches more digit runs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    rules: dict[str, str] = Field(default_factory=dict)
    min_score: float = Field(0.3, ge=0.0, le=1.0)
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS))

    @field_validator("entities")
    @classmethod
    def _offline_entities(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(DEFAULT_ENTITIES))
        if unknown:
            raise ValueError(f"unknown entities {unknown}: the offline recognizers find {list(DEFAULT_ENTITIES)}")
        return v

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            if not _RULE_NAME.fullmatch(name) or name in DEFAULT_ENTITIES:
                raise ValueError(f"rule name {name!r}: letters, digits and _ (a letter first), not an entity type")
            try:
                if re.compile(pattern).match(""):
                    raise ValueError(f"rule {name!r} matches the empty string")
            except re.error as e:
                raise ValueError(f"rule {name!r}: {e}") from e
        return v

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        if any(not re.fullmatch(r"[A-Z]{2}", r) for r in v):
            raise ValueError("phone_regions: ISO 3166 two-letter codes, upper case (e.g. 'NL')")
        return v

    @model_validator(mode="after")
    def _fields_unique(self) -> RedactionPolicy:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("redaction fields must be distinct")
        return self


@dataclass(frozen=True)
class Finding:
    """One redacted span: the field (``note``, ``context[2]``, ``meta.email`` inside lists and
    objects), the entity type (or the rule's name), where it was in the original value, and
    Presidio's score. Never the text found."""

    field: str
    entity: str
    start: int
    end: int
    score: float


class Redactor:
    """The analyzer and the anonymizer for one policy, built once (:func:`redactor` caches them)."""

    def __init__(self, policy: RedactionPolicy) -> None:
        self.policy = policy
        self._engines: _Engines | None = None

    def redact(self, data: Mapping[str, Any], *, fields: Sequence[str] | None = None
               ) -> tuple[dict[str, Any], list[Finding]]:
        """A new dict: each configured field (``fields`` overrides the policy's) anonymized, the
        other fields as they were; and what was found. Strings are redacted, so are strings in
        lists and objects, and integers (a card number stored as a number becomes a string when
        found); other values pass. ``data`` is never changed."""
        out = dict(data)
        findings: list[Finding] = []
        for name in self.policy.fields if fields is None else fields:
            if name in out:
                out[name] = self._value(out[name], name, findings)
        return out, findings

    def redact_text(self, text: str, field: str = "text") -> tuple[str, list[Finding]]:
        """One text, anonymized, and what was found in it."""
        if self._engines is None:
            self._engines = _engines(self.policy)
        e = self._engines
        results = e.analyzer.analyze(text, language="en", entities=e.entities, score_threshold=self.policy.min_score)
        if not results:
            return text, []
        found = sorted((Finding(field, r.entity_type, r.start, r.end, round(float(r.score), 4)) for r in results),
                       key=lambda f: (f.start, f.end, f.entity))
        # overlapping findings are trimmed, never dropped: every character found is replaced
        done = e.anonymizer.anonymize(text, results, operators=e.operators, conflict_resolution=e.conflicts)
        return done.text, found

    def _value(self, value: Any, path: str, findings: list[Finding]) -> Any:
        if isinstance(value, str):
            text, found = self.redact_text(value, path)
            findings.extend(found)
            return text
        if isinstance(value, int) and not isinstance(value, bool):
            text, found = self.redact_text(str(value), path)
            findings.extend(found)
            return text if found else value
        if isinstance(value, list | tuple):
            return [self._value(v, f"{path}[{i}]", findings) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            return {k: self._value(v, f"{path}.{k}", findings) for k, v in value.items()}
        return value


def redactor(policy: RedactionPolicy) -> Redactor:
    """The policy's :class:`Redactor`, one per distinct policy in the process (its engines are
    built on the first text)."""
    return _redactor(policy.model_dump_json())


@functools.lru_cache(maxsize=16)
def _redactor(policy_json: str) -> Redactor:
    return Redactor(RedactionPolicy.model_validate_json(policy_json))


def redact_pushed(policy: RedactionPolicy, data: Mapping[str, Any], *, text_field: str, text_key: str
                  ) -> tuple[dict[str, Any], list[Finding]]:
    """``data`` as it is pushed, redacted: the configured field named like the task's
    ``text_field`` stands for ``text_key`` (the labelling config's key for the item's text).
    Without fields, a copy and nothing found, Presidio not imported."""
    if not policy.fields:
        return dict(data), []
    fields = [text_key if f == text_field else f for f in policy.fields]
    return redactor(policy).redact(data, fields=fields)


def history_detail(findings: Sequence[Finding]) -> dict[str, Any]:
    """A ``redacted`` event's detail: which fields, counts by entity type, and the spans (field,
    entity, start, end) — never the text found."""
    entities: dict[str, int] = {}
    for f in findings:
        entities[f.entity] = entities.get(f.entity, 0) + 1
    return {"fields": sorted({f.field for f in findings}), "entities": dict(sorted(entities.items())),
            "findings": [[f.field, f.entity, f.start, f.end] for f in findings]}


@dataclass(frozen=True)
class _Engines:
    analyzer: Any
    anonymizer: Any
    entities: list[str]
    operators: dict[str, Any]
    conflicts: Any


def _engines(policy: RedactionPolicy) -> _Engines:
    """Presidio's analyzer (pattern recognizers only, a no-op NLP engine) and anonymizer."""
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import ConflictResolutionStrategy, OperatorConfig

    card_pattern = CreditCardRecognizer.PATTERNS[0]  # its separators "-" and " ", widened
    separators = "[" + "".join(re.escape(c) for c, _ in _CARD_SEPARATORS) + "]"
    cards = Pattern(card_pattern.name, card_pattern.regex.replace("[- ]", separators), card_pattern.score)
    builtin = {"EMAIL_ADDRESS": lambda: _offline_email_recognizer()(),
               "CREDIT_CARD": lambda: CreditCardRecognizer(patterns=[cards], replacement_pairs=_CARD_SEPARATORS),
               "IBAN_CODE": IbanRecognizer, "IP_ADDRESS": IpRecognizer,
               "PHONE_NUMBER": lambda: PhoneRecognizer(supported_regions=tuple(policy.phone_regions))}
    entities = list(dict.fromkeys(policy.entities))
    recognizers = [builtin[e]() for e in entities]
    # the task's own rules match as written (case-sensitive unless they say (?i)), and always count
    recognizers += [PatternRecognizer(supported_entity=name, name=f"rule:{name}",
                                      patterns=[Pattern(name, pattern, 1.0)], global_regex_flags=0)
                    for name, pattern in policy.rules.items()]
    analyzer = AnalyzerEngine(registry=RecognizerRegistry(recognizers=recognizers),
                              nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]))
    return _Engines(analyzer, AnonymizerEngine(), [*entities, *policy.rules],
                    {"DEFAULT": OperatorConfig("replace")}, ConflictResolutionStrategy.REMOVE_INTERSECTIONS)


@functools.cache
def _suffix_list() -> Any:
    """``tldextract`` on the public suffix list it ships with: no download, no disk cache."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


@functools.cache
def _offline_email_recognizer() -> type:
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email recognizer, its domain checked on the bundled suffix list (Presidio's
        own check calls ``tldextract.extract``, which downloads the list on first use)."""

        def validate_result(self, pattern_text: str) -> bool:
            return _suffix_list()(pattern_text).fqdn != ""

    return OfflineEmailRecognizer
