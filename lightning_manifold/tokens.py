"""TokenProbe: a probe of sequences for language and sequence models.

A language model is a classifier at every position: each (sequence, position) whose target is
not the ignore index is one probe sample, so a probe of B sequences has N = the number of counted
tokens, and the model's outputs (B, T, V) become an (N, V) prediction. Vocabularies of 32k to
150k tokens are reduced per capture to K columns (``reduction=``) so neither memory nor the store
holds (N, V); progress, the distances to ignorance and truth, the error and the cross-entropy are
computed exactly from the full log-softmax in the same chunked pass
(:mod:`lightning_manifold.functional.vocabulary`).

Example::

    from lightning_manifold import ManifoldCallback
    from lightning_manifold.tokens import TokenProbe

    # Hugging Face style batches: {"input_ids", "attention_mask"[, "labels"]} of shape (B, T)
    probe = TokenProbe(batch, name="val", vocab_size=32000, reduction="partition", k=254)
    trainer = Trainer(callbacks=[ManifoldCallback(probe)])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_manifold.functional import random_column_stochastic
from lightning_manifold.functional import vocabulary as V
from lightning_manifold.probe import (
    ProbeSet,
    _index,
    _tensor_leaves,
    check_output_dtype,
    input_batches,
    module_device,
    no_autocast,
)

__all__ = ["TokenProbe"]

Reduction = Literal["none", "partition", "projection"]
LogitsFn = Callable[[Any], Tensor]
"""``logits(outputs) -> (B, T, V)``: the logits in the model's outputs."""

_STATS = len(V.TokenStatistics._fields)  # carried next to the reduced predictions


def _default_logits(outputs: Any) -> Tensor:
    """A (B, T, V) tensor, or a dict / object carrying a ``logits`` tensor (Hugging Face)."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    if isinstance(getattr(outputs, "logits", None), Tensor):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise TypeError(
        f"the model returned {type(outputs).__name__}, not (B, T, V) logits; pass `logits=` to "
        "take them from its outputs"
    )


class TokenProbe(ProbeSet):
    """A fixed set of B sequences whose counted tokens are the probe samples.

    Args:
        inputs: the model inputs of the B sequences: a (B, T) tensor of token ids, or a dict of
            (B, T) tensors as a Hugging Face model takes them (``input_ids``,
            ``attention_mask``, optional ``labels``), or any (nested) collection batched along
            dim 0 with ``forward=`` to call the model.
        labels: (B, T) targets with ``ignore_index`` where nothing is predicted. Default:
            ``inputs["labels"]`` if present, else the input ids with padding
            (``attention_mask == 0``) ignored; with ``shift`` they are next-token targets.
        name: probe name (metric keys ``manifold/<name>/...``, store directory).
        vocab_size: V. Required for a reduction; checked against the model's outputs.
        reduction: ``"partition"`` (default when ``vocab_size`` > 512): the exact "top-k + rest"
            coarse-graining, K = k + 2 stored columns ``[target, k frequent tokens, rest]``;
            ``"projection"``: a fixed random row-stochastic (V, k) matrix (thesis §3.5.2), K = k;
            ``"none"``: the full (N, V) log-probabilities (small vocabularies only).
        k: size of the reduction (default 254 for partition, 256 for projection).
        seed: seed of the projection matrix (kept in :attr:`meta`, so the store says how to
            rebuild it).
        ignore_index: label of positions that are not counted.
        shift: targets are the next token (causal LM); ``False`` if ``labels`` are aligned with
            the logits already.
        forward: ``forward(module, batch) -> outputs``; default ``module(**batch)`` for a dict
            (without its ``labels``), else ``module(batch)``.
        logits: ``logits(outputs) -> (B, T, V)``; default: a tensor, ``outputs.logits`` or
            ``outputs["logits"]``.
        batch_size: sequences per forward pass.
        chunk: vocabulary columns per chunk of the log-softmax.

    Raises:
        ValueError: no counted token; labels not (B, T); bad reduction, k, vocab_size.
    """

    #: Tokens are not classes worth a progress each (and reduced columns are not tokens).
    class_progress = False

    def __init__(
        self,
        inputs: Any,
        labels: Tensor | np.ndarray | None = None,
        *,
        name: str = "tokens",
        vocab_size: int | None = None,
        reduction: Reduction | None = None,
        k: int | None = None,
        seed: int = 0,
        ignore_index: int = -100,
        shift: bool = True,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        logits: LogitsFn | None = None,
        batch_size: int = 16,
        chunk: int = V.DEFAULT_CHUNK,
    ) -> None:
        seq_labels, mask = _sequence_labels(inputs, labels, ignore_index)
        B = seq_labels.shape[0]
        if forward is None and isinstance(inputs, Mapping):
            forward = _forward_mapping
        # The base class validates the inputs (B rows each), the name and the hooks.
        super().__init__(
            inputs,
            torch.zeros(B, dtype=torch.int64),
            name=name,
            forward=forward,
            transform=logits or _default_logits,
            batch_size=batch_size,
        )
        if vocab_size is not None and (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, (int, np.integer))
            or vocab_size < 2
        ):
            raise ValueError(f"`vocab_size` must be an int >= 2 or None, got {vocab_size!r}")
        if reduction is None:
            reduction = "partition" if vocab_size is not None and vocab_size > 512 else "none"
        if reduction not in ("none", "partition", "projection"):
            raise ValueError(
                f"`reduction` must be 'none', 'partition' or 'projection', got {reduction!r}"
            )
        if reduction != "none" and vocab_size is None:
            raise ValueError(f"`vocab_size` is required with reduction={reduction!r}, got None")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"`chunk` must be a positive int, got {chunk!r}")
        rows, targets = V.token_targets(seq_labels, mask, ignore_index=ignore_index, shift=shift)
        if targets.numel() == 0:
            raise ValueError(
                f"`labels` count no token: every target is `ignore_index` = {ignore_index} "
                "or padding"
            )
        top = int(targets.max())
        if vocab_size is not None and top >= vocab_size:
            raise ValueError(f"`labels` must be < vocab_size = {vocab_size}, got a token {top}")
        self._T = seq_labels.shape[1]
        self._rows, self._targets = rows, targets
        self._vocab_size: int = 0 if vocab_size is None else int(vocab_size)
        self._reduction: Reduction = reduction
        self._seed, self._chunk, self._shift, self._ignore = int(seed), chunk, shift, ignore_index
        self._seq_labels, self._mask = seq_labels, mask
        self._cells: Tensor | None = None
        self._projection: Tensor | None = None
        self._pad_rows = 0  # a DDP shard pads its rows to the largest shard's (see `shard`)
        self._rank_counts: list[int] | None = None
        if reduction == "partition":
            kk = 254 if k is None else k
            self._check_k(kk, vocab_size - 2)
            self._cells = V.partition_cells(targets, V.frequent_tokens(targets, vocab_size, kk))
            self._labels, self._num_classes = torch.zeros_like(targets), kk + 2
        elif reduction == "projection":
            kk = 256 if k is None else k
            self._check_k(kk, vocab_size)
            gen = torch.Generator().manual_seed(self._seed)
            self._projection = random_column_stochastic(vocab_size, kk, generator=gen)
            # The truth of sample n maps to row y_n of M; its largest entry stands for it.
            self._labels, self._num_classes = self._projection[targets].argmax(1), kk
        else:  # the full distribution: C = V (the largest target + 1 unless given)
            self._labels = targets
            self._vocab_size = self._num_classes = top + 1 if vocab_size is None else vocab_size
        self._num_real = self._labels.numel()

    @staticmethod
    def _check_k(k: Any, high: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= high:
            raise ValueError(f"`k` must be an int in [2, {high}] for this vocabulary, got {k!r}")

    # ---------------------------------------------------------------- properties

    @property
    def num_sequences(self) -> int:
        """B, the number of sequences."""
        return self._seq_labels.shape[0]

    @property
    def targets(self) -> Tensor:
        """(N,) int64 target token of every counted position (sequence-major order)."""
        return self._targets

    @property
    def vocab_size(self) -> int:
        """V: as given, else the largest target + 1."""
        return self._vocab_size

    @property
    def reduction(self) -> str:
        """``"none"``, ``"partition"`` or ``"projection"``."""
        return self._reduction

    @property
    def meta(self) -> dict[str, Any]:
        """What a store must know about these predictions (JSON-serialisable)."""
        return {
            "token_probe": {
                "num_sequences": self.num_sequences,
                "num_tokens": self.num_samples,
                "vocab_size": self._vocab_size,
                "reduction": self._reduction,
                "num_columns": self._num_classes,
                "projection_seed": self._seed if self._reduction == "projection" else None,
                "ignore_index": self._ignore,
                "shift": self._shift,
            }
        }

    def __repr__(self) -> str:
        return (
            f"TokenProbe(name={self.name!r}, num_sequences={self.num_sequences}, "
            f"num_tokens={self.num_samples}, vocab_size={self._vocab_size}, "
            f"reduction={self._reduction!r}, num_classes={self._num_classes})"
        )

    # ---------------------------------------------------------------- prediction

    def predict(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Reduced log-probabilities of ``module`` on the counted tokens, (N, K)."""
        return self.capture(module, dtype=dtype, device=device)[: self.num_samples, :-_STATS]

    def predict_statistics(
        self, module: nn.Module, *, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, V.TokenStatistics]:
        """``(reduced (N, K) log-probabilities, exact full-vocabulary statistics)``."""
        out = self.capture(module, dtype=dtype)[: self.num_samples]
        return out[:, :-_STATS], _split_statistics(out)

    def capture(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The rows this probe contributes to a capture: (n, K + 5) reduced log-probabilities
        followed by the :class:`~lightning_manifold.functional.vocabulary.TokenStatistics` of
        the full distribution (in ``dtype``); a DDP shard pads them to the largest shard's row
        count.
        """
        check_output_dtype(dtype)
        dev = module_device(module) if device is None else torch.device(device)
        width = self._num_classes + _STATS
        n = self.num_samples if self.num_sequences else 0
        out = torch.zeros(max(n, self._pad_rows), width, dtype=dtype, device=dev)
        if not self.num_sequences:
            return out
        rows = self._rows.to(dev)
        T = self._T
        done = 0
        with torch.no_grad():
            batches = input_batches(self.inputs_on(dev), self.num_sequences, self.batch_size)
            for s0, s1, batch in batches:
                lo, hi = torch.searchsorted(rows, torch.tensor([s0 * T, s1 * T], device=dev))
                lo, hi = int(lo), int(hi)
                if hi == lo:  # no counted token in these sequences
                    continue
                outputs = module(batch) if self.forward is None else self.forward(module, batch)
                logits = self._logits(outputs, s1 - s0)
                flat = logits.reshape(-1, logits.shape[-1])
                with no_autocast(dev):
                    out[done : done + hi - lo] = self._reduce(
                        flat[rows[lo:hi] - s0 * T], lo, hi, dtype
                    )
                done += hi - lo
        if self._pad_rows > n and n:
            out[n:] = out[n - 1]  # padding rows: a copy of a real row, trimmed by `unshard`
        return out

    def _logits(self, outputs: Any, sequences: int) -> Tensor:
        assert self.transform is not None
        logits = self.transform(outputs)
        if not isinstance(logits, Tensor) or logits.ndim != 3:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"probe {self.name!r}: the model's logits must have shape (B, T, V), got {got}; "
                "pass `logits=` (and `forward=`) for other models"
            )
        if logits.shape[0] != sequences or logits.shape[1] != self._T:
            raise ValueError(
                f"probe {self.name!r}: the model's logits must have shape ({sequences}, "
                f"{self._T}, V) for this batch, got {tuple(logits.shape)}"
            )
        if not logits.is_floating_point():
            raise ValueError(f"model logits must be floating point, got dtype {logits.dtype}")
        v = logits.shape[2]
        if v != self._vocab_size:
            raise ValueError(
                f"probe {self.name!r}: the model outputs V = {v} logits per token but the probe "
                f"has `vocab_size` = {self._vocab_size}; pass vocab_size={v}"
            )
        return logits

    def _reduce(self, logits: Tensor, lo: int, hi: int, dtype: torch.dtype) -> Tensor:
        """(hi - lo, K + 5) rows for the counted tokens ``lo:hi`` from their (n, V) logits."""
        targets = self._targets[lo:hi].to(logits.device)
        cells = None if self._cells is None else self._cells[lo:hi].to(logits.device)
        proj = None if self._projection is None else self._projection_on(logits.device, dtype)
        reduced, stats = V.reduce_vocabulary(
            logits, targets, cells=cells, projection=proj, dtype=dtype, chunk=self._chunk
        )
        if reduced is None:  # no reduction: the full log-softmax
            reduced = torch.log_softmax(logits.to(dtype), dim=-1)
        return torch.cat([reduced.to(dtype), torch.stack(stats, 1).to(dtype)], dim=1)

    def _projection_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        cache = self.__dict__.setdefault("_projection_cache", {})
        if key not in cache:
            assert self._projection is not None
            cache[key] = self._projection.to(device=device, dtype=dtype)
        return cache[key]

    # ---------------------------------------------------------------- capture protocol

    def finalize(self, gathered: Tensor) -> Tensor:
        """(N, K) reduced log-probabilities from the gathered capture rows."""
        return gathered[:, :-_STATS]

    def exact_metrics(self, gathered: Tensor) -> dict[str, Tensor]:
        """The probe scalars of the full distribution, from the gathered capture rows."""
        return V.statistics_metrics(_split_statistics(gathered), self._vocab_size)

    def check_num_classes(self, num_classes: int) -> None:
        """Capture rows are K + 5 wide; nothing else to check (V is checked per forward)."""
        if int(num_classes) not in (self._num_classes, self._num_classes + _STATS):
            raise ValueError(
                f"probe {self.name!r}: expected {self._num_classes + _STATS} capture columns, "
                f"got {num_classes}"
            )

    # ---------------------------------------------------------------- DDP slicing

    def subset(self, indices: Any) -> ProbeSet:
        """Not supported: the samples of a token probe are positions inside sequences."""
        raise TypeError(
            "TokenProbe.subset is not supported: select the sequences before building the probe"
        )

    def _subset_sequences(self, start: int, stop: int) -> TokenProbe:
        part = object.__new__(type(self))
        part.__dict__.update(self.__dict__)
        part._inputs = _index(self.inputs, slice(start, stop))
        part._seq_labels = self._seq_labels[start:stop]
        part._mask = None if self._mask is None else self._mask[start:stop]
        T = self._T
        lo, hi = (
            int(i) for i in torch.searchsorted(self._rows, torch.tensor([start * T, stop * T]))
        )
        part._rows = self._rows[lo:hi] - start * T
        part._targets, part._labels = self._targets[lo:hi], self._labels[lo:hi]
        part._cells = None if self._cells is None else self._cells[lo:hi]
        part._num_real = hi - lo
        part._device_cache, part._label_cache, part._projection_cache = {}, {}, {}
        return part

    def _shard_bounds(self, world_size: int) -> list[tuple[int, int]]:
        per = math.ceil(self.num_sequences / world_size)
        return [
            (min(r * per, self.num_sequences), min((r + 1) * per, self.num_sequences))
            for r in range(world_size)
        ]

    def _counts(self, world_size: int) -> list[int]:
        T = self._T
        edges = torch.tensor([b * T for bounds in self._shard_bounds(world_size) for b in bounds])
        pos = torch.searchsorted(self._rows, edges).tolist()
        return [pos[2 * r + 1] - pos[2 * r] for r in range(world_size)]

    def shard(self, rank: int, world_size: int) -> TokenProbe:
        """This rank's contiguous block of ``ceil(B / W)`` sequences; its capture rows are padded
        to the largest block's token count, so ``all_gather`` sees equal shapes."""
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size = {world_size}), got {rank}")
        start, stop = self._shard_bounds(world_size)[rank]
        part = self._subset_sequences(start, stop)
        part._pad_rows = max(max(self._counts(world_size)), 1)
        return part

    def unshard(self, gathered: Tensor) -> Tensor:
        """(N, K + 5) capture rows in probe order from (W, rows, K + 5) gathered shards."""
        if gathered.ndim != 3:
            raise ValueError(f"`gathered` must be (W, rows, K + 5), got {tuple(gathered.shape)}")
        counts = self._counts(gathered.shape[0])
        return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])


def _split_statistics(rows: Tensor) -> V.TokenStatistics:
    s = rows[:, -_STATS:].double()
    return V.TokenStatistics(*s.unbind(1))


def _forward_mapping(module: nn.Module, batch: Mapping[str, Any]) -> Any:
    """``module(**batch)`` without the labels (the probe computes no loss)."""
    return module(**{k: v for k, v in batch.items() if k != "labels"})


def _sequence_labels(inputs: Any, labels: Any, ignore_index: int) -> tuple[Tensor, Tensor | None]:
    """(B, T) targets and the (B, T) attention mask (or None) of the probe's sequences."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if labels is None:
        if isinstance(inputs, Mapping) and "labels" in inputs:
            labels = inputs["labels"]
        elif isinstance(inputs, Mapping) and "input_ids" in inputs:
            labels = inputs["input_ids"]
        elif isinstance(inputs, Tensor):
            labels = inputs
        else:
            leaves = [w for w, _ in _tensor_leaves(inputs)] if inputs is not None else []
            raise ValueError(
                "`labels` must be given for these inputs (no `labels` or `input_ids` entry and "
                f"not a tensor of token ids), got inputs with tensors {leaves}"
            )
    labels = torch.as_tensor(labels)
    if labels.ndim != 2:
        raise ValueError(f"`labels` must be (B, T) token targets, got shape {tuple(labels.shape)}")
    if mask is not None and not isinstance(mask, Tensor):
        raise ValueError(f"`inputs['attention_mask']` must be a tensor, got {type(mask).__name__}")
    return labels.detach().cpu(), None if mask is None else mask.detach().cpu()
