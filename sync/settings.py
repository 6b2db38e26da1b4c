"""Configuration of the sync service, from ``HITL_*`` environment variables or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SyncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    db_url: str = Field("sqlite:///var/state.db", description="state store; postgresql+psycopg://… for PostgreSQL")
    task: Path = Field(Path("task.toml"), description="the task file")
    backend_url: str = Field("http://127.0.0.1:9090", description="the ML backend")
    backend_token: SecretStr | None = None
    push_batch: int = Field(2000, ge=1, le=10000, description="tasks or records per bulk create call")
    sync_interval_s: float = Field(30.0, gt=0, description="seconds between passes (webhooks wake it earlier)")
    webhook_secret: SecretStr | None = Field(None, description="shared secret Label Studio sends in X-Hitl-Secret")
    argilla_webhook_secret: SecretStr | None = Field(None, description="the Standard Webhooks secret of the Argilla webhook")
    webhook_max_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger webhook bodies get 413")
    sync_host: str = Field("127.0.0.1", description="beyond loopback, HITL_WEBHOOK_SECRET is required")
    sync_port: int = 9091
    sync_public_url: str | None = Field(
        None, description="this receiver's base URL as Label Studio reaches it (http://sync:9091); when set, "
                          "the Label Studio project gets a webhook to its /webhooks/label-studio with the secret")
    model_root: Path = Field(Path("var/models"), description="model versions, shared with the ML backend")
    metrics_interval_s: float = Field(300.0, gt=0, description="seconds between agreement/quality snapshots")
    retrain_interval_s: float = Field(600.0, gt=0, description="seconds between checks for enough new labels")
    retrain_cron: str | None = Field(None, description="crontab line for retraining instead of the interval")
    job_retries: int = Field(2, ge=0, description="retries of a failing job within one run")
    retention_job_runs: int = Field(1000, ge=1, description="newest runs kept per job (the metrics job prunes)")
    retention_snapshots: int = Field(2000, ge=1, description="newest snapshots kept per kind")
    retention_days: float = Field(30.0, gt=0, description="superseded predictions and decisions kept this long")
    retention_batch: int = Field(10_000, ge=1, description="most rows pruned per table in one metrics run")
    decisions_token: SecretStr | None = Field(None, description="bearer token of /v1/decisions and /v1/feedback; "
                                                                "beyond loopback the API is off without one")
    callback_secret: SecretStr | None = Field(None, description="Standard Webhooks secret (whsec_…) that signs "
                                                                "decision callbacks; callbacks are refused without one")
    decisions_interval_s: float = Field(10.0, gt=0, description="seconds between outcome, deadline and callback runs")

    @field_validator("webhook_secret", "argilla_webhook_secret", "backend_token", "sync_public_url",
                     "decisions_token", "callback_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @field_validator("sync_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().startswith(("http://", "https://")):
            raise ValueError(f"HITL_SYNC_PUBLIC_URL must be an http:// or https:// URL, got {value!r}")
        return value.strip().rstrip("/") if value is not None else None
