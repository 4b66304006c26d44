"""Benchmark of the scale module (issue 7): exact InPCA of 20,000 models, landmark InPCA of 150,000.

Each part runs in a fresh Python subprocess so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which counts numpy and torch buffers and
memory-mapped pages, unlike tracemalloc) is its own.

Parts:
    kernel    d_B kernel speed on one block: pair-samples per second (pairs x N).
    gen-*     generate trajectories (runs x snapshots of (N, C) float32 log-probabilities)
              into an .npy file, written with explicit offsets.
    exact     blocked pairwise d_B (eq. 2.2.2) into an (m, m) .npy + top-k InPCA (eq. 2.2.6) with
              the partial eigensolver; explained stress (eq. 2.2.8).
    landmark  landmark InPCA (farthest-point landmarks, eq. 2.2.9 projection) of all models,
              with the explained pairwise distance (eq. 2.4.2) on a held-out sample next to that
              of an exact InPCA of the same sample.

Usage::

    python benchmarks/scale.py --quick          # small sizes, about a minute on 2 cores
    python benchmarks/scale.py                  # 20,000 exact / 150,000 landmark (long)
    python benchmarks/scale.py --parts exact --exact-models 5000
    python benchmarks/scale.py --quick --threads 1   # on a busy shared machine

Generated trajectories: ``runs`` runs of ``snapshots`` snapshots each. Run r belongs to one of
8 "configurations" (a fixed pattern of mistakes B_c) with a run-specific perturbation E_r;
its logits at time tau in [0, 1] are ``8 tau^2 (3 onehot(y) + B_c + 0.3 E_r) + 0.05 noise``, so
runs start at ignorance, move towards truth, and configurations form distinct tubes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30
FULL = {
    "exact_models": 20_000,
    "landmark_models": 150_000,
    "landmarks": 300,
    "holdout": 5_000,
    "samples": 500,
    "classes": 10,
    "components": 3,
    "snapshots": 100,
    "exact_budget": 8 * GIB,
    "landmark_budget": 2 * GIB,
}
QUICK = {
    **FULL,
    "exact_models": 3_000,
    "landmark_models": 15_000,
    "landmarks": 100,
    "holdout": 1_000,
}


# ------------------------------------------------------------------------------ helpers
def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(
    path: Path, models: int, samples: int, classes: int, snapshots: int, seed: int
) -> None:
    """Write ``models`` generated (N, C) float32 log-probabilities into an (m, N, C) .npy file."""
    from lightning_manifold.scale._npyio import create_npy

    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=samples)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    configs = rng.standard_normal((8, samples, classes)).astype(np.float32)
    layout = create_npy(path, (models, samples, classes), np.dtype(np.float32))
    np.save(path.with_suffix(".labels.npy"), labels)
    tau = np.linspace(0.0, 1.0, snapshots, dtype=np.float32)
    scale = (8.0 * tau**2)[:, None, None]
    runs = -(-models // snapshots)
    written = 0
    with open(path, "r+b") as f:
        for r in range(runs):
            gen = np.random.default_rng([seed, r])
            base = (
                3.0 * onehot
                + configs[r % 8]
                + 0.3 * gen.standard_normal((samples, classes), dtype=np.float32)
            )
            logits = scale * base + 0.05 * gen.standard_normal(
                (snapshots, samples, classes), dtype=np.float32
            )
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            take = min(snapshots, models - written)
            f.seek(layout.offset + written * layout.row_bytes)
            f.write(np.ascontiguousarray(logp[:take], dtype=np.float32).tobytes())
            written += take


def child(part: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lightning_manifold import functional as F
    from lightning_manifold.scale import (
        ModelSource,
        inpca_memmap,
        landmark_inpca,
        pairwise_bhattacharyya_blocked,
    )

    work = Path(cfg["workdir"])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    N, C = cfg["samples"], cfg["classes"]
    out: dict[str, Any] = {"part": part, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if part == "kernel":
        g = torch.Generator().manual_seed(0)
        b = 1024
        S = torch.softmax(3 * torch.randn(b, N, C, generator=g, dtype=torch.float64), -1).sqrt()
        T = torch.softmax(3 * torch.randn(b, N, C, generator=g, dtype=torch.float64), -1).sqrt()
        F.bhattacharyya_from_sqrt(S[:64], T[:64])
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            F.bhattacharyya_from_sqrt(S, T)
            rates.append(b * b * N / (time.perf_counter() - t))
        out["block"] = b
        out["pair_samples_per_s"] = max(rates)
    elif part.startswith("gen-"):
        which = part[4:]
        m = cfg[f"{which}_models"]
        generate(
            work / f"{which}.npy", m, N, C, cfg["snapshots"], seed=1 if which == "exact" else 2
        )
        out["models"] = m
        out["file_bytes"] = (work / f"{which}.npy").stat().st_size
    elif part == "exact":
        src = ModelSource.from_npy(work / "exact.npy")
        budget = cfg["exact_budget"]
        t = time.perf_counter()
        D = pairwise_bhattacharyya_blocked(
            src, work / "D_exact.npy", memory_budget=budget, progress=False, resume=False
        )
        out["distance_seconds"] = time.perf_counter() - t
        plan = D.plan
        # distinct pairs evaluated (a diagonal block computes its upper triangle only)
        pairs = sum(
            len(plan.rows(i)) * (len(plan.rows(i)) + 1) // 2
            if i == j
            else len(plan.rows(i)) * len(plan.cols(j))
            for i, j in plan.blocks()
        )
        out["pairs_computed"] = pairs
        out["pair_samples_per_s"] = pairs * N / out["distance_seconds"]
        out["block"] = plan.block_rows
        out["blocks"] = D.blocks_total
        t = time.perf_counter()
        res = inpca_memmap(D, cfg["components"], memory_budget=budget, progress=False)
        out["eigen_seconds"] = time.perf_counter() - t
        out["eigenvalues"] = res.eigenvalues.tolist()
        out["explained_stress"] = float(
            F.explained_stress(res.eigenvalues, cfg["components"], res.total_stress)
        )
        out["models"] = src.num_models
    elif part == "landmark":
        src = ModelSource.from_npy(work / "landmark.npy")
        emb = landmark_inpca(
            src,
            cfg["landmarks"],
            method="farthest",
            n_components=cfg["components"],
            holdout=cfg["holdout"],
            memory_budget=cfg["landmark_budget"],
            workdir=work / "landmark_work",
            progress=False,
            resume=False,
        )
        out["models"] = src.num_models
        out["steps_seconds"] = emb.seconds
        out["explained_pairwise_distance"] = emb.explained_pairwise_distance
        out["exact_explained_pairwise_distance"] = emb.exact_explained_pairwise_distance
        out["eigenvalues"] = emb.result.eigenvalues.tolist()
    else:
        raise ValueError(f"unknown part {part!r}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def run_part(part: str, cfg: dict[str, Any]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        part,
        "--config",
        json.dumps(cfg),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"part {part} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--parts", default="kernel,exact,landmark", help="comma-separated parts")
    p.add_argument("--workdir", default=None, help="where data and matrices go (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per part (default: torch's). On a machine shared with other jobs, "
        "1 thread is often far faster than 2 (threads of a parallel region wait for each other)",
    )
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.config))))
        return
    cfg: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for key in FULL:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lm-scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg["workdir"] = str(work)
    cfg["threads"] = args.threads
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    print(
        f"lightning-manifold scale benchmark ({'quick' if args.quick else 'full'}), "
        f"{os.cpu_count()} CPUs, workdir {work}"
    )
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "workdir"))
    results: dict[str, Any] = {}
    try:
        for part in parts:
            if part in ("exact", "landmark") and not (work / f"{part}.npy").exists():
                r = run_part(f"gen-{part}", cfg)
                print(
                    f"[gen-{part}] {r['models']} models, {fmt_bytes(r['file_bytes'])} float32 "
                    f"log-probs in {r['seconds']:.1f} s, peak RSS {fmt_bytes(r['peak_rss_bytes'])}"
                )
            r = run_part(part, cfg)
            results[part] = r
            rss = fmt_bytes(r["peak_rss_bytes"])
            if part == "kernel":
                print(
                    f"[kernel] F.bhattacharyya_from_sqrt {r['block']}x{r['block']} block, "
                    f"N={cfg['samples']}, C={cfg['classes']}: {r['pair_samples_per_s']:.3g} "
                    f"pair-samples/s ({r['torch_threads']} torch threads)"
                )
            elif part == "exact":
                print(
                    f"[exact] {r['models']} models: d_B matrix {r['distance_seconds']:.1f} s "
                    f"({r['blocks']} blocks of {r['block']}, {r['pair_samples_per_s']:.3g} "
                    f"pair-samples/s), top-{cfg['components']} InPCA {r['eigen_seconds']:.1f} s, "
                    f"total {r['seconds']:.1f} s, peak RSS {rss}; eigenvalues "
                    f"{np.round(r['eigenvalues'], 4).tolist()}, explained stress "
                    f"{r['explained_stress']:.4f}"
                )
            elif part == "landmark":
                steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["steps_seconds"].items())
                print(
                    f"[landmark] {r['models']} models, {cfg['landmarks']} landmarks: {steps}; "
                    f"peak RSS {rss}; held-out ({cfg['holdout']} models) explained pairwise "
                    f"distance: landmark {r['explained_pairwise_distance']:.4f} vs exact "
                    f"InPCA of the sample {r['exact_explained_pairwise_distance']:.4f}"
                )
        if args.quick:
            estimate(cfg, results)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def estimate(cfg: dict[str, Any], results: dict[str, Any]) -> None:
    """Extrapolate the quick run to the full sizes (costs scale with pairs x N)."""
    lines = []
    if "exact" in results:
        r = results["exact"]
        m_q, m_f = cfg["exact_models"], FULL["exact_models"]
        pairs_f = m_f * (m_f + 1) / 2
        d_f = pairs_f * FULL["samples"] / r["pair_samples_per_s"]
        e_f = r["eigen_seconds"] * (m_f / m_q) ** 2
        lines.append(
            f"exact {m_f} models: d_B ~{d_f / 60:.1f} min + eigensolver ~{e_f / 60:.1f} "
            f"min (scaled by m^2), D file {fmt_bytes(m_f * m_f * 8)}"
        )
    if "landmark" in results:
        r = results["landmark"]
        s = r["steps_seconds"]
        m_q, m_f = cfg["landmark_models"], FULL["landmark_models"]
        l_q, l_f = cfg["landmarks"], FULL["landmarks"]
        h_q, h_f = cfg["holdout"], FULL["holdout"]
        total = (
            s["select"] * max(20 * l_f, 5000) * l_f / (max(20 * l_q, 5000) * l_q)
            + s["landmark_distances"] * (m_f * l_f) / (m_q * l_q)
            + s["fit"]
            + s["project"] * m_f / m_q
            + s["holdout"] * (h_f / h_q) ** 2
        )
        lines.append(
            f"landmark {m_f} models, {l_f} landmarks, holdout {h_f}: ~{total / 60:.1f} "
            f"min, memory bounded by the {fmt_bytes(FULL['landmark_budget'])} budget "
            f"+ interpreter"
        )
    for line in lines:
        print("[estimate] " + line)


if __name__ == "__main__":
    main()
