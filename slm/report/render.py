"""Render one self-contained HTML report: jinja2 (autoescape on), inline SVG figures, no CDN.

A report is a title, a few lead sentences, its key figures (slm.figure.Figure: each shown with its label,
value, interval and unit), charts and tables. Charts are matplotlib figures turned into inline SVG so the file
opens offline; every chart carries a title, axis labels with units and a `how` line saying how its numbers
were obtained (measured here, on the device, over SSH, projected).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from markupsafe import Markup

from slm.figure import Figure, fmt, text
from slm.record import atomic_write_text

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("slm.report", "templates"),
    autoescape=True,  # model names, prompts and generations are user data: always escaped
    undefined=jinja2.StrictUndefined,
)


@dataclass
class Table:
    title: str  # caption above the table
    columns: list[str]  # header cells
    rows: list[list]  # cell values (escaped; floats formatted by the template)
    note: str = ""  # one line under the table
    highlight: list[int] = field(default_factory=list)  # row indices to highlight
    links: list[str] = field(default_factory=list)  # per row: href for the first cell ("" = no link)


@dataclass
class Chart:
    title: str  # caption above the chart
    svg: str  # inline SVG markup from svg_of()
    how: str  # how the numbers were obtained ("measured on this host", "projected from …")


def svg_of(fig) -> str:
    """A matplotlib figure as inline SVG (fixed ids so two renders of the same data give the same bytes)."""
    import matplotlib.pyplot as plt  # matplotlib: deferred, a heavy import

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: not allowed inside HTML
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF boilerplate, ~1 KB per figure


def new_figure(width: float = 7.0, height: float = 3.6):
    """A matplotlib figure on the non-interactive backend (reports render on headless machines)."""
    import matplotlib  # matplotlib: deferred, a heavy import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: deferred, a heavy import

    matplotlib.rcParams["svg.hashsalt"] = "slm"  # deterministic SVG ids
    return plt.subplots(figsize=(width, height))


_ENV.filters["fmt"] = fmt


TOP_FIGURES = 12  # figures shown on top of a report before only its key figures are


def render_report(out_html: Path, title: str, kind: str, figures: list[Figure] | None = None,
                  charts: list[Chart] | None = None, tables: list[Table] | None = None,
                  notes: list[str] | None = None, links: list[tuple[str, str]] | None = None,
                  lead: list[str] | None = None) -> Path:
    """Write one self-contained report file atomically and return its path. `figures` are shown on top, each
    as its label and its value with interval and unit (how it was obtained on hover); `lead` is a few
    sentences above them, each a string or (label, sentence, href): a decision with a link to its evidence."""
    for c in charts or []:
        if not re.match(r"\s*<svg", c.svg):
            raise ValueError(f"chart {c.title!r} is not inline SVG")
    figures = list(figures or [])
    if len(figures) > TOP_FIGURES:  # a long list reads as noise on top: its key figures (the rest are below)
        figures = [f for f in figures if f.key or f.setting] or figures[:TOP_FIGURES]
    summary = [(f.label, text(f), f"{f.how}" + (f"; {f.source}" if f.source else "")
                + (f"; {f.note}" if f.note else "")) for f in figures]
    html = _ENV.get_template("report.html.j2").render(
        title=title, kind=kind, summary=summary, lead=lead or [],
        charts=[(c, Markup(c.svg)) for c in charts or []], tables=tables or [], notes=notes or [],
        links=links or [])
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, html)
    return out_html
