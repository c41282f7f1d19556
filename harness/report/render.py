"""The report's document model and its two renderings, GitHub Markdown and one self-contained HTML file.

Sections build a :class:`Document` once; :func:`render_markdown` and :func:`render_html` print the same
content, so the two files cannot disagree. HTML embeds figures as base64 PNG with an inline style sheet,
so it opens offline anywhere; wide tables scroll sideways inside their own box instead of running off
the page.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import singledispatch
from html import escape
from pathlib import Path


@dataclass(frozen=True)
class Cell:
    """One table cell; ``best`` marks a value significantly better than every other row, ``code`` a path."""

    text: str
    best: bool = False
    code: bool = False


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    code: bool = False


@dataclass(frozen=True)
class Image:
    """A figure; ``path`` is relative to the report folder."""

    path: str
    caption: str


Block = Table | Paragraph | Bullets | Image


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section]


# --- Markdown ---------------------------------------------------------------------------------------------


def _md_code(text: str) -> str:
    """Inline code; backticks inside would end it early, so they become quotes."""
    return f"`{text.replace('`', chr(39))}`"


def _md_cell(cell: Cell) -> str:
    text = _md_code(cell.text) if cell.code else cell.text
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if cell.best else text


@singledispatch
def _markdown(block: Block) -> str:
    raise TypeError(f"no Markdown for {type(block).__name__}")


@_markdown.register
def _(block: Paragraph) -> str:
    return block.text


@_markdown.register
def _(block: Bullets) -> str:
    return "\n".join(f"- {_md_code(item) if block.code else item}" for item in block.items)


@_markdown.register
def _(block: Image) -> str:
    return f"![{block.caption}]({block.path})\n\n*{block.caption}*"


@_markdown.register
def _(block: Table) -> str:
    header = "| " + " | ".join(h.replace("|", "\\|") for h in block.headers) + " |"
    rule = "|" + "|".join("---" for _ in block.headers) + "|"
    rows = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
    return "\n".join([header, rule, *rows])


def render_markdown(document: Document) -> str:
    """The report as Markdown; figures are linked relative to the report folder."""
    parts = [f"# {document.title}"]
    for section in document.sections:
        parts.append(f"## {section.title}")
        parts.extend(_markdown(block) for block in section.blocks)
    return "\n\n".join(parts) + "\n"


# --- HTML -------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222;
  overflow-wrap: anywhere; }
.table-scroll { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; max-width: 14em; }
td { white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
td strong { color: #063; }
code { font-size: 0.9em; background: #f6f6f6; padding: 0 0.2em; white-space: normal; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; color: #555; }
"""


def _html_text(text: str, code: bool) -> str:
    return f"<code>{escape(text)}</code>" if code else escape(text)


def _html_cell(cell: Cell) -> str:
    text = _html_text(cell.text, cell.code)
    return f"<td><strong>{text}</strong></td>" if cell.best else f"<td>{text}</td>"


@singledispatch
def _html(block: Block, root: Path) -> str:
    raise TypeError(f"no HTML for {type(block).__name__}")


@_html.register
def _(block: Paragraph, root: Path) -> str:
    return f"<p>{escape(block.text)}</p>"


@_html.register
def _(block: Bullets, root: Path) -> str:
    items = "".join(f"<li>{_html_text(item, block.code)}</li>" for item in block.items)
    return f"<ul>{items}</ul>"


@_html.register
def _(block: Image, root: Path) -> str:
    data = base64.b64encode((root / block.path).read_bytes()).decode("ascii")
    caption = escape(block.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


@_html.register
def _(block: Table, root: Path) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in block.headers)
    rows = "".join(f"<tr>{''.join(_html_cell(c) for c in row)}</tr>" for row in block.rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="table-scroll">{table}</div>'


def render_html(document: Document, root: Path) -> str:
    """The report as HTML; image paths are read relative to ``root`` and embedded."""
    body = [f"<h1>{escape(document.title)}</h1>"]
    for section in document.sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body.extend(_html(block, root) for block in section.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(document.title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )
