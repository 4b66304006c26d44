"""The sink interface, render throttling and the group that fans one frame out to every sink.

A *sink* turns a :class:`~lightning_manifold.frame.ManifoldFrame` into media somewhere
(TensorBoard, Weights & Biases, files). Sinks render figures, so they are called on **rank zero
only**: :class:`SinkGroup` returns without doing anything on other ranks, and the callback only
calls it from rank zero anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn
from matplotlib.figure import Figure

from lightning_manifold import plots, plots_live
from lightning_manifold._optional import is_available, missing_message
from lightning_manifold.frame import ManifoldFrame

__all__ = [
    "Delivery",
    "FrameSource",
    "RenderThrottle",
    "Renders",
    "Sink",
    "SinkGroup",
    "coordinate_table",
    "frozen_copy",
    "safe_name",
]

FrameSource = ManifoldFrame | Callable[[], ManifoldFrame]
"""A frame, or a zero-argument callable building one only when a render actually happens."""

Delivery = Callable[[], None]
"""A prepared logger call that must run on the training thread (see :attr:`Sink.thread_safe`)."""

FIGURES: dict[str, Callable[..., Figure]] = {
    "summary": plots.summary_figure,
    "manifold": plots.manifold_figure,
    "spectrum": plots.spectrum_figure,
    "progress": plots.progress_figure,
    "diagnostics": plots.diagnostics_figure,
}


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_``, ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "probe"


def frozen_copy(frame: ManifoldFrame) -> ManifoldFrame:
    """An immutable copy of ``frame``: every array copied and marked read-only.

    The training thread keeps updating its online module while a worker draws; a frame handed
    to the worker must not share memory with it. Frames are O(t k + m k) numbers, so copying is
    cheap next to drawing.
    """
    changes: dict[str, Any] = {"ref_run_names": list(frame.ref_run_names)}
    for field in dataclasses.fields(frame):
        value = getattr(frame, field.name)
        if isinstance(value, np.ndarray):
            value = value.copy()
            value.flags.writeable = False
            changes[field.name] = value
    return dataclasses.replace(frame, **changes)


def coordinate_table(
    frame: ManifoldFrame, *, include_reference: bool = True, max_dims: int | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Rows of embedded coordinates, live run first, then the reference models.

    Columns: ``step, progress, error, pc1..pck, run`` (``run`` is ``plots.LIVE_LABEL`` for the
    live run); unknown values (e.g. the error of a reference model) are ``None``.

    Args:
        frame: the data.
        include_reference: add the reference models' rows.
        max_dims: keep at most this many coordinates (default: all).
    """
    k = plots.embedding_dims(frame)
    if max_dims is not None:
        k = min(k, max_dims)
    columns = ["step", "progress", "error", *[f"pc{i + 1}" for i in range(k)], "run"]

    def num(x: Any) -> float | None:
        x = float(x)
        return x if math.isfinite(x) else None

    rows: list[list[Any]] = []
    live = np.asarray(frame.live_coords, dtype=float)
    for i in np.argsort(np.asarray(frame.live_steps), kind="stable"):
        rows.append(
            [int(frame.live_steps[i]), num(frame.live_progress[i]), num(frame.live_error[i])]
            + [num(v) for v in live[i, :k]]
            + [plots.LIVE_LABEL]
        )
    if include_reference:
        ref = np.asarray(frame.ref_coords, dtype=float)
        for i in range(ref.shape[0]):
            rows.append(
                [int(frame.ref_steps[i]), num(frame.ref_progress[i]), None]
                + [num(v) for v in ref[i, :k]]
                + [frame.ref_run_names[int(frame.ref_run[i])]]
            )
    return columns, rows


class Renders:
    """Memoised renderings of one frame, shared by all sinks of one capture.

    Figures are rendered once per (name) and kept as PNG bytes / RGB arrays; :meth:`figure` returns
    a fresh matplotlib Figure each call (for APIs that consume and close figures).

    Sinks always log the cheap live picture (:meth:`live`, :mod:`lightning_manifold.plots_live`)
    and what needs no drawing (point clouds, tables, CSV); the detailed matplotlib figures, which
    cost seconds, only when ``full`` is true.

    Args:
        frame: the data.
        dpi: resolution of the figures.
        full: also log the detailed figures (``plots.*_figure``).
        final: the picture at the end of training (sinks add what is too costly to repeat, such
            as the interactive plotly map); implied by ``full``.
    """

    def __init__(
        self, frame: ManifoldFrame, *, dpi: float = 100.0, full: bool = True, final: bool = False
    ) -> None:
        self.frame = frame
        self.dpi = dpi
        self.full = bool(full)
        self.final = bool(final) or self.full
        self._png: dict[str, bytes] = {}
        self._array: dict[str, np.ndarray] = {}
        self._plotly: Any = None
        self._live: np.ndarray | None = None

    def live(self) -> np.ndarray:
        """(H, W, 3) uint8 pixels of the live picture (``plots_live.live_image``, drawn once)."""
        if self._live is None:
            self._live = plots_live.live_image(self.frame)
        return self._live

    def live_png(self) -> bytes:
        """PNG bytes of the live picture."""
        if "live" not in self._png:
            self._png["live"] = plots_live.to_png(self.live())
        return self._png["live"]

    def figure(self, name: str) -> Figure:
        """A new matplotlib figure ``name`` in ``summary, manifold, spectrum, progress,
        diagnostics``."""
        if name not in FIGURES:
            raise ValueError(f"`name` must be one of {sorted(FIGURES)}, got {name!r}")
        return FIGURES[name](self.frame, dpi=self.dpi)

    def png(self, name: str) -> bytes:
        """PNG bytes of figure ``name`` (rendered once)."""
        if name not in self._png:
            self._png[name] = plots.figure_to_png(self.figure(name))
        return self._png[name]

    def array(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 pixels of figure ``name`` (rendered once)."""
        if name not in self._array:
            self._array[name] = plots.figure_to_array(self.figure(name))
        return self._array[name]

    def plotly(self) -> Any:
        """The interactive plotly figure (built once). Raises ModuleNotFoundError without plotly."""
        if self._plotly is None:
            self._plotly = plots.manifold_plotly(self.frame)
        return self._plotly


class Sink:
    """Where manifold frames go. Subclasses implement :meth:`log_frame` (and :meth:`close`).

    Sinks are called on rank zero only. They must not raise for missing optional packages at
    log time: check them in ``__init__`` (raising the :func:`~lightning_manifold._optional.require`
    message) or degrade with a single warning (:meth:`warn_once`).

    Sinks may be driven from a drawing thread (:class:`~lightning_manifold.sinks.RenderWorker`).
    A sink whose logger may only be called from the training thread sets ``thread_safe = False``
    and overrides :meth:`prepare`: the drawing happens on the worker, the logger call is handed
    back and runs on the training thread.
    """

    #: Whether :meth:`log_frames` may run on a thread other than the training thread.
    thread_safe: bool = True

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        """Render ``frame`` and write it at optimizer step ``step``.

        Args:
            frame: the data.
            step: ``trainer.global_step`` of the newest snapshot.
            renders: shared renderings of ``frame`` (created by the sink when ``None``).
        """
        raise NotImplementedError

    def log_frames(self, batch: Sequence[tuple[ManifoldFrame, Renders]], step: int) -> None:
        """Log several probes captured at the same ``step`` (default: :meth:`log_frame` each).

        Args:
            batch: (frame, its renders) per probe.
            step: ``trainer.global_step``.
        """
        for frame, renders in batch:
            self.log_frame(frame, step, renders)

    def prepare(self, batch: Sequence[tuple[ManifoldFrame, Renders]], step: int) -> Delivery:
        """Draw ``batch`` now and return the logger call to run later on the training thread.

        The default defers everything (:meth:`log_frames`); sinks with ``thread_safe = False``
        override it to draw here and return only the cheap logger call.
        """
        return functools.partial(self.log_frames, list(batch), int(step))

    def close(self) -> None:
        """Flush and release resources (the sink may not be used afterwards)."""

    def warn_once(self, key: str, message: str) -> None:
        """Warn with ``message`` the first time ``key`` is seen by this sink."""
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def plotly_available(self) -> bool:
        """Whether plotly can be imported; warns once (naming the extra) when it cannot."""
        if is_available("plotly"):
            return True
        self.warn_once(
            "plotly", f"{missing_message('plotly')} ({type(self).__name__} skips interactive plots)"
        )
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RenderThrottle:
    """Decide at each capture whether to render, so drawing never dominates training time.

    A render happens at the first capture, then when all of these hold: at least
    ``every_n_captures`` captures since the last render, at least ``min_interval_s`` seconds since
    it, and the time spent rendering (including the expected cost of this render, the mean of the
    past ones) stays within ``max_fraction_of_time`` of the wall time elapsed since the throttle
    was created. ``force=True`` (the final call) always renders.

    Args:
        every_n_captures: render at most every n-th capture (>= 1).
        min_interval_s: minimum seconds between two renders (>= 0).
        max_fraction_of_time: budget in (0, 1], or ``None`` for no budget.
        clock: a monotonic clock in seconds for the elapsed time (injectable for tests).
        cost_clock: the clock that measures a render in :meth:`timed` (default ``clock``); a
            drawing thread passes ``time.thread_time`` so that the budget counts its CPU time,
            which is what it takes from training, not the time it waits for the GIL.

    Example::

        throttle = RenderThrottle(every_n_captures=2, max_fraction_of_time=0.1)
        if throttle.should_render(force=is_last):
            with throttle.timed():
                ...  # draw
    """

    def __init__(
        self,
        every_n_captures: int = 1,
        min_interval_s: float = 0.0,
        max_fraction_of_time: float | None = 0.1,
        *,
        clock: Callable[[], float] = time.perf_counter,
        cost_clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(every_n_captures, int) or every_n_captures < 1:
            raise ValueError(f"`every_n_captures` must be an int >= 1, got {every_n_captures!r}")
        if not min_interval_s >= 0:
            raise ValueError(f"`min_interval_s` must be >= 0, got {min_interval_s!r}")
        if max_fraction_of_time is not None and not 0 < max_fraction_of_time <= 1:
            raise ValueError(
                f"`max_fraction_of_time` must be in (0, 1] or None, got {max_fraction_of_time!r}"
            )
        self.every_n_captures = every_n_captures
        self.min_interval_s = float(min_interval_s)
        self.max_fraction_of_time = max_fraction_of_time
        self._clock = clock
        self._cost_clock = cost_clock if cost_clock is not None else clock
        self.reset()

    def reset(self) -> None:
        """Forget history; elapsed time counts from now."""
        self.start_time = self._clock()
        self.captures = 0
        self.renders = 0
        self.skipped = 0
        self.render_time = 0.0
        self._last_capture: int | None = None
        self._last_render_time: float | None = None

    @property
    def mean_render_time(self) -> float:
        """Mean measured render duration in seconds (0 before the first)."""
        return self.render_time / self.renders if self.renders else 0.0

    def should_render(self, *, force: bool = False) -> bool:
        """Count one capture and return whether to render it."""
        self.captures += 1
        now = self._clock()
        ok = force or self._last_capture is None
        if not ok:
            ok = self.captures - self._last_capture >= self.every_n_captures
            if ok and self._last_render_time is not None:
                ok = now - self._last_render_time >= self.min_interval_s
            if ok and self.max_fraction_of_time is not None:
                budget = self.max_fraction_of_time * (now - self.start_time)
                ok = self.render_time + self.mean_render_time <= budget
        if ok:
            self._last_capture = self.captures
            self._last_render_time = now
        else:
            self.skipped += 1
        return ok

    def seconds_until_allowed(self, expected: float | None = None) -> float:
        """Seconds to wait before a render of cost ``expected`` (default: the mean so far) fits
        the time budget and ``min_interval_s``; 0 when it may start now. Counts nothing.

        Used by a drawing thread that keeps the newest frame and draws it once this reaches 0.
        """
        now = self._clock()
        wait = 0.0
        if self._last_render_time is not None:
            wait = self._last_render_time + self.min_interval_s - now
        if self.max_fraction_of_time is not None:
            cost = self.mean_render_time if expected is None else float(expected)
            ready_at = self.start_time + (self.render_time + cost) / self.max_fraction_of_time
            wait = max(wait, ready_at - now)
        return max(wait, 0.0)

    def mark(self) -> None:
        """Count a render starting now (for :meth:`seconds_until_allowed`'s ``min_interval_s``)."""
        self._last_render_time = self._clock()

    def record(self, seconds: float) -> None:
        """Add one measured render duration."""
        self.renders += 1
        self.render_time += float(seconds)

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Measure the enclosed render with the cost clock and :meth:`record` it."""
        t0 = self._cost_clock()
        try:
            yield
        finally:
            self.record(self._cost_clock() - t0)

    def state(self) -> dict[str, float]:
        """Counters for logging/debugging: captures, renders, skipped, render_time, elapsed."""
        return {
            "captures": self.captures,
            "renders": self.renders,
            "skipped": self.skipped,
            "render_time": self.render_time,
            "elapsed": self._clock() - self.start_time,
        }


class SinkGroup:
    """Fan frames out to several sinks, behind one :class:`RenderThrottle`.

    One throttle decision is taken per optimizer step, so logging several probes at the same
    step renders all or none of them. A failing sink is reported once (warning) and never stops
    training, unless ``strict=True``. Does nothing on ranks other than zero.

    Args:
        sinks: the sinks (see :func:`lightning_manifold.sinks.sinks_for_loggers`).
        throttle: render throttle (default ``RenderThrottle()``: every capture within 10% of
            wall time).
        dpi: resolution of rendered figures.
        strict: re-raise errors of sinks (for tests).

    Example::

        group = SinkGroup(sinks_for_loggers(trainer.loggers, dirpath))
        group.log_frame(online.frame, step=trainer.global_step)  # lazily built, maybe skipped
        group.log_frame(online.frame, step=trainer.global_step, force=True)  # at fit end
        group.close()
    """

    def __init__(
        self,
        sinks: Iterable[Sink],
        *,
        throttle: RenderThrottle | None = None,
        dpi: float = 100.0,
        strict: bool = False,
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        for s in self.sinks:
            if not isinstance(s, Sink):
                raise TypeError(f"`sinks` must contain Sink instances, got {type(s).__name__}")
        self.throttle = throttle if throttle is not None else RenderThrottle()
        self.dpi = dpi
        self.strict = strict
        self._decision: tuple[int, bool] | None = None
        self._done: set[tuple[str, int]] = set()
        self._failed: set[int] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self.sinks)

    def _decide(self, step: int, force: bool) -> bool:
        last = self._decision
        if last is not None and last[0] == step and (last[1] or not force):
            return last[1]
        self._decision = (step, self.throttle.should_render(force=force))
        return self._decision[1]

    def log_frame(self, frame: FrameSource, step: int, *, force: bool = False) -> bool:
        """Render ``frame`` to every sink if the throttle allows it (always with ``force``).

        Args:
            frame: a ManifoldFrame, or a zero-argument callable returning one (called only when
                rendering, so building the frame is throttled too).
            step: ``trainer.global_step`` of the newest snapshot.
            force: render regardless of the throttle (use at the end of training).

        Returns:
            Whether the frame was rendered.
        """
        return self.log_frames([frame], step, force=force)

    def log_frames(
        self,
        frames: Sequence[FrameSource],
        step: int,
        *,
        force: bool = False,
        full: bool = True,
        final: bool = False,
        deliver: Callable[[Delivery], None] | None = None,
    ) -> bool:
        """Like :meth:`log_frame` for several probes captured at the same ``step``.

        Args:
            frames: one frame (or frame builder) per probe.
            step: ``trainer.global_step`` of the newest snapshot.
            force: render regardless of the throttle.
            full: also draw the detailed figures (see :class:`Renders`).
            final: the picture at the end of training (see :class:`Renders`).
            deliver: when given (on a drawing thread), sinks that are not ``thread_safe`` draw
                here and hand their logger call to ``deliver`` instead of making it.
        """
        if rank_zero_only.rank != 0 or not self.sinks or self._closed:
            return False
        if not self._decide(int(step), force):
            return False
        step = int(step)
        with self.throttle.timed():
            batch: list[tuple[ManifoldFrame, Renders]] = []
            for source in frames:
                frame = self._build(source)
                if frame is None:
                    continue
                key = (frame.probe, step, full, final)
                if key in self._done:  # already rendered at this step (e.g. a final forced call)
                    continue
                self._done = {k for k in self._done if k[1] == step} | {key}
                batch.append((frame, Renders(frame, dpi=self.dpi, full=full, final=final)))
            if batch:
                for sink in self.sinks:
                    if self._closed:  # closed by the training thread while this one drew
                        break
                    if deliver is None or sink.thread_safe:
                        self._call(sink, sink.log_frames, batch, step)
                    else:
                        prepared = self._call(sink, sink.prepare, batch, step)
                        if prepared is not None:
                            deliver(functools.partial(self._call, sink, prepared))
        return True

    def _build(self, source: FrameSource) -> ManifoldFrame | None:
        if not callable(source):
            return source
        try:
            return source()
        except Exception as err:
            if self.strict:
                raise
            if -1 not in self._failed:
                self._failed.add(-1)
                rank_zero_warn(
                    f"lightning-manifold: building the manifold frame failed "
                    f"({type(err).__name__}: {err}); no plots for this capture, training continues."
                )
            return None

    def _call(self, sink: Sink, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; a failure is warned once per sink (raised with ``strict``) -> None."""
        try:
            return fn(*args)
        except Exception as err:
            if self.strict:
                raise
            if id(sink) not in self._failed:
                self._failed.add(id(sink))
                rank_zero_warn(
                    f"lightning-manifold: {type(sink).__name__} failed ({type(err).__name__}: "
                    f"{err}); training continues, further failures of this sink are not reported."
                    f"\n{traceback.format_exc(limit=3)}"
                )
            return None

    def close(self) -> None:
        """Close every sink once (errors reported like in :meth:`log_frame`); later frames are
        ignored."""
        if rank_zero_only.rank != 0 or self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            self._call(sink, sink.close)

    def __repr__(self) -> str:
        return f"SinkGroup({self.sinks!r})"
