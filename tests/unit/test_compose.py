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


def _filled_example() -> str:
    """.env.example with every empty value filled with a random-looking secret."""
    lines = []
    for i, line in enumerate((ROOT / ".env.example").read_text().splitlines()):
        lines.append(f"{line}{i:02d}f3a9c41b7e2d8a0c5b6e1f9d4a7c3e8b2" if re.fullmatch(r"[A-Z_]+=", line) else line)
    return "\n".join(lines)


def test_the_example_env_file_is_refused_as_it_is_naming_a_variable(tmp_path):
    result = _config(_compose_dir(tmp_path, (ROOT / ".env.example").read_text()))
    assert result.returncode != 0 and re.search(r"set \w+ in \.env", result.stderr), result.stderr


def test_the_stack_validates_with_a_filled_env_file_for_every_profile(tmp_path):
    where = _compose_dir(tmp_path, _filled_example())
    for profiles in ([], ["--profile", "cpu"], ["--profile", "gpu", "--profile", "argilla"]):
        result = _config(where, *profiles)
        assert result.returncode == 0, result.stderr


def _resolved(tmp_path: Path, env_text: str) -> dict:
    tmp_path.mkdir()
    where = _compose_dir(tmp_path, env_text)
    exe = shutil.which("docker-compose") or pytest.fail("docker-compose is not installed", pytrace=False)
    out = subprocess.run([exe, "-f", "docker-compose.yml", "--profile", "cpu", "--profile", "argilla", "config"],
                         cwd=where, capture_output=True, text=True, timeout=60, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("HITL_")}).stdout
    return yaml.safe_load(out)["services"]


def _published(services: dict) -> dict[str, set[str]]:
    out = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            ip = port.get("host_ip", "0.0.0.0") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            out.setdefault(name, set()).add(ip)
    return out


def test_ports_are_published_on_loopback_unless_the_operator_opts_in(tmp_path):
    published = _published(_resolved(tmp_path / "a", _filled_example()))
    assert set(published) >= {"label-studio", "argilla", "ml-backend-cpu", "sync"}
    assert all(ips == {"127.0.0.1"} for ips in published.values()), published
    opted_in = _published(_resolved(tmp_path / "b", _filled_example() + "\nHITL_BIND=0.0.0.0\n"))
    assert all(ips == {"0.0.0.0"} for ips in opted_in.values()), opted_in


def test_every_service_waits_for_the_preflight_check_and_the_services_carry_their_secrets():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["preflight"]["command"] == ["python", "-m", "hitl.preflight"]
    assert services["preflight"]["restart"] == "no"

    def gated(name: str) -> bool:
        deps = services[name].get("depends_on") or {}
        if deps.get("preflight", {}).get("condition") == "service_completed_successfully":
            return True
        return any(gated(d) for d in deps)

    # Elasticsearch and Redis publish nothing and hold no secret
    assert all(gated(n) for n in services if n not in ("preflight", "elasticsearch", "redis")), \
        [n for n in services if n not in ("preflight", "elasticsearch", "redis") and not gated(n)]
    for name in ("ml-backend", "ml-backend-cpu"):  # bound to 0.0.0.0 inside the network: auth required
        assert "${HITL_API_TOKEN:?" in services[name]["environment"]["HITL_API_TOKEN"]
    assert "${HITL_API_TOKEN:?" in services["sync"]["environment"]["HITL_BACKEND_TOKEN"]
    assert "${HITL_WEBHOOK_SECRET:?" in services["sync"]["environment"]["HITL_WEBHOOK_SECRET"]


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
