"""Dataset of ``wikitext2_para_local``: WikiText-2 raw test, one document per paragraph.

Why paragraphs: a paired comparison needs many documents, and the article-level task
(``wikitext2_local``) has 62 long articles that a CPU scores at ~100 tokens/s in 8k-token windows, so a
sweep on 2 cores sees 1–3 of them, too few for any interval. Paragraphs are short (~110 words), score
several times faster per token, and give hundreds of documents in the same time. Each paragraph is scored
without the text before it, so its perplexity is higher than the article-level one: compare rows of this
task with each other, not with published WikiText-2 numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from harness.data.paths import data_file
from harness.tasks.utils import split_wikitext_articles


def wikitext_paragraphs(text: str) -> list[str]:
    """Every paragraph of every article in file order; headings (`` = Title = ``, sections) are dropped."""
    return [
        line
        for article in split_wikitext_articles(text)
        for line in article.split("\n")
        if line.strip() and not line.strip().startswith("= ")
    ]


def read_paragraphs(path: Path) -> list[dict[str, str]]:
    """Paragraphs as ``{"page": ...}`` rows, the field lm-eval's wikitext scoring reads."""
    return [{"page": paragraph} for paragraph in wikitext_paragraphs(path.read_text(encoding="utf-8"))]


def paragraph_dataset(files: dict[str, str], data_dir: str | None = None, **_: Any) -> DatasetDict:
    """lm-eval ``custom_dataset``: each split's file (under the data directory) → its paragraph rows."""
    return DatasetDict(
        {split: Dataset.from_list(read_paragraphs(data_file(rel, data_dir))) for split, rel in files.items()}
    )
