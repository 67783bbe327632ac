"""Self-contained HTML reports: jinja2 with autoescape, figures embedded as inline SVG.

This package renders what it is given (render.py) and lines runs up side by side (compare.py: compare pages
and the reports index); it imports no step. Each step's own report lives with the step: slm/surgery/report.py,
train/report.py, and the quant and profiling reports in their packages."""

from slm.report.render import Chart, Table, render_report, svg_of

__all__ = ["Chart", "Table", "render_report", "svg_of"]
