r"""
Manifold Callback
=================

Record a model's training trajectory in prediction space (Mao et al., PNAS 2024): at scheduled
optimizer steps, run the model on fixed probe sets, keep the log-probabilities on disk and log
where the model stands between ignorance and truth.

"""

from __future__ import annotations

import functools
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_manifold import functional as F
from lightning_manifold._ddp import gather_probe, preserved_rng_state
from lightning_manifold._names import check_dir_name
from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.functional.distances import _few_pair_distances
from lightning_manifold.online import OnlineManifold
from lightning_manifold.probe import ProbeSet, _tensor_leaves, evaluation_mode
from lightning_manifold.schedule import Schedule
from lightning_manifold.sinks import RenderWorker, sinks_for_loggers
from lightning_manifold.sinks.scalars import log_scalars
from lightning_manifold.snapshot import Snapshot
from lightning_manifold.store import TrajectoryStore

ReferenceLike = ReferenceEmbedding | str | os.PathLike

__all__ = ["METRIC_NAMES", "ManifoldCallback"]

#: Names of the scalars logged per probe, under ``manifold/<probe>/<name>``.
METRIC_NAMES: tuple[str, ...] = (
    "progress",
    "distance_to_ignorance",
    "distance_to_truth",
    "distance_to_geodesic",
    "error",
    "cross_entropy",
    "speed",
)

_SUPPORTED_DTYPES = (torch.float32, torch.float64)

#: What a fresh run (no checkpoint restored) does with a store that already holds snapshots.
IfExists = Literal["error", "overwrite", "resume"]
#: Tasks (store appends, logger calls) the writer thread may have pending before a capture waits.
_WRITER_BACKLOG = 64
#: Longest wait at the end of `fit` for the drawing thread's final picture.
_FINAL_PICTURE_TIMEOUT_S = 20.0


class _FatalCaptureError(Exception):
    """Carries a user configuration error out of a capture; re-raised, never swallowed."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class _LoggerError(Exception):
    """A logger's ``log_metrics`` failed on the writer thread."""


def _sqrt_probs(log_probs: Tensor) -> Tensor | np.ndarray:
    """(N, C) sqrt-probabilities in the log-probabilities' dtype, for ``speed``: a numpy array
    on the CPU (where the few operations of a capture are cheaper in numpy), else a tensor."""
    if log_probs.device.type == "cpu" and log_probs.dtype in (torch.float32, torch.float64):
        return np.exp(0.5 * log_probs.detach().numpy())
    return (0.5 * log_probs).exp()


def _log_metrics(logger: Logger, scalars: dict[str, float], step: int) -> None:
    try:
        log_scalars(logger, scalars, step)
    except Exception as err:
        raise _LoggerError(f"{type(logger).__name__}: {type(err).__name__}: {err}") from err


class _RunExistsError(Exception):
    """A new run would append to a store that already holds snapshots (see ``if_exists``)."""


class _BackgroundWriter:
    """Runs store writes (and TensorBoard scalars) in submission order on one daemon thread.

    Appending a snapshot durably (file, fsync, manifest rewrite, fsync) costs milliseconds of
    disk latency; on this thread it overlaps with training. Failures are collected and handed
    back by :meth:`flush`.
    """

    def __init__(self) -> None:
        # Bounded: if the disk or a logger falls behind, captures wait rather than holding an
        # ever longer backlog of snapshots in memory.
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(_WRITER_BACKLOG)
        self._errors: list[Exception] = []
        self._thread = threading.Thread(
            target=self._run, name="lightning-manifold-store-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                task()
            except Exception as err:
                self._errors.append(err)
            finally:
                self._queue.task_done()

    def submit(self, task: Callable[[], None]) -> None:
        """Queue ``task``; it runs after every task submitted before it."""
        self._queue.put(task)

    def pop_errors(self) -> list[Exception]:
        """The failures of the tasks run so far (forgotten once returned); does not wait."""
        errors, self._errors = self._errors, []
        return errors

    def flush(self) -> list[Exception]:
        """Wait until every submitted task has run; return (and forget) their failures."""
        self._queue.join()
        return self.pop_errors()

    def close(self) -> list[Exception]:
        """Flush, then stop the thread."""
        errors = self.flush()
        self._queue.put(None)
        self._thread.join()
        return errors


class ManifoldCallback(Callback):
    r"""Capture the model's predictions on fixed probe sets during training and keep them.

    At every step chosen by the ``schedule`` (steps are optimizer updates so far,
    ``trainer.global_step``; step 0 is the initial model), the model is run in eval mode on each
    probe, the (N, C) log-probabilities are appended to a
    :class:`~lightning_manifold.store.TrajectoryStore` at ``<dirpath>/<run_name>/<probe>``, and
    scalars placing the model between ignorance P0 and truth P* (thesis ch. 2) are logged through
    every logger of the trainer with ``step=trainer.global_step``.

    Step triggers are evaluated in ``on_train_batch_start`` (once per optimizer step, also with
    gradient accumulation), the fit-start capture in ``on_train_start``, epoch triggers in
    ``on_train_epoch_end`` and the fit-end capture in ``on_train_end``.

    Capturing does not change training: every submodule's ``training`` flag, BatchNorm running
    statistics, the RNG states (Python, numpy, torch CPU and CUDA), gradients and the optimizer
    are left exactly as they were; the forward runs under ``torch.no_grad()`` and the trainer's
    precision context. Under DDP every rank predicts a fixed equal slice of each probe, the slices
    are gathered in order, and rank zero alone writes the stores and logs.

    Logged keys, per probe ``<probe>``:

    - ``manifold/<probe>/progress``: projection onto the ignorance->truth geodesic, in [0, 1]
      (eq. 2.2.4).
    - ``manifold/<probe>/distance_to_ignorance``: Bhattacharyya distance d_B(P, P0) (eq. 2.2.2).
    - ``manifold/<probe>/distance_to_truth``: d_B(P, P*), half the cross-entropy.
    - ``manifold/<probe>/distance_to_geodesic``: geodesic distance d_G (eq. 2.5.4) from P to its
      projection on the ignorance->truth geodesic.
    - ``manifold/<probe>/error``: top-1 error on the probe.
    - ``manifold/<probe>/cross_entropy``: mean negative log-likelihood on the probe.
    - ``manifold/<probe>/speed``: d_B to the previous valid snapshot divided by the number of
      optimizer steps between them (absent at the first capture).
    - ``manifold/<probe>/valid``: ``0``, logged alone for a snapshot whose outputs are NaN/inf
      (a diverged model); such snapshots are stored with ``valid=False``.

    The same values are kept in each store record's ``metrics``.

    Monitoring: at every capture the same keys (float tensors) are written into
    ``trainer.callback_metrics`` (not logged a second time), plus ``manifold/<probe>/valid``
    (1 or 0); a key undefined at that capture holds NaN. So ``EarlyStopping``,
    ``ModelCheckpoint(monitor=...)``, an LR scheduler's monitor or a pruner can watch them,
    and each sees the value of the latest capture at *its own* check: ``EarlyStopping`` at
    train epoch end (validation end when validation runs), ``ModelCheckpoint`` at its
    ``every_n_train_steps`` / epoch / validation end. Captures between two checks are not
    seen; for a fresh value at every check, capture at the same cadence (e.g.
    ``Schedule(every_n_epochs=1)`` with epoch-end checks). The values exist on rank zero only:
    under DDP use :class:`~lightning_manifold.decision.ManifoldEarlyStopping`, which
    broadcasts its decision.

    Args:
        probes: one :class:`~lightning_manifold.probe.ProbeSet` or a sequence of them with distinct
            names (typically a train probe and a val probe).
        schedule: when to capture; defaults to ``Schedule()`` (50 log-spaced steps plus the start
            and the end of training). Its ``max_steps`` is bound to
            ``trainer.estimated_stepping_batches`` when not given.
        dirpath: root directory of the stores. Defaults to ``<trainer.log_dir>/manifold``
            (``<trainer.default_root_dir>/manifold`` when the logger has no directory).
        run_name: sub-directory of ``dirpath`` for this run. Defaults to the first logger's
            version (``version_<n>`` for an int), else a timestamp.
        log_scalars: log the scalars above through ``trainer.loggers``.
        dtype: floating dtype of the predicted and stored log-probabilities
            (``torch.float32`` or ``torch.float64``).
        ignorance_warning: warn when the step-0 model has
            ``d_B(P, P0) > ignorance_warning * d_B(P0, P*)`` (an initial model far from ignorance,
            thesis fig. 2.12); ``None`` disables the check.
        if_exists: what a run that restores no checkpoint does when ``<dirpath>/<run_name>``
            already holds snapshots (e.g. a job killed before its first checkpoint and started
            again): ``"error"`` (default) raises and says what to pass; ``"overwrite"`` deletes
            the old snapshots (through the store, nothing else in the directory) and starts
            over; ``"resume"`` keeps them and captures only the scheduled steps after the last
            step every probe's store holds. A run resumed from a checkpoint
            (``trainer.fit(..., ckpt_path=...)``) always continues the checkpoint's stores,
            rolled back to the last capture before the checkpoint, whatever ``if_exists`` says.

    Raises:
        TypeError:
            If ``probes`` is not a ProbeSet or a sequence of them, or ``schedule`` is not a
            Schedule, or ``dirpath`` is not a path.
        ValueError:
            If there is no probe, a probe is empty, two probes share a name, ``dtype`` is not
            float32/float64, ``run_name`` is empty or contains a path separator,
            ``ignorance_warning`` is not positive, or ``if_exists`` is not one of its values. In
            ``setup``: if ``dirpath`` is not writable. When training starts: if a run that
            restores no checkpoint finds snapshots in its store and ``if_exists="error"``, the
            log-spaced schedule cannot be planned (unbounded training), a probe cannot be run
            through the model (any exception of its first forward, e.g. inputs of the wrong
            shape) or its class count differs from the model's output width.

    Example::

        >>> import torch
        >>> from lightning.pytorch import Trainer
        >>> from lightning_manifold import ManifoldCallback, ProbeSet, Schedule
        >>> x, y = torch.randn(64, 8), torch.arange(64) % 3
        >>> probe = ProbeSet.from_tensors(x, y, name="train")
        >>> manifold = ManifoldCallback(probe, schedule=Schedule(log_spaced=20))
        >>> trainer = Trainer(max_steps=200, callbacks=[manifold])

    Extending: the capture pipeline is :meth:`_capture` (every rank: predict and gather; rank
    zero: validity and metrics, returns one :class:`~lightning_manifold.snapshot.Snapshot` per
    probe) followed by :meth:`_handle_snapshot` per snapshot on rank zero (warnings, store,
    scalars). Further stages (online embedding, sinks) belong after the store in
    :meth:`_handle_snapshot`.
    """

    def __init__(
        self,
        probes: ProbeSet | Sequence[ProbeSet],
        *,
        schedule: Schedule | None = None,
        dirpath: str | os.PathLike[str] | None = None,
        run_name: str | None = None,
        log_scalars: bool = True,
        dtype: torch.dtype = torch.float32,
        ignorance_warning: float | None = 0.5,
        reference: ReferenceLike | Mapping[str, ReferenceLike] | None = None,
        online: bool = True,
        plots: bool = True,
        n_components: int = 3,
        residual_threshold: float | None = None,
        distance_threshold: float | None = None,
        render_budget: float = 0.02,
        save_reference: bool = False,
        meta: Mapping[str, Any] | None = None,
        durable: bool = True,
        if_exists: IfExists = "error",
    ) -> None:
        self._probes: list[ProbeSet] = _validate_probes(probes)
        self._references = _validate_references(reference, self.probe_names)
        if self._references and not online:
            raise ValueError("`reference` needs `online=True` (the reference is used online)")
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"`n_components` must be a positive integer, got {n_components!r}")
        for name, value in (
            ("residual_threshold", residual_threshold),
            ("distance_threshold", distance_threshold),
        ):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number or None, got {value!r}")
        if not (isinstance(render_budget, (int, float)) and 0 < render_budget <= 1):
            raise ValueError(f"`render_budget` must be in (0, 1], got {render_budget!r}")
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"`meta` must be a mapping or None, got {type(meta).__name__}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"`schedule` must be a Schedule or None, got {type(schedule).__name__}")
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(
                f"`dirpath` must be a str, a Path or None, got {type(dirpath).__name__}"
            )
        if run_name is not None:
            check_dir_name(run_name, "run_name")
        if if_exists not in get_args(IfExists):
            raise ValueError(
                f"`if_exists` must be one of {list(get_args(IfExists))}, got {if_exists!r}"
            )
        for name, flag in (
            ("log_scalars", log_scalars),
            ("online", online),
            ("plots", plots),
            ("save_reference", save_reference),
            ("durable", durable),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be a bool, got {type(flag).__name__}")
        if dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")
        if ignorance_warning is not None and (
            isinstance(ignorance_warning, bool)
            or not isinstance(ignorance_warning, (int, float))
            or not ignorance_warning > 0
        ):
            raise ValueError(
                f"`ignorance_warning` must be a positive number or None, got {ignorance_warning!r}"
            )

        self.schedule: Schedule = schedule if schedule is not None else Schedule()
        self.log_scalars = bool(log_scalars)
        self.dtype = dtype
        self.ignorance_warning = None if ignorance_warning is None else float(ignorance_warning)
        self._dirpath_arg: Path | None = None if dirpath is None else Path(dirpath)
        self._run_name_arg: str | None = run_name
        self.online = bool(online)
        self.plots = bool(plots)
        self.n_components = n_components
        self.residual_threshold = residual_threshold
        self.distance_threshold = distance_threshold
        self.render_budget = float(render_budget)
        self.save_reference = bool(save_reference)
        self.meta: dict[str, Any] = dict(meta or {})
        self.durable = bool(durable)
        self.if_exists: IfExists = if_exists

        # Per-fit state, (re)set in `setup`, resolved in `setup` / `on_train_start`.
        self.dirpath: Path | None = None
        self.run_name: str | None = None
        self._store_paths: dict[str, str] = {}
        self._stores: dict[str, TrajectoryStore] = {}
        self._writer: _BackgroundWriter | None = None  # rank zero, during training
        # probe -> (step, (N, C) sqrt-probs)
        self._previous: dict[str, tuple[int, Tensor | np.ndarray]] = {}
        self._shards: dict[str, ProbeSet] = {}
        self._validated: set[str] = set()
        self._restored: dict[str, Any] | None = None
        self._warned: set[str] = set()
        self._online: dict[str, OnlineManifold] = {}  # rank zero, during training
        self._class_rows: dict[str, F.ClassWeights] = {}  # rank zero, with `online`
        self._sinks: RenderWorker | None = None  # rank zero, during training
        self._monitored: dict[str, set[str]] = {}  # probe -> its keys in callback_metrics
        self.reference_paths: dict[str, str] = {}  # filled at fit end with `save_reference`

    # ------------------------------------------------------------------ public state

    @property
    def probes(self) -> list[ProbeSet]:
        """The probe sets, in the order given."""
        return list(self._probes)

    @property
    def probe_names(self) -> list[str]:
        """Names of the probe sets, in the order given."""
        return [p.name for p in self._probes]

    @property
    def store_paths(self) -> dict[str, str]:
        """``{probe name: store directory}`` of the current run (rank zero, from training start)."""
        return dict(self._store_paths)

    @property
    def stores(self) -> dict[str, TrajectoryStore]:
        """``{probe name: TrajectoryStore}`` being written (rank zero, from training start)."""
        return dict(self._stores)

    @property
    def manifolds(self) -> dict[str, OnlineManifold]:
        """``{probe name: OnlineManifold}`` placing each snapshot on the map (rank zero)."""
        return dict(self._online)

    @property
    def last_captured_step(self) -> int | None:
        """The ``global_step`` of the most recent capture, ``None`` before the first one."""
        return self.schedule.last_taken

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(probes=tuple(self.probe_names))

    @override
    def state_dict(self) -> dict[str, Any]:
        # A checkpoint must not claim captures that are not on disk yet.
        self._flush_writes()
        return {
            "schedule": self.schedule.state_dict(),
            "last_step": self.schedule.last_taken,
            "run_name": self.run_name,
            "dirpath": None if self.dirpath is None else str(self.dirpath),
            "store_paths": dict(self._store_paths),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied in `on_train_start`: Lightning restores callbacks after `setup`, and the
        # trainer's global step only after that.
        self._restored = dict(state_dict)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_fit_state()
        if self.log_scalars and not trainer.loggers:
            self._warn_once(
                "no-logger",
                "ManifoldCallback: the Trainer has no logger, so no scalars are logged (the "
                "trajectory is still stored). Attach a logger or pass `log_scalars=False`.",
            )
        dirpath = self._resolve_dirpath(trainer)  # collective: trainer.log_dir broadcasts
        run_name = self._resolve_run_name(trainer, dirpath)
        dirpath_str, run_name = trainer.strategy.broadcast((str(dirpath), run_name))
        self.dirpath, self.run_name = Path(dirpath_str), run_name
        error = self._check_output_dir() if trainer.is_global_zero else None
        error = trainer.strategy.broadcast(error)
        if error is not None:
            raise ValueError(error)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # New run or resumed run is decided here: the checkpoint's state is known only now.
        resumed = self._apply_restored_state()
        self._bind_schedule(trainer)
        error, stored_through = None, None
        if trainer.is_global_zero:
            try:
                stored_through = self._open_stores(trainer, resumed=resumed)
            except _RunExistsError as err:
                error = str(err)
            except Exception as err:  # every rank must reach the broadcast below
                error = f"ManifoldCallback: cannot open the trajectory stores: {err}"
            if error is None:
                try:
                    self._start_online(pl_module)
                except ValueError as err:  # a reference of another probe, a bad file
                    error = str(err)
            if error is None:
                self._start_sinks(trainer)
        error, stored_through = trainer.strategy.broadcast((error, stored_through))
        if error is not None:
            raise ValueError(error)
        if stored_through is not None:  # if_exists="resume": every rank skips the stored steps
            self.schedule.resume_after(stored_through)
        if trainer.is_global_zero:
            self._writer = _BackgroundWriter()
            for logger in trainer.loggers:  # its lazy writer made here, not on the writer thread
                if isinstance(logger, TensorBoardLogger):
                    _ = logger.experiment
        if self.schedule.last_taken is None and self.schedule.at_fit_start:
            self._maybe_capture(trainer, pl_module)  # also validates the probes
        else:
            self._check_probes(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self.schedule.last_taken and self.schedule.should_capture_step(step):
            self._maybe_capture(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.should_capture_epoch_end(trainer.current_epoch):
            self._maybe_capture(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.at_fit_end:
            self._maybe_capture(trainer, pl_module)
        self._flush_writes()
        if trainer.is_global_zero:
            self._render(trainer.global_step, force=True)  # the final picture, always
            if self.save_reference:
                self._save_references()
            self._close_sinks()
        # Every rank waits for rank zero's drawing: a rank that tears down its process group
        # early breaks the connection rank zero still holds.
        trainer.strategy.barrier("lightning-manifold-fit-end")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close_writer()  # keep every completed capture

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close_writer()
            self._close_sinks()
            self._shards.clear()
            self._previous.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = None  # a thread does not pickle (ddp_spawn pickles callbacks)
        state["_sinks"] = None  # holds loggers' writers; rebuilt at training start
        return state

    # ------------------------------------------------------------------ capture pipeline

    def _maybe_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Capture at ``trainer.global_step`` unless already done; never crash the training.

        The schedule's gate (``take``) makes each step captured at most once. Configuration
        errors found while running a probe for the first time are raised; any other failure is
        reported once with ``rank_zero_warn`` and the capture (or the one snapshot) is skipped.
        """
        step = trainer.global_step
        if not self.schedule.take(step):
            return
        if self._writer is not None:
            self._report_write_errors(self._writer.pop_errors())
        try:
            snapshots = self._capture(trainer, pl_module)
        except _FatalCaptureError as fatal:
            raise fatal.original from None
        except Exception as err:
            self._warn_once(
                "capture-error",
                f"ManifoldCallback: the capture at step {step} failed and was skipped "
                f"({type(err).__name__}: {err}). Training continues; later failures are "
                "skipped without a warning.",
            )
            return
        for snapshot in snapshots:
            try:
                self._handle_snapshot(trainer, snapshot)
            except Exception as err:
                self._warn_once(
                    "handle-error",
                    f"ManifoldCallback: storing or logging the snapshot of probe "
                    f"{snapshot.probe!r} at step {step} failed ({type(err).__name__}: {err}). "
                    "Training continues; later failures are skipped without a warning.",
                )
        if snapshots:
            self._render(step)

    def _capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Snapshot]:
        """Run every probe through ``pl_module`` at the current step.

        Every rank must call this (the probe slices are gathered with a collective).

        Returns:
            On rank zero one :class:`Snapshot` per probe, with (N, C) log-probabilities on the
            module's device, ``valid`` and, when valid, the metrics; ``[]`` on other ranks.
        """
        step, epoch, wall_time = trainer.global_step, trainer.current_epoch, time.time()
        snapshots: list[Snapshot] = []
        with self._no_trace(trainer, pl_module):
            outputs = [(p, self._predict(trainer, pl_module, p)) for p in self._probes]
        if not trainer.is_global_zero:
            return snapshots
        for probe, (log_probs, gathered) in outputs:  # (N, C) each; metrics outside autocast
            labels = probe.labels_on(log_probs.device)
            valid = bool(torch.isfinite(log_probs).all())
            metrics = {}
            if valid:
                metrics = self._metrics(probe.name, step, log_probs, labels)
                exact = probe.exact_metrics(gathered)  # a reduced vocabulary: full-V values
                if exact is not None:
                    metrics.update(zip(exact, torch.stack(list(exact.values())).tolist()))
            snapshots.append(
                Snapshot(
                    probe=probe.name,
                    step=step,
                    epoch=epoch,
                    log_probs=log_probs,
                    labels=labels,
                    wall_time=wall_time,
                    valid=valid,
                    metrics=metrics,
                )
            )
        return snapshots

    def _handle_snapshot(self, trainer: pl.Trainer, snapshot: Snapshot) -> None:
        """Rank zero: report faults, append the snapshot to its store, log its scalars.

        The store write runs on the background writer thread (in order); everything else here
        runs on the training thread.
        """
        self._report(snapshot)
        store = self._stores.get(snapshot.probe)
        if store is not None:
            append = functools.partial(store.append_snapshot, snapshot)
            if self._writer is not None:
                self._writer.submit(append)
            else:
                append()
        values = dict(snapshot.metrics) if snapshot.valid else {"valid": 0.0}
        if snapshot.valid:
            values = {**self._place_on_manifold(snapshot), **values}
        scalars = {f"manifold/{snapshot.probe}/{key}": v for key, v in values.items()}
        if self.log_scalars and trainer.loggers:
            for logger in trainer.loggers:
                log = functools.partial(_log_metrics, logger, scalars, snapshot.step)
                # TensorBoard's writer is thread-safe and blocks once its event queue is full:
                # off the training thread. Others (W&B, CSV, ...) make no such promise.
                if self._writer is not None and isinstance(logger, TensorBoardLogger):
                    self._writer.submit(log)
                else:
                    log()
        # Monitorable by other callbacks (not through `pl_module.log`: that would log again).
        # The probe's keys hold this capture's values only: a key of the previous capture
        # undefined now becomes NaN.
        monitored = {**scalars, f"manifold/{snapshot.probe}/valid": float(snapshot.valid)}
        for key in self._monitored.get(snapshot.probe, set()) - monitored.keys():
            trainer.callback_metrics[key] = torch.tensor(math.nan)
        host = np.array([float(v) for v in monitored.values()], dtype=np.float32)
        as_tensors = torch.from_numpy(host).unbind()  # one tensor for all keys
        trainer.callback_metrics.update(zip(monitored, as_tensors))
        self._monitored[snapshot.probe] = set(monitored)

    def _place_on_manifold(self, snapshot: Snapshot) -> dict[str, float]:
        """Rank zero: the online module's scalars for a valid snapshot (coordinates, residual,
        reference distance, ahead/behind, per-class progress); ``{}`` if it fails (warned once:
        the snapshot is already stored and its basic scalars still get logged)."""
        online = self._online.get(snapshot.probe)
        if online is None:
            return {}
        try:
            result = online.update(snapshot, trusted=True)  # the callback's own, checked data
        except Exception as err:
            self._warn_once(
                f"online-error-{snapshot.probe}",
                f"ManifoldCallback: placing the snapshot of probe {snapshot.probe!r} at step "
                f"{snapshot.step} on the manifold failed ({type(err).__name__}: {err}); it is "
                "stored and its basic scalars are logged. Later failures are not reported.",
            )
            return {}
        return {} if result is None else result.scalars()

    def _start_online(self, pl_module: pl.LightningModule) -> None:
        """Rank zero: one OnlineManifold per probe (with its reference, if any), caught up with
        the snapshots already stored when resuming.

        Raises:
            ValueError: a reference recorded on another probe (different N, C or labels).
        """
        self._online = {}
        self._class_rows = {}
        if not self.online:
            return
        for probe in self._probes:
            reference = self._references.get(probe.name)
            if reference is not None and not isinstance(reference, ReferenceEmbedding):
                reference = ReferenceEmbedding.load(reference)
            # the per-class sample layout, reused by every capture's per-class progress
            if probe.class_progress:
                labels = probe.labels_on(pl_module.device)
                self._class_rows[probe.name] = F.class_weights(labels, probe.num_classes)
            # the live 4-point frame spans 3 dimensions (thesis §2.4)
            n_components = self.n_components if reference is not None else min(3, self.n_components)
            online = OnlineManifold(
                probe.labels,
                probe.num_classes,
                reference=reference,
                n_components=n_components,
                residual_threshold=self.residual_threshold,
                distance_threshold=self.distance_threshold,
                probe=probe.name,
                device=pl_module.device,
                class_progress=probe.class_progress,
            )
            store = self._stores.get(probe.name)
            if store is not None and len(store):
                online.replay(store)
            self._online[probe.name] = online

    def _start_sinks(self, trainer: pl.Trainer) -> None:
        """Rank zero: figure sinks chosen from ``trainer.loggers`` (files for none/CSV), fed by a
        drawing thread within ``render_budget`` of the training time."""
        self._sinks = None
        if not (self.plots and self._online):
            return
        assert self.dirpath is not None
        assert self.run_name is not None
        try:
            sinks = sinks_for_loggers(trainer.loggers, self.dirpath / self.run_name)
        except Exception as err:
            self._warn_once("sinks", f"ManifoldCallback: no figures will be drawn ({err}).")
            return
        self._sinks = RenderWorker(sinks, budget=self.render_budget)

    def _render(self, step: int, *, force: bool = False) -> None:
        """Rank zero: hand copies of the probes' manifold frames to the drawing thread (the final
        picture with ``force``); never waits for drawing.

        Also runs the logger calls the drawing thread prepared for this thread (W&B). Failures
        are warned once and never reach training.
        """
        worker = self._sinks
        if worker is None or not self._online:
            return
        worker.deliver()
        run = self.run_name or ""
        frames = []
        for name, online in self._online.items():
            if not len(online):
                continue
            try:
                frames.append(online.frame(title=f"{run} · {name}".strip(" ·")))
            except Exception as err:
                self._warn_once(
                    f"frame-{name}",
                    f"ManifoldCallback: building the manifold frame of probe {name!r} failed "
                    f"({type(err).__name__}: {err}); no figure for it, training continues.",
                )
        if frames:
            worker.submit(frames, step, final=force)

    def _close_sinks(self) -> None:
        """Rank zero: wait (bounded) for the drawing thread to finish the final picture, run its
        last logger calls here and close the sinks."""
        worker, self._sinks = self._sinks, None
        if worker is None:
            return
        timeout = _FINAL_PICTURE_TIMEOUT_S
        if not worker.close(timeout=timeout):
            self._warn_once(
                "render-abandoned",
                f"ManifoldCallback: the final manifold figures were not finished within "
                f"{timeout:.0f} s and were abandoned so that `fit` can return; the trajectory "
                "is stored, draw them with `lightning-manifold embed`.",
            )

    def _save_references(self) -> None:
        """Rank zero, fit end: fit a ReferenceEmbedding on each probe's finished trajectory and
        save it as ``<store>/reference.npz`` (this run becomes the baseline of the next)."""
        for name, store in self._stores.items():
            path = Path(self._store_paths[name]) / "reference.npz"
            try:
                store.refresh()
                ReferenceEmbedding.from_store(store).save(path)
            except Exception as err:
                self._warn_once(
                    f"reference-{name}",
                    f"ManifoldCallback: building the reference of probe {name!r} failed "
                    f"({type(err).__name__}: {err}).",
                )
                continue
            self.reference_paths[name] = str(path)

    def _predict(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet
    ) -> tuple[Tensor, Tensor]:
        """(N, C) log-probabilities of ``pl_module`` on ``probe``, in probe order, on every rank,
        and the gathered capture rows they came from.

        Under DDP each rank captures its fixed slice and the slices are gathered in rank order
        (a collective: every rank must call this); ``probe.finalize`` then turns the whole
        probe's rows into log-probabilities (the rows themselves for a plain probe).

        Raises:
            _FatalCaptureError: the first time a probe runs, its outputs cannot be finalized or
                its class count differs from the model's output width.
        """
        local = self._predict_local(trainer, pl_module, probe)  # (ceil(N / W), ...)
        gathered = gather_probe(probe, local, pl_module.all_gather, trainer.world_size)
        if probe.name in self._validated:
            return probe.finalize(gathered), gathered  # e.g. imprinting needs the whole probe
        try:
            log_probs = probe.finalize(gathered)
        except (ValueError, TypeError) as err:
            raise _FatalCaptureError(_with_probe_name(err, probe.name)) from err
        try:
            probe.check_num_classes(log_probs.shape[1])
        except ValueError as err:
            raise _FatalCaptureError(err) from err
        self._validated.add(probe.name)
        return log_probs, gathered

    @contextmanager
    def _no_trace(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
        """Run forward passes that leave no trace on training.

        Every submodule's ``training`` flag and the global RNG states (Python, numpy, torch CPU
        and CUDA) are restored on exit, no autograd graph is built, and the trainer's precision
        context (autocast) applies. In eval mode BatchNorm leaves its running statistics alone and
        Dropout draws no random numbers, but user forward hooks might: hence the RNG states.
        """
        with (
            preserved_rng_state(),
            torch.no_grad(),
            evaluation_mode(pl_module),
            trainer.precision_plugin.forward_context(),
        ):
            yield

    def _predict_local(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet
    ) -> Tensor:
        """``predict`` outputs ((n, C) log-probabilities for a plain probe) on this rank's slice
        of ``probe``; call inside ``_no_trace``.

        ``pl_module`` itself is called, never the DDP wrapper, so no gradient-synchronisation
        state changes.

        Raises:
            _FatalCaptureError: the probe cannot be run (any exception) the first time it is: a
                configuration error, such as inputs of a shape the model does not take.
        """
        local_probe = self._local_probe(probe, trainer.global_rank, trainer.world_size)
        try:
            local = local_probe.capture(pl_module, dtype=self.dtype)
        except Exception as err:
            if probe.name in self._validated:
                raise  # a later failure: the capture is skipped with a warning
            raise _FatalCaptureError(_first_forward_error(err, probe)) from err
        return local

    def _local_probe(self, probe: ProbeSet, rank: int, world_size: int) -> ProbeSet:
        """This rank's fixed equal slice of ``probe`` (the probe itself in a single process)."""
        if world_size <= 1:
            return probe
        if probe.name not in self._shards:
            self._shards[probe.name] = probe.shard(rank, world_size)
        return self._shards[probe.name]

    def _metrics(self, name: str, step: int, log_probs: Tensor, labels: Tensor) -> dict[str, float]:
        """Scalars of one valid snapshot (keys: :data:`METRIC_NAMES`, ``speed`` when defined;
        with ``online`` also ``progress_class_<c>`` for each class present in the probe, which
        the online module reuses).

        One pass over the log-probabilities and one transfer to the host: the data is the
        callback's own (finite, (N, C), labels on its device), so it is not validated again.

        Args:
            name: probe name (for the previous snapshot used by ``speed``).
            step: the snapshot's optimizer step.
            log_probs: (N, C) finite log-probabilities.
            labels: (N,) int64 labels on the same device.
        """
        classes = self._class_rows.get(name)
        if classes is not None and classes.columns.device != log_probs.device:
            classes = self._class_rows[name] = F.class_weights(labels, classes.num_classes)
        g = F.prediction_geometry(log_probs, labels, classes=classes, check=False)
        values: dict[str, Tensor] = {
            "progress": g.progress,
            "distance_to_ignorance": g.distance_to_ignorance,
            "distance_to_truth": g.distance_to_truth,
            "distance_to_geodesic": g.distance_to_geodesic,
            "error": g.error,
            "cross_entropy": g.cross_entropy,
        }
        sqrt_probs = _sqrt_probs(log_probs)
        previous = self._previous.get(name)
        if previous is not None and step > previous[0]:
            d_b = _few_pair_distances(previous[1][None], sqrt_probs[None])  # eq. 2.2.2, (1, 1)
            values["speed"] = torch.as_tensor(d_b / (step - previous[0]))
        self._previous[name] = (step, sqrt_probs)
        stacked = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in values.values()])
        keys = list(values)
        if classes is not None:  # per-class progress of the classes present (thesis fig. 3.2a)
            per_class = g.per_class_progress[classes.classes]
            stacked = torch.cat([stacked, per_class])
            keys += [f"progress_class_{c}" for c in classes.present]
        return dict(zip(keys, stacked.tolist()))  # one transfer for all scalars

    def _check_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate every probe with one forward of its local slice, without capturing.

        This is each probe's first forward of the fit, so any failure is a configuration error
        and raises (later failures are left to the captures, which never crash training).
        """
        for probe in self._probes:
            try:
                with self._no_trace(trainer, pl_module):
                    self._predict(trainer, pl_module, probe)
            except _FatalCaptureError as fatal:
                raise fatal.original from None

    def _report(self, snapshot: Snapshot) -> None:
        """Rank zero: warn (once) about a diverged model or a step-0 model far from ignorance."""
        if not snapshot.valid:
            self._warn_once(
                f"invalid-{snapshot.probe}",
                f"ManifoldCallback: the model's outputs on probe {snapshot.probe!r} contain NaN or "
                f"inf at step {snapshot.step} (diverged?). The snapshot is stored as invalid and "
                "training continues; later invalid snapshots are recorded without a warning.",
            )
            return
        if snapshot.step != 0 or self.ignorance_warning is None:
            return
        n, c = snapshot.log_probs.shape
        if c < 2:
            return
        uniform = F.ignorance(n, c, dtype=torch.float64, device=snapshot.labels.device)
        reference = float(F.distance_to_truth(uniform, snapshot.labels))  # log(C) / 2
        distance = snapshot.metrics.get("distance_to_ignorance", math.nan)
        if distance > self.ignorance_warning * reference:
            self._warn_once(
                f"far-{snapshot.probe}",
                f"ManifoldCallback: at step 0 the model on probe {snapshot.probe!r} is far from "
                f"ignorance: d_B(P, P0) = {distance:.3g}, {distance / reference:.0%} of "
                f"d_B(P0, P*) = {reference:.3g}. Trajectories are comparable when they start "
                "near ignorance. A common cause is BatchNorm running statistics initialised at "
                "mean 0 / variance 1 (thesis fig. 2.12); fix it by running a few forward passes "
                "in train mode on training batches before training, e.g. "
                "`model.train(); with torch.no_grad(): [model(x) for x, _ in batches]`.",
            )

    # ------------------------------------------------------------------ run bookkeeping

    def _reset_fit_state(self) -> None:
        self._close_writer()
        self.dirpath = None
        self.run_name = None
        self._store_paths = {}
        self._stores = {}
        self._previous = {}
        self._shards = {}
        self._validated = set()
        self._restored = None
        self.schedule.reset()

    def _resolve_dirpath(self, trainer: pl.Trainer) -> Path:
        """``dirpath``, else ``<trainer.log_dir or default_root_dir>/manifold``. Collective."""
        if self._dirpath_arg is not None:
            return self._dirpath_arg.expanduser()
        log_dir = trainer.log_dir  # broadcasts: every rank must call it
        return Path(log_dir if log_dir is not None else trainer.default_root_dir) / "manifold"

    def _resolve_run_name(self, trainer: pl.Trainer, dirpath: Path) -> str:
        """``run_name``, else the first logger's version, else a timestamp new in ``dirpath``."""
        if self._run_name_arg is not None:
            return self._run_name_arg
        if trainer.loggers:
            version = trainer.loggers[0].version
            if isinstance(version, int):
                return f"version_{version}"
            if isinstance(version, str) and version and not any(s in version for s in "/\\"):
                return version
        base = time.strftime("%Y%m%d-%H%M%S")
        name, i = base, 1
        while (dirpath / name).exists():
            name, i = f"{base}-{i}", i + 1
        return name

    def _check_output_dir(self) -> str | None:
        """Rank zero: ``None`` if ``dirpath`` can be written, else a one-line error message.

        Whether the run is new or resumed is decided in ``on_train_start``: Lightning restores
        the checkpoint after ``setup``. Never raises: the other ranks wait for the answer.
        """
        assert self.dirpath is not None
        assert self.run_name is not None
        try:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.dirpath, prefix=".write-test-"):
                pass
        except OSError as err:
            return (
                f"`dirpath` must be a writable directory, got '{self.dirpath}' "
                f"({type(err).__name__}: {err.strerror or err})"
            )
        return None

    def _bind_schedule(self, trainer: pl.Trainer) -> None:
        """Bind the schedule's horizon to the planned number of optimizer steps (unless given)."""
        if self.schedule.log_spaced is None:
            return
        self.schedule.bind(trainer.estimated_stepping_batches)

    def _apply_restored_state(self) -> bool:
        """On resume: adopt the checkpoint's schedule (and gate), run name and store paths.

        Returns:
            Whether a checkpoint restored this callback's state (a resumed run).
        """
        state, self._restored = self._restored, None
        if not state:
            return False
        if isinstance(state.get("schedule"), dict):
            self.schedule.load_state_dict(state["schedule"])
        elif state.get("last_step") is not None:
            self.schedule.take(int(state["last_step"]))
        if state.get("run_name"):
            if self._run_name_arg is not None and self._run_name_arg != state["run_name"]:
                self._warn_once(
                    "resume-run-name",
                    f"ManifoldCallback: resuming the checkpoint's run {state['run_name']!r}; "
                    f"`run_name` = {self._run_name_arg!r} is ignored.",
                )
            self.run_name = str(state["run_name"])
        if state.get("dirpath"):
            self.dirpath = Path(state["dirpath"])
        paths = state.get("store_paths") or {}
        self._store_paths = {k: str(v) for k, v in paths.items() if k in self.probe_names}
        return True

    def _open_stores(self, trainer: pl.Trainer, *, resumed: bool) -> int | None:
        """Rank zero: open one store per probe, ready to append.

        A resumed run continues the checkpoint's stores (new ones at
        ``<dirpath>/<run_name>/<probe>`` for probes the checkpoint lacks), rolled back to the
        last step captured before the checkpoint. A new run creates its stores there and
        treats snapshots already in them as ``if_exists`` says.

        Returns:
            With ``if_exists="resume"``, the last step every store holds (the schedule must skip
            the steps up to it); else ``None``.

        Raises:
            _RunExistsError: a new run found snapshots and ``if_exists="error"``.
        """
        assert self.dirpath is not None
        assert self.run_name is not None
        paths: dict[str, Path] = {}
        for probe in self._probes:
            checkpointed = self._store_paths.get(probe.name) if resumed else None
            if checkpointed is not None and not (Path(checkpointed) / "manifest.json").exists():
                self._warn_once(
                    f"missing-store-{probe.name}",
                    f"ManifoldCallback: the checkpoint's store for probe {probe.name!r} at "
                    f"'{checkpointed}' is missing; a new store is started.",
                )
                checkpointed = None
            paths[probe.name] = (
                Path(checkpointed) if checkpointed else self.dirpath / self.run_name / probe.name
            )
        if not resumed:
            self._check_existing_run(paths)
        stores = {}
        for probe in self._probes:
            path = paths[probe.name]
            exists = (path / "manifest.json").exists()
            stores[probe.name] = TrajectoryStore.create(  # validates before anything is dropped
                path,
                labels=probe.labels,
                num_classes=probe.num_classes,
                probe_name=probe.name,
                run_name=TrajectoryStore(path).run_name if resumed and exists else self.run_name,
                meta={**self._store_meta(trainer), **probe.meta},
                dtype=self.dtype,
                durable=self.durable,
            )
        if resumed:
            last = self.schedule.last_taken
            keep = -1 if last is None else last  # snapshots after the checkpoint are redone
        elif self.if_exists == "resume":
            # A capture killed half-way leaves some probes one step ahead: redo that step.
            keep = min((int(s.steps[-1]) if len(s) else -1) for s in stores.values())
        else:
            keep = -1  # a new run, or if_exists="overwrite"
        for name, store in stores.items():
            store.rollback_to(keep)
            self._previous_from_store(name, store, trainer)
            self._stores[name] = store
            self._store_paths[name] = str(paths[name])
        return keep if not resumed and self.if_exists == "resume" and keep >= 0 else None

    def _check_existing_run(self, paths: Mapping[str, Path]) -> None:
        """A run that restored no checkpoint: raise unless ``if_exists`` allows the snapshots
        already stored at ``paths`` (``{probe name: store directory}``).

        Raises:
            _RunExistsError: snapshots exist and ``if_exists="error"``; or ``"resume"`` while
                some probe has no store at all (continuing would drop the others' snapshots).
        """
        held: dict[str, TrajectoryStore] = {}
        missing = []
        for name, path in paths.items():
            if not (path / "manifest.json").exists():
                missing.append(name)
                continue
            store = TrajectoryStore(path)
            if len(store):
                held[name] = store
        if not held or self.if_exists == "overwrite":
            return
        store = next(iter(held.values()))
        steps = store.steps
        if self.if_exists == "resume":
            if missing:
                raise _RunExistsError(
                    f"`if_exists`='resume' needs a store for every probe, but run "
                    f"{self.run_name!r} has none for {missing} while '{store.path}' holds "
                    f'{len(store)} snapshots; pass if_exists="overwrite" or another run_name'
                )
            return
        raise _RunExistsError(
            f"`run_name` must name a new run, got {self.run_name!r} whose store '{store.path}' "
            f"already holds {len(store)} snapshots (steps {int(steps[0])} to {int(steps[-1])}) "
            "and no checkpoint restored this callback's state. To continue it, pass "
            '`trainer.fit(..., ckpt_path=...)` (e.g. ckpt_path="last") or `if_exists="resume"` '
            "(keeps the snapshots, captures the later steps); to start it over, pass "
            '`if_exists="overwrite"`; or choose another run_name or dirpath'
        )

    def _previous_from_store(self, name: str, store: TrajectoryStore, trainer: pl.Trainer) -> None:
        """Remember the last valid stored snapshot, so ``speed`` continues across a resume."""
        valid = store.valid
        if not valid.any():
            return
        log_probs = store.log_probs(valid_only=True)[-1]  # (N, C)
        step = int(store.steps[valid][-1])
        device = trainer.strategy.root_device
        log_probs_t = torch.tensor(log_probs, dtype=self.dtype, device=device)
        self._previous[name] = (step, _sqrt_probs(log_probs_t))

    def _store_meta(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {
            **self.meta,
            "schedule": self.schedule.state_dict(),
            "world_size": trainer.world_size,
            "lightning_version": pl.__version__,
            "torch_version": torch.__version__,
        }

    def _flush_writes(self) -> None:
        """Wait for the pending store writes (rank zero) and report their failures."""
        if self._writer is not None:
            self._report_write_errors(self._writer.flush())

    def _close_writer(self) -> None:
        """Finish the pending store writes and stop the writer thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._report_write_errors(writer.close())

    def _report_write_errors(self, errors: list[Exception]) -> None:
        for err in errors:
            if isinstance(err, _LoggerError):
                self._warn_once(
                    "logger-error",
                    f"ManifoldCallback: logging the scalars failed ({err}). Training "
                    "continues; later failures are skipped without a warning.",
                )
                continue
            self._warn_once(
                "write-error",
                f"ManifoldCallback: writing a snapshot to the store failed "
                f"({type(err).__name__}: {err}). Training continues; later failures are "
                "skipped without a warning.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=RuntimeWarning)


def _with_probe_name(err: Exception, name: str) -> Exception:
    """The same kind of error with the probe's name in front of its message."""
    try:
        return type(err)(f"probe {name!r}: {err}")
    except Exception:  # an exception type with another constructor signature
        return ValueError(f"probe {name!r}: {type(err).__name__}: {err}")


def _first_forward_error(err: Exception, probe: ProbeSet) -> Exception:
    """The error to raise when a probe's first forward at train start fails.

    The probe's own checks (``ValueError`` / ``TypeError`` about the outputs) keep their type
    and message; anything the model raised (a ``RuntimeError`` from a shape mismatch, ...)
    becomes a ``ValueError`` naming the probe, the exception and the probe's input shapes.
    """
    if isinstance(err, (ValueError, TypeError)):
        return _with_probe_name(err, probe.name)
    shapes = ", ".join(
        f"{where} {tuple(t.shape)}"
        for where, t in _tensor_leaves(probe.inputs, f"probe {probe.name!r} inputs")
    )
    return ValueError(
        f"probe {probe.name!r} cannot be run through the model at train start "
        f"({type(err).__name__}: {err}). The probe's inputs probably do not fit the model: "
        f"{shapes}; give the probe inputs of the shape and dtype the model's forward takes, "
        "or pass `forward=` / `transform=` to the ProbeSet"
    )


def _validate_references(
    reference: ReferenceLike | Mapping[str, ReferenceLike] | None, names: list[str]
) -> dict[str, ReferenceLike]:
    """``{probe name: reference}``. A single reference goes to the probe of its
    ``probe_name`` if there is one, else to the first probe."""
    if reference is None:
        return {}
    if isinstance(reference, Mapping):
        unknown = sorted(set(reference) - set(names))
        if unknown:
            raise ValueError(f"`reference` keys must be probe names {names}, got unknown {unknown}")
        refs = dict(reference)
    else:
        target = getattr(reference, "probe_name", "")
        refs = {target if target in names else names[0]: reference}
    for name, ref in refs.items():
        if not isinstance(ref, (ReferenceEmbedding, str, os.PathLike)):
            raise TypeError(
                f"`reference` for probe {name!r} must be a ReferenceEmbedding or a path, got "
                f"{type(ref).__name__}"
            )
        if not isinstance(ref, ReferenceEmbedding) and not Path(ref).is_file():
            raise ValueError(
                f"`reference` for probe {name!r} must be an existing file, got '{ref}'"
            )
    return refs


def _validate_probes(probes: ProbeSet | Sequence[ProbeSet]) -> list[ProbeSet]:
    """A non-empty list of non-empty ProbeSets with distinct names, or a one-line error."""
    if isinstance(probes, ProbeSet):
        probes = [probes]
    elif not isinstance(probes, Sequence) or isinstance(probes, (str, bytes)):
        raise TypeError(
            f"`probes` must be a ProbeSet or a sequence of ProbeSets, got {type(probes).__name__}"
        )
    probes = list(probes)
    if not probes:
        raise ValueError("`probes` must contain at least one ProbeSet, got an empty sequence")
    for i, probe in enumerate(probes):
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"`probes[{i}]` must be a ProbeSet, got {type(probe).__name__}")
        if probe.num_samples == 0:
            raise ValueError(f"`probes[{i}]` ({probe.name!r}) must not be empty, got 0 samples")
    names = [p.name for p in probes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`probes` must have distinct names, got duplicates {duplicates}")
    return probes
