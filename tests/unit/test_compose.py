"""docker-compose.yml: valid for Compose, secrets only from .env, GPU and CPU profiles, Argilla behind a profile.

Validated with Debian's docker-compose 1.29.2 (`config -q`, no engine needed); `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"PASSWORD|API_KEY|TOKEN|SECRET", re.IGNORECASE)


def _compose_dir(tmp_path: Path, env_text: str | None) -> Path:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    if env_text is not None:
        (tmp_path / ".env").write_text(env_text)
    return tmp_path


def _config(where: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (apt-get install docker-compose; .ci/run does it)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "HITL_", "ARGILLA_", "LABEL_STUDIO_"))}
    return subprocess.run([exe, "-f", "docker-compose.yml", *args, "config", "-q"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_stack_validates_with_the_example_env_file_for_every_profile(tmp_path):
    where = _compose_dir(tmp_path, (ROOT / ".env.example").read_text())
    for profiles in ([], ["--profile", "cpu"], ["--profile", "gpu", "--profile", "argilla"]):
        result = _config(where, *profiles)
        assert result.returncode == 0, result.stderr


def test_a_missing_secret_is_refused_with_its_name(tmp_path):
    env = "\n".join(line for line in (ROOT / ".env.example").read_text().splitlines()
                    if not line.startswith("POSTGRES_PASSWORD"))
    result = _config(_compose_dir(tmp_path, env))
    assert result.returncode != 0 and "set POSTGRES_PASSWORD in .env" in result.stderr


def test_no_secret_is_written_in_the_file_and_the_profiles_are_as_documented():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${") or "${" in str(value), f"{name}.{key} is written in the file"
        if "postgresql" in str(env.get("HITL_DB_URL", "")):
            assert "${POSTGRES_PASSWORD" in env["HITL_DB_URL"]
    gpu = services["ml-backend"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["ml-backend"]["profiles"] == ["gpu"]
    assert services["ml-backend-cpu"]["profiles"] == ["cpu"]
    assert {s for s, v in services.items() if v.get("profiles") == ["argilla"]} == {
        "argilla", "argilla-worker", "elasticsearch", "redis"}
    assert all("healthcheck" in services[s] for s in ("postgres", "label-studio", "ml-backend", "sync", "argilla"))
    assert services["label-studio"]["environment"]["DJANGO_DB"] == "default"  # Label Studio on PostgreSQL
    assert services["sync"]["command"] == ["hitl", "scheduler", "run"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()
