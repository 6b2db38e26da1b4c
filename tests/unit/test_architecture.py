"""The import contracts in pyproject.toml (``lint-imports``): kept by the code, and able to fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("connector", "ml_backend", "sync", "hitl")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, check=False,
                          env={"PATH": str(exe.parent), "PYTHONPATH": str(cwd)}, timeout=120)


def _copy_tree(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_code_keeps_every_import_contract():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_core_importing_a_service_breaks_the_layers_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    with open(tree / "connector" / "routing.py", "a") as fh:
        fh.write("\nimport sync.service  # noqa: E402,F401\n")
    done = _lint_imports(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "connector.routing -> sync.service" in done.stdout


def test_the_backend_importing_the_sync_service_breaks_the_layers_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    with open(tree / "ml_backend" / "schemas.py", "a") as fh:
        fh.write("\nimport sync.jobs  # noqa: E402,F401\n")
    done = _lint_imports(tree)
    assert done.returncode != 0 and "ml_backend.schemas -> sync.jobs" in done.stdout


def test_a_cycle_between_core_modules_breaks_the_acyclic_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    with open(tree / "connector" / "uncertainty.py", "a") as fh:
        fh.write("\nimport connector.strategies  # noqa: E402,F401\n")
    done = _lint_imports(tree)
    assert done.returncode != 0 and "no import cycles between sibling modules BROKEN" in done.stdout
