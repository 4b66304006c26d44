"""Files next to the trajectory store: PNG summary, self-contained HTML, coordinates CSV.

Used with a ``CSVLogger`` or without any logger. Files are replaced atomically at every render,
so a browser or image viewer never sees a half-written file. During training the PNG holds the
live picture (:mod:`lightning_manifold.plots_live`); a full render (the final picture when the
budget allows it) replaces it with the summary figure. The HTML report is written with the
final picture.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from lightning_manifold import plots
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks.base import Renders, Sink, safe_name

__all__ = ["FilesSink"]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FilesSink(Sink):
    """Write ``manifold_<probe>.png``, ``manifold_<probe>.html`` and
    ``manifold_<probe>_coordinates.csv`` into ``dirpath``.

    * PNG: :func:`~lightning_manifold.plots.summary_figure` in full renders, else the live
      picture.
    * HTML (final picture): :func:`~lightning_manifold.plots.write_html` -- interactive 3D map
      (plotly.js inline, opens offline) plus the PNG. Without plotly, a single warning names
      the ``lightning-manifold[plotly]`` extra and only PNG and CSV are written.
    * CSV: columns ``kind, run, step, progress, error, geodesic_distance, reference_distance,
      pc1..pck``; one row per live snapshot (``kind=live``) and per reference model.

    Args:
        dirpath: output directory, e.g. the run directory holding the trajectory store.
        png: write the PNG summary.
        html: write the interactive HTML report.
        csv: write the coordinates CSV.
        keep_history: also keep ``manifold_<probe>_step<step>.png`` for every render.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        *,
        png: bool = True,
        html: bool = True,
        csv: bool = True,
        keep_history: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(dirpath, str | os.PathLike):
            raise TypeError(f"`dirpath` must be a str or path, got {type(dirpath).__name__}")
        self.dirpath = Path(dirpath)
        self.png = png
        self.html = html
        self.csv = csv
        self.keep_history = keep_history

    def paths(self, probe: str) -> dict[str, Path]:
        """Where the files of ``probe`` go: keys ``png``, ``html``, ``csv``."""
        stem = f"manifold_{safe_name(probe)}"
        return {
            "png": self.dirpath / f"{stem}.png",
            "html": self.dirpath / f"{stem}.html",
            "csv": self.dirpath / f"{stem}_coordinates.csv",
        }

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        """Write the files of ``frame.probe`` (replacing those of the previous render)."""
        renders = renders if renders is not None else Renders(frame)
        paths = self.paths(frame.probe)
        html = self.html and renders.final
        png = b""
        if self.png or html:
            png = renders.png("summary") if renders.full else renders.live_png()
        if self.png:
            _atomic_write(paths["png"], png)
            if self.keep_history:
                history = paths["png"].with_name(f"{paths['png'].stem}_step{int(step):08d}.png")
                _atomic_write(history, png)
        if html and self.plotly_available():
            tmp = paths["html"].with_name(f".{paths['html'].name}.render")
            plots.write_html(frame, tmp, summary_png=png)
            os.replace(tmp, paths["html"])
        if self.csv:
            _atomic_write(paths["csv"], self._csv(frame).encode("utf-8"))

    @staticmethod
    def _csv(frame: ManifoldFrame) -> str:
        """The coordinates CSV: live snapshots (by step), then reference models."""
        k = plots.embedding_dims(frame)
        header = ["kind", "run", "step", "progress", "error", "geodesic_distance"]
        header += ["reference_distance", *[f"pc{i + 1}" for i in range(k)]]

        def num(x: float) -> str:
            x = float(x)
            return repr(x) if math.isfinite(x) else ""

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        live = np.asarray(frame.live_coords, dtype=float)
        for i in np.argsort(np.asarray(frame.live_steps), kind="stable"):
            writer.writerow(
                ["live", plots.LIVE_LABEL, int(frame.live_steps[i])]
                + [num(frame.live_progress[i]), num(frame.live_error[i])]
                + [num(frame.live_geodesic_distance[i]), num(frame.live_reference_distance[i])]
                + [num(v) for v in live[i, :k]]
            )
        ref = np.asarray(frame.ref_coords, dtype=float)
        m = ref.shape[0]
        ref_geo = np.asarray(frame.ref_geodesic_distance, dtype=float)
        if ref_geo.shape != (m,):
            ref_geo = np.full(m, np.nan)
        for i in range(m):
            writer.writerow(
                ["reference", frame.ref_run_names[int(frame.ref_run[i])], int(frame.ref_steps[i])]
                + [num(frame.ref_progress[i]), "", num(ref_geo[i]), ""]
                + [num(v) for v in ref[i, :k]]
            )
        return buf.getvalue()

    def __repr__(self) -> str:
        return f"FilesSink({str(self.dirpath)!r})"
