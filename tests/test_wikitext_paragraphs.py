"""wikitext2_para_local: WikiText-2 split into paragraphs, every article word kept, headings dropped."""

from __future__ import annotations

import pytest

from harness.data.paths import DataDirError, resolve_data_dir
from harness.evaluate.tasks import task_manager
from harness.tasks.wikitext_paragraphs import wikitext_paragraphs

TEXT = (
    " = First Article = \n The first paragraph . \n = = History = = \n Second , in a section . \n"
    " = Second Article = \n Third one . \n"
)


def test_paragraphs_are_the_article_lines_without_headings() -> None:
    assert wikitext_paragraphs(TEXT.replace("\n", "\r\n")) == [
        " The first paragraph . ",
        " Second , in a section . ",
        " Third one . ",
    ]


def test_real_task_has_every_paragraph_word() -> None:
    """The shipped file: 2,183 paragraphs; with the headings' words they add up to MANIFEST's 241,211."""
    try:
        data_dir = str(resolve_data_dir())
    except DataDirError as exc:
        pytest.skip(f"no real data directory: {exc}")
    task = task_manager((), data_dir, defaults=False).load(["wikitext2_para_local"])["tasks"]
    pages = task["wikitext2_para_local"].eval_docs["page"]
    text = (resolve_data_dir() / "wikitext-2" / "raw" / "wiki.test.raw").read_text(encoding="utf-8")
    heading_words = sum(len(line.split()) for line in text.splitlines() if line.strip().startswith("= "))

    assert len(pages) == 2183
    assert sum(len(page.split()) for page in pages) + heading_words == 241_211
