"""Pinned images and hashed locks: what the Dockerfile, docker-compose.yml and `make install` pull is
pinned, and the locks (requirements/*.lock, `make lock`) are complete and match pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
LOCKS = ("dev.lock", "image.lock", "nodeps.lock")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# PostgreSQL numbers its releases MAJOR.MINOR since 10: 16.10 is a patch release of 16
RELEASE_PARTS = {"postgres": 2}


def _pinned(ref: str) -> bool:
    """An image reference with a tag naming a patch release (optionally a variant, and a digest)."""
    name, _, tag = ref.split("@")[0].rpartition(":")
    if not name or "/" in tag or tag == "latest":
        return False
    parts = RELEASE_PARTS.get(name.rsplit("/", 1)[-1], 3)
    return re.fullmatch(r"v?\d+" + r"\.\d+" * (parts - 1) + r"(\.\d+)*(-[a-z0-9.]+)*", tag) is not None


def _lock(name: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes) of one lock; any entry that is not `name==version` fails."""
    text = re.sub(r"\\\n", " ", (REQ / name).read_text())
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec = line.split(" --hash=")[0].strip()
        req = Requirement(spec)
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==" and "*" not in pins[0].version and not req.url, \
            f"{name}: {spec} is not pinned"
        out[canonicalize_name(req.name)] = (Version(pins[0].version), HASH.findall(line))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _in_file(name: str) -> list[Requirement]:
    lines = (REQ / name).read_text().splitlines()
    return [Requirement(ln.split("#")[0]) for ln in lines if ln.split("#")[0].strip()]


def _commands(text: str, start: str) -> list[str]:
    """The `pip install` commands of the Dockerfile's RUN lines (continuations joined, split at &&)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    runs = [ln[len(start):] for ln in joined.splitlines() if ln.startswith(start)]
    return [c.strip() for run in runs for c in run.split("&&") if "pip install" in c]


def _requires_hashes_from(command: str, allowed: set[str]) -> bool:
    files = re.findall(r"-r\s+(\S+)", command)
    return ("--require-hashes" in command.split() and "--no-deps" in command.split() and bool(files)
            and all(f in allowed for f in files))


# --- images ---------------------------------------------------------------------------------------

def test_the_pin_check_refuses_floating_tags():
    assert _pinned("python:3.12.12-slim-trixie") and _pinned("postgres:16.10-bookworm")
    assert _pinned("argilla/argilla-server:v2.8.0") and _pinned("redis:7.4.6-alpine@sha256:" + "0" * 64)
    assert _pinned("docker.elastic.co/elasticsearch/elasticsearch:8.17.0")
    for floating in ("postgres:16", "postgres", "redis:7", "redis:7.4-alpine", "redis:latest", "python:3.12-slim",
                     "localhost:5000/app", "heartexlabs/label-studio"):
        assert not _pinned(floating), floating


def test_every_base_image_is_pinned_to_a_patch_release():
    bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert bases and all(_pinned(b) for b in bases), bases


def test_every_compose_image_is_pinned_and_the_one_built_here_carries_the_package_version():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    version = _pyproject()["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image: a pulled image must be named with its tag"
        if "build" in service:
            assert image == f"hitl-connector:{version}", (name, image)
        else:
            assert _pinned(image), (name, image)


# --- installs use the locks ---------------------------------------------------------------------------

def test_the_dockerfile_installs_every_dependency_from_the_hashed_lock_it_copies():
    text = (ROOT / "Dockerfile").read_text()
    copied = {p for m in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.MULTILINE) for p in m.split()}
    commands = _commands(text, "RUN ")
    locked = [c for c in commands if _requires_hashes_from(c, copied)]
    assert any("requirements/image.lock" in c for c in locked), commands
    assert any("requirements/nodeps.lock" in c for c in locked), commands
    for command in commands:
        words = command.split()
        torch = words[-1] == "torch==${TORCH_VERSION}" and "--index-url" in words  # see the Dockerfile
        ours = words[-1] == "." and "--no-deps" in words and "--no-build-isolation" in words
        assert command in locked or torch or ours, f"unlocked install in the Dockerfile: {command}"


def test_the_image_and_the_tests_run_the_same_torch():
    (arg,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    locked = _lock("dev.lock")["torch"][0]
    assert Version(arg) == Version(locked.public), (arg, str(locked))


def test_make_install_installs_from_the_hashed_locks_and_reinstalls_when_they_change():
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    (prereqs,) = re.findall(r"^\$\(VENV\)/\.installed:(.*)$", text, flags=re.MULTILINE)
    assert {"pyproject.toml", "requirements/dev.lock", "requirements/nodeps.lock"} <= set(prereqs.split())
    recipe = text.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    commands = [ln.strip() for ln in recipe.splitlines()[1:] if "pip install" in ln]
    allowed = {"requirements/dev.lock", "requirements/nodeps.lock"}
    locked = [c for c in commands if _requires_hashes_from(c, allowed)]
    assert any("requirements/dev.lock" in c for c in locked) and any("nodeps.lock" in c for c in locked), commands
    for command in commands:
        words = command.split()
        pip = words[-2:] == ["--upgrade", "pip"]
        ours = words[-2:] == ["-e", "."] and "--no-deps" in words and "--no-build-isolation" in words
        assert command in locked or pip or ours, f"unlocked install in `make install`: {command}"


# --- the locks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOCKS)
def test_every_entry_of_a_lock_is_pinned_and_hashed(name):
    entries = _lock(name)
    assert entries, name
    assert not [pkg for pkg, (_, hashes) in entries.items() if not hashes], f"{name}: entries without a hash"


def test_the_locks_hold_the_cpu_torch_and_no_cuda_package():
    dev = _lock("dev.lock")
    assert dev["torch"][0].local == "cpu", dev["torch"]
    assert "torch" not in _lock("image.lock")  # installed by the Dockerfile from TORCH_INDEX
    for name in LOCKS:
        cuda = [p for p in _lock(name) if p.startswith(("nvidia-", "triton", "cuda-"))]
        assert not cuda, (name, cuda)


def _uncovered(requirements: list[Requirement], lock: dict) -> list[str]:
    """The requirements the lock misses or pins outside their specifier (local versions allowed)."""
    bad = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = lock.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned[0], prereleases=True):
            bad.append(f"{req} (locked: {pinned[0] if pinned else 'missing'})")
    return bad


def test_the_dev_lock_covers_pyproject_and_its_inputs():
    project = _pyproject()
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    wanted += _in_file("dev.in")
    assert not _uncovered(wanted, _lock("dev.lock")), "pyproject.toml changed without `make lock`: " + ", ".join(
        _uncovered(wanted, _lock("dev.lock")))


def test_the_image_lock_covers_the_runtime_dependencies_at_the_dev_locks_versions():
    runtime = [Requirement(r) for r in _pyproject()["dependencies"]]
    wanted = [r for r in runtime if canonicalize_name(r.name) != "torch"] + _in_file("image.in")
    image, dev = _lock("image.lock"), _lock("dev.lock")
    missing = _uncovered(wanted, image)
    assert not missing, "pyproject.toml or image.in changed without `make lock`: " + ", ".join(missing)
    differs = {p: (str(v), str(dev[p][0])) for p, (v, _) in image.items() if p in dev and dev[p][0] != v}
    assert not differs, f"the image would run other versions than the tests: {differs}"


def test_the_image_lock_holds_what_the_cpu_torch_needs():
    locked = _lock("dev.lock")["torch"][0]
    try:
        installed = Version(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed")
    if installed != locked:
        pytest.skip(f"torch {installed} is installed, not the locked {locked}: `make install`")
    needs = [Requirement(r) for r in importlib.metadata.requires("torch") or []]
    missing = _uncovered(needs, _lock("image.lock"))
    assert not missing, "image.in lacks torch's dependencies: " + ", ".join(missing)


def test_the_no_deps_lock_holds_scattertext_alone():
    assert set(_lock("nodeps.lock")) == {"scattertext"}
    assert not _uncovered(_in_file("nodeps.in"), _lock("nodeps.lock"))
