"""ManifoldCallback under DDP (``ddp_spawn`` on CPU, 2 processes): same stored log-probabilities
as one process, written once by rank zero."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader

from lightning_manifold.callback import ManifoldCallback
from lightning_manifold.probe import ProbeSet
from lightning_manifold.schedule import Schedule
from lightning_manifold.store import TrajectoryStore, list_stores
from lightning_manifold.tokens import TokenProbe


class _RowCounter:
    """A probe ``forward`` hook that appends ``"<rank> <rows>"`` per forward call to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, module: TinyClassifier, batch: torch.Tensor) -> torch.Tensor:
        rank = module.trainer.global_rank if module._trainer is not None else -1
        with open(self.path, "a") as f:
            f.write(f"{rank} {batch.shape[0]}\n")
        return module(batch)


def _per_position(module: TinyClassifier, batch: torch.Tensor) -> torch.Tensor:
    """The classifier applied at every position of (B, T, 8) sequences: (B, T, 3) logits."""
    return module(batch.reshape(-1, batch.shape[-1])).reshape(*batch.shape[:2], -1)


def _fit(model: TinyClassifier, cb: ManifoldCallback, **trainer_kw: object) -> None:
    x, y = make_blobs(128, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(max_steps=4, **trainer_kw), callbacks=[cb])
    trainer.fit(model, make_loader(x, y, batch_size=16))


def test_ddp_capture_matches_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)  # the weights never change: every snapshot is the same model
    x, y = make_blobs(51, 8, 3, seed=7)  # 51 samples: rank 1's slice is padded, then trimmed
    rows_file = tmp_path / "rows.txt"
    probe = ProbeSet.from_tensors(x, y, name="train", batch_size=16, forward=_RowCounter(rows_file))
    schedule = Schedule(log_spaced=None, every_n_steps=2)

    # A sequence probe on the same model: 5 sequences of 4 positions with a variable number of
    # counted tokens, so the two ranks' blocks hold different token counts (6 and 4).
    xs = x[:20].reshape(5, 4, 8)
    ys = y[:20].reshape(5, 4).clone()
    ys[0, 1] = ys[2, 2:] = ys[4, 0] = -100
    tokens = TokenProbe(xs, ys, name="tokens", shift=False, forward=_per_position)
    ddp = ManifoldCallback(
        [probe, tokens], schedule=schedule, dirpath=tmp_path / "ddp", run_name="run"
    )
    _fit(model, ddp, strategy="ddp_spawn", devices=2)
    # each rank ran only its padded slice of ceil(51 / 2) = 26 samples, in batches of 16
    calls = [tuple(map(int, line.split())) for line in rows_file.read_text().splitlines()]
    rows_per_rank = {r: sum(n for rank, n in calls if rank == r) for r in (0, 1)}
    assert sorted({rank for rank, _ in calls}) == [0, 1]
    assert rows_per_rank[0] == rows_per_rank[1]
    assert rows_per_rank[0] % 26 == 0
    assert sorted({n for _, n in calls}) == [10, 16]
    single = ManifoldCallback(probe, schedule=schedule, dirpath=tmp_path / "one", run_name="run")
    _fit(model, single)

    # rank zero alone wrote: exactly one store, nothing from rank 1
    stores = list_stores(tmp_path / "ddp")
    assert [s.path for s in stores] == [tmp_path / "ddp" / "run" / n for n in ("tokens", "train")]
    ddp_store = stores[1]
    counted = ys.reshape(-1) != -100
    token_lp = TrajectoryStore(tmp_path / "ddp" / "run" / "tokens").log_probs()[:]
    assert token_lp.shape == (3, int(counted.sum()), 3)
    with torch.no_grad():
        model.eval()
        plain = torch.log_softmax(model(xs.reshape(-1, 8)).double(), dim=-1)[counted].numpy()
    for snapshot in token_lp:  # every counted token once, in sequence order, none of the padding
        np.testing.assert_allclose(snapshot, plain, atol=1e-6, rtol=0)
    one_store = TrajectoryStore(tmp_path / "one" / "run" / "train")
    np.testing.assert_array_equal(ddp_store.steps, [0, 2, 4])
    np.testing.assert_array_equal(ddp_store.steps, one_store.steps)
    np.testing.assert_array_equal(ddp_store.labels, y.numpy())

    with torch.no_grad():
        model.eval()
        expected = torch.log_softmax(model(x).double(), dim=-1).numpy()
    ddp_lp, one_lp = ddp_store.log_probs()[:], one_store.log_probs()[:]
    assert ddp_lp.shape == (3, 51, 3)
    np.testing.assert_allclose(ddp_lp, one_lp, atol=1e-6, rtol=0)
    for snapshot in ddp_lp:
        np.testing.assert_allclose(snapshot, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        ddp_store.metrics("progress"), one_store.metrics("progress"), atol=1e-6
    )
