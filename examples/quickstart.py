"""Quickstart: watch an MLP learn the thesis' synthetic task on the information-geometric map.

    python examples/quickstart.py            # well under a minute on a laptop CPU
    python examples/quickstart.py --fast     # a few seconds, tiny sizes

Trains a one-hidden-layer MLP (width 512, BatchNorm, Adam, 50 epochs) on the synthetic task of
Mao et al. (thesis §2.5.5: sloppy Gaussian inputs in d = 200 dimensions, labels from a random
teacher) with a :class:`~lightning_manifold.ManifoldCallback` recording its predictions on a
train and a test probe at 50 log-spaced steps. Writes, under ``--out`` (default
``runs/quickstart``):

* ``tensorboard/``: TensorBoard logs (scalars ``manifold/<probe>/progress``, ...);
* ``wandb/``: an offline Weights & Biases run, when wandb is installed (``--no-wandb`` skips it);
* ``manifold/<run>/<probe>/``: the trajectory stores (read them with the ``lightning-manifold``
  command line);
* ``manifold/<run>/manifold.png`` and ``manifold.html``, next to the run's stores: the run on
  the InPCA map (eq. 2.2.6) with ignorance, truth and the geodesic between them, spectrum,
  progress and distance to the geodesic.

Re-running adds a run (``quickstart-2``, ...) beside the first; ``--seed`` changes only the
initialisation and the data order, so the runs share the task and the probes and every
multi-run command (``lightning-manifold compare``, ``report``) works on them. ``--task-seed``
draws another task (other probes: not comparable with the first runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RunConfig, make_task, probes_for, torch_threads, train_run

from lightning_manifold import Schedule, TrajectoryStore
from lightning_manifold._optional import is_available
from lightning_manifold.analysis import run_frame, write_figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the quickstart."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny sizes (a few seconds; for tests)")
    p.add_argument(
        "--out", default="runs/quickstart", help="output directory (default: runs/quickstart)"
    )
    p.add_argument("--no-wandb", action="store_true", help="do not write an offline W&B run")
    p.add_argument(
        "--max-epochs", type=int, default=None, help="epochs of training (default: 50, fast: 5)"
    )
    p.add_argument("--seed", type=int, default=0, help="weight initialisation and data order")
    p.add_argument(
        "--task-seed", type=int, default=0,
        help="the synthetic task and probes (default 0; runs of different task seeds cannot be "
        "compared)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest for tiny MLPs)"
    )
    return p.parse_args(argv)


def _fresh_run_name(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... if a run of that name is already stored."""
    name, i = base, 1
    while (root / name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def _loggers(out: Path, run_name: str, *, wandb: bool) -> tuple[list[Any], dict[str, Path]]:
    """TensorBoard logger (if tensorboard is installed) and an offline W&B logger (if asked and
    installed), and where they write."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    loggers: list[Any] = []
    where: dict[str, Path] = {}
    if is_available("tensorboard"):
        loggers.append(TensorBoardLogger(save_dir=out, name="tensorboard", version=run_name))
        where["tensorboard"] = out / "tensorboard"
    else:
        loggers.append(CSVLogger(save_dir=out, name="csv", version=run_name))
        where["csv"] = out / "csv" / run_name
    if wandb and is_available("wandb"):
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(project="lightning-manifold", name=run_name, save_dir=out, offline=True)
        )
    return loggers, where


def _finish_wandb(loggers: Sequence[Any]) -> Path | None:
    """Close the W&B run (flushing it to disk); its offline directory, if there was one."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run_dir = Path(lg.experiment.dir).parent  # .../wandb/offline-run-<id>/files -> run
            import wandb

            wandb.finish()
            return run_dir
    return None


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Train and write everything; returns ``{what: path}``."""
    out = Path(args.out)
    fast = args.fast
    task = (
        make_task(d=50, n_train=1000, n_test=200, seed=args.task_seed)
        if fast
        else make_task(seed=args.task_seed)
    )
    config = RunConfig(
        name="mlp1-adam",
        depth=1,
        width=64 if fast else 512,
        optimizer="adam",
        lr=3e-3 if fast else 1e-3,
        batch_size=200,
        seed=args.seed,
        max_epochs=args.max_epochs or (5 if fast else 50),
    )
    root = out / "manifold"
    run_name = _fresh_run_name(root, "quickstart")
    loggers, where = _loggers(out, run_name, wandb=not args.no_wandb)
    start = time.perf_counter()
    result = train_run(
        task,
        config,
        root=root,
        run_name=run_name,
        probes=probes_for(task, n_probe=200 if fast else 1000),
        schedule=Schedule(log_spaced=15 if fast else 50),
        loggers=loggers,
        progress_bar=not fast and sys.stdout.isatty(),
    )
    seconds = time.perf_counter() - start
    wandb_dir = _finish_wandb(loggers)
    if wandb_dir is not None:
        where["wandb"] = wandb_dir
    stores = {probe: TrajectoryStore(path) for probe, path in result.store_paths.items()}
    where["stores"] = root / run_name
    frame = run_frame(stores["train"], title=f"{run_name} (train probe)")
    figures = write_figures(frame, root / run_name, stem="manifold")  # beside its own stores
    where.update(
        {"png": figures["png"], **({"html": figures["html"]} if "html" in figures else {})}
    )
    _print_summary(stores, where, seconds)
    return where


def _print_summary(
    stores: dict[str, TrajectoryStore], where: dict[str, Path], seconds: float
) -> None:
    """Final progress and error per probe, and where everything went."""
    print(f"\ntrained in {seconds:.0f} s")
    for probe, store in stores.items():
        last = store.records[-1]["metrics"]
        print(
            f"  {probe:5s} probe: progress {last.get('progress', float('nan')):.3f}, "
            f"error {last.get('error', float('nan')):.3f} after step {int(store.steps[-1])}"
        )
    labels = {
        "png": "manifold figure",
        "html": "interactive map",
        "stores": "trajectory stores",
        "tensorboard": "TensorBoard logs",
        "csv": "CSV logs",
        "wandb": "W&B offline run",
    }
    for key, label in labels.items():
        if key in where:
            print(f"  {label:18s} {where[key]}")
    if "tensorboard" in where:
        print(f"\nopen TensorBoard:  tensorboard --logdir {where['tensorboard']}")
    if "wandb" in where:
        print(f"upload to W&B:     wandb sync {where['wandb']}")
    root, run = where["stores"].parent, where["stores"]
    n_runs = sum(1 for p in root.iterdir() if p.is_dir())
    print(f"a reference map:   lightning-manifold reference {run} -o {root / 'reference.npz'}")
    print(f"one-page report:   lightning-manifold report {root} -o {root / 'report.html'}")
    if n_runs >= 2:
        print(f"compare the runs:  lightning-manifold compare {root} -o {root / 'compare'}")
    else:
        print(f"compare runs:      run again with --seed 1, then lightning-manifold compare {root}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0."""
    args = parse_args(argv)
    with torch_threads(args.threads):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
