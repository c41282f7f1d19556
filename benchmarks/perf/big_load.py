"""Load + quantize a ~1B-parameter random Llama saved as several safetensors shards, and show that the peak
resident set stays below (quantized size + one shard + baseline) x 1.2: the full-precision model never sits
in memory at once. The eager path (transformers' from_pretrained, then quantize) is measured beside it.

``python -m benchmarks.perf.big_load [--dir /tmp/llama-1b] [--out reports/perf/load_1b_cpu.md]`` (under
``flock /tmp/qlora-heavy.lock``; writes ~2 GB of bf16 shards once, each load runs in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.perf.render import table
from harness.device import device_name
from harness.env import git_commit

CONFIG = {  # TinyLlama-1.1B's widths, 20 blocks: 1.0 B parameters
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "max_position_embeddings": 2048,
}
SHARD_BYTES = 400 * 2**20
BOUND = 1.2


def write_random_llama(directory: Path) -> None:
    """config.json, bf16 shards of ≤ SHARD_BYTES and their index, a tokenizer; one shard in memory at once."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.model.tiny import build_tiny_tokenizer

    if (directory / "model.safetensors.index.json").is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**CONFIG, dtype="bfloat16")
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    torch.manual_seed(0)
    weight_map, shard, size, total = {}, {}, 0, 0

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))

    for name, param in skeleton.named_parameters():
        tensor = (torch.randn(param.shape) * 0.02).to(torch.bfloat16)
        if size and size + tensor.nbytes > SHARD_BYTES:
            flush()
            shard, size = {}, 0
        shard[name], size, total = tensor, size + tensor.nbytes, total + tensor.nbytes
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)


def measure(directory: Path, stream: bool) -> dict:
    """In this process: baseline, load + quantize (the default quant=nf4: NF4 + DQ; bf16 compute) by the
    job's quantize stage, under the job's loading heap; peak resident set."""
    from harness.config import ModelConfig, QuantConfig
    from harness.model.loading import load_model
    from harness.recipe import Runtime, quantize
    from harness.train.meters import heap_policy, reset_peak_memory, rss_bytes

    runtime = Runtime(torch.device("cpu"), torch.bfloat16, "set by the benchmark")
    with heap_policy(lean=True):  # load as a job does
        baseline = rss_bytes()
        reset_peak_memory(runtime.device)
        loaded = load_model(ModelConfig(name_or_path=str(directory)), runtime.dtype, stream_weights=stream)
        summary = quantize(QuantConfig(), runtime, loaded)
        peak, end = rss_bytes("VmHWM"), rss_bytes()
    tensors = {id(t): t.nbytes for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    return {
        "stream": stream,
        "baseline": baseline,
        "peak": peak,
        "end": end,
        "model_bytes": sum(tensors.values()),
        "quantized_weight_bytes": summary.weight_bytes,
        "params": summary.quantized_params,
    }


def spawn(directory: Path, stream: bool) -> dict:
    flag = ["--stream"] if stream else []
    cmd = [sys.executable, "-m", "benchmarks.perf.big_load", "--dir", str(directory), "--worker", *flag]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(directory: Path, runs: list[dict]) -> str:
    shards = sorted(directory.glob("*.safetensors"))
    largest = max(p.stat().st_size for p in shards)
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    rows = []
    for r in runs:
        bound = (r["model_bytes"] + largest + r["baseline"]) * BOUND
        verdict = "below" if r["peak"] <= bound else "**above**"
        path = "streamed (stream_weights=True)" if r["stream"] else "eager (from_pretrained, then quantize)"
        rows.append(
            [
                path,
                gib(r["baseline"]),
                gib(r["peak"]),
                gib(r["end"]),
                gib(r["model_bytes"]),
                gib(bound),
                verdict,
            ]
        )
    headers = [
        "load path",
        "baseline GiB",
        "peak RSS GiB",
        "RSS after GiB",
        "quantized model GiB",
        "bound GiB",
        "peak vs bound",
    ]
    return (
        "\n\n".join(
            [
                "# Loading a 1B-parameter model without its full-precision size in memory (CPU)",
                f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; command: "
                f"`python -m benchmarks.perf.big_load`; commit {git_commit()}; machine: "
                f"{device_name(torch.device('cpu'))}, "
                f"{os.cpu_count()} cores; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())}",
                f"- model: random Llama, {runs[0]['params'] / 1e9:.2f} B quantized parameters ({CONFIG}), "
                f"bf16 in {len(shards)} safetensors shards (largest {gib(largest)} GiB, total "
                f"{gib(sum(p.stat().st_size for p in shards))} GiB); NF4 + double quant, block 64, bf16 "
                "compute, lm_head and embeddings kept in bf16",
                f"- bound: (quantized model + largest shard + baseline) x {BOUND}; peak: VmHWM reset before "
                "loading",
                table(headers, rows),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf.big_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dir", type=Path, default=Path("/tmp/qlora-bench-llama-1b"))
    p.add_argument("--out", type=Path, default=Path("reports/perf/load_1b_cpu.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.dir, args.stream)))
        return
    write_random_llama(args.dir)
    text = report(args.dir, [spawn(args.dir, stream=True), spawn(args.dir, stream=False)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
