"""Configuration of the ML backend, from ``HITL_*`` environment variables or a ``.env`` file.

Refused at start-up (a ``ValidationError`` naming the variable): basic auth with only one of user
and password, and a host beyond loopback with no credentials at all. Empty values count as unset.
Unknown ``HITL_*`` variables are ignored (``HITL_EVENTS_PATH``, of a former webhook spool, included).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connector.hardening import is_loopback


class BackendSettings(BaseSettings):
    """Settings of the ML backend service."""

    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    model_root: Path = Field(Path("var/models"), description="directory of model versions (ModelStore)")
    model_version: str | None = Field(None, description="pin a version; default: the promoted one")
    device: str | None = Field(None, description="'cpu', 'cuda', 'cuda:1'; default: cuda when available")
    torch_threads: int | None = Field(None, description="torch threads per inference worker (default: cores / workers)")
    inference_workers: int | None = Field(None, ge=1, description="inference threads (default: 1 on GPU, one per core on CPU, at most 4)")
    max_batch_size: int = Field(32, ge=1, description="texts per coalesced model call")
    max_wait_ms: float = Field(3.0, ge=0, description="how long the first request of a batch waits for others")
    max_queue: int = Field(1024, ge=1, description="requests waiting before new ones get 503")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_tasks_per_request: int = Field(10_000, ge=1, description="tasks per Label Studio /predict call (more: 413)")
    max_texts_per_request: int = Field(1000, ge=1, description="texts per /v1/predict call (more: 413)")
    multi_label_threshold: float = Field(0.5, gt=0, le=1, description="for choice='multiple' configs")
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    api_token: SecretStr | None = Field(None, description="accepted as 'Authorization: Bearer <token>'")
    reload_interval_s: float = Field(10.0, ge=0, description="poll the model root for a newly promoted version (0: off)")
    host: str = "127.0.0.1"
    port: int = 9090

    @field_validator("basic_auth_user", "basic_auth_password", "api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @model_validator(mode="after")
    def _auth_is_complete(self) -> BackendSettings:
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            missing = "HITL_BASIC_AUTH_PASSWORD" if self.basic_auth_password is None else "HITL_BASIC_AUTH_USER"
            raise ValueError(f"basic auth is half configured: {missing} is not set (set both, or neither)")
        if not is_loopback(self.host) and self.basic_auth_user is None and self.api_token is None:
            raise ValueError(f"HITL_HOST={self.host} is reachable beyond loopback: set HITL_API_TOKEN or "
                             "HITL_BASIC_AUTH_USER and HITL_BASIC_AUTH_PASSWORD (or bind to 127.0.0.1)")
        return self
