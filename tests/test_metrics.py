"""torchmetrics classes: a probe reduced in shards (and across simulated ranks) equals one shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_manifold import functional as F
from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.metrics import (
    BhattacharyyaToReference,
    DistanceToIgnorance,
    DistanceToTruth,
    ProgressStatistics,
)

N, C = 180, 4


@pytest.fixture(scope="module")
def probe() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    signal = 2.0 * torch.nn.functional.one_hot(y, C).double()
    # a trajectory of reference models and one new model
    z = signal + torch.randn(N, C, generator=g, dtype=torch.float64)
    refs = torch.log_softmax(torch.linspace(0, 2, 9, dtype=torch.float64)[:, None, None] * z, -1)
    new = torch.log_softmax(
        1.3 * (signal + torch.randn(N, C, generator=g, dtype=torch.float64)), -1
    )
    return {"y": y, "refs": refs, "new": new, "perm": torch.randperm(N, generator=g)}


def shards(perm: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Uneven contiguous pieces of a permutation of the probe."""
    cuts = sorted({int(c) for c in np.linspace(0, len(perm), parts + 1)[1:-1] + 7})
    return list(torch.tensor_split(perm, cuts))


def plain_bhattacharyya(lp: np.ndarray, lq: np.ndarray) -> float:
    return float(np.mean([-math.log(np.sum(np.exp(0.5 * (a + b)))) for a, b in zip(lp, lq)]))


@pytest.mark.parametrize("parts", [2, 3])
def test_distance_to_reference_models_sharded(probe, parts):
    metric = BhattacharyyaToReference(probe["refs"])
    for idx in shards(probe["perm"], parts):
        metric.update(probe["new"][idx], idx)
    d = metric.compute()
    expected = F.bhattacharyya_from_log_probs(probe["new"], probe["refs"])
    torch.testing.assert_close(d, expected.to(d.dtype), rtol=1e-12, atol=1e-12)
    plain = [plain_bhattacharyya(probe["new"].numpy(), r.numpy()) for r in probe["refs"]]
    np.testing.assert_allclose(d.numpy(), plain, atol=1e-12)


def test_distance_to_embedded_points_across_two_ranks(probe):
    """Two metric instances (ranks) merged as DDP would: the row projected by eq. 2.2.9."""
    ref = ReferenceEmbedding.fit(probe["refs"], labels=probe["y"], dtype=torch.float64)
    rank0, rank1 = BhattacharyyaToReference(ref), BhattacharyyaToReference(ref)
    pieces = shards(probe["perm"], 4)
    for i, idx in enumerate(pieces):
        (rank0 if i % 2 == 0 else rank1).update(probe["new"][idx], idx)
    rank0.merge_state(rank1)
    d = rank0.compute()
    torch.testing.assert_close(d, ref.distances(probe["new"]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.project_distances(d), ref.project(probe["new"]))
    # the truth column is half the cross-entropy
    y = probe["y"].numpy()
    assert float(d[-1]) == pytest.approx(
        -0.5 * probe["new"].numpy()[np.arange(N), y].mean(), abs=1e-12
    )


def test_distance_to_ignorance_and_truth_sharded(probe):
    ign, tru = DistanceToIgnorance(), DistanceToTruth()
    other_ign, other_tru = DistanceToIgnorance(), DistanceToTruth()
    for i, idx in enumerate(shards(probe["perm"], 3)):
        a, b = (ign, tru) if i != 1 else (other_ign, other_tru)
        a.update(probe["new"][idx])
        b.update(probe["new"][idx], probe["y"][idx])
    ign.merge_state(other_ign)
    tru.merge_state(other_tru)
    lp, y = probe["new"], probe["y"]
    torch.testing.assert_close(
        ign.compute(), F.distance_to_ignorance_from_log_probs(lp), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        tru.compute(), F.distance_to_truth_from_log_probs(lp, y), rtol=1e-12, atol=1e-12
    )
    uniform = np.full((N, C), -math.log(C))
    assert float(ign.compute()) == pytest.approx(
        plain_bhattacharyya(lp.numpy(), uniform), abs=1e-12
    )
    ign.reset()
    assert int(ign.count) == 0


def test_progress_statistics_sharded(probe):
    metric, other = ProgressStatistics(per_class=True), ProgressStatistics(per_class=True)
    for i, idx in enumerate(shards(probe["perm"], 3)):
        (metric if i != 2 else other).update(probe["new"][idx], probe["y"][idx])
    metric.merge_state(other)
    out = metric.compute()
    lp, y = probe["new"], probe["y"]
    expected = F.geodesic_projection_from_log_probs(lp, y)
    torch.testing.assert_close(out["progress"], expected.progress, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["distance_to_geodesic"], expected.distance, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        out["per_class_progress"], F.per_class_progress_from_log_probs(lp, y), rtol=0, atol=1e-12
    )
    assert 0.0 < float(out["progress"]) < 1.0


def test_metric_argument_errors(probe):
    metric = BhattacharyyaToReference(probe["refs"])
    with pytest.raises(ValueError, match="`index` is required"):
        metric.update(probe["new"][:10])
    with pytest.raises(ValueError, match=r"`index` must lie in \[0, 180\)"):
        metric.update(probe["new"][:2], torch.tensor([0, 180]))
    with pytest.raises(ValueError, match="`labels` must be"):
        DistanceToTruth().update(probe["new"][:5], probe["y"][:4])
    with pytest.raises(ValueError, match="`reference` must be"):
        BhattacharyyaToReference(probe["refs"][0])
