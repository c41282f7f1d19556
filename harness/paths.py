"""Where the harness finds its own files: one definition, valid in a checkout and in an installed wheel.

The Hydra config tree (groups and named sweeps) ships inside the package, so it is found through the
package, never through the checkout. ``CHECKOUT`` is the source tree when the package runs from one
(editable install, tests), else None: only the git commit and the ``../shared/data`` default need it.
What the harness builds once and keeps (converted models, lm-eval's task names) goes under
:func:`default_cache_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
SWEEP_DIR = CONF_DIR / "sweep"
_ROOT = PACKAGE_DIR.parent
CHECKOUT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() else None


def default_cache_dir(configured: str | None = None) -> Path:
    """``configured`` (``model.cache_dir``), else ``$QLORA_CACHE_DIR``, else ``~/.cache/qlora-bench``."""
    return Path(configured or os.environ.get("QLORA_CACHE_DIR", "~/.cache/qlora-bench")).expanduser()
