"""A user's own storage type (``quant.storage=package.module:Object`` or an entry point) runs like a built-in:
one tiny-model job through harness.job trains, evaluates, measures bits/param from the stored tensors, and
reports and gates; a reference that does not resolve to a StorageSpec fails before the model is loaded."""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.compare.cli import main as compare_main
from harness.config import QuantConfig
from harness.job import run_job
from harness.quant import StorageError, quantize, storage_spec
from harness.report.cli import main as report_main
from harness.result import read_result

TINY_JOB = ("model=tiny", "train=smoke", "data.num_synthetic=128", "train.steps=2")

# A 4-bit uniform quantizer with one fp16 scale per row, as a user would write it (docs/storage_plugins.md).
PLUGIN = '''
import torch

from harness.quant import StorageArgs, StorageSpec


class Uniform4(StorageSpec):
    """Codes -7..7 (two per byte) times one fp16 scale per row."""

    blockwise = False  # quant.blocksize and quant.double_quant do not apply

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        rows = weight.float().reshape(weight.shape[0], -1)
        scale = (rows.abs().amax(dim=1, keepdim=True) / 7).half()
        codes = (rows / scale.float().clamp_min(1e-30)).round().to(torch.int8).view(torch.uint8) & 15
        return {"codes": (codes[:, 0::2] << 4) | codes[:, 1::2], "scale": scale}

    def decode(self, tensors, shape, args, dtype) -> torch.Tensor:
        packed = tensors["codes"]
        high, low = packed.view(torch.int8) >> 4, (packed << 4).view(torch.int8) >> 4
        codes = torch.stack([high, low], dim=-1).flatten(-2)
        return (codes.float() * tensors["scale"].float()).to(dtype).view(shape)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return 4 + 16 / shape[-1]
'''
# What a plugin can get wrong: a method left out, an object that is no StorageSpec.
BROKEN_CLASSES = """

class NoDecode(StorageSpec):
    def encode(self, weight, args):
        return {"codes": weight}


class NotASpec:
    def encode(self, weight, args):
        return {"codes": weight}
"""


@pytest.fixture
def module(tmp_path, monkeypatch) -> str:
    """The plugin (and the broken classes) as a module of its own on the Python path, named after this
    test's folder so that no test imports another's; its name."""
    name = f"plugin_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(PLUGIN + BROKEN_CLASSES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def plugin(module: str) -> str:
    return f"{module}:Uniform4"


def test_plugin_round_trip_is_within_half_a_step(plugin):
    """The plugin's own arithmetic through harness.quant.quantize: per row, |error| <= scale / 2 (plus the
    fp16 rounding of the scale, under 2^-11 relative, times 7 steps), and bits/param from its tensors."""
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    qweight = quantize(weight, plugin, double_quant=False)
    scale = qweight.tensors["scale"].float()
    assert ((qweight.dequantize() - weight).abs() <= scale * (0.5 + 7 * 2**-11)).all()
    assert qweight.bits_per_param == 4 + 16 / 64 == storage_spec(plugin).bits_per_param(None, weight.shape)


def test_plugin_job_trains_evaluates_reports_and_gates(job_config, plugin, tmp_path):
    """A job with the plugin through the real job path: ok, trained, evaluated; bits/param measured from the
    stored tensors equals the plugin's formula summed over the layers, and so does the memory model's term
    for the frozen weights; qlora-report reads the result and qlora-compare gates it against itself."""
    job_dir = tmp_path / "runs" / "plugin"
    result = run_job(job_config(*TINY_JOB, "eval=synthetic", f"quant.storage={plugin}"), job_dir)
    assert result.ok, result.error
    record = read_result(job_dir / "result.json")
    assert record["config"]["quant"]["storage"] == plugin
    assert record["train"]["steps"] == 2 and record["eval"]
    quant = record["quant"]
    assert quant["layers"] > 0 and quant["weight_error"]["rel_rms"] > 0
    assert quant["bits_per_param"] == 8 * quant["weight_bytes"] / quant["quantized_params"]
    assert record["train"]["memory_estimate"]["terms"]["quantized_weights"] == quant["weight_bytes"]

    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), "-o", str(out), "--no-figures"]) == 0
    assert plugin in (out / "results.csv").read_text()
    assert f"| {quant['bits_per_param']:.3f} |" in (out / "report.md").read_text()
    assert compare_main([str(tmp_path / "runs"), str(tmp_path / "runs")]) == 0


BROKEN = [
    ("no_such_storage_pkg.mod:Thing", "module 'no_such_storage_pkg.mod' cannot be imported"),
    ("{module}:Missing", "module '{module}' has no attribute 'Missing'"),
    ("{module}:NoDecode", "NoDecode does not implement bits_per_param, decode"),
    ("{module}:NotASpec", "is a type, not a harness.quant.StorageSpec subclass or instance; it lacks decode"),
    ("nf5", "quant.storage='nf5' is not a storage type; allowed: nf4, fp4"),
]


@pytest.mark.parametrize(("reference", "message"), BROKEN)
def test_broken_plugin_fails_before_the_model_loads(job_config, module, tmp_path, reference, message):
    """A module that is missing, an attribute that is missing, a class that leaves methods unimplemented or
    an object that is no StorageSpec: the job fails naming what is missing, with no model block."""
    reference, message = reference.format(module=module), message.format(module=module)
    result = run_job(job_config(*TINY_JOB, f"quant.storage={reference}"), tmp_path / "job")
    assert result.status == "failed" and message in result.error.message
    assert result.model is None and result.quant is None
    with pytest.raises(StorageError, match="quant.storage"):
        QuantConfig(storage=reference)


def test_entry_point_names_a_plugin(plugin, tmp_path):
    """An installed package can register its type under the entry point group ``qlora_bench.storage``:
    the name then works as quant.storage and is listed among the allowed names."""
    dist = tmp_path / "my_storage_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-storage-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[qlora_bench.storage]\nuniform4 = {plugin}\n")
    importlib.invalidate_caches()
    assert QuantConfig(storage="uniform4", double_quant=False).spec().name == "uniform4"
    with pytest.raises(StorageError, match=r"allowed: nf4, .*, fp32, uniform4, or package.module:Object"):
        storage_spec("nf5")
