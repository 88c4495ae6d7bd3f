"""The report stage: one self-contained, offline ``report.html`` with figures and dashboards."""

from crossdiff.report.html import ReportSection, TokenDashboard, render_report, write_report

__all__ = ["ReportSection", "TokenDashboard", "render_report", "write_report"]
