"""Render a report :class:`~harness.report.document.Document` as GitHub-flavoured Markdown."""

from __future__ import annotations

from functools import singledispatch

from harness.report.document import Block, Bullets, Cell, Document, Image, Paragraph, Table


def _code(text: str) -> str:
    """Inline code; backticks inside would end it early, so they become quotes."""
    return f"`{text.replace('`', chr(39))}`"


def _cell(cell: Cell) -> str:
    text = _code(cell.text) if cell.code else cell.text
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if cell.best else text


@singledispatch
def _block(block: Block) -> str:
    raise TypeError(f"no Markdown for {type(block).__name__}")


@_block.register
def _(block: Paragraph) -> str:
    return block.text


@_block.register
def _(block: Bullets) -> str:
    return "\n".join(f"- {_code(item) if block.code else item}" for item in block.items)


@_block.register
def _(block: Image) -> str:
    return f"![{block.caption}]({block.path})\n\n*{block.caption}*"


@_block.register
def _(block: Table) -> str:
    header = "| " + " | ".join(h.replace("|", "\\|") for h in block.headers) + " |"
    rule = "|" + "|".join("---" for _ in block.headers) + "|"
    rows = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
    return "\n".join([header, rule, *rows])


def render_markdown(document: Document) -> str:
    """The report as Markdown; figures are linked relative to the report folder."""
    parts = [f"# {document.title}"]
    for section in document.sections:
        parts.append(f"## {section.title}")
        parts.extend(_block(block) for block in section.blocks)
    return "\n\n".join(parts) + "\n"
