"""Every removal reason, declared once: the stage that writes it, its scope, what it means, its figures.

Writers build their rows through :func:`removal_rows`, which refuses a reason that is not declared here
(or declared for another stage or scope), and docs/dataset-format.md's table of reasons is generated
from :data:`REASONS` (a test checks that the two agree).

Scope: ``face`` when the decision was about that face alone, ``sequence`` when it was about its whole
sequence. Either way there is one row per removed face (``face_id`` set), so that every face a stage
received and did not pass on has exactly one row that says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import SchemaMismatchError


@dataclass(frozen=True)
class Reason:
    """One removal reason."""

    name: str
    stage: str
    scopes: tuple[str, ...]
    meaning: str
    value: str
    """What the row's ``value`` column holds (and its unit)."""
    threshold: str
    """What the row's ``threshold`` column holds: the config option it came from."""


REASONS: dict[str, Reason] = {
    r.name: r
    for r in (
        Reason(
            "unconfirmed",
            "track",
            ("sequence",),
            "the track never reached the matches needed to be born",
            "faces in the track",
            "track.min_hits",
        ),
        Reason(
            "too_short",
            "track",
            ("sequence",),
            "the track has fewer faces than a sequence needs",
            "faces in the track",
            "track.min_faces",
        ),
        Reason(
            "small_face",
            "clean",
            ("face",),
            "face smaller than the minimum size",
            "face size: square root of the box area (source pixels)",
            "clean.min_face_size",
        ),
        Reason(
            "blurred",
            "clean",
            ("face",),
            "crop nearly featureless",
            "variance of the Laplacian of the aligned crop",
            "clean.min_blur",
        ),
        Reason(
            "low_det_score",
            "clean",
            ("face",),
            "detector score below the minimum",
            "detection probability",
            "clean.min_det_score",
        ),
        Reason(
            "extreme_yaw",
            "clean",
            ("face",),
            "head turned too far (near profile)",
            "|yaw| as a fraction of 90 degrees",
            "clean.max_yaw",
        ),
        Reason(
            "near_cut",
            "clean",
            ("face",),
            "face too close in time to a shot boundary (optional time band, off by default)",
            "seconds to the nearest boundary",
            "clean.cut_margin",
        ),
        Reason(
            "two_identities",
            "clean",
            ("sequence",),
            "the sequence holds two clear groups of faces (two people); removed with split_policy=drop",
            "cosine similarity of the two group centres",
            "clean.two_identity_threshold",
        ),
        Reason(
            "noise",
            "clean",
            ("face",),
            "face unlike the rest of its sequence (another person or a detector error)",
            "cosine similarity to the sequence's robust centre",
            "clean.noise_threshold",
        ),
        Reason(
            "near_duplicate",
            "clean",
            ("face",),
            "face nearly identical to a face already kept in the sequence (detail names it)",
            "cosine similarity to the kept face",
            "clean.near_dup_threshold",
        ),
        Reason(
            "too_few_faces",
            "clean",
            ("sequence",),
            "fewer faces than a sequence needs are left after the face rules",
            "faces left",
            "clean.min_faces",
        ),
        Reason(
            "rerun",
            "clean",
            ("sequence",),
            "a copy of a sequence aired earlier (a rerun); the first airing is kept (detail names it)",
            "share of the shorter sequence's faces matched in the other",
            "clean.rerun_min_share",
        ),
        Reason(
            "gallery_match",
            "dedup_overlap",
            ("sequence", "face"),
            "a confident match of an identity of a reference gallery (gallery and identity name it; fpir"
            " is the estimated false-positive identification rate at the threshold)",
            "identity score (dedup_overlap.score) against the gallery identity",
            "the confident threshold: calibrated for dedup_overlap.confident_fpir at the gallery's size,"
            " or dedup_overlap.thresholds",
        ),
        Reason(
            "review",
            "dedup_overlap",
            ("sequence", "face"),
            "between the confident threshold and the one for the target FPIR: removed by"
            " dedup_overlap.review = remove, or by a person (decided_by) in a decisions file",
            "identity score (dedup_overlap.score) against the gallery identity",
            "the threshold calibrated for dedup_overlap.fpir at the gallery's size",
        ),
    )
}

STAGE_ORDER = ("ingest", "track", "clean", "dedup_overlap")


def reason(name: str, stage: str | None = None, scope: str | None = None) -> Reason:
    """The declared reason ``name``; SchemaMismatchError if unknown or used by another stage or scope."""
    r = REASONS.get(name)
    if r is None:
        raise SchemaMismatchError(f"removal reason {name!r} is not declared in seqbuild.reasons")
    if stage is not None and r.stage != stage:
        raise SchemaMismatchError(f"removal reason {name!r} belongs to stage {r.stage}, not {stage}")
    if scope is not None and scope not in r.scopes:
        raise SchemaMismatchError(f"removal reason {name!r} has scope {'/'.join(r.scopes)}, not {scope}")
    return r


def removal_rows(
    stage: str,
    name: str,
    video_id: str,
    face_ids: Iterable[str],
    seq_id: str | None = None,
    value: float | None = None,
    threshold: float | None = None,
    detail: str | None = None,
    scope: str | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One REMOVALS row per face of ``face_ids`` for reason ``name`` (checked against the registry).

    ``scope`` defaults to the reason's first scope; ``extra`` fills the optional columns (gallery,
    identity, fpir, decided_by).
    """
    r = reason(name, stage, scope)
    base = {
        "stage": stage,
        "scope": scope or r.scopes[0],
        "video_id": video_id,
        "seq_id": seq_id,
        "reason": name,
        "value": None if value is None else float(value),
        "threshold": None if threshold is None else float(threshold),
        "detail": detail or None,
        "gallery": None,
        "identity": None,
        "fpir": None,
        "decided_by": None,
    }
    unknown = set(extra) - set(base)
    if unknown:
        raise SchemaMismatchError(f"removal rows have no column(s) {sorted(unknown)}")
    base.update(extra)
    return [{**base, "face_id": str(f)} for f in face_ids]


def reasons_markdown() -> str:
    """The table of reasons for docs/dataset-format.md."""
    lines = [
        "| reason | stage | scope | meaning | value | threshold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    for r in sorted(REASONS.values(), key=lambda r: order.get(r.stage, 99)):
        lines.append(
            f"| `{r.name}` | {r.stage} | {' or '.join(r.scopes)} | {r.meaning} | {r.value} | {r.threshold} |"
        )
    return "\n".join(lines)
