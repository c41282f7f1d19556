"""The devices a plan can be made for: memory and the dense bf16 tensor rate each vendor publishes.

Memory is the total a CUDA device reports (``nvidia-smi`` / ``torch.cuda.get_device_properties``), a little
under the marketed GB. Rates are dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation,
from NVIDIA's data sheets and architecture white papers: T4 (Turing) and V100 (Volta) have no bf16 tensor
cores, so their fp16 rate is listed (65 and 125 TFLOP/s, SXM2) and bf16 runs far below it there.
Sources: T4 datasheet (65 TFLOPS mixed precision); V100 datasheet (125 TFLOPS tensor, SXM2); A10 datasheet
(BF16 125 TF); L4 datasheet (BF16 242 TF with sparsity); GA102 white paper, RTX 3090 (71 dense BF16 with
FP32 accumulate); Ada white paper, RTX 4090 (165.2); RTX A6000 datasheet (309.7 with sparsity); A100
datasheet (BF16 312 TF); H100 SXM5 datasheet (1,979 with sparsity); H200 datasheet (1,979 with sparsity).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

GIB = 2**30


class DeviceError(ValueError):
    """``plan.device`` names no known device."""


@dataclass(frozen=True)
class DeviceSpec:
    """A device to plan for: ``kind`` cuda or cpu, memory in GiB, dense bf16 peak in TFLOP/s (None: not
    published; the CPU's is measured when its time is predicted)."""

    name: str
    kind: str
    memory_gib: float
    peak_tflops: float | None
    note: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


_NO_BF16 = "no bf16 tensor cores: the fp16 rate is listed"
DEVICES: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        DeviceSpec("t4", "cuda", 15.0, 65.0, _NO_BF16),
        DeviceSpec("v100-16", "cuda", 15.8, 125.0, _NO_BF16),
        DeviceSpec("v100-32", "cuda", 31.7, 125.0, _NO_BF16),
        DeviceSpec("a10", "cuda", 22.5, 125.0),
        DeviceSpec("l4", "cuda", 22.5, 121.0),
        DeviceSpec("rtx3090", "cuda", 24.0, 71.0),
        DeviceSpec("rtx4090", "cuda", 24.0, 165.2),
        DeviceSpec("a6000", "cuda", 48.0, 154.8),
        DeviceSpec("a100-40", "cuda", 40.0, 312.0),
        DeviceSpec("a100-80", "cuda", 80.0, 312.0),
        DeviceSpec("h100-80", "cuda", 79.6, 989.0, "SXM5; the PCIe card: 756 TFLOP/s"),
        DeviceSpec("h200", "cuda", 140.4, 989.0),
    )
}
CPU = "cpu"


def host_cpu() -> DeviceSpec:
    """This machine's CPU: its total memory; its rate is measured when a plan predicts time."""
    return DeviceSpec(CPU, "cpu", psutil.virtual_memory().total / GIB, None, "this machine")


def device_spec(name: str | None, memory_gib: float | None) -> DeviceSpec:
    """The named device, with ``memory_gib`` replacing its memory when given; memory alone is a CUDA device
    of that size and no known rate. A name not in the table raises DeviceError naming the allowed ones."""
    if name is None:
        if memory_gib is None:
            raise DeviceError("a plan needs plan.device=<name> or plan.memory_gib=<GiB>")
        return DeviceSpec(f"{memory_gib:g} GiB", "cuda", float(memory_gib), None)
    key = name.lower()
    if key == CPU:
        spec = host_cpu()
    elif key in DEVICES:
        spec = DEVICES[key]
    else:
        raise DeviceError(
            f"plan.device={name!r} is not a known device; allowed: {', '.join([*DEVICES, CPU])}"
        )
    if memory_gib is not None:
        spec = DeviceSpec(spec.name, spec.kind, float(memory_gib), spec.peak_tflops, spec.note)
    return spec


def known_device(cuda_name: str, memory_gib: float) -> DeviceSpec:
    """The table's row for a CUDA device as torch names it (``NVIDIA H100 80GB HBM3``), with its measured
    memory; a device the table lacks keeps the name and memory and has no rate."""
    name = cuda_name.lower().replace(" ", "").replace("-", "")
    for key, spec in sorted(DEVICES.items(), key=lambda kv: -len(kv[0])):
        model, _, size = key.partition("-")
        if model in name and (not size or size in name or abs(spec.memory_gib - memory_gib) < 2):
            return DeviceSpec(spec.name, "cuda", memory_gib, spec.peak_tflops, spec.note)
    return DeviceSpec(cuda_name, "cuda", memory_gib, None)
