"""Run the ML backend as a real subprocess (``python -m ml_backend``) for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hitl.local.processes import free_port, stop_process_group, wait_for_health


@dataclass
class BackendProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        stop_process_group(self.process)


def start_backend(model_root: Path, workdir: Path, *, env: dict[str, str] | None = None,
                  timeout: float = 120.0) -> BackendProcess:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HITL_MODEL_ROOT": str(model_root), "HITL_HOST": "127.0.0.1",
                "HITL_PORT": str(port), "HF_HUB_OFFLINE": "1", **(env or {})}
    log_path = workdir / "backend.log"
    with open(log_path, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "ml_backend"], env=full_env, cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=timeout, log_path=log_path, name="ML backend")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{log_path.read_text()[-2000:]}") from None
    return BackendProcess(url, proc, log_path)
