"""The synthetic task of the thesis (§2.5.5), shared by the examples and their tests.

* Inputs: ``x ~ N(0, diag(λ))`` in ``d`` dimensions with *sloppy* eigenvalues
  ``λ_i = 50 c exp(-c i)``, ``i = 1..d`` (c = 0.5, d = 200 in the thesis; fig. 2.25).
* Labels: the argmax of a random teacher, a fully-connected network with one hidden layer of
  width 50 and 5 outputs. Its output layer is standardised on the training inputs so that the
  5 classes are roughly balanced (an affine change of the teacher's last layer).
* Students: MLP ``LightningModule`` s with 1 or 2 hidden layers (or 0: a linear model), each
  hidden layer ``Linear -> BatchNorm1d -> ReLU`` (the thesis trains with batch normalisation and
  without dropout), optimised with SGD, SGD + Nesterov momentum or Adam.

:func:`train_run` trains one configuration with a :class:`~lightning_manifold.ManifoldCallback`
and returns where its trajectory stores went. Nothing is downloaded; everything is seeded.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule, TrajectoryStore

__all__ = [
    "MLPStudent",
    "RunConfig",
    "RunResult",
    "SyntheticTask",
    "callback_accepts",
    "make_task",
    "probes_for",
    "record_config",
    "sloppy_eigenvalues",
    "torch_threads",
    "train_loader",
    "train_run",
    "warm_up_batchnorm",
]

OPTIMIZERS = ("sgd", "nesterov", "adam")


# --------------------------------------------------------------------------------------------
# threads


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (``None``: leave torch's setting alone).

    Tiny MLPs gain nothing from several threads, and on a busy machine OpenMP threads that spin
    waiting for each other can make every operation a hundred times slower.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# data


def sloppy_eigenvalues(d: int, c: float = 0.5) -> Tensor:
    """(d,) float64 covariance eigenvalues ``50 c exp(-c i)``, ``i = 1..d`` (thesis fig. 2.25)."""
    if d < 1 or c <= 0:
        raise ValueError(f"`d` must be >= 1 and `c` > 0, got d={d}, c={c}")
    i = torch.arange(1, d + 1, dtype=torch.float64)
    return 50.0 * c * torch.exp(-c * i)


@dataclass(frozen=True)
class SyntheticTask:
    """Train and test splits of the synthetic task.

    Attributes:
        x_train: (n_train, d) float32 inputs; y_train: (n_train,) int64 labels.
        x_test: (n_test, d) float32 inputs; y_test: (n_test,) int64 labels.
        eigenvalues: (d,) covariance eigenvalues of the inputs.
        num_classes: C.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    eigenvalues: Tensor
    num_classes: int

    @property
    def dim(self) -> int:
        """d, the input dimension."""
        return int(self.x_train.shape[1])


def make_task(
    *,
    d: int = 200,
    c: float = 0.5,
    n_train: int = 5000,
    n_test: int = 1000,
    num_classes: int = 5,
    teacher_width: int = 50,
    seed: int = 0,
) -> SyntheticTask:
    """Sample the sloppy Gaussian inputs and label them with a random one-hidden-layer teacher.

    Args:
        d: input dimension (200 in the thesis).
        c: sloppiness; eigenvalues decay as ``50 c exp(-c i)`` (0.5 in the thesis).
        n_train: training samples (5000 in the thesis).
        n_test: test samples (1000 in the thesis).
        num_classes: C (5 in the thesis).
        teacher_width: hidden width of the teacher (50 in the thesis).
        seed: seed of a private generator (the global RNG is untouched).

    Returns:
        The task; labels are ``argmax`` of the teacher's (standardised) logits.
    """
    g = torch.Generator().manual_seed(seed)
    eig = sloppy_eigenvalues(d, c)
    n = n_train + n_test
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * eig.sqrt()).float()
    w1 = torch.randn(d, teacher_width, generator=g) / math.sqrt(float(eig.sum()))
    b1 = 0.5 * torch.randn(teacher_width, generator=g)
    w2 = torch.randn(teacher_width, num_classes, generator=g) / math.sqrt(teacher_width)
    logits = torch.relu(x @ w1 + b1) @ w2
    ref = logits[:n_train]  # standardise on the training inputs: roughly balanced classes
    logits = (logits - ref.mean(0)) / ref.std(0)
    y = logits.argmax(1)
    return SyntheticTask(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        eigenvalues=eig,
        num_classes=num_classes,
    )


def train_loader(task: SyntheticTask, batch_size: int, *, seed: int = 0) -> DataLoader:
    """Shuffled mini-batches of the training split, drawn from a private generator.

    Batches are sliced from the tensors in one indexing operation (no per-sample collate).
    """
    ds = TensorDataset(task.x_train, task.y_train)
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        ds, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None
    )


def probes_for(task: SyntheticTask, *, n_probe: int | None = None) -> list[ProbeSet]:
    """A ``train`` and a ``test`` probe: the first ``n_probe`` samples of each split (or all)."""
    n_tr = task.x_train.shape[0] if n_probe is None else min(n_probe, task.x_train.shape[0])
    n_te = task.x_test.shape[0] if n_probe is None else min(n_probe, task.x_test.shape[0])
    c = task.num_classes
    return [
        ProbeSet.from_tensors(
            task.x_train[:n_tr], task.y_train[:n_tr], name="train", num_classes=c
        ),
        ProbeSet.from_tensors(task.x_test[:n_te], task.y_test[:n_te], name="test", num_classes=c),
    ]


# --------------------------------------------------------------------------------------------
# students


class MLPStudent(pl.LightningModule):
    """A fully-connected student: ``depth`` x (Linear -> BatchNorm1d -> ReLU), then Linear.

    Args:
        d: input dimension.
        num_classes: C.
        depth: number of hidden layers (0 gives a linear model).
        width: hidden width.
        optimizer: ``"sgd"``, ``"nesterov"`` (SGD with Nesterov momentum 0.9) or ``"adam"``.
        lr: learning rate.
        weight_decay: L2 coefficient of the optimizer.
        output_scale: factor on the output layer's initial weights and bias. Below 1 every run
            starts closer to ignorance P0, so runs differ by where they go, not by where they
            start (the thesis' trajectories all begin near P0).
    """

    def __init__(
        self,
        d: int,
        num_classes: int,
        *,
        depth: int = 1,
        width: int = 512,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 0.0,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {optimizer!r}")
        if depth < 0:
            raise ValueError(f"`depth` must be >= 0, got {depth}")
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width_in = d
        for _ in range(depth):
            layers += [nn.Linear(width_in, width), nn.BatchNorm1d(width), nn.ReLU()]
            width_in = width
        head = nn.Linear(width_in, num_classes)
        with torch.no_grad():
            head.weight.mul_(output_scale)
            head.bias.mul_(output_scale)
        self.net = nn.Sequential(*layers, head)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) inputs -> (B, C) logits."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one ``(x, y)`` mini-batch."""
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD, SGD with Nesterov momentum 0.9, or Adam, with ``weight_decay``."""
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        nesterov = hp.optimizer == "nesterov"
        return torch.optim.SGD(
            self.parameters(),
            lr=hp.lr,
            momentum=0.9 if nesterov else 0.0,
            nesterov=nesterov,
            weight_decay=hp.weight_decay,
        )


@torch.no_grad()
def warm_up_batchnorm(model: nn.Module, x: Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x`` before training.

    PyTorch initialises running statistics at mean 0 / variance 1, so the eval-mode model at
    step 0 is not the model training starts from and can sit far from ignorance (thesis
    fig. 2.12). One forward pass of all of ``x`` in train mode, with ``momentum=None``
    (cumulative average, here of a single batch), sets each running mean and variance to the
    statistics of ``x``; weights and every module's train/eval flag are left as they were.

    Args:
        model: the network.
        x: (n, d) training inputs (one batch: fine for the small examples here).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = [(m, m.training) for m in model.modules()]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    for m, flag in was_training:
        m.training = flag


# --------------------------------------------------------------------------------------------
# one training run


@dataclass(frozen=True)
class RunConfig:
    """One training configuration of the synthetic task.

    Attributes:
        name: configuration name (without the seed), e.g. ``"mlp1-sgd-bs200"``.
        depth: hidden layers of the student.
        width: hidden width.
        optimizer: ``"sgd"``, ``"nesterov"`` or ``"adam"``.
        lr: learning rate.
        batch_size: mini-batch size.
        weight_decay: L2 coefficient.
        seed: weight initialisation and data order.
        max_epochs: epochs of training.
        output_scale: see :class:`MLPStudent`.
    """

    name: str
    depth: int = 1
    width: int = 512
    optimizer: str = "sgd"
    lr: float = 0.1
    batch_size: int = 200
    weight_decay: float = 0.0
    seed: int = 0
    max_epochs: int = 20
    output_scale: float = 0.1

    @property
    def run_name(self) -> str:
        """``<name>-seed<seed>``: the store's run name (the CLI groups seeds by ``name``)."""
        return f"{self.name}-seed{self.seed}"

    def with_seed(self, seed: int) -> RunConfig:
        """The same configuration with another seed."""
        return replace(self, seed=seed)


@dataclass
class RunResult:
    """What :func:`train_run` produced.

    Attributes:
        config: the configuration trained.
        store_paths: ``{probe name: store directory}``.
        callback: the callback used (its ``dirpath`` / ``run_name`` locate the stores).
        trainer: the trainer (loggers, ``log_dir``).
        model: the trained student.
    """

    config: RunConfig
    store_paths: dict[str, str]
    callback: ManifoldCallback
    trainer: pl.Trainer
    model: MLPStudent


def callback_accepts(name: str) -> bool:
    """Whether :class:`ManifoldCallback` takes the keyword ``name`` (e.g. ``"reference"``)."""
    return name in inspect.signature(ManifoldCallback.__init__).parameters


def train_run(
    task: SyntheticTask,
    config: RunConfig,
    *,
    root: str | os.PathLike[str],
    run_name: str | None = None,
    probes: Sequence[ProbeSet] | None = None,
    schedule: Schedule | None = None,
    loggers: Any = False,
    reference: Any = None,
    progress_bar: bool = False,
) -> RunResult:
    """Train one configuration with a :class:`ManifoldCallback` writing to ``root``.

    The stores land in ``<root>/<run_name>/<probe>``; the configuration is recorded in
    each store's metadata (``meta["config"]`` is ``config.name``, the CLI's default grouping of
    seeds; ``meta["hparams"]`` the full configuration).

    Args:
        task: the data.
        config: the configuration.
        root: directory of the trajectory stores.
        run_name: the stores' run name (default ``config.run_name``).
        probes: probe sets (default: :func:`probes_for` with 1000 samples per split).
        schedule: capture schedule (default: 40 log-spaced steps).
        loggers: ``Trainer(logger=...)``: ``False`` for none, a logger or a list of loggers.
        reference: a ``ReferenceEmbedding`` (or path) passed to the callback when it accepts
            ``reference=``; ignored otherwise (project after training instead).
        progress_bar: show Lightning's progress bar.

    Returns:
        A :class:`RunResult`.
    """
    torch.manual_seed(config.seed)  # weight initialisation
    model = MLPStudent(
        task.dim,
        task.num_classes,
        depth=config.depth,
        width=config.width,
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        output_scale=config.output_scale,
    )
    warm_up_batchnorm(model, task.x_train)
    probes = list(probes) if probes is not None else probes_for(task, n_probe=1000)
    kwargs: dict[str, Any] = {
        "schedule": schedule if schedule is not None else Schedule(log_spaced=40),
        "dirpath": root,
        "run_name": run_name or config.run_name,
    }
    if reference is not None and callback_accepts("reference"):
        kwargs["reference"] = reference
    callback = ManifoldCallback(probes, log_scalars=loggers is not False, **kwargs)
    loader = train_loader(task, config.batch_size, seed=config.seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.max_epochs,
        logger=loggers,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        log_every_n_steps=max(1, min(10, len(loader))),
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, loader)
    paths = callback.store_paths
    record_config(paths.values(), config)
    return RunResult(
        config=config, store_paths=paths, callback=callback, trainer=trainer, model=model
    )


def record_config(store_paths: Any, config: RunConfig) -> None:
    """Merge ``{"config": name, "hparams": {...}}`` into each store's metadata.

    ``TrajectoryStore.create`` on an existing store re-opens it and merges ``meta``. (Adapter
    until the callback takes a ``meta=`` argument of its own.)
    """
    for path in store_paths:
        store = TrajectoryStore(path)
        TrajectoryStore.create(
            Path(path),
            labels=store.labels,
            num_classes=store.num_classes,
            probe_name=store.probe_name,
            run_name=store.run_name,
            meta={"config": config.name, "hparams": asdict(config)},
        )
