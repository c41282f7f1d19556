"""A small document model, so the Markdown and the HTML report are rendered from the same content."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cell:
    """One table cell; ``best`` marks the best value of its column, ``code`` a path or message."""

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
