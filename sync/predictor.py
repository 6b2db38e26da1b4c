"""What the sync's predict pass calls: the ML backend's plain JSON predict API, or anything shaped like it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
from tenacity import before_sleep_log, retry, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)


class Predictor(Protocol):
    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One dict per text: ``label``, ``confidence``, ``probabilities``, ``model_version`` (the main
        model's) and, per control with a model of its own, ``controls`` (``labels``, ``probabilities``,
        ``score``, ``model_version``)."""


class HttpPredictor:
    """The ML backend's ``POST /v1/predict``, in chunks, with retries on connection errors and 5xx."""

    def __init__(self, url: str, *, token: str | None = None, chunk: int = 256, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.chunk = chunk

    @retry(retry=retry_if_exception_type((httpx.TransportError, httpx.HTTPStatusError)),
           stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.5, max=10), reraise=True,
           before_sleep=before_sleep_log(log, logging.WARNING))
    def _post(self, texts: list[str]) -> list[dict[str, Any]]:
        r = self._http.post("/v1/predict", json={"texts": texts})
        if r.status_code >= 500:
            r.raise_for_status()
        if r.status_code != 200:
            raise ValueError(f"ML backend refused the batch ({r.status_code}): {r.text[:300]}")
        return r.json()["predictions"]

    def serving_version(self, control: str | None = None) -> str | None:
        """The model version the backend serves now (``GET /versions``): the main model's, or the
        own model's of ``control``."""
        r = self._http.get("/versions")
        r.raise_for_status()
        body = r.json()
        if control is None:
            return body.get("serving")
        return ((body.get("controls") or {}).get(control) or {}).get("serving")

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(texts), self.chunk):
            out.extend(self._post(list(texts[i:i + self.chunk])))
        return out
