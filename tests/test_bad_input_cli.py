"""Bad input on the command line (issue 11 item 3, issue 13): one line on stderr naming the file
and what was expected, exit code 2, never a traceback nor numpy's advice to unpickle; a closed
pipe ends quietly; ``--help`` imports no heavy module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_store

from lightning_manifold.cli import EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HEAVY = ("torch", "lightning", "matplotlib", "scipy", "plotly")
N, C = 12, 3


def _root(tmp_path: Path, runs: tuple[str, ...] = ("a-seed0", "a-seed1")) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    root = tmp_path / "runs"
    for name in runs:
        logits = np.linspace(0.0, 3.0, 4)[:, None, None] * (np.eye(C)[y] + rng.normal(size=(N, C)))
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        write_store(root, name, y, C, list(lp.astype(np.float32)))
    return root


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Run ``main(argv)``: exit 2, one line on stderr holding every fragment, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "pickle" not in err.lower()
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _truncated_npz(path: Path) -> Path:
    np.savez(path, eigenvalues=np.arange(50.0), coords=np.ones((20, 3)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: _truncated_npz(p / "ref.npz"), "not a zip archive"),
        (lambda p: _write(p / "empty.npz", b""), "empty file"),
        (lambda p: _write(p / "noise.npz", os.urandom(300)), "not a zip archive"),
        (lambda p: _write(p / "README.md", b"# hello\n"), "not a zip archive"),
    ],
    ids=["truncated", "empty", "random-bytes", "readme"],
)
def test_inspect_a_file_that_is_not_a_reference(tmp_path, capsys, make, what) -> None:
    path = make(tmp_path)
    _error(["inspect", str(path)], capsys, str(path), "not a reference embedding", what)


def test_inspect_an_npz_of_other_arrays(tmp_path, capsys) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    _error(["inspect", str(path)], capsys, str(path), "not a reference embedding")


def test_inspect_an_npz_holding_objects_never_advises_unpickling(tmp_path, capsys) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    _error(["inspect", str(path)], capsys, str(path), "not a reference embedding")


@pytest.mark.parametrize("command", ["embed", "compare", "inspect"])
def test_a_corrupt_manifest_stops_the_command_instead_of_skipping_the_store(
    tmp_path, capsys, command
) -> None:
    root = _root(tmp_path, ("a-seed0", "a-seed1", "b-seed0"))
    manifest = root / "a-seed1" / "train" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # truncated JSON
    argv = [command, str(root)] + ([] if command == "inspect" else ["-o", str(tmp_path / "o")])
    _error(argv, capsys, str(manifest), "manifest")
    assert not (tmp_path / "o").exists()  # nothing written from the other stores


def test_a_missing_path_and_a_file_as_run_dir(tmp_path, capsys) -> None:
    _error(["embed", str(tmp_path / "nope")], capsys, str(tmp_path / "nope"), "does not exist")
    f = tmp_path / "file.txt"
    f.write_text("x")
    _error(["compare", str(f)], capsys, str(f), "must be a directory")


def test_option_values_are_checked(tmp_path, capsys) -> None:
    root = _root(tmp_path)
    _error(["compare", str(root), "--clusters", "3", "-o", str(tmp_path / "o")], capsys,
           "--clusters 3", "number of runs (2)")  # fmt: skip
    for bad in ("0,3", "1,x", ""):
        with pytest.raises(SystemExit) as exc:
            main(["embed", str(root), "--stress-at", bad])
        assert exc.value.code == EXIT_USAGE
        assert "--stress-at" in capsys.readouterr().err


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from lightning_manifold.cli import main\n"
        "for argv in (['--help'], ['embed', '--help'], ['compare', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_inspect_into_a_closed_pipe_exits_quietly(tmp_path) -> None:
    root = _root(tmp_path, tuple(f"run{i}" for i in range(6)))
    r, w = os.pipe()
    os.close(r)  # the reader went away before anything was written, like `| head -0`
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_manifold", "inspect", str(root), "--json"],
        stdout=w, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    os.close(w)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as other tools


def test_inspect_output_still_parses_when_the_pipe_stays_open(tmp_path) -> None:
    root = _root(tmp_path, ("run0", "run1"))
    done = subprocess.run(
        [sys.executable, "-m", "lightning_manifold", "inspect", str(root), "--json"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [i["run"] for i in json.loads(done.stdout)] == ["run0", "run1"]
