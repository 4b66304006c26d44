"""Pairwise Bhattacharyya distances (eq. 2.2.2) for many models, block by block, on disk.

The m x k distance matrix is a float64 ``.npy`` file (``np.lib.format.open_memmap`` layout).
It is cut into blocks of ``block_rows x block_cols`` models; a block needs the two blocks of
sqrt-probabilities and its output in memory, so block sizes follow from a memory budget and
nothing of size m^2 (nor m models) is ever held in RAM. For a symmetric matrix only blocks on
and above the diagonal are computed; each is written together with its mirror image.

Blocks are dealt to the ranks of a Lightning :class:`~lightning.fabric.Fabric` by index modulo
world size (static, so every run with the same plan computes every block identically); each
rank writes its blocks straight into the shared file (disjoint regions). After every block the
rank records it in a small JSON sidecar (write to a temporary file, then ``os.replace``), so an
interrupted run resumes without recomputing finished blocks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.scale._npyio import NpyLayout, create_npy, npy_layout
from lightning_manifold.scale._progress import progress_bar
from lightning_manifold.scale.classes import (
    ClassProjectionEffect,
    class_projection_effect,
    class_projection_matrix,
)
from lightning_manifold.scale.sources import ModelSource

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KERNEL_WORKSPACE_BYTES",
    "BlockPlan",
    "BlockedDistances",
    "as_source",
    "pairwise_bhattacharyya_blocked",
    "plan_blocks",
]

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Default memory budget of a pass: 2 GiB."""

KERNEL_WORKSPACE_BYTES = 32 * 2**20
"""Scratch of :func:`lightning_manifold.functional.bhattacharyya_from_sqrt` beyond its output:
it works on 192 x 192 model tiles and sample chunks of 4 MiB of coefficients (plus their group
products and logarithms), independent of the block size."""

_MAX_BLOCK = 2048  # larger blocks do not run faster and make progress/resume coarse
_FORMAT = 1


@dataclass(frozen=True)
class BlockPlan:
    """How an m x k distance matrix is cut into blocks, and what one block costs in memory.

    Attributes:
        num_rows: m, models along the rows.
        num_cols: k, models along the columns (m when symmetric).
        symmetric: only blocks with row block <= column block are computed (and mirrored).
        block_rows: models per row block.
        block_cols: models per column block.
        num_samples: N.
        num_classes: C (after any class projection).
        input_bytes: two blocks of float64 sqrt-probabilities plus the transient buffers of
            one block load (``block * N * C * (8 + raw itemsize)``).
        output_bytes: the float64 output block and its transposed copy for the mirror.
        workspace_bytes: the kernel's fixed scratch (:data:`KERNEL_WORKSPACE_BYTES`).
        memory_budget: the budget the plan was made for.
    """

    num_rows: int
    num_cols: int
    symmetric: bool
    block_rows: int
    block_cols: int
    num_samples: int
    num_classes: int
    input_bytes: int
    output_bytes: int
    workspace_bytes: int
    memory_budget: int

    @property
    def total_bytes(self) -> int:
        """input + output + workspace bytes of one block; <= ``memory_budget``."""
        return self.input_bytes + self.output_bytes + self.workspace_bytes

    @property
    def num_row_blocks(self) -> int:
        return -(-self.num_rows // self.block_rows)

    @property
    def num_col_blocks(self) -> int:
        return -(-self.num_cols // self.block_cols)

    def blocks(self) -> list[tuple[int, int]]:
        """(row block, column block) pairs in computing order (row-major, upper if symmetric).

        Block number t (position in this list) belongs to rank ``t % world_size``.
        """
        nr, nc = self.num_row_blocks, self.num_col_blocks
        if self.symmetric:
            return [(i, j) for i in range(nr) for j in range(i, nc)]
        return [(i, j) for i in range(nr) for j in range(nc)]

    def rows(self, i: int) -> range:
        """Model positions of row block ``i``."""
        return range(i * self.block_rows, min(self.num_rows, (i + 1) * self.block_rows))

    def cols(self, j: int) -> range:
        """Model positions of column block ``j``."""
        return range(j * self.block_cols, min(self.num_cols, (j + 1) * self.block_cols))


def _block_bytes(br: int, bc: int, N: int, C: int, raw_itemsize: int) -> tuple[int, int]:
    per_model = N * C
    # two resident blocks, plus, while one is being loaded, its raw values and the float64
    # copy that is rearranged sample-major (see _sample_major_rows)
    inputs = (br + bc) * per_model * 8 + max(br, bc) * per_model * (8 + raw_itemsize)
    outputs = 2 * br * bc * 8
    return inputs, outputs


def _sample_major_rows(S: Tensor) -> Tensor:
    """(b, N, C) sqrt-probabilities as a view of an (N, b, C) contiguous tensor.

    The kernel works sample-major (batched GEMMs over samples); an input already laid out that
    way is used without the copy the kernel would otherwise make for every call.
    """
    return S.transpose(0, 1).contiguous().transpose(0, 1)


def _sample_major_cols(T: Tensor) -> Tensor:
    """(b, N, C) sqrt-probabilities as a view of an (N, C, b) contiguous tensor (the layout
    of the kernel's right-hand operand)."""
    return T.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def plan_blocks(
    num_rows: int,
    num_cols: int | None,
    num_samples: int,
    num_classes: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    *,
    block_size: int | None = None,
    raw_itemsize: int = 8,
) -> BlockPlan:
    """Choose block sizes so that one block fits the memory budget.

    One block needs ``(block_rows + block_cols) * N * C * 8`` bytes of sqrt-probabilities,
    ``max(block_rows, block_cols) * N * C * (8 + raw_itemsize)`` bytes while a block is loaded
    (raw values and the float64 copy rearranged sample-major for the kernel), ``2 * block_rows
    * block_cols * 8`` bytes of output (block and mirror) and the kernel's fixed workspace. The
    largest square block (at most 2048 models) within the budget is taken, clipped to the
    matrix size.

    Args:
        num_rows: m.
        num_cols: k, or None for a symmetric m x m matrix.
        num_samples: N.
        num_classes: C.
        memory_budget: bytes one block may use.
        block_size: force this block size instead (checked against the budget).
        raw_itemsize: bytes per stored value (4 for float32 log-probabilities).

    Returns:
        A :class:`BlockPlan` with ``total_bytes <= memory_budget``.

    Raises:
        ValueError: if even one pair of models (or the forced block size) does not fit.
    """
    for name, value in (
        ("num_rows", num_rows),
        ("num_samples", num_samples),
        ("num_classes", num_classes),
    ):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}")
    symmetric = num_cols is None
    k = num_rows if num_cols is None else int(num_cols)
    if k < 1:
        raise ValueError(f"`num_cols` must be >= 1, got {k}")

    def cost(b: int) -> tuple[int, int, int, int]:
        br, bc = min(b, num_rows), min(b, k)
        i, o = _block_bytes(br, bc, num_samples, num_classes, raw_itemsize)
        return br, bc, i, o

    ws = KERNEL_WORKSPACE_BYTES
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"`block_size` must be >= 1, got {block_size}")
        br, bc, i, o = cost(int(block_size))
        if i + o + ws > memory_budget:
            raise ValueError(
                f"`block_size`={block_size} needs {i + o + ws} bytes per block, more than "
                f"`memory_budget`={memory_budget}"
            )
    else:
        br, bc, i, o = cost(1)
        if i + o + ws > memory_budget:
            raise ValueError(
                f"`memory_budget` must be at least {i + o + ws} bytes (one pair of models with "
                f"N={num_samples}, C={num_classes} plus {ws} bytes of kernel workspace), got "
                f"{memory_budget}"
            )
        lo, hi = 1, min(_MAX_BLOCK, max(num_rows, k))
        while lo < hi:  # largest b with cost(b) within budget
            mid = (lo + hi + 1) // 2
            _, _, i2, o2 = cost(mid)
            if i2 + o2 + ws <= memory_budget:
                lo = mid
            else:
                hi = mid - 1
        br, bc, i, o = cost(lo)
    if symmetric:
        br = bc = min(br, bc)
        i, o = _block_bytes(br, bc, num_samples, num_classes, raw_itemsize)
    return BlockPlan(
        num_rows=num_rows,
        num_cols=k,
        symmetric=symmetric,
        block_rows=br,
        block_cols=bc,
        num_samples=num_samples,
        num_classes=num_classes,
        input_bytes=i,
        output_bytes=o,
        workspace_bytes=ws,
        memory_budget=int(memory_budget),
    )


@dataclass
class BlockedDistances:
    """A distance matrix on disk and the record of how it was computed.

    Attributes:
        path: the ``.npy`` file, float64 (m, k).
        plan: the block plan.
        blocks_total: blocks in the plan.
        blocks_done: blocks finished (by any run, any rank).
        blocks_computed: blocks computed by this call (all ranks).
        seconds: wall time of this call.
        class_projection_effect: the measured effect of the class projection, if one was used.
        class_projection: the (C, k) class projection matrix used, or None.
    """

    path: Path
    plan: BlockPlan
    blocks_total: int
    blocks_done: int
    blocks_computed: int
    seconds: float
    class_projection_effect: ClassProjectionEffect | None = None
    class_projection: Tensor | None = None

    @property
    def complete(self) -> bool:
        """Whether every block has been computed."""
        return self.blocks_done == self.blocks_total

    @property
    def shape(self) -> tuple[int, int]:
        return (self.plan.num_rows, self.plan.num_cols)

    @property
    def matrix(self) -> np.memmap:
        """The (m, k) float64 matrix, memory-mapped read-only (pages load on access)."""
        return np.load(self.path, mmap_mode="r")


def as_source(x: ModelSource | np.ndarray | Tensor, name: str = "source") -> ModelSource:
    """Accept a :class:`ModelSource` or an (m, N, C) log-probability array."""
    if isinstance(x, ModelSource):
        return x
    if isinstance(x, np.ndarray | Tensor):
        return ModelSource.from_array(x)
    raise TypeError(
        f"`{name}` must be a ModelSource or an (m, N, C) array of log-probabilities, got "
        f"{type(x).__name__}"
    )


# ---------------------------------------------------------------------------- sidecar
def _sidecar(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".progress")


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_done(side: Path) -> set[int]:
    done: set[int] = set()
    for p in side.glob("done-rank*.json"):
        try:
            done.update(int(t) for t in json.loads(p.read_text())["done"])
        except (OSError, ValueError, KeyError):  # a torn file cannot exist (os.replace); skip
            continue
    return done


def _identity(plan: BlockPlan, rows: ModelSource, cols: ModelSource | None) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "shape": [plan.num_rows, plan.num_cols],
        "symmetric": plan.symmetric,
        "block_rows": plan.block_rows,
        "block_cols": plan.block_cols,
        "rows": rows.fingerprint(),
        "cols": None if cols is None else cols.fingerprint(),
    }


def _check_resumable(
    out_path: Path, side: Path, ident: dict[str, Any], *, explicit_block: bool
) -> dict[str, Any] | None:
    """The stored identity if ``out_path`` holds a compatible partial run, else None.

    Raises ValueError when a partial run exists for a different source or shape; a run with a
    different block size is adopted when no block size was forced.
    """
    plan_file = side / "plan.json"
    if not plan_file.is_file() or not out_path.is_file():
        return None
    stored = json.loads(plan_file.read_text())
    same_data = all(
        stored.get(key) == ident[key] for key in ("format", "shape", "symmetric", "rows", "cols")
    )
    if not same_data:
        raise ValueError(
            f"`out_path` {str(out_path)!r} holds a partial distance matrix of different models "
            f"or shape (stored {stored.get('shape')}, requested {ident['shape']}); pass "
            "resume=False to overwrite it or choose another path"
        )
    same_blocks = (stored["block_rows"], stored["block_cols"]) == (
        ident["block_rows"],
        ident["block_cols"],
    )
    if not same_blocks and explicit_block:
        raise ValueError(
            f"`block_size` must match the interrupted run to resume it: stored blocks "
            f"{stored['block_rows']}x{stored['block_cols']}, requested "
            f"{ident['block_rows']}x{ident['block_cols']}; pass resume=False to start over"
        )
    try:
        layout = npy_layout(out_path)
    except (OSError, ValueError):
        return None
    if layout.shape != tuple(ident["shape"]) or layout.dtype != np.float64:
        return None
    return stored


def _rank_info(fabric: Fabric | None) -> tuple[int, int]:
    if fabric is None:
        return 0, 1
    return int(fabric.global_rank), int(fabric.world_size)


def _barrier(fabric: Fabric | None) -> None:
    if fabric is not None and fabric.world_size > 1:
        fabric.barrier()


def _sum_over_ranks(fabric: Fabric | None, value: int) -> int:
    if fabric is None or fabric.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=fabric.device)
    return int(fabric.all_reduce(t, reduce_op="sum").reshape(-1)[0])


# ---------------------------------------------------------------------------- main entry
def pairwise_bhattacharyya_blocked(
    source: ModelSource | np.ndarray | Tensor,
    out_path: str | os.PathLike[str],
    *,
    other: ModelSource | np.ndarray | Tensor | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    block_size: int | None = None,
    class_projection: int | Tensor | np.ndarray | None = None,
    seed: int = 0,
    fabric: Fabric | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    resume: bool = True,
    max_blocks: int | None = None,
) -> BlockedDistances:
    """Bhattacharyya distances (eq. 2.2.2) between many models, in blocks, into an ``.npy`` file.

    ``D[u, v] = -(1/N) Σ_n log Σ_c sqrt(p_u[n, c] p_v[n, c])``, computed block by block with
    :func:`lightning_manifold.functional.bhattacharyya_from_sqrt`. With ``other=None`` the
    matrix is the symmetric (m, m) one with zero diagonal (only upper blocks are computed,
    each written with its mirror); otherwise it is the (m, k) matrix between ``source`` and
    ``other``.

    Memory: one block at a time, ``plan.total_bytes <= memory_budget`` (see
    :func:`plan_blocks`); inputs are read and the output written with explicit file offsets,
    so the resident memory does not grow with m.

    Several devices or machines: pass a launched :class:`~lightning.fabric.Fabric`; block
    number t goes to rank ``t % world_size``, every rank writes its blocks into the same file
    (which must be on a file system all ranks share) and all ranks return the same result.
    With one process (``fabric=None`` or ``devices=1``) the same blocks are computed in the
    same way, so the matrix is identical.

    Resuming: finished blocks are recorded in ``<out_path>.progress/`` after each block; a
    later call with ``resume=True`` on the same models skips them.

    Args:
        source: m models (a :class:`ModelSource`, or an (m, N, C) log-probability array).
        out_path: the ``.npy`` file to write (created, or reused when resuming).
        other: k models for a rectangular (m, k) matrix, or None for all pairs of ``source``.
        memory_budget: bytes one block may use (inputs + output + kernel workspace).
        block_size: force models per block (must fit the budget); default from the budget.
        class_projection: None, a number k of projected classes or a (C, k) matrix (thesis
            §3.5.2): distances are computed between projected models; the effect on d_B is
            measured on a sample of pairs and returned in ``class_projection_effect``.
        seed: seed of the random class projection and of the pair sample.
        fabric: a launched Fabric to spread blocks over its ranks; None for this process only.
        device: where blocks are computed without Fabric (default CPU; Fabric uses its own).
        progress: show a progress bar with ETA (rank 0, terminals only).
        resume: reuse finished blocks of an interrupted run on ``out_path``; False starts over.
        max_blocks: stop after computing this many blocks on each rank (to split a long run,
            or to test resuming); the result then has ``complete == False``.

    Returns:
        :class:`BlockedDistances` (``.matrix`` is the memory-mapped (m, k) float64 result).

    Raises:
        ValueError: for sources on different probes (N or C), a budget too small for one pair
            of models, or a partial run on ``out_path`` for different models.

    Example::

        >>> src = ModelSource.from_npy("log_probs.npy")          # (m, N, C) float32
        >>> D = pairwise_bhattacharyya_blocked(src, "D.npy", memory_budget=2**30).matrix
    """
    from lightning_manifold import functional as F

    start_time = time.perf_counter()
    rows = as_source(source, "source")
    cols = None if other is None else as_source(other, "other")
    if cols is not None and (cols.num_samples, cols.num_classes) != (
        rows.num_samples,
        rows.num_classes,
    ):
        raise ValueError(
            f"`other` must be on the same probe as `source`: (N, C) = "
            f"({rows.num_samples}, {rows.num_classes}), got ({cols.num_samples}, "
            f"{cols.num_classes})"
        )
    if max_blocks is not None and max_blocks < 0:
        raise ValueError(f"`max_blocks` must be >= 0 or None, got {max_blocks}")
    effect: ClassProjectionEffect | None = None
    M: Tensor | None = None
    if class_projection is not None:
        M = class_projection_matrix(rows.num_classes, class_projection, seed=seed)
        base = rows
        rows = rows.with_class_projection(M)
        cols = None if cols is None else cols.with_class_projection(M)
    rank, world = _rank_info(fabric)
    if fabric is not None:
        device = fabric.device
    out_path = Path(out_path)
    side = _sidecar(out_path)
    raw = max(rows.raw_itemsize, cols.raw_itemsize if cols is not None else 0)
    plan = plan_blocks(
        rows.num_models,
        None if cols is None else cols.num_models,
        rows.num_samples,
        rows.num_classes,
        memory_budget,
        block_size=block_size,
        raw_itemsize=raw,
    )
    ident = _identity(plan, rows, cols)
    stored = (
        _check_resumable(out_path, side, ident, explicit_block=block_size is not None)
        if resume
        else None
    )
    if stored is not None and (stored["block_rows"], stored["block_cols"]) != (
        plan.block_rows,
        plan.block_cols,
    ):
        plan = _adopt(plan, stored, raw)
        ident = _identity(plan, rows, cols)
    if rank == 0 and stored is None:
        side.mkdir(parents=True, exist_ok=True)
        for p in side.glob("done-rank*.json"):
            p.unlink()
        create_npy(out_path, (plan.num_rows, plan.num_cols), np.dtype(np.float64))
        meta = dict(ident)
        meta["plan"] = asdict(plan)
        if class_projection is not None:
            effect = class_projection_effect(
                base, M, seed=seed, memory_budget=memory_budget, device=device
            )
            meta["class_projection_effect"] = effect.as_dict()
        _atomic_json(side / "plan.json", meta)
    _barrier(fabric)
    meta = json.loads((side / "plan.json").read_text())
    if meta.get("class_projection_effect") is not None:
        effect = ClassProjectionEffect(**meta["class_projection_effect"])
    layout: NpyLayout = npy_layout(out_path)
    blocks = plan.blocks()
    done = _read_done(side)
    mine_file = side / f"done-rank{rank}.json"
    mine: set[int] = set()
    if mine_file.is_file():
        mine = {int(t) for t in json.loads(mine_file.read_text())["done"]}
    todo = [t for t in range(len(blocks)) if t % world == rank and t not in done]
    if max_blocks is not None:
        todo = todo[:max_blocks]
    N = plan.num_samples
    bar = progress_bar(progress, total=len(todo), desc="d_B blocks", unit="block", rank=rank)
    computed = 0
    cached: tuple[int, Tensor] | None = None
    cached_col: tuple[int, Tensor] | None = None
    pair_samples = 0
    loop_start = time.perf_counter()
    try:
        for t in todo:
            i, j = blocks[t]
            r, c = plan.rows(i), plan.cols(j)
            if cached is None or cached[0] != i:
                cached = None  # free the previous row block before loading the next
                cached = (i, _sample_major_rows(rows.sqrt_probs(r, device=device)))
            S = cached[1]
            if plan.symmetric and i == j:
                D = F.bhattacharyya_from_sqrt(S)
            else:
                if cached_col is None or cached_col[0] != j:
                    cached_col = None
                    src = rows if plan.symmetric else cols
                    assert src is not None
                    cached_col = (j, _sample_major_cols(src.sqrt_probs(c, device=device)))
                D = F.bhattacharyya_from_sqrt(S, cached_col[1])
                if plan.num_col_blocks > 1:
                    cached_col = None  # a single column block (e.g. landmarks) is kept
            block = D.detach().to("cpu").numpy()
            layout.write_block(r.start, c.start, block)
            if plan.symmetric and i != j:
                layout.write_block(c.start, r.start, block.T)
            del D, block
            mine.add(t)
            _atomic_json(mine_file, {"done": sorted(mine)})
            computed += 1
            bar.update(1)
            pair_samples += len(r) * len(c) * N
            rate = pair_samples / max(time.perf_counter() - loop_start, 1e-9)
            bar.set_postfix_str(f"{rate:.3g} pair-samples/s", refresh=False)
    finally:
        bar.close()
    _barrier(fabric)
    computed_all = _sum_over_ranks(fabric, computed)
    done_all = len(_read_done(side) & set(range(len(blocks))))
    return BlockedDistances(
        path=out_path,
        plan=plan,
        blocks_total=len(blocks),
        blocks_done=done_all,
        blocks_computed=computed_all,
        seconds=time.perf_counter() - start_time,
        class_projection_effect=effect,
        class_projection=M,
    )


def _adopt(plan: BlockPlan, stored: dict[str, Any], raw: int) -> BlockPlan:
    br, bc = int(stored["block_rows"]), int(stored["block_cols"])
    i, o = _block_bytes(br, bc, plan.num_samples, plan.num_classes, raw)
    if i + o + plan.workspace_bytes > plan.memory_budget:
        raise ValueError(
            f"`memory_budget`={plan.memory_budget} is too small to resume the run on this path "
            f"(its blocks of {br}x{bc} models need {i + o + plan.workspace_bytes} bytes); raise "
            "the budget or pass resume=False"
        )
    return BlockPlan(
        **{**asdict(plan), "block_rows": br, "block_cols": bc, "input_bytes": i, "output_bytes": o}
    )
