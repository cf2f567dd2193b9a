"""Paths: whether one lies inside another (the state directory must not be in the WAL's)."""

from __future__ import annotations

from pathlib import Path


def is_inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True
