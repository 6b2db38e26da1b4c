"""Items and their versions: ingest, listing, lookup, state counts and state changes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.store.models import ITEM_STATES, Item
from connector.store.repository import CHUNK, Repository, chunks, content_hash, load_items

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


@dataclass
class IngestResult:
    """What one ``ingest`` call did.

    ``added``: items seen for the first time; ``new_versions``: known external ids whose record
    changed (the old version is kept, no longer current); ``unchanged``: records identical to the
    current version; ``errors``: one ``"line N: why"`` (or ``"record N: why"``) per record skipped.
    """

    added: int = 0
    new_versions: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


class ItemRepository(Repository):
    """``store.items``: items, one current version per external id, and their states."""

    def ingest(self, records: Iterable[Mapping[str, Any]], *, text_field: str = "text", id_field: str = "id",
               metadata_fields: Iterable[str] | None = None, gold_field: str = "is_gold",
               gold_label_field: str = "gold_label", line_numbers: Iterable[int] | None = None) -> IngestResult:
        """Add records as items, idempotently by external id.

        - ``id_field`` gives the external id (a string or an integer); a record without one gets
          ``sha256-<16 hex digits of the text's hash>``, stable across runs.
        - ``text_field`` must be a non-empty string. ``metadata_fields`` go to ``Item.meta``;
          ``gold_field`` (a bool, 0/1 or ``true``/``false``/``yes``/``no``) sets ``Item.is_gold``;
          a gold item's known answer, ``gold_label_field``, goes to ``Item.meta["gold_label"]``
          (never to ``data``, which is what annotators see); every other field stays in
          ``Item.data`` (the text included).
        - A record identical to its current version is ``unchanged``; any difference makes a new
          version (the old one is kept, ``is_current`` false): nothing is overwritten.
        - A bad record is reported in ``errors`` as ``"record N: why"`` (or ``"line N: why"``
          when ``line_numbers`` numbers the records) and skipped; the others are still ingested.
        """
        meta_keys = tuple(metadata_fields or ())
        skip_keys = {id_field, gold_field, gold_label_field, *meta_keys}
        where = "record" if line_numbers is None else "line"
        numbers = itertools.count(1) if line_numbers is None else iter(line_numbers)
        result = IngestResult()
        with self._sessions.begin() as s:
            batch: list[_Prepared] = []
            for record, number in zip(records, numbers, strict=line_numbers is not None):
                try:
                    batch.append(_prepare(record, text_field, id_field, meta_keys, gold_field, skip_keys,
                                          gold_label_field))
                except (TypeError, ValueError) as exc:
                    result.errors.append(f"{where} {number}: {exc}")
                if len(batch) >= CHUNK:
                    _ingest_batch(s, batch, result)
                    batch = []
            _ingest_batch(s, batch, result)
        return result

    def list(self, state: str | None = None, limit: int | None = None, *, after: int | None = None) -> list[Item]:
        """Current versions of items, oldest first, optionally only those in ``state`` (and with
        an id above ``after``)."""
        stmt = select(Item).where(Item.is_current).order_by(Item.id).limit(limit)
        if after is not None:
            stmt = stmt.where(Item.id > after)
        if state is not None:
            _check_state(state)
            stmt = stmt.where(Item.state == state)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def get(self, item_id: int) -> Item | None:
        """One item version by its row id."""
        with self._sessions() as s:
            return s.get(Item, item_id)

    def get_many(self, item_ids: Iterable[int]) -> dict[int, Item]:
        """Item versions by row id (unknown ids are left out)."""
        out: dict[int, Item] = {}
        with self._sessions() as s:
            for chunk in chunks(sorted({int(i) for i in item_ids})):
                out.update((it.id, it) for it in s.scalars(select(Item).where(Item.id.in_(chunk))))
        return out

    def versions(self, external_id: str) -> list[Item]:
        """Every version of one external id, version 1 first."""
        with self._sessions() as s:
            return list(s.scalars(select(Item).where(Item.external_id == external_id).order_by(Item.version)))

    def stale(self, model_version: str, *, limit: int | None = None) -> list[Item]:
        """Current items scored by another model version and not yet pushed (to score again)."""
        stmt = (select(Item).where(Item.is_current, Item.state.in_(("predicted", "routed")),
                                   Item.model_version != model_version).order_by(Item.id).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def counts_by_state(self) -> dict[str, int]:
        """Number of current items in each state (every state listed, zeros included)."""
        stmt = select(Item.state, func.count()).where(Item.is_current).group_by(Item.state)
        with self._sessions() as s:
            found = dict(s.execute(stmt).tuples().all())
        return {state: found.get(state, 0) for state in ITEM_STATES}

    def set_state(self, item_ids: Iterable[int], state: str) -> int:
        """Put items in ``state`` (e.g. ``consolidated`` once a consensus label is kept); returns the count."""
        _check_state(state)
        with self._sessions.begin() as s:
            items = load_items(s, item_ids)
            for item in items.values():
                item.state = state
            return len(items)


def _check_state(state: str) -> None:
    if state not in ITEM_STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {', '.join(ITEM_STATES)}")


@dataclass
class _Prepared:
    external_id: str
    text: str
    data: dict[str, Any]
    meta: dict[str, Any]
    is_gold: bool
    canonical: str


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _encoded_gold(value: list[Any] | tuple[Any, ...]) -> str:
    """A gold label set (strings) or span set (``[start, end, label]`` triples) as stored
    (:mod:`connector.label_sets`); anything else is refused."""
    from connector.label_sets import encode_label_set, encode_spans

    if all(isinstance(v, str) for v in value):
        return encode_label_set(value)
    try:
        return encode_spans(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"gold label {value!r} is neither a label set nor spans [[start, end, label], ...]: {exc}") \
            from None


def _prepare(record: Any, text_field: str, id_field: str, meta_keys: tuple[str, ...], gold_field: str,
             skip_keys: set[str], gold_label_field: str = "gold_label") -> _Prepared:
    if not isinstance(record, Mapping):
        raise TypeError(f"expected an object, got {type(record).__name__}")
    text = record.get(text_field)
    if text is None:
        raise ValueError(f"no text field {text_field!r}")
    if not isinstance(text, str):
        raise TypeError(f"text field {text_field!r} must be a string, not {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"text field {text_field!r} is empty")
    raw_id = record.get(id_field)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | None):
        raise TypeError(f"id field {id_field!r} must be a string or an integer, not {type(raw_id).__name__}")
    external_id = str(raw_id).strip() if raw_id is not None else ""
    if not external_id:
        external_id = f"sha256-{content_hash(text)[:16]}"
    if len(external_id) > 255:
        raise ValueError(f"id {external_id[:40]!r}... is longer than 255 characters")
    gold = record.get(gold_field)
    if gold is None or isinstance(gold, bool) or (isinstance(gold, int) and gold in (0, 1)):
        is_gold = bool(gold)
    elif isinstance(gold, str) and gold.strip().lower() in _TRUE | _FALSE:
        is_gold = gold.strip().lower() in _TRUE
    else:
        raise ValueError(f"gold field {gold_field!r} is {gold!r}; expected true or false")
    data = {k: v for k, v in record.items() if k not in skip_keys}
    meta = {k: record[k] for k in meta_keys if k in record}
    gold_label = record.get(gold_label_field)
    if isinstance(gold_label, list | tuple):  # a label set, or spans: stored as the labels table stores them
        meta["gold_label"] = _encoded_gold(gold_label)
    elif gold_label is not None and str(gold_label).strip():
        meta["gold_label"] = str(gold_label).strip()
    elif is_gold:
        raise ValueError(f"gold item without its answer in {gold_label_field!r}")
    try:
        canonical = _canonical([data, meta, is_gold])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serializable: {exc}") from None
    data, meta, _ = json.loads(canonical)  # store exactly what was compared
    return _Prepared(external_id, text, data, meta, is_gold, canonical)


def _ingest_batch(s: Session, batch: list[_Prepared], result: IngestResult) -> None:
    if not batch:
        return
    ids = sorted({p.external_id for p in batch})
    current = {item.external_id: item for item in
               s.scalars(select(Item).where(Item.is_current, Item.external_id.in_(ids)))}
    for p in batch:
        old = current.get(p.external_id)
        if old is not None and _canonical([old.data, old.meta, old.is_gold]) == p.canonical:
            result.unchanged += 1
            continue
        if old is not None:
            old.is_current = False
            s.flush()  # the partial unique index allows one current version at a time
        item = Item(external_id=p.external_id, version=1 if old is None else old.version + 1, is_current=True,
                    data=p.data, text=p.text, content_hash=content_hash(p.text), meta=p.meta,
                    is_gold=p.is_gold, state="ingested", model_version=None)
        s.add(item)
        current[p.external_id] = item
        if old is None:
            result.added += 1
        else:
            result.new_versions += 1
    s.flush()
