"""Read a safetensors checkpoint one tensor at a time, so a model is quantized without its full-precision
size ever in memory (the paper's point: a 65B model fine-tuned on one 48 GB GPU).

Each tensor is read from its file into memory of its own, at the offsets the safetensors header gives.
``safetensors.safe_open`` would map the whole file instead, and every page of it that was read stays in
the process's resident set until the file is closed: the full-precision model, one shard at a time.
Reading a layer, quantizing it and dropping the full-precision weight keeps one layer resident beyond the
quantized model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, tensor name -> {dtype, shape, data_offsets}) of a safetensors file."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


class ShardedCheckpoint:
    """The tensors of a local model directory's safetensors file(s), by parameter name."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # tensor name -> the shard that holds it
        self._headers: dict[Path, tuple[int, dict]] = {}

    @classmethod
    def find(cls, directory: str | Path) -> ShardedCheckpoint | None:
        """The checkpoint in ``directory`` (sharded with an index, or one file); None when it has neither."""
        directory = Path(directory)
        if (directory / INDEX_FILE).is_file():
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
            return cls({name: directory / shard for name, shard in weight_map.items()})
        single = directory / SINGLE_FILE
        if single.is_file():
            return cls(dict.fromkeys(read_header(single)[1], single))
        return None

    @property
    def shards(self) -> list[Path]:
        return sorted(set(self.files.values()))

    def shard_position(self, name: str) -> tuple[Path, str]:
        """Sort key that reads tensors shard by shard."""
        return self.files[name], name

    def read(self, name: str) -> torch.Tensor:
        """The stored tensor, read into fresh memory (dropping it frees it)."""
        path = self.files[name]
        if path not in self._headers:
            self._headers[path] = read_header(path)
        data_start, header = self._headers[path]
        entry = header[name]
        begin, end = entry["data_offsets"]
        tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        if tensor.nbytes != end - begin:
            raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {entry['shape']}")
        with path.open("rb") as handle:
            handle.seek(data_start + begin)
            read = handle.readinto(tensor.view(-1).view(torch.uint8).numpy())
        if read != end - begin:
            raise ValueError(
                f"{path} is cut short: tensor {name!r} needs {end - begin} bytes, the file holds {read}; "
                "copy or convert the model again"
            )
        return tensor
