"""Deliver decision outcomes to the callers' URLs: signed with Standard Webhooks, from the outbox.

The outcome and its outbox row are written in one transaction (``store.online.settle``); this
sends the due rows. Each message keeps one ``webhook-id`` across its attempts, so a receiver
that saw it already (we crashed after it answered 2xx, before we recorded it) drops the repeat:
the message is recorded delivered once, and acted on once. A non-2xx answer or a network error
is tried again with exponential backoff, up to the task's ``callback_attempts``, then marked
``failed`` (``/metrics`` counts it).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from connector.store import StateStore

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 3600.0


def signed_headers(secret: str, webhook_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (``secret``: ``whsec_<base64>``)."""
    at = at or datetime.now(UTC)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(webhook_id, at, body), "content-type": "application/json"}


def deliver_due(store: StateStore, secret: str, *, attempts: int, timeout_s: float = 5.0,
                client: httpx.Client | None = None, limit: int = 500, workers: int = 8) -> dict[str, int]:
    """Send every due callback once, ``workers`` at a time (a slow receiver holds up one worker,
    not the others); counts of ``delivered``, ``retry`` and ``failed``."""
    from concurrent.futures import ThreadPoolExecutor

    due = store.online.due_callbacks(limit=limit)
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    if not due:
        return counts
    own = client is None
    http = client or httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=workers))

    def send(row: Any) -> str:
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True)
        error = None
        try:
            r = http.post(row.url, content=body, headers=signed_headers(secret, row.webhook_id, body))
            if not 200 <= r.status_code < 300:
                error = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            store.online.callback_attempted(row.id, delivered=True)
            return "delivered"
        give_up = row.attempts + 1 >= attempts
        wait = min(BACKOFF_BASE_S * 2 ** row.attempts, BACKOFF_MAX_S)
        store.online.callback_attempted(row.id, delivered=False, error=error, give_up=give_up,
                                        next_at=datetime.now(UTC) + timedelta(seconds=wait))
        log.warning("callback %s for decision %s: %s (%s)", row.webhook_id, row.decision_id, error,
                    "given up" if give_up else f"again in {wait:.0f} s")
        return "failed" if give_up else "retry"

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="callback") as pool:
            for outcome in pool.map(send, due):
                counts[outcome] += 1
    finally:
        if own:
            http.close()
    return counts
