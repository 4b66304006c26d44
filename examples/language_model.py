"""Language models on the map: tiny causal transformers learning a known Markov source.

    python examples/language_model.py            # a few minutes on a laptop CPU
    python examples/language_model.py --fast     # seconds, tiny sizes (for tests)

The data come from a generated first-order Markov source over V tokens (V = 2000 by default):
every token has a few dozen likely successors, with Dirichlet weights. Since the source is
known, so is the true next-token distribution at every position, and the example reports the
Bhattacharyya distance to it as well as to the one-hot labels (the distance to truth, half the
cross-entropy). Three configurations of a one-block causal transformer (narrow, wide, and wide
with a too-small learning rate) are trained with a :class:`~lightning_manifold.ManifoldCallback`
on a :class:`~lightning_manifold.tokens.TokenProbe` of held-out sequences (the "top-k + rest"
reduction: progress and distances to truth exact, the stored predictions k + 2 columns wide).
All runs, the source, ignorance and truth are drawn on one InPCA map (eq. 2.2.6, 2.2.9), written
to ``--out`` (default ``runs/language_model``) as ``language_model.png`` next to the stores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_manifold import ManifoldCallback, Schedule, TrajectoryStore
from lightning_manifold import functional as F
from lightning_manifold.functional import vocabulary as Voc
from lightning_manifold.tokens import TokenProbe


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--out", default="runs/language_model", help="output directory")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 2000)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--k", type=int, default=126, help="reduction size (k + 2 stored columns)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class MarkovSource:
    """A first-order Markov chain over V tokens; ``log_transition[a, b] = log P(b | a)``."""

    log_transition: Tensor  # (V, V) float64

    @classmethod
    def make(cls, vocab: int, successors: int, seed: int) -> MarkovSource:
        g = torch.Generator().manual_seed(seed)
        logits = torch.full((vocab, vocab), -math.inf, dtype=torch.float64)
        for a in range(vocab):
            nxt = torch.randperm(vocab, generator=g)[:successors]
            weights = -torch.log(torch.rand(successors, generator=g, dtype=torch.float64))
            logits[a, nxt] = torch.log(weights / weights.sum())
        return cls(logits)

    @property
    def vocab(self) -> int:
        return self.log_transition.shape[0]

    def sample(self, n: int, length: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        probs = self.log_transition.exp()
        seq = torch.empty(n, length, dtype=torch.int64)
        seq[:, 0] = torch.randint(0, self.vocab, (n,), generator=g)
        for t in range(1, length):
            seq[:, t] = torch.multinomial(probs[seq[:, t - 1]], 1, generator=g).squeeze(1)
        return seq


# ----------------------------------------------------------------------------- the model


class CausalLM(pl.LightningModule):
    """Token and position embeddings, one causal self-attention block, a linear head."""

    def __init__(self, vocab: int, width: int, length: int, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(0.02 * torch.randn(length, width))
        self.block = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, vocab)
        self.lr = lr

    def forward(self, input_ids: Tensor) -> SimpleNamespace:  # Hugging Face style output
        T = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=h.device), diagonal=1)
        return SimpleNamespace(logits=self.head(self.block(h, src_mask=causal, is_causal=True)))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"]).logits[:, :-1]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1)
        )
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Sequences(torch.utils.data.Dataset):
    def __init__(self, ids: Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i]}


# ----------------------------------------------------------------------------- the example


def fresh_run_name(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... if a run of that name is already stored."""
    name, i = base, 1
    while (root / name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def true_log_probs(source: MarkovSource, probe: TokenProbe) -> Tensor:
    """(N, V) log-probabilities of the source at the probe's counted positions."""
    ids = probe.inputs["input_ids"].reshape(-1)
    rows = Voc.token_targets(probe.inputs["input_ids"])[0]  # the predicting positions
    return source.log_transition[ids[rows]]


def reduce_like(probe: TokenProbe, log_p: Tensor) -> Tensor:
    """A full (N, V) distribution reduced exactly as the probe reduces model predictions."""
    safe = log_p.clamp(min=-1e4)  # the source's impossible tokens: logits of -1e4, probability 0
    reduced, _ = Voc.reduce_vocabulary(safe, probe.targets, cells=probe._cells)
    assert reduced is not None
    return reduced


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = args.vocab or (300 if args.fast else 2000)
    steps = args.steps or (30 if args.fast else 400)
    length, batch = (16, 16) if args.fast else (32, 32)
    k = min(args.k, vocab - 2)
    out = Path(args.out)
    source = MarkovSource.make(vocab, successors=24, seed=0)
    train = Sequences(source.sample(batch * 64, length, seed=1))
    probe = TokenProbe(
        {"input_ids": source.sample(16 if args.fast else 48, length, seed=2)},
        name="val",
        vocab_size=vocab,
        reduction="partition",
        k=k,
        forward=lambda m, b: m(b["input_ids"]),
    )
    configs = {"narrow": (32, 3e-3), "wide": (96, 3e-3), "wide-slow-lr": (96, 3e-4)}
    print(
        f"Markov source: V = {vocab}, {probe.num_samples} probe tokens, stored as {k + 2} columns"
    )
    schedule = Schedule(log_spaced=12 if args.fast else 30)
    stores: dict[str, TrajectoryStore] = {}
    for name, (width, lr) in configs.items():
        pl.seed_everything(0, workers=True)
        model = CausalLM(vocab, width, length, lr)
        callback = ManifoldCallback(
            probe,
            schedule=schedule,
            dirpath=out,
            run_name=fresh_run_name(out, name),
            plots=False,
            log_scalars=False,
        )
        trainer = pl.Trainer(
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            callbacks=[callback],
        )
        start = time.perf_counter()
        loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True)
        trainer.fit(model, loader)
        stores[name] = TrajectoryStore(callback.store_paths["val"])
        # The distance to the source's true distribution, from the full log-softmax.
        model.eval()
        with torch.no_grad():
            lp = torch.log_softmax(model(probe.inputs["input_ids"]).logits.double(), -1)
        lp = lp.reshape(-1, vocab)[Voc.token_targets(probe.inputs["input_ids"])[0]]
        d_source = float(F.bhattacharyya(lp.exp(), true_log_probs(source, probe).exp()))
        s = stores[name]
        print(
            f"{name:>13}: {time.perf_counter() - start:5.1f} s, progress "
            f"{s.metrics('progress')[-1]:.3f}, d_B to truth (one-hot labels) "
            f"{s.metrics('distance_to_truth')[-1]:.3f}, d_B to the true source {d_source:.3f}"
        )
    source_d = -0.5 * float(true_log_probs(source, probe).gather(1, probe.targets[:, None]).mean())
    print(f"{'source':>13}: d_B to truth (one-hot labels) {source_d:.3f} — no model can go below")
    path = draw_map(stores, probe, source, out / "language_model.png")
    print(f"map: {path}")
    return 0


def draw_map(
    stores: dict[str, TrajectoryStore], probe: TokenProbe, source: MarkovSource, path: Path
) -> Path:
    """Every snapshot of every run plus ignorance, the source and truth on one InPCA map."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    V = probe.vocab_size
    uniform = torch.full((probe.num_samples, V), -math.log(V), dtype=torch.float64)
    points = {
        "ignorance": reduce_like(probe, uniform),
        "source": reduce_like(probe, true_log_probs(source, probe)),
    }
    truth = torch.full((probe.num_samples, probe.num_classes), -1e4, dtype=torch.float64)
    truth[:, 0] = 0.0
    models = [
        torch.as_tensor(np.asarray(s.log_probs()[:]), dtype=torch.float64) for s in stores.values()
    ]
    sizes = [m.shape[0] for m in models]
    allm = torch.cat([*models, points["ignorance"][None], points["source"][None]])
    P = allm.exp()
    P = torch.cat([P, truth.exp()[None]])
    D = F.bhattacharyya(P)
    emb = F.inpca(D)  # every eigenvalue, so that the explained stress is honest
    X = emb.coords[:, :2].numpy()
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.add_subplot()
    start = 0
    for (name, _), n in zip(stores.items(), sizes):
        ax.plot(X[start : start + n, 0], X[start : start + n, 1], "-o", ms=3, label=name)
        start += n
    for label, i, marker in (("ignorance", -3, "s"), ("source", -2, "P"), ("truth", -1, "*")):
        ax.scatter(X[i, 0], X[i, 1], marker=marker, s=140, c="k", zorder=5)
        ax.annotate(label, X[i], textcoords="offset points", xytext=(6, 6))
    stress = float(F.explained_stress(emb.eigenvalues, 2))
    ax.set_xlabel("InPCA 1")
    ax.set_ylabel("InPCA 2" + (" (time-like)" if float(emb.eigenvalues[1]) < 0 else ""))
    ax.set_title(f"Tiny causal LMs on a Markov source (explained stress {stress:.0%})")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    sys.exit(main())
