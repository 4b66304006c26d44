"""Per-snapshot cost of ``OnlineManifold.update`` against a 2000-model reference.

The cost is reported as a ratio to the probe forward pass of a small CNN (2 conv layers +
linear) on the same probe (N = 1000 inputs of 3x32x32, C = 10), both measured in this process.
Target: ratio <= 0.25.

The reference is synthetic: R runs of T snapshots, ``log_softmax(s_t * (A + B_r))`` with a
shared signal ``A`` towards the labels, a per-run perturbation ``B_r`` and a scale ``s_t``
growing with time, so runs go from ignorance towards the truth along nearby paths.

Run::

    python benchmarks/online.py [--runs 20] [--snapshots 100] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.online import OnlineManifold
from lightning_manifold.snapshot import Snapshot

N, C = 1000, 10


def synthetic_runs(
    runs: int, snapshots: int, labels: Tensor, seed: int = 0
) -> tuple[list[Tensor], list[Tensor]]:
    """R runs of (T, N, C) float32 log-probabilities and their (T,) steps."""
    g = torch.Generator().manual_seed(seed)
    signal = 3.0 * nn.functional.one_hot(labels, C).float() + torch.randn(N, C, generator=g)
    scales = torch.linspace(0.0, 3.0, snapshots)
    out, steps = [], []
    for _ in range(runs):
        logits = signal + 0.5 * torch.randn(N, C, generator=g)
        out.append(torch.log_softmax(scales[:, None, None] * logits, -1))
        steps.append(10 * torch.arange(snapshots))
    return out, steps


class SmallCNN(nn.Module):
    """conv(3->16) - pool - conv(16->32) - pool - linear: a small image classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def probe_forward(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """(N, C) log-probabilities of ``model`` on the probe, in batches, without gradients."""
    with torch.no_grad():
        return torch.cat(
            [
                torch.log_softmax(model(x[i : i + batch_size]).float(), -1)
                for i in range(0, len(x), batch_size)
            ]
        )


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--snapshots", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cache", default=None, help="save/reuse the fitted reference here")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, C, (N,), generator=g)
    runs, steps = synthetic_runs(args.runs, args.snapshots, labels)
    t0 = time.perf_counter()
    if args.cache and Path(args.cache).is_file():
        ref = ReferenceEmbedding.load(args.cache, labels=labels, num_classes=C)
    else:
        ref = ReferenceEmbedding.fit(runs, labels=labels, steps=steps, n_components=10)
        if args.cache:
            ref.save(args.cache)
    fit_s = time.perf_counter() - t0
    mib = (ref.sqrt_probs.numel() + ref.grid_sqrt.numel()) * ref.sqrt_probs.element_size() / 2**20
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"reference: {ref.num_models} models ({args.runs} runs x {args.snapshots}), "
        f"{ref.num_points} points, N={N}, C={C}; fit/load {fit_s:.1f} s; {mib:.0f} MiB stored"
    )

    # the forward pass of a small CNN on the same probe, and a new run of the same family;
    # measured interleaved so both see the same load on a shared machine
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    x = torch.randn(N, 3, 32, 32, generator=g)
    new_runs, new_steps = synthetic_runs(1, args.repeats + 3, labels, seed=7)
    online = OnlineManifold(labels, C, reference=ref, n_components=3)
    snaps = [
        Snapshot("train", int(s), 0, lp, labels, 0.0) for lp, s in zip(new_runs[0], new_steps[0])
    ]
    for snap in snaps[:3]:  # warm-up
        probe_forward(cnn, x)
        online.update(snap)
    forward, update, distances = [], [], []
    for snap in snaps[3:]:
        forward += timed(lambda: probe_forward(cnn, x), 1)
        update += timed(lambda s=snap: online.update(s), 1)
        distances += timed(lambda s=snap: ref.distances(s.log_probs), 1)

    f, u = statistics.median(forward), statistics.median(update)
    print(f"CNN probe forward (N={N}, 3x32x32): median {1e3 * f:.1f} ms over {len(forward)}")
    print(
        f"OnlineManifold.update:              median {1e3 * u:.1f} ms over {len(update)} "
        f"(min {1e3 * min(update):.1f}, max {1e3 * max(update):.1f})"
    )
    print(
        f"  of which d_B to the {ref.num_points} reference points: median "
        f"{1e3 * statistics.median(distances):.1f} ms (F.bhattacharyya_from_sqrt)"
    )
    best = min(update) / min(forward)
    verdict = "OK" if u / f <= 0.25 else "MISSED"
    print(f"ratio update / forward: medians {u / f:.3f} (target <= 0.25: {verdict}), ", end="")
    print(f"minima {best:.3f}")
    last = [r for r in online.results if r.reference_run is not None][-1]
    print(
        f"last snapshot: progress {last.progress:.3f}, reference_distance "
        f"{last.reference_distance:.4f} ({last.reference_run}), relative_speed "
        f"{last.relative_speed:.2f}, residual {last.residual:.3f}"
    )


if __name__ == "__main__":
    main()
