"""Speed of the geometry core against plain reference implementations, in one process run.

Prints ratios (reference time / our time) for, on 800 models x 1000 samples x 5 classes:
- ``progress`` (probabilities in, as the reference takes them) and ``progress_from_log_probs``:
  our batched solver vs a per-model bounded scalar minimisation (scipy) of the geodesic
  distance to the ignorance->truth geodesic (eq. 2.2.4), each model in its own call;
- pairwise ``bhattacharyya``: our blocked kernel vs a per-sample numpy loop (eq. 2.2.2).
Both at float64, with the maximum deviation between the two results. Ours is the fastest of
``--repeats`` calls after one untimed warm-up call (first calls pay one-time allocation costs).

Run: ``python benchmarks/geometry.py`` (``--quick`` for a smaller smoke run).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from lightning_manifold import functional as F


def trained_like(m: int, N: int, C: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, N, C) float64 log-probabilities along a synthetic training run, and (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    scale = torch.linspace(0, 8, m, dtype=torch.float64)[:, None, None]
    logits = torch.randn(m, N, C, generator=g, dtype=torch.float64)
    logits = logits + scale * torch.nn.functional.one_hot(labels, C)
    return torch.log_softmax(logits, -1), labels


def reference_progress(P: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per model: bounded scalar minimisation of d_G(P, P^alpha_{0,*}) (eqs. 2.2.3, 2.5.4)."""
    N, C = P.shape[1:]
    theta = math.acos(1 / math.sqrt(C))
    rows = np.arange(N)

    def d_geo(sqrt_p: np.ndarray, alpha: float) -> float:
        g = np.full((N, C), math.sin((1 - alpha) * theta) / math.sin(theta) / math.sqrt(C))
        g[rows, labels] += math.sin(alpha * theta) / math.sin(theta)
        return float(np.mean(np.arccos(np.clip((sqrt_p * g).sum(1), -1, 1))))

    out = np.empty(P.shape[0])
    for i in range(P.shape[0]):
        sp = np.sqrt(P[i])
        res = minimize_scalar(
            lambda a, sp=sp: d_geo(sp, a), bounds=(0, 1), method="bounded", options={"xatol": 1e-9}
        )
        out[i] = res.x
    return out


def reference_pairwise(P: np.ndarray) -> np.ndarray:
    """Per-sample numpy loop: D = -(1/N) Σ_n log(S_n S_n^T)."""
    S = np.sqrt(P)
    acc = np.zeros((P.shape[0], P.shape[0]))
    for n in range(P.shape[1]):
        Sn = S[:, n, :]
        acc += np.log(np.clip(Sn @ Sn.T, 0, 1))
    return -acc / P.shape[1]


def best_of(fn, repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, and the last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=800)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 models x 300 samples")
    args = parser.parse_args()
    m, N, C = (200, 300, args.classes) if args.quick else (args.models, args.samples, args.classes)
    log_p, labels = trained_like(m, N, C)
    P = log_p.exp().numpy()
    y = labels.numpy()
    threads = torch.get_num_threads()
    print(f"{m} models x {N} samples x {C} classes, float64, torch threads={threads}")

    t_ref, ref = best_of(lambda: reference_progress(P, y), 1, warmup=0)
    P_t = torch.from_numpy(P)
    for name, fn in [
        ("progress", lambda: F.progress(P_t, labels)),
        ("progress_from_log_probs", lambda: F.progress_from_log_probs(log_p, labels)),
    ]:
        t_ours, ours = best_of(fn, args.repeats)
        err = float(np.abs(ours.numpy() - ref).max())
        print(
            f"{name}: ours {t_ours * 1e3:8.1f} ms  reference {t_ref * 1e3:8.1f} ms  "
            f"ratio {t_ref / t_ours:6.1f}x  max |diff| {err:.1e}"
        )

    t_ours, ours = best_of(lambda: F.bhattacharyya_from_log_probs(log_p), args.repeats)
    t_ref, ref = best_of(lambda: reference_pairwise(P), 1)
    D = ours.numpy()
    off = ~np.eye(m, dtype=bool)
    rel = float((np.abs(D - ref)[off] / np.abs(ref[off])).max())
    print(
        f"pairwise d_B: ours {t_ours * 1e3:8.1f} ms  reference {t_ref * 1e3:8.1f} ms  "
        f"ratio {t_ref / t_ours:6.1f}x  max rel. error {rel:.1e}"
    )


if __name__ == "__main__":
    main()
