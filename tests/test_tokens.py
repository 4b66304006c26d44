"""Token-level probes: flattening, vocabulary reductions, exact statistics, DDP sharding, and a
real Trainer run of a tiny causal language model."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from lightning_manifold import functional as F
from lightning_manifold.callback import ManifoldCallback
from lightning_manifold.functional import vocabulary as Voc
from lightning_manifold.schedule import Schedule
from lightning_manifold.store import TrajectoryStore
from lightning_manifold.tokens import TokenProbe

# ----------------------------------------------------------------------------- plain references


def plain_targets(labels, mask, ignore_index, shift):
    """(row, target) pairs by a double loop over sequences and positions."""
    B, T = labels.shape
    out = []
    for b in range(B):
        for t in range(T):
            src = t + 1 if shift else t
            if src >= T:
                continue
            y = int(labels[b, src])
            if y == ignore_index or (mask is not None and int(mask[b, src]) == 0):
                continue
            out.append((b * T + t, y))
    return out


def plain_bhattacharyya(P, Q):
    """Mean over samples of -log Σ_c sqrt(p q), a loop over samples (eq. 2.2.2)."""
    return float(np.mean([-math.log(np.sum(np.sqrt(p * q))) for p, q in zip(P, Q)]))


def confident_logits(n, V, targets, scale, seed):
    """Logits that favour the targets by ``scale`` (a trained-like model) plus noise."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, V, generator=g, dtype=torch.float64)
    logits[torch.arange(n), targets] += scale
    return logits


# ----------------------------------------------------------------------------- flattening


@pytest.mark.parametrize("shift", [True, False])
def test_token_targets_match_a_plain_loop(shift: bool) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 50, (5, 9), generator=g)
    mask = torch.ones(5, 9, dtype=torch.int64)
    mask[1, 6:] = 0  # padding at the end of sequence 1
    mask[3, 2:] = 0
    labels[0, 3] = labels[2, 0] = labels[4, 8] = -100  # prompt / ignored tokens
    rows, targets = Voc.token_targets(labels, mask, ignore_index=-100, shift=shift)
    expected = plain_targets(labels, mask, -100, shift)
    assert rows.tolist() == [r for r, _ in expected]
    assert targets.tolist() == [y for _, y in expected]


def test_token_targets_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="`labels` must be a \\(B, T\\)"):
        Voc.token_targets(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="`attention_mask`"):
        Voc.token_targets(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 4))
    with pytest.raises(ValueError, match="`labels` must be token ids"):
        Voc.token_targets(torch.full((2, 3), -5), ignore_index=-100)


# ----------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("in_dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_partition_and_statistics_equal_the_full_log_softmax(in_dtype: torch.dtype) -> None:
    n, V = 40, 1500
    targets = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(1))
    logits = confident_logits(n, V, targets, scale=9.0, seed=2)
    logits[:5] *= 6  # a few very confident rows: tiny rest masses must not underflow to 0
    logits = logits.to(in_dtype)
    cells = Voc.partition_cells(targets, Voc.frequent_tokens(targets, V, 30))
    reduced, stats = Voc.reduce_vocabulary(logits, targets, cells=cells, chunk=257)
    lp = torch.log_softmax(logits.double(), -1)  # the plain full computation
    rest_mask = torch.ones_like(lp, dtype=torch.bool)
    rest_mask.scatter_(1, cells, False)
    plain_rest = torch.logsumexp(lp.masked_fill(~rest_mask, -math.inf), 1)
    tol = 1e-12
    torch.testing.assert_close(reduced[:, :-1], lp.gather(1, cells), atol=tol, rtol=0)
    torch.testing.assert_close(reduced[:, -1], plain_rest, atol=tol, rtol=0)
    assert torch.isfinite(reduced).all()
    torch.testing.assert_close(reduced.exp().sum(1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(stats.target_log_prob, lp.gather(1, targets[:, None])[:, 0])
    torch.testing.assert_close(stats.log_overlap, torch.log((0.5 * lp).exp().sum(1)))
    assert stats.correct.tolist() == (lp.argmax(1) == targets).double().tolist()
    wrong = (0.5 * lp).exp().scatter(1, targets[:, None], math.nan)  # sqrt(p), target left out
    plain_overlap = torch.nansum(wrong, 1)
    plain_spread = torch.nansum((wrong - torch.nanmean(wrong, 1, keepdim=True)) ** 2, 1)
    torch.testing.assert_close(stats.wrong_overlap, plain_overlap, atol=0, rtol=1e-10)
    torch.testing.assert_close(stats.wrong_spread, plain_spread, atol=0, rtol=1e-8)


def test_partition_cells_are_distinct_and_model_independent() -> None:
    targets = torch.tensor([0, 1, 2, 0, 0, 7, 1])
    frequent = Voc.frequent_tokens(targets, 10, 2)  # counts: 0 x3, 1 x2, then 2 (id order)
    assert frequent.tolist() == [0, 1, 2]
    cells = Voc.partition_cells(targets, frequent)
    assert cells[:, 0].tolist() == targets.tolist()
    for row in cells.tolist():
        assert len(set(row)) == len(row)
    assert cells[5].tolist() == [7, 0, 1]
    assert cells[0].tolist() == [0, 2, 1]  # the target 0 is replaced by the 3rd most frequent


def test_projection_equals_p_times_m() -> None:
    n, V, k = 30, 900, 40
    targets = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(3))
    logits = confident_logits(n, V, targets, scale=4.0, seed=4)
    M = F.random_column_stochastic(V, k, generator=torch.Generator().manual_seed(5))
    reduced, _ = Voc.reduce_vocabulary(logits, targets, projection=M, chunk=128)
    plain = torch.log(torch.softmax(logits, -1) @ M)
    torch.testing.assert_close(reduced, plain, atol=1e-12, rtol=0)


def test_exact_progress_and_distances_from_statistics() -> None:
    """Progress and the distances of the full distribution come out exact from the reduction's
    statistics, and the partition keeps d_B to the truth exact in the stored columns."""
    n, V = 300, 2000
    targets = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(6))
    for scale in (2.0, 6.0, 12.0):  # early, mid, late in training: progress in (0, 1)
        logits = confident_logits(n, V, targets, scale=scale, seed=7)
        cells = Voc.partition_cells(targets, Voc.frequent_tokens(targets, V, 62))
        reduced, stats = Voc.reduce_vocabulary(logits, targets, cells=cells, chunk=333)
        got = Voc.statistics_metrics(stats, V)
        lp = torch.log_softmax(logits, -1)
        full = F.geodesic_projection_from_log_probs(lp, targets)
        assert 0 < float(full.progress) < 1
        assert abs(float(got["progress"]) - float(full.progress)) <= 1e-8
        assert abs(float(got["distance_to_geodesic"]) - float(full.distance)) <= 1e-10
        np.testing.assert_allclose(
            float(got["distance_to_ignorance"]),
            float(F.distance_to_ignorance_from_log_probs(lp)),
            rtol=1e-12,
        )
        truth = float(F.distance_to_truth_from_log_probs(lp, targets))
        np.testing.assert_allclose(float(got["distance_to_truth"]), truth, rtol=1e-12)
        stored_truth = F.distance_to_truth_from_log_probs(reduced, torch.zeros_like(targets))
        np.testing.assert_allclose(float(stored_truth), truth, rtol=1e-12)  # column 0 = target
        plain_error = float((lp.argmax(1) != targets).double().mean())
        assert float(got["error"]) == pytest.approx(plain_error, abs=1e-15)


@pytest.mark.parametrize("reduction", ["partition", "projection"])
def test_reduced_distances_never_exceed_the_full_ones(reduction: str) -> None:
    """A coarse-graining or a stochastic map can only raise the Bhattacharyya coefficient, so the
    reduced d_B is a lower bound of the full one; the gap is reported, not assumed."""
    n, V, k = 60, 1200, 48
    targets = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(8))
    models = [
        confident_logits(n, V, targets, scale=s, seed=10 + i) for i, s in enumerate([1, 3, 5, 8])
    ]
    if reduction == "partition":
        kw = {"cells": Voc.partition_cells(targets, Voc.frequent_tokens(targets, V, k))}
    else:
        kw = {
            "projection": F.random_column_stochastic(
                V, k, generator=torch.Generator().manual_seed(9)
            )
        }
    reduced = [Voc.reduce_vocabulary(m, targets, **kw)[0].exp().numpy() for m in models]
    full = [torch.softmax(m, -1).numpy() for m in models]
    gaps = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            d_full = plain_bhattacharyya(full[i], full[j])
            d_red = plain_bhattacharyya(reduced[i], reduced[j])
            assert d_red <= d_full + 1e-12
            gaps.append(d_red / d_full)
    # the reduced map keeps the order of distances from the most confident model
    d_full_row = [plain_bhattacharyya(full[-1], f) for f in full[:-1]]
    d_red_row = [plain_bhattacharyya(reduced[-1], r) for r in reduced[:-1]]
    assert np.argsort(d_full_row).tolist() == np.argsort(d_red_row).tolist()


# ----------------------------------------------------------------------------- TokenProbe


class TinyCausalLM(pl.LightningModule):
    """Embedding -> one causal self-attention block -> logits, with Hugging Face style I/O."""

    def __init__(self, vocab: int = 300, width: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(16, width))
        self.block = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(width, vocab)
        self.lr = lr

    def forward(self, input_ids, attention_mask=None):
        T = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=h.device), diagonal=1)
        pad = None if attention_mask is None else attention_mask == 0
        h = self.block(h, src_mask=causal, src_key_padding_mask=pad, is_causal=True)
        return SimpleNamespace(logits=self.head(h))

    def training_step(self, batch, batch_idx):
        logits = self(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _batch(B: int, T: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt whose tokens are not predicted
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("reduction", ["none", "partition", "projection"])
def test_token_probe_predict_matches_a_plain_loop(reduction: str) -> None:
    vocab = 300
    torch.manual_seed(0)
    model = TinyCausalLM(vocab).eval()
    batch = _batch(7, 12, vocab, seed=1)
    probe = TokenProbe(batch, name="tok", vocab_size=vocab, reduction=reduction, k=20, batch_size=3)
    got, stats = probe.predict_statistics(model, dtype=torch.float64)
    with torch.no_grad():
        lp = torch.log_softmax(
            model(batch["input_ids"], batch["attention_mask"]).logits.double(), -1
        )
    pairs = plain_targets(batch["labels"], batch["attention_mask"], -100, True)
    full = torch.stack([lp.reshape(-1, vocab)[r] for r, _ in pairs])
    y = torch.tensor([t for _, t in pairs])
    assert probe.num_samples == len(pairs)
    torch.testing.assert_close(probe.targets, y)
    torch.testing.assert_close(stats.target_log_prob, full.gather(1, y[:, None])[:, 0])
    if reduction == "none":
        torch.testing.assert_close(got, full)
        assert probe.num_classes == vocab
    elif reduction == "partition":
        assert probe.num_classes == 22
        assert (probe.labels == 0).all()
        torch.testing.assert_close(got[:, 0], full.gather(1, y[:, None])[:, 0])
    else:
        M = F.random_column_stochastic(vocab, 20, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, torch.log(full.exp() @ M))
        assert probe.meta["token_probe"]["projection_seed"] == 0


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_shards_of_variable_token_counts_reassemble_in_order(world_size: int) -> None:
    """Each rank captures its block of sequences, padded to the largest block's token count;
    gathering the padded blocks in rank order and `unshard` gives the single-process rows."""
    vocab = 300
    torch.manual_seed(0)
    model = TinyCausalLM(vocab).eval()
    probe = TokenProbe(_batch(7, 12, vocab, seed=2), vocab_size=vocab, reduction="partition", k=10)
    whole = probe.capture(model, dtype=torch.float64)
    shards = [
        probe.shard(r, world_size).capture(model, dtype=torch.float64) for r in range(world_size)
    ]
    assert len({s.shape for s in shards}) == 1  # all_gather needs equal shapes
    gathered = torch.stack(shards)  # what all_gather returns: (W, rows, K + 5)
    torch.testing.assert_close(probe.unshard(gathered), whole, atol=1e-12, rtol=0)


def test_token_probe_errors_name_the_argument() -> None:
    batch = _batch(3, 6, 50, seed=0)
    with pytest.raises(ValueError, match="`vocab_size` is required"):
        TokenProbe(batch, reduction="partition")
    with pytest.raises(ValueError, match="`reduction` must be"):
        TokenProbe(batch, vocab_size=50, reduction="topk")
    with pytest.raises(ValueError, match="`k` must be an int in"):
        TokenProbe(batch, vocab_size=50, reduction="partition", k=49)
    with pytest.raises(ValueError, match="`labels` must be < vocab_size"):
        TokenProbe(batch, vocab_size=10, reduction="partition", k=3)
    with pytest.raises(ValueError, match="count no token"):
        TokenProbe({"input_ids": batch["input_ids"], "labels": torch.full((3, 6), -100)})
    probe = TokenProbe(batch, vocab_size=60, reduction="partition", k=5)
    with pytest.raises(ValueError, match="V = 50 logits per token"):
        probe.predict(TinyCausalLM(50).eval())


# ----------------------------------------------------------------------------- with a Trainer


def _fit_lm(tmp_path: Path, with_callback: bool):
    vocab = 120
    pl.seed_everything(3, workers=True)
    model = TinyCausalLM(vocab, lr=0.1)
    data = _batch(32, 12, vocab, seed=4)
    rows = [{k: v[i] for k, v in data.items()} for i in range(32)]
    loader = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True)
    callbacks = []
    if with_callback:
        probe = TokenProbe(
            _batch(6, 12, vocab, seed=5), name="val", vocab_size=vocab, reduction="partition", k=16
        )
        callbacks = [
            ManifoldCallback(
                probe,
                schedule=Schedule(log_spaced=None, every_n_steps=2),
                dirpath=tmp_path,
                run_name="lm",
                plots=False,
                log_scalars=False,
            )
        ]
    trainer = pl.Trainer(
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(model, loader)
    return model


def test_trainer_run_is_bit_identical_and_stores_exact_token_metrics(tmp_path: Path) -> None:
    plain = _fit_lm(tmp_path, with_callback=False)
    probed = _fit_lm(tmp_path, with_callback=True)
    for (name, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert torch.equal(a, b), name  # capturing leaves training bit-identical
    store = TrajectoryStore(tmp_path / "lm" / "val")
    assert store.steps.tolist() == [0, 2, 4, 6, 8]
    assert store.num_classes == 18
    assert store.meta["token_probe"]["vocab_size"] == 120
    # the stored progress is the full-vocabulary one, recomputed here from the final model
    probe = TokenProbe(_batch(6, 12, 120, seed=5), vocab_size=120, reduction="none")
    probed.eval()
    lp = probe.predict(probed, dtype=torch.float64)
    expected = float(F.progress_from_log_probs(lp, probe.targets))
    assert store.metrics("progress")[-1] == pytest.approx(expected, abs=1e-6)
    truth = float(F.distance_to_truth_from_log_probs(lp, probe.targets))
    assert store.metrics("distance_to_truth")[-1] == pytest.approx(truth, rel=1e-5)


# ----------------------------------------------------------------------------- the example


def test_language_model_example_runs_and_reports_the_source(tmp_path: Path) -> None:
    import contextlib
    import importlib.util
    import io

    path = Path(__file__).resolve().parents[1] / "examples" / "language_model.py"
    spec = importlib.util.spec_from_file_location("language_model_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    spec.loader.exec_module(example)
    source = example.MarkovSource.make(40, successors=5, seed=0)
    # the source's rows are distributions with exactly 5 successors each
    probs = source.log_transition.exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(40, dtype=torch.float64))
    assert ((probs > 0).sum(1) == 5).all()

    out = io.StringIO()
    argv = ["--fast", "--vocab", "120", "--steps", "6", "--k", "30", "--out", str(tmp_path)]
    with contextlib.redirect_stdout(out):
        assert example.main(argv) == 0
    printed = out.getvalue()
    for name in ("narrow", "wide", "wide-slow-lr"):
        store = TrajectoryStore(tmp_path / name / "val")
        assert store.num_classes == 32
        assert store.valid.all()
        assert f"{name}:" in printed
    assert "d_B to the true source" in printed
    assert (tmp_path / "language_model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
