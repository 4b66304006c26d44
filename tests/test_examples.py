"""Every example runs (in fast settings) and produces what it promises; the README snippet runs.

The compare example is run once per module; its dendrogram must separate the two
architectures before it separates seeds (thesis fig. 2.6a, on the data the example generates).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from lightning_manifold import ReferenceEmbedding
from lightning_manifold import functional as F
from lightning_manifold.store import TrajectoryStore, list_stores

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the examples put their own directory on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _run_example(name: str, argv: list[str]) -> tuple[int, str]:
    """``examples/<name>.py``'s ``main(argv)`` and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _load(name).main(argv)
    return code, out.getvalue()


# ----------------------------------------------------------------------------------- synthetic


def test_synthetic_task_matches_the_thesis_recipe() -> None:
    syn = _load("_synthetic")
    c, d = 0.5, 30
    expected = [50 * c * np.exp(-c * i) for i in range(1, d + 1)]
    np.testing.assert_allclose(syn.sloppy_eigenvalues(d, c).numpy(), expected, rtol=1e-12)
    task = syn.make_task(d=d, c=c, n_train=20000, n_test=100, seed=3)
    assert task.x_train.shape == (20000, d)
    assert task.x_test.shape == (100, d)
    assert task.num_classes == 5
    counts = np.bincount(task.y_train.numpy(), minlength=5)
    assert counts.min() > 0.05 * 20000  # every class present, none negligible
    var = task.x_train.double().var(0).numpy()
    np.testing.assert_allclose(var[:5], expected[:5], rtol=0.05)  # sloppy covariance
    again = syn.make_task(d=d, c=c, n_train=20000, n_test=100, seed=3)
    assert torch.equal(again.x_train, task.x_train)
    assert torch.equal(again.y_train, task.y_train)


def test_warm_up_batchnorm_sets_the_data_statistics() -> None:
    syn = _load("_synthetic")
    model = syn.MLPStudent(6, 3, depth=2, width=8)
    model.eval()
    x = torch.randn(300, 6) * 3 + 1
    syn.warm_up_batchnorm(model, x)
    assert not model.training
    assert all(not m.training for m in model.modules())
    first_bn = model.net[1]
    h = model.net[0](x).detach().double().numpy()  # pre-BatchNorm activations, plain numpy
    np.testing.assert_allclose(first_bn.running_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first_bn.running_var.numpy(), h.var(0, ddof=1), rtol=1e-3)
    assert first_bn.momentum == 0.1


# ----------------------------------------------------------------------------------- quickstart


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("quickstart")
    code, printed = _run_example("quickstart", ["--fast", "--out", str(out)])
    assert code == 0
    return out, printed


def test_quickstart_writes_logs_store_and_figures(quickstart: tuple[Path, str]) -> None:
    out, printed = quickstart
    run_dir = out / "manifold" / "quickstart"  # the pictures sit next to the run's stores
    assert (run_dir / "manifold.png").read_bytes().startswith(PNG_MAGIC)
    page = (run_dir / "manifold.html").read_text(encoding="utf-8")
    assert "Plotly" in page
    assert "data:image/png;base64," in page
    stores = {s.probe_name: s for s in list_stores(out / "manifold")}
    assert set(stores) == {"train", "test"}
    for store in stores.values():
        assert store.run_name == "quickstart"
        assert int(store.valid.sum()) == len(store) >= 10
        assert store.meta["config"] == "mlp1-adam"
    assert f"tensorboard --logdir {out / 'tensorboard'}" in printed
    assert "progress" in printed
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    progress = acc.Scalars("manifold/train/progress")
    assert [e.step for e in progress] == stores["train"].steps.tolist()
    if importlib.util.find_spec("wandb") is not None:
        runs = list((out / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        assert list(runs[0].glob("*.wandb"))
        assert "wandb sync" in printed


def test_quickstart_never_overwrites_a_run(tmp_path: Path) -> None:
    quick = _load("quickstart")
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart-2").mkdir()
    assert quick._fresh_run_name(tmp_path, "quickstart") == "quickstart-3"


# ----------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare")
    code, printed = _run_example("compare_runs", ["--fast", "--out", str(out)])
    assert code == 0
    return out, printed


def _architecture(run: str) -> str:
    return run.split("-")[0]  # "mlp1-sgd-seed0" -> "mlp1"


def test_compare_dendrogram_separates_architectures_before_seeds(
    compare: tuple[Path, str],
) -> None:
    out, _ = compare
    rows = (out / "compare" / "trajectory_distances.csv").read_text().splitlines()
    names = rows[0].split(",")[1:]
    D = np.array([[float(v) for v in r.split(",")[1:]] for r in rows[1:]])
    arch = np.array([_architecture(n) for n in names])
    assert sorted(set(arch)) == ["mlp1", "mlp2"]
    assert len(names) == 4
    same = arch[:, None] == arch[None, :]
    off = ~np.eye(len(names), dtype=bool)
    # every within-architecture (seed) distance is below every between-architecture one
    assert D[same & off].max() < D[~same].min()
    # the top split of the average-linkage dendrogram is the architecture
    clusters = fcluster(linkage(squareform(D, checks=False), "average"), 2, "maxclust")
    assert len(set(clusters)) == 2
    for a in ("mlp1", "mlp2"):
        assert len(set(clusters[arch == a])) == 1
    left, right = json.loads((out / "compare" / "dendrogram.json").read_text())["top_split"]
    assert {frozenset(_architecture(n) for n in side) for side in (left, right)} == {
        frozenset({"mlp1"}),
        frozenset({"mlp2"}),
    }


def test_compare_reference_embedding_and_explained_stress(compare: tuple[Path, str]) -> None:
    out, printed = compare
    ref = ReferenceEmbedding.load(out / "reference.npz")
    assert ref.run_names == ["mlp1-sgd-seed0"]  # the first run is the reference
    assert "mean d_B to the reference at equal progress" in printed
    match = re.search(r"top 1: ([\d.]+)%, top 3: ([\d.]+)%, top 10: ([\d.]+)%", printed)
    assert match is not None
    top1, top3, top10 = (float(v) / 100 for v in match.groups())
    assert 0 < top1 <= top3 <= top10 <= 1
    assert top10 > 0.9  # a low-dimensional manifold (the thesis reports ~99%)
    coords = (out / "embedding" / "coordinates.csv").read_text().splitlines()
    assert len(coords) - 1 == sum(int(s.valid.sum()) for s in list_stores(out / "runs"))
    for name in ("embedding/embedding.png", "projected.png", "compare/dendrogram.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    tubes = (out / "compare" / "tube_widths.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in tubes[1:]} == {"mlp1-sgd", "mlp2-sgd"}


def test_compare_distances_agree_with_the_functional_core(compare: tuple[Path, str]) -> None:
    out, _ = compare
    rows = (out / "compare" / "trajectory_distances.csv").read_text().splitlines()
    names = rows[0].split(",")[1:]
    d01 = float(rows[1].split(",")[2])
    trajs: list[Any] = []
    for name in names[:2]:
        store = TrajectoryStore(out / "runs" / name / "train")
        lp = torch.from_numpy(np.asarray(store.log_probs(), dtype=np.float64))
        trajs += [lp.exp(), F.progress_from_log_probs(lp, torch.from_numpy(store.labels))]
    assert d01 == pytest.approx(float(F.trajectory_distance(*trajs)), rel=1e-9)


# ----------------------------------------------------------------------------------- images


def _write_cifar_python(directory: Path, n_train: int = 128, n_test: int = 64) -> None:
    """A tiny dataset in the CIFAR-10 python format: pickled dicts, like the official files."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)

    def batch(n: int) -> dict[bytes, Any]:
        y = rng.integers(0, 10, n)
        x = np.clip(y[:, None] * 25.0 + rng.normal(0, 30, (n, 3072)), 0, 255).astype(np.uint8)
        return {
            b"batch_label": b"tiny",
            b"labels": y.tolist(),
            b"data": x,
            b"filenames": [b"f"] * n,
        }

    for i in (1, 2):
        with open(directory / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(n_train // 2), fh)
    with open(directory / "test_batch", "wb") as fh:
        pickle.dump(batch(n_test), fh)
    with open(directory / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh)


class _Exploit:
    """Unpickling this would call ``os.system``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo exploited",))


def test_cifar_loader_reads_python_format_and_npz(tmp_path: Path) -> None:
    cifar = _load("_cifar")
    _write_cifar_python(tmp_path / "py")
    data = cifar.load_cifar10(tmp_path / "py")
    assert data.x_train.shape == (128, 3, 32, 32)
    assert data.x_train.dtype == np.uint8
    assert data.x_test.shape == (64, 3, 32, 32)
    assert data.y_test.shape == (64,)
    assert data.classes[3] == "class3"
    with open(tmp_path / "py" / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh)  # the test's own file: plain pickle is fine here
    np.testing.assert_array_equal(data.x_train[:64].reshape(64, -1), raw[b"data"])
    np.testing.assert_array_equal(data.y_train[:64], raw[b"labels"])
    cifar.save_npz(data, tmp_path / "npz")
    again = cifar.load_cifar10(tmp_path / "npz")
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)


def test_cifar_loader_refuses_code_in_pickles(tmp_path: Path) -> None:
    cifar = _load("_cifar")
    _write_cifar_python(tmp_path / "py")
    with open(tmp_path / "py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Exploit(), b"labels": []}, fh)
    with pytest.raises(ValueError, match=r"refusing to load global '(posix|os)\.system'"):
        cifar.load_cifar10(tmp_path / "py")
    with pytest.raises(FileNotFoundError, match=r"data_batch_1\.\.5"):
        cifar.load_cifar10(tmp_path)


def test_image_classifier_trains_on_a_local_cifar_directory(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "out"
    argv = ["--data-dir", str(tmp_path), "--fast", "--out", str(out), "--threads", "1"]
    code, printed = _run_example("image_classifier", argv)
    assert code == 0
    assert "2 training batches" in printed
    stores = {s.probe_name: s for s in list_stores(out / "manifold")}
    assert set(stores) == {"train", "test"}
    assert stores["train"].num_classes == 10
    assert stores["train"].num_samples == 128
    assert len(stores["train"]) >= 5
    assert (out / "manifold_train.png").read_bytes().startswith(PNG_MAGIC)
    code, _ = _run_example("image_classifier", ["--data-dir", str(tmp_path / "none")])
    assert code == 2


# ----------------------------------------------------------------------------------- README


def _readme_block(section: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match is not None, f"no python block in section {section!r}"
    return match.group(1)


def test_readme_trainer_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syn = _load("_synthetic")
    code = _readme_block("Use it in your Trainer")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    task = syn.make_task(d=20, n_train=600, n_test=10, seed=1)
    namespace: dict[str, Any] = {
        "model": syn.MLPStudent(20, 5, depth=1, width=32, optimizer="adam", lr=3e-3),
        "train_dataset": torch.utils.data.TensorDataset(task.x_train, task.y_train),
        "train_loader": syn.train_loader(task, 100),
    }
    monkeypatch.chdir(tmp_path)
    with syn.torch_threads(1), contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md", "exec"), namespace)
    store = TrajectoryStore(namespace["manifold"].store_paths["train"])
    assert store.num_samples == 500
    assert len(store) > 10
    assert printed.getvalue().strip().splitlines()[-1] == str(store.path)
    assert store.path.resolve().is_relative_to(tmp_path.resolve())


def test_readme_sections_cover_the_issue() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for section in (
        "Quickstart",
        "Use it in your Trainer",
        "What the numbers mean",
        "Compare runs",
    ):
        assert f"## {section}\n" in text
    assert "python examples/quickstart.py" in text
    assert "python -m pytest -q" in text
    assert "docs/manifold.png" in text
    assert "doi.org/10.1073/pnas.2310002121" in text
