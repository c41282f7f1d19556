"""How values from result.json group and print in tables, figure legends and axis ticks."""

from __future__ import annotations

import json
import math
from typing import Any


def label(value: Any) -> Any:
    """A hashable, readable value for grouping: lists become ``a,b``, dicts JSON; scalars stay as they are."""
    if isinstance(value, list | tuple):
        return ",".join(str(label(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def show(value: Any) -> str:
    """A value as printed: missing is an em dash, a whole float (an int column with gaps) an int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
