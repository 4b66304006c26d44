"""Per-capture cost of ``ManifoldCallback`` when it captures at every step of a long run.

A tiny MLP (32 -> 64 -> 10) trains for ``--steps`` SGD steps (default 5000) with a callback
that captures at every step on two probes of N = 1000 samples and C = 10 classes, with
scalars (a TensorBoard logger), the trajectory store and online placement (the live 4-point
frame) on, and figures off (``plots=False``: drawing is measured by ``benchmarks/overhead.py``).

Printed, all measured in this process:

* per-capture wall time over the last 500 captures / the first 500 (target <= 1.2: the cost of
  a capture must not grow with the number of captures);
* RSS growth after the first 500 captures (target <= 64 MB);
* bytes per capture: the size of the store directories at the end / captures, and the bytes
  the process wrote (``/proc/self/io`` ``wchar``, all files: store and TensorBoard events)
  / captures;
* per-capture cost beyond the probe forward (target <= 5 ms): the mean capture time minus the
  time of the two probes' forward passes alone (``ProbeSet.predict`` on the same model, timed in
  the same process).

Run::

    python benchmarks/capture_cost.py [--steps 5000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule
from lightning_manifold.probe import evaluation_mode

N, C, D = 1000, 10, 32


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def written_bytes() -> int:
    """Bytes this process has written through write() calls (``/proc/self/io`` ``wchar``)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


class TinyMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, C))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class TimedCallback(ManifoldCallback):
    """Records the wall time and the RSS after each capture."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []
        self.rss: list[int] = []

    def _maybe_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        super()._maybe_capture(trainer, pl_module)
        self.seconds.append(time.perf_counter() - t0)
        self.rss.append(rss_bytes())


def data(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    teacher = torch.randn(D, C, generator=g)
    return x, (x @ teacher).argmax(1)


def forward_seconds(model: nn.Module, probes: list[ProbeSet], repeats: int = 200) -> float:
    """Median time of the probes' forward passes alone (what a capture cannot avoid)."""
    times = []
    with torch.no_grad(), evaluation_mode(model):
        for _ in range(repeats):
            t0 = time.perf_counter()
            for probe in probes:
                probe.predict(model)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=500, help="captures per window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    window = min(args.window, max(1, args.steps // 4))
    x, y = data()
    probes = [
        ProbeSet.from_tensors(x, y, name="train"),
        ProbeSet.from_tensors(x.flip(0), y.flip(0), name="val"),
    ]
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    torch.manual_seed(0)
    model = TinyMLP()
    with tempfile.TemporaryDirectory() as tmp:
        callback = TimedCallback(
            probes,
            schedule=Schedule(log_spaced=None, every_n_steps=1),
            dirpath=tmp,
            run_name="bench",
            plots=False,
        )
        trainer = pl.Trainer(
            max_steps=args.steps,
            logger=TensorBoardLogger(tmp, name="tb"),
            callbacks=[callback],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            accelerator="cpu",
            devices=1,
        )
        wchar0 = written_bytes()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(model, loader)
        wall = time.perf_counter() - t0
        wchar = written_bytes() - wchar0
        store_bytes = sum(dir_bytes(Path(p)) for p in callback.store_paths.values())
        fwd = forward_seconds(model, probes)

    sec = callback.seconds
    captures = len(sec)
    first, last = statistics.mean(sec[:window]), statistics.mean(sec[-window:])
    growth = (callback.rss[-1] - callback.rss[window - 1]) / 2**20
    beyond = statistics.median(sec[window:]) - fwd if captures > window else float("nan")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min), torch threads: {args.threads}, plots=False")
    print(f"steps: {args.steps}, captures: {captures} (2 probes each, N={N}, C={C})")
    print(f"wall time of fit: {wall:.1f} s ({wall / max(captures, 1) * 1e3:.2f} ms per step)")
    print(
        f"per-capture time: first {window} {first * 1e3:.2f} ms, last {window} "
        f"{last * 1e3:.2f} ms, ratio {last / first:.3f} (target <= 1.2)"
    )
    print(f"RSS growth after the first {window} captures: {growth:.1f} MB (target <= 64 MB)")
    print(
        f"bytes per capture: {store_bytes / captures:.0f} B in the store directories, "
        f"{wchar / captures:.0f} B written by the process (store + TensorBoard)"
    )
    print(
        f"probe forward alone (2 probes): {fwd * 1e3:.2f} ms; capture beyond the forward "
        f"(median after the first window): {beyond * 1e3:.2f} ms (target <= 5 ms)"
    )


if __name__ == "__main__":
    main()
