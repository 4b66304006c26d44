"""TensorBoard: figures in the Images tab, the 3D cloud in the Projector and the Mesh tab.

Tags (``<probe>`` is the probe name):

* ``manifold/<probe>/live`` -- the live picture (:mod:`lightning_manifold.plots_live`: map and
  progress), at every render, so the image slider follows training.
* ``manifold/<probe>/<figure>`` -- images of the detailed figures (``manifold``, ``spectrum``,
  ``progress``, ``diagnostics`` by default; ``summary`` on request) via ``add_figure``, when the
  render is ``full`` (the final picture when the budget allows it).
* ``manifold/<probe>`` -- projector embedding (``add_embedding``) of the top-3 coordinates of the
  live snapshots, the reference models, the geodesic, P0 and P*, with metadata columns
  ``run, step, progress, error, probe``; one embedding per rendered step.
* ``manifold/<probe>/cloud`` -- ``add_mesh`` point cloud (live run coloured by progress,
  reference runs by run, P0 black, P* red) with a step slider; its display name and description
  name the probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb

from lightning_manifold import plots
from lightning_manifold._optional import is_available, missing_message
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks.base import FIGURES, Renders, Sink
from lightning_manifold.sinks.scalars import event_file_writer

__all__ = ["TensorBoardSink"]

DEFAULT_FIGURES = ("manifold", "spectrum", "progress", "diagnostics")


def _cloud(frame: ManifoldFrame) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """(n, 3) float32 points, (n, 3) uint8 colours and metadata rows of every embedded point."""
    k = plots.embedding_dims(frame)
    d = min(k, 3)
    pts: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    meta: list[list[str]] = []
    cmap = matplotlib.colormaps[plots.PROGRESS_CMAP]

    def add(coords: np.ndarray, colors: np.ndarray, rows: list[list[str]]) -> None:
        coords = np.asarray(coords, dtype=np.float64).reshape(len(rows), -1)[:, :d]
        pts.append(np.pad(coords, ((0, 0), (0, 3 - d))))
        cols.append(np.asarray(colors, dtype=np.float64).reshape(len(rows), 3))
        meta.extend(rows)

    def fmt(x: float) -> str:
        return f"{x:.4g}" if np.isfinite(x) else "nan"

    t = len(frame.live_steps)
    if t and d:
        order = np.argsort(np.asarray(frame.live_steps), kind="stable")
        prog = np.asarray(frame.live_progress, dtype=float)[order]
        err = np.asarray(frame.live_error, dtype=float)[order]
        add(
            np.asarray(frame.live_coords)[order],
            cmap(np.nan_to_num(prog))[:, :3],
            [
                [plots.LIVE_LABEL, str(int(s)), fmt(p), fmt(e), frame.probe]
                for s, p, e in zip(np.asarray(frame.live_steps)[order], prog, err)
            ],
        )
    m = np.shape(frame.ref_coords)[0]
    if m and d:
        colors = plots.run_colors(len(frame.ref_run_names))
        ref_run = np.asarray(frame.ref_run)
        add(
            frame.ref_coords,
            np.array([to_rgb(colors[r]) for r in ref_run]),
            [
                [frame.ref_run_names[r], str(int(s)), fmt(p), "nan", frame.probe]
                for r, s, p in zip(ref_run, frame.ref_steps, frame.ref_progress)
            ],
        )
    g = np.shape(frame.geodesic)[0]
    if g and d:
        alphas = np.linspace(0.0, 1.0, g)
        add(
            frame.geodesic,
            np.tile([0.35, 0.35, 0.35], (g, 1)),
            [["geodesic", "", fmt(a), "", frame.probe] for a in alphas],
        )
    for name, point, color, p in (
        ("ignorance P0", frame.ignorance, (0.0, 0.0, 0.0), 0.0),
        ("truth P*", frame.truth, (0.84, 0.15, 0.16), 1.0),
    ):
        point = np.asarray(point, dtype=float)
        if d and point.size >= d and np.isfinite(point[:d]).all():
            add(point[None, :], np.array([color]), [[name, "", fmt(p), "", frame.probe]])
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), []
    xyz = np.nan_to_num(np.concatenate(pts)).astype(np.float32)
    rgb = np.clip(np.round(np.concatenate(cols) * 255), 0, 255).astype(np.uint8)
    return xyz, rgb, meta


def _add_png(writer: Any, tag: str, renders: Renders, step: int) -> None:
    """The live picture as an image summary of its PNG (encoded once per render and shared
    with the other sinks); ``add_image`` for writers without torch's summary API."""
    file_writer = event_file_writer(writer)
    if file_writer is None:
        writer.add_image(tag, renders.live(), global_step=step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = renders.live().shape[:2]
    image = Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=renders.live_png()
    )
    file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def _add_mesh(
    writer: Any,
    tag: str,
    probe: str,
    xyz: np.ndarray,
    rgb: np.ndarray,
    config: dict[str, Any],
    step: int,
) -> None:
    """``add_mesh`` with a display name and description naming the probe (the Mesh dashboard
    shows them on the card); plain ``add_mesh`` for writers without torch's summary API."""
    try:
        from torch.utils.tensorboard.summary import mesh
    except ImportError:
        mesh = None
    file_writer = event_file_writer(writer)
    if mesh is None or file_writer is None:
        writer.add_mesh(
            tag, vertices=xyz[None], colors=rgb[None], config_dict=config, global_step=step
        )
        return
    summary = mesh(
        tag,
        xyz[None],
        rgb[None],
        None,
        config,
        display_name=f"probe {probe}: InPCA point cloud",
        description=(
            f"Probe **{probe}**: the top-3 InPCA coordinates of this run's snapshots (coloured by "
            "progress), the reference runs (by run), the geodesic (grey), ignorance P0 (black) "
            "and truth P* (red)."
        ),
    )
    file_writer.add_summary(summary, step)


class TensorBoardSink(Sink):
    """Log manifold figures, a projector embedding and a mesh point cloud to TensorBoard.

    Args:
        logger: a Lightning ``TensorBoardLogger`` (its ``.experiment`` is used at log time) or a
            ``SummaryWriter``.
        figures: which detailed figures to log as images in full renders (names of
            ``plots.*_figure`` without the suffix: ``summary``, ``manifold``, ``spectrum``,
            ``progress``, ``diagnostics``).
        live: log the live picture at every render.
        embedding: log the projector embedding.
        mesh: log the mesh point cloud.

    Raises:
        ModuleNotFoundError: naming ``lightning-manifold[tensorboard]`` when neither tensorboard
            nor tensorboardX is installed.
        ValueError: for an unknown figure name.
    """

    def __init__(
        self,
        logger: Any,
        *,
        figures: Sequence[str] = DEFAULT_FIGURES,
        live: bool = True,
        embedding: bool = True,
        mesh: bool = True,
    ) -> None:
        super().__init__()
        if not (is_available("tensorboard") or is_available("tensorboardX")):
            raise ModuleNotFoundError(missing_message("tensorboard"), name="tensorboard")
        unknown = [f for f in figures if f not in FIGURES]
        if unknown:
            raise ValueError(f"`figures` must be among {sorted(FIGURES)}, got {unknown}")
        self.logger = logger
        self.figures = tuple(figures)
        self.live = live
        self.embedding = embedding
        self.mesh = mesh
        self._embedded: set[tuple[str, int]] = set()

    @property
    def writer(self) -> Any:
        """The SummaryWriter (``logger.experiment`` for a Lightning logger)."""
        return getattr(self.logger, "experiment", self.logger)

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        """Log the live picture, the figures (full renders), the embedding and the point cloud
        of ``frame`` at ``step``."""
        renders = renders if renders is not None else Renders(frame)
        writer = self.writer
        step = int(step)
        prefix = f"manifold/{frame.probe}"
        if self.live:
            _add_png(writer, f"{prefix}/live", renders, step)
        for name in self.figures if renders.full else ():
            writer.add_figure(
                f"{prefix}/{name}", renders.figure(name), global_step=step, close=True
            )
        if not (self.embedding or self.mesh):
            return
        xyz, rgb, meta = _cloud(frame)
        if not len(meta):
            return
        if self.embedding and (frame.probe, step) not in self._embedded:
            # one projector entry per (probe, step); a second one would collide on disk
            self._embedded.add((frame.probe, step))
            writer.add_embedding(
                xyz,
                metadata=meta,
                metadata_header=["run", "step", "progress", "error", "probe"],
                tag=prefix,
                global_step=step,
            )
        if self.mesh:
            extent = float(np.ptp(xyz, axis=0).max()) if len(xyz) > 1 else 1.0
            config = {"material": {"cls": "PointsMaterial", "size": 0.02 * (extent or 1.0)}}
            _add_mesh(writer, f"{prefix}/cloud", frame.probe, xyz, rgb, config, step)

    def close(self) -> None:
        """Flush the writer."""
        writer = self.writer
        if hasattr(writer, "flush"):
            writer.flush()

    def __repr__(self) -> str:
        return f"TensorBoardSink(figures={self.figures!r})"
