"""Plain arrays describing one picture of the manifold (online module -> plots and sinks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ManifoldFrame:
    """Everything a manifold figure needs, as numpy arrays (no torch, no Lightning).

    k is the number of embedding dimensions kept (usually 3 or more); m the number of
    reference models; t the number of live snapshots so far; g the number of points drawn
    along the ignorance->truth geodesic.

    Attributes:
        probe: probe name.
        step: optimizer step of the newest live snapshot.
        live_coords: (t, k) embedded coordinates of the live run's snapshots.
        live_steps: (t,) optimizer steps of those snapshots.
        live_progress: (t,) progress (eq. 2.2.4) of those snapshots.
        live_error: (t,) probe error of those snapshots (NaN when unknown).
        eigenvalues: (k_all,) InPCA eigenvalues, sorted by |lambda| descending, signs kept.
        total_stress: sum of all squared eigenvalues (denominator of eq. 2.2.8).
        ref_coords: (m, k) reference models' coordinates (empty (0, k) without a reference).
        ref_run: (m,) int index into ``ref_run_names`` for each reference model.
        ref_run_names: names of the reference runs.
        ref_progress: (m,) progress of the reference models.
        ref_steps: (m,) optimizer step of each reference model.
        ignorance: (k,) coordinates of ignorance P0.
        truth: (k,) coordinates of truth P* (may be NaN where not embedded).
        geodesic: (g, k) coordinates of points along the ignorance->truth geodesic.
        live_geodesic_distance: (t,) distance to the geodesic (d_G at progress) per live snapshot.
        live_reference_distance: (t,) distance to the nearest reference trajectory at equal progress
            (NaN without a reference).
        title: a short description for figure titles (run name, probe).
        ref_geodesic_distance: (m,) distance to the ignorance->truth geodesic of each reference
            model, same measure as ``live_geodesic_distance`` (optional: empty (0,) when unknown;
            drawn as the reference curves of the distance-to-geodesic plot, thesis fig. 2.17).
    """

    probe: str
    step: int
    live_coords: np.ndarray
    live_steps: np.ndarray
    live_progress: np.ndarray
    live_error: np.ndarray
    eigenvalues: np.ndarray
    total_stress: float
    ignorance: np.ndarray
    truth: np.ndarray
    geodesic: np.ndarray
    live_geodesic_distance: np.ndarray
    live_reference_distance: np.ndarray
    ref_coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    ref_run: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    ref_run_names: list[str] = field(default_factory=list)
    ref_progress: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    ref_steps: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    title: str = ""
    ref_geodesic_distance: np.ndarray = field(default_factory=lambda: np.zeros((0,)))

    @property
    def time_like(self) -> np.ndarray:
        """(k_all,) bool: axes with negative eigenvalues (Minkowski time-like, eq. 2.2.6)."""
        return np.asarray(self.eigenvalues) < 0
