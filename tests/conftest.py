"""Shared test fixtures: a tiny seeded classifier on generated data.

Everything here is importable at module level (``from conftest import TinyClassifier``) so that
``strategy="ddp_spawn"`` can pickle the models and data by reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def make_blobs(
    n: int = 256, d: int = 8, C: int = 3, seed: int = 0, *, spread: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Gaussian blobs: one isotropic cluster per class around a random centre.

    Args:
        n: number of samples.
        d: input dimension.
        C: number of classes (labels are balanced: ``y = arange(n) % C`` then shuffled).
        seed: seed of a private generator (the global RNG is untouched).
        spread: standard deviation of each cluster relative to the distance between centres.

    Returns:
        ``x`` (n, d) float32 inputs and ``y`` (n,) int64 labels in ``[0, C)``.
    """
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(C, d, generator=g)
    y = torch.arange(n) % C
    y = y[torch.randperm(n, generator=g)]
    x = centres[y] + spread * torch.randn(n, d, generator=g)
    return x.float(), y.long()


def probe_blobs(
    n: int, d: int = 8, C: int = 3, *, seed: int = 0, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """n held-out samples from the same blobs as ``make_blobs(..., seed=seed)``.

    The cluster centres depend only on ``seed``, so a probe must use the training seed to ask
    the model about the task it learns; ``offset`` picks other held-out samples.
    """
    x, y = make_blobs(4096 + offset + n, d, C, seed=seed)
    return x[-n:], y[-n:]


def teacher_data(n: int = 240, d: int = 20, C: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a random one-hidden-layer teacher (thesis §2.5.5).

    Returns (n, d) float32 inputs and (n,) int64 labels in [0, C) (argmax of the teacher).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w1 = torch.randn(d, 50, generator=g) / math.sqrt(d)
    w2 = torch.randn(50, C, generator=g) / math.sqrt(50)
    return x, (torch.relu(x @ w1) @ w2).argmax(1)


def full_batch_trajectory(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 40,
    n_capture: int = 14,
    lr: float = 0.5,
) -> tuple[Tensor, np.ndarray]:
    """Train ``model`` by full-batch SGD in a plain loop, capturing along the way.

    Returns:
        (T, N, C) float64 log-probabilities on ``x`` at step 0 and about ``n_capture``
        log-spaced steps up to ``steps``, and the (T,) int64 steps.
    """
    capture = set(np.unique(np.round(np.geomspace(1, steps, n_capture)).astype(int)).tolist())
    capture.add(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out, at = [], []
    for s in range(steps + 1):
        if s in capture:
            with torch.no_grad():
                out.append(torch.log_softmax(model(x).double(), -1))
            at.append(s)
        if s < steps:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return torch.stack(out), np.array(at, dtype=np.int64)


def write_store(
    root: Path,
    run: str,
    labels: Any,
    num_classes: int,
    log_probs: Sequence[Any] = (),
    steps: Sequence[int] | None = None,
    probe: str = "train",
) -> Any:
    """A ``TrajectoryStore`` at ``root/run/probe`` holding ``log_probs`` at ``steps``.

    Non-durable (no fsync), epoch 0; ``steps`` default to 0, 1, 2, ...
    """
    from lightning_manifold.store import TrajectoryStore, store_path

    store = TrajectoryStore.create(
        store_path(root, run, probe),
        labels=labels,
        num_classes=num_classes,
        probe_name=probe,
        run_name=run,
        durable=False,
    )
    for t, lp in enumerate(log_probs):
        lp = lp.numpy() if isinstance(lp, Tensor) else lp
        store.append(lp, step=int(steps[t] if steps is not None else t), epoch=0)
    return store


def make_loader(
    x: Tensor, y: Tensor, *, batch_size: int = 32, shuffle: bool = True, num_workers: int = 0
) -> DataLoader:
    """A plain ``DataLoader`` of ``(x, y)`` pairs; shuffling draws from torch's global RNG."""
    return DataLoader(
        TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers
    )


class TinyClassifier(pl.LightningModule):
    """A small MLP classifier: ``Linear -> [BatchNorm1d] -> ReLU -> [Dropout] -> Linear``.

    ``forward`` maps (B, d) inputs to (B, C) logits; ``training_step`` minimises cross-entropy
    on ``(x, y)`` batches with SGD.

    Args:
        d: input dimension.
        C: number of classes.
        hidden: hidden width.
        batchnorm: insert a ``BatchNorm1d`` after the first layer.
        dropout: dropout probability after the activation (0 disables it).
        lr: SGD learning rate (0 keeps the weights fixed).
        momentum: SGD momentum.
        init_scale: multiply the output layer's initial weights by this factor (a large value
            puts the initial model far from ignorance).
    """

    def __init__(
        self,
        d: int = 8,
        C: int = 3,
        hidden: int = 16,
        *,
        batchnorm: bool = False,
        dropout: float = 0.0,
        lr: float = 0.1,
        momentum: float = 0.0,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = [nn.Linear(d, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, C)
        if init_scale != 1.0:
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) inputs -> (B, C) logits."""
        return self.head(self.body(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum
        )


class MemoryLogger(Logger):
    """A logger that keeps every ``log_metrics`` call in memory: ``records`` = [(step, dict)]."""

    def __init__(self, version: str | int = "memory") -> None:
        super().__init__()
        self._version = version
        self.records: list[tuple[int | None, dict[str, float]]] = []
        self.hyperparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str | int:
        return self._version

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparams.update(dict(params) if isinstance(params, dict) else vars(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def metrics_with_prefix(self, prefix: str) -> list[tuple[int | None, dict[str, float]]]:
        """The records restricted to keys starting with ``prefix`` (records without one dropped)."""
        out = []
        for step, metrics in self.records:
            kept = {k: v for k, v in metrics.items() if k.startswith(prefix)}
            if kept:
                out.append((step, kept))
        return out


def fast_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a quiet, fast CPU ``Trainer``; ``overrides`` win."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        "deterministic": False,
    }
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def blobs() -> tuple[Tensor, Tensor]:
    """(256, 8) float32 inputs and (256,) labels in 3 classes, seed 0."""
    return make_blobs(256, 8, 3, seed=0)


@pytest.fixture
def blobs_val() -> tuple[Tensor, Tensor]:
    """(96, 8) float32 held-out inputs and (96,) labels from the same blobs as ``blobs``."""
    x, y = make_blobs(256 + 96, 8, 3, seed=0)
    return x[256:], y[256:]


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """One torch thread for the module: tiny models gain nothing from more, and on a busy
    machine spinning OpenMP threads cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: a Trainer without ``default_root_dir`` writes its
    logs and the callback its stores under the working directory, never into the repository."""
    monkeypatch.chdir(tmp_path)
