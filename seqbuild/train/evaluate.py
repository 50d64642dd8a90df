"""Face verification: LFW-style pairs, insightface ``.bin`` sets, YTF-style video pairs.

Scores are cosine similarities of L2-normalised features. Reported: 10-fold accuracy (the threshold of
each fold chosen on the other nine, as in the LFW protocol), the accuracy of the best single threshold
over all pairs (as many papers report), and the true-accept rate at a false-accept rate of 1e-3.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..imaging import decode_jpeg, read_image
from .data import normalise, prepare_crop

# ---------------------------------------------------------------- metrics


def _accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores >= threshold) == same)) if len(scores) else float("nan")


def _candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    s = np.unique(scores)
    mids = (s[1:] + s[:-1]) / 2 if len(s) > 1 else s
    return np.concatenate([[s[0] - 1e-6], mids, [s[-1] + 1e-6]])


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs, and that accuracy."""
    thresholds = _candidate_thresholds(scores)
    accs = [_accuracy(scores, same, t) for t in thresholds]
    i = int(np.argmax(accs))
    return float(thresholds[i]), float(accs[i])


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of k-fold accuracy (threshold fitted on the other folds)."""
    n = len(scores)
    if n < folds:
        raise InputError(f"{n} pairs are too few for {folds}-fold verification")
    parts = np.array_split(np.arange(n), folds)
    accs = []
    for k in range(folds):
        test = parts[k]
        train = np.concatenate([parts[j] for j in range(folds) if j != k])
        t, _ = best_threshold(scores[train], same[train])
        accs.append(_accuracy(scores[test], same[test], t))
    return float(np.mean(accs)), float(np.std(accs))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """True-accept rate at the lowest threshold whose false-accept rate is <= ``far``; (tar, threshold)."""
    neg = np.sort(scores[~same])[::-1]
    pos = scores[same]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan"), float("nan")
    allowed = int(np.floor(far * len(neg)))  # how many negatives may score at or above the threshold
    threshold = neg[allowed] + 1e-9 if allowed < len(neg) else neg[-1]
    return float(np.mean(pos >= threshold)), float(threshold)


def verification_report(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> dict[str, float]:
    """All the figures for one set of scored pairs."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    acc, std = kfold_accuracy(scores, same, folds)
    thr, best = best_threshold(scores, same)
    tar, tar_thr = tar_at_far(scores, same, 1e-3)
    return {
        "pairs": int(len(scores)),
        "positives": int(same.sum()),
        "kfold_accuracy": acc,
        "kfold_std": std,
        "best_threshold": thr,
        "best_threshold_accuracy": best,
        "tar_at_far_1e-3": tar,
        "far_1e-3_threshold": tar_thr,
    }


# ---------------------------------------------------------------- features


@torch.no_grad()
def embed_crops(
    model: nn.Module,
    crops: Sequence[np.ndarray],
    device: str = "cpu",
    batch_size: int = 64,
    flip: bool = False,
    image_size: int = 144,
    crop_size: int = 128,
) -> np.ndarray:
    """L2-normalised features of RGB crops (resized to ``image_size``, centre crop ``crop_size``);
    ``flip`` adds the feature of the mirrored crop."""
    model.eval()
    out = []
    for i in range(0, len(crops), batch_size):
        batch = torch.stack(
            [normalise(prepare_crop(c, image_size, crop_size, None)) for c in crops[i : i + batch_size]]
        )
        batch = batch.to(device)
        feats = model(batch).float()
        if flip:
            feats = feats + model(torch.flip(batch, dims=[3])).float()
        out.append(torch.nn.functional.normalize(feats, dim=1).cpu().numpy())
    dim = getattr(model, "dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


# ---------------------------------------------------------------- LFW-style pairs


def read_pairs(path: str | Path, images: str | Path) -> list[tuple[Path, Path, bool]]:
    """LFW ``pairs.txt``: ``name i j`` (same person) or ``name1 i name2 j`` lines; an optional header."""
    path, root = Path(path), Path(images)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read pairs file ({exc.strerror})") from None

    def image(name: str, idx: str) -> Path:
        base = root / name / f"{name}_{int(idx):04d}"
        for ext in (".jpg", ".png", ".jpeg"):
            if base.with_suffix(ext).exists():
                return base.with_suffix(ext)
        return base.with_suffix(".jpg")

    pairs = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) == 3:
                pairs.append((image(parts[0], parts[1]), image(parts[0], parts[2]), True))
            elif len(parts) == 4:
                pairs.append((image(parts[0], parts[1]), image(parts[2], parts[3]), False))
            elif len(parts) <= 2 and n == 1:
                continue  # header "folds pairs_per_fold"
            else:
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{n}: expected 'name i j' or 'name1 i name2 j', got {line!r}") from None
    if not pairs:
        raise InputError(f"{path}: no pairs")
    return pairs


def evaluate_pairs(
    model: nn.Module, pairs_path: str | Path, images: str | Path, device: str = "cpu", flip: bool = False
) -> dict[str, float]:
    """Verification figures of ``model`` on an LFW-style pairs file (images are aligned crops)."""
    pairs = read_pairs(pairs_path, images)
    files = sorted({p for a, b, _ in pairs for p in (a, b)})
    crops = [read_image(str(f)) for f in files]
    feats = embed_crops(model, crops, device, flip=flip, **_sizes(model))
    index = {f: i for i, f in enumerate(files)}
    scores = np.array([float(feats[index[a]] @ feats[index[b]]) for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs])
    return verification_report(scores, same)


def _sizes(model: nn.Module) -> dict[str, int]:
    return {
        "image_size": int(getattr(model, "image_size", 144)),
        "crop_size": int(getattr(model, "crop_size", 128)),
    }


# ---------------------------------------------------------------- insightface .bin


class _RestrictedUnpickler(pickle.Unpickler):
    """Accepts only what a verification .bin holds: bytes, lists, tuples and numpy arrays (checked to be
    boolean afterwards); any other global (os.system, builtins.eval, ...) is refused before it is called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 pickles of protocol < 3 store bytes as _codecs.encode(text, "latin1"): harmless
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every global except the numpy array reconstructors (and ``bytes()`` for an empty image)."""
        if module in ("__builtin__", "builtins") and name == "bytes":
            return _empty_bytes
        if (module, name) in self._ALLOWED:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a verification .bin")


def _empty_bytes(*args: Any) -> bytes:
    # Protocol-2 pickles store b"" as a call of bytes() without arguments; with an argument bytes() could
    # allocate any size, so only the empty call is accepted.
    if args:
        raise pickle.UnpicklingError("bytes() with arguments is not allowed in a verification .bin")
    return b""


def _check_bin_contents(obj: Any, path: Path) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(f"{path}: expected (images, issame) in the verification .bin")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise InputError(f"{path}: the images of a verification .bin must be a list of encoded bytes")
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_:
            raise InputError(f"{path}: issame must be a boolean array, got {issame.dtype}")
    elif isinstance(issame, (list, tuple)) and all(isinstance(v, bool) for v in issame):
        issame = np.asarray(issame, bool)
    else:
        raise InputError(f"{path}: issame must be a boolean array")
    if len(bins) != 2 * len(issame):
        raise InputError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected twice as many)")
    return list(bins), issame


def load_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Read an insightface verification ``.bin`` safely: (encoded images, issame bool array)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused: {exc}") from None
    except Exception as exc:
        raise InputError(f"{path}: not a verification .bin ({type(exc).__name__}: {exc})") from None
    return _check_bin_contents(obj, path)


def evaluate_bin(
    model: nn.Module, path: str | Path, device: str = "cpu", flip: bool = False
) -> dict[str, float]:
    """Verification figures of ``model`` on an insightface ``.bin`` (pairs are consecutive images)."""
    bins, issame = load_verification_bin(path)
    crops = []
    for i, b in enumerate(bins):
        try:
            crops.append(decode_jpeg(bytes(b)))
        except ValueError as exc:
            raise InputError(f"{path}: image {i} is not decodable ({exc})") from None
    feats = embed_crops(model, crops, device, flip=flip, **_sizes(model))
    scores = np.sum(feats[0::2] * feats[1::2], axis=1)
    return verification_report(scores, issame)


# ---------------------------------------------------------------- YTF-style video pairs


def read_video_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """YTF-style video pairs: CSV lines ``video1, video2, same`` (1/0) or YTF splits.txt
    (``split, video1, video2, ..., same``: the last column is the label); a non-numeric header is skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 3 or not line.strip():
            continue
        if cols[-1] not in ("0", "1"):
            if n == 1:
                continue
            raise InputError(f"{path}:{n}: last column must be 0 or 1, got {cols[-1]!r}")
        a, b = (cols[1], cols[2]) if len(cols) >= 5 else (cols[0], cols[1])
        pairs.append((a, b, cols[-1] == "1"))
    if not pairs:
        raise InputError(f"{path}: no video pairs")
    return pairs


def evaluate_videos(
    model: nn.Module,
    pairs_path: str | Path,
    videos: str | Path,
    device: str = "cpu",
    max_frames: int = 100,
    flip: bool = False,
) -> dict[str, float]:
    """Video verification: each video (a folder of aligned frames) is the normalised mean of its features."""
    root = Path(videos)
    pairs = read_video_pairs(pairs_path)
    names = sorted({v for a, b, _ in pairs for v in (a, b)})
    means: dict[str, np.ndarray] = {}
    for name in names:
        folder = root / name
        frames = sorted(f for f in folder.rglob("*") if f.suffix.lower() in {".jpg", ".png", ".jpeg"})
        if not frames:
            raise InputError(f"{folder}: no frames for video {name!r}")
        step = max(len(frames) // max_frames, 1)
        feats = embed_crops(
            model, [read_image(str(f)) for f in frames[::step]], device, flip=flip, **_sizes(model)
        )
        m = feats.mean(0)
        means[name] = m / max(np.linalg.norm(m), 1e-12)
    scores = np.array([float(means[a] @ means[b]) for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs])
    return verification_report(scores, same)


def evaluate_model(
    model: nn.Module | Callable,
    device: str = "cpu",
    pairs: str | None = None,
    images: str | None = None,
    bins: Sequence[str] = (),
    video_pairs: str | None = None,
    videos: str | None = None,
    flip: bool = False,
) -> dict[str, dict[str, float]]:
    """Every requested benchmark, by name."""
    results: dict[str, dict[str, float]] = {}
    if pairs:
        if not images:
            raise InputError(f"{pairs}: a pairs file needs --images (the folder its names refer to)")
        results[Path(pairs).name] = evaluate_pairs(model, pairs, images, device, flip)
    for b in bins:
        results[Path(b).name] = evaluate_bin(model, b, device, flip)
    if video_pairs:
        if not videos:
            raise InputError(f"{video_pairs}: video pairs need --videos (the folder of frame folders)")
        results[Path(video_pairs).name] = evaluate_videos(model, video_pairs, videos, device, flip=flip)
    if not results:
        raise InputError("nothing to evaluate: give --pairs/--images, --bin or --video-pairs/--videos")
    return results
