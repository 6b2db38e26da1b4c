"""Configuration of the ML backend, from ``HITL_*`` environment variables or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_tasks_per_request: int = Field(10_000, ge=1)
    multi_label_threshold: float = Field(0.5, gt=0, le=1, description="for choice='multiple' configs")
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    api_token: SecretStr | None = Field(None, description="accepted as 'Authorization: Bearer <token>'")
    events_path: Path = Field(Path("var/events/ml_backend.jsonl"), description="webhook events spooled for the scheduler")
    reload_interval_s: float = Field(10.0, ge=0, description="poll the model root for a newly promoted version (0: off)")
    host: str = "127.0.0.1"
    port: int = 9090
