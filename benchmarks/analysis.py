"""Benchmark of the comparison path (issue 13): 18 runs, 900 models, N=1400, C=10.

Generates 18 stored runs without training -- 2 "architectures" x 3 "optimisers" x 3 seeds,
50 captures each -- whose logits move from ignorance towards truth along a configuration-
specific direction::

    z_r(tau) = a_o(tau) * (4 onehot(y) + 2 B_arch + B_opt + 0.5 E_r) + 0.1 noise_t

with ``a_o(tau) = 1 - exp(-tau / tau_o)`` on log-spaced steps (each optimiser its own speed),
so runs start at ignorance, reach progress 0.6-0.95, and architectures form distinct tubes.
Then times, on ``--threads`` torch threads (default 2):

* load: reading the stores, and progress (eq. 2.2.4) of every model;
* d_B: the (918, 918) Bhattacharyya matrix of the models and the landmarks (eq. 2.2.2);
* eigensolver: InPCA with 10 and 50 components (partial Lanczos solver) and the full
  spectrum (eq. 2.2.6), each against a plain numpy reference (double-centring, full
  ``np.linalg.eigh``, sort by |λ|) timed in the same process;
* re-indexing: every run at 100 progress values (``F.reindex_by_progress``);
* trajectory distances: the batched matrix against a loop over pairs of
  ``F.trajectory_distance`` (same numbers), with their ratio;
* the CLI end to end in fresh subprocesses: ``--help``, ``inspect``, ``embed`` (with and
  without figures, and with the figures drawn in the command's own process instead of its
  figure worker), ``compare`` (likewise), ``report``.

Timings on a shared 2-core machine depend on what else runs: torch's 2 intra-op threads slow
down several-fold whenever another process takes a core. The load is printed with the table.

Usage::

    python benchmarks/analysis.py                 # the 18-run case
    python benchmarks/analysis.py --quick         # 6 runs x 20 captures, N=300
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_manifold import analysis
from lightning_manifold import functional as F
from lightning_manifold.store import TrajectoryStore, store_path

ARCHS = ("mlp", "cnn")
OPTIMISERS = {"sgd": 0.5, "nesterov": 0.3, "adam": 0.15}  # time constant of a_o(tau)


def generate(root: Path, *, seeds: int, captures: int, n: int, c: int) -> list[Path]:
    """Write ``len(ARCHS) * len(OPTIMISERS) * seeds`` stores under ``root``; their paths."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, n)
    onehot = np.eye(c)[y]
    b_arch = {a: rng.normal(size=(n, c)) for a in ARCHS}
    b_opt = {o: rng.normal(size=(n, c)) for o in OPTIMISERS}
    steps = np.unique(np.geomspace(1, 5000, captures).astype(int))
    while steps.size < captures:  # log spacing repeats small steps: fill in at the end
        steps = np.r_[steps, steps[-1] + 1]
    tau = steps / steps[-1]
    paths = []
    for arch, (opt, tc), seed in itertools.product(ARCHS, OPTIMISERS.items(), range(seeds)):
        run = f"{arch}-{opt}-seed{seed}"
        direction = 4 * onehot + 2 * b_arch[arch] + b_opt[opt] + 0.5 * rng.normal(size=(n, c))
        store = TrajectoryStore.create(
            store_path(root, run, "train"), labels=y, num_classes=c, probe_name="train",
            run_name=run, durable=False,
        )  # fmt: skip
        for t, step in zip(tau, steps):
            z = (1 - np.exp(-t / tc)) * direction + 0.1 * rng.normal(size=(n, c))
            z = z - z.max(-1, keepdims=True)
            lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            store.append(lp.astype(np.float32), step=int(step), epoch=0)
        paths.append(store.path)
    return paths


def plain_inpca(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """InPCA as the authors' reference code does it, in plain numpy: double-centre ``-D / 2``,
    full ``np.linalg.eigh``, sort by |λ|. Returns eigenvalues and coordinates, all m axes."""
    m = D.shape[0]
    L = np.eye(m) - 1.0 / m
    lam, V = np.linalg.eigh(-0.5 * L @ D @ L)
    order = np.argsort(-np.abs(lam), kind="stable")
    return lam[order], V[:, order] * np.sqrt(np.abs(lam[order]))


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cli(args: list[str], threads: int, *, worker: bool = True) -> float:
    """Wall time of ``python -m lightning_manifold <args>`` in a fresh process (``worker``:
    figures drawn by the figure worker process, else in the command's own process)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["LIGHTNING_MANIFOLD_FIGURE_WORKER"] = "1" if worker else "0"
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lightning_manifold", *args],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"lightning-manifold {' '.join(args)} failed:\n{done.stderr}")
    return wall


def main(argv: list[str] | None = None) -> int:
    """Generate the runs, time every stage, print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="6 runs x 20 captures, N=300")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI timings")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds, captures, n, c = (1, 20, 300, 10) if args.quick else (3, 50, 1400, 10)
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        t_gen, _ = timed(lambda: generate(root, seeds=seeds, captures=captures, n=n, c=c))
        stores = analysis.resolve_stores([root], require_valid=2)
        m = sum(len(s) for s in stores)
        print(f"{len(stores)} runs, {m} models, N={n}, C={c}; generated in {t_gen:.1f} s")
        names = analysis.run_names(stores)
        groups = analysis.run_groups(stores, names)

        t_read, lps = timed(
            lambda: [torch.from_numpy(np.asarray(s.log_probs(), dtype=np.float64)) for s in stores]
        )
        rows.append(("load: read stores", t_read, f"{m} x ({n}, {c}) float32 -> float64"))
        labels = torch.from_numpy(stores[0].labels)
        t_prog, _ = timed(lambda: [F.progress_from_log_probs(lp, labels) for lp in lps])
        rows.append(("load: progress (eq. 2.2.4)", t_prog, f"{m} models"))
        t_load, trajs = timed(lambda: analysis.load_trajectories(stores, names, groups))
        rows.append(("load_trajectories (both)", t_load, ""))

        lp_all = torch.cat(lps)
        t_db, D = timed(lambda: F.bhattacharyya_from_log_probs(lp_all).to(torch.float64))
        rows.append(("d_B matrix", t_db, f"({m}, {m})"))
        D = 0.5 * (D + D.T)
        D.fill_diagonal_(0.0)
        D_np = D.numpy()
        t_plain, (lam_plain, _) = timed(lambda: plain_inpca(D_np), repeat=2)
        rows.append(("InPCA plain numpy reference, all", t_plain, "double-centre, np eigh"))
        for k in (10, 50, None):
            t_eig, res = timed(lambda k=k: F.inpca(D, n_components=k), repeat=2)
            diff = np.abs(res.eigenvalues.numpy() - lam_plain[: res.eigenvalues.numel()]).max()
            rows.append(
                (f"InPCA eigensolver, k={k or 'all'}", t_eig, f"F.inpca: {t_eig / t_plain:.2f}x "
                 f"the plain reference's time; max |dλ| {diff:.1e}")
            )  # fmt: skip

        grid = torch.linspace(0.0, 1.0, 100, dtype=torch.float64)
        t_re, _ = timed(
            lambda: [F.reindex_by_progress(t.probs, t.progress, grid) for t in trajs], repeat=2
        )
        rows.append(("re-indexing, every run x 100", t_re, "F.reindex_by_progress"))

        t_batch, D_traj = timed(lambda: analysis.trajectory_distance_matrix(trajs), repeat=2)
        rows.append(("trajectory distances, batched", t_batch, f"{len(trajs)} runs"))
        pairs = list(itertools.combinations(range(len(trajs)), 2))

        def loop() -> np.ndarray:
            out = np.zeros_like(D_traj)
            for i, j in pairs:
                u, v = trajs[i], trajs[j]
                out[i, j] = float(F.trajectory_distance(u.probs, u.progress, v.probs, v.progress))
            return out

        t_loop, D_loop = timed(loop)
        agree = np.abs(np.triu(D_loop, 1) - np.triu(D_traj, 1)).max()
        rows.append(
            ("trajectory distances, pair loop", t_loop, f"{t_loop / t_batch:.1f}x the batched "
             f"time; max |diff| {agree:.1e}")
        )  # fmt: skip
        t_len, _ = timed(lambda: [F.riemann_length(t.probs) for t in trajs])
        rows.append(("Riemann lengths", t_len, ""))

        if not args.no_cli:
            out = Path(tmp) / "out"
            rows.append(("CLI --help", cli(["--help"], args.threads), "fresh process"))
            rows.append(("CLI inspect", cli(["inspect", str(root)], args.threads), ""))
            embed = ["embed", str(root), "-o", str(out / "e")]
            rows.append(("CLI embed", cli(embed, args.threads), "PNG + HTML + CSV"))
            rows.append(
                ("CLI embed, figures in-process", cli(embed, args.threads, worker=False),
                 "LIGHTNING_MANIFOLD_FIGURE_WORKER=0")
            )  # fmt: skip
            rows.append(("CLI embed --no-figures", cli([*embed, "--no-figures"], args.threads), ""))
            rows.append(
                ("CLI embed --stress-at 1,3,10,25,50",
                 cli([*embed, "--stress-at", "1,3,10,25,50", "--no-figures"], args.threads), "")
            )  # fmt: skip
            compare = ["compare", str(root), "-o", str(out / "c"), "--clusters", "2"]
            rows.append(("CLI compare", cli(compare, args.threads), "dendrogram + tubes PNG"))
            rows.append(
                ("CLI compare, figures in-process", cli(compare, args.threads, worker=False),
                 "LIGHTNING_MANIFOLD_FIGURE_WORKER=0")
            )  # fmt: skip
            rows.append(
                ("CLI compare --no-figures", cli([*compare, "--no-figures"], args.threads), "")
            )
            report = ["report", str(root), "-o", str(out / "r.html")]
            rows.append(("CLI report", cli(report, args.threads), "one HTML page"))
    print(
        f"torch threads: {args.threads}; load: {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (1-min average)"
    )
    for what, sec, note in rows:
        print(f"  {what:38s} {sec:8.3f} s  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
