"""qlora-bench: quantization-and-benchmark harness for QLoRA.

Data flows through the subpackages in this order: ``quant`` (storage types) → ``model`` (loading,
module replacement, LoRA) → ``data`` → ``train`` → ``evaluate`` (+ ``tasks``) → ``job`` (one config in,
one ``result.json`` out) → ``sweep`` → ``report`` → ``compare``.
"""

__version__ = "0.1.0"


def _hide_missing_cpu_kernel_notice() -> None:
    """bitsandbytes warns at import, on CPUs with AVX-512 BF16, that it cannot fetch the optional
    ``kernels-community`` gemv kernel from the Hugging Face Hub (the ``kernels`` package downloads it; no
    offline build exists). That kernel serves only one-token bf16 decoding; the harness computes through
    its own dequantize + matmul, and bitsandbytes falls back to its bundled CPU kernel anyway. This drops
    that one record and nothing else."""
    import logging

    notice = "Failed to load CPU gemm_4bit_forward from kernels-community"
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not str(record.msg).startswith(notice)
    )


_hide_missing_cpu_kernel_notice()
