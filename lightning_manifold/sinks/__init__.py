"""Where manifold frames go: TensorBoard, Weights & Biases, files -- chosen from the loggers.

Typical use by the callback (rank zero only)::

    worker = RenderWorker(sinks_for_loggers(trainer.loggers, run_dir), budget=0.02)
    worker.submit([online.frame()], step=trainer.global_step)  # copies the frame, never waits
    worker.deliver()                                           # W&B calls, on this thread
    worker.submit([online.frame()], step=trainer.global_step, final=True)
    worker.close(timeout=20.0)                                 # bounded wait at the end

A synchronous :class:`SinkGroup` (with a per-capture :class:`RenderThrottle`) draws on the
calling thread instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_warn

from lightning_manifold.sinks.base import (
    FrameSource,
    Renders,
    RenderThrottle,
    Sink,
    SinkGroup,
    coordinate_table,
    frozen_copy,
)
from lightning_manifold.sinks.files import FilesSink
from lightning_manifold.sinks.tensorboard import TensorBoardSink
from lightning_manifold.sinks.wandb import WandbSink
from lightning_manifold.sinks.worker import RenderWorker

__all__ = [
    "FilesSink",
    "FrameSource",
    "RenderThrottle",
    "RenderWorker",
    "Renders",
    "Sink",
    "SinkGroup",
    "TensorBoardSink",
    "WandbSink",
    "coordinate_table",
    "frozen_copy",
    "sinks_for_loggers",
]


def _is_a(obj: Any, class_name: str) -> bool:
    """isinstance by class name: loggers of ``lightning`` and ``pytorch_lightning`` both match."""
    return any(cls.__name__ == class_name for cls in type(obj).__mro__)


def sinks_for_loggers(
    loggers: Iterable[Any] | None,
    dirpath: str | os.PathLike[str] | None = None,
    *,
    files: bool | None = None,
    tensorboard_figures: tuple[str, ...] | None = None,
) -> list[Sink]:
    """Choose sinks from ``trainer.loggers``.

    ``TensorBoardLogger`` -> :class:`TensorBoardSink`; ``WandbLogger`` -> :class:`WandbSink`;
    ``CSVLogger`` or no logger at all -> :class:`FilesSink` writing into ``dirpath``. Several
    loggers give several sinks. A sink whose optional package is missing is skipped with one
    warning naming the extra to install (never an ImportError).

    Args:
        loggers: ``trainer.loggers`` (``None`` or empty: no logger).
        dirpath: directory for the files (e.g. the run directory of the trajectory store);
            defaults to the CSVLogger's ``log_dir``.
        files: force files on (``True``) or off (``False``); ``None`` decides as above.
        tensorboard_figures: figure names for TensorBoard (default: the sink's default).

    Returns:
        The sinks, in logger order, files last.

    Raises:
        ValueError: if files are wanted but there is neither ``dirpath`` nor a CSVLogger.
    """
    loggers = [lg for lg in (loggers or []) if lg is not None]
    sinks: list[Sink] = []
    csv_dir: str | None = None
    for lg in loggers:
        try:
            if _is_a(lg, "TensorBoardLogger"):
                kw = {} if tensorboard_figures is None else {"figures": tensorboard_figures}
                sinks.append(TensorBoardSink(lg, **kw))
            elif _is_a(lg, "WandbLogger"):
                sinks.append(WandbSink(lg))
            elif _is_a(lg, "CSVLogger") and csv_dir is None:
                csv_dir = str(lg.log_dir)
        except ImportError as err:
            rank_zero_warn(f"lightning-manifold: no manifold plots for {type(lg).__name__}: {err}")
    want_files = files if files is not None else (csv_dir is not None or not loggers)
    if want_files:
        target = dirpath if dirpath is not None else csv_dir
        if target is None:
            raise ValueError(
                "`dirpath` must be given to write manifold files (no CSVLogger to take it from), "
                "got None"
            )
        sinks.append(FilesSink(target))
    return sinks
