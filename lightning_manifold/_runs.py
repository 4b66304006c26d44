"""Finding trajectory stores below a path, with errors for the command line (no torch import:
``lightning-manifold inspect`` stays quick)."""

from __future__ import annotations

from pathlib import Path

from lightning_manifold.store import MANIFEST, TrajectoryStore, list_stores

__all__ = ["stores_below"]


def stores_below(path: Path) -> list[TrajectoryStore]:
    """Every store at or below ``path``; a one-line error for a missing path or no store."""
    if not path.exists():
        raise FileNotFoundError(f"RUN_DIR '{path}' does not exist")
    if not path.is_dir():
        raise ValueError(
            f"RUN_DIR '{path}' must be a directory (a trajectory store or a directory above "
            "stores), got a file"
        )
    stores = list_stores(path)
    listed = {s.path.resolve() for s in stores}
    for manifest in sorted(path.rglob(MANIFEST)):
        store_dir = manifest.parent
        if store_dir.resolve() in listed:
            continue
        if (store_dir / "labels.npy").exists() or (store_dir / "snapshots").is_dir():
            # a store whose manifest cannot be read: never embed the others without a word
            raise ValueError(
                f"'{manifest}' belongs to a trajectory store (labels.npy/snapshots/ beside it) "
                "but is not a readable lightning-manifold manifest (corrupt or truncated "
                "JSON?); repair or remove that store"
            )
    if not stores:
        raise ValueError(f"no trajectory store (manifest.json) found at or below RUN_DIR '{path}'")
    return stores
