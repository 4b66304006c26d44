"""Draw manifold frames on a daemon thread so that drawing never blocks training.

The training thread only copies the frame (:func:`~lightning_manifold.sinks.base.frozen_copy`)
into a one-slot mailbox: when drawing cannot keep up, the newest frame replaces the pending one.
The worker draws a frame once the time budget allows it, measured as the worker's own CPU time
against the wall time since training started (``time.thread_time``: what drawing takes from the
training process, not the time it spends waiting for the GIL).

Threads rather than a process: the live picture (:mod:`lightning_manifold.plots_live`) costs a
few milliseconds per probe, so the time it holds the GIL is small next to the budget, while a
process would have to pickle frames and could not call the loggers' writers, which live in the
training process.

Loggers that are not known to be thread-safe (W&B: ``Run.log`` keeps its step counter and
media files without a lock) get their media built on the worker and their logger call handed
back: :meth:`RenderWorker.deliver` runs it on the training thread, at the next capture and at
the end of training. W&B rows carry ``trainer/global_step`` (``WandbLogger`` defines it as the
step metric of every key), so media of a step logged after scalars of a later step are kept and
plotted at their own step.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lightning.fabric.utilities.rank_zero import rank_zero_warn

from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks.base import Delivery, RenderThrottle, Sink, SinkGroup, frozen_copy

__all__ = ["FULL_COST_PRIOR_S", "RenderWorker"]

#: Assumed CPU seconds of the detailed figures per probe and sink before one was measured (a
#: summary figure with constrained layout costs 1-2 s of CPU on a laptop core).
FULL_COST_PRIOR_S = 2.0


@dataclass(frozen=True)
class _Job:
    frames: tuple[ManifoldFrame, ...]
    step: int
    final: bool


class RenderWorker:
    """Fan frames out to sinks from one daemon thread; the newest frame wins.

    Live frames are drawn when the budget allows (the live picture and what needs no drawing);
    the final frame is drawn as soon as the worker is free, with the detailed figures too when
    their expected cost still fits the budget (measured once drawn, :data:`FULL_COST_PRIOR_S`
    per probe and sink before).

    Args:
        sinks: the sinks (see :func:`~lightning_manifold.sinks.sinks_for_loggers`).
        budget: fraction of the wall time since creation the worker may spend drawing, in
            (0, 1], or ``None`` for no limit (every frame is drawn as soon as possible).
        dpi: resolution of the detailed figures.
        strict: re-raise sink errors on the worker (for tests; they end the worker).
        start: start the thread now (tests may start it later with :meth:`start`).

    Example::

        worker = RenderWorker(sinks_for_loggers(trainer.loggers, run_dir))
        worker.submit([online.frame()], step)          # training thread, cheap
        worker.deliver()                               # training thread: W&B calls
        worker.submit([online.frame()], step, final=True)
        finished = worker.close(timeout=20.0)          # bounded wait at the end of fit
    """

    def __init__(
        self,
        sinks: Iterable[Sink],
        *,
        budget: float | None = 0.02,
        dpi: float = 100.0,
        strict: bool = False,
        start: bool = True,
    ) -> None:
        if budget is not None and not (isinstance(budget, int | float) and 0 < budget <= 1):
            raise ValueError(f"`budget` must be in (0, 1] or None, got {budget!r}")
        throttle = RenderThrottle(max_fraction_of_time=budget, cost_clock=time.thread_time)
        self.group = SinkGroup(sinks, throttle=throttle, dpi=dpi, strict=strict)
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._busy = False
        self._stopping = False
        self._outbox: collections.deque[Delivery] = collections.deque()
        self._full_cost: float | None = None
        self.submitted = 0
        self.dropped = 0
        self.drawn_steps: list[int] = []
        self.submit_seconds = 0.0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, name="lightning-manifold-render", daemon=True
        )
        if start:
            self.start()

    # ------------------------------------------------------------------ training thread

    def start(self) -> None:
        """Start the drawing thread (once)."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self.group.throttle.reset()
            self._thread.start()

    @property
    def throttle(self) -> RenderThrottle:
        """The budget: ``render_time`` is the worker's CPU seconds spent drawing."""
        return self.group.throttle

    def submit(self, frames: Sequence[ManifoldFrame], step: int, *, final: bool = False) -> None:
        """Hand immutable copies of ``frames`` (one per probe, captured at ``step``) to the
        worker, replacing a pending frame that was not drawn yet. Never waits for drawing.

        Args:
            frames: the probes' frames.
            step: ``trainer.global_step`` of the newest snapshot.
            final: the picture at the end of training (never replaced, drawn without waiting
                for the budget).
        """
        start = time.perf_counter()
        job = _Job(tuple(frozen_copy(f) for f in frames), int(step), bool(final))
        with self._cond:
            if self._pending is not None:
                if self._pending.final and not job.final:
                    job = self._pending  # the final picture is never replaced by a live one
                self.dropped += 1
            self._pending = job
            self.submitted += 1
            self._cond.notify_all()
        self.submit_seconds += time.perf_counter() - start

    def deliver(self) -> int:
        """Run the logger calls the worker prepared for the training thread; returns how many."""
        n = 0
        while self._outbox:
            self._outbox.popleft()()
            n += 1
        return n

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or being drawn; ``False`` if ``timeout`` ran out.

        A pending live frame still waits for the budget, so use this after a final frame or with
        ``budget=None``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = 20.0) -> bool:
        """Stop the worker: drop a pending live frame, finish a final frame (and the one being
        drawn) within ``timeout`` seconds, deliver what it prepared and close the sinks.

        Returns:
            ``True`` if everything finished; ``False`` if drawing was abandoned (the sinks are
            closed anyway and the worker writes nothing more).
        """
        with self._cond:
            if self._pending is not None and not self._pending.final:
                self._pending = None
                self.dropped += 1
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        finished = not self._thread.is_alive()
        self.deliver()
        self.group.close()  # marks the group closed: an abandoned worker writes nothing more
        return finished

    # ------------------------------------------------------------------ drawing thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._pending is None:  # nothing to draw (or dropped by `close`)
                        if self._stopping:
                            return
                        self._cond.wait()
                        continue
                    if self._pending.final or self._stopping:
                        break
                    wait = self.throttle.seconds_until_allowed()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)  # a newer frame may arrive meanwhile: it wins
                job, self._pending = self._pending, None
                self._busy = True
            try:
                self._draw(job)
            except BaseException as err:  # never let the thread die silently
                self.errors.append(err)
                rank_zero_warn(
                    f"lightning-manifold: drawing the manifold failed ({type(err).__name__}: "
                    f"{err}); training continues.\n{traceback.format_exc(limit=3)}"
                )
                if self.group.strict:
                    raise
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _full_fits(self, job: _Job) -> bool:
        """Whether the detailed figures of the final ``job`` fit what is left of the budget."""
        throttle = self.throttle
        if throttle.max_fraction_of_time is None:
            return True
        cost = self._full_cost
        if cost is None:
            cost = FULL_COST_PRIOR_S * len(job.frames) * len(self.group.sinks)
        elapsed = throttle.state()["elapsed"]
        return throttle.render_time + cost <= throttle.max_fraction_of_time * elapsed

    def _draw(self, job: _Job) -> None:
        full = job.final and self._full_fits(job)
        before = self.throttle.render_time
        drawn = self.group.log_frames(
            list(job.frames),
            job.step,
            force=True,
            full=full,
            final=job.final,
            deliver=self._outbox.append,
        )
        if drawn:
            self.drawn_steps.append(job.step)
            if full:
                self._full_cost = self.throttle.render_time - before

    def __repr__(self) -> str:
        return f"RenderWorker({self.group.sinks!r}, budget={self.throttle.max_fraction_of_time})"
