"""Render a report :class:`~harness.report.document.Document` as one self-contained HTML file.

Figures are embedded as base64 PNG and the style sheet is inline, so the file opens offline anywhere.
"""

from __future__ import annotations

import base64
from functools import singledispatch
from html import escape
from pathlib import Path

from harness.report.document import Block, Bullets, Cell, Document, Image, Paragraph, Table

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
td strong { color: #063; }
code { font-size: 0.9em; background: #f6f6f6; padding: 0 0.2em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; color: #555; }
"""


def _text(text: str, code: bool) -> str:
    return f"<code>{escape(text)}</code>" if code else escape(text)


def _cell(cell: Cell) -> str:
    text = _text(cell.text, cell.code)
    return f"<td><strong>{text}</strong></td>" if cell.best else f"<td>{text}</td>"


@singledispatch
def _block(block: Block, root: Path) -> str:
    raise TypeError(f"no HTML for {type(block).__name__}")


@_block.register
def _(block: Paragraph, root: Path) -> str:
    return f"<p>{escape(block.text)}</p>"


@_block.register
def _(block: Bullets, root: Path) -> str:
    items = "".join(f"<li>{_text(item, block.code)}</li>" for item in block.items)
    return f"<ul>{items}</ul>"


@_block.register
def _(block: Image, root: Path) -> str:
    data = base64.b64encode((root / block.path).read_bytes()).decode("ascii")
    caption = escape(block.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


@_block.register
def _(block: Table, root: Path) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in block.headers)
    rows = "".join(f"<tr>{''.join(_cell(c) for c in row)}</tr>" for row in block.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_html(document: Document, root: Path) -> str:
    """The report as HTML; image paths are read relative to ``root`` and embedded."""
    body = [f"<h1>{escape(document.title)}</h1>"]
    for section in document.sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body.extend(_block(block, root) for block in section.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(document.title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )
