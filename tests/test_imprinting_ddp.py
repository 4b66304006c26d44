"""Imprinting under DDP (``ddp_spawn`` on CPU, 2 processes): each rank computes the features of
its slice of the probe, the slices are gathered, and the class sums are those of the whole probe:
the stored imprinted log-probabilities equal the single-process imprinting of the same model."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader

from lightning_manifold import functional as F
from lightning_manifold.callback import ManifoldCallback
from lightning_manifold.imprinting import ImprintedProbe
from lightning_manifold.schedule import Schedule
from lightning_manifold.store import TrajectoryStore, list_stores


def test_ddp_imprinting_gathers_the_whole_probe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)  # the weights never change: every snapshot is the same model
    x, y = make_blobs(51, 8, 3, seed=7)  # rank 1's slice is padded; the shards' classes differ
    y = torch.where(torch.arange(51) < 26, y % 2, y)  # class 2 only in rank 1's slice
    assert 2 not in y[:26].tolist()
    probe = ImprintedProbe(x, y, features="body", name="imp", batch_size=16, seen_classes=[0])
    cb = ManifoldCallback(
        probe,
        schedule=Schedule(log_spaced=None, every_n_steps=2),
        dirpath=tmp_path,
        run_name="run",
        online=False,
        log_scalars=False,
    )
    x_train, y_train = make_blobs(64, 8, 3, seed=0)
    trainer = pl.Trainer(
        **fast_trainer_kwargs(max_steps=2, strategy="ddp_spawn", devices=2), callbacks=[cb]
    )
    trainer.fit(model, make_loader(x_train, y_train, batch_size=16))

    stores = list_stores(tmp_path)
    assert [s.path for s in stores] == [tmp_path / "run" / "imp"]  # rank zero alone wrote
    store = TrajectoryStore(tmp_path / "run" / "imp")
    np.testing.assert_array_equal(store.steps, [0, 2])
    assert store.meta["imprinting"]["seen_classes"] == [0]
    assert store.meta["world_size"] == 2
    model.eval()
    with torch.no_grad():
        expected = F.imprint(model.body(x).double(), y, 3).numpy()  # one process, whole probe
    for snapshot in store.log_probs()[:]:
        np.testing.assert_allclose(snapshot, expected, atol=1e-5, rtol=0)
    # imprinting each rank's slice on its own would be another model (class 2 missing on
    # rank 0): the comparison above can fail
    with torch.no_grad():
        half = F.imprint(model.body(x[26:]).double(), y[26:], 3).numpy()
    assert np.abs(half - expected[26:]).max() > 1e-3
