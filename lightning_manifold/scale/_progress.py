"""Progress bars with an ETA for the long passes (tqdm), silent when not on a terminal."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(
    enabled: bool, *, total: int | None, desc: str, unit: str = "it", rank: int = 0
) -> Any:
    """A tqdm bar shown only when ``enabled``, on rank 0 and when stderr is a terminal.

    tqdm prints the elapsed time, the rate and the ETA (remaining = left / rate) for bars with
    a ``total``.
    """
    show = bool(enabled) and rank == 0 and sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not show,
        dynamic_ncols=True,
        leave=False,
        smoothing=0.1,
    )
