"""The report stage: one offline folder, ``report.html`` with its figures and latent explorer."""

from crossdiff.report.html import (
    Figure,
    ReportSection,
    TokenDashboard,
    html_table,
    render_report,
    write_report,
)

__all__ = [
    "Figure",
    "ReportSection",
    "TokenDashboard",
    "html_table",
    "render_report",
    "write_report",
]
