"""Hyper-parameter search that prunes bad trials from where they stand on the manifold.

    pip install "lightning-manifold[optuna]"
    python examples/hpo_optuna.py            # a few minutes on one CPU core
    python examples/hpo_optuna.py --fast     # seconds, tiny sizes (for tests)

An Optuna study of 12 configurations of the thesis' synthetic task (§2.5.5), some bad on
purpose: learning rates far too small, a learning rate that diverges, shuffled labels and heavy
label noise. Every trial trains with a :class:`~lightning_manifold.ManifoldCallback` placing it
against a reference run, and is stopped early by

* :class:`ManifoldPruning` (below, a few lines: no ``optuna-integration`` needed): it reports the
  train probe's progress (eq. 2.2.4) to Optuna at every capture and asks the study's
  ``MedianPruner`` whether to prune;
* :class:`~lightning_manifold.ManifoldEarlyStopping`: a diverged model (invalid snapshots) or a
  run more than 4x slower than the reference at equal progress.

The objective is the test-probe accuracy at the end of training. The script prints the
optimizer steps run against running every trial to the end, and, after training the pruned
configurations to the end as well (``--no-verify`` skips it), whether the best configuration
survived the pruning.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl
import torch
from _synthetic import (
    MLPStudent,
    SyntheticTask,
    make_task,
    probes_for,
    torch_threads,
    warm_up_batchnorm,
)
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold import (
    ManifoldCallback,
    ManifoldEarlyStopping,
    ReferenceEmbedding,
    Schedule,
    TrajectoryStore,
)
from lightning_manifold._optional import require

try:
    import optuna
except ImportError:  # pragma: no cover - the message says what to install
    optuna = None


@dataclass(frozen=True)
class Trial:
    """One configuration: SGD learning rate, hidden width, and what is done to the labels."""

    lr: float
    width: int = 64
    labels: str = "clean"  # "clean", "shuffled" or "noisy" (60% of the labels redrawn)


#: The study: good configurations first (they set the pruner's median), then the bad ones.
CONFIGS: tuple[Trial, ...] = (
    Trial(0.5),
    Trial(0.3),
    Trial(1.0),
    Trial(0.5, width=128),
    Trial(0.005),  # far too small
    Trial(0.2, width=32),
    Trial(500.0),  # diverges
    Trial(0.5, labels="shuffled"),
    Trial(0.7),
    Trial(0.002),  # far too small
    Trial(0.5, labels="noisy"),
    Trial(0.1),
)
FAST_CONFIGS: tuple[Trial, ...] = (
    Trial(0.5),
    Trial(1.0),
    Trial(0.3),
    Trial(0.002),
    Trial(500.0),
)


class ManifoldPruning(pl.Callback):
    """A pruning bridge: report a manifold scalar to an Optuna trial at every capture.

    Reads ``monitor`` (default ``manifold/train/progress``) from ``trainer.callback_metrics``
    when the ManifoldCallback has captured a new step; an invalid snapshot (a diverged model)
    is reported as 0, no progress. When ``trial.should_prune()`` the training stops and
    :attr:`pruned` is set (raise ``optuna.TrialPruned`` after ``fit``). Single process.
    """

    def __init__(self, trial: Any, manifold: ManifoldCallback, probe: str = "train") -> None:
        self.trial = trial
        self.manifold = manifold
        self.monitor = f"manifold/{probe}/progress"
        self.valid = f"manifold/{probe}/valid"
        self.pruned = False
        self._last: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = self.manifold.last_captured_step
        metrics = trainer.callback_metrics
        if step is None or step == self._last or self.valid not in metrics:
            return
        self._last = step
        valid = float(metrics[self.valid]) == 1.0
        self.trial.report(float(metrics[self.monitor]) if valid else 0.0, step)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def _loader(task: SyntheticTask, trial: Trial, batch_size: int, seed: int) -> DataLoader:
    """Training batches; the labels shuffled or 60% redrawn for the bad configurations."""
    g = torch.Generator().manual_seed(seed)
    y = task.y_train.clone()
    if trial.labels == "shuffled":
        y = y[torch.randperm(y.numel(), generator=g)]
    elif trial.labels == "noisy":
        redraw = torch.rand(y.numel(), generator=g) < 0.6
        y[redraw] = torch.randint(task.num_classes, (int(redraw.sum()),), generator=g)
    data = TensorDataset(task.x_train, y)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)


def make_manifold(
    task: SyntheticTask, root: Path, run_name: str, reference: ReferenceEmbedding | None = None
) -> ManifoldCallback:
    """A ManifoldCallback on a train and a test probe, capturing every 5 steps."""
    return ManifoldCallback(
        probes_for(task, n_probe=200),
        schedule=Schedule(log_spaced=None, every_n_steps=5),
        dirpath=root,
        run_name=run_name,
        reference=reference,
        log_scalars=False,
        plots=False,
        durable=False,
    )


def train(
    task: SyntheticTask,
    trial: Trial,
    manifold: ManifoldCallback,
    *,
    epochs: int,
    seed: int = 0,
    callbacks: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    """Train one configuration with ``manifold`` (and ``callbacks``); returns the trainer."""
    torch.manual_seed(seed)
    model = MLPStudent(task.dim, task.num_classes, width=trial.width, lr=trial.lr)
    warm_up_batchnorm(model, task.x_train)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=[manifold, *callbacks],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(workers|no logger|invalid|NaN).*")
        trainer.fit(model, _loader(task, trial, 80, seed))
    return trainer


def _test_accuracy(manifold: ManifoldCallback) -> float:
    """Accuracy on the test probe at the last valid capture (0 for a diverged run)."""
    store = TrajectoryStore(manifold.store_paths["test"])
    valid = store.valid
    if not valid.any() or not valid[-1]:
        return 0.0
    return 1.0 - float(store.metrics("error")[-1])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="5 configurations, few epochs (tests)")
    p.add_argument("--out", default="runs/hpo_optuna", help="output directory")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 15)")
    p.add_argument("--no-verify", action="store_true", help="do not finish the pruned trials")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; print the compute saved and whether the best configuration was kept."""
    require("optuna", "optuna", purpose="the HPO example")
    args = parse_args(argv)
    configs = FAST_CONFIGS if args.fast else CONFIGS
    epochs = args.epochs or (4 if args.fast else 15)
    root = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    with torch_threads(args.threads):
        task = make_task(d=40, n_train=800, n_test=200)
        # the baseline: one good run, as the manifold's reference
        base = make_manifold(task, root, "reference")
        train(task, CONFIGS[0], base, epochs=epochs, seed=99)
        reference = ReferenceEmbedding.from_store(base.store_paths["train"], n_components=3)

        steps: dict[int, int] = {}
        pruned: dict[int, str] = {}

        def objective(trial: optuna.Trial) -> float:
            i = trial.suggest_int("config", 0, len(configs) - 1)
            stopper = ManifoldEarlyStopping(max_relative_speed=4.0, patience=2)
            manifold = make_manifold(task, root, f"trial{trial.number}", reference)
            bridge = ManifoldPruning(trial, manifold)
            trainer = train(task, configs[i], manifold, epochs=epochs, callbacks=[stopper, bridge])
            steps[i] = trainer.global_step
            if bridge.pruned or stopper.decision is not None:
                decision = stopper.decision
                pruned[i] = "median pruner" if decision is None else decision.reason
                raise optuna.TrialPruned()
            return _test_accuracy(manifold)

        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=0),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=10),
        )
        for i in range(len(configs)):
            study.enqueue_trial({"config": i})
        study.optimize(objective, n_trials=len(configs))

        full = len(_loader(task, configs[0], 80, 0)) * epochs
        run = sum(steps.values())
        print(f"{'config':<44} {'steps':>6}  outcome")
        for t in study.trials:
            i = t.params["config"]
            outcome = f"pruned ({pruned[i]})" if i in pruned else f"accuracy {t.value:.3f}"
            print(f"{configs[i]!s:<44} {steps[i]:>6}  {outcome}")
        print(
            f"optimizer steps: {run} run vs {full * len(configs)} to finish every trial: "
            f"{1 - run / (full * len(configs)):.0%} saved"
        )
        best = study.best_trial.params["config"]
        print(f"best kept: {configs[best]} (accuracy {study.best_value:.3f})")
        if not args.no_verify:
            finals = {t.params["config"]: t.value for t in study.trials if t.value is not None}
            for i in pruned:
                full_run = make_manifold(task, root, f"full{i}")
                train(task, configs[i], full_run, epochs=epochs)
                finals[i] = _test_accuracy(full_run)
            true_best = max(finals, key=lambda i: finals[i])
            kept = finals[true_best] <= study.best_value
            print(
                f"run to the end, the best configuration is {configs[true_best]} "
                f"(accuracy {finals[true_best]:.3f}): "
                + ("kept by the pruned study" if kept else "PRUNED by the study")
            )
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
