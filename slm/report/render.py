"""Render one self-contained HTML report: jinja2 (autoescape on), inline SVG figures, no CDN.

A report is a title, a short summary (key → value), figures and tables. Figures are matplotlib figures
turned into inline SVG so the file opens offline; every figure must carry a title, axis labels with
units and a `how` line saying how its numbers were obtained (measured here, on device, over SSH, projected).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from markupsafe import Markup

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
class Figure:
    title: str  # caption above the figure
    svg: str  # inline SVG markup from svg_of()
    how: str  # how the numbers were obtained ("measured on this host", "projected from …")


def svg_of(fig) -> str:
    """A matplotlib figure as inline SVG (fixed ids so two renders of the same data give the same bytes)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: not allowed inside HTML
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF boilerplate, ~1 KB per figure


def new_figure(width: float = 7.0, height: float = 3.6):
    """A matplotlib figure on the non-interactive backend (reports render on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "slm"  # deterministic SVG ids
    return plt.subplots(figsize=(width, height))


def fmt(v) -> str:
    """Numbers as a person reads them: 3 significant figures for floats, thousands separators for ints."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "–"
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return "" if v is None else str(v)


_ENV.filters["fmt"] = fmt


def render_report(out_html: Path, title: str, kind: str, summary: dict | None = None,
                  figures: list[Figure] | None = None, tables: list[Table] | None = None,
                  notes: list[str] | None = None, links: list[tuple[str, str]] | None = None,
                  lead: list[str] | None = None) -> Path:
    """Write one self-contained report file atomically and return its path. Summary keys are read through the
    figure registry (slm.report.figures): labels and units, never raw keys; `lead` is a few sentences on top."""
    from slm.report.figures import labelled

    for f in figures or []:
        if not re.match(r"\s*<svg", f.svg):
            raise ValueError(f"figure {f.title!r} is not inline SVG")
    html = _ENV.get_template("report.html.j2").render(
        title=title, kind=kind, summary=labelled(summary or {}), lead=lead or [], figures=[(f, Markup(f.svg)) for f in figures or []],
        tables=tables or [], notes=notes or [], links=links or [],
    )
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, html)
    return out_html
