"""The tables that pass between stages: one pyarrow schema each, versioned in the Parquet metadata.

Rows are linked across stages by stable ids, never by position:
``video_id`` (a source) -> ``frame_idx`` -> ``face_id`` (one detection) -> ``seq_id`` (one track).
docs/dataset-format.md describes every column and the run-directory layout.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2"

LANDMARKS = pa.list_(pa.float32(), 10)
"""Five (x, y) points in source-frame pixels: left eye, right eye, nose, left mouth, right mouth."""

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # file | stream | segment
        pa.field("parent_id", pa.string()),  # a segment's stream video_id
        pa.field("status", pa.string(), nullable=False),  # ok | failed | partial
        pa.field("error", pa.string()),
        pa.field("fps", pa.float64()),
        pa.field("duration", pa.float64()),  # seconds of video read
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("frames_read", pa.int64()),
        pa.field("frames_detected", pa.int64()),
        pa.field("n_faces", pa.int64()),
        pa.field("n_shots", pa.int32()),
        pa.field("start_pts", pa.float64()),  # pts of the first frame read (segments of a stream)
        pa.field("wall_seconds", pa.float64()),
    ]
)

SHOTS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.int32(), nullable=False),
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),  # inclusive
        pa.field("first_pts", pa.float64()),
        pa.field("last_pts", pa.float64()),
        pa.field("cut_score", pa.float32()),  # detector score at the cut that opened the shot
        pa.field("transition", pa.string()),  # what opened the shot: cut | dissolve | fade (null: first)
        pa.field("transition_first", pa.int64()),  # first frame of that transition (null for a cut)
        pa.field("transition_last", pa.int64()),  # last frame of it, inclusive (a dissolve's last blend)
    ]
)

_FACE_COLUMNS = [
    pa.field("face_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("frame_idx", pa.int64(), nullable=False),
    pa.field("pts", pa.float64(), nullable=False),
    pa.field("shot_id", pa.int32(), nullable=False),
    pa.field("x1", pa.float32(), nullable=False),
    pa.field("y1", pa.float32(), nullable=False),
    pa.field("x2", pa.float32(), nullable=False),
    pa.field("y2", pa.float32(), nullable=False),
    pa.field("landmarks", LANDMARKS, nullable=False),
    pa.field("det_score", pa.float32(), nullable=False),
    pa.field("face_size", pa.float32()),  # sqrt(box area) in source pixels
    pa.field("blur", pa.float32()),  # variance of the Laplacian of the aligned crop (higher = sharper)
    pa.field(
        "yaw", pa.float32()
    ),  # -1..1: head turn as a fraction of 90 degrees, from landmarks (0 = frontal)
    pa.field("roll", pa.float32()),  # degrees, angle of the eye line
    pa.field("image", pa.binary(), nullable=False),  # JPEG of the 144x144 aligned crop
]

DETECTIONS = pa.schema(_FACE_COLUMNS)
"""Written by ingest: one row per detected face, with its aligned crop."""

ASSIGNMENTS = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("seq_id", pa.string(), nullable=False),
    ]
)
"""Written by track: which sequence each kept detection belongs to."""

SEQUENCES = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.int32(), nullable=False),
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),
        pa.field("first_pts", pa.float64()),
        pa.field("last_pts", pa.float64()),
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("mean_score", pa.float32()),
        pa.field("mean_face_size", pa.float32()),
    ]
)

REMOVALS = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),  # ingest | track | clean | dedup_overlap
        pa.field("scope", pa.string(), nullable=False),  # face | sequence: what the decision was about
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("seq_id", pa.string()),  # null for faces removed before tracking
        pa.field("face_id", pa.string(), nullable=False),  # one row per removed face, whatever the scope
        pa.field("reason", pa.string(), nullable=False),  # declared in seqbuild/reasons.py
        pa.field("value", pa.float64()),  # the figure that triggered the removal
        pa.field("threshold", pa.float64()),  # the limit it was compared with
        pa.field("detail", pa.string()),  # e.g. the kept duplicate's id, the sequence a rerun copies
        pa.field("gallery", pa.string()),  # gallery_match: the gallery's name
        pa.field("identity", pa.string()),  # gallery_match: the gallery identity matched
        pa.field("fpir", pa.float64()),  # gallery_match: estimated false-positive identification rate
        pa.field("decided_by", pa.string()),  # who decided: "auto" or the person named in a decisions file
    ]
)
"""Every row removed by any stage, with why: removals are written, never silently dropped."""


MATCHES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("face_id", pa.string()),  # null for a sequence's decision; the face for per-face ones
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("gallery", pa.string()),  # the gallery and identity of the best match (null: none)
        pa.field("identity", pa.string()),
        pa.field("score_name", pa.string(), nullable=False),  # csls | cosine | vote | snorm
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),  # below it: kept
        pa.field("confident_threshold", pa.float64()),  # at or above it: gallery_match
        pa.field("fpir", pa.float64()),  # estimated FPIR at the threshold the score reached
        pa.field("outcome", pa.string(), nullable=False),  # gallery_match | review | kept (automatic)
        pa.field("action", pa.string(), nullable=False),  # removed | kept (after review policy, decisions)
        pa.field("decided_by", pa.string(), nullable=False),  # auto | the person of a decisions file
    ]
)
"""Written by dedup-overlap: every searched sequence's best gallery match and what was decided (review
sequences and a person's decisions included), so that a person can review them."""


def embeddings_schema(dim: int) -> pa.Schema:
    """Schema of an embeddings table whose vectors have ``dim`` float32 components (L2-normalised)."""
    return pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


FACES = pa.schema([*_FACE_COLUMNS[:3], pa.field("seq_id", pa.string(), nullable=False), *_FACE_COLUMNS[3:]])
"""The final dataset's face table: a detection that survived every stage, with its seq_id."""

DATASET_SEQUENCES = SEQUENCES
"""The final dataset's sequence table (n_faces counts the faces that were kept)."""

GALLERY_IMAGES_COLUMNS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("identity", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # file path, or rec:INDEX for RecordIO
    pa.field("status", pa.string(), nullable=False),  # ok | no_face | several_faces | unreadable
    pa.field("error", pa.string()),
]


def gallery_images_schema(dim: int) -> pa.Schema:
    """Schema of a reference gallery's per-image table (embedding is null unless status is ok)."""
    return pa.schema([*GALLERY_IMAGES_COLUMNS, pa.field("embedding", pa.list_(pa.float32(), dim))])


def gallery_identities_schema(dim: int) -> pa.Schema:
    """Schema of a reference gallery's per-identity centres (normalised mean of normalised embeddings)."""
    return pa.schema(
        [
            pa.field("identity", pa.string(), nullable=False),
            pa.field("n_images", pa.int32(), nullable=False),
            pa.field("centre", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


IDENTITY_IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # JPEG of the 144x144 aligned crop
    ]
)
"""A labelled identity training set (MS-Celeb-1M style) in the trainer's layout."""

TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "shots": SHOTS,
    "detections": DETECTIONS,
    "assignments": ASSIGNMENTS,
    "sequences": SEQUENCES,
    "removals": REMOVALS,
    "matches": MATCHES,
    "faces": FACES,
    "identity_images": IDENTITY_IMAGES,
}
"""Fixed-schema tables by name; embedding and gallery tables are built by dimension."""


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table of the schema, for stages that produced no rows (written, so that 'none' is explicit)."""
    return schema.empty_table()
