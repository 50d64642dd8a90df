"""Gallery and dedup-overlap options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .search import INDEX_KINDS


@dataclass
class OverlapConfig:
    """Options of `seqbuild dedup-overlap` and `seqbuild gallery build` (one source of defaults)."""

    galleries: list[str] = option(
        [],
        "galleries, each a folder built by `seqbuild gallery build`, or a source it accepts (image folder,"
        " train.rec, features) which is built on the fly and cached in the run; NAME=PATH names one",
    )
    thresholds: list[float] = option(
        [],
        "fixed threshold per gallery on the `score` scale, in order (one value applies to all); empty ="
        " calibrated to each gallery's size for the target `fpir`",
        per_item_of="galleries",
    )
    score: str = option(
        "csls",
        "identity score: csls (cohort-normalised: hub identities and look-alike sequences discounted) |"
        " cosine (raw centre cosine) | vote (per-face voting) | snorm (score normalisation)",
        choices=("csls", "cosine", "vote", "snorm"),
    )
    fpir: float = option(
        0.001,
        "target false-positive identification rate at the gallery's size: sequences scoring below the"
        " threshold for it are kept",
        min=1e-9,
        max=0.5,
    )
    confident_fpir: float = option(
        1e-5,
        "at or above the threshold for this FPIR a match is confident (gallery_match); between the two,"
        " review",
        min=1e-12,
        max=0.5,
    )
    review: str = option(
        "remove",
        "what happens to `review` sequences no person has decided on: remove (a leaked gallery identity"
        " is the costlier error) | keep",
        choices=("remove", "keep"),
    )
    decisions: str = option(
        "",
        "CSV of a person's decisions (seq_id, decision = keep|remove, optional decided_by), applied"
        " over the automatic ones and recorded in the removals (the decisions themselves, not the path,"
        " are part of each video's output hash)",
        affects_output=False,
    )
    decided_by: str = option(
        "", "who made the decisions of a decisions file that has no decided_by column", affects_output=False
    )
    calibration: str = option(
        "robust",
        "impostor model: robust (the run's median, the larger of the run's and the gallery's robust"
        " spreads) | tail (adds a generalised Pareto tail when the run has enough scores) | moments",
        choices=("robust", "tail", "moments"),
    )
    min_genuine_share: float = option(
        0.95,
        "share of the gallery's own genuine scores a threshold must keep; when none that does reaches the"
        " target FPIR, a warning says the model cannot do the job at this gallery size",
        min=0.0,
        max=1.0,
    )
    csls_k: int = option(5, "csls: nearest run sequences of an identity that discount it", min=1)
    csls_query_k: int = option(3, "csls: nearest gallery identities of a sequence that discount it", min=1)
    vote_share: float = option(
        0.5, "vote: share of a sequence's faces that must reach the score", min=0.01, max=1.0
    )
    candidates: int = option(10, "nearest identities scored per sequence", min=1)
    cohort_size: int = option(
        5000,
        "run sequences (a random sample beyond this) used as the cohort and the impostor sample",
        min=10,
    )
    input_stage: str = option(
        "clean", "stage whose surviving sequences are searched", choices=("clean", "track")
    )
    index: str = option(
        "auto",
        "FAISS index over gallery centres: auto (flat up to 100,000 identities, ivf_sq8 beyond) | flat"
        " (exact) | ivf (IVF, full vectors) | ivf_sq8 (IVF, 8-bit codes: a quarter of the memory)",
        choices=INDEX_KINDS,
    )
    nprobe: int = option(32, "IVF cells searched per query", min=1)
    per_face: bool = option(
        False,
        "also search every face: faces matching on their own are removed even if their sequence is kept",
    )
    workers: int = option(1, "videos processed in parallel", min=1, affects_output=False)
    threads: int = option(
        1,
        "torch CPU threads for building galleries in this process (0 = torch's default, one per core)",
        min=0,
        affects_output=False,
    )
    # Building galleries (`gallery build`, and galleries built on the fly): the same parts as the run.
    model: str = option(
        "", "embedder for built galleries; empty = the one RUN/embed used (facenet outside a run)"
    )
    weights: str = option("", "embedder weights; empty = the model's offline default")
    normalisation: str = option(
        "fixed",
        "facenet input standardisation of gallery photos (must match the run's embed stage)",
        choices=("fixed", "prewhiten"),
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:N", affects_output=False)
    detector: str = option("mtcnn", "face detector for gallery photos, by registry name")
    min_face: int = option(40, "smallest face side (source pixels) looked for in gallery photos", min=12)
    det_threshold: float = option(
        0.95, "detector face probability threshold for gallery photos", min=0.0, max=1.0
    )
    max_side: int = option(1280, "photos larger than this are downscaled before detection", min=64)
    dominant_ratio: float = option(
        2.0,
        "a photo with several faces is used only when its largest face is this many times the side of the"
        " next one (else status several_faces)",
        min=1.0,
    )
    prealigned: bool = option(
        False, "photos are already aligned face crops (insightface 112x112): resize instead of detecting"
    )
    batch_size: int = option(32, "photos per detector/embedder batch", min=1, affects_output=False)
    chunk_size: int = option(
        20000, "images per gallery table part (bounded memory, resumable builds)", min=1, affects_output=False
    )
