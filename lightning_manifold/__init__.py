"""lightning-manifold: watch a model train as a path through prediction space.

A PyTorch Lightning callback captures a model's predictions on a fixed probe set during
training and places each snapshot on the information-geometric map of Mao et al. (PNAS 2024):
progress from ignorance to truth, Bhattacharyya distances and InPCA coordinates.

The top-level names are imported lazily, so ``lightning_manifold.functional`` can be used
without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ManifoldCallback": "lightning_manifold.callback",
    "ProbeSet": "lightning_manifold.probe",
    "ImprintedProbe": "lightning_manifold.imprinting",
    "Schedule": "lightning_manifold.schedule",
    "TrajectoryStore": "lightning_manifold.store",
    "ReferenceEmbedding": "lightning_manifold.embedding",
    "OnlineManifold": "lightning_manifold.online",
    "Snapshot": "lightning_manifold.snapshot",
    "ManifoldFrame": "lightning_manifold.frame",
    "ManifoldEarlyStopping": "lightning_manifold.decision",
    "ManifoldForecast": "lightning_manifold.forecast",
}

__all__ = [
    "ImprintedProbe",
    "ManifoldCallback",
    "ManifoldEarlyStopping",
    "ManifoldForecast",
    "ManifoldFrame",
    "OnlineManifold",
    "ProbeSet",
    "ReferenceEmbedding",
    "Schedule",
    "Snapshot",
    "TrajectoryStore",
    "functional",
]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_manifold import functional
    from lightning_manifold.callback import ManifoldCallback
    from lightning_manifold.decision import ManifoldEarlyStopping
    from lightning_manifold.embedding import ReferenceEmbedding
    from lightning_manifold.forecast import ManifoldForecast
    from lightning_manifold.frame import ManifoldFrame
    from lightning_manifold.imprinting import ImprintedProbe
    from lightning_manifold.online import OnlineManifold
    from lightning_manifold.probe import ProbeSet
    from lightning_manifold.schedule import Schedule
    from lightning_manifold.snapshot import Snapshot
    from lightning_manifold.store import TrajectoryStore


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("lightning_manifold.functional")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_manifold' has no attribute {name!r}")
