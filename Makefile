# One-command set-up: every target bootstraps .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SRC := $(wildcard platform jobs tests bench serve)
# keep a locally started Ray on 127.0.0.1 (see platform/lmplatform/runtime.py)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test demo lint format stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the pinned torch first: on the dev/CI machines it is a local CPU wheel
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# the stages that exist so far: BERT pretraining on the embedded sample (data prep, Ray Train +
# DeepSpeed, export to ./registry) and GPT data prep
demo: setup
	$(PY) jobs/pretrain.py --config jobs/configs/pretrain/bert-sample.yaml
	$(PY) jobs/prepare.py --config jobs/configs/pretrain/gpt-sample.yaml

lint: setup
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

format: setup
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

stop:
	-$(VENV)/bin/ray stop --force

clean: stop
	rm -rf runs registry .pytest_cache
