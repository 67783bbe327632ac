"""Self-contained HTML reports: jinja2 with autoescape, figures embedded as inline SVG."""

from slm.report.render import Figure, Table, render_report, svg_of

__all__ = ["Figure", "Table", "render_report", "svg_of"]
