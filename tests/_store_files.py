"""Hand-editing a trajectory store's files, to build corrupt and hostile stores in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_all_records(path: Path) -> dict[str, Any]:
    """The store's manifest with every record, the log's complete lines included."""
    manifest = json.loads((path / "manifest.json").read_text())
    log = path / manifest.get("log", "no-log")
    if log.is_file():
        lines = log.read_text().split("\n")[:-1]
        manifest["records"] += [json.loads(line) for line in lines]
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` (with all its records) as the store's manifest, emptying its log."""
    (path / "manifest.json").write_text(json.dumps(manifest))
    if "log" in manifest:
        (path / manifest["log"]).write_text("")


def edit_record(path: Path, position: int, **fields: Any) -> Path:
    """Set ``fields`` of record ``position`` (moving every record into the manifest); returns
    the manifest's path."""
    manifest = read_all_records(path)
    manifest["records"][position].update(fields)
    write_manifest(path, manifest)
    return path / "manifest.json"
