"""A small CNN on CIFAR-10 read from a local directory, watched on the information-geometric map.

    python examples/image_classifier.py --data-dir ~/data/cifar-10-batches-py
    python examples/image_classifier.py --data-dir DIR --fast      # a few hundred images

The data directory holds CIFAR-10 in the official python format (``data_batch_1`` ..
``data_batch_5``, ``test_batch``; unpack ``cifar-10-python.tar.gz``) or in the safe .npz variant
(``train.npz`` / ``test.npz`` with ``x`` (n, 32, 32, 3) uint8 and ``y``); see ``_cifar.py`` for
the loading code and why its pickle reader only accepts numpy arrays. Nothing is downloaded and
torchvision is not needed.

A :class:`~lightning_manifold.ManifoldCallback` records the CNN's predictions on a stratified
train probe and a test probe. Outputs under ``--out`` (default ``runs/cifar``): TensorBoard logs,
the trajectory stores (``manifold/<run>/<probe>``) and ``manifold_train.png`` / ``.html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl
import numpy as np
import torch
from _cifar import CifarData, load_cifar10
from _synthetic import torch_threads
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule, TrajectoryStore
from lightning_manifold._optional import is_available
from lightning_manifold.cli import run_frame, write_figures


class SmallCNN(pl.LightningModule):
    """Three conv blocks (conv 3x3 -> BatchNorm -> ReLU -> 2x2 max-pool), global average
    pooling and a linear classifier. Inputs are uint8 images, normalised inside ``forward``.

    Args:
        mean: (3,) channel means of the training images (0..255 scale).
        std: (3,) channel standard deviations.
        channels: widths of the three blocks.
        num_classes: C.
        lr: SGD learning rate (Nesterov momentum 0.9, weight decay 5e-4).
        max_steps: length of the cosine learning-rate schedule.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        channels: tuple[int, int, int] = (32, 64, 128),
        num_classes: int = 10,
        lr: float = 0.05,
        max_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        blocks: list[nn.Module] = []
        c_in = 3
        for c_out in channels:
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, 32, 32) uint8 images -> (B, C) logits."""
        x = (x.float() - self.mean) / self.std
        return self.classifier(self.features(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on a mini-batch, with random horizontal flips."""
        x, y = batch
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        """SGD with Nesterov momentum and a cosine schedule over ``max_steps``."""
        opt = torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", required=True, help="CIFAR-10 directory (python format or train/test.npz)"
    )
    p.add_argument("--out", default="runs/cifar", help="output directory (default: runs/cifar)")
    p.add_argument("--fast", action="store_true", help="tiny subset and network (for tests)")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs (default: 15, fast: 2)")
    p.add_argument(
        "--train-size", type=int, default=None, help="use only this many training images"
    )
    p.add_argument("--probe-size", type=int, default=1000, help="images per probe (default: 1000)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="mini-batch size (default: 128, fast: 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="weight initialisation and data order")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    return p.parse_args(argv)


def _subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random subset (all of it when ``size`` is None) as tensors."""
    if size is not None and size < len(y):
        idx = np.sort(np.random.default_rng(seed).choice(len(y), size, replace=False))
        x, y = x[idx], y[idx]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def _probes(data: CifarData, x_tr: Tensor, y_tr: Tensor, size: int) -> list[ProbeSet]:
    """Stratified train probe (from the training images used) and test probe."""
    x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    return [
        ProbeSet.from_dataset(
            TensorDataset(x_tr, y_tr), min(size, len(y_tr)), name="train", num_classes=10
        ),
        ProbeSet.from_dataset(
            TensorDataset(x_te, y_te), min(size, len(y_te)), name="test", num_classes=10
        ),
    ]


def _logger(out: Path, run_name: str) -> Any:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if is_available("tensorboard"):
        return TensorBoardLogger(save_dir=out, name="tensorboard", version=run_name)
    return CSVLogger(save_dir=out, name="csv", version=run_name)


def run(args: argparse.Namespace, data: CifarData) -> dict[str, Path]:
    """Train with the callback, draw the train trajectory; returns ``{what: path}``."""
    out = Path(args.out)
    train_size = args.train_size if args.train_size is not None else (512 if args.fast else None)
    x_tr, y_tr = _subset(data.x_train, data.y_train, train_size, args.seed)
    print(f"CIFAR-10 from {data.source}: {len(y_tr)} training, {len(data.y_test)} test images")
    mean = x_tr.double().mean(dim=(0, 2, 3)).tolist()
    std = x_tr.double().std(dim=(0, 2, 3)).clamp_min(1.0).tolist()
    epochs = args.max_epochs or (2 if args.fast else 15)
    loader = DataLoader(
        TensorDataset(x_tr, y_tr),
        batch_size=args.batch_size or (32 if args.fast else 128),
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    torch.manual_seed(args.seed)
    model = SmallCNN(
        mean,
        std,
        channels=(8, 16, 32) if args.fast else (32, 64, 128),
        max_steps=max(1, epochs * len(loader)),
    )
    run_name = f"cnn-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = out / "manifold"
    callback = ManifoldCallback(
        _probes(data, x_tr, y_tr, args.probe_size),
        schedule=Schedule(log_spaced=15 if args.fast else 50),
        dirpath=root,
        run_name=run_name,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=_logger(out, run_name),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.fast and sys.stdout.isatty(),
        log_every_n_steps=5,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    print(f"trained {epochs} epoch(s) in {time.perf_counter() - start:.0f} s")
    where: dict[str, Path] = {"stores": root / run_name}
    for probe, path in callback.store_paths.items():
        store = TrajectoryStore(path)
        last = store.records[-1]["metrics"]
        print(f"  {probe:5s} progress {last['progress']:.3f}, error {last['error']:.3f}")
        if probe == "train":
            frame = run_frame(store, title=f"{run_name} (train probe)")
            where.update(
                {f"{k}": v for k, v in write_figures(frame, out, stem="manifold_train").items()}
            )
    for key, path in where.items():
        print(f"  {key:7s} {path}")
    return where


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 (2 with a one-line message when the data cannot be read)."""
    args = parse_args(argv)
    try:
        data = load_cifar10(args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"image_classifier: error: {err}", file=sys.stderr)
        return 2
    with torch_threads(args.threads):
        run(args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
