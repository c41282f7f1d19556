"""No silent acceptance (issue 23): options that only apply to some storage types are refused, or warned
about where a sweep may set them for every type, naming the keys involved."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.config import validate_config

NF4_LEVELS = "[-1,-0.7,-0.53,-0.39,-0.28,-0.18,-0.09,0,0.08,0.16,0.25,0.34,0.44,0.56,0.72,1]"


def test_codebook_with_a_fixed_level_type_exits_nonzero_naming_both_keys(tmp_path):
    """``qlora-bench quant.storage=nf4 quant.codebook=[...]`` used to run and ignore the codebook."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harness.cli import bench; bench()",
            "quant.storage=nf4",
            f"quant.codebook={NF4_LEVELS}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "quant.codebook=" in output and "quant.storage='nf4'" in output, output[-2000:]


@pytest.mark.parametrize("storage", ["bf16", "int8"])
def test_dense_weights_budget_without_4bit_weights_warns(storage: str):
    with pytest.warns(
        UserWarning, match=rf"eval.dense_weights_mib=64 does nothing for quant.storage={storage}"
    ):
        validate_config({"quant": {"storage": storage}, "eval": {"dense_weights_mib": 64}})


def test_dense_weights_budget_with_4bit_weights_is_quiet(recwarn):
    validate_config({"quant": {"storage": "nf4"}, "eval": {"dense_weights_mib": 64}})
    assert not [w for w in recwarn if "dense_weights_mib" in str(w.message)]
