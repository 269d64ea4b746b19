"""Minimal, safe HTML pages: every piece of text is escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; cursor: pointer; } img { image-rendering: pixelated; max-width: 100%; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 90%; color: #555; }
"""


def esc(text: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(text), quote=True)


def table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(src: str, caption: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def page(title: str, body: str) -> str:
    """A complete page; ``body`` must already be built from escaped pieces."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{body}</body></html>"
    )
