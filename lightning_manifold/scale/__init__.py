"""Scale: many models, large probes, many classes, more than one device (issue 7).

The offline path for embedding thousands to hundreds of thousands of models:

- :class:`ModelSource` lists the models (trajectory stores, ``.npy`` files, arrays) and loads
  blocks of them as sqrt-probabilities;
- :func:`pairwise_bhattacharyya_blocked` writes the d_B matrix (eq. 2.2.2) to a ``.npy`` file
  block by block within a memory budget, on one process or spread over Lightning Fabric ranks,
  resumable after an interruption;
- :func:`inpca_memmap` computes the top-k InPCA (eq. 2.2.6) of that matrix with a partial
  eigensolver (both signs of eigenvalues) without forming W;
- :func:`landmark_inpca` fits InPCA on a few landmark models and places all others with
  eq. 2.2.9, reporting the explained pairwise distance (eq. 2.4.2) on held-out models;
- ``class_projection=k`` reads C classes through a random column-stochastic (C, k) matrix
  (thesis §3.5.2), with :func:`class_projection_effect` measuring what it does to d_B.
"""

from __future__ import annotations

from lightning_manifold.scale.classes import (
    ClassProjectionEffect,
    class_projection_effect,
    class_projection_matrix,
)
from lightning_manifold.scale.distances import (
    DEFAULT_MEMORY_BUDGET,
    BlockedDistances,
    BlockPlan,
    pairwise_bhattacharyya_blocked,
    plan_blocks,
)
from lightning_manifold.scale.eigen import DistanceRows, inpca_memmap
from lightning_manifold.scale.landmarks import (
    LandmarkEmbedding,
    explained_pairwise_distance_blocked,
    landmark_inpca,
    select_landmarks,
)
from lightning_manifold.scale.sources import ModelSource

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "BlockPlan",
    "BlockedDistances",
    "ClassProjectionEffect",
    "DistanceRows",
    "LandmarkEmbedding",
    "ModelSource",
    "class_projection_effect",
    "class_projection_matrix",
    "explained_pairwise_distance_blocked",
    "inpca_memmap",
    "landmark_inpca",
    "pairwise_bhattacharyya_blocked",
    "plan_blocks",
    "select_landmarks",
]
