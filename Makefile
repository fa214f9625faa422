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
# Ray token authentication on for every Ray this Makefile starts or talks to: Ray 2.60's
# `ray start` turns it on only where a token already exists (2.61 always); `make demo` creates
# the token where none exists. RAY_AUTH_MODE=disabled opts out.
export RAY_AUTH_MODE ?= token

.PHONY: setup test demo lint format stop clean image

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the pinned torch first: on the dev/CI machines it is a local CPU wheel
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q --durations=20

# the whole path on a local Ray (127.0.0.1): pretraining, three fine-tuning searches, promotion,
# deployment; the endpoints stay up (make stop). The job's `python` is this project's venv.
RAY_PORT ?= 6379
DASHBOARD_PORT ?= 8265
DEMO_CPUS ?= 2
demo: setup
	@$(PY) -m lmplatform.runtime ensure-token
	@$(PY) -c "import socket; socket.create_connection(('127.0.0.1', $(RAY_PORT)), 1)" 2>/dev/null \
	  && echo "using the Ray already running on 127.0.0.1:$(RAY_PORT)" \
	  || PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ray start --head --port=$(RAY_PORT) \
	     --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --dashboard-port=$(DASHBOARD_PORT) \
	     --num-cpus=$(DEMO_CPUS) --disable-usage-stats
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ray job submit \
	  --address http://127.0.0.1:$(DASHBOARD_PORT) --working-dir . --runtime-env jobs/runtime_env.yaml \
	  -- python jobs/pipeline.py --config jobs/configs/pipeline/demo.yaml \
	  output_dir=$(CURDIR)/runs registry=$(CURDIR)/registry
	@echo
	@echo "endpoints (up until make stop):"
	@echo "  curl -s 127.0.0.1:8000/v1/tasks"
	@echo "  curl -s -X POST 127.0.0.1:8000/v1/predict/sentiment-sample -H 'Content-Type: application/json' -d '{\"inputs\": [\"a great film\"]}'"
	@echo "  http://127.0.0.1:8000/docs    report: runs/demo/report.html"
	@echo "  dashboard: http://127.0.0.1:$(DASHBOARD_PORT) (it asks for the Ray token)"
	@echo "  $$($(PY) -m lmplatform.runtime ensure-token)"
	@echo "  Ray's CLI against this head (ray job list, serve status): export RAY_AUTH_MODE=token first"

# the cluster nodes' image (docker/Dockerfile); cluster.yaml's docker.image names it
IMAGE ?= lmplatform:0.1.0
image:
	docker build -f docker/Dockerfile -t $(IMAGE) .

lint: setup
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

format: setup
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

stop:
	-$(VENV)/bin/ray stop --force
	@echo "Ray (and the endpoints) stopped"

clean: stop
	rm -rf runs registry .pytest_cache
