"""lm-eval task YAMLs shipped with the harness (``<task>_local``), found through ``TASKS_DIR``.

The tasks read their data from the data directory (``data.data_dir`` / ``$QLORA_DATA_DIR``) when they are
built, never at import time; see :mod:`harness.tasks.utils`. A task folder of your own
(``eval.include_path``) can reuse them: ``include:`` one of the templates here by absolute path, or set
``custom_dataset: !function harness.tasks.utils.load_local`` and ``dataset_kwargs: {reader, files}``.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
