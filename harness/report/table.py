"""Old import path of :func:`harness.report.load.load_results`, kept while ``harness/compare/inputs.py``
and ``tests/test_sweep.py`` (other owners) still import it from here; delete once they import
``harness.report.load_results``."""

from harness.report.load import load_results

__all__ = ["load_results"]
