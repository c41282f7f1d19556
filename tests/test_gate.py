"""The CI gate's own pieces (issue 13): the fixed-text task and the fault planting of gate_power.

Fast checks only; benchmarks/gate_power.py itself runs sweeps and is a benchmark, not a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.evaluate.tasks import task_manager
from harness.model.tiny import build_tiny_model, build_tiny_tokenizer
from harness.tasks.fixed_text import PRINTABLE, fixed_text_dataset, sample_texts

ROOT = Path(__file__).resolve().parents[1]
GATE_POWER = ROOT / "benchmarks" / "gate_power.py"


def test_fixed_text_is_deterministic_printable_and_reencodes_to_its_tokens():
    rng_before = torch.random.get_rng_state()
    texts = sample_texts(num_docs=3, doc_tokens=24)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "sampling must not move the global RNG"
    assert texts == sample_texts(num_docs=3, doc_tokens=24)
    assert texts != sample_texts(num_docs=3, doc_tokens=24, seed=1)
    tokenizer = build_tiny_tokenizer()
    for text in texts:
        assert set(text) <= PRINTABLE
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 24


def _mean_nll(model: torch.nn.Module, texts: list[str]) -> float:
    """Mean next-token NLL after the end-of-text prefix, as lm-eval's rolling loglikelihood scores it."""
    tokenizer = build_tiny_tokenizer()
    ids = torch.tensor(
        [[tokenizer.eos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    )
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()


def test_weight_noise_raises_the_fixed_text_nll_and_more_noise_raises_it_more():
    """The task's premise: text sampled from the model is best predicted by the model itself (KL >= 0)."""
    texts = sample_texts(num_docs=8, doc_tokens=64)
    nll = {}
    for scale in (0.0, 0.02, 0.1):
        model, _ = build_tiny_model()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("proj.weight"):
                    param.add_(torch.randn(param.shape, generator=generator) * param.std() * scale)
        nll[scale] = _mean_nll(model, texts)
    assert nll[0.0] < nll[0.02] < nll[0.1], nll


def test_fixed_text_task_is_registered_and_reads_the_sampled_texts():
    assert "fixed_text_local" in task_manager((), None, False).task_index
    rows = fixed_text_dataset(data_dir=None)["test"]
    assert len(rows) == 32 and all(len(row["text"]) == 128 for row in rows)


def _in_planted_child(fault: str, code: str, boot: Path) -> str:
    """Run ``code`` in a fresh interpreter started the way gate_power starts every sweep process."""
    sys.path.insert(0, str(GATE_POWER.parent))
    try:
        import gate_power
    finally:
        sys.path.pop(0)
    (boot / "sitecustomize.py").write_text(gate_power.SITECUSTOMIZE)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(boot), os.environ.get("PYTHONPATH")])),
        gate_power.FAULT_ENV: fault,
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("fault", "code", "expected"),
    [
        # the planted process stores Int4 on the coarse grid: at most 7 levels
        (
            "int4-grid-3",
            "import torch; from harness.quant import quantize; "
            "w = quantize(torch.randn(4096), 'int4', 64, False).dequantize(); "
            "print(max(len(torch.unique(b)) for b in w.view(-1, 64)))",
            "7",
        ),
        # the recipe module, imported after the patch, binds the patched attach_lora
        (
            "no-lora-dropout",
            "import harness.model.lora as lora; from harness.recipe import attach_lora; "
            "print(attach_lora is lora.attach_lora and attach_lora.__name__ == '<lambda>')",
            "True",
        ),
    ],
)
def test_a_planted_fault_reaches_a_new_python_process(fault, code, expected, tmp_path):
    assert _in_planted_child(fault, code, tmp_path) == expected
