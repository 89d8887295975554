"""The report page: sections of paragraphs, tables and figures rendered to one self-contained HTML string.

Self-contained means: inline CSS, images as ``data:image/png;base64`` URIs, no script, no external URL; a
Content-Security-Policy meta tag makes the browser refuse any other load, so the page provably opens offline.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b9c0cc;font-size:13px}
nav{padding:10px 32px;background:#fff;border-bottom:1px solid #dde1e7;position:sticky;top:0}
nav a{margin-right:18px;color:#2457a6;text-decoration:none}nav a.missing{color:#8a94a3}
main{max-width:1240px;margin:0 auto;padding:8px 32px 48px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;margin:20px 0;padding:4px 24px 16px}
h2{font-size:19px;border-bottom:1px solid #eef0f3;padding-bottom:6px}
.missing-note{background:#fff8e5;border-left:4px solid #e0a800;padding:10px 14px;margin:10px 0}
.note{color:#5a6473;font-size:13px}
.big{font-size:26px;font-weight:600}.big small{font-size:15px;font-weight:400;color:#5a6473}
table{border-collapse:collapse;margin:10px 0;font-size:13px}
th,td{border:1px solid #dde1e7;padding:4px 10px;text-align:left}th{background:#f0f2f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{color:#5a6473;font-size:13px;max-width:900px}
details{margin:8px 0}pre{background:#f6f7f9;padding:10px;overflow:auto;font-size:12px;max-height:480px}
"""


@dataclass
class Paragraph:
    text: str
    css: str = ""                   # "note" or "big" or ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[object]]        # numbers are right-aligned; everything is escaped
    caption: str = ""


@dataclass
class Image:
    name: str                       # file stem, also the anchor id
    png: bytes
    caption: str
    alt: str


@dataclass
class Code:
    summary: str
    text: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)
    missing: str | None = None      # why the section is empty and what to pass to fill it


def _cell(v) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _block(b) -> str:
    if isinstance(b, Paragraph):
        cls = f' class="{b.css}"' if b.css else ""
        return f"<p{cls}>{html.escape(b.text)}</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in b.rows)
        cap = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Image):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="fig-{html.escape(b.name)}"><img alt="{html.escape(b.alt)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(b.caption)}</figcaption></figure>')
    if isinstance(b, Code):
        return f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML string."""
    nav = "".join(f'<a href="#{s.id}"{" class=missing" if s.missing else ""}>{html.escape(s.title)}</a>'
                  for s in sections)
    parts = []
    for s in sections:
        inner = "".join(_block(b) for b in s.blocks)
        if s.missing:
            inner = f'<div class="missing-note">{html.escape(s.missing)}</div>' + inner
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{inner}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
            f"<body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>\n")
