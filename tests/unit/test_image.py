"""The service image (Dockerfile) carries what the services run, not the dev tooling."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_MODULES = ("hitl.cli", "hitl.preflight", "ml_backend.app", "ml_backend.server", "sync.runner", "sync.scheduler", "sync.jobs")


def _copied() -> list[str]:
    """The source paths of the Dockerfile's COPY lines (the sources, not the destination)."""
    paths = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if m := re.match(r"COPY\s+(.+)\s+\S+$", line):
            paths += m.group(1).split()
    return paths


def test_the_image_copies_neither_the_simulator_nor_the_local_launchers_nor_the_tests():
    copied = _copied()
    assert "connector" in copied and "ml_backend" in copied and "sync" in copied and "hitl/cli.py" in copied
    assert not any(p.startswith(("hitl/local", "hitl/simulate", "tests", "benchmarks")) or p == "hitl" for p in copied)


def test_the_services_import_from_what_the_image_copies(tmp_path):
    for path in _copied():
        src = ROOT / path
        if src.is_dir():
            shutil.copytree(src, tmp_path / path, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.suffix == ".py":
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tmp_path / path)
    # the editable install would find what the image lacks in the checkout: drop its finder
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {str(tmp_path)!r}); "
            + "; ".join(f"import {m}" for m in SERVICE_MODULES)
            + "; import hitl.cli as c; assert c.__file__.startswith(" + repr(str(tmp_path)) + ")"
            + "; from importlib.util import find_spec; assert find_spec('hitl.simulate') is None")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_base_image_is_pinned_to_a_patch_release():
    (base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.12\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
