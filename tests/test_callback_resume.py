"""Resume into the same run after a job was killed with SIGKILL (``kill -9``).

The job is ``tests/_resume_job.py``: a tiny MLP trained for 12 steps (4 per epoch, data in a
fixed order, SGD with momentum), two probes captured at every step, checkpoints with
``save_last=True``. Each killed run is a real process that dies by SIGKILL at a chosen moment:
processes forked from the test process (so Lightning is imported once) that kill themselves or
are killed by the test. The resumed runs continue the same
``dirpath/run_name`` with the same callback arguments; every scheduled step must then be stored
exactly once, and where Lightning guarantees a reproducible resume (a checkpoint after the last
batch of an epoch, data in a fixed order) the weights and the snapshots must equal an
uninterrupted run's.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _resume_job import MAX_STEPS, PROBES, STEPS_PER_EPOCH, run_job

import lightning_manifold
from lightning_manifold.store import TrajectoryStore

JOB = Path(__file__).with_name("_resume_job.py")
ALL_STEPS = np.arange(MAX_STEPS + 1)


def _store(out: Path, probe: str) -> TrajectoryStore:
    return TrajectoryStore(out / "manifold" / "run" / probe)


def _child(out: Path, job: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP thread pool
    run_job(out, **job)


def _run_killed(out: Path, **job: Any) -> None:
    """Run the job in a forked process that kills itself; check it died by SIGKILL."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(out, job))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL, f"the job was not killed (exit code {proc.exitcode})"


def _checkpoint_step(out: Path) -> int:
    """The step of the newest checkpoint (what ``ckpt_path="last"`` restores)."""
    steps = [int(p.stem.rpartition("step=")[2]) for p in (out / "ckpt").glob("epoch=*.ckpt")]
    assert steps, f"no checkpoint in '{out / 'ckpt'}'"
    return max(steps)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: final weights and every probe's (T, N, C) log-probabilities."""
    out = tmp_path_factory.mktemp("reference")
    model = run_job(out)
    return {
        "weights": _weights(model),
        **{p: np.asarray(_store(out, p).log_probs(valid_only=False)) for p in PROBES},
    }


def _assert_every_step_once(out: Path, reference: dict[str, Any]) -> None:
    """Every scheduled step stored exactly once, in order, no stray files, and the snapshots
    equal the uninterrupted run's (the job is deterministic)."""
    for probe in PROBES:
        store = _store(out, probe)
        np.testing.assert_array_equal(store.steps, ALL_STEPS, err_msg=probe)
        assert store.valid.all()
        listed = {(store.path / r["file"]).resolve() for r in store.records}
        on_disk = {p.resolve() for p in (store.path / "snapshots").iterdir()}
        assert on_disk == listed  # no leftovers of the killed write
        torch.testing.assert_close(
            np.asarray(store.log_probs(valid_only=False)), reference[probe], msg=probe
        )


@pytest.mark.parametrize(
    ("kill", "ckpt_every_steps", "ckpt_path"),
    [
        # in the store writer, between the two probes' snapshots of one step; resume from "last"
        ("write:6", 4, "last"),
        # inside a capture, while the second probe runs through the model; resume from a file
        ("predict:10", 4, "file"),
        # at a batch start just after a capture was queued; the checkpoint is mid-epoch
        ("batch:7", 3, "last"),
    ],
)
def test_killed_run_resumes_into_the_same_store(
    tmp_path: Path, reference: dict[str, Any], kill: str, ckpt_every_steps: int, ckpt_path: str
) -> None:
    _run_killed(tmp_path, kill=kill, ckpt_every_steps=ckpt_every_steps)
    checkpoint_step = _checkpoint_step(tmp_path)
    where, _, at = kill.partition(":")
    # a checkpoint claims only captures that are on disk: steps 0 .. checkpoint_step - 1
    assert len(_store(tmp_path, "train")) >= checkpoint_step
    if where != "batch":  # the kill hit the capture of step `at`: the probes disagree
        assert _store(tmp_path, "val").steps.max() < int(at)
    if where == "write":  # snapshots after the checkpoint: rolled back, captured again
        np.testing.assert_array_equal(_store(tmp_path, "train").steps, np.arange(int(at) + 1))
    kept = {
        p: dict(zip(_store(tmp_path, p).steps.tolist(), _store(tmp_path, p).wall_times.tolist()))
        for p in PROBES
    }

    if ckpt_path == "file":
        ckpt_path = str(next((tmp_path / "ckpt").glob(f"epoch=*-step={checkpoint_step}.ckpt")))
    model = run_job(tmp_path, ckpt_path=ckpt_path, ckpt_every_steps=ckpt_every_steps)

    for probe in PROBES:  # snapshots before the checkpoint's step are kept, not rewritten
        store = _store(tmp_path, probe)
        for step, wall in zip(store.steps.tolist(), store.wall_times.tolist()):
            if step < checkpoint_step:
                assert wall == kept[probe][step]
    if ckpt_every_steps == STEPS_PER_EPOCH:  # saved after an epoch's last batch: reproducible
        _assert_every_step_once(tmp_path, reference)
        torch.testing.assert_close(_weights(model), reference["weights"])
    else:  # mid-epoch: the data order after the resume is not the uninterrupted run's
        for probe in PROBES:
            np.testing.assert_array_equal(_store(tmp_path, probe).steps, ALL_STEPS)


def test_job_killed_from_outside_resumes_in_a_new_interpreter(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    """A job killed by its parent once it stored 9 snapshots, then resumed by a fresh
    interpreter with ``ckpt_path="last"``, as a cluster job would be."""
    job = multiprocessing.get_context("fork").Process(target=_child, args=(tmp_path, {"slow": 0.3}))
    job.start()
    deadline = time.monotonic() + 300
    while job.is_alive() and time.monotonic() < deadline:
        try:
            if len(_store(tmp_path, "train")) >= 9:
                break
        except (FileNotFoundError, ValueError):  # not created yet
            pass
        time.sleep(0.02)
    job.kill()  # SIGKILL
    job.join(timeout=60)
    assert job.exitcode == -signal.SIGKILL, f"the job was not killed (exit code {job.exitcode})"
    assert len(_store(tmp_path, "train")) >= _checkpoint_step(tmp_path) >= 8

    env = {**os.environ, "PYTHONPATH": str(Path(lightning_manifold.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(JOB), str(tmp_path), "--ckpt-path", "last"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    _assert_every_step_once(tmp_path, reference)
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as saved:
        weights = {k: torch.from_numpy(saved[k]) for k in saved.files}
    torch.testing.assert_close(weights, reference["weights"])


def test_killed_before_the_first_checkpoint(tmp_path: Path, reference: dict[str, Any]) -> None:
    """No checkpoint yet: ``ckpt_path="last"`` restores nothing, so the run is new and finds
    its own snapshots. ``if_exists`` decides: error (default), overwrite or resume."""
    out = tmp_path / "run"
    _run_killed(out, kill="write:2")  # the first checkpoint would be at step 4
    assert not list((out / "ckpt").glob("*.ckpt"))
    before = {p: _store(out, p).records for p in PROBES}
    np.testing.assert_array_equal(_store(out, "train").steps, [0, 1, 2])
    np.testing.assert_array_equal(_store(out, "val").steps, [0, 1])
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    with pytest.raises(ValueError, match=r"`run_name` must name a new run") as info:
        run_job(out, ckpt_path="last")
    message = str(info.value)
    assert 'if_exists="overwrite"' in message
    assert 'if_exists="resume"' in message
    assert "ckpt_path=" in message
    assert str(_store(out, "train").path) in message
    assert {p: _store(out, p).records for p in PROBES} == before  # nothing was touched

    model = run_job(out, ckpt_path="last", if_exists="overwrite")
    _assert_every_step_once(out, reference)
    torch.testing.assert_close(_weights(model), reference["weights"])

    # "resume": keep the steps every probe holds (0 and 1), capture the later ones; step 2 of
    # probe "train" was stored without its "val" twin and is captured again
    run_job(copy, if_exists="resume")
    _assert_every_step_once(copy, reference)
    for probe in PROBES:
        records = _store(copy, probe).records
        assert records[:2] == before[probe][:2]


def test_if_exists_resume_refuses_a_run_missing_a_probe_store(tmp_path: Path) -> None:
    """A probe added since the stored run has no store: continuing would mean dropping the
    other probes' snapshots, so "resume" refuses and nothing is touched."""
    train = TrajectoryStore.create(
        tmp_path / "manifold" / "run" / "train",
        labels=np.arange(6) % 3,
        num_classes=3,
        probe_name="train",
        run_name="run",
    )
    train.append(np.full((6, 3), -np.log(3.0), dtype=np.float32), step=0, epoch=0)
    with pytest.raises(ValueError, match=r"`if_exists`='resume' needs a store for every probe"):
        run_job(tmp_path, if_exists="resume")
    assert _store(tmp_path, "train").records == train.records
