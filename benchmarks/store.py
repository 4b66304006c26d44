"""Cost of one ``TrajectoryStore.append`` early and late in a long run.

Appends ``--captures`` snapshots (N=1000, C=10 float32 by default) to a fresh store and reports,
for the first and the last 500 appends: the median and maximum time per append and the bytes
written per append, split into the snapshot file and the metadata (manifest + record log). The
bytes are counted with ``/proc/self/io`` (``wchar``: every byte passed to ``write``). For
comparison, the run is repeated with the whole manifest also rewritten atomically at every
append, as format 1 did, in the same process ("format-1" rows: time of the append plus that
rewrite, bytes of the rewrite).

Usage::

    python benchmarks/store.py                  # 5000 appends (format 1: 2000), no fsync
    python benchmarks/store.py --durable        # with fsync (slower, disk-bound)
    python benchmarks/store.py --captures 1000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lightning_manifold.store import TrajectoryStore, _atomic_write


def _written() -> int:
    """Bytes this process has passed to ``write`` so far (Linux)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _run(root: Path, captures: int, n: int, c: int, durable: bool, whole_manifest: bool) -> dict:
    labels = np.arange(n) % c
    store = TrajectoryStore.create(
        root / "run" / "train",
        labels=labels,
        num_classes=c,
        probe_name="train",
        run_name="run",
        durable=durable,
    )
    lp = np.full((n, c), -np.log(c), dtype=np.float32)
    snapshot_bytes = lp.nbytes + 128
    records: list[dict] = []
    times, written = [], []
    for i in range(captures):
        w0, t0 = _written(), time.perf_counter()
        store.append(lp, step=i, epoch=0, metrics={"loss": 1.0, "error": 0.5})
        w1 = _written()
        if whole_manifest:  # format 1 also rewrote the whole manifest at every append
            records.append({"index": i, "step": i, "epoch": 0, "wall_time": time.time()})
            records[-1].update(metrics={"loss": 1.0, "error": 0.5}, valid=True, file="x")
            data = json.dumps({"records": records}, separators=(",", ":")).encode()
            w1 = _written()
            _atomic_write(root / "old.json", lambda f, d=data: f.write(d), durable=durable)
        times.append(time.perf_counter() - t0)
        written.append(_written() - w1 if whole_manifest else w1 - w0 - snapshot_bytes)
    return {"times": times, "meta_bytes": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--format1-captures", type=int, default=2000)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    window = min(500, args.captures // 2, args.format1_captures // 2)
    print(f"load: {os.getloadavg()}; {args.captures} appends of ({args.samples}, {args.classes})")
    results = {}
    for label, whole, captures in (
        ("record log (format 2)", False, args.captures),
        ("whole manifest (format 1)", True, args.format1_captures),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            results[label] = _run(
                Path(tmp), captures, args.samples, args.classes, args.durable, whole
            )
    new = results["record log (format 2)"]
    old = results["whole manifest (format 1)"]
    print(f"{'':28s}{'first ' + str(window):>22s}{'last ' + str(window):>22s}{'late/early':>12s}")
    for what, key, scale, unit in (
        ("append time, median", "times", 1e3, "ms"),
        ("metadata bytes, mean", "meta_bytes", 1.0, "B"),
    ):
        for label, res in (("store.append", new), ("format-1 manifest write", old)):
            early, late = res[key][:window], res[key][-window:]
            agg = statistics.median if key == "times" else statistics.fmean
            e, l_ = agg(early) * scale, agg(late) * scale
            print(f"{what + ' ' + label:50s}{e:10.3f} {unit:3s}{l_:12.3f} {unit:3s}{l_ / e:8.2f}")
    print(
        f"store.append: max {max(new['times']) * 1e3:.1f} ms (a compaction); metadata "
        f"{statistics.fmean(new['meta_bytes']):.0f} B per append on average over all "
        f"{args.captures} (compactions included); snapshot file "
        f"{args.samples * args.classes * 4 + 128} B per append"
    )
    print(
        f"capture 10 vs {args.captures}: {new['times'][9] * 1e3:.3f} ms / "
        f"{new['times'][-1] * 1e3:.3f} ms, metadata {new['meta_bytes'][9]} B / "
        f"{new['meta_bytes'][-1]} B"
    )


if __name__ == "__main__":
    main()
