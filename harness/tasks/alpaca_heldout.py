"""Dataset and scoring of ``alpaca_heldout_local``: the instruction loss on records training never sees.

The records are the last :data:`~harness.config.ALPACA_HELDOUT` of the instruction file (the slice
``data=alpaca`` holds out), read through the same ``data.source`` resolution as training. Each document is
one record: its training prompt as context and its response as the continuation, so the log-likelihood
is the loss the adapters minimise, on unseen instructions. Per-word and per-byte normalisation, as for
WikiText-2, lets the paired per-document statistics rebuild the corpus value exactly.
"""

from __future__ import annotations

import re
from typing import Any

from datasets import Dataset, DatasetDict

from harness.config import ALPACA_HELDOUT, DataConfig
from harness.data.heldout import split_heldout
from harness.data.instruct import read_records
from harness.data.prompts import format_prompt


def heldout_rows(records: list[dict], heldout: int) -> list[dict[str, Any]]:
    """The held-out records as ``{record, prompt, response}``; ``record`` is the index in the file."""
    train, held = split_heldout(records, heldout)
    return [
        {
            "record": len(train) + offset,
            "prompt": format_prompt(str(rec["instruction"]), str(rec.get("input") or "")),
            "response": str(rec["output"]),
        }
        for offset, rec in enumerate(held)
    ]


def heldout_dataset(
    files: dict[str, str], data_dir: str | None = None, heldout: int = ALPACA_HELDOUT, **_: Any
) -> DatasetDict:
    """lm-eval ``custom_dataset``: each split's file (under the data directory) → its held-out rows."""
    return DatasetDict(
        {
            split: Dataset.from_list(
                heldout_rows(read_records(DataConfig(source=rel, data_dir=data_dir)), heldout)
            )
            for split, rel in files.items()
        }
    )


def process_results(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, tuple[float, int]]:
    """The response's log-likelihood with its word and byte counts (lm-eval's weighted perplexity pairs)."""
    ((loglikelihood, _is_greedy),) = results
    response = doc["response"]
    words = len(re.split(r"\s+", response.strip()))
    size = len(response.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }
