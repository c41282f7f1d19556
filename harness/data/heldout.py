"""The held-out slice of an instruction set: the last ``N`` records by index, never trained on.

A split by record index (not a random draw) needs no seed and no stored list of ids: the config's
``data.source`` and ``data.heldout`` name it exactly, and every job of a sweep holds out the same records.
Training reads the records before the slice (:func:`harness.data.instruct.load_records`); the
``alpaca_heldout_local`` evaluation task reads the slice itself, so fine-tuning findings can be measured
on instructions the adapters never saw. The shipped Alpaca file's slice is ``harness.config.ALPACA_HELDOUT``.
"""

from __future__ import annotations

from typing import TypeVar

Record = TypeVar("Record")


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
