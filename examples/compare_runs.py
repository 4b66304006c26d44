"""Compare training configurations on the thesis' synthetic task: one map, one dendrogram.

    python examples/compare_runs.py            # 20 runs, a few minutes on a laptop CPU
    python examples/compare_runs.py --fast     # 2 architectures x 2 seeds, tiny sizes

Trains MLP students of two architectures (one hidden layer of width 512, two hidden layers of
width 32) with several optimisation settings (SGD, SGD + Nesterov, Adam, batch size, weight
decay) and seeds, as in thesis §2.5.5. The first run becomes the *reference*: its InPCA map is
fitted and saved (``reference.npz``); every later run is placed on that map, live when the
callback accepts ``reference=``, otherwise by replaying its stored snapshots afterwards, and
compared with the reference run at equal progress. It ends with the comparison the command
line makes (``lightning-manifold compare`` / ``embed``, same functions):

* ``compare/trajectory_distances.csv``, ``compare/dendrogram.png`` / ``.json``: distances
  between whole trajectories at equal progress (eq. 2.2.5) and their average-linkage
  clustering (thesis fig. 2.6a): the architectures split first;
* ``compare/tube_widths.csv``: how far seeds of one configuration stray from their mean;
* ``embedding/``: the joint InPCA map of every run and the explained stress of its top 1, 3
  and 10 dimensions (the thesis reports about 99% in the top 10 for this task).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _synthetic import (
    RunConfig,
    SyntheticTask,
    callback_accepts,
    make_task,
    probes_for,
    torch_threads,
    train_run,
)

from lightning_manifold import (
    OnlineManifold,
    ReferenceEmbedding,
    Schedule,
    TrajectoryStore,
    analysis,
)
from lightning_manifold.online import OnlineResult

#: the two architectures (depth, width)
ARCHITECTURES = {"mlp1": (1, 512), "mlp2": (2, 32)}


def configurations(*, fast: bool, seeds: int) -> list[RunConfig]:
    """The runs to train, reference first.

    Fast: both architectures with SGD, ``seeds`` seeds each. Full: both architectures with
    SGD (batch 200 and 500), SGD + Nesterov, Adam and SGD with weight decay 1e-5.
    """
    epochs = 20
    base = []
    for arch, (depth, width) in ARCHITECTURES.items():
        sgd = RunConfig(name=f"{arch}-sgd", depth=depth, width=width, max_epochs=epochs)
        base.append(sgd)
        if not fast:
            base += [
                replace(sgd, name=f"{arch}-sgd-bs500", batch_size=500),
                replace(sgd, name=f"{arch}-nesterov", optimizer="nesterov", lr=0.02),
                replace(sgd, name=f"{arch}-adam", optimizer="adam", lr=1e-3),
                replace(sgd, name=f"{arch}-sgd-wd", weight_decay=1e-5),
            ]
    return [config.with_seed(seed) for config in base for seed in range(seeds)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="2 architectures x 2 seeds, tiny sizes")
    p.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per configuration (default: 2)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest for tiny MLPs)"
    )
    return p.parse_args(argv)


def _task(fast: bool) -> SyntheticTask:
    return make_task(d=50, n_train=1000, n_test=200) if fast else make_task()


def _against_reference(store: TrajectoryStore, reference: ReferenceEmbedding) -> str:
    """How a finished run compares with the reference run at equal progress.

    Its stored snapshots are replayed through an ``OnlineManifold`` holding the reference (what
    the callback does live once it takes ``reference=``).
    """
    results = _replay(store, reference)
    d = np.array([r.reference_distance for r in results], dtype=float)
    ratio = np.array([r.relative_speed for r in results], dtype=float)  # step / reference step
    prog = np.array([r.progress for r in results], dtype=float)
    d = d[np.isfinite(d)]
    if not d.size:
        return "never at a progress the reference reached"
    text = f"mean d_B to the reference at equal progress {d.mean():.4f}"
    # relative speed changes along training: show it at a few progress values, not as one number
    ok = np.isfinite(ratio) & (ratio > 0)
    speeds = []
    for s in (0.2, 0.5, 0.8):
        near = ok & (np.abs(prog - s) <= 0.1)
        if near.any():
            i = np.flatnonzero(near)[np.argmin(np.abs(prog[near] - s))]
            speeds.append(f"{ratio[i]:.2g}x at {prog[i]:.2f}")
    if speeds:
        text += ", steps vs the reference: " + ", ".join(speeds)
    return text


def _replay(store: TrajectoryStore, reference: ReferenceEmbedding) -> list[OnlineResult]:
    """Every valid snapshot of ``store`` placed on ``reference``."""
    online = OnlineManifold(store.labels, store.num_classes, reference=reference, probe="train")
    results = (online.update(s) for s in analysis.snapshots_from_store(store))
    return [r for r in results if r is not None]


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Train every configuration, then compare; returns ``{what: path}``."""
    out = Path(args.out)
    root = out / "runs"
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} already holds runs: choose another --out or delete it")
    task = _task(args.fast)
    probes = probes_for(task, n_probe=500 if args.fast else 1000)
    if args.fast:
        probes = probes[:1]  # the train probe only: fewer files to write
    schedule = Schedule(log_spaced=40)
    configs = configurations(fast=args.fast, seeds=args.seeds)
    live = callback_accepts("reference")
    reference: ReferenceEmbedding | None = None
    ref_path = out / "reference.npz"
    start = time.perf_counter()
    for i, config in enumerate(configs):
        t0 = time.perf_counter()
        result = train_run(task, config, root=root, probes=probes, schedule=schedule,
                           reference=reference if live else None)  # fmt: skip
        store = TrajectoryStore(result.store_paths["train"])
        last = store.records[-1]["metrics"]
        line = (
            f"[{i + 1}/{len(configs)}] {config.run_name:24s} {time.perf_counter() - t0:5.1f} s  "
            f"progress {last['progress']:.3f}  error {last['error']:.3f}"
        )
        if reference is None:
            reference = ReferenceEmbedding.from_store(store, n_components=10)
            reference.save(ref_path)
            line += f"  -> reference {ref_path}"
        else:
            line += "  " + _against_reference(store, reference)
        print(line, flush=True)
    print(f"trained {len(configs)} runs in {time.perf_counter() - start:.0f} s\n")
    return {"runs": root, "reference": ref_path, **_compare(root, out, reference)}


def _compare(root: Path, out: Path, reference: ReferenceEmbedding | None) -> dict[str, Path]:
    """The comparison of ``lightning-manifold compare`` and ``embed``, printed and written."""
    stores = analysis.resolve_stores([root], "train", require_valid=2)
    names = analysis.run_names(stores)
    comparison = analysis.compare_stores(stores, names=names)
    written = {f"compare_{k}": v for k, v in comparison.write(out / "compare").items()}
    left, right = comparison.top_split
    print("trajectory distances (eq. 2.2.5), average-linkage dendrogram, top split:")
    print(f"  {{{', '.join(left)}}}\n  {{{', '.join(right)}}}")
    for group, width in comparison.mean_tube_width().items():
        print(f"  tube width across seeds of {group}: {width:.4f}")

    joint = analysis.embed_stores(stores, names, n_components=10)
    stress = analysis.explained_stress_summary(joint)
    print(
        f"\njoint InPCA of {joint.num_models} models (+ ignorance, geodesic, truth): explained "
        "stress " + ", ".join(f"top {d}: {v:.1%}" for d, v in stress.items())
    )
    figures = analysis.write_figures(
        analysis.embedding_frame(joint), out / "embedding", stem="embedding"
    )
    header, rows = analysis.coordinate_rows(joint)
    analysis.write_csv(out / "embedding" / "coordinates.csv", header, rows)
    written.update({f"embedding_{k}": v for k, v in figures.items()})
    if reference is not None:  # the last run, projected onto the reference map
        frame = analysis.run_frame(
            stores[-1], reference=reference, title=f"{names[-1]} on the reference"
        )
        written.update(
            {
                f"projected_{k}": v
                for k, v in analysis.write_figures(frame, out, stem="projected").items()
            }
        )
    for key, path in written.items():
        print(f"  {key:20s} {path}")
    print(f"\nsame from the command line:  lightning-manifold compare {root} -o {out / 'compare'}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0."""
    args = parse_args(argv)
    with torch_threads(args.threads):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
