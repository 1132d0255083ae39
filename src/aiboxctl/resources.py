"""Package data: templates/ and profiles/ (the card's top level, shipped inside the wheel)."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def data_dir(name: str) -> Traversable:
    """``templates`` or ``profiles``: from the wheel, or from the source checkout when the
    package is installed in editable mode (hatch does not map force-include there)."""
    packaged = resources.files("aiboxctl") / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"aiboxctl data folder {name!r} is missing from this installation")
