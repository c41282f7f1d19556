"""Reports: sweep results → pandas tables, paper-style Markdown, HTML and seaborn figures.

Sweep code calls :func:`build_report` after a sweep; ``qlora-report`` is the same from the shell.
Modules in the order data flows: ``load`` (result.json → one table), ``metrics`` (what numbers a report
shows, their units and how they print), ``summary`` (rows per configuration), ``figures``, ``render``
(one document model, Markdown and HTML), ``cli`` (the sections of a report and the command).
"""

from harness.report.cli import NoResultsError, ReportPaths, build_report
from harness.report.load import load_results

__all__ = ["NoResultsError", "ReportPaths", "build_report", "load_results"]
