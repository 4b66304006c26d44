"""The live picture drawn during training: cheap enough to redraw every few seconds.

:func:`live_image` shows, for one probe, the InPCA map (eq. 2.2.6: the two leading axes with
ignorance P0, truth P*, the geodesic between them, the reference runs and the live trajectory
coloured by progress) next to progress (eq. 2.2.4) against the optimizer step.

It is rasterised directly with Pillow (2x supersampled, then box-filtered) instead of matplotlib:
on 2 shared cores even a lean matplotlib figure costs 100-200 ms of CPU per probe (tick and text
layout dominate), which would allow only two or three updates a minute within a 2% drawing
budget; this costs a few milliseconds. It touches no global state, so it is safe on a worker
thread. The full figures of :mod:`lightning_manifold.plots` remain the final, detailed picture.

Markers follow :mod:`lightning_manifold.plots`: P0 a black disc, P* a red star, the newest live
snapshot ringed in red, live points coloured by progress with ``plots.PROGRESS_CMAP``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.colors import to_rgb
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from lightning_manifold import plots
from lightning_manifold.frame import ManifoldFrame

__all__ = ["LIVE_SIZE", "live_image", "live_png", "to_png"]

#: (width, height) in pixels of :func:`live_image`.
LIVE_SIZE: tuple[int, int] = (720, 320)
_SS = 2  # supersampling factor: draw at twice the size, then average 2x2 blocks (antialiasing)
_TRUTH = (214, 39, 40)
_GREY = (120, 120, 120)
_TEXT = (60, 60, 60)
RGB = tuple[int, int, int]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's DejaVu Sans at ``size`` pixels (Pillow's default font if it cannot load)."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def _rgb(color: str | Sequence[float], fade: float = 0.0) -> RGB:
    """8-bit RGB of a matplotlib colour, mixed with white by ``fade`` in [0, 1]."""
    r, g, b = (c * (1.0 - fade) + fade for c in to_rgb(color))
    return (round(255 * r), round(255 * g), round(255 * b))


def _progress_colors(progress: np.ndarray) -> list[RGB]:
    rgba = matplotlib.colormaps[plots.PROGRESS_CMAP](np.clip(np.nan_to_num(progress), 0.0, 1.0))
    return [tuple(int(v) for v in row) for row in np.round(rgba[:, :3] * 255)]


def _range(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of the finite ``values`` with 6% margins (a unit range around a single value)."""
    v = values[np.isfinite(values)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        return lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def _tick_text(x: float) -> str:
    """Short plain tick labels: ``0.25``, ``-3``, ``10k``, ``1M``."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:.3g}"


class _Panel:
    """One axes box on the canvas: maps data to pixels and draws marks, ticks and labels."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        box: tuple[int, int, int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        *,
        log_x: bool = False,
    ) -> None:
        self.draw, self.box, self.log_x = draw, box, log_x
        fx = self._fx
        self.xlim = (fx(xlim[0]), fx(xlim[1]))
        self.ylim = ylim

    def _fx(self, x: float | np.ndarray) -> float | np.ndarray:
        # log10(1 + step): a logarithmic step axis that keeps step 0
        return np.log10(1.0 + np.maximum(x, 0.0)) if self.log_x else x

    def points(self, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        """Pixel positions of the finite (x, y) pairs."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        x0, y0, x1, y1 = self.box
        (a, b), (c, d) = self.xlim, self.ylim
        px = x0 + (np.asarray(self._fx(x[ok])) - a) / (b - a) * (x1 - x0)
        py = y1 - (y[ok] - c) / (d - c) * (y1 - y0)
        return list(zip(px.tolist(), py.tolist(), strict=True))

    def line(self, x: np.ndarray, y: np.ndarray, color: RGB, width: float) -> None:
        pts = self.points(x, y)
        if len(pts) > 1:
            self.draw.line(pts, fill=color, width=max(1, round(width * _SS)), joint="curve")

    def dots(
        self,
        x: np.ndarray,
        y: np.ndarray,
        colors: Sequence[RGB],
        radius: float,
        outline: RGB | None = None,
    ) -> None:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        r = radius * _SS
        for (px, py), color in zip(self.points(x, y), np.asarray(colors)[ok], strict=True):
            self.draw.ellipse(
                (px - r, py - r, px + r, py + r), fill=tuple(color), outline=outline, width=_SS
            )

    def ring(self, x: float, y: float, color: RGB, radius: float) -> None:
        for px, py in self.points(np.array([x]), np.array([y])):
            r = radius * _SS
            self.draw.ellipse((px - r, py - r, px + r, py + r), outline=color, width=2 * _SS)

    def star(self, x: float, y: float, color: RGB, radius: float) -> None:
        for px, py in self.points(np.array([x]), np.array([y])):
            angles = np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius) * _SS
            poly = list(zip(px + radii * np.cos(angles), py - radii * np.sin(angles), strict=True))
            self.draw.polygon(poly, fill=color, outline=(255, 255, 255))

    def frame(self, title: str, xlabel: str, ylabel: str) -> None:
        """Axes box, ticks with plain labels, panel title and axis labels."""
        d, (x0, y0, x1, y1) = self.draw, self.box
        small, label = _font(9 * _SS), _font(10 * _SS)
        d.rectangle(self.box, outline=_GREY, width=_SS)
        if self.log_x:
            top = 10 ** self.xlim[1] - 1.0
            decades = [0.0] + [10.0**k for k in range(0, int(math.log10(max(top, 1.0))) + 1)]
            xticks = [t for t in decades if t <= top]
            if len(xticks) > 6:
                xticks = [xticks[0], *xticks[1::2]]
        else:
            xticks = MaxNLocator(5).tick_values(*self.xlim).tolist()
        (a, b), (c, e) = self.xlim, self.ylim
        for t in xticks:
            px = x0 + (float(self._fx(t)) - a) / (b - a) * (x1 - x0)
            if x0 - 1 <= px <= x1 + 1:
                d.line([(px, y1), (px, y1 + 4 * _SS)], fill=_GREY, width=_SS)
                d.text((px, y1 + 5 * _SS), _tick_text(t), fill=_TEXT, font=small, anchor="mt")
        for t in MaxNLocator(5).tick_values(c, e).tolist():
            py = y1 - (t - c) / (e - c) * (y1 - y0)
            if y0 - 1 <= py <= y1 + 1:
                d.line([(x0 - 4 * _SS, py), (x0, py)], fill=_GREY, width=_SS)
                d.text((x0 - 6 * _SS, py), _tick_text(t), fill=_TEXT, font=small, anchor="rm")
        d.text(((x0 + x1) / 2, y0 - 4 * _SS), title, fill=(0, 0, 0), font=label, anchor="md")
        d.text((x1, y1 + 18 * _SS), xlabel, fill=(0, 0, 0), font=small, anchor="ra")
        d.text((x0, y0 - 4 * _SS), ylabel, fill=(0, 0, 0), font=small, anchor="ld")


def _live(frame: ManifoldFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Live steps, progress and coordinates, sorted by step."""
    order = np.argsort(np.asarray(frame.live_steps), kind="stable")
    steps = np.asarray(frame.live_steps, dtype=float)[order]
    prog = np.asarray(frame.live_progress, dtype=float)[order]
    coords = np.asarray(frame.live_coords, dtype=float)
    coords = coords.reshape(len(order), coords.shape[-1] if coords.ndim == 2 else 0)[order]
    return steps, prog, coords


def _draw_map(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], f: ManifoldFrame) -> None:
    """PC1 against PC2 (PC1 against progress when only one axis is embedded)."""
    dims = min(plots.embedding_dims(f), 2)
    _, prog, live = _live(f)
    ref = np.asarray(f.ref_coords, dtype=float)
    geo = np.asarray(f.geodesic, dtype=float)
    p0 = np.asarray(f.ignorance, dtype=float).ravel()
    pstar = np.asarray(f.truth, dtype=float).ravel()
    ref_prog = np.asarray(f.ref_progress, dtype=float)
    geo_prog = np.linspace(0.0, 1.0, geo.shape[0]) if geo.ndim == 2 else np.zeros(0)

    def xy(points: np.ndarray, progress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not dims or not points.size:
            return np.zeros(0), np.zeros(0)
        points = points.reshape(len(progress), -1)
        return points[:, 0], (points[:, 1] if dims == 2 else np.asarray(progress, dtype=float))

    parts = [
        xy(ref, ref_prog),
        xy(geo, geo_prog),
        xy(live, prog),
        xy(p0[None, :] if p0.size >= dims else np.zeros((0, 2)), np.zeros(1)),
        xy(pstar[None, :] if pstar.size >= dims else np.zeros((0, 2)), np.ones(1)),
    ]
    xs = np.concatenate([p[0] for p in parts])
    ys = np.concatenate([p[1] for p in parts])
    panel = _Panel(draw, box, _range(xs), _range(ys))
    if len(parts[0][0]):
        colors = plots.run_colors(len(f.ref_run_names))
        faded = [_rgb(colors[int(r)], fade=0.45) for r in np.asarray(f.ref_run)]
        panel.dots(*parts[0], faded, radius=1.6)
    panel.line(*parts[1], color=(0, 0, 0), width=1.4)
    if len(parts[2][0]):
        panel.line(*parts[2], color=(40, 40, 40), width=1.0)
        panel.dots(*parts[2], _progress_colors(prog), radius=2.6, outline=(0, 0, 0))
        ok = np.flatnonzero(np.isfinite(parts[2][0]) & np.isfinite(parts[2][1]))
        if ok.size:
            panel.ring(parts[2][0][ok[-1]], parts[2][1][ok[-1]], _TRUTH, radius=5.5)
    if len(parts[3][0]):
        panel.dots(*parts[3], [(0, 0, 0)], radius=4.0, outline=(255, 255, 255))
    if len(parts[4][0]):
        panel.star(parts[4][0][0], parts[4][1][0], _TRUTH, radius=8.0)
    ylabel = plots.axis_label(f, 1) if dims == 2 else "progress"
    panel.frame("InPCA map  (P0 ●  P* ★)", plots.axis_label(f, 0), ylabel)


def _draw_progress(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], f: ManifoldFrame
) -> None:
    steps, prog, _ = _live(f)
    ref_steps = np.asarray(f.ref_steps, dtype=float)
    all_steps = np.concatenate([steps, ref_steps])
    finite = all_steps[np.isfinite(all_steps)]
    top = float(finite.max()) if finite.size else 1.0
    positive = finite[finite > 0]
    # logarithmic like plots.py when the steps span two decades (log-spaced captures)
    log_x = bool(positive.size) and positive.max() / positive.min() >= 100.0
    right = max(top, 1.0) * (1.0 if log_x else 1.04)
    panel = _Panel(draw, box, (0.0, right), (-0.02, 1.02), log_x=log_x)
    if ref_steps.size:
        colors = plots.run_colors(len(f.ref_run_names))
        ref_run = np.asarray(f.ref_run, dtype=np.int64)
        ref_prog = np.asarray(f.ref_progress, dtype=float)
        for r in np.unique(ref_run):
            rows = np.flatnonzero(ref_run == r)
            rows = rows[np.argsort(ref_steps[rows], kind="stable")]
            panel.line(ref_steps[rows], ref_prog[rows], _rgb(colors[r], fade=0.3), width=1.0)
    panel.line(steps, prog, color=(0, 0, 0), width=1.8)
    panel.dots(steps, prog, _progress_colors(prog), radius=2.2, outline=(0, 0, 0))
    panel.frame("progress toward truth", "optimizer step", "progress")


def live_image(frame: ManifoldFrame, *, size: tuple[int, int] = LIVE_SIZE) -> np.ndarray:
    """The live picture of one probe: InPCA map and progress against step, side by side.

    Args:
        frame: the data; the map uses the first two columns of the (t, k) ``live_coords``,
            (m, k) ``ref_coords`` and (g, k) ``geodesic`` (PC1 against progress when k = 1).
        size: (width, height) in pixels.

    Returns:
        (height, width, 3) uint8 RGB pixels.
    """
    width, height = size
    if width < 200 or height < 120:
        raise ValueError(f"`size` must be at least (200, 120) pixels, got {size!r}")
    w, h = width * _SS, height * _SS
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top, bottom = round(0.17 * h), round(0.8 * h)
    _draw_map(draw, (round(0.085 * w), top, round(0.475 * w), bottom), frame)
    _draw_progress(draw, (round(0.585 * w), top, round(0.975 * w), bottom), frame)
    prog = np.asarray(frame.live_progress, dtype=float)
    latest = float(prog[np.argmax(frame.live_steps)]) if prog.size else math.nan
    status = f"step {int(frame.step)}" + (
        f" · progress {latest:.3f}" if math.isfinite(latest) else ""
    )
    head = frame.title or frame.probe
    draw.text(
        (w / 2, 5 * _SS), f"{head} — {status}", fill=(0, 0, 0), font=_font(12 * _SS), anchor="mt"
    )
    return np.asarray(img.reduce(_SS))


def to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of (H, W, 3) uint8 RGB ``pixels``."""
    buf = io.BytesIO()
    # zlib level 1: a third less CPU than the default for a few percent more bytes
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def live_png(frame: ManifoldFrame, *, size: tuple[int, int] = LIVE_SIZE) -> bytes:
    """PNG bytes of :func:`live_image`."""
    return to_png(live_image(frame, size=size))
