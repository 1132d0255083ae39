"""Plain JSON types from the project's result objects: the one converter every layer uses
(the CLI's ``--json`` envelope, the plan and install records written to disk)."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import PurePath
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, enums, paths, tuples, sets → plain JSON types (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        return sorted(items, key=str) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj
