"""Verification while training: `.bin` sets and LFW-style pairs, decoded once, scored every N steps.

The figures are those of `seqbuild eval` (10-fold accuracy with the threshold chosen on the other nine
folds, and the accuracy of the best single threshold), from the same functions; the crops are decoded
when training starts so that each check costs only the forward passes.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import InputError
from ..imaging import decode_jpeg, read_image
from .evaluate import embed_crops, load_verification_bin, read_pairs, verification_report

log = logging.getLogger("seqbuild.train")


@dataclass
class VerificationSet:
    """Decoded crops and the pairs over them: pair k compares ``crops[left[k]]`` with ``crops[right[k]]``."""

    name: str
    crops: list[np.ndarray]
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray


def load_bin_set(path: str | Path) -> VerificationSet:
    """An insightface verification ``.bin`` (consecutive images form a pair), decoded."""
    bins, issame = load_verification_bin(path)
    crops = []
    for i, b in enumerate(bins):
        try:
            crops.append(decode_jpeg(bytes(b)))
        except ValueError:
            raise InputError(f"{path}: image {i} is not decodable") from None
    n = len(issame)
    return VerificationSet(Path(path).name, crops, np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), issame)


def load_pairs_set(pairs: str | Path, images: str | Path) -> VerificationSet:
    """An LFW-style pairs file over a folder of aligned crops, decoded."""
    listed = read_pairs(pairs, images)
    files = sorted({p for a, b, _ in listed for p in (a, b)})
    index = {f: i for i, f in enumerate(files)}
    crops = [read_image(str(f)) for f in files]
    left = np.array([index[a] for a, _, _ in listed])
    right = np.array([index[b] for _, b, _ in listed])
    same = np.array([s for _, _, s in listed], bool)
    return VerificationSet(Path(pairs).name, crops, left, right, same)


def load_verification_sets(bins: list[str], pairs: str = "", images: str = "") -> list[VerificationSet]:
    """Every configured set; InputError naming the file when one cannot be read."""
    sets = [load_bin_set(b) for b in bins]
    if pairs:
        if not images:
            raise InputError(f"{pairs}: a pairs file needs val_images (the folder its names refer to)")
        sets.append(load_pairs_set(pairs, images))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise InputError(f"validation sets must have distinct file names, got {names}")
    return sets


def verify(
    model: nn.Module,
    vset: VerificationSet,
    device: str,
    image_size: int,
    crop_size: int,
    flip: bool = False,
    batch_size: int = 128,
) -> dict[str, float]:
    """The verification figures of ``model`` on one set (the model is left in eval mode)."""
    feats = embed_crops(model, vset.crops, device, batch_size, flip, image_size, crop_size)
    scores = np.sum(feats[vset.left] * feats[vset.right], axis=1)
    return verification_report(scores, vset.same)


class ValidationLog:
    """``OUT/val_log.csv`` (one row per set and check; appended on resume) and TensorBoard ``val/*``."""

    FIELDS = [
        "step",
        "set",
        "pairs",
        "kfold_accuracy",
        "kfold_std",
        "best_threshold_accuracy",
        "best_threshold",
    ]

    def __init__(self, out: Path, tb: object | None = None) -> None:
        self.path = out / "val_log.csv"
        self.tb = tb

    def write(self, step: int, name: str, report: dict[str, float]) -> None:
        """Append the figures of one set at ``step``."""
        row = {"step": step, "set": name, **{k: report[k] for k in self.FIELDS[2:]}}
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for k in ("kfold_accuracy", "best_threshold_accuracy"):
                self.tb.add_scalar(f"val/{name}/{k}", report[k], step)  # type: ignore[attr-defined]
        log.info(
            "step %d: %s 10-fold accuracy %.4f +- %.4f, best-threshold accuracy %.4f",
            step,
            name,
            report["kfold_accuracy"],
            report["kfold_std"],
            report["best_threshold_accuracy"],
        )
