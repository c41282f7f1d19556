"""qlora-bench: quantization-and-benchmark harness for QLoRA.

Data flows through the subpackages in this order: ``quant`` (storage types) → ``model`` (loading,
module replacement, LoRA) → ``data`` → ``train`` → ``evaluate`` (+ ``tasks``) → ``job`` (one config in,
one ``result.json`` out) → ``sweep`` → ``report`` → ``compare``.
"""

__version__ = "0.1.0"
