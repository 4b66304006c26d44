"""Blocked distances on Lightning Fabric: 2 CPU processes give the same matrix as 1 (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric import Fabric

from lightning_manifold.scale import ModelSource, landmark_inpca, pairwise_bhattacharyya_blocked


def _run(fabric: Fabric, models: str, out: str, workdir: str) -> dict[str, Any]:
    """Run on every rank (module level so that ``ddp_spawn`` can pickle it by reference).

    Blocked distances, then a landmark embedding whose distance passes are spread too.
    """
    res = pairwise_bhattacharyya_blocked(
        ModelSource.from_npy(models), out, block_size=9, fabric=fabric, progress=False
    )
    emb = landmark_inpca(
        ModelSource.from_npy(models),
        6,
        n_components=2,
        holdout=12,
        workdir=workdir,
        fabric=fabric,
        progress=False,
    )
    return {
        "blocks": (res.blocks_computed, res.blocks_done, res.complete),
        "coords": emb.coords.reshape(-1).tolist(),
        "explained": emb.explained_pairwise_distance,
        "rank": fabric.global_rank,
    }


def _models(path: Path, m: int = 40, N: int = 30, C: int = 5) -> str:
    rng = np.random.default_rng(0)
    logits = 2 * rng.standard_normal((m, N, C))
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.save(path, lp.astype(np.float32))
    return str(path)


def test_two_processes_equal_one(tmp_path: Path) -> None:
    models = _models(tmp_path / "models.npy")
    one = Fabric(accelerator="cpu", devices=1)
    r1 = one.launch(_run, models, str(tmp_path / "D1.npy"), str(tmp_path / "lm1"))
    two = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    r2 = two.launch(_run, models, str(tmp_path / "D2.npy"), str(tmp_path / "lm2"))
    # 40 models in blocks of 9: 5 row blocks, 15 upper blocks, all computed once in total
    assert r1["blocks"] == (15, 15, True)
    assert r2["blocks"] == (15, 15, True)
    assert r2["rank"] == 0
    # each block was written by the rank that owns it (block index modulo world size)
    side = tmp_path / "D2.npy.progress"
    assert json.loads((side / "done-rank0.json").read_text())["done"] == list(range(0, 15, 2))
    assert json.loads((side / "done-rank1.json").read_text())["done"] == list(range(1, 15, 2))
    D1, D2 = np.load(tmp_path / "D1.npy"), np.load(tmp_path / "D2.npy")
    assert np.array_equal(D1, D2)
    D0 = pairwise_bhattacharyya_blocked(
        ModelSource.from_npy(models), tmp_path / "D0.npy", block_size=9, progress=False
    ).matrix
    assert np.array_equal(D1, D0)
    assert np.array_equal(
        np.load(tmp_path / "lm1" / "landmark_distances.npy"),
        np.load(tmp_path / "lm2" / "landmark_distances.npy"),
    )
    assert r1["coords"] == r2["coords"]
    assert r1["explained"] == r2["explained"]
