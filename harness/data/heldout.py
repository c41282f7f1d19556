"""The held-out slice of an instruction set: the last ``N`` records by index, never trained on.

A split by record index (not a random draw) needs no seed and no stored list of ids: the config's
``data.source`` and ``data.heldout`` name it exactly, and every job of a sweep holds out the same records.
Training reads the records before the slice (:func:`harness.data.instruct.load_records`); the
``alpaca_heldout_local`` evaluation task reads the slice itself, so fine-tuning findings can be measured
on instructions the adapters never saw.
"""

from __future__ import annotations

from typing import TypeVar

Record = TypeVar("Record")

# Records held out of instruct/alpaca_5000.json by data=alpaca and scored by alpaca_heldout_local.
ALPACA_HELDOUT = 250
ALPACA_FILE = "instruct/alpaca_5000.json"
HELDOUT_TASK = "alpaca_heldout_local"


class HeldoutError(ValueError):
    """``data.heldout`` leaves no record to train on, or is negative."""


def split_heldout(records: list[Record], heldout: int) -> tuple[list[Record], list[Record]]:
    """``(train, heldout)``: the last ``heldout`` records are held out, the ones before them train."""
    if not 0 <= heldout < len(records):
        raise HeldoutError(
            f"data.heldout={heldout} must be >= 0 and below the number of records ({len(records)}), "
            "so that some records are left to train on"
        )
    cut = len(records) - heldout
    return records[:cut], records[cut:]
