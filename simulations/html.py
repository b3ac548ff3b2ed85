"""One self-contained HTML page of a comparison: its tables and its figures (embedded), so a user
can open it without a server or attach it to a message."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulations.report import format_cell

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2.5em; } img { max-width: 100%; }
figcaption { color: #555; }
"""


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(column for row in rows for column in row))
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            css = ' class="number"' if number else ""
            cells.append(f"<td{css}>{html.escape(format_cell(column, value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_html(
    path: Path,
    title: str,
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    figures: Sequence[tuple[Path, str]],
    footer: str = "",
) -> Path:
    """`tables`: (heading, rows); `figures`: (PNG path, one line on how to read it)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, rows in tables:
        if rows:
            parts += [f"<h2>{html.escape(heading)}</h2>", _table(rows)]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(figure, caption) for figure, caption in figures]
    if footer:
        parts.append(f"<p><small>{html.escape(footer)}</small></p>")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    path.write_text(page)
    return path
