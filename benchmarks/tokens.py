"""Capture cost of a token-level probe: N = 20,000 tokens, V = 32,000, on CPU.

Measured in this process, each the best of ``--repeats`` runs:

* ``forward``: the probe's forward passes alone (embedding + linear head to V logits, the
  cheapest language model there is, so the ratio below is the worst case);
* ``capture``: :meth:`TokenProbe.capture` — the same forward passes plus the chunked full
  log-softmax statistics (progress, distances to ignorance and truth, error, exact) and the
  reduction to k + 2 ("partition") or k ("projection") stored columns;
* ``plain``: the forward passes plus a naive ``log_softmax`` of the counted (n, V) logits in
  float32, what a probe without reduction would hold and store.

and the peak resident memory added by each (Linux ``/proc/self/status`` VmHWM, reset between
runs through ``/proc/self/clear_refs``), and the bytes a store writes per capture.

Run::

    python benchmarks/tokens.py [--tokens 20000] [--vocab 32000] [--k 254] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_manifold.tokens import TokenProbe


class HeadOnlyLM(nn.Module):
    """Token embedding -> linear head: (B, T) ids -> (B, T, V) logits."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(ids)))


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """(best seconds, peak RSS added above the RSS before the call)."""
    best, peak = float("inf"), 0
    for _ in range(repeats):
        with contextlib.suppress(OSError):  # reset the peak to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        before = _rss()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, _peak_rss() - before)
    return best, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--length", type=int, default=256, help="sequence length T")
    p.add_argument("--k", type=int, default=254)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    V, T = args.vocab, args.length
    B = -(-(args.tokens + 1) // (T - 1))
    ids = torch.randint(0, V, (B, T))
    labels = ids.clone()
    labels.view(-1)[args.tokens + B :] = -100  # exactly --tokens counted positions
    model = HeadOnlyLM(V, 64).eval()
    probes = {
        reduction: TokenProbe(
            ids, labels, vocab_size=V, reduction=reduction, k=args.k, batch_size=args.batch_size
        )
        for reduction in ("partition", "projection")
    }
    n = probes["partition"].num_samples
    print(
        f"N = {n} tokens in {B} sequences of {T}, V = {V}, k = {args.k}, threads = {args.threads}"
    )

    def forward_only() -> None:
        with torch.no_grad():
            for s in range(0, B, args.batch_size):
                model(ids[s : s + args.batch_size])

    rows, _ = probes["partition"]._rows, None

    def plain() -> Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, B, args.batch_size):
                logits = model(ids[s : s + args.batch_size]).reshape(-1, V)
                lo, hi = torch.searchsorted(rows, torch.tensor([s * T, (s + args.batch_size) * T]))
                out.append(torch.log_softmax(logits[rows[lo:hi] - s * T], -1))
        return torch.cat(out)

    t_fwd, m_fwd = measure(forward_only, args.repeats)
    t_plain, m_plain = measure(plain, args.repeats)
    print(f"forward alone          {t_fwd * 1e3:8.0f} ms   peak +{m_fwd / 2**20:7.0f} MiB")
    print(
        f"forward + full (n, V)  {t_plain * 1e3:8.0f} ms   peak +{m_plain / 2**20:7.0f} MiB"
        f"   stored {n * V * 4 / 2**20:.0f} MiB per capture (float32)"
    )
    for reduction, probe in probes.items():
        t, m = measure(lambda probe=probe: probe.capture(model), args.repeats)
        print(
            f"capture ({reduction:>10})  {t * 1e3:8.0f} ms   peak +{m / 2**20:7.0f} MiB"
            f"   x{t / t_fwd:.2f} the forward   stored {n * probe.num_classes * 4 / 2**20:.1f} "
            f"MiB per capture ({probe.num_classes} columns)"
        )


if __name__ == "__main__":
    main()
