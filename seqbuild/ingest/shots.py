"""Shot transitions located to the frame, from small thumbnails: hard cuts, cross-dissolves, fades through
black, and flashes that are not transitions.

Every frame becomes a 32-pixel-wide copy of the detector's thumbnail. Content is compared on that copy
*standardised* (minus its mean, divided by its standard deviation), which is blind to brightness and
contrast: a fade moves no content until its darkest point, where one shot gives way to the other, and
a white flash (the picture mixed with white) barely moves it. The hue-saturation histogram of the lit
pixels adds colour (two people framed alike in one studio differ in it), and is blind to brightness too.
Four rules, all streaming:

- **hard cut** at frame c: the content step from c-1 to c is large (``cut_threshold``, in standard
  deviations) and at least ``sharpness`` times the typical step of the frames on either side, and the
  picture does not come back within ``latency`` frames (a flash does); a jump seen in the colours only
  must also hold for those frames (a dissolve's first blend can jump in colour). In the dark valley of
  a fade the steps around the boundary are noisy, so there the largest step near the bottom is enough.
- **fade**: a hard cut whose boundary frames are much darker than the frames before or after; its
  extent is the run of darkening frames before and of brightening frames after.
- **cross-dissolve**: once the content has changed by more than ``cut_threshold`` without a cut, the
  frames of the window are projected on the line from its first to its last frame (a dissolve's
  frames are linear blends ``(1 - a) A + a B``), a ramp ``a(t)`` (0, then rising linearly, then 1) is
  fitted to the projections, and the run is a dissolve when the ramp fits, the frames lie close to the
  line (a pan or a person walking through the picture do not), black does not lie on that line (then
  it is a fade), the frames lose contrast in the middle as a mix of two pictures must (a slow move,
  a turning head or a change of light travels along a similar line without that dip: see
  :func:`blend_contrast`) and the picture has settled for ``settle`` frames after it. Frames far brighter than
  their neighbours (flashes) take no part in the fit. Its first and last blended frames are the
  transition's extent; a cut right before the ramp was the dissolve's opening and merges into it.
- **flat frames** (black, white: no contrast) carry no content; a cut across them compares the last
  frame before with the first after.

A cut is known ``latency`` frames after it happens; a dissolve once it has settled, at most
``max_transition + latency`` frames after its first frame. Nothing before
:attr:`TransitionDetector.final_before` can change. The defaults were chosen while looking at four
composed broadcasts (dev_broadcast, dev_broadcast_2 and two check broadcasts with other dissolve and fade
lengths, flashes and people; benchmarks/media) and two real clips without ground truth (a walking crowd:
no cut found; a stage recording: its three cuts found); docs/benchmarks.md "Transitions" has the figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..registry import Registry

SHOT_DETECTORS: Registry[ShotDetector] = Registry("shot detector")

THUMB_WIDTH = 128
"""Width of the thumbnails the detector reads (height keeps the aspect ratio)."""

SMALL_WIDTH = 32
"""Width of the copy the transition rules compare (a 4x4 average of the thumbnail)."""

FLAT_STD = 1.0
"""A frame whose grey levels vary less than this (standard deviation, 0-255) carries no content."""

TRANSITION_KINDS = ("cut", "dissolve", "fade")
"""What opened a shot (the first shot of a video has none)."""


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the detector's thumbnail for a frame of the given size."""
    if width <= 0 or height <= 0:
        return THUMB_WIDTH, THUMB_WIDTH
    tw = min(THUMB_WIDTH, width)
    th = max(8, round(tw * height / width / 2) * 2)
    return tw, th


@dataclass
class Transition:
    """A shot boundary: ``frame`` is the first frame of the new shot; ``first``..``last`` the frames the
    transition occupies (a dissolve's blended frames; a fade's darkening and brightening frames; for a
    hard cut ``first == frame`` and ``last == frame - 1``: no frame)."""

    kind: str
    frame: int
    first: int
    last: int
    score: float

    @property
    def blended(self) -> tuple[int, int] | None:
        """The frames that mix two shots (a dissolve's extent), or None."""
        return (self.first, self.last) if self.kind == "dissolve" and self.last >= self.first else None

    @property
    def extent(self) -> tuple[int, int] | None:
        """The frames the transition occupies, or None for a hard cut."""
        return (self.first, self.last) if self.last >= self.first else None


class ShotDetector:
    """Streaming transition detector: feed one thumbnail per frame in order, read back transitions.

    :meth:`update` returns the transitions recognised at that frame, possibly dated back (a dissolve is
    recognised after it ends). A transition whose ``frame`` is below :attr:`final_before` never changes
    or disappears; :meth:`finish` settles everything at the end of the video.
    """

    latency: int = 0
    """Frames after which a hard cut at a frame is known."""

    def update(self, index: int, thumb_rgb: np.ndarray) -> list[Transition]:
        """Consume frame ``index``; the transitions recognised now."""
        raise NotImplementedError

    def finish(self) -> list[Transition]:
        """No more frames: the transitions still recognisable."""
        return []

    @property
    def final_before(self) -> int:
        """Frames below this index belong to their shot for good (and are or are not blended for good)."""
        raise NotImplementedError


@dataclass
class _Frame:
    raw: np.ndarray  # small frame, float32, flattened
    z: np.ndarray | None  # standardised copy; None for a flat frame
    colour: np.ndarray | None  # hue-saturation histogram of the lit pixels; None for a dark frame
    lit: float  # share of lit pixels (those in the colour histogram)
    luma: float
    std: float
    step: float = 0.0  # content step from the previous frame (0 across flat frames)
    structure_step: float = 0.0  # the part of it measured on the standardised frames


def _content_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def hue_saturation_histogram(
    thumb_rgb: np.ndarray, min_value: int = 32, min_lit: float = 0.15
) -> tuple[np.ndarray | None, float]:
    """Normalised hue-saturation histogram (16 x 4 bins) of the pixels brighter than ``min_value`` (None
    when fewer than ``min_lit`` of the pixels are), and the share of such pixels. Hue and saturation do
    not change when a picture is scaled darker, so the histogram survives a fade until its darkest frames."""
    hsv = cv2.cvtColor(thumb_rgb, cv2.COLOR_RGB2HSV)
    mask = (hsv[..., 2] >= min_value).astype(np.uint8)
    lit = float(mask.mean())
    if lit < min_lit:
        return None, lit
    hist = cv2.calcHist([hsv], [0, 1], mask, [16, 4], [0, 180, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1.0), lit


def frame_distance(a: _Frame, b: _Frame) -> float | None:
    """How much the content differs: the larger of the mean absolute difference of the standardised
    frames (in standard deviations) and 1 - the intersection of their colour histograms; None when a
    frame is flat."""
    if a.z is None or b.z is None:
        return None
    d = _content_distance(a.z, b.z)
    # Colours compare only over similar shares of lit pixels: while a picture darkens, the pixels left
    # in its histogram are a shrinking, changing subset.
    if a.colour is not None and b.colour is not None and min(a.lit, b.lit) >= 0.8 * max(a.lit, b.lit):
        d = max(d, float(1.0 - np.minimum(a.colour, b.colour).sum()))
    return d


def blend_contrast(frames: np.ndarray, first: np.ndarray, last: np.ndarray) -> float:
    """Where the contrast of ``frames`` lies between that of a mix of ``first`` and ``last`` (0) and an
    undimmed picture (1), weighted towards the middle of the transition.

    A mix ``(1 - a) A + a B`` of two pictures has the standard deviation
    ``sqrt((1-a)^2 sA^2 + a^2 sB^2 + 2 a (1-a) r sA sB)`` (r: their correlation), which dips below the
    straight line from ``sA`` to ``sB`` unless the pictures are alike. A camera move, a turning head or a
    change of light also travels from one picture to another along a nearly straight line in pixel space,
    but each of its frames is a whole picture, without that dip. Measured on composed broadcasts: 0.23 or
    less at every true dissolve, 0.63 or more at slow moves of one scene (docs/benchmarks.md).
    """
    sa, sb = float(first.std()), float(last.std())
    if sa <= 0 or sb <= 0:
        return 0.0
    r = float(((first - first.mean()) / sa * (last - last.mean()) / sb).mean())
    ab = last - first
    norm2 = float(ab @ ab)
    if norm2 <= 1e-6:
        return 0.0
    num = den = 0.0
    for x in frames:
        a = float(np.clip((x - first) @ ab / norm2, 0.0, 1.0))
        mix = np.sqrt(max((1 - a) ** 2 * sa**2 + a**2 * sb**2 + 2 * a * (1 - a) * r * sa * sb, 0.0))
        line = (1 - a) * sa + a * sb
        w = a * (1 - a)
        if line - mix > 1e-3 * line:  # pictures too alike to tell a mix from a move carry no weight
            num += w * (float(x.std()) - mix) / (line - mix)
            den += w
    return num / den if den > 0 else 0.0


def fit_ramp(
    alpha: np.ndarray, weights: np.ndarray | None = None, min_len: int = 1
) -> tuple[int, int, float]:
    """Weighted least-squares fit of a ramp (0 before ``s``, ``(t - s + 1) / (e - s + 2)`` on ``s..e``,
    1 after) to ``alpha`` at positions 0..n-1; returns (s, e, weighted root-mean-square error).
    ``s >= 1``: position 0 is the reference frame of the outgoing shot."""
    a = np.asarray(alpha, dtype=np.float64)
    n = len(a)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n < 3 or w.sum() <= 0:
        return 1, 0, float("inf")
    t = np.arange(n, dtype=np.float64)

    def cum(v: np.ndarray) -> np.ndarray:
        return np.r_[0.0, np.cumsum(v)]

    c_a2, c_b2 = cum(w * a * a), cum(w * (1 - a) ** 2)
    c_a, c_ta = cum(w * a), cum(w * t * a)
    c_w, c_t, c_t2 = cum(w), cum(w * t), cum(w * t * t)
    ss, ee = np.meshgrid(np.arange(1, n), np.arange(0, n), indexing="ij")
    ok = (ee - ss + 1) >= max(min_len, 1)
    ss, ee = ss[ok], ee[ok]
    if not len(ss):
        return 1, 0, float("inf")
    k = 1.0 / (ee - ss + 2)  # the model on the ramp: k * u with u = t - s + 1
    lo, hi = ss, ee + 1
    sw, st, st2 = c_w[hi] - c_w[lo], c_t[hi] - c_t[lo], c_t2[hi] - c_t2[lo]
    sa, sta, sa2 = c_a[hi] - c_a[lo], c_ta[hi] - c_ta[lo], c_a2[hi] - c_a2[lo]
    sh = ss - 1.0
    s_ua = sta - sh * sa
    s_u2 = st2 - 2 * sh * st + sh * sh * sw
    sse = c_a2[lo] + (sa2 - 2 * k * s_ua + k * k * s_u2) + (c_b2[n] - c_b2[hi])
    i = int(np.argmin(sse))
    return int(ss[i]), int(ee[i]), float(np.sqrt(max(float(sse[i]), 0.0) / c_w[n]))


@SHOT_DETECTORS.register("transitions")
class TransitionDetector(ShotDetector):
    """Hard cuts, cross-dissolves and fades located to the frame; flashes ignored (module docstring)."""

    def __init__(
        self,
        cut_threshold: float = 0.3,
        sharpness: float = 3.0,
        max_transition: int = 48,
        latency: int = 3,
        settle: int = 5,
        max_ramp_error: float = 0.08,
        max_blend_residual: float = 0.25,
        fade_depth: float = 0.5,
        max_blend_contrast: float = 0.5,
    ) -> None:
        self.cut_threshold = float(cut_threshold)
        self.sharpness = float(sharpness)
        self.window = int(max_transition)
        self.latency = int(latency)
        self.settle = int(settle)
        self.max_ramp_error = float(max_ramp_error)
        self.max_blend_residual = float(max_blend_residual)
        self.fade_depth = float(fade_depth)
        self.max_blend_contrast = float(max_blend_contrast)
        self._frames: dict[int, _Frame] = {}
        self._last = -1
        self._anchor = 0  # first frame that may still belong to an undecided transition
        self._last_cut = -1
        self._fades: list[Transition] = []  # cuts whose kind and extent wait for frames after them
        self._keep = self.window + self.latency + self.settle + 8

    # ------------------------------------------------------------------ features

    def _features(self, thumb_rgb: np.ndarray) -> _Frame:
        h, w = thumb_rgb.shape[:2]
        sh = max(2, round(SMALL_WIDTH * h / w))
        small = cv2.resize(thumb_rgb, (SMALL_WIDTH, sh), interpolation=cv2.INTER_AREA)
        raw = small.astype(np.float32).ravel()
        std = float(raw.std())
        mean = float(raw.mean())
        z = None if std < FLAT_STD else (raw - mean) / std
        colour, lit = hue_saturation_histogram(thumb_rgb) if z is not None else (None, 0.0)
        return _Frame(raw, z, colour, lit, mean, std)

    # ------------------------------------------------------------------ streaming

    def update(self, index: int, thumb_rgb: np.ndarray) -> list[Transition]:
        """Consume frame ``index`` (frames must come in order); transitions recognised now."""
        frame = self._features(thumb_rgb)
        prev = self._frames.get(index - 1)
        if prev is not None:
            frame.step = frame_distance(frame, prev) or 0.0
            if frame.z is not None and prev.z is not None:
                frame.structure_step = _content_distance(frame.z, prev.z)
        self._frames[index] = frame
        self._last = index
        out: list[Transition] = []
        c = index - self.latency
        if c >= 1:
            out += self._check_cut(c, index)
        out += self._check_dissolve(index - self.latency, settle=self.settle)
        out += self._settle_fades(index, final=False)
        for old in [k for k in self._frames if k < index - self._keep]:
            del self._frames[old]
        return out

    def finish(self) -> list[Transition]:
        """Settle the last frames: cuts with what follows them, a dissolve that ended just before the end."""
        out: list[Transition] = []
        last = self._last
        for c in range(max(1, last - self.latency + 1), last + 1):
            out += self._check_cut(c, last)
        out += self._check_dissolve(last, settle=min(self.settle, 2))
        out += self._settle_fades(last, final=True)
        self._anchor = last + 1
        return out

    @property
    def final_before(self) -> int:
        """Frames below this index are settled (see :class:`ShotDetector`)."""
        return max(self._anchor, self._last - self.latency - self.window + 1)

    # ------------------------------------------------------------------ rules

    def _steps(self, frames: Iterable[int]) -> list[float]:
        return [self._frames[k].step for k in frames if k in self._frames]

    def _check_cut(self, c: int, last: int) -> list[Transition]:
        fr = self._frames
        f = fr.get(c)
        prev = fr.get(c - 1)
        if f is None or prev is None or f.z is None or c < self._anchor or c <= self._last_cut:
            return []
        if prev.z is None:
            # Across flat frames: compare with the last frame that had content.
            p = next((k for k in range(c - 2, c - self._keep, -1) if k in fr and fr[k].z is not None), None)
            if p is None or p < self._anchor:
                return []
            d = frame_distance(f, fr[p]) or 0.0
            return self._cut(c, d) if d >= self.cut_threshold else []
        d = f.step
        if d < self.cut_threshold:
            return []
        left = np.median(self._steps(range(c - 3, c)) or [0.0])
        right = np.median(self._steps(range(c + 1, min(c + 4, last + 1))) or [0.0])
        if self._in_dark_valley(c, d, last):
            # Frames this dark compare poorly (their content is a few grey levels): the largest step
            # at the bottom of the valley is the boundary.
            return self._cut(c, d)
        if d < self.sharpness * max(left, right, 1e-3):
            return []
        # A flash (a few frames at most) leaves the picture and comes back: neither edge is a boundary.
        after = [fr[k] for k in range(c + 1, min(c + self.latency, last) + 1) if k in fr]
        before = [fr[k] for k in range(c - 2, c - 2 - self.latency, -1) if k in fr and k >= self._anchor]
        if any((b := frame_distance(x, prev)) is not None and b < 0.5 * d for x in after):
            return []
        if any((b := frame_distance(f, x)) is not None and b < 0.5 * d for x in before):
            return []
        # A jump seen in the colours only must hold: the first frame of a dissolve can jump in colour
        # (new hues mixing in) while its picture keeps changing towards the incoming shot.
        if f.structure_step < self.cut_threshold:
            moves = [b for x in after if (b := frame_distance(x, f)) is not None]
            if moves and float(np.median(moves)) > 0.5 * d:
                return []
        return self._cut(c, d)

    def _in_dark_valley(self, c: int, d: float, last: int) -> bool:
        """At the bottom of a fade the steps around the boundary are noisy: the largest step nearby, with
        both boundary frames far darker than the shot before, is the boundary."""
        near = self._steps(range(c - 3, min(c + 4, last + 1)))
        if d < max(near, default=0.0):
            return False
        before = [self._frames[k].luma for k in range(c - self.window, c - 1) if k in self._frames]
        if not before:
            return False
        dark = max(self._frames[c - 1].luma, self._frames[c].luma)
        return dark < 0.35 * max(before)

    def _cut(self, c: int, d: float) -> list[Transition]:
        out = self._dissolve_before(c)
        cut = Transition("cut", c, c, c - 1, float(d))
        self._fades.append(cut)
        self._anchor = self._last_cut = c
        return [*out, cut]

    def _window(self, end: int) -> list[int]:
        start = max(self._anchor, end - self.window)
        return [k for k in range(start, end + 1) if k in self._frames]

    def _dissolve_before(self, c: int) -> list[Transition]:
        """A dissolve under way when a cut came (the incoming shot cut during the blend)."""
        found = self._fit_dissolve(self._window(c - 1), min_len=4)
        if found is None:
            return []
        s, e, score = found
        return [Transition("dissolve", s, s, e, score)]

    def _check_dissolve(self, end: int, settle: int) -> list[Transition]:
        frames = self._window(end)
        if len(frames) < 4:
            return []
        fr = self._frames
        change = frame_distance(fr[frames[0]], fr[frames[-1]])
        if change is None or change < self.cut_threshold:
            return []
        # A dissolve is recognised once the picture has settled after it: while the latest frames still
        # move a lot (a busy shot, or a dissolve under way), the fit can wait.
        recent = frame_distance(fr[frames[max(0, len(frames) - 1 - settle)]], fr[frames[-1]])
        if recent is None or recent > 0.5 * change:
            return []
        found = self._fit_dissolve(frames, min_len=2)
        if found is None:
            return []
        s, e, score = found
        if e > end - settle:
            return []  # not over yet (or not a dissolve after all)
        opening = next((t for t in self._fades if t.frame == self._anchor and s <= t.frame + 2), None)
        if opening is not None:
            # The cut just before the ramp was the dissolve's first blend, which jumped: one dissolve.
            self._fades.remove(opening)
            s = opening.frame
        self._anchor = e + 1
        return [Transition("dissolve", s, s, e, score)]

    def _fit_dissolve(self, frames: list[int], min_len: int) -> tuple[int, int, float] | None:
        """(first, last blended frame, content change) of a dissolve in ``frames``, or None.

        The frames are projected on the line between two reference frames (first the window's ends, then
        the frames just outside the fitted ramp); frames far off the line (a flash, a flat frame) do not
        take part in the fit.
        """
        n = len(frames)
        if n < 4:
            return None
        x = np.stack([self._frames[k].raw for k in frames])
        # Flash frames (brighter than most of the frames around them) take no part, not even as an end.
        fr = self._frames
        luma = np.array([fr[k].luma for k in frames])
        edges = [[fr[k].luma for k in range(k0, k0 + 3) if k in fr] for k0 in (frames[0] - 3, frames[-1] + 1)]
        padded = np.concatenate(
            [
                np.pad(edges[0], (3 - len(edges[0]), 0), mode="edge") if edges[0] else np.full(3, luma[0]),
                luma,
                np.pad(edges[1], (0, 3 - len(edges[1])), mode="edge") if edges[1] else np.full(3, luma[-1]),
            ]
        )
        around = np.median(np.lib.stride_tricks.sliding_window_view(padded, 7), axis=1)
        flash = luma > 1.25 * around + 5.0
        lo = next((i for i in range(n) if not flash[i]), 0)
        hi = next((i for i in range(n - 1, -1, -1) if not flash[i]), n - 1)
        if hi - lo < 3:
            return None
        s = e = -1
        good = np.ones(n, dtype=bool)
        for _ in range(3):
            a, ab = x[lo], x[hi] - x[lo]
            norm2 = float(ab @ ab)
            if norm2 <= 1e-6:
                return None
            alpha = (x - a) @ ab / norm2
            resid = np.linalg.norm(x - a - alpha[:, None] * ab[None], axis=1) / np.sqrt(norm2)
            good = (resid <= max(0.3, 3.0 * float(np.median(resid[lo : hi + 1])))) & ~flash
            good[lo] = not flash[lo]
            s_rel, e_rel, err = fit_ramp(alpha[lo:], good[lo:], min_len=min_len)
            s, e = lo + s_rel, lo + e_rel
            if e < s:
                return None
            lo_new = next((k for k in range(s - 1, lo - 1, -1) if good[k]), lo)
            hi_new = next((k for k in range(e + 1, n) if good[k]), hi)
            if (lo_new, hi_new) == (lo, hi):
                break
            lo, hi = lo_new, hi_new
        ramp = [k for k in range(s, e + 1) if good[k]]
        if err > self.max_ramp_error or not ramp or float(np.median(resid[ramp])) > self.max_blend_residual:
            return None
        fa, fb = self._frames[frames[lo]], self._frames[frames[hi]]
        # A blend with black is a fade, not a dissolve of two shots: black lies on (or next to) the
        # line through the two ends, whose pictures are then one picture at two brightnesses.
        a, ab = x[lo], x[hi] - x[lo]
        t0 = -float(a @ ab) / float(ab @ ab)
        if np.linalg.norm(a + t0 * ab) < 0.15 * max(np.linalg.norm(x[lo]), np.linalg.norm(x[hi])):
            return None
        change = frame_distance(fa, fb)
        if change is None or change < self.cut_threshold:
            return None
        # A mix of two pictures loses contrast in its middle; a move within one scene does not.
        if blend_contrast(x[ramp], x[lo], x[hi]) > self.max_blend_contrast:
            return None
        return frames[s], frames[e], change

    def _settle_fades(self, index: int, final: bool) -> list[Transition]:
        """Give each recent cut its kind once the frames after it are known: a fade when the frames on
        either side of it darken towards it (the Transition object is updated in place)."""
        keep = []
        for cut in self._fades:
            if not final and index < cut.frame + self.window:
                keep.append(cut)
                continue
            self._classify_fade(cut, index)
        self._fades = keep
        return []

    def _classify_fade(self, cut: Transition, index: int) -> None:
        c, fr = cut.frame, self._frames
        if c - 1 not in fr or c not in fr:
            return

        def brighter(a: int, b: int) -> bool:  # frame a clearly brighter than its neighbour b
            return a in fr and fr[a].luma > fr[b].luma + 0.2 + 0.005 * fr[b].luma

        k = c - 1
        while k - 1 >= c - self.window and brighter(k - 1, k):
            k -= 1
        first, out_dark = k, k < c - 2 and fr[c - 1].luma < self.fade_depth * fr[k].luma
        k = c
        while k + 1 <= min(index, c + self.window) and brighter(k + 1, k):
            k += 1
        last, in_dark = k, k > c + 1 and fr[c].luma < self.fade_depth * fr[k].luma
        if out_dark or in_dark:
            cut.kind = "fade"
            cut.first = first if out_dark else c
            cut.last = last if in_dark else c - 1


def create_shot_detector(name: str = "transitions", **kwargs) -> ShotDetector:
    """The shot detector registered as ``name``."""
    return SHOT_DETECTORS.create(name, **kwargs)


def detect_transitions(
    thumbs: Iterable[np.ndarray], detector: ShotDetector | None = None
) -> list[Transition]:
    """Every transition of a sequence of thumbnails (frames 0, 1, ...), in frame order (a transition
    recognised again at the same frame, such as a cut that turned out to open a dissolve, replaces
    the earlier one)."""
    detector = detector or create_shot_detector()
    found: dict[int, Transition] = {}
    for i, thumb in enumerate(thumbs):
        found.update((t.frame, t) for t in detector.update(i, thumb))
    found.update((t.frame, t) for t in detector.finish())
    return [found[k] for k in sorted(found)]


def match_cuts(
    detected: list[int], truth: list[tuple[int, int]], tolerance: int = 2
) -> tuple[float, float, int, int]:
    """Precision and recall of detected cut frames against true transitions ``(start, length)``.

    A transition is found when a detected cut lies in ``[start - tolerance, start + length + tolerance]``;
    each detected cut matches at most one transition, and extra cuts inside one transition are false
    positives (a dissolve must count as one cut). Returns (precision, recall, true positives, false positives).
    """
    used: set[int] = set()
    tp = 0
    for start, length in truth:
        lo, hi = start - tolerance, start + length + tolerance
        hit = next((i for i, f in enumerate(detected) if i not in used and lo <= f <= hi), None)
        if hit is not None:
            used.add(hit)
            tp += 1
    fp = len(detected) - len(used)
    precision = tp / len(detected) if detected else 1.0
    recall = tp / len(truth) if truth else 1.0
    return precision, recall, tp, fp


@dataclass
class BoundaryScore:
    """Boundaries of one kind of true transition: how many, found, and the frame errors of those found."""

    truth: int = 0
    found: int = 0
    errors: list[int] = field(default_factory=list)

    @property
    def recall(self) -> float:
        """Share of true boundaries found."""
        return self.found / self.truth if self.truth else 1.0

    @property
    def mean_error(self) -> float:
        """Mean absolute frame error of the boundaries found."""
        return float(np.mean(np.abs(self.errors))) if self.errors else 0.0

    @property
    def max_error(self) -> int:
        """Largest absolute frame error of the boundaries found."""
        return int(np.max(np.abs(self.errors))) if self.errors else 0


def score_boundaries(
    detected: list[int], truth: list[tuple[int, str, int]], tolerance: int = 2
) -> tuple[dict[str, BoundaryScore], list[int]]:
    """Per kind of true transition ``(first frame of the new shot, kind, frames it lasts)``: found and
    frame errors; plus the detected boundaries that match none (false positives).

    A detected boundary matches a true one when it lies within ``tolerance`` frames of it, or, for a
    transition that lasts, anywhere inside it (its error is then its distance to the true boundary);
    each matches at most once, nearest first.
    """
    scores: dict[str, BoundaryScore] = {}
    used: set[int] = set()
    for frame, kind, length in sorted(truth):
        sc = scores.setdefault(kind, BoundaryScore())
        sc.truth += 1
        lo, hi = frame - tolerance, frame + max(length, 0) + tolerance
        if kind == "fade":
            lo = frame - max(length, 0) - tolerance  # a fade spans both sides of its boundary
        cands = [i for i, f in enumerate(detected) if i not in used and lo <= f <= hi]
        if cands:
            i = min(cands, key=lambda i: abs(detected[i] - frame))
            used.add(i)
            sc.found += 1
            sc.errors.append(int(detected[i] - frame))
    return scores, [f for i, f in enumerate(detected) if i not in used]


class ShotSegmenter:
    """Shot bookkeeping over a stream of thumbnails: the transitions found so far, which shot each frame
    belongs to, which frames are blends of two shots, and which frames are due for the face detector.

    :meth:`push` runs where frames are decoded (possibly a thread of its own) and :meth:`settled` may be
    asked from another thread. A frame reaches :meth:`due` ``latency`` frames after :meth:`push`, once
    a hard cut at it would be known: a shot's first frame is due, then every ``detect_every``-th frame.
    A due frame is settled (its shot final, and whether it is a blend) only once it is below the
    detector's ``final_before``, which a dissolve can hold back by up to its own length.
    """

    def __init__(self, detector: ShotDetector, detect_every: int) -> None:
        import threading

        self.detector = detector
        self.detect_every = max(1, int(detect_every))
        self.latency = int(detector.latency)
        self._bounds: list[Transition] = []  # in frame order; only the last one may still be replaced
        self._final_before = 0
        self._lock = threading.Lock()
        self._next_due = 0

    def _record(self, found: list[Transition]) -> None:
        with self._lock:
            for t in found:
                while self._bounds and self._bounds[-1].frame >= t.frame:
                    self._bounds.pop()  # the same boundary recognised again (a cut that opened a dissolve)
                self._bounds.append(t)
            self._final_before = self.detector.final_before

    def push(self, index: int, thumb_rgb: np.ndarray) -> None:
        """Feed frame ``index`` to the transition detector."""
        self._record(self.detector.update(index, thumb_rgb))

    def finish(self) -> None:
        """No more frames: everything is settled."""
        self._record(self.detector.finish())
        with self._lock:
            self._final_before = 1 << 62

    def due(self, index: int) -> bool:
        """Whether frame ``index`` (pushed at least ``latency`` frames ago, or after :meth:`finish`) is due
        for the face detector; call once per frame, in order."""
        with self._lock:
            shot, _ = self.locate(self._bounds, index)
            if shot and self._bounds[shot - 1].frame == index:
                self._next_due = index  # a shot's first frame
            if index < self._next_due:
                return False
            self._next_due = index + self.detect_every
            return True

    def settled(self, index: int) -> tuple[bool, int, Transition | None]:
        """(whether frame ``index`` is settled, its shot id, the dissolve whose blended frames hold it)."""
        with self._lock:
            shot, blend = self.locate(self._bounds, index)
            return index < self._final_before, shot, blend

    def transitions(self) -> list[Transition]:
        """The transitions found so far, in frame order."""
        with self._lock:
            return list(self._bounds)

    @staticmethod
    def locate(bounds: list[Transition], frame: int) -> tuple[int, Transition | None]:
        """The shot id of ``frame`` under ``bounds``, and the dissolve whose blended frames hold it."""
        lo, hi = 0, len(bounds)
        while lo < hi:  # number of boundaries at or before the frame
            mid = (lo + hi) // 2
            if bounds[mid].frame <= frame:
                lo = mid + 1
            else:
                hi = mid
        blend = bounds[lo - 1] if lo else None
        if blend is None or blend.blended is None or not (blend.first <= frame <= blend.last):
            blend = None
        return lo, blend

    def shot_rows(self, video_id: str, frames: int, pts: list[float]) -> list[dict]:
        """SHOTS rows of frames 0..frames-1 (pts of every frame given), after :meth:`finish`."""
        bounds = [t for t in self.transitions() if 0 < t.frame < frames]
        starts = [0] + [t.frame for t in bounds]
        ends = [s - 1 for s in starts[1:]] + [frames - 1]
        rows = []
        for k, (first, last) in enumerate(zip(starts, ends, strict=True)):
            t = bounds[k - 1] if k else None
            ext = t.extent if t is not None else None
            rows.append(
                {
                    "video_id": video_id,
                    "shot_id": k,
                    "first_frame": first,
                    "last_frame": last,
                    "first_pts": pts[first] if first < len(pts) else None,
                    "last_pts": pts[last] if 0 <= last < len(pts) else None,
                    "cut_score": None if t is None else t.score,
                    "transition": None if t is None else t.kind,
                    "transition_first": None if ext is None else ext[0],
                    "transition_last": None if ext is None else min(ext[1], frames - 1),
                }
            )
        return rows
