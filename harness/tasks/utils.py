"""Dataset loaders behind the ``*_local`` task YAMLs (lm-eval ``custom_dataset`` functions).

Why ``custom_dataset`` rather than ``dataset_path: json`` with ``data_files``: a YAML cannot know where
the data directory is, and lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)`` when it builds
the task, so the directory can be chosen at run time. :func:`harness.evaluate.tasks.task_manager` puts
``data_dir`` (``data.data_dir``, or ``None`` for ``$QLORA_DATA_DIR`` / the default) into the
TaskManager's metadata, and each YAML names its files, relative to that directory, in
``dataset_kwargs.files``; :func:`harness.data.paths.data_file` resolves them, so a missing file names
itself and the setting. Nothing is downloaded or cached: the rows become in-memory ``datasets.Dataset``.
"""

from __future__ import annotations

import bz2
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from harness.data.paths import data_file
from harness.data.prompts import format_prompt
from harness.data.synthetic import COLOURS, synthetic_facts

Row = dict[str, Any]

# A top-level WikiText heading (` = Title = `); sections (` = = Section = = `) stay inside the article.
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $", re.MULTILINE)
_HELLASWAG_LINES_PER_TASK = 6  # "<activity_label>: <ctx>", gold index, four endings


def read_jsonl(path: Path) -> list[Row]:
    """One JSON object per non-empty line (the llm-foundry ICL files and the rowanz HellaSwag rows)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_mmlu_csv(path: Path) -> list[Row]:
    """MMLU CSV with header ``question,choice0..choice3,answer`` → lm-eval's ``cais/mmlu`` fields."""
    with path.open(encoding="utf-8", newline="") as fh:  # newline="" keeps CRs inside quoted fields
        return [
            {
                "question": rec["question"],
                "choices": [rec[f"choice{i}"] for i in range(4)],
                "answer": int(rec["answer"]),
            }
            for rec in csv.DictReader(fh)
        ]


def split_wikitext_articles(text: str) -> list[str]:
    """Split raw WikiText into articles, each starting at its ` = Title = ` heading.

    The shipped file has CRLF endings and lacks the HF split's empty rows, so after CRLF → LF the text
    is the concatenation of the split's rows; an article is every row from one heading to the next, the
    same unit as the ``page`` of lm-eval's ``EleutherAI/wikitext_document_level``.
    """
    text = text.replace("\r\n", "\n")
    starts = [m.start() for m in _ARTICLE_HEADING.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def read_wikitext(path: Path) -> list[Row]:
    """Articles of a raw WikiText file as ``{"page": ...}`` rows, the field lm-eval's wikitext reads."""
    return [{"page": page} for page in split_wikitext_articles(path.read_text(encoding="utf-8"))]


def read_hellaswag_txt(path: Path) -> list[Row]:
    """llama.cpp's ``--hellaswag`` text (bzip2): six lines per task → ``query``/``choices``/``gold``.

    The text was preprocessed by klosax/hellaswag_text_data's ``extract_hellaswag.cpp`` ([header]/[step]
    tags removed, double spaces collapsed) and keeps ``ctx`` as one string, so unlike lm-eval's
    ``hellaswag`` the second context sentence is not capitalised; scores differ slightly from lm-eval's.
    """
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    n = _HELLASWAG_LINES_PER_TASK
    if len(lines) % n:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of {n}")
    return [
        {"query": lines[i], "gold": int(lines[i + 1]), "choices": lines[i + 2 : i + n]}
        for i in range(0, len(lines), n)
    ]


READERS: dict[str, Callable[[Path], list[Row]]] = {
    "jsonl": read_jsonl,
    "mmlu_csv": read_mmlu_csv,
    "wikitext": read_wikitext,
    "hellaswag_txt": read_hellaswag_txt,
}


def load_local(reader: str, files: dict[str, str], data_dir: str | None = None, **_: Any) -> DatasetDict:
    """Read each split's file (relative to the data directory) with ``READERS[reader]``.

    ``**_`` swallows the rest of the task metadata that lm-eval passes along (version, config source).
    """
    return DatasetDict(
        {split: Dataset.from_list(READERS[reader](data_file(rel, data_dir))) for split, rel in files.items()}
    )


def synthetic_dataset(**_: Any) -> DatasetDict:
    """The synthetic facts as multiple choice over all colours; the query is exactly the training prompt."""
    rows = [
        {"query": format_prompt(fact.question), "choices": list(COLOURS), "gold": COLOURS.index(fact.colour)}
        for fact in synthetic_facts()
    ]
    return DatasetDict({"test": Dataset.from_list(rows)})
