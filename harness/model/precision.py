"""The dtypes a job's model computes in, for training and evaluation alike.

The frozen model computes in the job's compute dtype; the LoRA weights are fp32 (peft's default). Training
runs every forward under :func:`adapter_autocast` with peft's input cast off (:func:`adapters_as_trained`),
so each adapter matmul runs in the compute dtype from its fp32 weights. Evaluation runs the same forward, so
a trained model is scored as it was trained, and takes log-probabilities in fp32 as the training loss does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft.helpers import disable_input_dtype_casting


def model_compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the frozen model computes in: the harness casts the layers it does not quantize, the input
    embeddings among them, to the job's compute dtype."""
    return model.get_input_embeddings().weight.dtype


def autocast_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype for a model computing in ``dtype``: None (no autocast) in fp32."""
    return None if dtype == torch.float32 else dtype


def adapter_autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """The forward's matmuls in the compute dtype, the fp32 LoRA weights cast for them, as transformers'
    Trainer runs a bf16 model with ``bf16=True``. Without it peft casts each adapter's input up to its
    weights' fp32, and every LoRA matmul, dropout, scaling and sum runs in fp32 with a cast on either side
    (with the in-shape dequantize of harness.quant.bnb4, the median bf16 SmolLM2 step went from 2.91 to
    2.07 s: reports/perf/bench_cpu*.md). The weights, their gradients and the optimizer stay fp32;
    checkpointing re-enters the same autocast when it recomputes."""
    return torch.autocast(device.type, dtype=dtype, enabled=autocast_dtype(dtype) is not None)


@contextlib.contextmanager
def adapters_as_trained(model: torch.nn.Module) -> Iterator[None]:
    """peft's cast of each adapter input up to the fp32 weights, off: under :func:`adapter_autocast` the
    cast is undone by the matmul's own cast back, so it only costs two copies per adapter."""
    with disable_input_dtype_casting(model):
        yield
