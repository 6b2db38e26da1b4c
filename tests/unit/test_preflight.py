"""The stack's start-up check (python -m hitl.preflight): placeholder, empty or short secrets are
refused, naming the variable; a filled environment passes. Run as the container runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hitl.preflight import REQUIRED_SECRETS, check_env

ROOT = Path(__file__).resolve().parents[2]


def _example() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def filled(**overrides: str) -> dict[str, str]:
    """The example with every empty value set to a distinct random-looking secret."""
    env = {k: (v or f"{i:02d}f3a9c41b7e2d8a0c5b6e1f9d4a7c3e8b2") for i, (k, v) in enumerate(_example().items())}
    return {**env, **overrides}


def test_the_example_file_is_refused_and_every_empty_secret_is_named():
    problems = check_env(_example())
    for name in REQUIRED_SECRETS:
        assert f"{name} is empty" in problems


def test_a_filled_environment_passes():
    assert check_env(filled()) == []


@pytest.mark.parametrize("name, value, reason", [
    ("POSTGRES_PASSWORD", "change-me", "looks like a placeholder"),
    ("HITL_LS_API_KEY", "change-me-40-hex-characters-0000000000000", "looks like a placeholder"),
    ("HITL_ARGILLA_API_KEY", "change-me-argilla-key", "looks like a placeholder"),
    ("HITL_WEBHOOK_SECRET", "", "is empty"),
    ("HITL_WEBHOOK_SECRET", "   ", "is empty"),
    ("HITL_API_TOKEN", "k3Yq9", "is 5 characters; at least 16"),
    ("LABEL_STUDIO_PASSWORD", "a" * 20, "one character repeated"),
    ("HITL_LS_API_KEY", "f" * 20 + "0123456789abcdef01234567", "at most 40"),
    ("HITL_BASIC_AUTH_PASSWORD", "password123456789", "placeholder"),
])
def test_weak_secrets_are_refused_naming_the_variable(name, value, reason):
    problems = check_env(filled(**{name: value}))
    assert any(p.startswith(name) and reason in p for p in problems), problems


def test_half_configured_basic_auth_is_refused():
    problems = check_env(filled(HITL_BASIC_AUTH_USER="label-studio"))
    assert any(p.startswith("HITL_BASIC_AUTH_PASSWORD is not set") for p in problems), problems
    assert check_env(filled(HITL_BASIC_AUTH_USER="label-studio", HITL_BASIC_AUTH_PASSWORD="Zq8v2Lr7Tn4Xw6Pk")) == []


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")}
    return subprocess.run([sys.executable, "-m", "hitl.preflight"], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_entrypoint_exits_1_naming_the_variable_and_0_when_filled():
    refused = _run(filled(POSTGRES_PASSWORD="change-me"))
    assert refused.returncode == 1 and "POSTGRES_PASSWORD looks like a placeholder" in refused.stderr
    assert "LABEL_STUDIO_PASSWORD" not in refused.stderr
    passed = _run(filled())
    assert passed.returncode == 0 and "environment OK" in passed.stdout
