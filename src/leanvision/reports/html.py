"""The report page: one self-contained HTML file (inline CSS, images as data: URIs, no scripts,
no fonts or anything else fetched), readable on a laptop screen without scrolling sideways."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# The column stays narrow enough for a 1280px laptop screen; images and tables shrink or wrap
# inside it, and only a table too wide to wrap scrolls, inside its own box, never the page.
CSS = """
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:1.2rem 1.2rem 3rem;background:#fff;min-height:100vh}
h1{font-size:1.6rem;margin:.2rem 0 .3rem}
h2{font-size:1.3rem;margin:2.2rem 0 .6rem;padding-bottom:.25rem;border-bottom:2px solid #e3e6ea}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
h1,h2,h3,p,li{overflow-wrap:anywhere}
.meta{color:#5b6573;font-size:.9rem;margin:0 0 1rem}
nav.toc{background:#f0f3f7;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
nav.toc ol{margin:.2rem 0;padding-left:1.3rem;columns:2 16rem}
nav.toc a{color:#1f5fa8;text-decoration:none}
nav.toc a:hover{text-decoration:underline}
img{max-width:100%;height:auto;display:block}
figure{margin:.6rem 0}
figcaption{font-size:.85rem;color:#5b6573;margin-top:.2rem;overflow-wrap:anywhere}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem;margin:.6rem 0;
font-size:.92rem;overflow-wrap:anywhere}
.table-box{max-width:100%;overflow-x:auto;margin:.6rem 0}
.table-box.compact{max-width:640px}
table{border-collapse:collapse;width:100%;font-size:.86rem}
th,td{padding:.3rem .45rem;border-bottom:1px solid #e3e6ea;text-align:right;vertical-align:top}
th{background:#f0f3f7;font-weight:600}
td{white-space:nowrap}
th:first-child,td:first-child,.text{text-align:left}
td.text{white-space:normal;overflow-wrap:anywhere}
tr.front td:first-child{font-weight:600}
tr.front td:first-child::before{content:"\\25CF  ";color:#d62728}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:.8rem}
.gallery figure{margin:0;background:#fafbfc;border:1px solid #e3e6ea;border-radius:4px;
padding:.3rem}
.gallery.wide{grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}
.pair{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(0,1fr);gap:.3rem}
.gallery img{width:100%}
.muted{color:#5b6573}
@media (max-width:700px){main{padding:.8rem}table{font-size:.78rem}}
"""


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML


def page(title: str, meta: str, sections: Sequence[Section]) -> str:
    toc = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{escape(s.id)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{escape(title)}</h1><p class=\"meta\">{meta}</p>"
            f"<nav class=\"toc\" aria-label=\"contents\"><strong>Contents</strong><ol>{toc}</ol>"
            f"</nav>{body}</main></body></html>\n")


def image(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def heading(text: str, anchor: str | None = None) -> str:
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<h3{ident}>{escape(text)}</h3>"


@dataclass(frozen=True)
class Titled:
    """A table cell with a tooltip: a readable name, and the folder it stands for."""

    text: str
    title: str


def table(headers: Sequence[str], rows: Sequence[Sequence[object]],
          row_classes: Sequence[str] | None = None, text_columns: int = 1,
          compact: bool = False) -> str:
    """Cells are escaped; the first `text_columns` columns are left-aligned text."""
    def cell(tag: str, value: object, col: int) -> str:
        css = ' class="text"' if col < text_columns else ""
        if isinstance(value, Titled):
            css += f' title="{escape(value.title)}"'
            value = value.text
        return f"<{tag}{css}>{escape(str(value))}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        css = row_classes[r] if row_classes and row_classes[r] else ""
        cls = f' class="{escape(css)}"' if css else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", v, i) for i, v in enumerate(row))
                    + "</tr>")
    box = "table-box compact" if compact else "table-box"
    return (f'<div class="{box}"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def figure(pictures: Sequence[tuple[bytes, str]], caption: str) -> str:
    """Images side by side (e.g. a model's map and its parent's) over one caption."""
    imgs = "".join(f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                   f'alt="{escape(alt)}">' for png, alt in pictures)
    return (f'<figure><div class="pair">{imgs}</div>'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def gallery(figures: Sequence[str], wide: bool = False) -> str:
    css = "gallery wide" if wide else "gallery"
    return f'<div class="{css}">{"".join(figures)}</div>'
