"""How well the live 4-point frame (thesis §2.4, eq. 2.4.1) explains pairwise distances.

Students of the synthetic task (``examples/_synthetic.py``, thesis §2.5.5) are trained with
plain loops and their predictions on a 1000-sample train probe recorded at log-spaced steps.
For each run's trajectory (T models), the explained pairwise distance (eq. 2.4.2) of the
top-3 coordinates is compared between:

* ``full``: the InPCA of the trajectory's own T x T distance matrix (eq. 2.2.6);
* ``4pt final``: every snapshot placed (eq. 2.2.9) in the 4-point frame built from the run's
  own P_s1, P_s2 (eq. 2.4.1, from all its snapshots);
* ``live``: the coordinates that ``OnlineManifold`` produced during the run (provisional
  geodesic basis points until P_s is adopted, then the older coordinates moved by Kabsch).

Run::

    python benchmarks/live_frame.py [--epochs 6] [--levels 0.3 0.7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _synthetic import MLPStudent, make_task, warm_up_batchnorm

from lightning_manifold import functional as F
from lightning_manifold.online import OnlineManifold
from lightning_manifold.snapshot import Snapshot

CONFIGS = [  # (depth, optimizer, lr)
    (1, "sgd", 0.1),
    (2, "sgd", 0.1),
    (1, "adam", 1e-3),
    (0, "nesterov", 0.05),
]


def trajectory(task, depth: int, optimizer: str, lr: float, epochs: int, seed: int):
    """(T, N, C) float64 log-probabilities on the probe at log-spaced steps, and the steps."""
    torch.manual_seed(seed)
    model = MLPStudent(
        task.dim, task.num_classes, depth=depth, width=256, optimizer=optimizer, lr=lr,
        output_scale=0.1,
    )  # fmt: skip
    warm_up_batchnorm(model, task.x_train)
    opt = model.configure_optimizers()
    probe_x = task.x_train[:1000]
    batches = task.x_train.shape[0] // 100
    total = epochs * batches
    capture = set(np.unique(np.geomspace(1, total, 40).astype(int)).tolist()) | {0}
    out, steps = [], []
    step = 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(task.x_train.shape[0], generator=g)
        for b in range(batches):
            if step in capture:
                model.eval()
                with torch.no_grad():
                    out.append(torch.log_softmax(model(probe_x).double(), -1))
                steps.append(step)
                model.train()
            idx = order[b * 100 : (b + 1) * 100]
            loss = nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return torch.stack(out), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--levels", type=float, nargs=2, default=(0.3, 0.7))
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = make_task(d=100, n_train=4000, n_test=500)
    y = task.y_train[:1000]
    C = task.num_classes
    rows = []
    print(f"levels s1, s2 = {tuple(args.levels)}, sigma = {F.BASIS_WIDTH}")
    print(f"{'run':<22}{'T':>4}{'max s':>7}{'full':>8}{'4pt final':>11}{'live':>8}{'refits':>8}")
    for depth, optimizer, lr in CONFIGS:
        for seed in range(args.seeds):
            lp, steps = trajectory(task, depth, optimizer, lr, args.epochs, seed)
            D = F.bhattacharyya_from_log_probs(lp).double()
            D = 0.5 * (D + D.T)
            D.fill_diagonal_(0)
            full = F.inpca(D, n_components=3)
            e_full = float(F.explained_pairwise_distance(D, full.coords, full.signs))
            online = OnlineManifold(y, C, basis_progress=tuple(args.levels))
            for model_lp, s in zip(lp, steps):
                online.update(Snapshot("train", int(s), 0, model_lp, y, 0.0))
            frame_state = online._self
            assert frame_state is not None
            fit = frame_state.fit
            signs = fit.signs
            live = torch.from_numpy(online.frame().live_coords)
            e_live = float(F.explained_pairwise_distance(D, live, signs))
            progress = F.progress_from_log_probs(lp, y)
            basis = F.progress_weighted_average(lp.exp(), progress, torch.tensor(args.levels))
            four = F.four_point_basis(basis.log(), y)
            e = four.embedding
            X = F.project_from_stats(
                F.four_point_distances(lp, basis.log(), y),
                e.row_means, e.grand_mean, e.eigenvalues, e.eigenvectors,
            )  # fmt: skip
            e_final = float(F.explained_pairwise_distance(D, X, e.signs))
            name = f"depth{depth}-{optimizer}-seed{seed}"
            rows.append((e_full, e_final, e_live))
            print(
                f"{name:<22}{len(steps):>4}{float(progress.max()):>7.2f}{e_full:>8.3f}"
                f"{e_final:>11.3f}{e_live:>8.3f}{frame_state.refits:>8}"
            )
    mean = np.mean(np.array(rows), axis=0)
    print(f"{'mean':<33}{mean[0]:>8.3f}{mean[1]:>11.3f}{mean[2]:>8.3f}")


if __name__ == "__main__":
    main()
