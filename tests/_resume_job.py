"""A tiny training job for the resume tests, run as a real process that may die by SIGKILL.

``python tests/_resume_job.py OUT [--kill WHERE:STEP] [--ckpt-path last|PATH] ...`` trains a
small MLP for :data:`MAX_STEPS` optimizer steps (4 per epoch, data in a fixed order) with a
``ModelCheckpoint`` (every 4 steps, ``save_last=True``) and a :class:`ManifoldCallback`
capturing two probes at every step, then writes the final weights to ``OUT/weights.npz``.
The stores are ``OUT/manifold/run/<probe>``. ``--kill`` makes the process send SIGKILL to itself:

- ``batch:S``: at the start of the batch of step S, after the capture of step S was queued (the
  store writer thread may be writing it);
- ``predict:S``: inside the capture of step S, while the second probe runs through the model;
- ``write:S``: in the store writer, after probe ``train``'s snapshot of step S was stored and
  before probe ``val``'s.

The tests import :func:`run_job` to run the same job in-process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader, probe_blobs
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule
from lightning_manifold.store import TrajectoryStore

MAX_STEPS = 12
STEPS_PER_EPOCH = 4
PROBES = ("train", "val")


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtBatch(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            _sigkill()


class _Slow(Callback):
    """Sleeps after each batch, so that the parent process can kill the job at a moment of its
    choosing."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


def run_job(
    out: Path,
    *,
    kill: str | None = None,
    ckpt_path: str | None = None,
    ckpt_every_steps: int = STEPS_PER_EPOCH,
    if_exists: str = "error",
    slow: float = 0.0,
) -> nn.Module:
    """Train the job's model into ``out``; returns the trained model.

    Args:
        out: run directory (checkpoints in ``out/ckpt``, stores in ``out/manifold/run``).
        kill: ``"batch:S"``, ``"predict:S"`` or ``"write:S"`` (see the module docstring).
        ckpt_path: passed to ``trainer.fit`` (``"last"``, a file, or ``None``).
        ckpt_every_steps: checkpoint every this many steps. The default saves after the last
            batch of each epoch, from where Lightning 2.6 resumes reproducibly (a checkpoint of
            ``every_n_epochs=1``, saved in ``on_train_epoch_end``, makes it replay one batch).
        if_exists: the callback's ``if_exists``.
        slow: seconds to sleep after each batch.
    """
    where, _, at = (kill or "none:-1").partition(":")
    kill_step = int(at)
    pl.seed_everything(0, verbose=False)
    x, y = make_blobs(4 * STEPS_PER_EPOCH, 8, 3, seed=0)

    def val_forward(module: Any, batch: Any) -> Any:
        if where == "predict" and module.trainer.global_step == kill_step:
            _sigkill()  # the capture has run probe "train" and is running this one
        return module(batch)

    probes = [
        ProbeSet.from_tensors(*probe_blobs(24, 8, 3, offset=1), name="train"),
        ProbeSet.from_tensors(*probe_blobs(24, 8, 3, offset=2), name="val", forward=val_forward),
    ]
    if where == "write":
        append = TrajectoryStore.append_snapshot

        def append_or_die(store: TrajectoryStore, snapshot: Any) -> int:
            if snapshot.probe == "val" and snapshot.step == kill_step:
                _sigkill()
            return append(store, snapshot)

        TrajectoryStore.append_snapshot = append_or_die  # type: ignore[method-assign]
    manifold = ManifoldCallback(
        probes,
        schedule=Schedule(log_spaced=None, every_n_steps=1),
        dirpath=out / "manifold",
        run_name="run",
        online=False,  # the online map is not what these tests are about, and costs time
        plots=False,
        if_exists=if_exists,  # type: ignore[arg-type]
    )
    checkpoint = ModelCheckpoint(
        dirpath=out / "ckpt", every_n_train_steps=ckpt_every_steps, save_last=True, save_top_k=-1
    )
    callbacks: list[Callback] = [manifold, checkpoint]
    if where == "batch":
        callbacks.append(_KillAtBatch(kill_step))
    if slow:
        callbacks.append(_Slow(slow))
    trainer = pl.Trainer(
        **fast_trainer_kwargs(max_steps=MAX_STEPS, enable_checkpointing=True),
        default_root_dir=out,
        callbacks=callbacks,
    )
    model = TinyClassifier(momentum=0.9)
    trainer.fit(model, make_loader(x, y, batch_size=4, shuffle=False), ckpt_path=ckpt_path)
    return model


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill")
    parser.add_argument("--ckpt-path")
    parser.add_argument("--ckpt-every-steps", type=int, default=STEPS_PER_EPOCH)
    parser.add_argument("--if-exists", default="error")
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args(argv)
    model = run_job(
        args.out,
        kill=args.kill,
        ckpt_path=args.ckpt_path,
        ckpt_every_steps=args.ckpt_every_steps,
        if_exists=args.if_exists,
        slow=args.slow,
    )
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(args.out / "weights.npz", **weights)


if __name__ == "__main__":
    main(sys.argv[1:])
