"""Names that become directory names on disk (probe names, run names)."""

from __future__ import annotations

from typing import Any


def check_dir_name(value: Any, name: str) -> str:
    """Return ``value`` if it is a non-empty string usable as one directory name.

    Raises:
        ValueError: naming the argument ``name`` and the value given.
    """
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or any(s in value for s in "/\\")
    ):
        raise ValueError(
            f"`{name}` must be a non-empty string usable as a directory name (no '/' or '\\'), "
            f"got {value!r}"
        )
    return value
