"""ImprintedProbe: record a representation's predictions on a task it has no classifier for.

Thesis ch. 3 (eq. 3.2.1, §3.5.4): a contrastive or self-supervised encoder, or a model trained
on other classes, is mapped onto the probe's task by *imprinting*: the classifier row of class
c is the normalised sum of the features of the probe samples of class c, and the model predicts
the softmax of the features against those rows. Models of different tasks imprinted onto their
union task (eq. 3.2.2) share one prediction space, so progress, distances, embeddings, online
metrics, plots and the CLI work on them unchanged.

Where the features come from:

* a submodule name (``features="encoder"``, ``"backbone.fc"``): a forward hook on that layer
  records its output while the model runs (``forward=`` says how to call the model); the hook
  is removed after every capture and the module is left as it was;
* a callable ``features(module, x) -> (B, d)``.

Each capture runs :meth:`ImprintedProbe.predict` (features of the samples, per DDP rank) and
:meth:`ImprintedProbe.finalize` (the class sums and the imprinted log-probabilities, on the
features of the whole probe gathered in probe order), so the class sums are those of the whole
probe under DDP too.

Example::

    from lightning_manifold import ManifoldCallback, ProbeSet
    from lightning_manifold.imprinting import ImprintedProbe

    probe = ProbeSet.from_tensors(x_val, y_val, name="val")          # through the model's head
    imprinted = ImprintedProbe.from_probe(probe, "backbone", name="val-imprinted",
                                          seen_classes=[0, 1, 2, 3, 4])
    trainer = Trainer(callbacks=[ManifoldCallback([probe, imprinted])])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_manifold.functional.imprinting import imprint
from lightning_manifold.probe import (
    ForwardFn,
    ProbeSet,
    TransformFn,
    _index,
    check_output_dtype,
    input_batches,
    module_device,
    no_autocast,
)

__all__ = ["FeaturesFn", "ImprintedProbe"]

FeaturesFn = Callable[[nn.Module, Any], Tensor]
"""``features(module, batch_inputs) -> (B, d)``: the representation of one batch of inputs."""


def _features_name(features: str | FeaturesFn) -> str:
    if isinstance(features, str):
        return features
    qualname = getattr(features, "__qualname__", type(features).__qualname__)
    return f"<callable {getattr(features, '__module__', '?')}.{qualname}>"


class ImprintedProbe(ProbeSet):
    """A probe whose predictions come from imprinting the model's features onto its labels.

    :meth:`predict` returns the (n, d) features of the samples; :meth:`finalize` maps the
    features of all N probe samples to (N, C) log-probabilities by imprinting (eq. 3.2.1);
    :meth:`imprint` does both in one process. In a
    :class:`~lightning_manifold.callback.ManifoldCallback` it is used like any probe, also next
    to a plain probe on the same samples (give the two different names).

    Args:
        inputs: (N, ...) inputs or a (nested) collection of tensors, as for ``ProbeSet``.
        labels: (N,) labels of the task the model is mapped to (e.g. the union task of the tasks
            being compared); every class in ``[0, num_classes)`` needs at least one sample.
        features: a submodule name (its forward output, after ``transform``, is the (B, d)
            features; ``""`` is the whole model) or a callable ``features(module, x) -> (B, d)``.
        seen_classes: the classes the model is trained on, if known (recorded in the store's
            metadata; used to split progress into seen and novel classes).
        name: probe name (must differ from the other probes').
        forward: ``forward(module, x)``: how to run the model so the named layer sees the
            inputs; default ``module(x)``. Only with a layer name.
        transform: ``transform(layer_output) -> (B, d)`` features (e.g. ``lambda t:
            t.flatten(1)`` for a convolutional layer); default: the output itself, which must
            be a (B, d) tensor.
        batch_size: samples per forward pass.
        num_classes: C; default ``max(labels) + 1``.

    Raises:
        TypeError: ``features`` neither a string nor callable; non-callable hooks.
        ValueError: a class without samples, ``seen_classes`` outside ``[0, C)``, ``forward``
            given with a callable ``features``, or any ``ProbeSet`` argument error.

    Example::

        probe = ImprintedProbe(x, y, features="encoder", name="union", seen_classes=range(5))
    """

    def __init__(
        self,
        inputs: Any,
        labels: Tensor | np.ndarray | Iterable[int],
        *,
        features: str | FeaturesFn,
        seen_classes: Iterable[int] | None = None,
        name: str = "train",
        forward: ForwardFn | None = None,
        transform: TransformFn | None = None,
        batch_size: int = 256,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            inputs,
            labels,
            name=name,
            forward=forward,
            transform=transform,
            batch_size=batch_size,
            num_classes=num_classes,
        )
        if not isinstance(features, str) and not callable(features):
            raise TypeError(
                "`features` must be a submodule name (str) or a callable features(module, x), "
                f"got {type(features).__name__}"
            )
        if callable(features) and forward is not None:
            raise ValueError(
                "`forward` is used only with a layer name in `features`; a callable `features` "
                "runs the model itself"
            )
        C = self.num_classes
        missing = sorted(set(range(C)) - set(self.labels.tolist()))
        if missing:
            raise ValueError(
                f"`labels` must hold at least one sample of every class in [0, {C}) to imprint "
                f"(eq. 3.2.1), got none of class(es) {missing}"
            )
        self._features = features
        self._seen_classes = _check_seen(seen_classes, C)

    @classmethod
    def from_probe(
        cls,
        probe: ProbeSet,
        features: str | FeaturesFn,
        *,
        name: str | None = None,
        seen_classes: Iterable[int] | None = None,
        transform: TransformFn | None = None,
        batch_size: int | None = None,
    ) -> ImprintedProbe:
        """The imprinted twin of a probe: same samples, labels, ``forward`` and class count.

        Args:
            probe: the probe (its ``transform``, which makes logits, is not used).
            features: as in the constructor.
            name: default ``"<probe name>-imprinted"``.
            seen_classes: the classes the model is trained on.
            transform: layer output -> (B, d) features.
            batch_size: default the probe's.

        Returns:
            The imprinted probe.
        """
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"`probe` must be a ProbeSet, got {type(probe).__name__}")
        return cls(
            probe.inputs,
            probe.labels,
            features=features,
            seen_classes=seen_classes,
            name=f"{probe.name}-imprinted" if name is None else name,
            forward=None if callable(features) else probe.forward,
            transform=transform,
            batch_size=probe.batch_size if batch_size is None else batch_size,
            num_classes=probe.num_classes,
        )

    # ---------------------------------------------------------------- properties

    @property
    def features(self) -> str | FeaturesFn:
        """The layer name or callable the features come from."""
        return self._features

    @property
    def seen_classes(self) -> list[int] | None:
        """The classes the model is trained on (sorted), or ``None`` if not given."""
        return None if self._seen_classes is None else list(self._seen_classes)

    @property
    def meta(self) -> dict[str, Any]:
        """``{"imprinting": {...}}``: the store metadata of imprinted snapshots (where the
        features come from, the task's classes, the seen and novel classes)."""
        C = self.num_classes
        seen = self.seen_classes
        return {
            "imprinting": {
                "equation": "3.2.1",
                "features": _features_name(self._features),
                "num_classes": C,
                "seen_classes": seen,
                "novel_classes": None if seen is None else sorted(set(range(C)) - set(seen)),
            }
        }

    def __repr__(self) -> str:
        return (
            f"ImprintedProbe(name={self.name!r}, features={_features_name(self._features)!r}, "
            f"num_samples={self.num_samples}, num_classes={self.num_classes})"
        )

    # ---------------------------------------------------------------- prediction

    def predict(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """(n, d) features of ``module`` on the probe samples, in ``dtype``, in probe order.

        Runs the forward passes under ``torch.no_grad()`` and nothing else (train/eval mode and
        precision context are the caller's, as in :meth:`ProbeSet.predict`). With a layer name,
        a forward hook records that layer's output and is removed before returning, also when
        the forward raises.

        Raises:
            ValueError: bad ``dtype``; no such layer; the layer ran zero or several times in one
                forward; features (after ``transform``) not a floating (B, d) tensor.
        """
        check_output_dtype(dtype)
        dev = module_device(module) if device is None else torch.device(device)
        chunks: list[Tensor] = []
        with torch.no_grad(), self._feature_source(module) as features_of:
            batches = input_batches(self.inputs_on(dev), self.num_samples, self.batch_size)
            for start, stop, batch in batches:
                phi = features_of(batch)
                if self.transform is not None:
                    phi = self.transform(phi)
                self._check_features(phi, stop - start, chunks[0].shape[1] if chunks else None)
                with no_autocast(dev):
                    chunks.append(phi.to(dtype))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def finalize(self, gathered: Tensor) -> Tensor:
        """(N, C) imprinted log-probabilities from the (N, d) features of the whole probe.

        Args:
            gathered: (N, d) features in probe order (:meth:`predict`, gathered under DDP).

        Returns:
            (N, C) log-probabilities (eq. 3.2.1) in the features' dtype, on their device;
            non-finite rows if the features are not finite (a diverged model).
        """
        if gathered.ndim != 2 or gathered.shape[0] != self.num_samples:
            raise ValueError(
                f"`gathered` must be the (N, d) features of all N = {self.num_samples} probe "
                f"samples, got shape {tuple(gathered.shape)}"
            )
        with no_autocast(gathered.device):
            return imprint(gathered, self.labels_on(gathered.device), self.num_classes)

    def imprint(
        self,
        module: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """(N, C) imprinted log-probabilities of ``module`` in one process:
        ``finalize(predict(module))``."""
        return self.finalize(self.predict(module, dtype=dtype, device=device))

    @contextmanager
    def _feature_source(self, module: nn.Module) -> Iterator[Callable[[Any], Any]]:
        """Yield ``batch -> features``; with a layer name, hooked for the duration only."""
        if callable(self._features):
            fn = self._features
            yield lambda batch: fn(module, batch)
            return
        layer = self._layer(module)
        captured: list[Any] = []
        handle = layer.register_forward_hook(lambda _m, _args, out: captured.append(out))
        try:

            def features_of(batch: Any) -> Any:
                captured.clear()
                _ = module(batch) if self.forward is None else self.forward(module, batch)
                if len(captured) != 1:
                    raise ValueError(
                        f"probe {self.name!r}: layer `features` = {self._features!r} ran "
                        f"{len(captured)} times in one forward pass, expected once; pass a "
                        "callable `features(module, x)` instead"
                    )
                return captured[0]

            yield features_of
        finally:
            handle.remove()
            captured.clear()

    def _layer(self, module: nn.Module) -> nn.Module:
        assert isinstance(self._features, str)
        try:
            return module.get_submodule(self._features)
        except AttributeError as err:
            names = [n for n, _ in module.named_modules() if n][:12]
            raise ValueError(
                f"probe {self.name!r}: `features` must name a submodule of "
                f"{type(module).__name__}, got {self._features!r} (submodules: {names}...)"
            ) from err

    def _check_features(self, phi: Any, rows: int, width: int | None) -> None:
        if not isinstance(phi, Tensor):
            raise ValueError(
                f"probe {self.name!r}: features must be a (B, d) tensor, got "
                f"{type(phi).__name__}; pass `transform=` to turn the layer output into features"
            )
        expected = f"({rows}, {width if width is not None else 'd'})"
        if (
            not phi.is_floating_point()
            or phi.ndim != 2
            or phi.shape[0] != rows
            or (width is not None and phi.shape[1] != width)
        ):
            raise ValueError(
                f"probe {self.name!r}: features must be a floating (B, d) = {expected} tensor, "
                f"got {phi.dtype} of shape {tuple(phi.shape)}; pass e.g. "
                "`transform=lambda t: t.flatten(1)`"
            )

    # ---------------------------------------------------------------- DDP slicing

    def subset(self, indices: Tensor | np.ndarray | Iterable[int]) -> ImprintedProbe:
        """An imprinted probe of the samples at ``indices`` (a DDP shard predicts features
        only; a shard need not hold every class)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        part = ImprintedProbe.__new__(ImprintedProbe)
        ProbeSet.__init__(
            part,
            _index(self.inputs, idx),
            self.labels[idx.to(self.labels.device)],
            name=self.name,
            forward=self.forward,
            transform=self.transform,
            batch_size=self.batch_size,
            num_classes=self.num_classes,
        )
        part._features = self._features
        part._seen_classes = self._seen_classes
        return part


def _check_seen(seen_classes: Iterable[int] | None, C: int) -> tuple[int, ...] | None:
    """Sorted unique class indices in [0, C) (empty allowed: trained on none of them)."""
    if seen_classes is None:
        return None
    if isinstance(seen_classes, (str, bytes)) or not isinstance(seen_classes, Iterable):
        raise ValueError(
            f"`seen_classes` must be an iterable of class indices, got {seen_classes!r}"
        )
    values = list(seen_classes)
    t = torch.as_tensor(np.asarray(values, dtype=np.int64 if not values else None))
    if t.ndim != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"`seen_classes` must be integer class indices, got {values!r}")
    bad = sorted({v for v in t.tolist() if not 0 <= v < C})
    if bad:
        raise ValueError(f"`seen_classes` must lie in [0, {C}), got {bad}")
    return tuple(sorted(set(t.tolist())))
