"""Reports: sweep results → tables, paired comparisons, paper-style Markdown/HTML and figures.

Sweep code calls :func:`build_report` after a sweep; ``qlora-report`` is the same from the shell.
Modules in the order data flows: ``load`` (result.json → one table), ``metrics`` (rows = configurations,
columns = numbers with units and direction, how values print), ``comparisons`` (paired statistics from
:mod:`harness.stats`: which differences are real, each value's interval), ``summary`` (the results table
and the findings in words), ``figures``, ``render`` (one document model, Markdown and HTML), ``cli`` (the
report's sections and the command). ``browser`` checks a report.html in headless Chromium.
"""

from harness.report.cli import NoResultsError, ReportPaths, build_report
from harness.report.comparisons import SelectorError
from harness.report.load import load_results

__all__ = ["NoResultsError", "ReportPaths", "SelectorError", "build_report", "load_results"]
