"""Wall-time overhead of ManifoldCallback at its default schedule.

Trains the same seeded MLP on generated data with and without the callback, alternating the two
in one process (A B A B ...), and prints the ratio with/without for each pair and the median.
Target: a median ratio <= 1.03. The default run takes about a minute per training on a laptop
CPU; ``--quick`` is a few-second smoke run.

Usage::

    python benchmarks/overhead.py            # full measurement (several minutes)
    python benchmarks/overhead.py --quick    # smoke run

The callback runs with ``Schedule()`` (50 log-spaced steps plus fit start and end) on a train
probe and a val probe; both runs log to a ``CSVLogger`` so logging costs are compared like for
like. The time spent inside the captures is also reported: ``capture / baseline`` is a
lower-noise estimate of the same overhead. Figures are drawn on a worker thread; for the default
variant the script also prints how many distinct steps were drawn, the worker's CPU time (the
render budget counts it), the training thread's time spent copying frames (``submit``) and in
the render hook (building the frames from the online module, then copying them), and how long
the end of ``fit`` waited for the final picture. The share of the probes' forward passes in the
time inside captures is printed too: it is the part a capture cannot avoid.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold.callback import ManifoldCallback
from lightning_manifold.probe import ProbeSet


@dataclass(frozen=True)
class Config:
    """Size of the benchmark task."""

    n_train: int = 40_000
    n_val: int = 4_000
    dim: int = 64
    classes: int = 10
    hidden: int = 512
    batch_size: int = 128
    max_steps: int = 6_000
    probe_size: int = 1_000
    pairs: int = 3


#: A smoke run: the default schedule still captures ~50 times, so over 100 steps the ratio is
#: far above the full run's and means nothing; it checks that the script works.
QUICK = Config(n_train=2_000, n_val=500, hidden=64, max_steps=100, probe_size=128, pairs=1)


def make_data(cfg: Config, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gaussian blobs with a nonlinear twist: (n_train, dim) / (n_val, dim) inputs, int64 labels."""
    g = torch.Generator().manual_seed(seed)
    n = cfg.n_train + cfg.n_val
    centres = torch.randn(cfg.classes, cfg.dim, generator=g)
    y = torch.randint(0, cfg.classes, (n,), generator=g)
    x = centres[y] + 1.5 * torch.randn(n, cfg.dim, generator=g)
    x = torch.tanh(x) + 0.1 * x**2
    return x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :]


class MLP(pl.LightningModule):
    """``dim -> hidden -> hidden -> classes`` with BatchNorm and Dropout, SGD with momentum."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, classes) logits."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class TimedManifoldCallback(ManifoldCallback):
    """ManifoldCallback that accumulates the wall time spent in its capture events, and the
    drawing worker's statistics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capture_seconds = 0.0
        self.forward_seconds = 0.0  # the probes' forward passes inside the captures
        self.capture_events = 0
        self.drawing: dict[str, float] = {}
        self.render_hook_seconds = 0.0

    def _predict(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: Any) -> Any:
        start = time.perf_counter()
        out = super()._predict(trainer, pl_module, probe)
        self.forward_seconds += time.perf_counter() - start
        return out

    def _render(self, step: int, *, force: bool = False) -> None:
        start = time.perf_counter()
        super()._render(step, force=force)
        self.render_hook_seconds += time.perf_counter() - start

    def _close_sinks(self) -> None:
        worker = self._sinks
        start = time.perf_counter()
        super()._close_sinks()
        if worker is not None:
            self.drawing = {
                "steps drawn": len(set(worker.drawn_steps)),
                "drawing cpu s": worker.throttle.render_time,
                "submit s": worker.submit_seconds,
                "render hook s": self.render_hook_seconds,
                "end wait s": time.perf_counter() - start,
            }

    def _maybe_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super()._maybe_capture(trainer, pl_module)
        self.capture_seconds += time.perf_counter() - start
        self.capture_events += 1


#: The variants timed in each round: no callback, the default callback, the callback without
#: figures (so the fixed cost of drawing the final picture is visible separately).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "without": None,
    "default": {},
    "plots=False": {"plots": False},
}


def run_once(
    cfg: Config, callback_kwargs: dict[str, Any] | None, workdir: Path, tag: str
) -> tuple[float, float, float, int, dict[str, float]]:
    """One seeded training run; returns (fit seconds, seconds inside captures, seconds of the
    probes' forward passes inside them, captures, drawing statistics)."""
    x, y, xv, yv = make_data(cfg)
    pl.seed_everything(0, verbose=False)
    model = MLP(cfg.dim, cfg.hidden, cfg.classes)
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)
    callbacks: list[pl.Callback] = []
    cb: TimedManifoldCallback | None = None
    if callback_kwargs is not None:
        probes = [
            ProbeSet.from_tensors(x[: cfg.probe_size], y[: cfg.probe_size], name="train"),
            ProbeSet.from_tensors(xv[: cfg.probe_size], yv[: cfg.probe_size], name="val"),
        ]
        cb = TimedManifoldCallback(
            probes, dirpath=workdir / "manifold", run_name=tag, **callback_kwargs
        )
        callbacks.append(cb)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=cfg.max_steps,
        logger=CSVLogger(workdir / "logs", name=tag),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    if cb is None:
        return seconds, 0.0, 0.0, 0, {}
    stores = cb.stores
    captures = len(stores["train"]) if "train" in stores else 0
    return seconds, cb.capture_seconds, cb.forward_seconds, captures, cb.drawing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (a few seconds)")
    parser.add_argument("--pairs", type=int, default=None, help="number of A/B pairs")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="without --steps: choose the steps so a run without the callback lasts about this "
        "long (the issue asks for a run of about a minute)",
    )
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else Config()
    if args.pairs is not None or args.steps is not None:
        cfg = Config(
            **{
                **cfg.__dict__,
                **({"pairs": args.pairs} if args.pairs is not None else {}),
                **({"max_steps": args.steps} if args.steps is not None else {}),
            }
        )
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"config: {cfg}  torch threads: {torch.get_num_threads()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="manifold-overhead-") as tmp:
        workdir = Path(tmp)
        warm = Config(**{**cfg.__dict__, "max_steps": min(cfg.max_steps, 20)})
        run_once(warm, {}, workdir, "warmup")  # imports, allocator, kernels
        if not args.quick and args.steps is None:
            probe = Config(**{**cfg.__dict__, "max_steps": 1000})
            per_step = run_once(probe, None, workdir, "calibrate")[0] / 1000
            cfg = Config(**{**cfg.__dict__, "max_steps": int(args.seconds / per_step)})
            print(f"calibrated: {cfg.max_steps} steps for ~{args.seconds:.0f} s", flush=True)
        ratios: dict[str, list[float]] = {k: [] for k in VARIANTS if k != "without"}
        inside_fraction: dict[str, list[float]] = {k: [] for k in ratios}
        forward_fraction: dict[str, list[float]] = {k: [] for k in ratios}
        for i in range(cfg.pairs):
            times = {}
            drawing: dict[str, float] = {}
            for name, kwargs in VARIANTS.items():  # alternate the variants within each round
                seconds, inside, fwd, captures, stats = run_once(cfg, kwargs, workdir, f"{name}{i}")
                times[name] = seconds
                drawing = stats or drawing
                if kwargs is not None:
                    ratios[name].append(seconds / times["without"])
                    inside_fraction[name].append(inside / times["without"])
                    forward_fraction[name].append(fwd / times["without"])
            print(
                f"round {i}: without {times['without']:7.2f} s  "
                + "  ".join(
                    f"{n} {times[n]:7.2f} s (x{times[n] / times['without']:.4f})" for n in ratios
                )
                + f"  ({captures} captures)",
                flush=True,
            )
            print(
                "  drawing (default): " + ", ".join(f"{k} {v:.3g}" for k, v in drawing.items()),
                flush=True,
            )
    for name in ratios:
        print(
            f"median ratio {name}/without: {statistics.median(ratios[name]):.4f}  "
            f"(target <= 1.03); time inside captures: "
            f"{statistics.median(inside_fraction[name]):.2%} of the baseline, of which the "
            f"probes' forward passes {statistics.median(forward_fraction[name]):.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
