"""Which catalog files are on this box already: in the model store, or inside an installed PyPI
model package. The planner asks through the ``local_file`` callable its callers hand it (the
store lives in this layer, above sizing), so a plan of a local file uses its exact header."""

from __future__ import annotations

from pathlib import Path

from aiboxctl.models.catalog import QuantFile, Variant


def local_model_file(variant: Variant, qfile: QuantFile) -> Path | None:
    """The GGUF (the first shard of a split file) if it is on this box, else None. A store whose
    index cannot be read counts as holding nothing: the plan then uses the catalog's facts."""
    from aiboxctl.hub.embedded import locate_embedded
    from aiboxctl.hub.store import ModelStore
    from aiboxctl.paths import StatePaths

    if qfile.source == "local":
        return Path(qfile.file)
    try:
        rec = ModelStore(StatePaths.from_env().models).find(variant.name, qfile.quant)
        if rec is not None and rec.path.is_file():
            return rec.path
    except (OSError, ValueError):
        pass
    if qfile.source == "pypi" and qfile.package:
        try:
            return locate_embedded(qfile.package)
        except OSError:
            return None
    return None
