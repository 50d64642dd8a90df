"""Training data: identity images plus produced sequences, decoded in workers, in mixed batches.

Labels are global (see ``losses``): identity classes ``0 .. C-1``, then one label per sequence
``C .. C+H-1``. Every sample carries its own augmentation seed, derived from the run seed, the epoch and
its position, so a resumed run (or any number of loader workers) sees exactly the same pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import InputError
from ..imaging import decode_jpeg
from ..schema import FACES, IDENTITY_IMAGES
from ..storage import read_table

log = logging.getLogger("seqbuild.train")

IDENTITY_TABLE = "identity_images"
"""Sub-folder of an identity dataset that holds its Parquet files."""


@dataclass
class LabelledImages:
    """JPEG crops with integer labels and the names behind the labels."""

    images: pa.Array
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _parquet_files(folder: Path, what: str) -> list[Path]:
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise InputError(f"{folder}: no Parquet files of {what}")
    return files


def read_identities(path: str | Path) -> LabelledImages:
    """An identity dataset (``DIR/identity_images/*.parquet``); labels follow the sorted identity names."""
    root = Path(path)
    folder = root / IDENTITY_TABLE if (root / IDENTITY_TABLE).is_dir() else root
    if not folder.is_dir():
        raise InputError(f"{root}: identity dataset not found")
    tables = [
        read_table(f, IDENTITY_IMAGES, columns=["identity", "image"])
        for f in _parquet_files(folder, "identity images")
    ]
    table = pa.concat_tables(tables)
    ids = np.asarray(table.column("identity").to_pylist(), dtype=object)
    names = sorted(set(ids.tolist()))
    index = {n: i for i, n in enumerate(names)}
    labels = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
    return LabelledImages(table.column("image").combine_chunks(), labels, names)


def _faces_folder(path: Path) -> Path:
    for cand in (path / "faces", path / "dataset" / "faces"):
        if cand.is_dir():
            return cand
    raise InputError(f"{path}: no final dataset here (expected faces/ or dataset/faces/ Parquet folders)")


def read_sequences(paths: list[str] | list[Path]) -> LabelledImages:
    """Faces of one or more final datasets; each seq_id is its own label (0 .. H-1, sorted by seq_id)."""
    images, seq_ids = [], []
    for p in paths:
        for f in _parquet_files(_faces_folder(Path(p)), "faces"):
            t = read_table(f, FACES, columns=["seq_id", "image"])
            images += t.column("image").chunks  # a video without faces adds no chunk
            seq_ids += t.column("seq_id").to_pylist()
    if not seq_ids:
        return LabelledImages(pa.array([], pa.binary()), np.zeros(0, np.int64), [])
    names = sorted(set(seq_ids))
    index = {n: i for i, n in enumerate(names)}
    labels = np.fromiter((index[s] for s in seq_ids), dtype=np.int64, count=len(seq_ids))
    return LabelledImages(pa.chunked_array(images, type=pa.binary()).combine_chunks(), labels, names)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in SeqFace's scaling (x - 127.5) / 128."""
    return torch.from_numpy((rgb.astype(np.float32) - 127.5) / 128.0).permute(2, 0, 1).contiguous()


def prepare_crop(
    rgb: np.ndarray, image_size: int, crop_size: int, rng: np.random.Generator | None
) -> np.ndarray:
    """Resize to ``image_size`` when needed, then a random crop + horizontal flip (``rng``) or a centre crop."""
    import cv2

    if rgb.shape[0] != image_size or rgb.shape[1] != image_size:
        rgb = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
    slack = image_size - crop_size
    if rng is None:
        y = x = slack // 2
    else:
        y, x = (int(v) for v in rng.integers(0, slack + 1, size=2))
    crop = rgb[y : y + crop_size, x : x + crop_size]
    if rng is not None and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


class FaceImages(torch.utils.data.Dataset):
    """Identity then sequence crops behind one index; items are ``(index, augmentation seed)`` pairs.

    Decoding and augmentation run in the loader's worker processes. A seed of -1 means test-time
    preprocessing (centre crop, no flip).
    """

    def __init__(
        self,
        identities: LabelledImages,
        sequences: LabelledImages,
        image_size: int = 144,
        crop_size: int = 128,
    ) -> None:
        self.images = [identities.images, sequences.images]
        self.n_id = len(identities)
        self.num_identities = len(identities.names)
        self.labels = np.concatenate([identities.labels, sequences.labels + self.num_identities])
        self.image_size, self.crop_size = image_size, crop_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, -1)
        part, pos = (0, index) if index < self.n_id else (1, index - self.n_id)
        data = self.images[part][pos].as_py()
        try:
            rgb = decode_jpeg(data)
        except ValueError:
            # one bad crop must not stop a long run: the trainer drops label -1 samples from the batch
            kind = "identity" if part == 0 else "sequence"
            log.warning(
                "%s image #%d (label %d): undecodable JPEG, skipped", kind, pos, int(self.labels[index])
            )
            return torch.zeros(3, self.crop_size, self.crop_size), -1
        rng = np.random.default_rng(seed) if seed >= 0 else None
        crop = prepare_crop(rgb, self.image_size, self.crop_size, rng)
        return normalise(crop), int(self.labels[index])


class MixedBatchSampler(torch.utils.data.Sampler):
    """Batches with a fixed identity:sequence split; an epoch is one pass over the identity data.

    Identity images are drawn without replacement in a fresh permutation each epoch; sequence images
    come from an endless stream of permutations, so the two sources keep their ratio however their sizes
    compare. With ``world_size`` processes each global batch is ``world_size`` local batches and a process
    keeps its own slice. ``start_batch`` skips the batches already trained (exact resume).
    """

    def __init__(
        self,
        n_identity: int,
        n_sequence: int,
        batch_size: int,
        identity_ratio: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n_identity == 0 and n_sequence == 0:
            raise InputError("no training images: the identity and sequence datasets are both empty")
        k_id = round(batch_size * identity_ratio) if n_sequence else batch_size
        if n_identity == 0:
            k_id = 0
        self.k_id, self.k_seq = k_id, batch_size - k_id
        self.n_id, self.n_seq = n_identity, n_sequence
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        per_global = world_size * max(self.k_id, 1) if self.k_id else world_size * self.k_seq
        base = n_identity if self.k_id else n_sequence
        self.batches_per_epoch = max(base // per_global, 1)
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its permutation) and the first batch to yield."""
        self.epoch, self.start_batch = epoch, start_batch

    def _perm(self, kind: str, cycle: int, n: int) -> np.ndarray:
        key = (kind, cycle)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            salt = 0 if kind == "id" else 1
            self._perm_cache[key] = np.random.default_rng([self.seed, salt, cycle]).permutation(n)
        return self._perm_cache[key]

    def _take(self, kind: str, n: int, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            out.append(int(self._perm(kind, p // n, n)[p % n]))
        return out

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        w, r = self.world, self.rank
        for b in range(self.start_batch, self.batches_per_epoch):
            items: list[int] = []
            if self.k_id:
                # identities: a fresh permutation per epoch, positions inside it
                pos = (b * w + r) * self.k_id
                perm = self._perm("id", self.epoch, self.n_id)
                items += [int(perm[(pos + i) % self.n_id]) for i in range(self.k_id)]
            if self.k_seq and self.n_seq:
                start = (self.epoch * self.batches_per_epoch + b) * w * self.k_seq + r * self.k_seq
                items += [self.n_id + i for i in self._take("seq", self.n_seq, start, self.k_seq)]
            step = self.epoch * self.batches_per_epoch + b
            yield [(idx, _aug_seed(self.seed, step, r, j)) for j, idx in enumerate(items)]


def _aug_seed(seed: int, step: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, position]).generate_state(1)[0])


def make_loader(
    dataset: FaceImages, sampler: MixedBatchSampler, workers: int, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader that decodes in ``workers`` processes and yields (images, labels) batches."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
