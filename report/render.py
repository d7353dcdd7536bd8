"""A tiny document model rendered to Markdown and to self-contained HTML.

Text is written in a small Markdown subset: ``**bold**``, ``*italic*``,
```code```, backslash escapes, and entity marks ``[Peter Blackburn]{PER}``.
:func:`md_escape` makes arbitrary words safe inside it.  The HTML renderer
understands exactly that subset, so both outputs show the same thing.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from .errors import Span

_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}<>|#])")
_ESCAPABLE = set("\\`*_[]{}<>|#")


def md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def highlight(tokens: Sequence[str], spans: Sequence[Span], focus: Sequence[Span] = (),
              window: tuple[int, int] | None = None) -> str:
    """Words with ``[entity words]{TYPE}`` marks; entities in ``focus`` also in bold.

    ``window = (lo, hi)`` shows only words lo..hi-1 (with ``…`` where cut);
    spans are clipped to it.
    """
    lo, hi = window if window else (0, len(tokens))
    starts = {}
    for s in spans:
        a, b = max(s[0], lo), min(s[1], hi)
        if a < b:
            starts[a] = (b, s[2], s in focus)
    out = ["…"] if lo > 0 else []
    i = lo
    while i < hi:
        if i in starts:
            b, t, bold = starts[i]
            mark = "[" + " ".join(md_escape(w) for w in tokens[i:b]) + "]{" + md_escape(t) + "}"
            out.append(f"**{mark}**" if bold else mark)
            i = b
        else:
            out.append(md_escape(tokens[i]))
            i += 1
    if hi < len(tokens):
        out.append("…")
    return " ".join(out)


def context_window(n_words: int, focus: Sequence[Span], max_words: int = 30, margin: int = 10) -> tuple[int, int]:
    """Words to show around the focus spans: the whole sentence if short enough."""
    if n_words <= max_words or not focus:
        return 0, n_words
    a = min(s[0] for s in focus)
    b = max(s[1] for s in focus)
    return max(0, a - margin), min(n_words, b + margin)


# --- document ------------------------------------------------------------------------------------

@dataclass
class Block:
    kind: str  # heading, para, table, image, items, bullets
    data: dict = field(default_factory=dict)


class Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[Block] = []

    def heading(self, level: int, text: str, anchor: str | None = None):
        self.blocks.append(Block("heading", {"level": level, "text": text, "anchor": anchor}))

    def para(self, text: str):
        self.blocks.append(Block("para", {"text": text}))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None):
        self.blocks.append(Block("table", {"headers": list(headers), "rows": [list(r) for r in rows],
                                           "align": align or "l" + "r" * (len(headers) - 1)}))

    def image(self, path: str, alt: str):
        self.blocks.append(Block("image", {"path": path, "alt": alt}))

    def bullets(self, items: Sequence[str]):
        self.blocks.append(Block("bullets", {"items": list(items)}))

    def examples(self, items: Sequence[Sequence[str]]):
        """A list whose items have several lines (first line a caption)."""
        self.blocks.append(Block("items", {"items": [list(i) for i in items]}))

    # --- Markdown ---
    def to_markdown(self, base_dir: str) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            d = b.data
            if b.kind == "heading":
                out += ["#" * d["level"] + " " + d["text"], ""]
            elif b.kind == "para":
                out += [d["text"], ""]
            elif b.kind == "table":
                out.append("| " + " | ".join(d["headers"]) + " |")
                out.append("|" + "|".join("---:" if a == "r" else ":---" for a in d["align"]) + "|")
                for r in d["rows"]:
                    out.append("| " + " | ".join(c.replace("\n", " ") for c in r) + " |")
                out.append("")
            elif b.kind == "image":
                rel = os.path.relpath(d["path"], base_dir).replace(os.sep, "/")
                out += [f"![{d['alt']}]({rel})", ""]
            elif b.kind == "bullets":
                out += [f"- {i}" for i in d["items"]] + [""]
            elif b.kind == "items":
                for lines in d["items"]:
                    out.append("- " + "  \n  ".join(lines))
                out.append("")
        return "\n".join(out).rstrip() + "\n"

    # --- HTML ---
    def to_html(self, embed_images: bool = True, base_dir: str = ".") -> str:
        body = [f"<h1>{inline_html(self.title)}</h1>"]
        for b in self.blocks:
            d = b.data
            if b.kind == "heading":
                lvl = min(6, d["level"])
                aid = f' id="{html.escape(d["anchor"])}"' if d.get("anchor") else ""
                body.append(f"<h{lvl}{aid}>{inline_html(d['text'])}</h{lvl}>")
            elif b.kind == "para":
                body.append(f"<p>{inline_html(d['text'])}</p>")
            elif b.kind == "table":
                cls = ["num" if a == "r" else "" for a in d["align"]]
                head = "".join(f'<th class="{c}">{inline_html(h)}</th>' for h, c in zip(d["headers"], cls))
                rows = "".join("<tr>" + "".join(f'<td class="{c}">{inline_html(x)}</td>' for x, c in zip(r, cls))
                               + "</tr>" for r in d["rows"])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b.kind == "image":
                if embed_images:
                    with open(d["path"], "rb") as f:
                        src = "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
                else:
                    src = html.escape(os.path.relpath(d["path"], base_dir).replace(os.sep, "/"))
                body.append(f'<figure><img src="{src}" alt="{html.escape(d["alt"])}"></figure>')
            elif b.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in d["items"]) + "</ul>")
            elif b.kind == "items":
                body.append('<ul class="examples">' + "".join(
                    "<li>" + "<br>".join(inline_html(x) for x in lines) + "</li>" for lines in d["items"]) + "</ul>")
        return HTML_TEMPLATE.format(title=html.escape(_plain(self.title)), css=CSS, body="\n".join(body))


def _plain(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.replace("**", "").replace("`", ""))


_TYPE_COLOURS = ["#ffe08a", "#b8e0ff", "#c8f0c0", "#f8c8e0", "#e0d0ff", "#ffd0b0", "#d0f0f0", "#e8e8b0"]


def _type_colour(etype: str) -> str:
    return _TYPE_COLOURS[sum(map(ord, etype)) % len(_TYPE_COLOURS)]


def inline_html(text: str) -> str:
    """Convert the Markdown subset (see module docstring) to HTML."""
    out: list[str] = []
    i, n = 0, len(text)
    bold = italic = False
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            out.append(html.escape(text[i + 1]))
            i += 2
        elif text.startswith("**", i):
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
            i += 2
        elif c == "*":
            out.append("</em>" if italic else "<em>")
            italic = not italic
            i += 1
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                out.append("`")
                i += 1
            else:
                out.append(f"<code>{html.escape(text[i + 1:j])}</code>")
                i = j + 1
        elif c == "[":
            j = _find_unescaped(text, "]{", i + 1)
            k = _find_unescaped(text, "}", j + 2) if j >= 0 else -1
            if j < 0 or k < 0:
                out.append("[")
                i += 1
            else:
                etype = re.sub(r"\\(.)", r"\1", text[j + 2:k])
                out.append(f'<mark style="background:{_type_colour(etype)}">{inline_html(text[i + 1:j])}'
                           f'<sub>{html.escape(etype)}</sub></mark>')
                i = k + 1
        else:
            out.append(html.escape(c))
            i += 1
    if italic:
        out.append("</em>")
    if bold:
        out.append("</strong>")
    return "".join(out)


def _find_unescaped(text: str, needle: str, start: int) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .55em; } th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } img { max-width: 100%; }
mark { border-radius: 3px; padding: 0 .15em; } strong mark { outline: 2px solid #444; }
mark sub { font-size: 65%; color: #555; margin-left: .15em; }
ul.examples li { margin-bottom: .6em; }
code { background: #f4f4f4; padding: 0 .2em; border-radius: 3px; }
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style></head>
<body>
{body}
</body></html>
"""
