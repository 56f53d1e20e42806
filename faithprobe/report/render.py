"""The report as a document model, rendered twice: markdown and one self-contained HTML page.

``report.html`` is one file (images as base64 data URIs, inline CSS, no script, no external
resource). ``publish`` writes the plots and both pages through ``faithprobe.io`` temporary files
and replaces them only once all were written, so a crash never leaves a half-written report.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithprobe.io import atomic_path
from faithprobe.report.figure import PLOT_NAMES, Plot

__all__ = ["PLOTS_DIR", "REPORT_HTML", "REPORT_MD", "Doc", "publish", "to_html", "to_markdown"]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"


@dataclass
class Doc:
    """A report as a list of blocks (heading, paragraph, note, list, table, preformatted text,
    image), rendered by ``to_markdown`` and ``to_html``; ``plots`` are the figures to write."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: Sequence[str], css: str = "") -> None:
        self.blocks.append(("ul", (list(items), css)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", ([str(h) for h in header],
                                      [[str(c) for c in row] for row in rows])))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def plot(self, plot: Plot) -> None:
        """The figure, or a note saying why it was skipped."""
        if plot.png is None:
            self.note(f"{plot.title}: skipped, {plot.note}.")
            return
        self.plots.append(plot)
        self.blocks.append(("img", plot))
        if plot.note:
            self.note(plot.note)


def _md_text(text: str) -> str:
    """Inert in markdown: ``&`` and ``<`` escaped (no tag, no entity can open); ``>`` only where
    it starts a line (a block quote), so "a -> b" stays readable."""
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return re.sub(r"(?m)^(\s*)>", r"\1&gt;", text)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(doc: Doc) -> str:
    out = [f"# {_md_text(doc.title)}", ""]
    for kind, arg in doc.blocks:
        if kind == "h":
            level, text = arg
            out += ["#" * level + " " + _md_text(text), ""]
        elif kind == "p":
            out += [_md_text(arg), ""]
        elif kind == "note":
            out += ["> " + _md_text(arg).replace("\n", "\n> "), ""]
        elif kind == "ul":
            out += [f"- {_md_cell(item)}" for item in arg[0]] + [""]
        elif kind == "table":
            header, rows = arg
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "pre":
            ticks = max((len(m) for m in re.findall(r"`+", arg)), default=0)
            fence = "`" * max(3, ticks + 1)
            out += [fence, arg, fence, ""]
        elif kind == "img":
            out += [f"![{_md_cell(arg.title)}]({PLOTS_DIR}/{arg.name}.png)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
ul.verdict { background: #eef6ff; border-left: 4px solid #2a6fdb; padding: .8em 1em .8em 2em;
             font-size: 1.05em; }
p.note { color: #555; font-style: italic; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
"""

# No script, no fetch: even a string that escaped escaping could not run or call out.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(doc: Doc) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(doc.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(doc.title)}</h1>"]
    for kind, arg in doc.blocks:
        if kind == "h":
            level, text = arg
            out.append(f"<h{level}>{e(text)}</h{level}>")
        elif kind == "p":
            out.append(f"<p>{e(arg)}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{e(arg)}</p>')
        elif kind == "ul":
            items, css = arg
            cls = f' class="{e(css)}"' if css else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
        elif kind == "table":
            header, rows = arg
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</tbody></table>")
        elif kind == "pre":
            out.append(f"<pre>{e(arg)}</pre>")
        elif kind == "img":
            data = base64.b64encode(arg.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(arg.title)}">'
                       f"<figcaption>{e(arg.title)}</figcaption></figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# atomic output


def publish(out_dir: Path, doc: Doc) -> Path:
    """Write ``plots/``, ``report.md`` and ``report.html`` all or nothing.

    Every file goes to a temporary name first (``faithprobe.io.atomic_path``); the files are
    renamed into place only once all were written, ``report.html`` last, and an error on the way
    removes every temporary file. Plots an older report drew and this one skipped are removed.

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    files: list[tuple[Path, bytes]] = [(plots_dir / f"{p.name}.png", p.png) for p in doc.plots
                                       if p.png is not None]
    files.append((out_dir / REPORT_MD, to_markdown(doc).encode("utf-8")))
    files.append((out_dir / REPORT_HTML, to_html(doc).encode("utf-8")))  # last: the marker
    plots_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # The stack closes last in, first out: entered in reverse, the files are renamed in
        # order when the block ends, after every one of them was written.
        temps = [stack.enter_context(atomic_path(path)) for path, _ in reversed(files)][::-1]
        for (_, data), tmp in zip(files, temps):
            tmp.write_bytes(data)
    written = {p.name for p in doc.plots}
    for name in PLOT_NAMES:  # a plot this report skipped must not survive from an older one
        if name not in written:
            (plots_dir / f"{name}.png").unlink(missing_ok=True)
    return out_dir / REPORT_HTML
