"""Figures drawn by a second process while the command line computes (2 cores, not 1).

Importing matplotlib (and plotly, SciPy's clustering) and drawing the figures are
single-threaded Python, and so is importing torch: one process does them one after the other
while the second core idles. ``embed`` and ``compare`` therefore start this worker before they
import torch; it imports the plotting modules meanwhile, then draws each job the command sends
it while the command goes on computing and writing its tables. This module never imports torch.

Protocol (parent -> worker, over stdin): one line per job, ``<job> <path>``, where ``path`` is
an ``.npz`` written by :func:`write_payload` (arrays, and a JSON header for everything else; no
pickle). End of input ends the worker, which then prints one JSON line: ``{"written": {kind:
path}}``, or ``{"error": message}`` after the first failing job. Jobs: ``embedding`` (a
:class:`~lightning_manifold.frame.ManifoldFrame` -> ``<stem>.png`` and, with plotly,
``<stem>.html``), ``dendrogram`` (distances, names, groups -> ``dendrogram.png``) and
``tubes`` (tube-width bands -> ``tube_widths.png``).

A command whose worker fails draws the figures itself (:meth:`FigureWorker.result` raises).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_manifold.frame import ManifoldFrame

__all__ = ["FigureWorker", "frame_payload", "read_payload", "write_payload"]

_HEADER = "__header__"


def write_payload(path: Path, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> None:
    """One ``.npz``: numeric and string arrays, plus a JSON ``header`` (no object arrays)."""
    buf = io.BytesIO()
    np.savez(buf, **{_HEADER: np.array(json.dumps(dict(header)))}, **arrays)
    path.write_bytes(buf.getvalue())


def read_payload(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the header of a :func:`write_payload` file (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != _HEADER}
        header = json.loads(str(z[_HEADER][()]))
    return arrays, header


def frame_payload(frame: ManifoldFrame) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A frame as arrays (every ndarray field) and a header (every other field, and the
    ``ref_run_groups`` that ``analysis.embedding_frame`` attaches)."""
    arrays: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {}
    for f in dataclasses.fields(frame):
        value = getattr(frame, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            header[f.name] = value.item() if isinstance(value, np.generic) else value
    groups = getattr(frame, "ref_run_groups", None)
    if groups is not None:
        header["ref_run_groups"] = [str(g) for g in groups]
    return arrays, header


def _frame(arrays: dict[str, np.ndarray], header: dict[str, Any]) -> ManifoldFrame:
    groups = header.pop("ref_run_groups", None)
    frame = ManifoldFrame(**arrays, **header)
    if groups is not None:
        frame.ref_run_groups = groups  # type: ignore[attr-defined]
    return frame


# --------------------------------------------------------------------------------------------
# the worker


def _draw(job: str, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> dict[str, str]:
    """Draw one job and write its files; ``{kind: path}``."""
    from lightning_manifold import analysis_figures as AF
    from lightning_manifold import plots

    out = Path(header.pop("out_dir"))
    out.mkdir(parents=True, exist_ok=True)
    dpi = float(header.pop("dpi", 100.0))
    if job == "embedding":
        stem = header.pop("stem")
        frame = _frame(arrays, header)
        png = plots.figure_to_png(plots.summary_figure(frame, dpi=dpi))
        (out / f"{stem}.png").write_bytes(png)
        written = {"png": str(out / f"{stem}.png")}
        if header.get("html", True) and _has_plotly():
            written["html"] = str(plots.write_html(frame, out / f"{stem}.html", summary_png=png))
        return written
    if job == "dendrogram":
        fig, _ = AF.dendrogram_figure(
            arrays["distances"], [str(n) for n in arrays["names"]],
            [str(g) for g in arrays["groups"]], dpi=dpi,
        )  # fmt: skip
        (out / "dendrogram.png").write_bytes(plots.figure_to_png(fig))
        return {"dendrogram": str(out / "dendrogram.png")}
    if job == "tubes":
        names = [str(g) for g in arrays["groups"]]
        bands = {g: {k: arrays[f"{i}/{k}"] for k in ("progress", "mean", "low", "high")}
                 for i, g in enumerate(names)}  # fmt: skip
        fig = AF.tube_bands_figure(bands, dpi=dpi)
        if fig is None:
            return {}
        (out / "tube_widths.png").write_bytes(plots.figure_to_png(fig))
        return {"tube_figure": str(out / "tube_widths.png")}
    raise ValueError(f"unknown figure job {job!r}")


def _has_plotly() -> bool:
    from lightning_manifold._optional import is_available

    return is_available("plotly")


def _warm(kind: str) -> None:
    """Import what the jobs of ``kind`` need, before the first job arrives."""
    from lightning_manifold import plots

    if kind == "embedding":
        if _has_plotly():
            import plotly.graph_objects  # noqa: F401
        # a first text metric loads the font cache and builds the font lookup
        plots.figure_to_array(plots._new_figure((1.0, 1.0), 10.0))
    elif kind == "compare":
        import scipy.cluster.hierarchy  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker: warm up for ``argv[0]`` (``embedding`` or ``compare``), then draw each
    ``<job> <path>`` line of stdin; print the JSON result line."""
    args = list(sys.argv[1:] if argv is None else argv)
    written: dict[str, str] = {}
    try:
        _warm(args[0] if args else "")
        for line in sys.stdin:
            if not line.strip():
                continue
            job, path = line.rstrip("\n").split(" ", 1)
            arrays, header = read_payload(Path(path))
            written.update(_draw(job, arrays, header))
    except Exception as err:  # reported to the parent, which then draws the figures itself
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1
    print(json.dumps({"written": written}), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# the parent's side


class FigureWorker:
    """A figure worker process started by a command; send jobs, then collect what it wrote.

    Args:
        kind: ``"embedding"`` or ``"compare"`` (what to import while waiting).
    """

    def __init__(self, kind: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="lightning-manifold-figures-")
        self._jobs = 0
        self._failed = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightning_manifold._figure_worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, MPLBACKEND="Agg"),
        )

    def send(self, job: str, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> None:
        """Queue one job (``header`` holds ``out_dir``, ``dpi`` and the job's own fields)."""
        if self._failed:
            return
        path = Path(self._tmp.name) / f"{self._jobs}.npz"
        self._jobs += 1
        try:
            write_payload(path, arrays, header)
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{job} {path}\n")
            self.proc.stdin.flush()
        except OSError as err:  # a worker that died: not the command's error (nor its stdout's)
            self._failed = f"{type(err).__name__}: {err}"

    def result(self, timeout: float | None = 300.0) -> dict[str, Path]:
        """Wait for the worker; ``{kind: path}`` of the files it wrote.

        Raises:
            RuntimeError: the worker failed or did not answer (the caller draws instead).
        """
        if self._failed:
            self.close()
            raise RuntimeError(f"figure worker failed: {self._failed}")
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
            self.close()
            raise RuntimeError(f"figure worker did not finish: {exc}") from exc
        finally:
            self._tmp.cleanup()
        lines = [x for x in out.splitlines() if x.startswith("{")]
        try:
            answer = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if "written" not in answer:
            why = answer.get("error") or (err.strip().splitlines() or ["no answer"])[-1]
            raise RuntimeError(f"figure worker failed: {why}")
        return {k: Path(v) for k, v in answer["written"].items()}

    def close(self) -> None:
        """Stop the worker (when the command fails before collecting the result)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # unsent input to a worker that died
                    stream.close()
        self._tmp.cleanup()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
