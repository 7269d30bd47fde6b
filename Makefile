# imagefactory: the same commands as `python -m imagefactory …` and nox, for people who type make.
# `make help` lists the targets (every target with a `## ` comment).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(PY) -m imagefactory

.DEFAULT_GOAL := help
.PHONY: help venv render check test lint targets bootstrap host FORCE

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_\/%.-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  (targets: make targets; build one: make build/hopper-cu130)"

# A stamp file, not $(PY): $(PY) is a symlink, and touching it would touch the system python.
STAMP  := $(VENV)/.imagefactory-installed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with the package (editable) and dev tools

targets: $(STAMP) ## List the targets of matrix.yaml
	$(CLI) targets

render: $(STAMP) ## Render dockerfiles/<target>/Dockerfile (writes only changed files)
	$(CLI) render

check: $(STAMP) ## Fail (exit 1) if any rendered Dockerfile differs from matrix.yaml + templates/
	$(CLI) render --check

test: $(STAMP) ## ruff + mypy, then every test (docker/gpu tests skip themselves when absent)
	$(PY) -m ruff check
	$(PY) -m mypy
	$(PY) -m pytest --slow

lint: $(STAMP) ## ruff, mypy, render --check, docs --check and hadolint on every rendered Dockerfile
	$(PY) -m nox -s lint

# Before the venv: on a fresh machine it installs python3-venv too (as root; otherwise it says what to run).
host: ## Make this Debian/Ubuntu machine ready: Docker, mmdebstrap, a running daemon (installs as root)
	@scripts/host-setup

bootstrap: host $(STAMP) ## Bootstrap the local base images imagefactory/base:bookworm[-build]
	$(CLI) bootstrap

build/%: host $(STAMP) FORCE ## Build one target and gate it, e.g. make build/hopper-cu130
	$(CLI) build $*

gate/%: host $(STAMP) FORCE ## Run the probe + smoke gate in a built target image
	$(CLI) gate $*

push/%: $(STAMP) FORCE ## Push a gated target image
	$(CLI) push $*

# build/% and friends name commands, not files: FORCE runs them even where a path build/<id> exists
# (pattern rules cannot be .PHONY).
FORCE:
