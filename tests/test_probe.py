"""Tests of lightning_manifold.probe: construction, sampling, prediction, DDP slicing, eval mode."""

from __future__ import annotations

import math
import random
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_manifold import probe as probe_module
from lightning_manifold.probe import ProbeSet, evaluation_mode, module_device, shard_indices

# --------------------------------------------------------------------------------------------
# helpers (independent plain implementations)
# --------------------------------------------------------------------------------------------


def _data(n: int = 60, d: int = 5, C: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, C, (n,), generator=g)


def _plain_log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 with numpy, written out."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(z)
    for i, row in enumerate(z):
        m = row.max()
        out[i] = row - m - math.log(sum(math.exp(v - m) for v in row))
    return out


def _rng_states() -> tuple[Tensor, tuple, tuple]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002


def _assert_rng_equal(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1][0] == b[1][0]
    assert np.array_equal(a[1][1], b[1][1])
    assert a[1][2:] == b[1][2:]
    assert a[2] == b[2]


def _largest_remainder(counts: dict[int, int], size: int) -> dict[int, int]:
    """Plain largest-remainder apportionment (ties: smaller class first)."""
    n = sum(counts.values())
    exact = {c: counts[c] * size / n for c in counts}
    quota = {c: math.floor(exact[c]) for c in counts}
    rest = size - sum(quota.values())
    ranked = sorted(counts, key=lambda c: (-(exact[c] - quota[c]), c))
    for c in ranked[:rest]:
        quota[c] += 1
    return quota


class _ItemDataset(Dataset):
    """Map-style dataset: x[i] = [i, label] so every sample's identity can be checked."""

    def __init__(self, labels: list[int], with_targets: bool = False) -> None:
        self._labels = labels
        if with_targets:
            self.targets = list(labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return torch.tensor([float(i), float(self._labels[i])]), self._labels[i]


def _mlp(d: int = 5, C: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, C))


# --------------------------------------------------------------------------------------------
# construction and validation
# --------------------------------------------------------------------------------------------


def test_from_tensors_properties() -> None:
    x, y = _data(30, C=4)
    y[0] = 3
    probe = ProbeSet.from_tensors(x, y.int(), name="val", batch_size=8)
    assert probe.name == "val"
    assert probe.labels.dtype == torch.int64
    assert torch.equal(probe.labels, y.long())
    assert probe.num_samples == len(probe) == probe.num_real == 30
    assert probe.num_classes == int(y.max()) + 1 == 4
    assert probe.batch_size == 8
    assert ProbeSet(x, y, num_classes=7).num_classes == 7
    assert "val" in repr(probe)
    # numpy inputs and list labels are converted
    p2 = ProbeSet(x.numpy(), y.tolist())
    assert isinstance(p2.inputs, Tensor)
    assert torch.equal(p2.inputs, x)


@pytest.mark.parametrize(
    ("inputs", "labels", "kwargs", "match"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), {}, r"`labels` is empty"),
        (torch.zeros(4, 3), torch.tensor([0.0, 1.0, 1.0, 0.0]), {}, r"`labels` must have an int"),
        (torch.zeros(4, 3), torch.tensor([True, False, True, False]), {}, r"integer dtype"),
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), {}, r"`labels` must be 1-D"),
        (torch.zeros(5, 3), torch.zeros(4, dtype=torch.long), {}, r"`inputs` must have N = 4"),
        (
            {"a": torch.zeros(4, 3), "b": torch.zeros(3, 2)},
            torch.zeros(4, dtype=torch.long),
            {},
            r"`inputs\['b'\]` must have N = 4 rows .* got shape \(3, 2\)",
        ),
        (
            (torch.zeros(4, 3), torch.tensor(1.0)),
            torch.zeros(4, dtype=torch.long),
            {},
            r"`inputs\[1\]` must have N = 4 rows",
        ),
        (torch.zeros(4, 3), torch.tensor([0, 1, -1, 2]), {}, r"non-negative .* minimum of -1"),
        (
            torch.zeros(4, 3),
            torch.tensor([0, 1, 3, 2]),
            {"num_classes": 3},
            r"`num_classes` must be >= max\(labels\) \+ 1 = 4, got 3",
        ),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"batch_size": 0}, r"`batch_size`"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"name": "a/b"}, r"`name`"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"name": ""}, r"`name`"),
        ({}, torch.zeros(4, dtype=torch.long), {}, r"`inputs` must contain at least one"),
    ],
)
def test_construction_errors(inputs: object, labels: Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProbeSet(inputs, labels, **kwargs)


def test_construction_type_errors() -> None:
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"`inputs\[1\]` must be a tensor"):
        ProbeSet((torch.zeros(4, 2), "text"), y)
    with pytest.raises(TypeError, match=r"`batch_size` must be an int"):
        ProbeSet(torch.zeros(4, 2), y, batch_size=2.0)
    with pytest.raises(TypeError, match=r"`forward` must be callable"):
        ProbeSet(torch.zeros(4, 2), y, forward=3)
    with pytest.raises(TypeError, match=r"`transform` must be callable"):
        ProbeSet(torch.zeros(4, 2), y, transform="logits")


def test_check_num_classes() -> None:
    x, y = _data(20, C=4)
    y[0] = 3
    probe = ProbeSet(x, y)
    probe.check_num_classes(4)
    with pytest.raises(ValueError, match=r"outputs C = 5 classes .* `num_classes` = 4"):
        probe.check_num_classes(5)
    with pytest.raises(ValueError, match=r"outputs C = 3 classes"):
        probe.check_num_classes(3)
    padded = ProbeSet(x, y, num_classes=6)
    padded.check_num_classes(6)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 7, 33, 1000])
@pytest.mark.parametrize("with_targets", [False, True])
def test_from_dataset_stratified_keeps_proportions(size: int, with_targets: bool) -> None:
    labels = [0] * 500 + [1] * 300 + [2] * 199 + [3] * 1
    random.Random(0).shuffle(labels)
    ds = _ItemDataset(labels, with_targets=with_targets)
    probe = ProbeSet.from_dataset(ds, size, seed=3)
    expected = _largest_remainder({0: 500, 1: 300, 2: 199, 3: 1}, size)
    got = {c: int((probe.labels == c).sum()) for c in range(4)}
    assert got == expected
    idx = probe.inputs[:, 0].long()
    assert len(set(idx.tolist())) == size  # no repeats
    assert torch.equal(probe.inputs[:, 1].long(), probe.labels)  # x matches its label
    assert torch.equal(probe.labels, torch.tensor(labels)[idx])
    assert torch.equal(idx, idx.sort().values)  # dataset order


def test_from_dataset_targets_shortcut_gives_same_probe() -> None:
    labels = [i % 3 for i in range(90)]
    a = ProbeSet.from_dataset(_ItemDataset(labels, with_targets=False), 20, seed=5)
    b = ProbeSet.from_dataset(_ItemDataset(labels, with_targets=True), 20, seed=5)
    c = ProbeSet.from_dataset(TensorDataset(*_tensors(labels)), 20, 5)
    assert torch.equal(a.inputs, b.inputs)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.inputs, c.inputs)
    assert torch.equal(a.labels, c.labels)


def _tensors(labels: list[int]) -> tuple[Tensor, Tensor]:
    y = torch.tensor(labels)
    x = torch.stack([torch.arange(len(labels)).float(), y.float()], dim=1)
    return x, y


def test_from_dataset_deterministic_and_global_rng_untouched() -> None:
    labels = [i % 4 for i in range(200)]
    ds = _ItemDataset(labels)
    before = _rng_states()
    a = ProbeSet.from_dataset(ds, 40, seed=11)
    b = ProbeSet.from_dataset(ds, 40, seed=11)
    c = ProbeSet.from_dataset(ds, 40, seed=12)
    u1 = ProbeSet.from_dataset(ds, 40, seed=11, stratified=False)
    u2 = ProbeSet.from_dataset(ds, 40, seed=11, stratified=False)
    _assert_rng_equal(before, _rng_states())
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, c.inputs)
    assert torch.equal(u1.inputs, u2.inputs)
    assert len(set(u1.inputs[:, 0].tolist())) == 40


def test_from_dataset_nested_items_and_errors() -> None:
    class DictItems(Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int) -> tuple[dict, int]:
            return {"a": torch.full((3,), float(i)), "b": (torch.tensor([i, -i]),)}, i % 3

    probe = ProbeSet.from_dataset(DictItems(), 9, seed=0, name="val")
    assert probe.inputs["a"].shape == (9, 3)
    assert probe.inputs["b"][0].shape == (9, 2)
    assert torch.equal(probe.inputs["a"][:, 0].long() % 3, probe.labels)
    assert sorted(torch.bincount(probe.labels).tolist()) == [3, 3, 3]
    with pytest.raises(ValueError, match=r"`size` must be <= len\(dataset\) = 30, got 31"):
        ProbeSet.from_dataset(DictItems(), 31)
    with pytest.raises(ValueError, match=r"`size` must be >= 1, got 0"):
        ProbeSet.from_dataset(DictItems(), 0)
    with pytest.raises(TypeError, match=r"map-style Dataset"):
        ProbeSet.from_dataset(iter([]), 3)
    # items that are not (x, y) pairs need unpack=
    triples = [(torch.zeros(2), i % 2, "meta") for i in range(10)]
    with pytest.raises(TypeError, match=r"unpack"):
        ProbeSet.from_dataset(triples, 4)
    ok = ProbeSet.from_dataset(triples, 4, unpack=lambda item: (item[0], item[1]))
    assert ok.num_samples == 4


def test_from_dataloader_takes_first_samples_and_stops_early() -> None:
    x, y = _data(100, C=3)
    consumed = []

    def batches():
        for start in range(0, 100, 16):
            consumed.append(start)
            yield x[start : start + 16], y[start : start + 16]

    probe = ProbeSet.from_dataloader(batches(), 40, stratified=False)
    assert torch.equal(probe.inputs, x[:40])
    assert torch.equal(probe.labels, y[:40])
    assert len(consumed) == 3  # 48 >= 40 samples after three batches
    with pytest.raises(ValueError, match=r"yielded only 100 samples, fewer than `size` = 101"):
        ProbeSet.from_dataloader(DataLoader(TensorDataset(x, y), batch_size=16), 101)
    with pytest.raises(ValueError, match=r"`pool_size` must be >= 50"):
        ProbeSet.from_dataloader(DataLoader(TensorDataset(x, y)), 50, pool_size=10)


def test_from_dataloader_stratified_shuffled_keeps_global_rng() -> None:
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    x = torch.stack([torch.arange(100).float(), y.float()], dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    torch.manual_seed(1)
    before = _rng_states()
    a = ProbeSet.from_dataloader(loader, 20, seed=0, pool_size=100)
    _assert_rng_equal(before, _rng_states())
    b = ProbeSet.from_dataloader(loader, 20, seed=0, pool_size=100)  # same loader order again
    assert torch.equal(a.inputs, b.inputs)
    assert torch.bincount(a.labels).tolist() == [12, 6, 2]
    assert torch.equal(a.inputs[:, 1].long(), a.labels)
    # a dict-structured loader
    dict_loader = [({"u": x[i : i + 10], "v": x[i : i + 10, :1]}, y[i : i + 10]) for i in (0, 10)]
    p = ProbeSet.from_dataloader(dict_loader, 15, stratified=False)
    assert torch.equal(p.inputs["u"], x[:15])
    assert p.inputs["v"].shape == (15, 1)


# --------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 60, 1000])
def test_predict_matches_independent_log_softmax(batch_size: int) -> None:
    x, y = _data(60, d=5, C=4)
    x = x.double()  # a float64 model: batching cannot change its logits beyond 1e-15
    model = _mlp(5, 4).double().eval()
    probe = ProbeSet(x, y, batch_size=batch_size)
    lp64 = probe.predict(model, dtype=torch.float64)
    lp32 = probe.predict(model)
    with torch.no_grad():
        reference = torch.log_softmax(model(x).double(), dim=-1)
        logits = model(x).numpy()
    assert lp64.dtype == torch.float64
    assert lp32.dtype == torch.float32
    assert lp64.shape == (60, 4)
    torch.testing.assert_close(lp64, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lp64.numpy(), _plain_log_softmax(logits), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lp32.numpy(), _plain_log_softmax(logits), rtol=0, atol=1e-5)
    assert not lp64.requires_grad
    with pytest.raises(ValueError, match=r"`dtype` must be torch.float32 or torch.float64"):
        probe.predict(model, dtype=torch.float16)


def test_predict_upcasts_before_log_softmax() -> None:
    class HalfLogits(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return (x * 7.3).to(torch.float16)

    x, y = _data(40, d=6, C=6)
    probe = ProbeSet(x, y, num_classes=6)
    model = HalfLogits()
    got = probe.predict(model, dtype=torch.float64)
    half = model(x)
    upcast_first = torch.log_softmax(half.double(), dim=-1)
    in_half = torch.log_softmax(half, dim=-1).double()
    torch.testing.assert_close(got, upcast_first, rtol=0, atol=1e-12)
    assert (got - in_half).abs().max() > 1e-4  # computing in float16 would lose this much
    # under autocast (the trainer's precision context) the result keeps the requested dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = probe.predict(_mlp(6, 6), dtype=torch.float64)
    assert lp.dtype == torch.float64
    assert torch.allclose(lp.exp().sum(-1), torch.ones(40, dtype=torch.float64), atol=1e-12)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)

    def forward(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        return {"logits": self.a(a) + self.b(b), "aux": a.sum()}


def test_predict_collections_and_hooks() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(25, 3, generator=g), torch.randn(25, 2, generator=g)
    y = torch.randint(0, 4, (25,), generator=g)
    y[0] = 3
    model = _TwoInputs()
    with torch.no_grad():
        reference = torch.log_softmax(model(a, b)["logits"].double(), dim=-1)

    tuple_probe = ProbeSet((a, b), y, forward=lambda m, batch: m(*batch), batch_size=4)
    torch.testing.assert_close(tuple_probe.predict(model, dtype=torch.float64), reference)

    dict_probe = ProbeSet({"a": a, "b": b}, y, forward=lambda m, batch: m(**batch), batch_size=6)
    torch.testing.assert_close(dict_probe.predict(model, dtype=torch.float64), reference)

    Pair = namedtuple("Pair", ["a", "b"])
    nt_probe = ProbeSet(
        Pair(a, b),
        y,
        forward=lambda m, batch: (m(batch.a, batch.b)["logits"], None),
        transform=lambda out: out[0],
        batch_size=10,
    )
    torch.testing.assert_close(nt_probe.predict(model, dtype=torch.float64), reference)

    bad = ProbeSet((a, b), y, forward=lambda m, batch: (m(*batch)["logits"], 0))
    with pytest.raises(TypeError, match=r"pass `transform=`"):
        bad.predict(model)
    wrong = ProbeSet((a, b), y, forward=lambda m, batch: m(*batch)["logits"][:, None])
    with pytest.raises(ValueError, match=r"must have shape \(B, C\) = \(25, C\), got \(25, 1, 4\)"):
        wrong.predict(model)


def test_predict_changes_no_mode_and_makes_no_grad() -> None:
    x, y = _data(30, d=5, C=4)
    model = _mlp(5, 4)
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    lp = ProbeSet(x, y).predict(model)
    assert [m.training for m in model.modules()] == flags
    assert torch.is_grad_enabled()
    assert not lp.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_predict_under_evaluation_mode_leaves_rng_and_batchnorm_untouched() -> None:
    x, y = _data(50, d=5, C=4)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)
    ).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    probe = ProbeSet(x, y, batch_size=16)
    before = _rng_states()
    with evaluation_mode(model):
        first = probe.predict(model, dtype=torch.float64)
        second = probe.predict(model, dtype=torch.float64)
    _assert_rng_equal(before, _rng_states())
    assert torch.equal(first, second)  # no dropout noise
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k  # running stats and counters untouched
    assert model.training
    assert all(m.training for m in model.modules())


def test_inputs_moved_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.device] = []
    real = probe_module.move_data_to_device

    def counting(data: object, device: torch.device) -> object:
        calls.append(torch.device(device))
        return real(data, device)

    monkeypatch.setattr(probe_module, "move_data_to_device", counting)
    x, y = _data(20, d=5, C=4)
    probe = ProbeSet(x, y, batch_size=6)
    model = _mlp(5, 4)
    for _ in range(3):
        probe.predict(model)
    assert calls == [torch.device("cpu")]
    assert probe.inputs_on("cpu") is probe.inputs_on(torch.device("cpu"))
    # a module on another device (the meta device stands in for an accelerator)
    meta_model = _mlp(5, 4).to("meta")
    assert module_device(meta_model) == torch.device("meta")
    out = probe.predict(meta_model)
    probe.predict(meta_model)
    assert out.device.type == "meta"
    assert out.shape == (20, 4)
    assert calls == [torch.device("cpu"), torch.device("meta")]
    assert probe.labels_on("meta").device.type == "meta"
    probe.clear_cache()
    probe.predict(model)
    assert len(calls) == 4  # labels_on moved once more, then the cleared cache re-moved


def test_module_device_without_parameters() -> None:
    assert module_device(nn.ReLU()) == torch.device("cpu")


# --------------------------------------------------------------------------------------------
# evaluation_mode
# --------------------------------------------------------------------------------------------


def test_evaluation_mode_restores_mixed_flags_exactly() -> None:
    model = nn.Sequential(
        nn.Linear(3, 3),
        nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.1), nn.Sequential(nn.Linear(3, 3))),
        nn.Dropout(0.2),
    )
    model.train()
    model[1].eval()  # a frozen block inside a training model ...
    model[1][2].train()  # ... with a training child
    model[2].training = False
    flags = [m.training for m in model.modules()]
    assert len(set(flags)) == 2  # really mixed
    with evaluation_mode(model) as m:
        assert m is model
        assert not any(mod.training for mod in model.modules())
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(RuntimeError, match="boom"), evaluation_mode(model):
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == flags


# --------------------------------------------------------------------------------------------
# DDP slicing
# --------------------------------------------------------------------------------------------


def _plain_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    per = -(-n // world)
    real = [i for i in range(n) if i // per == rank]
    return real + [n - 1] * (per - len(real)), len(real)


@pytest.mark.parametrize("n", [1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 5, 16])
def test_shard_reassembles_the_full_probe(n: int, world: int) -> None:
    x, y = _data(n, d=5, C=4)
    x = x.double()  # float64 model: batch composition changes the logits by < 1e-15 only
    probe = ProbeSet(x, y, name="val", num_classes=4, batch_size=3)
    model = _mlp(5, 4).double().eval()
    full = probe.predict(model, dtype=torch.float64)
    per = math.ceil(n / world)
    outputs, total_real = [], 0
    for rank in range(world):
        idx, num_real = shard_indices(n, rank, world)
        expected_idx, expected_real = _plain_shard(n, rank, world)
        assert idx.tolist() == expected_idx
        assert num_real == expected_real
        shard = probe.shard(rank, world)
        again = probe.shard(rank, world)
        assert torch.equal(shard.inputs, again.inputs)  # deterministic
        assert shard.num_samples == per
        assert shard.num_real == num_real
        assert shard.name == "val"
        assert shard.num_classes == 4
        assert shard.batch_size == 3
        assert torch.equal(shard.inputs, x[expected_idx])
        assert torch.equal(shard.labels, y[expected_idx])
        outputs.append(shard.predict(model, dtype=torch.float64))
        total_real += num_real
    assert total_real == n
    gathered = torch.stack(outputs)  # what all_gather returns: (W, per, C)
    torch.testing.assert_close(probe.unshard(gathered), full, rtol=0, atol=1e-13)
    torch.testing.assert_close(probe.unshard(gathered.reshape(-1, 4)), full, rtol=0, atol=1e-13)
    # trimming each rank's real rows and concatenating gives the same
    trimmed = torch.cat([o[: _plain_shard(n, r, world)[1]] for r, o in enumerate(outputs)])
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-13)


def test_shard_errors() -> None:
    probe = ProbeSet(*_data(10))
    with pytest.raises(ValueError, match=r"`rank` must be < `world_size` = 2, got 2"):
        probe.shard(2, 2)
    with pytest.raises(ValueError, match=r"`world_size` must be >= 1, got 0"):
        probe.shard(0, 0)
    with pytest.raises(ValueError, match=r"`rank` must be >= 0, got -1"):
        probe.shard(-1, 2)
    with pytest.raises(ValueError, match=r"`gathered` must have shape \(W, ceil\(N / W\), C\)"):
        probe.unshard(torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match=r"W \* per >= N = 10"):
        probe.unshard(torch.zeros(9, 4))


def test_subset_keeps_configuration() -> None:
    x, y = _data(12, C=4)
    probe = ProbeSet({"x": x}, y, name="val", num_classes=9, batch_size=2)
    sub = probe.subset([3, 1, 1])
    assert torch.equal(sub.inputs["x"], x[[3, 1, 1]])
    assert torch.equal(sub.labels, y[[3, 1, 1]])
    assert (sub.name, sub.num_classes, sub.batch_size) == ("val", 9, 2)
