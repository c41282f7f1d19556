"""The one data-directory setting through which real data sets are found (never copied in)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.paths import CHECKOUT

DATA_DIR_ENV = "QLORA_DATA_DIR"
# ../shared/data beside the checkout; an installed wheel has no checkout, so the setting must be given.
SHARED_DATA_DIR = CHECKOUT.parent / "shared" / "data" if CHECKOUT else None


class DataDirError(FileNotFoundError):
    """The data directory, or a file expected in it, does not exist."""


def resolve_data_dir(configured: str | os.PathLike | None = None) -> Path:
    """``data.data_dir``, else ``$QLORA_DATA_DIR``, else ``../shared/data`` beside the repo."""
    value = configured or os.environ.get(DATA_DIR_ENV)
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataDirError(
                f"data directory {str(path)!r} does not exist (set by data.data_dir or ${DATA_DIR_ENV})"
            )
        return path.resolve()
    if SHARED_DATA_DIR is not None and SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR
    raise DataDirError(
        f"no data directory: set data.data_dir=... or ${DATA_DIR_ENV} "
        f"(default: ../shared/data beside the checkout; {SHARED_DATA_DIR or 'not a checkout'})"
    )


def data_file(relative: str, data_dir: str | os.PathLike | None = None) -> Path:
    """A file inside the data directory; a missing file names itself and the setting that points there."""
    base = resolve_data_dir(data_dir)
    path = base / relative
    if not path.exists():
        raise DataDirError(
            f"data file {str(path)!r} not found; the data directory {str(base)!r} comes from "
            f"data.data_dir or ${DATA_DIR_ENV}"
        )
    return path
