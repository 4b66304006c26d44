"""Command line: embed, compare, reference, report and inspect stored training trajectories.

``lightning-manifold`` (console script) and ``python -m lightning_manifold`` run :func:`main`::

    lightning-manifold embed runs/ -o out/             # joint InPCA map, PNG + HTML + CSV
    lightning-manifold compare runs/ -o out/           # trajectory distances, dendrogram, tubes
    lightning-manifold reference runs/baseline -o ref.npz
    lightning-manifold report runs/ -o report.html     # one self-contained page
    lightning-manifold inspect runs/                   # what the stores hold

A ``RUN_DIR`` is a trajectory store (``<root>/<run>/<probe>``), a run directory holding one
store per probe, or any directory above them (every store below it is used). All runs must be
recorded on the same probe (same labels and number of classes); ``--probe`` picks one when
several are present (default: ``train`` if there, else the only one).

Errors a user can fix (a path that does not exist, no store, a corrupt store, mismatched
probes, empty stores, a bad option value) exit with code 2 and one line on stderr, without a
traceback. A closed output pipe (``... | head``) ends the command quietly.

This module only parses arguments and prints. Everything it computes comes from
:mod:`lightning_manifold.analysis` (the notebook API); heavy modules (torch, Lightning,
matplotlib, SciPy, plotly) are imported inside the commands that need them, so ``--help``
answers at once. ``embed`` and ``compare`` draw their figures in a second process
(:mod:`lightning_manifold._figure_worker`) started before torch is imported, so plotting uses
the second core; ``LIGHTNING_MANIFOLD_FIGURE_WORKER=0`` draws them in the command's process.
The names that used to live here (``resolve_stores``, ``compare_stores``,
``report_html``, ...) are still importable from this module and resolve to ``analysis``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_USAGE", "build_parser", "inspect_path", "main"]

PROG = "lightning-manifold"
EXIT_USAGE = 2
"""Exit code for errors the user can fix (bad path, mismatched probes, empty store, ...)."""
EXIT_BROKEN_PIPE = 141
"""Exit code when the reader of stdout went away (128 + SIGPIPE, like other Unix tools)."""

STRESS_DIMS = (1, 3, 10)

_MOVED = {
    "Comparison", "Trajectory", "compare_stores", "coordinate_rows", "dendrogram_figure",
    "embed_stores", "embedding_frame", "explained_stress_summary", "linkage_matrix",
    "load_trajectories", "report_html", "resolve_stores", "run_frame", "run_groups",
    "run_names", "snapshots_from_store", "top_split", "trajectory_distance_matrix",
    "tube_width_rows", "write_csv", "write_figures",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    # The analysis functions moved to lightning_manifold.analysis; importing them from here
    # keeps working without importing torch at start-up.
    if name in _MOVED:
        return getattr(importlib.import_module("lightning_manifold.analysis"), name)
    raise AttributeError(f"module 'lightning_manifold.cli' has no attribute {name!r}")


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _stress_text(ks: Any, values: Any) -> str:
    return ", ".join(f"top {int(k)}: {float(v):.1%}" for k, v in zip(ks, values))


# --------------------------------------------------------------------------------------------
# inspect


def _store_info(store: Any) -> dict[str, Any]:
    import numpy as np

    valid = store.valid
    info: dict[str, Any] = {
        "kind": "store",
        "path": str(store.path),
        "run": store.run_name,
        "probe": store.probe_name,
        "num_samples": store.num_samples,
        "num_classes": store.num_classes,
        "dtype": str(store.dtype),
        "snapshots": len(store),
        "valid": int(valid.sum()),
        "steps": [int(store.steps[0]), int(store.steps[-1])] if len(store) else [],
        "metrics": store.metric_names,
        "meta": store.meta,
    }
    if valid.any():
        last = store.records[int(np.flatnonzero(valid)[-1])]["metrics"]
        info["last"] = {k: last[k] for k in ("progress", "error") if k in last}
    return info


def _reference_info(path: Path) -> dict[str, Any]:
    from lightning_manifold.analysis import explained_stress_summary
    from lightning_manifold.embedding import ReferenceEmbedding

    ref = ReferenceEmbedding.load(path)
    return {
        "kind": "reference",
        "path": str(path),
        "probe": ref.probe_name,
        "runs": ref.run_names,
        "num_samples": ref.num_samples,
        "num_classes": ref.num_classes,
        "num_models": ref.num_models,
        "num_points": ref.num_points,
        "landmarks": ref.has_landmarks,
        "n_components": ref.n_components,
        "eigenvalues": ref.eigenvalues.detach().to("cpu").numpy().tolist(),
        "explained_stress": {str(d): v for d, v in explained_stress_summary(ref).items()},
        "meta": ref.meta,
    }


def inspect_path(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Describe a reference ``.npz`` or every store at or below a directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file that is not a reference embedding (truncated, empty, another kind
            of file), a directory without stores, or a store that cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"PATH '{p}' does not exist")
    if p.is_file():
        expected = (
            "not a reference embedding (expected a .npz written by `lightning-manifold reference`)"
        )
        size = p.stat().st_size
        if size == 0 or not zipfile.is_zipfile(p):
            what = "an empty file" if size == 0 else f"not a zip archive ({size} bytes; truncated?)"
            raise ValueError(f"PATH '{p}': {expected}; got {what}")
        try:
            return [_reference_info(p)]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            detail = _one_line(str(err)).split(". If you trust")[0]  # never advise unpickling
            raise ValueError(f"PATH '{p}': {expected}; it cannot be read: {detail}") from err
    from lightning_manifold._runs import stores_below

    return [_store_info(s) for s in stores_below(p)]


def _format_info(info: dict[str, Any]) -> str:
    if info["kind"] == "reference":
        stress = ", ".join(f"top {d}: {v:.1%}" for d, v in info["explained_stress"].items())
        eig = ", ".join(f"{v:.4g}" for v in info["eigenvalues"][:10])
        lines = [
            f"reference {info['path']}",
            f"  probe {info['probe']!r}: N={info['num_samples']} C={info['num_classes']}",
            f"  runs ({len(info['runs'])}): {', '.join(info['runs'])}",
            f"  models: {info['num_models']}, points: {info['num_points']} "
            f"(landmarks: {'yes' if info['landmarks'] else 'no'}), "
            f"components: {info['n_components']}",
            f"  eigenvalues: {eig}",
            f"  explained stress: {stress}",
        ]
    else:
        steps = "-" if not info["steps"] else f"{info['steps'][0]}..{info['steps'][1]}"
        last = ", ".join(f"{k}={v:.4g}" for k, v in info.get("last", {}).items())
        lines = [
            f"store {info['path']}",
            f"  run {info['run']!r}, probe {info['probe']!r}: N={info['num_samples']} "
            f"C={info['num_classes']} ({info['dtype']})",
            f"  snapshots: {info['snapshots']} ({info['valid']} valid), steps {steps}",
        ]
        if last:
            lines.append(f"  last valid: {last}")
        if info["metrics"]:
            lines.append(f"  metrics: {', '.join(info['metrics'])}")
    if info.get("meta"):
        lines.append(f"  meta: {json.dumps(info['meta'], sort_keys=True)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# subcommands


class _Stages:
    """A tqdm bar over the stages of a command, on stderr, quiet when stderr is not a TTY."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        self.bar = tqdm(total=total, desc=desc, disable=disable, leave=False, file=sys.stderr)

    def __call__(self, what: str) -> None:
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _figure_worker(kind: str) -> Any:
    """A :class:`~lightning_manifold._figure_worker.FigureWorker` started now, before torch is
    imported, so that plotting imports and drawing use the second core; None when it cannot
    start or ``LIGHTNING_MANIFOLD_FIGURE_WORKER=0`` (figures are then drawn in this process)."""
    if os.environ.get("LIGHTNING_MANIFOLD_FIGURE_WORKER", "1") == "0":
        return None
    from lightning_manifold._figure_worker import FigureWorker

    try:
        return FigureWorker(kind)
    except OSError:
        return None


def _worker_files(worker: Any, draw_here: Any) -> dict[str, Path]:
    """The files the worker wrote, or ``draw_here()``'s when the worker failed."""
    try:
        return worker.result()
    except RuntimeError:
        return draw_here()


def _with_worker(kind: str, args: argparse.Namespace, command: Any) -> int:
    """``command(args, worker)`` with a figure worker started first (none with --no-figures),
    stopped whatever happens."""
    worker = None if args.no_figures else _figure_worker(kind)
    try:
        return int(command(args, worker))
    finally:
        if worker is not None:
            worker.close()


def _cmd_embed(args: argparse.Namespace) -> int:
    return _with_worker("embedding", args, _embed)


def _embed(args: argparse.Namespace, worker: Any) -> int:
    from lightning_manifold import analysis as A

    stages = _Stages(4, "embed")
    stores = A.resolve_stores(args.run_dirs, args.probe)
    names = A.run_names(stores)
    stress_at = args.stress_at or list(STRESS_DIMS)
    stages("joint InPCA")
    ref = A.embed_stores(
        stores, names, n_components=args.components,
        max_models=args.max_models, landmarks=not args.no_landmarks,
    )  # fmt: skip
    stages("explained stress")
    stress = A.explained_stress_table(stores, stress_at, ref)
    out = Path(args.out_dir)
    written: dict[str, Path] = {}
    stages("figures")
    if not args.no_figures:
        groups = A.run_groups(stores, names, args.group_by)
        frame = A.embedding_frame(ref, title=f"{len(stores)} run(s)", groups=groups)

        def draw_here() -> dict[str, Path]:
            return A.write_figures(frame, out, stem="embedding", dpi=args.dpi)

        if worker is not None:  # it draws while the tables are written below
            from lightning_manifold._figure_worker import frame_payload

            arrays, header = frame_payload(frame)
            header.update(out_dir=str(out), dpi=args.dpi, stem="embedding")
            worker.send("embedding", arrays, header)
        else:
            written = draw_here()
    header, rows = A.coordinate_rows(ref, n_components=args.components)
    tables = {"coordinates": A.write_csv(out / "coordinates.csv", header, rows)}
    tables["summary"] = out / "embedding.json"
    summary = A.embedding_summary(ref, stress)
    tables["summary"].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if worker is not None and not args.no_figures:
        written = _worker_files(worker, draw_here)
    if not args.no_figures and "html" not in written:
        print(f"{PROG}: plotly is not installed; skipping the interactive HTML", file=sys.stderr)
    written.update(tables)
    stages("done")
    stages.close()
    print(
        f"embedded {ref.num_models} models of {len(stores)} run(s) on probe {ref.probe_name!r}; "
        "explained stress (eq. 2.2.8)"
    )
    print(f"  models alone:   {_stress_text(stress.k, stress.models)}")
    if ref.has_landmarks:
        print(
            f"  with landmarks: {_stress_text(stress.k, stress.with_landmarks)} (the map also "
            "embeds ignorance, the geodesic and truth; --no-landmarks to leave them out)"
        )
    for kind, path in written.items():
        print(f"  {kind:12s} {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    return _with_worker("compare", args, _compare)


def _compare(args: argparse.Namespace, worker: Any) -> int:
    import numpy as np

    from lightning_manifold import analysis as A

    stores = A.resolve_stores(args.run_dirs, args.probe, require_valid=2)
    if args.clusters is not None and args.clusters > len(stores):
        raise ValueError(f"--clusters {args.clusters}: at most the number of runs ({len(stores)})")
    out = Path(args.out_dir)

    def dendrogram_job(D: Any, names: list[str], groups: list[str]) -> None:
        # the worker draws the dendrogram while the tube widths are computed here
        header = {"out_dir": str(out)}
        worker.send("dendrogram", {"distances": D, "names": np.array(names, dtype=str),
                                   "groups": np.array(groups, dtype=str)}, header)  # fmt: skip

    comparison = A.compare_stores(
        stores, group_by=args.group_by, n_points=args.points, tube_points=args.tube_points,
        figures=not args.no_figures and worker is None,
        on_distances=None if worker is None else dendrogram_job,
    )  # fmt: skip
    if worker is not None:
        bands = comparison.tubes.bands()
        arrays = {f"{i}/{k}": v for i, b in enumerate(bands.values()) for k, v in b.items()}
        arrays["groups"] = np.array(list(bands), dtype=str)
        worker.send("tubes", arrays, {"out_dir": str(out)})
    written = comparison.write(out, n_clusters=args.clusters)
    if worker is not None:

        def draw_here() -> dict[str, Path]:
            comparison.figure = A.dendrogram_figure(
                comparison.distances, comparison.names, comparison.groups
            )[0]
            return comparison.write(out, n_clusters=args.clusters)

        summary_path = written.pop("summary")  # listed last, as without the worker
        written.update(_worker_files(worker, draw_here))
        written["summary"] = summary_path
    left, right = comparison.top_split
    print(f"compared {len(stores)} runs; dendrogram top split:")
    print(f"  {{{', '.join(left)}}}\n  {{{', '.join(right)}}}")
    if args.clusters is not None:
        found = comparison.clusters(args.clusters)
        print(f"{args.clusters} clusters (average linkage):")
        for c in sorted(set(found.values())):
            print(f"  {c}: {', '.join(n for n, k in found.items() if k == c)}")
    summary = comparison.group_summary()
    overall = summary.overall()
    print(
        f"mean trajectory distance within a group {overall['within']:.4g}, between groups "
        f"{overall['between']:.4g}"
    )
    tubes = comparison.mean_tube_width()
    for group, runs, within, between in zip(
        summary.group, summary.runs, summary.within, summary.between
    ):
        tube = f", mean tube width {tubes[group]:.4g}" if group in tubes else ""
        print(f"  {group!s}: {runs} run(s), within {within:.4g}, between {between:.4g}{tube}")
    for kind, path in written.items():
        print(f"  {kind:12s} {path}")
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from lightning_manifold import analysis as A

    stores = A.resolve_stores(args.run_dirs, args.probe)
    meta = {"created_by": f"{PROG} reference", "stores": [str(s.path) for s in stores]}
    stress_at = args.stress_at or list(STRESS_DIMS)
    ref = A.embed_stores(
        stores, n_components=args.components, max_models=args.max_models,
        landmarks=not args.no_landmarks, meta=meta,
    )  # fmt: skip
    path = ref.save(args.output)
    stress = A.explained_stress_table(stores, stress_at, ref)
    print(
        f"reference of {ref.num_models} models from {ref.num_runs} run(s), "
        f"{ref.n_components} components -> {path}"
    )
    print(f"  explained stress, models alone:   {_stress_text(stress.k, stress.models)}")
    if ref.has_landmarks:
        print(
            f"  explained stress, with landmarks: {_stress_text(stress.k, stress.with_landmarks)}"
        )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lightning_manifold import analysis as A

    stores = A.resolve_stores(args.run_dirs, args.probe)
    page = A.report_html(
        stores, group_by=args.group_by, n_components=args.components,
        max_models=args.max_models, n_points=args.points, title=args.title,
        stress_at=args.stress_at or STRESS_DIMS,
    )  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"report of {len(stores)} run(s) -> {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if len(stores) < 2:
        print("  one run: the report has no comparison section (it says why)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    infos = inspect_path(args.path)
    if args.json:
        print(json.dumps(infos, indent=1))
    else:
        print("\n".join(_format_info(i) for i in infos))
    return 0


# --------------------------------------------------------------------------------------------
# parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive integers such as 1,3,10, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive integers such as 1,3,10, got {text!r}"
        )
    return values


def _add_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR",
        help="a trajectory store (<root>/<run>/<probe>), a run directory, or a directory "
        "above several runs (every store below it is used)",
    )  # fmt: skip
    p.add_argument(
        "--probe", default=None, metavar="NAME",
        help="probe to use when the runs hold several (default: 'train' if present, else the "
        "only probe)",
    )  # fmt: skip


def _add_embedding(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--components", type=_positive_int, default=10, metavar="K",
        help="number of InPCA components kept (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--max-models", type=_at_least_two, default=None, metavar="M",
        help="embed at most M models, evenly subsampled within each run (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--stress-at", type=_int_list, default=None, metavar="K1,K2,...",
        help="report the explained stress (eq. 2.2.8) of the top k axes for each k, for the "
        "models alone and with the landmarks (default: 1,3,10)",
    )  # fmt: skip


def _add_grouping(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--group-by", default=None, metavar="REGEX",
        help="regular expression searched in each run name; runs with the same match (or "
        "first capture group) are seeds of one configuration, for the tube widths (default: "
        "the store's meta['config'], else the run name without a trailing 'seed<k>')",
    )  # fmt: skip
    p.add_argument(
        "--points", type=_at_least_two, default=100, metavar="S",
        help="progress values used for the trajectory distance integral (default: 100)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-manifold`` argument parser (subcommands embed, compare, reference,
    report, inspect)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Place stored training trajectories on the information-geometric map of "
        "Mao et al. (PNAS 2024): joint InPCA embeddings, trajectory distances at equal "
        "progress, reference embeddings and reports. Stores are written by ManifoldCallback.",
        epilog="Errors about paths or inputs exit with code 2. "
        "See `lightning-manifold <command> --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "embed", help="joint InPCA of stored runs -> figures (PNG, HTML) and a coordinates CSV",
        description="Embed every valid snapshot of the runs (plus ignorance, the ignorance->"
        "truth geodesic and truth) with InPCA (eq. 2.2.6). Writes embedding.png (summary "
        "figure), embedding.html (interactive 3D, needs plotly), coordinates.csv (one row per "
        "snapshot: run, probe, step, progress, error, distance_to_geodesic, pc1..pcK) and "
        "embedding.json (eigenvalues, explained stress).",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    p.add_argument(
        "-o", "--out-dir", default="manifold_embed", metavar="DIR",
        help="output directory (default: ./manifold_embed)",
    )  # fmt: skip
    p.add_argument(
        "--no-landmarks", action="store_true",
        help="do not embed ignorance, the geodesic and truth as points (they are still drawn, "
        "projected onto the map)",
    )  # fmt: skip
    p.add_argument("--dpi", type=float, default=100.0, help="resolution of the PNG (default: 100)")
    p.add_argument(
        "--no-figures", action="store_true", help="write the CSV and JSON only (no PNG, no HTML)"
    )
    p.add_argument(
        "--group-by", default=None, metavar="REGEX",
        help="colour runs by configuration group (see `compare --help`; default: meta['config'], "
        "else the run name without a trailing 'seed<k>')",
    )  # fmt: skip
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "compare", help="trajectory distances at equal progress, dendrogram, tube widths",
        description="Re-index every trajectory by progress (eq. 2.2.4), compute the distance "
        "between every pair of runs (eq. 2.2.5), cluster them (average linkage; thesis fig. "
        "2.6a) and measure the tube width across seeds of each configuration (§2.5.4.1). "
        "Writes trajectory_distances.csv, dendrogram.png, dendrogram.json (leaves, linkage, "
        "top split) and tube_widths.csv.",
    )  # fmt: skip
    _add_runs(p)
    _add_grouping(p)
    p.add_argument(
        "--tube-points", type=_at_least_two, default=50, metavar="S",
        help="progress values of the tube widths (default: 50)",
    )  # fmt: skip
    p.add_argument(
        "--clusters", type=_positive_int, default=None, metavar="K",
        help="also cut the dendrogram into K clusters and print them (saved in dendrogram.json)",
    )  # fmt: skip
    p.add_argument(
        "--no-figures", action="store_true",
        help="write the CSV and JSON only (no dendrogram.png, no tube_widths.png)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--out-dir", default="manifold_compare", metavar="DIR",
        help="output directory (default: ./manifold_compare)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "reference", help="build a reference embedding (.npz) for later runs",
        description="Fit an InPCA embedding of the runs and save it as one .npz file (no "
        "pickle). Pass it to later runs (ManifoldCallback / OnlineManifold reference=) to "
        "project them onto the same map and compare them at equal progress.",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    p.add_argument("-o", "--output", required=True, metavar="REF.npz", help="file to write")
    p.add_argument(
        "--no-landmarks", action="store_true",
        help="do not embed ignorance, the geodesic and truth as points of the map",
    )  # fmt: skip
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser(
        "report", help="one self-contained HTML page of the runs",
        description="Write one HTML file with a table of runs, the joint InPCA map "
        "(interactive when plotly is installed; plotly.js is inlined, no CDN), the spectrum, "
        "progress curves, the distance to the geodesic, the dendrogram of trajectory distances "
        "and the tube widths. Images are embedded; the file works offline.",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    _add_grouping(p)
    p.add_argument(
        "-o", "--output", default="manifold_report.html", metavar="REPORT.html",
        help="file to write (default: ./manifold_report.html)",
    )  # fmt: skip
    p.add_argument("--title", default="lightning-manifold report", help="title of the page")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "inspect", help="what a store, a directory of runs or a reference holds",
        description="Describe every trajectory store at or below PATH (run, probe, N, C, "
        "snapshots, valid count, steps, metrics, metadata), or a reference embedding .npz "
        "(runs, models, components, eigenvalues, explained stress).",
    )  # fmt: skip
    p.add_argument("path", metavar="PATH", help="a store, a directory of runs, or a .npz reference")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_inspect)
    return parser


def _version() -> str:
    from lightning_manifold import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 2 for errors the user can fix, 141 when
    the reader of the output closed the pipe).

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return code
    except BrokenPipeError:
        # The reader (``| head``) went away: stay quiet, like other command-line tools. Point
        # stdout at devnull so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{PROG} {args.command}: error: {_one_line(str(message))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
