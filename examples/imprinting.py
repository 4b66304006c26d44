"""Models of other tasks and a contrastive encoder on one map, through imprinting (thesis ch. 3).

    python examples/imprinting.py            # 4 methods x 2 seeds, a few minutes on a laptop CPU
    python examples/imprinting.py --fast     # tiny sizes (the test runs this)

A 10-class version of the synthetic task (sloppy Gaussian inputs labelled by a random teacher,
thesis §2.5.5). Four ways of learning a representation, each from two seeds:

* ``all``: supervised on the 10 classes;
* ``first-half`` / ``second-half``: supervised on classes 0-4 / 5-9 only (5-way heads);
* ``contrastive``: a SimCLR-style encoder (NT-Xent loss, no labels) whose views are the input
  with per-dimension Gaussian noise and a random mask over the input features.

Each is captured by an :class:`~lightning_manifold.imprinting.ImprintedProbe` on the union task
(the held-out samples of all 10 classes, eq. 3.2.2): the classifier rows are imprinted from
the backbone's features (eq. 3.2.1). The ``all`` model is also captured through its own head.
All imprinted trajectories go on one InPCA map (``lightning-manifold embed``'s functions), and
the example prints the chapter's findings as measured here, with where they do not hold:
progress on seen versus novel classes (Result 2, fig. 3.2a), the distance between mean
trajectories over the tube radii (Remark 3.3.3; Result 5 for contrastive learning), the
Riemann lengths (Result 4's measure) and the explained stress (Result 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl
import matplotlib
import numpy as np
import torch
from _synthetic import SyntheticTask, make_task, torch_threads, warm_up_batchnorm
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold import ImprintedProbe, ManifoldCallback, ProbeSet, Schedule, analysis
from lightning_manifold import functional as F
from lightning_manifold.store import TrajectoryStore

matplotlib.use("Agg")
import matplotlib.pyplot as plt

C = 10
HALF = 5
METHODS = ("all", "first-half", "second-half", "contrastive")
SEEN = {
    "all": list(range(C)),
    "first-half": list(range(HALF)),
    "second-half": list(range(HALF, C)),
    "contrastive": [],  # no labels at all
}
COLOURS = {"all": "black", "first-half": "tab:blue", "second-half": "tab:orange",
           "contrastive": "tab:green"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# models


class Learner(pl.LightningModule):
    """An MLP backbone (its output is the representation φ) and a method-specific head.

    ``supervised``: a linear head over the classes of the training task, cross-entropy.
    ``contrastive``: a projection head and the NT-Xent loss between two augmented views
    (SimCLR); the labels are never used.
    """

    def __init__(
        self,
        d: int,
        num_classes: int,
        *,
        method: str,
        width: int,
        lr: float,
        noise: Tensor | None = None,
        mask: float = 0.2,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        self.method = method
        self.lr = lr
        self.backbone = nn.Sequential(
            nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(width, num_classes if method == "supervised" else width)
        self.register_buffer("noise", noise if noise is not None else torch.zeros(d))
        self.mask = mask
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) inputs -> (B, num_classes) logits (supervised) or (B, width) projections."""
        return self.head(self.backbone(x))

    def _view(self, x: Tensor) -> Tensor:
        """An augmented view: per-dimension Gaussian noise, then a random feature mask."""
        noisy = x + torch.randn_like(x) * self.noise
        keep = (torch.rand_like(x) > self.mask).to(x.dtype)
        return noisy * keep

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.method == "supervised":
            return nn.functional.cross_entropy(self(x), y)
        z = nn.functional.normalize(self(torch.cat([self._view(x), self._view(x)])), dim=1)
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(float("-inf"))
        n = x.shape[0]
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(x.device)
        return nn.functional.cross_entropy(sim, positives)  # NT-Xent

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# --------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class Settings:
    """Sizes of one invocation."""

    d: int
    n_train: int
    n_probe: int
    width: int
    epochs: int
    seeds: int
    captures: int
    batch_size: int

    @staticmethod
    def of(fast: bool, seeds: int) -> Settings:
        if fast:
            return Settings(d=20, n_train=400, n_probe=150, width=16, epochs=2, seeds=2,
                            captures=5, batch_size=40)  # fmt: skip
        return Settings(d=50, n_train=5000, n_probe=1000, width=64, epochs=12, seeds=seeds,
                        captures=25, batch_size=256)  # fmt: skip


def _training_data(task: SyntheticTask, method: str) -> tuple[Tensor, Tensor, int]:
    """Inputs, labels and class count of the task a method trains on (halves relabelled 0-4)."""
    x, y = task.x_train, task.y_train
    if method == "first-half":
        keep = y < HALF
        return x[keep], y[keep], HALF
    if method == "second-half":
        keep = y >= HALF
        return x[keep], y[keep] - HALF, HALF
    return x, y, C


def train(
    task: SyntheticTask, method: str, seed: int, settings: Settings, root: Path
) -> dict[str, str]:
    """Train one method from one seed, capturing imprinted predictions on the union task.

    Returns ``{probe name: store path}``.
    """
    x, y, num_classes = _training_data(task, method)
    torch.manual_seed(seed)
    noise = 0.5 * task.x_train.std(0)  # augmentation noise on the scale of each input dimension
    model = Learner(
        task.dim,
        num_classes,
        method="contrastive" if method == "contrastive" else "supervised",
        width=settings.width,
        lr=1e-3 if method == "contrastive" else 3e-3,
        noise=noise,
    )
    warm_up_batchnorm(model, x)
    x_probe, y_probe = task.x_test[: settings.n_probe], task.y_test[: settings.n_probe]
    probes: list[ProbeSet] = [
        ImprintedProbe(x_probe, y_probe, features="backbone", name="union",
                       seen_classes=SEEN[method], num_classes=C, batch_size=1000)
    ]  # fmt: skip
    if method == "all":  # the same samples through the model's own head
        probes.append(ProbeSet.from_tensors(x_probe, y_probe, name="head", num_classes=C))
    callback = ManifoldCallback(
        probes,
        schedule=Schedule(log_spaced=settings.captures),
        dirpath=root,
        run_name=f"{method}-seed{seed}",
        log_scalars=False,
        plots=False,
        meta={"config": method},
    )
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=min(settings.batch_size, len(y)),  # a full batch at least (BatchNorm)
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=settings.epochs,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, loader)
    return callback.store_paths


# --------------------------------------------------------------------------------------------
# analysis


def _trajectory(store: TrajectoryStore) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, C) float64 log-probabilities of the valid snapshots and their (T,) progress."""
    valid = store.valid
    return np.asarray(store.log_probs(valid_only=True), dtype=np.float64), store.metrics(
        "progress"
    )[valid]


def _f64(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _seen_novel(store: TrajectoryStore) -> tuple[float, float, float]:
    """Final model's mean per-class progress on seen and novel classes, and on the whole task."""
    log_p, prog = _trajectory(store)
    seen = store.meta["imprinting"]["seen_classes"]
    split = F.seen_novel_progress(torch.from_numpy(log_p[-1]), store.labels, seen)
    return float(split.seen_mean[0]), float(split.novel_mean[0]), float(prog[-1])


def _tube_ratios(
    stores: dict[str, list[TrajectoryStore]], base: str, points: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method other than ``base``: the progress grid both methods' runs all reached and
    the normalised distance between the two mean trajectories on it (Remark 3.3.3)."""
    trajectories = {m: [_trajectory(s) for s in runs] for m, runs in stores.items()}

    def reindexed(m: str, grid: np.ndarray) -> Tensor:
        tr = trajectories[m]
        return F.reindex_runs([np.exp(lp) for lp, _ in tr], [p for _, p in tr], grid)[0]

    out = {}
    for m in stores:
        if m == base:
            continue
        pair = trajectories[base] + trajectories[m]
        lo, hi = max(float(p.min()) for _, p in pair), min(float(p.max()) for _, p in pair)
        if hi <= lo:
            out[m] = (np.array([]), np.array([]))
            continue
        grid = np.linspace(lo, hi, points)
        out[m] = (
            grid,
            F.normalized_tube_distance(reindexed(base, grid), reindexed(m, grid)).numpy(),
        )
    return out


def analyse(root: Path, out: Path, settings: Settings) -> list[str]:
    """The chapter's findings as measured on the stores under ``root``; writes the figures."""
    stores = {m: [TrajectoryStore(root / f"{m}-seed{s}" / "union") for s in range(settings.seeds)]
              for m in METHODS}  # fmt: skip
    findings: list[str] = []
    final = {m: [_seen_novel(s) for s in runs] for m, runs in stores.items()}
    mean = {m: np.mean(v, axis=0) for m, v in final.items()}  # (seen, novel, whole task)

    # Result 2 / fig. 3.2a: progress on novel classes
    whole_all = mean["all"][2]
    for half, (first, last) in (("first-half", (0, 4)), ("second-half", (5, 9))):
        seen, novel, whole = mean[half]
        other = "5-9" if first == 0 else "0-4"
        all_on_other = np.mean(
            [
                float(
                    F.seen_novel_progress(
                        torch.from_numpy(_trajectory(s)[0][-1]), s.labels, SEEN[half]
                    ).novel_mean[0]
                )
                for s in stores["all"]
            ]
        )
        findings.append(
            f"training on classes {first}-{last} reaches progress {seen:.3f} on them and "
            f"{novel:.3f} on the novel classes {other} (a model trained on all 10 classes: "
            f"{all_on_other:.3f} there); on the whole 10-class task {whole:.3f}, "
            f"{whole / whole_all:.0%} of the all-classes model's {whole_all:.3f}"
        )
        novel_start = np.mean(
            [
                float(
                    F.seen_novel_progress(
                        torch.from_numpy(_trajectory(s)[0][0]), s.labels, SEEN[half]
                    ).novel_mean[0]
                )
                for s in stores[half]
            ]
        )
        findings.append(
            f"  -> progress on the novel classes beyond the initial model's {novel_start:.3f}: "
            + ("holds" if novel > novel_start else "does NOT hold here")
            + (" ; seen > novel: holds" if seen > novel else " ; seen > novel: does NOT hold")
        )
    whole_c = mean["contrastive"][2]
    first = [s.metrics("progress")[s.valid][0] for s in stores["contrastive"]]
    err = np.mean([s.metrics("error")[s.valid][[0, -1]] for s in stores["contrastive"]], axis=0)
    findings.append(
        f"the contrastive encoder (no labels) reaches progress {whole_c:.3f} on the 10-class "
        f"task after imprinting, {whole_c / whole_all:.0%} of the supervised model's; its "
        f"imprinted error goes from {err[0]:.3f} to {err[1]:.3f}"
    )
    confidence = np.mean(  # mean top-1 probability of the first and last imprinted model
        [np.exp(_trajectory(s)[0][[0, -1]].max(-1)).mean(-1) for s in stores["contrastive"]],
        axis=0,
    )
    if whole_c > np.mean(first):
        verdict = "holds"
    else:
        verdict = (
            f"does NOT hold here: progress falls from {np.mean(first):.3f} while the error goes "
            f"from {err[0]:.3f} to {err[1]:.3f}; the mean top-1 probability goes from "
            f"{confidence[0]:.3f} to {confidence[1]:.3f} (imprinting uses the features' own "
            "scale: flatter class similarities give less confident predictions)"
        )
    findings.append(f"  -> contrastive learning makes progress (Result 5): {verdict}")

    # §3.5.4: imprinting vs the trained head, same model
    head_vs = []
    for s in range(settings.seeds):
        head = TrajectoryStore(root / f"all-seed{s}" / "head")
        imp = stores["all"][s]
        lp_h, lp_i = head.log_probs(valid_only=True)[-1], imp.log_probs(valid_only=True)[-1]
        d = float(F.bhattacharyya_from_log_probs(_f64(lp_h), _f64(lp_i)))
        head_vs.append((head.metrics("progress")[-1], imp.metrics("progress")[-1],
                        head.metrics("error")[-1], imp.metrics("error")[-1], d))  # fmt: skip
    hp, ip, he, ie, d = np.mean(head_vs, axis=0)
    findings.append(
        f"the all-classes model through its own head: progress {hp:.3f}, error {he:.3f}; "
        f"imprinted: progress {ip:.3f}, error {ie:.3f} (d_B between the two {d:.3f}); "
        + (
            "in error imprinting is close to the trained head (§3.5.4)"
            if abs(ie - he) < 0.05
            else "in error imprinting is NOT close to the trained head here"
        )
        + (
            f", in progress it is behind ({ip:.3f} vs {hp:.3f}: less confident predictions)"
            if ip < hp - 0.05
            else ""
        )
    )

    # Remark 3.3.3 / Result 5: tubes
    ratios = _tube_ratios(stores, "all", points=30)
    for m, (grid, r) in ratios.items():
        if not grid.size:
            findings.append(f"{m} vs all: the runs share no progress range; no tube comparison")
            continue
        findings.append(
            f"{m} vs all, mean trajectories over progress {grid[0]:.2f}-{grid[-1]:.2f}: "
            f"distance / mean tube radius from {np.nanmin(r):.2f} to {np.nanmax(r):.2f}; the "
            f"tubes intersect (< 1) over {np.mean(r < 1):.0%} of that range"
        )
    medians = {m: np.nanmedian(r) if r.size else np.inf for m, (_, r) in ratios.items()}
    if not ratios["contrastive"][0].size:
        verdict = "cannot be measured here (no shared progress range)"
    elif medians["contrastive"] <= min(medians["first-half"], medians["second-half"]):
        verdict = "holds"
    else:
        verdict = "does NOT hold here"
    findings.append(
        f"  -> contrastive closer to supervised than the half-task models (Result 5): {verdict}"
    )

    # Result 4's measure: Riemann length of the imprinted trajectories
    lengths = {m: np.mean([float(F.riemann_length_from_log_probs(_trajectory(s)[0]))
                           for s in runs]) for m, runs in stores.items()}  # fmt: skip
    findings.append(
        "Riemann length (sum of geodesic steps, rad/sample): "
        + ", ".join(f"{m} {v:.3f} ({v / lengths['all']:.2f}x)" for m, v in lengths.items())
        + " (the thesis' 40x is for episodic 2-way meta-learning, not trained here)"
    )

    # Result 1: one low-dimensional map
    union = [s for m in METHODS for s in stores[m]]
    names = analysis.run_names(union)
    joint = analysis.embed_stores(union, names, n_components=10)
    stress = analysis.explained_stress_summary(joint)
    findings.append(
        f"joint InPCA of {joint.num_models} imprinted models: explained stress "
        + ", ".join(f"top {k}: {v:.1%}" for k, v in stress.items())
        + " (the thesis: 80% in the top 3 for 2430 ImageNet models)"
    )
    out.mkdir(parents=True, exist_ok=True)
    frame = analysis.embedding_frame(joint, title="imprinted onto the 10-class task")
    analysis.write_figures(frame, out, stem="map")
    _chapter_figure(stores, ratios, out / "chapter3.png")
    return findings


def _chapter_figure(
    stores: dict[str, list[TrajectoryStore]],
    ratios: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
) -> None:
    """Progress on seen / novel classes during training, the top-2 InPCA of the mean
    trajectories, and the normalised distance to the supervised tube."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for m, runs in stores.items():
        for k, store in enumerate(runs):
            log_p, _ = _trajectory(store)
            steps = store.steps[store.valid]
            split = F.seen_novel_progress(torch.from_numpy(log_p), store.labels, SEEN[m])
            label = m if k == 0 else None
            x = np.maximum(steps, 1)
            if m == "all" or m == "contrastive":
                whole = store.metrics("progress")[store.valid]
                ax.plot(
                    x, whole, color=COLOURS[m], label=f"{label} (all classes)" if label else None
                )
            else:
                ax.plot(x, split.seen_mean.numpy(), color=COLOURS[m],
                        label=f"{label}: seen" if label else None)  # fmt: skip
                ax.plot(x, split.novel_mean.numpy(), color=COLOURS[m], ls="--",
                        label=f"{label}: novel" if label else None)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("progress (mean over classes)")
    ax.set_title("progress on seen / novel classes (fig. 3.2a)")
    ax.legend(fontsize=7)

    ax = axes[1]
    per_class = {m: np.mean([F.seen_novel_progress(torch.from_numpy(_trajectory(s)[0][-1]),
                                                   s.labels, SEEN[m]).per_class[0].numpy()
                             for s in runs], axis=0) for m, runs in stores.items()}  # fmt: skip
    width = 0.2
    for i, (m, v) in enumerate(per_class.items()):
        ax.bar(np.arange(C) + (i - 1.5) * width, v, width, color=COLOURS[m], label=m)
    ax.axvline(HALF - 0.5, color="grey", lw=0.8)
    ax.set_xticks(range(C))
    ax.set_xlabel("class c of the union task")
    ax.set_ylabel("final progress t^c on class c")
    ax.set_title("per-class progress of the final models")
    ax.legend(fontsize=7)

    ax = axes[2]
    for m, (grid, r) in ratios.items():
        ax.plot(grid, r, color=COLOURS[m], label=f"{m} vs all")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("progress")
    ax.set_ylabel("2 d_B(means) / (r1 + r2)")
    ax.set_title("distance to the supervised tube (Remark 3.3.3)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# entry point


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--out", default="runs/imprinting", help="output directory")
    p.add_argument("--seeds", type=int, default=2, help="seeds per method (default 2, >= 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train every method and seed, analyse, print the findings; returns 0."""
    args = parse_args(argv)
    if args.seeds < 2:
        raise SystemExit("--seeds must be >= 2 (a tube needs seeds)")
    settings = Settings.of(args.fast, args.seeds)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # 8 trainers: keep it quiet
    out = Path(args.out)
    root = out / "runs"
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} already holds runs: choose another --out or delete it")
    task = make_task(d=settings.d, n_train=settings.n_train, n_test=settings.n_probe,
                     num_classes=C)  # fmt: skip
    with torch_threads(args.threads):
        for method in METHODS:
            for seed in range(settings.seeds):
                train(task, method, seed, settings, root)
                print(f"trained {method}-seed{seed}", flush=True)
        findings = analyse(root, out, settings)
    print("\nChapter 3 findings, as measured here:")
    for line in findings:
        print(("  " if not line.startswith("  ") else "") + line)
    print(f"\nfigures: {out / 'map.png'} (one map), {out / 'chapter3.png'}")
    print(f"same map from the command line:  lightning-manifold embed {root} --probe union")
    return 0


if __name__ == "__main__":
    sys.exit(main())
