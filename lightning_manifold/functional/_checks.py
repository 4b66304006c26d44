"""Input conversion and validation shared by the functional core.

Every public function accepts torch tensors (any device, float32/float64) or numpy arrays
and raises ``ValueError`` naming the argument, what was expected and what was given.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def as_tensor(x: ArrayLike, name: str, *, floating: bool = True) -> Tensor:
    """Convert ``x`` to a tensor without copying when possible.

    Half precision is upcast to float32; integer input is refused where floats are expected.
    """
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:  # torch warns on read-only (memmapped) arrays
            x = np.array(x)
        t = torch.from_numpy(x)
    elif isinstance(x, Tensor):
        t = x.detach()
    else:
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if floating:
        if not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point array, got dtype {t.dtype}")
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
    return t


def check_count(value: object, name: str, minimum: int) -> int:
    """An integer (Python or numpy; not bool, not float) of at least ``minimum``."""
    if not isinstance(value, bool):
        try:
            n = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if n >= minimum:
                return n
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def check_float_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """A floating-point ``torch.dtype``: probabilities in an integer dtype would be all 0."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"`{name}` must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}"
        )
    return dtype


def check_device(device: object, name: str = "device") -> torch.device | None:
    """None, or a device (or its name) that this machine has (tried with an empty tensor)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"`{name}` must be a device available on this machine (e.g. 'cpu'), got "
            f"{device!r}: {first}"
        ) from None
    return dev


def _batched(t: Tensor, name: str, what: str) -> tuple[Tensor, bool]:
    """Return ``t`` as (m, N, C) and whether the input was a single (N, C) model."""
    if t.ndim == 2:
        t = t.unsqueeze(0)
        single = True
    elif t.ndim == 3:
        single = False
    else:
        raise ValueError(
            f"`{name}` must be {what} of shape (N, C) or (m, N, C), got {t.ndim}-D shape "
            f"{tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(t.shape)}")
    return t, single


def _sum_tolerance(t: Tensor | np.ndarray) -> float:
    # Softmax outputs sum to 1 up to a few ulps per class; allow generous slack for float32.
    wide = t.dtype == (np.float64 if isinstance(t, np.ndarray) else torch.float64)
    return 1e-6 if wide else 1e-3


def check_probabilities(
    P: ArrayLike, name: str = "P", *, values: bool = True
) -> tuple[Tensor, bool]:
    """Validate probabilities: (N, C) or (m, N, C), finite, non-negative, rows summing to 1.

    With ``values=False`` only the shape is checked here: the caller checks the values on
    numbers it computes anyway (and calls this again for the exact message when they fail).

    Returns:
        The (m, N, C) tensor and ``True`` if the input was a single (N, C) model.
    """
    t, single = _batched(as_tensor(P, name), name, "probabilities")
    if not values:
        return t, single
    # Two passes: min propagates NaN, and the row sums catch +inf (no separate isfinite pass).
    low = float(t.min())
    if low != low:
        raise ValueError(f"`{name}` must be finite probabilities, got NaN entries")
    if low < 0:
        raise ValueError(f"`{name}` must be non-negative probabilities, got minimum {low:.3g}")
    dev = float((t.sum(-1) - 1).abs().max())
    if dev == float("inf"):
        raise ValueError(f"`{name}` must be finite probabilities, got inf entries")
    if dev > _sum_tolerance(t):
        raise ValueError(
            f"`{name}` rows must sum to 1 over the last (class) axis, got a maximum deviation "
            f"of {dev:.3g}"
        )
    return t, single


def check_log_probabilities(
    log_P: ArrayLike, name: str = "log_P", *, normalised: bool = True
) -> tuple[Tensor, bool]:
    """Validate log-probabilities: (N, C) or (m, N, C), no NaN/+inf, rows log-summing to 0.

    ``-inf`` entries (zero probability) are allowed. With ``normalised=False`` only the shape
    is checked here: the caller checks the probability totals (which also catch NaN and +inf)
    with :func:`check_row_sums` on values it computes anyway.
    """
    t, single = _batched(as_tensor(log_P, name), name, "log-probabilities")
    if normalised:
        sums = t.exp().sum(-1)  # half the cost of logsumexp; exact for log-probabilities <= 0
        if not bool(torch.isfinite(sums).all()):  # overflow, +inf or NaN: say which
            sums = torch.logsumexp(t, -1).exp_()
        check_row_sums(sums, name)
    return t, single


def check_row_sums(sums: Tensor | np.ndarray, name: str) -> None:
    """Raise unless every per-sample probability total in ``sums`` is 1 within tolerance."""
    if isinstance(sums, np.ndarray):  # NaN propagates through min and max
        low, high = float(sums.min()), float(sums.max())
    else:
        low, high = (float(v) for v in torch.stack(torch.aminmax(sums)))  # one pass
    dev = max(1 - low, high - 1)
    if dev != dev or dev == float("inf"):
        raise ValueError(f"`{name}` must not contain NaN or +inf entries")
    if not dev <= _sum_tolerance(sums):
        raise ValueError(
            f"`{name}` rows must be normalised (probabilities summing to 1 over classes), got a "
            f"maximum deviation of {dev:.3g}"
        )


def check_labels(
    labels: ArrayLike, num_samples: int, num_classes: int, name: str = "labels"
) -> Tensor:
    """Validate (N,) integer labels in ``[0, num_classes)`` and return them as int64."""
    t = as_tensor(labels, name, floating=False)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"`{name}` must be an integer array, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != num_samples:
        raise ValueError(f"`{name}` must have shape (N,) = ({num_samples},), got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}), got values in "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t.long()


def check_same_space(P: Tensor, Q: Tensor, p_name: str, q_name: str) -> None:
    """Both (m, N, C) and (k, N, C) must share N and C."""
    if P.shape[1:] != Q.shape[1:]:
        raise ValueError(
            f"`{q_name}` must have the same (N, C) = {tuple(P.shape[1:])} as `{p_name}`, "
            f"got {tuple(Q.shape[1:])}"
        )


def common_dtype(*ts: Tensor) -> torch.dtype:
    """The widest floating dtype among the inputs (float64 wins)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32
