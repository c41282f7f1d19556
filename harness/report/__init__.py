"""Reports: sweep results → pandas tables, paper-style Markdown, HTML and seaborn figures.

Sweep code calls :func:`build_report` after a sweep; ``qlora-report`` is the same from the shell.
"""

from harness.report.build import NoResultsError, ReportPaths, build_report

__all__ = ["NoResultsError", "ReportPaths", "build_report"]
