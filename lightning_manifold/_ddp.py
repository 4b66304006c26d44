"""Small helpers for capturing under data parallelism and for leaving no trace on the run.

Nothing here calls a collective unless its docstring says so; every collective must be called
by all ranks (never from inside ``rank_zero_only`` code).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from lightning_manifold.probe import ProbeSet

    AllGather = Callable[[Tensor], Tensor]


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Save the global RNG states and restore them on exit, whatever happens inside.

    Covers Python's ``random``, numpy's legacy global generator, torch's CPU generator and, when
    CUDA is already initialised, every CUDA device's generator. A capture run inside this context
    cannot shift the random stream the training run draws from (data shuffling, dropout, ...).
    """
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is restored
    cpu_state = torch.get_rng_state()
    cuda_states: list[Tensor] | None = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def gather_probe(probe: ProbeSet, local: Tensor, all_gather: AllGather, world_size: int) -> Tensor:
    """Reassemble a probe's outputs from the ranks' equal slices, in probe order. Collective.

    Rank ``r`` holds the outputs of ``probe.shard(r, W)``: rows ``[r * n, (r + 1) * n)`` of the
    probe padded to ``n * W`` rows, ``n = ceil(N / W)``; the padding is trimmed.

    Args:
        probe: the full probe (N samples).
        local: (n, C) this rank's outputs; (N, C) when ``world_size`` is 1.
        all_gather: ``LightningModule.all_gather``, (n, C) -> (W, n, C); called on every rank.
        world_size: W.

    Returns:
        (N, C) outputs of the whole probe, in probe order, on every rank.
    """
    if world_size <= 1:
        return local
    return probe.unshard(all_gather(local))
