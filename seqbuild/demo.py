"""The embedded demo: a short synthetic TV broadcast made offline from face photos shipped in packages.

Two real photos that ship inside installed packages are the only faces: scikit-image's
``data/astronaut.png`` (Eileen Collins) and matplotlib's ``sample_data/grace_hopper.jpg``. A virtual
camera moves over each photo (pan, zoom, tilt) and the broadcast strings shots together with hard cuts:
full-frame shots, a split-screen shot with both people side by side, a face-free slate, an exact rerun
of an earlier shot and a very short shot, with sensor noise on every frame. The video is H.264 (PyAV)
and its ground truth is written next to it in the format of the broadcast tool that scores runs
(``shots`` with ``start``/``end`` frames, ``kind``, ``rerun_of`` and per pane the ``identity`` and the
pane's ``rect`` [x, y, w, h] in broadcast pixels): any face whose box centre lies in a pane is that
pane's identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, MissingDependencyError
from .storage import atomic_path, write_json_atomic

PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
"""Identity -> (package, file inside the package folder) of the photos the demo is made from."""

FACE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "astronaut": (181.0, 62.0, 268.0, 172.0),
    "grace_hopper": (174.0, 120.0, 356.0, 340.0),
}
"""Face box (x1, y1, x2, y2) in each photo's pixels (MTCNN on the photo); camera moves keep it framed."""


def photo_path(identity: str) -> Path:
    """Path of a demo photo inside its installed package (found from the package folder; no import)."""
    package, rel = PHOTOS[identity]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the demo needs the photo {rel} of the package {package!r}: pip install {package}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise InputError(f"{path}: demo photo not found in the installed {package} package")
    return path


def load_photo(identity: str) -> np.ndarray:
    """A demo photo as RGB uint8."""
    path = photo_path(identity)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class Move:
    """A camera move over a photo: the view's centre and width (photo pixels) go linearly from a to b."""

    identity: str
    centre_a: tuple[float, float]
    centre_b: tuple[float, float]
    width_a: float
    width_b: float
    turn: tuple[float, float] = (0.0, 0.0)  # perspective "head turn" of the view, -0.4..0.4, from a to b
    gamma: tuple[float, float] = (1.0, 1.0)  # lighting (gamma) from a to b


@dataclass
class Shot:
    """One shot: a camera move per pane (none = a face-free slate), or a rerun of an earlier shot."""

    frames: int = 0
    moves: list[Move] = field(default_factory=list)
    rerun_of: int | None = None


@dataclass
class DemoSpec:
    """Size, rate, noise and the shot list of the demo broadcast."""

    width: int = 640
    height: int = 360
    fps: int = 25
    noise: float = 3.0
    seed: int = 7
    crf: int = 20
    shots: list[Shot] = field(default_factory=lambda: default_shots())


def default_shots() -> list[Shot]:
    """The demo's shot list: ~26 s with every kind of shot the chain has to handle."""
    a, h = "astronaut", "grace_hopper"
    return [
        Shot(100, [Move(a, (224, 130), (224, 118), 500, 300, (-0.35, 0.3), (0.75, 1.3))]),  # zoom in
        Shot(100, [Move(h, (230, 230), (290, 230), 480, 480, (0.3, -0.35), (1.3, 0.8))]),  # pan right
        Shot(50, []),  # face-free slate
        Shot(
            125,
            [
                Move(a, (226, 120), (218, 124), 260, 240, (0.3, -0.3), (1.25, 0.8)),
                Move(h, (262, 232), (268, 226), 330, 310, (-0.3, 0.3), (0.8, 1.25)),
            ],
        ),
        Shot(75, [Move(h, (265, 232), (262, 240), 420, 540, (-0.3, 0.3), (0.85, 1.3))]),  # zoom out
        Shot(rerun_of=0),  # the first shot again, unchanged
        Shot(75, [Move(a, (226, 150), (226, 110), 380, 380, (0.35, -0.3), (1.3, 0.8))]),  # tilt up
        Shot(12, [Move(h, (265, 230), (265, 230), 440, 430)]),  # a very short shot
        Shot(25, []),  # end slate
    ]


def pane_rects(n: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Pane rectangles [x, y, w, h]: the whole frame for one pane, side by side with margins for more."""
    if n <= 1:
        return [(0, 0, width, height)][:n]
    half = width // n
    return [(i * half + 8, 20, half - 16, height - 40) for i in range(n)]


def render_view(
    photo: np.ndarray, centre: tuple[float, float], view_w: float, size: tuple[int, int]
) -> np.ndarray:
    """The camera's view of ``photo``: a window of width ``view_w`` centred at ``centre``, scaled to ``size``."""
    w, h = size
    scale = w / view_w
    cx, cy = centre
    m = np.array([[scale, 0.0, w / 2 - scale * cx], [0.0, scale, h / 2 - scale * cy]], np.float32)
    return cv2.warpAffine(
        photo, m, (w, h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderValue=(20, 20, 24)
    )


def turn_view(view: np.ndarray, turn: float) -> np.ndarray:
    """A perspective squeeze of one side of the view: a cheap stand-in for a head turning (yaw)."""
    if abs(turn) < 1e-3:
        return view
    h, w = view.shape[:2]
    d = abs(turn) * h * 0.25
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    if turn > 0:
        dst = np.float32([[0, 0], [w, d], [w, h - d], [0, h]])
    else:
        dst = np.float32([[0, d], [w, 0], [w, h], [0, h - d]])
    return cv2.warpPerspective(
        view, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT
    )


def relight(view: np.ndarray, gamma: float) -> np.ndarray:
    """The view under other lighting (gamma; > 1 darker)."""
    if abs(gamma - 1.0) < 1e-3:
        return view
    lut = (np.linspace(0, 1, 256) ** gamma * 255).round().astype(np.uint8)
    return lut[view]


def render_slate(width: int, height: int, t: int, fps: int) -> np.ndarray:
    """A face-free slate: a gradient, a title and a running clock."""
    ramp = np.linspace(30, 170, width, dtype=np.float32)[None, :, None]
    img = np.repeat(np.repeat(ramp, height, 0), 3, 2)
    img[..., 2] = np.clip(img[..., 2] + 50, 0, 255)
    img = img.astype(np.uint8)
    scale = height / 360
    cv2.putText(img, "SEQBUILD NEWS", (int(width * 0.12), int(height * 0.45)), 0, 1.6 * scale, (255,) * 3, 3)
    clock = f"{t // (60 * fps):02d}:{(t // fps) % 60:02d}"
    cv2.putText(img, clock, (int(width * 0.40), int(height * 0.68)), 0, 1.2 * scale, (240, 240, 200), 2)
    return img


def _lerp(a: float, b: float, s: float) -> float:
    return a + (b - a) * s


def iter_frames(spec: DemoSpec, photos: dict[str, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(shot_index, RGB frame)`` of the broadcast in order (reruns repeat their shot exactly)."""
    rng = np.random.default_rng(spec.seed)
    kept: dict[int, list[np.ndarray]] = {}
    rerun_sources = {s.rerun_of for s in spec.shots if s.rerun_of is not None}
    t = 0
    for index, shot in enumerate(spec.shots):
        if shot.rerun_of is not None:
            for frame in kept[shot.rerun_of]:
                yield index, frame
                t += 1
            continue
        rects = pane_rects(len(shot.moves), spec.width, spec.height)
        frames = []
        for k in range(shot.frames):
            s = k / max(1, shot.frames - 1)
            if not shot.moves:
                canvas = render_slate(spec.width, spec.height, t, spec.fps)
            else:
                canvas = np.full((spec.height, spec.width, 3), 16, np.uint8)
                for move, (x, y, w, h) in zip(shot.moves, rects, strict=True):
                    centre = (
                        _lerp(move.centre_a[0], move.centre_b[0], s),
                        _lerp(move.centre_a[1], move.centre_b[1], s),
                    )
                    view_w = _lerp(move.width_a, move.width_b, s)
                    view = render_view(photos[move.identity], centre, view_w, (w, h))
                    view = turn_view(view, _lerp(move.turn[0], move.turn[1], s))
                    canvas[y : y + h, x : x + w] = relight(view, _lerp(move.gamma[0], move.gamma[1], s))
            if spec.noise > 0:
                noise = rng.normal(0.0, spec.noise, canvas.shape).astype(np.float32)
                canvas = np.clip(canvas.astype(np.float32) + noise, 0, 255).astype(np.uint8)
            if index in rerun_sources:
                frames.append(canvas)
            yield index, canvas
            t += 1
        if index in rerun_sources:
            kept[index] = frames


def ground_truth(spec: DemoSpec, video_name: str) -> dict:
    """The ground truth of the broadcast, in the scorer's format (frame ranges are [start, end))."""
    shots, start = [], 0
    for index, shot in enumerate(spec.shots):
        if shot.rerun_of is not None:
            src = shots[shot.rerun_of]
            n, panes, kind = src["end"] - src["start"], src["panes"], "rerun"
        else:
            n, kind = shot.frames, "shot"
            rects = pane_rects(len(shot.moves), spec.width, spec.height)
            panes = [
                {"identity": m.identity, "rect": list(r)} for m, r in zip(shot.moves, rects, strict=True)
            ]
        shots.append(
            {
                "index": index,
                "kind": kind,
                "start": start,
                "end": start + n,
                "dissolve_in": 0,
                "rerun_of": shot.rerun_of,
                "panes": panes,
            }
        )
        start += n
    return {
        "video": video_name,
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "frames": start,
        "shots": shots,
    }


def spec_hash(spec: DemoSpec) -> str:
    """A short hash of the spec (a generated demo is reused only when it was made from the same spec)."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DemoBroadcast:
    """Paths of a generated demo: the video, its ground truth and the gallery folder."""

    video: Path
    ground_truth: Path
    gallery: Path
    frames: int


def write_video(frames: Iterator[np.ndarray], path: Path, spec: DemoSpec) -> int:
    """Encode RGB frames as H.264 MP4 (PyAV) atomically; returns the number of frames written."""
    import av

    n = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=spec.fps)
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
            stream.options = {"crf": str(spec.crf), "preset": "veryfast"}
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                n += 1
            for packet in stream.encode():
                container.mux(packet)
    return n


def write_gallery(folder: Path, identity: str, photo: np.ndarray) -> None:
    """A small reference gallery of one identity (views of its photo), for the demo's overlap removal."""
    x1, y1, x2, y2 = FACE_BOXES[identity]
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    views = {
        "tight": render_view(photo, (cx, cy), side * 1.8, (256, 256)),
        "wide": render_view(photo, (cx, cy + side * 0.2), side * 2.6, (256, 256)),
        "mirror": render_view(photo[:, ::-1].copy(), (photo.shape[1] - cx, cy), side * 2.0, (256, 256)),
    }
    for name, img in views.items():
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise ValueError("JPEG encoding failed")
        with atomic_path(folder / identity / f"{identity}_{name}.jpg") as tmp:
            tmp.write_bytes(buf.tobytes())


def make_demo_broadcast(
    out_dir: str | Path,
    name: str = "demo_broadcast",
    spec: DemoSpec | None = None,
    gallery_identities: tuple[str, ...] = ("grace_hopper",),
) -> DemoBroadcast:
    """Write ``out_dir/NAME.mp4``, ``NAME.gt.json`` and ``gallery/`` (reused when made from the same spec)."""
    spec = spec or DemoSpec()
    out_dir = Path(out_dir)
    video, gt_path, gallery = out_dir / f"{name}.mp4", out_dir / f"{name}.gt.json", out_dir / "gallery"
    gt = ground_truth(spec, video.name)
    gt["spec_hash"] = spec_hash(spec)
    if video.is_file() and gt_path.is_file():
        try:
            same = json.loads(gt_path.read_text()).get("spec_hash") == gt["spec_hash"]
        except (OSError, ValueError):
            same = False
        if same and all((gallery / i).is_dir() for i in gallery_identities):
            return DemoBroadcast(video, gt_path, gallery, gt["frames"])
    photos = {identity: load_photo(identity) for identity in PHOTOS}
    n = write_video((frame for _, frame in iter_frames(spec, photos)), video, spec)
    if n != gt["frames"]:
        raise RuntimeError(f"{video}: wrote {n} frames, the ground truth has {gt['frames']}")
    for identity in gallery_identities:
        write_gallery(gallery, identity, photos[identity])
    write_json_atomic(gt_path, gt)
    return DemoBroadcast(video, gt_path, gallery, n)


def demo_pipeline_path() -> Path | None:
    """``pipelines/demo.toml`` of the source checkout, when there is one (else built-in defaults apply)."""
    path = Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml"
    return path if path.is_file() else None


def run_demo(
    run: str | Path,
    overrides: tuple[str, ...] | list[str] = (),
    executor: str | None = None,
    progress: bool = True,
):
    """Make the demo broadcast in ``RUN/media`` and run the demo pipeline on it; returns stage results."""
    from .pipeline.loading import load_pipeline
    from .pipeline.run import run_pipeline

    run = Path(run)
    made = make_demo_broadcast(run / "media")
    flags = {
        "ingest": {"inputs": [str(made.video.resolve())]},
        "dedup_overlap": {"galleries": [str(made.gallery.resolve())]},
    }
    pipeline = load_pipeline(demo_pipeline_path(), overrides, flags, run=run)
    return made, run_pipeline(run, pipeline, executor=executor, progress=progress)
