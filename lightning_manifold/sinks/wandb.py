"""Weights & Biases: interactive 3D map, coordinates table and summary image, one dict per capture.

Media go through ``WandbLogger.log_metrics(media, step=step)`` so they line up with
``trainer/global_step`` like every other logged value (never ``wandb.log(step=...)``): the
logger defines ``trainer/global_step`` as the step metric of every key, so a row of media for an
earlier step, logged after the scalars of a later one, is kept and shown at its own step. The
sink is not ``thread_safe`` (``wandb.Run.log`` keeps its step and media files without a lock):
on a drawing thread the media are built there and only the ``log_metrics`` call runs on the
training thread (:meth:`WandbSink.prepare`). Keys (``<probe>`` is the probe name):

* ``manifold/<probe>/live`` -- ``wandb.Image`` of the live picture (map and progress), at every
  render.
* ``manifold/<probe>/manifold_3d`` -- ``wandb.Plotly``: rotatable 3D map, hover shows run, step,
  progress and error, in the final picture (needs plotly; without it a single warning names the
  extra).
* ``manifold/<probe>/coordinates`` -- ``wandb.Table`` with columns ``step, progress, error,
  pc1..pck, run`` (live run and reference models), for custom W&B charts, in the final picture
  (a table of every snapshot so far at every render would cost more with every capture).
* ``manifold/<probe>/summary`` -- ``wandb.Image`` of
  :func:`~lightning_manifold.plots.summary_figure`, in full renders.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from lightning_manifold import plots
from lightning_manifold._optional import require
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks.base import Delivery, Renders, Sink, coordinate_table

__all__ = ["WandbSink"]


class WandbSink(Sink):
    """Log manifold media to Weights & Biases through a Lightning ``WandbLogger``.

    Args:
        logger: the ``WandbLogger`` (anything with ``log_metrics(metrics, step=)``).
        plotly: log the interactive 3D map (final picture).
        table: log the coordinates table.
        image: log the summary figure as an image (full renders).
        live: log the live picture at every render.
        table_dims: number of coordinates in the table.

    Raises:
        ModuleNotFoundError: naming ``lightning-manifold[wandb]`` when wandb is not installed.
    """

    thread_safe = False

    def __init__(
        self,
        logger: Any,
        *,
        plotly: bool = True,
        table: bool = True,
        image: bool = True,
        live: bool = True,
        table_dims: int = 10,
    ) -> None:
        super().__init__()
        self._wandb = require("wandb", "wandb")
        if not callable(getattr(logger, "log_metrics", None)):
            raise TypeError(
                "`logger` must have a log_metrics(metrics, step=) method, "
                f"got {type(logger).__name__}"
            )
        self.logger = logger
        self.plotly = plotly
        self.table = table
        self.image = image
        self.live = live
        self.table_dims = table_dims
        self._png_dir: str | None = None
        self._png_count = 0

    def media(self, frame: ManifoldFrame, renders: Renders | None = None) -> dict[str, Any]:
        """The dict of W&B media objects for ``frame`` (keys ``manifold/<probe>/...``)."""
        wandb = self._wandb
        renders = renders if renders is not None else Renders(frame)
        prefix = f"manifold/{frame.probe}"
        out: dict[str, Any] = {}
        caption = f"{plots.LIVE_LABEL}, step {frame.step}"
        if self.live:
            out[f"{prefix}/live"] = wandb.Image(self._png_file(renders), caption=caption)
        if self.plotly and renders.final and self.plotly_available():
            out[f"{prefix}/manifold_3d"] = wandb.Plotly(renders.plotly())
        if self.table and renders.final:
            columns, rows = coordinate_table(frame, max_dims=self.table_dims)
            out[f"{prefix}/coordinates"] = wandb.Table(columns=columns, data=rows)
        if self.image and renders.full:
            out[f"{prefix}/summary"] = wandb.Image(renders.array("summary"), caption=caption)
        return out

    def _png_file(self, renders: Renders) -> str:
        """A file holding the live picture's PNG (encoded once per render for every sink);
        W&B copies it into the run when the media are logged, and :meth:`close` removes it."""
        if self._png_dir is None:
            self._png_dir = tempfile.mkdtemp(prefix="lightning-manifold-wandb-")
        self._png_count += 1
        path = os.path.join(self._png_dir, f"live-{self._png_count}.png")
        with open(path, "wb") as fh:
            fh.write(renders.live_png())
        return path

    def close(self) -> None:
        """Remove the PNG files handed to W&B (logged by now: the worker delivers before it
        closes its sinks)."""
        if self._png_dir is not None:
            shutil.rmtree(self._png_dir, ignore_errors=True)
            self._png_dir = None

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        """Log the media of ``frame`` in one ``log_metrics`` call at ``step``."""
        self.log_frames([(frame, renders if renders is not None else Renders(frame))], step)

    def log_frames(self, batch: Sequence[tuple[ManifoldFrame, Renders]], step: int) -> None:
        """Log the media of every probe captured at ``step`` in a single ``log_metrics`` call."""
        self.prepare(batch, step)()

    def prepare(self, batch: Sequence[tuple[ManifoldFrame, Renders]], step: int) -> Delivery:
        """Build the media of every probe captured at ``step`` now (drawing thread) and return
        the single ``log_metrics`` call that logs them (for the training thread)."""
        media: dict[str, Any] = {}
        for frame, renders in batch:
            media.update(self.media(frame, renders))
        if not media:
            return lambda: None
        return functools.partial(self.logger.log_metrics, media, step=int(step))

    def __repr__(self) -> str:
        return f"WandbSink(plotly={self.plotly}, table={self.table}, image={self.image})"
