"""Cleaning options and their defaults.

The similarity thresholds are cosine similarities of the default embedder (offline FaceNet 20180408 on
the aligned crop with fixed standardisation). They sit between the genuine and impostor distributions
measured on real faces by benchmarks/bench_embed.py (docs/benchmarks.md): a face against the centre of
the other faces of its person (genuine lowest ~0.66) vs against other people's centres (impostor 99th
percentile ~0.63) for ``noise_threshold``; centres of two halves of one person (lowest ~0.85) vs centres
of two people (highest ~0.65) for ``two_identity_threshold`` (the midpoint). The near-duplicate and rerun
face thresholds sit where crops of (nearly) the same picture lie (>= 0.985), above consecutive faces of
one talking person. Another embedder needs its own thresholds: `seqbuild clean --dry-run` shows the
distributions.

Quality limits are deliberately loose: SeqFace's Celeb-Seq keeps TV faces as they come, and a face
recogniser gains from three-quarter views and soft focus. ``max_yaw`` removes near-profile faces only;
``min_blur`` removes only near-featureless crops (sharp faces of the talk clips and the broadcast score
80 or more, defocused audience faces of hamilton_stage 3 to 26, heavy motion blur or a fade lower).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class CleanConfig:
    """Options of `seqbuild clean`."""

    noise_threshold: float = option(
        0.6, "faces less similar than this to the sequence centre are noise", min=-1.0, max=1.0
    )
    split_policy: str = option(
        "drop", "a sequence with two clear groups: drop | split", choices=("drop", "split")
    )
    two_identity_threshold: float = option(
        0.75, "two groups whose centres are less similar than this are two people", min=-1.0, max=1.0
    )
    min_group_faces: int = option(3, "faces each group needs before a sequence counts as two people", min=1)
    # A track that runs from one person into another (across a boundary the shot detector missed, or a
    # box handed over between two people) is cut where the appearance jumps: the faces before and after
    # have centres below two_identity_threshold and the two faces at the cut are below jump_threshold
    # (consecutive faces of one person stay above ~0.66, faces of two people below ~0.63).
    jump_threshold: float = option(
        0.6,
        "a sequence is split between consecutive faces less similar than this when the faces before and "
        "after (min_group_faces each at least) are two people; -1 = never split",
        min=-1.0,
        max=1.0,
    )
    near_dup_threshold: float = option(
        0.99, "a face more similar than this to a kept face is a near duplicate", min=-1.0, max=1.0
    )
    min_face_size: float = option(40.0, "minimum face size in source pixels", min=0.0)
    min_blur: float = option(
        2.0, "minimum variance of the Laplacian of the crop (removes only near-featureless crops)", min=0.0
    )
    min_det_score: float = option(0.95, "minimum detection score", min=0.0, max=1.0)
    max_yaw: float = option(
        0.8, "maximum |yaw|, the head turn as a fraction of 90 degrees (0.8 = about 72 degrees)", min=0.0
    )
    # Off: ingest does not detect faces in a dissolve's blended frames and places boundaries to the
    # frame, and tracks are split where the appearance jumps, so a time band around every cut would only
    # remove good faces at the start and end of shots (docs/benchmarks.md, "Transitions").
    cut_margin: float = option(
        0.0, "faces this many seconds or less from a shot cut are removed as near_cut; 0 = off", min=0.0
    )
    min_faces: int = option(5, "sequences left with fewer faces are removed", min=1)
    model_thresholds: str = option(
        "auto",
        "auto: for a model whose thresholds were not measured (anything but FaceNet) the noise, jump,"
        " two-identity and rerun thresholds are derived from the run's impostor scores | as_set: use them"
        " as configured",
        choices=("auto", "as_set"),
    )
    rerun_threshold: float = option(
        0.9, "sequence-centre similarity that flags a possible rerun", min=-1.0, max=1.0, part="reruns"
    )
    rerun_face_threshold: float = option(
        0.98,
        "face similarity counted as the same picture in the rerun face-level check",
        min=-1.0,
        max=1.0,
        part="reruns",
    )
    rerun_min_share: float = option(
        0.5,
        "share of the shorter sequence's faces matched for two sequences to be one rerun",
        min=0.0,
        max=1.0,
        part="reruns",
    )
    rerun_neighbours: int = option(10, "nearest sequence centres checked per sequence", min=1, part="reruns")
    rerun_search: str = option(
        "auto",
        "centre search of the rerun step: auto (exact up to rerun_exact_max sequences, ivf beyond) | exact"
        " (all centres in one exact index) | ivf (IVF with 8-bit codes, streamed from the per-video files)",
        choices=("auto", "exact", "ivf"),
        part="reruns",
    )
    rerun_exact_max: int = option(
        20000, "auto searches the centres exactly up to this many sequences", min=0, part="reruns"
    )
    rerun_nprobe: int = option(8, "IVF cells searched per sequence centre (ivf search)", min=1, part="reruns")
    rerun_memory_mb: int = option(
        2048,
        "memory for the rerun step's index (half; beyond it the index is built in slices) and face cache"
        " (a quarter); it never changes the result",
        min=512,
        affects_output=False,
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:N", affects_output=False)
    workers: int = option(1, "videos processed in parallel", min=1, affects_output=False)
    dry_run: bool = option(
        False,
        "print similarity histograms and what each threshold would remove; write nothing",
        affects_output=False,
    )
