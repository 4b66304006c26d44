"""ProbeSet: a fixed set of inputs and labels on which a model's predictions are recorded.

A model on a probe of N samples and C classes is the (N, C) matrix of its predicted
probabilities (thesis eq. 2.2.1). :meth:`ProbeSet.predict` produces that matrix as
log-probabilities, which is what every distance to truth needs (thesis eq. 2.2.2 against P*
reduces to half the cross-entropy and must not go through probabilities that underflow).

Inputs are a tensor or a (nested) tuple / list / dict of tensors batched along dim 0. A model
whose ``forward`` does not take such a batch directly is served by a ``forward`` hook; a model
whose output is not a plain (B, C) tensor of logits by a ``transform`` hook.

Example::

    import torch
    from torch import nn
    from lightning_manifold.probe import ProbeSet, evaluation_mode

    x, y = torch.randn(100, 8), torch.randint(0, 3, (100,))
    probe = ProbeSet.from_tensors(x, y, name="train")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with evaluation_mode(model):
        log_probs = probe.predict(model, dtype=torch.float64)  # (100, 3)
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import TensorDataset, default_collate

from lightning_manifold._names import check_dir_name

__all__ = [
    "ForwardFn",
    "ProbeSet",
    "TransformFn",
    "UnpackFn",
    "evaluation_mode",
    "module_device",
    "shard_indices",
]

ForwardFn = Callable[[nn.Module, Any], Any]
"""``forward(module, batch_inputs) -> outputs``: how to call the model on one batch of inputs."""
TransformFn = Callable[[Any], Tensor]
"""``transform(outputs) -> logits``: turn the model outputs into a (B, C) tensor of logits."""
UnpackFn = Callable[[Any], "tuple[Any, Any]"]
"""``unpack(item_or_batch) -> (inputs, labels)``: split a dataset item or loader batch."""

_FLOAT_DTYPES = (torch.float32, torch.float64)
_DEFAULT_POOL_FACTOR = 10


# --------------------------------------------------------------------------------------------
# helpers on collections of tensors
# --------------------------------------------------------------------------------------------


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _map_tensors(data: Any, fn: Callable[[Tensor], Tensor], where: str = "inputs") -> Any:
    """Apply ``fn`` to every tensor leaf of a (nested) tuple / list / dict; keep the structure.

    Numpy arrays are converted to tensors first. Any other leaf raises ``TypeError``.
    """
    if isinstance(data, Tensor):
        return fn(data)
    if isinstance(data, np.ndarray):
        return fn(torch.as_tensor(data))
    if isinstance(data, Mapping):
        return {k: _map_tensors(v, fn, f"{where}[{k!r}]") for k, v in data.items()}
    if _is_namedtuple(data):
        return type(data)(
            *(_map_tensors(v, fn, f"{where}.{f}") for f, v in zip(data._fields, data))
        )
    if isinstance(data, (tuple, list)):
        return type(data)(_map_tensors(v, fn, f"{where}[{i}]") for i, v in enumerate(data))
    raise TypeError(
        f"`{where}` must be a tensor or a (nested) tuple/list/dict of tensors, "
        f"got {type(data).__name__}"
    )


def _tensor_leaves(data: Any, where: str = "inputs") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(path, tensor)`` for every tensor leaf of a (nested) collection."""
    if isinstance(data, Tensor):
        yield where, data
    elif isinstance(data, Mapping):
        for k, v in data.items():
            yield from _tensor_leaves(v, f"{where}[{k!r}]")
    elif _is_namedtuple(data):
        for f, v in zip(data._fields, data):
            yield from _tensor_leaves(v, f"{where}.{f}")
    elif isinstance(data, (tuple, list)):
        for i, v in enumerate(data):
            yield from _tensor_leaves(v, f"{where}[{i}]")
    else:  # pragma: no cover - _map_tensors already rejects these
        raise TypeError(f"`{where}` must be a tensor, got {type(data).__name__}")


def _concat(parts: list[Any], where: str = "inputs") -> Any:
    """Concatenate a list of equally structured collections of tensors along dim 0."""
    first = parts[0]
    if isinstance(first, (Tensor, np.ndarray)):
        return torch.cat([torch.as_tensor(p) for p in parts])
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts], f"{where}[{k!r}]") for k in first}
    if _is_namedtuple(first):
        return type(first)(
            *(_concat(list(col), f"{where}.{f}") for f, col in zip(first._fields, zip(*parts)))
        )
    if isinstance(first, (tuple, list)):
        return type(first)(_concat(list(col), f"{where}[{i}]") for i, col in enumerate(zip(*parts)))
    raise TypeError(
        f"`{where}` must be a tensor or a (nested) tuple/list/dict of tensors, "
        f"got {type(first).__name__}"
    )


def _index(data: Any, index: Tensor | slice) -> Any:
    """Select rows (dim 0) of every tensor leaf."""
    if isinstance(index, slice):
        return _map_tensors(data, lambda t: t[index])
    return _map_tensors(data, lambda t: t[index.to(t.device)])


def check_output_dtype(dtype: torch.dtype) -> None:
    """Raise unless ``dtype`` is float32 or float64 (what a probe's outputs may be)."""
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")


def no_autocast(device: torch.device) -> Any:
    """Autocast off on ``device``: upcasts and log-softmax run in the dtype asked for."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def input_batches(inputs: Any, rows: int, batch_size: int) -> Iterator[tuple[int, int, Any]]:
    """``(start, stop, batch)`` for consecutive batches of ``batch_size`` of the ``rows`` rows of
    ``inputs`` (the whole collection itself when it fits in one batch: no copy)."""
    for start in range(0, rows, batch_size):
        stop = min(start + batch_size, rows)
        yield (
            start,
            stop,
            inputs if (start, stop) == (0, rows) else _index(inputs, slice(start, stop)),
        )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _as_labels(labels: Any, name: str = "labels") -> Tensor:
    """Validate labels: 1-D integer, non-empty, non-negative. Returns an int64 tensor."""
    if isinstance(labels, Tensor):
        t = labels.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{name}` must be a 1-D integer tensor or array, got {type(labels).__name__}"
                f" that converts to no tensor ({err})"
            ) from err
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"`{name}` must have an integer dtype, got {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D of shape (N,), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"`{name}` is empty: a probe needs at least one sample, got shape (0,)")
    t = t.to(torch.int64)
    low = int(t.min())
    if low < 0:
        raise ValueError(f"`{name}` must be non-negative class indices, got a minimum of {low}")
    return t


def _default_unpack(item: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(
        "each dataset item / loader batch must be an (inputs, labels) pair, got "
        f"{type(item).__name__}"
        + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
        + "; pass `unpack=` to split it"
    )


def _to_logits(outputs: Any) -> Tensor:
    """Default ``transform``: a tensor, or a dict / object carrying a ``logits`` tensor."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    if isinstance(getattr(outputs, "logits", None), Tensor):
        return outputs.logits
    raise TypeError(
        f"the model returned {type(outputs).__name__}, not a (B, C) tensor of logits; "
        "pass `transform=` to turn its outputs into logits"
    )


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore the global torch (CPU), numpy and python RNG states on exit."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we restore
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _stratified_indices(targets: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Pick ``size`` indices keeping class proportions (largest-remainder quotas).

    Class c with n_c of the n samples gets floor(size n_c / n) samples, and the leftover
    samples go to the classes with the largest remainders (ties: smaller class index first).
    Within a class the samples are drawn uniformly without replacement with ``generator``.

    Args:
        targets: (n,) int64 class labels of the pool.
        size: number of indices to draw, ``1 <= size <= n``.
        generator: the only source of randomness.

    Returns:
        (size,) int64 indices into ``targets``, sorted ascending.
    """
    n = targets.numel()
    classes, counts = torch.unique(targets, return_counts=True)
    counts_l = counts.tolist()
    quota = [c * size // n for c in counts_l]
    remainder = [c * size % n for c in counts_l]
    leftover = size - sum(quota)
    order = sorted(range(len(counts_l)), key=lambda k: (-remainder[k], k))
    for k in order[:leftover]:
        quota[k] += 1
    chosen = []
    for cls, q in zip(classes.tolist(), quota):
        members = torch.nonzero(targets == cls).flatten()
        pick = torch.randperm(members.numel(), generator=generator)[:q]
        chosen.append(members[pick])
    return torch.cat(chosen).sort().values


def _dataset_targets(dataset: Any, n: int, unpack: UnpackFn) -> Tensor:
    """(n,) labels of every item of a map-style dataset, from a cheap attribute when possible."""
    candidates: list[Any] = []
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        candidates.append(dataset.tensors[1])
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            candidates.append(getattr(dataset, attr))
    for cand in candidates:
        try:
            t = torch.as_tensor(cand)
        except (TypeError, ValueError, RuntimeError):
            continue
        if t.ndim == 1 and t.numel() == n and not (t.is_floating_point() or t.dtype == torch.bool):
            return t.to(torch.int64)
    labels = [unpack(dataset[i])[1] for i in range(n)]
    return _as_labels(default_collate(labels), "dataset labels")


def shard_indices(num_samples: int, rank: int, world_size: int) -> tuple[Tensor, int]:
    """Indices of the fixed, equal slice of a probe that one DDP rank evaluates.

    Every rank gets ``per = ceil(N / world_size)`` indices: rank r takes the contiguous block
    ``[r * per, min((r + 1) * per, N))`` and pads it by repeating the last probe sample (index
    N - 1). So concatenating the ranks' outputs in rank order and keeping the first N rows gives
    back the full probe in order (see :meth:`ProbeSet.unshard`).

    Args:
        num_samples: N, the number of probe samples (>= 1).
        rank: this process' rank, ``0 <= rank < world_size``.
        world_size: number of processes (>= 1).

    Returns:
        ``(indices, num_real)``: (per,) int64 indices into the probe and how many of them (the
        leading ones) are real samples rather than padding.

    Raises:
        ValueError: if an argument is out of range.

    Example::

        >>> shard_indices(5, 1, 2)
        (tensor([3, 4, 4]), 2)
    """
    n = _check_int(num_samples, "num_samples", 1)
    world = _check_int(world_size, "world_size", 1)
    r = _check_int(rank, "rank", 0)
    if r >= world:
        raise ValueError(f"`rank` must be < `world_size` = {world}, got {r}")
    per = math.ceil(n / world)
    start, stop = min(r * per, n), min((r + 1) * per, n)
    idx = torch.full((per,), n - 1, dtype=torch.int64)
    idx[: stop - start] = torch.arange(start, stop, dtype=torch.int64)
    return idx, stop - start


def module_device(module: nn.Module) -> torch.device:
    """The device a module computes on: ``module.device`` if it is a LightningModule, else the
    device of its first parameter or buffer (CPU for a module without any)."""
    dev = getattr(module, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and afterwards restore every submodule's ``training`` flag.

    Unlike a blanket ``module.train()`` on exit, a model whose submodules were in mixed modes
    (e.g. a frozen BatchNorm kept in eval inside a training model) gets exactly its previous
    flags back, also when the body raises. In eval mode BatchNorm uses, and does not update,
    its running statistics, and Dropout is the identity (no RNG draws).

    Args:
        module: the model (every submodule is saved and restored).

    Yields:
        ``module``, in eval mode.

    Example::

        with evaluation_mode(model):
            log_probs = probe.predict(model)
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


class ProbeSet:
    """A fixed set of N inputs with integer labels on which the model's predictions are recorded.

    Args:
        inputs: a tensor (N, ...) or a (nested) tuple / list / dict of tensors, each batched
            along dim 0 with N rows. Numpy arrays are converted to tensors. Inputs stay on the
            device they are given on; :meth:`predict` moves them to the module's device once.
        labels: (N,) integer class labels in ``[0, num_classes)``.
        name: probe name, e.g. ``"train"`` or ``"val"``; used as a directory name and in metric
            keys ``manifold/<name>/...``, so it must not contain ``/`` or ``\\``.
        forward: ``forward(module, batch_inputs) -> outputs``; default ``module(batch_inputs)``.
            Use it for a model whose ``forward`` takes e.g. ``*batch`` or ``**batch``.
        transform: ``transform(outputs) -> logits`` (B, C); default: the outputs themselves if a
            tensor, else ``outputs["logits"]`` / ``outputs.logits``.
        batch_size: number of samples per forward pass in :meth:`predict`.
        num_classes: C; default ``max(labels) + 1``. Give it when the probe may miss the
            highest classes.

    Raises:
        ValueError: empty probe; labels not 1-D integer, negative, or of a length different
            from the inputs'; ``num_classes`` < max label + 1; ``batch_size`` < 1; bad ``name``.
        TypeError: inputs that are not tensors / collections of tensors; non-callable hooks.

    Example::

        probe = ProbeSet.from_tensors(x, y, name="val", batch_size=512)
        probe = ProbeSet({"ids": ids, "mask": mask}, y, forward=lambda m, b: m(**b),
                         transform=lambda out: out["logits"])
    """

    def __init__(
        self,
        inputs: Any,
        labels: Tensor | np.ndarray | Iterable[int],
        *,
        name: str = "train",
        forward: ForwardFn | None = None,
        transform: TransformFn | None = None,
        batch_size: int = 256,
        num_classes: int | None = None,
    ) -> None:
        check_dir_name(name, "name")
        if forward is not None and not callable(forward):
            raise TypeError(f"`forward` must be callable or None, got {type(forward).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable or None, got {type(transform).__name__}")
        self._batch_size = _check_int(batch_size, "batch_size", 1)
        self._labels = _as_labels(labels)
        n = self._labels.numel()
        self._inputs = _map_tensors(inputs, lambda t: t.detach())
        leaves = list(_tensor_leaves(self._inputs))
        if not leaves:
            raise ValueError("`inputs` must contain at least one tensor, got an empty collection")
        for where, t in leaves:
            rows = t.shape[0] if t.ndim > 0 else None
            if rows != n:
                raise ValueError(
                    f"`{where}` must have N = {n} rows (the length of `labels`) along dim 0, "
                    f"got shape {tuple(t.shape)}"
                )
        max_label = int(self._labels.max())
        if num_classes is None:
            self._num_classes = max_label + 1
        else:
            self._num_classes = _check_int(num_classes, "num_classes", 1)
            if self._num_classes < max_label + 1:
                raise ValueError(
                    f"`num_classes` must be >= max(labels) + 1 = {max_label + 1}, "
                    f"got {self._num_classes}"
                )
        self._name = name
        self._forward = forward
        self._transform = transform
        self._num_real = n
        self._device_cache: dict[torch.device, Any] = {}
        self._label_cache: dict[torch.device, Tensor] = {}

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_tensors(
        cls,
        x: Any,
        y: Tensor | np.ndarray | Iterable[int],
        *,
        name: str = "train",
        **kwargs: Any,
    ) -> ProbeSet:
        """A probe of all given samples.

        Args:
            x: (N, ...) inputs, or a (nested) tuple / list / dict of such tensors.
            y: (N,) integer labels.
            name: probe name.
            **kwargs: ``forward``, ``transform``, ``batch_size``, ``num_classes``.

        Returns:
            The probe.

        Example::

            probe = ProbeSet.from_tensors(torch.randn(64, 8), torch.randint(0, 3, (64,)))
        """
        return cls(x, y, name=name, **kwargs)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        size: int,
        seed: int = 0,
        *,
        stratified: bool = True,
        name: str = "train",
        unpack: UnpackFn | None = None,
        **kwargs: Any,
    ) -> ProbeSet:
        """Draw ``size`` samples of a map-style dataset, deterministically from ``seed``.

        Sampling uses its own ``torch.Generator`` and never touches the global RNGs. With
        ``stratified=True`` class c gets ``size * n_c / n`` samples (largest-remainder rounding),
        so the probe keeps the dataset's class proportions. The labels used to stratify come
        from ``dataset.tensors[1]`` (a ``TensorDataset``), ``dataset.targets`` or
        ``dataset.labels`` when those exist, otherwise from reading every item once; the probe's
        own labels always come from the selected items. Selected samples keep dataset order.

        Args:
            dataset: map-style dataset (``__len__``, ``__getitem__``) returning ``(x, y)`` pairs;
                ``x`` a tensor / array / (nested) collection of them, ``y`` an integer label.
            size: number of samples, ``1 <= size <= len(dataset)``.
            seed: seed of the private generator.
            stratified: keep class proportions (else a uniform draw without replacement).
            name: probe name.
            unpack: ``unpack(item) -> (x, y)`` for items that are not ``(x, y)`` pairs.
            **kwargs: ``forward``, ``transform``, ``batch_size``, ``num_classes``.

        Returns:
            The probe; items are stacked with ``torch.utils.data.default_collate``.

        Raises:
            TypeError: ``dataset`` has no ``__len__`` (use :meth:`from_dataloader`).
            ValueError: ``size`` < 1 or > ``len(dataset)``.

        Example::

            probe = ProbeSet.from_dataset(train_set, 1000, seed=0, name="train")
        """
        try:
            n = len(dataset)
        except TypeError as err:
            raise TypeError(
                f"`dataset` must be a map-style Dataset with __len__, got {type(dataset).__name__}"
                "; use ProbeSet.from_dataloader for iterable datasets"
            ) from err
        size = _check_int(size, "size", 1)
        if size > n:
            raise ValueError(f"`size` must be <= len(dataset) = {n}, got {size}")
        unpack = unpack or _default_unpack
        generator = torch.Generator().manual_seed(int(seed))
        if stratified:
            targets = _dataset_targets(dataset, n, unpack)
            idx = _stratified_indices(targets, size, generator)
        else:
            idx = torch.randperm(n, generator=generator)[:size].sort().values
        pairs = [unpack(dataset[i]) for i in idx.tolist()]
        x = default_collate([p[0] for p in pairs])
        y = default_collate([p[1] for p in pairs])
        return cls(x, y, name=name, **kwargs)

    @classmethod
    def from_dataloader(
        cls,
        dataloader: Iterable[Any],
        size: int,
        seed: int = 0,
        *,
        stratified: bool = True,
        pool_size: int | None = None,
        name: str = "train",
        unpack: UnpackFn | None = None,
        **kwargs: Any,
    ) -> ProbeSet:
        """Collect ``size`` samples from the batches of a data loader (or any iterable).

        With ``stratified=False`` the first ``size`` samples the loader yields form the probe.
        With ``stratified=True`` the loader is read until ``pool_size`` samples (default
        ``10 * size``) or its end, and ``size`` of them are drawn keeping the class proportions
        of that pool, with a private generator seeded by ``seed``. The global torch, numpy and
        python RNG states are restored afterwards, so a shuffling loader does not shift the
        training's random stream; the result is deterministic if the loader's order is.

        Args:
            dataloader: iterable of ``(x, y)`` batches (x batched along dim 0, y (B,) labels).
            size: number of samples (>= 1).
            seed: seed of the private generator (stratified selection).
            stratified: keep the pool's class proportions.
            pool_size: samples to read before a stratified draw (>= ``size``).
            name: probe name.
            unpack: ``unpack(batch) -> (x, y)`` for batches that are not ``(x, y)`` pairs.
            **kwargs: ``forward``, ``transform``, ``batch_size``, ``num_classes``.

        Returns:
            The probe.

        Raises:
            ValueError: ``size`` < 1, ``pool_size`` < ``size``, or the loader yields fewer than
                ``size`` samples.

        Example::

            probe = ProbeSet.from_dataloader(val_loader, 500, name="val", stratified=False)
        """
        size = _check_int(size, "size", 1)
        if stratified:
            target = _DEFAULT_POOL_FACTOR * size if pool_size is None else pool_size
            target = _check_int(target, "pool_size", size)
        else:
            target = size
        unpack = unpack or _default_unpack
        xs: list[Any] = []
        ys: list[Tensor] = []
        count = 0
        with _global_rng_preserved():
            for batch in dataloader:
                x, y = unpack(batch)
                y = torch.as_tensor(y)
                if y.ndim != 1:
                    raise ValueError(
                        f"batch labels must be 1-D of shape (B,), got shape {tuple(y.shape)}"
                    )
                xs.append(x)
                ys.append(y)
                count += y.numel()
                if count >= target:
                    break
        if count < size:
            raise ValueError(
                f"`dataloader` yielded only {count} samples, fewer than `size` = {size}"
            )
        x_all = _concat(xs)
        y_all = _as_labels(torch.cat(ys), "dataloader labels")
        if stratified:
            idx = _stratified_indices(y_all, size, torch.Generator().manual_seed(int(seed)))
            return cls(_index(x_all, idx), y_all[idx], name=name, **kwargs)
        return cls(_index(x_all, slice(0, size)), y_all[:size], name=name, **kwargs)

    # ---------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        """Probe name (``"train"``, ``"val"``, ...)."""
        return self._name

    @property
    def inputs(self) -> Any:
        """The inputs as given (tensors on their original device), N rows each."""
        return self._inputs

    @property
    def labels(self) -> Tensor:
        """(N,) int64 labels."""
        return self._labels

    @property
    def num_samples(self) -> int:
        """N."""
        return self._labels.numel()

    @property
    def num_classes(self) -> int:
        """C: the user's ``num_classes`` or ``max(labels) + 1``."""
        return self._num_classes

    @property
    def num_real(self) -> int:
        """How many leading samples are real: N, except for a padded DDP shard from
        :meth:`shard`, whose trailing samples repeat the probe's last sample."""
        return self._num_real

    @property
    def batch_size(self) -> int:
        """Samples per forward pass in :meth:`predict`."""
        return self._batch_size

    @property
    def forward(self) -> ForwardFn | None:
        """The ``forward`` hook (``None``: ``module(batch)``)."""
        return self._forward

    @property
    def transform(self) -> TransformFn | None:
        """The ``transform`` hook (``None``: outputs are logits)."""
        return self._transform

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"ProbeSet(name={self._name!r}, num_samples={self.num_samples}, "
            f"num_classes={self._num_classes}, batch_size={self._batch_size})"
        )

    # ---------------------------------------------------------------- device cache

    def inputs_on(self, device: torch.device | str) -> Any:
        """The inputs on ``device``, moved with ``move_data_to_device`` once and cached.

        Args:
            device: target device.

        Returns:
            The same collection structure with every tensor on ``device``.
        """
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = move_data_to_device(self._inputs, device)
        return self._device_cache[device]

    def labels_on(self, device: torch.device | str) -> Tensor:
        """(N,) int64 labels on ``device`` (cached like :meth:`inputs_on`)."""
        device = torch.device(device)
        if device not in self._label_cache:
            self._label_cache[device] = move_data_to_device(self._labels, device)
        return self._label_cache[device]

    def clear_cache(self) -> None:
        """Forget the per-device copies of the inputs and labels."""
        self._device_cache.clear()
        self._label_cache.clear()

    # ---------------------------------------------------------------- prediction

    def predict(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Log-probabilities of ``module`` on the probe, (N, C), on the module's device.

        Runs ``ceil(N / batch_size)`` forward passes under ``torch.no_grad()`` and nothing else:
        it does not change the module's train/eval mode (use :func:`evaluation_mode`), does
        not enter a precision context (the caller may run it inside one) and does not touch
        RNG states itself (a module in eval mode draws none). Logits are upcast to ``dtype``
        before ``log_softmax`` (autocast disabled for that step), so float16 / bfloat16 outputs
        lose nothing more; non-finite logits give non-finite rows (the caller decides).

        Args:
            module: the model; called as ``forward(module, batch)`` or ``module(batch)``.
            dtype: ``torch.float32`` or ``torch.float64``, dtype of the result.
            device: where to run; default :func:`module_device` of ``module``.

        Returns:
            (N, C) log-probabilities, rows in probe order.

        Raises:
            ValueError: bad ``dtype``; outputs (after ``transform``) not of shape (B, C).
            TypeError: outputs that are not a tensor and no ``transform`` given.
        """
        check_output_dtype(dtype)
        dev = module_device(module) if device is None else torch.device(device)
        chunks: list[Tensor] = []
        with torch.no_grad():
            for start, stop, batch in input_batches(
                self.inputs_on(dev), self.num_samples, self._batch_size
            ):
                outputs = module(batch) if self._forward is None else self._forward(module, batch)
                transform = self._transform or _to_logits
                logits = transform(outputs)
                self._check_logits(logits, stop - start, chunks[0].shape[1] if chunks else None)
                with no_autocast(dev):
                    chunks.append(torch.log_softmax(logits.to(dtype), dim=-1))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @staticmethod
    def _check_logits(logits: Any, rows: int, classes: int | None) -> None:
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"`transform` must return a (B, C) tensor of logits, got {type(logits).__name__}"
            )
        if not logits.is_floating_point():
            raise ValueError(f"model logits must be floating point, got dtype {logits.dtype}")
        expected = f"({rows}, {classes if classes is not None else 'C'})"
        if (
            logits.ndim != 2
            or logits.shape[0] != rows
            or (classes is not None and logits.shape[1] != classes)
        ):
            raise ValueError(
                f"model logits (after `transform`) must have shape (B, C) = {expected}, "
                f"got {tuple(logits.shape)}; pass `forward=` / `transform=` for other models"
            )

    # ---------------------------------------------------------------- capture protocol

    #: Whether progress per class (thesis fig. 3.2a) is worth logging for this probe's classes.
    class_progress: bool = True
    # A capture runs `capture` on each rank's shard, gathers the rows (`unshard`), then
    # `finalize` turns them into (N, C) log-probabilities and `exact_metrics` may supply scalars
    # that the stored predictions cannot give exactly (a reduced vocabulary). Subclasses whose
    # per-rank rows are not log-probabilities (token statistics, features) override these.

    def capture(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The rows this probe (or DDP shard) contributes to a capture; here :meth:`predict`."""
        return self.predict(module, dtype=dtype, device=device)

    def finalize(self, gathered: Tensor) -> Tensor:
        """Turn the capture rows of the whole probe into (N, C) log-probabilities.

        Called once per capture on the rows of all N samples (gathered in probe order under
        DDP), so a probe whose predictions need the whole probe (e.g. imprinting, which sums
        features per class) computes them here. The identity for a plain probe.
        """
        return gathered

    def exact_metrics(self, gathered: Tensor) -> dict[str, Tensor] | None:
        """Probe scalars to use instead of those computed from :meth:`finalize`; here None."""
        return None

    @property
    def meta(self) -> dict[str, Any]:
        """What a trajectory store should record about this probe's predictions (JSON)."""
        return {}

    def check_num_classes(self, num_classes: int) -> None:
        """Check the model's output class count against the probe (called at ``setup``).

        Args:
            num_classes: C of the model outputs, e.g. ``probe.predict(model).shape[1]``.

        Raises:
            ValueError: C differs from the probe's ``num_classes`` or a label is >= C.
        """
        c = int(num_classes)
        if c != self._num_classes:
            raise ValueError(
                f"probe {self._name!r}: the model outputs C = {c} classes but the probe has "
                f"`num_classes` = {self._num_classes}; pass num_classes={c} to the ProbeSet "
                "or check the labels"
            )
        top = int(self._labels.max())
        if top >= c:
            raise ValueError(
                f"probe {self._name!r}: `labels` must be < C = {c} (model outputs), "
                f"got a label {top}"
            )

    # ---------------------------------------------------------------- DDP slicing

    def subset(self, indices: Tensor | np.ndarray | Iterable[int]) -> ProbeSet:
        """A probe of the samples at ``indices`` (same name, hooks, batch size, num_classes)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return type(self)(
            _index(self._inputs, idx),
            self._labels[idx.to(self._labels.device)],
            name=self._name,
            forward=self._forward,
            transform=self._transform,
            batch_size=self._batch_size,
            num_classes=self._num_classes,
        )

    def shard(self, rank: int, world_size: int) -> ProbeSet:
        """The fixed equal slice of this probe that ``rank`` evaluates under DDP.

        Every rank gets ``ceil(N / world_size)`` samples (contiguous block, padded by repeating
        the last probe sample, see :func:`shard_indices`). Each rank predicts its shard, the
        (per, C) results are gathered in rank order (``pl_module.all_gather``) and
        :meth:`unshard` reassembles the (N, C) result. Call it once (at ``setup``), not per
        capture: each call copies the inputs.

        Args:
            rank: this process' global rank.
            world_size: number of processes.

        Returns:
            The slice as a probe of ``ceil(N / world_size)`` samples (same name, hooks, batch
            size and ``num_classes``) whose :attr:`num_real` leading samples are real.

        Example::

            shard = probe.shard(trainer.global_rank, trainer.world_size)
            gathered = pl_module.all_gather(shard.predict(pl_module))  # (W, per, C)
            log_probs = probe.unshard(gathered)                        # (N, C)
        """
        idx, num_real = shard_indices(self.num_samples, rank, world_size)
        part = self.subset(idx)
        part._num_real = num_real
        return part

    def unshard(self, gathered: Tensor) -> Tensor:
        """Reassemble the full (N, C) result from the shards gathered in rank order.

        Args:
            gathered: (W, per, C) as returned by ``all_gather``, or (W * per, C) concatenated,
                with ``per = ceil(N / W)``.

        Returns:
            (N, C), rows in probe order (a view of ``gathered``).

        Raises:
            ValueError: the shape does not match a sharding of this probe.
        """
        n = self.num_samples
        if gathered.ndim == 3:
            world, per = gathered.shape[0], gathered.shape[1]
            if per != math.ceil(n / world):
                raise ValueError(
                    f"`gathered` must have shape (W, ceil(N / W), C) = ({world}, "
                    f"{math.ceil(n / world)}, C) for N = {n}, got {tuple(gathered.shape)}"
                )
            gathered = gathered.reshape(world * per, gathered.shape[2])
        elif gathered.ndim != 2 or gathered.shape[0] < n:
            raise ValueError(
                f"`gathered` must have shape (W, per, C) or (W * per, C) with W * per >= N = {n}, "
                f"got {tuple(gathered.shape)}"
            )
        return gathered[:n]
