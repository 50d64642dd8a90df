"""The embedded demo: a short synthetic TV broadcast made offline from face photos of real people.

The faces come from photos that ship inside packages: scikit-image's ``data/astronaut.png`` (Eileen
Collins), matplotlib's ``sample_data/grace_hopper.jpg``, and two photos of the source archive of
insightface 2.1 on PyPI (``insightface/data/images/t1.jpg``, six people at a table, and
``Tom_Hanks_54745.png``), which `make setup` downloads into the user cache (never installed; the
photos are read from the archive). Without that archive the demo runs with the first two people and
says so.

Every shot films one person's photo (or two, side by side) the way a studio camera films a sitting
person: the head turns and nods (a warp of the face region over a cylinder, so the nose moves more
than the cheeks), a key light from one side shades the turned face, the camera pans, zooms and rolls,
and each shot has its own framing, light, colour, focus and sensor noise. The faces of one shot
therefore change from frame to frame, and two shots of a person differ, as they do on video; no
expression is made up. The broadcast strings shots together with hard cuts: close-ups, split screens,
face-free slates, an exact rerun of an earlier shot and a very short shot. The video is H.264 (PyAV)
and its ground truth is written next to it in the format of the broadcast tool that scores runs
(``shots`` with ``start``/``end`` frames, ``kind``, ``rerun_of`` and per pane the ``identity`` and the
pane's ``rect`` [x, y, w, h] in broadcast pixels): any face whose box centre lies in a pane is that
pane's identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, MissingDependencyError
from .storage import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

ARCHIVE = "insightface-2.1.tar.gz"
"""The source archive of insightface 2.1 (PyPI), looked for in the user cache (see :func:`archive_path`)."""


@dataclass(frozen=True)
class PhotoFile:
    """A photo inside an installed package (``archive`` empty) or a member of the cached source archive."""

    package: str
    path: str
    sha256: str = ""  # checked for archive members, whose face boxes below are tied to the exact file
    archive: str = ""


PHOTOS: dict[str, PhotoFile] = {
    "astronaut": PhotoFile("skimage", "data/astronaut.png"),
    "grace_hopper": PhotoFile("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "t1": PhotoFile(
        "insightface",
        "insightface-2.1/insightface/data/images/t1.jpg",
        "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
        ARCHIVE,
    ),
    "tom_hanks": PhotoFile(
        "insightface",
        "insightface-2.1/insightface/data/images/Tom_Hanks_54745.png",
        "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
        ARCHIVE,
    ),
}
"""The photos the demo is made from."""


@dataclass(frozen=True)
class Person:
    """One person of the demo: the photo, the face box (x1, y1, x2, y2) in it (MTCNN on the photo), the
    part of the photo the camera may show (x1, y1, x2, y2; None = all: it keeps the others' faces out),
    and whether the photo is a tight face crop, shown as an oval inset on a plain backdrop."""

    photo: str
    face: tuple[float, float, float, float]
    region: tuple[int, int, int, int] | None = None
    oval: bool = False


PEOPLE: dict[str, Person] = {
    "astronaut": Person("astronaut", (180.0, 59.0, 269.0, 173.0)),
    "grace_hopper": Person("grace_hopper", (176.0, 118.0, 355.0, 340.0)),
    "tom_hanks": Person("tom_hanks", (3.0, 2.0, 86.0, 121.0), oval=True),
    # t1.jpg, numbered left to right as they sit; each region holds no other face (MTCNN, p > 0.5).
    "t1_1": Person("t1", (58.0, 271.0, 161.0, 398.0), (0, 120, 262, 640)),
    "t1_2": Person("t1", (268.0, 145.0, 369.0, 268.0), (166, 0, 460, 470)),
    "t1_3": Person("t1", (465.0, 270.0, 571.0, 408.0), (375, 100, 738, 530)),
    "t1_4": Person("t1", (744.0, 347.0, 841.0, 477.0), (680, 210, 1126, 535)),
    "t1_5": Person("t1", (908.0, 60.0, 1013.0, 202.0), (580, 0, 1126, 340)),
    "t1_6": Person("t1", (1132.0, 276.0, 1227.0, 397.0), (1019, 0, 1280, 686)),
}
"""Identity -> where the camera finds the face (identities name the ground truth's panes)."""


def archive_path() -> Path:
    """Where the insightface source archive is looked for: $XDG_CACHE_HOME/seqbuild or ~/.cache/seqbuild."""
    from .embed.facenet_opencv import user_cache_dir

    return user_cache_dir() / ARCHIVE


def photo_path(name: str) -> Path:
    """Path of a demo photo inside its installed package (found from the package folder; no import)."""
    photo = PHOTOS[name]
    if photo.archive:
        raise ValueError(f"{name}: the photo is a member of {photo.archive}, not a package file")
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the demo needs the photo {photo.path} of the package {photo.package!r}: pip install {photo.package}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / photo.path
    if not path.is_file():
        raise InputError(f"{path}: demo photo not found in the installed {photo.package} package")
    return path


def _decode(data: bytes, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{where}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_photo(name: str, archive: Path | None = None) -> np.ndarray:
    """A demo photo as RGB uint8 (archive members are read from ``archive``, default :func:`archive_path`)."""
    photo = PHOTOS[name]
    if not photo.archive:
        path = photo_path(name)
        return _decode(path.read_bytes(), str(path))
    archive = archive or archive_path()
    where = f"{archive}:{photo.path}"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(photo.path)
            if member is None:
                raise InputError(f"{where}: not a file")
            data = member.read()
    except KeyError:
        raise InputError(f"{where}: not in the archive") from None
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"{archive}: unreadable archive ({exc})") from None
    if hashlib.sha256(data).hexdigest() != photo.sha256:
        raise InputError(f"{where}: not the expected file (sha256 differs)")
    return _decode(data, where)


def archive_hint(archive: Path) -> str:
    """How to get the source archive into ``archive``'s folder."""
    return f"pip download --no-deps --no-binary :all: insightface==2.1 -d {archive.parent}"


def load_photos(archive: Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The demo photos that can be read, and a note saying who is missing and how to get them ('' if none)."""
    archive = archive or archive_path()
    photos, problem = {}, ""
    for name, photo in PHOTOS.items():
        if photo.archive and not archive.is_file():
            problem = f"{archive} not found"
            continue
        try:
            photos[name] = load_photo(name, archive)
        except InputError as exc:
            if not photo.archive:
                raise
            problem = str(exc)
    if not problem:
        return photos, ""
    shown = available_people(photos)
    note = (
        f"{problem}: the demo shows {len(shown)} of its {len(PEOPLE)} people ({', '.join(shown)});"
        f" for all of them run `{archive_hint(archive)}` (`make setup` does it when online)"
    )
    return photos, note


def available_people(photos: dict[str, np.ndarray] | set[str]) -> list[str]:
    """The demo people whose photo is among ``photos``."""
    return [name for name, person in PEOPLE.items() if person.photo in photos]


# ------------------------------------------------------------------------------------------ the shots


@dataclass
class Move:
    """One pane of a shot: how the person moves and how the camera films it, linearly from a to b.

    Framing is relative to the face box: ``zoom`` is the view's height in face heights and ``pan`` the
    view centre's offset from the face centre in face widths and heights (x, y). Angles are degrees:
    ``yaw`` turns the head (positive: the nose goes to the picture's right), ``pitch`` nods it
    (positive: up), ``roll`` tilts the camera. The key light comes from ``light`` degrees (negative:
    the picture's left, 0: the camera) with strength ``key`` over the ambient light; ``tint`` is its
    colour (R, G, B gains), ``exposure`` the overall gain, ``blur`` the defocus (Gaussian sigma in pane
    pixels).
    """

    identity: str
    zoom: tuple[float, float] = (2.6, 2.6)
    pan: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.2), (0.0, 0.2))
    yaw: tuple[float, float] = (0.0, 0.0)
    pitch: tuple[float, float] = (0.0, 0.0)
    roll: tuple[float, float] = (0.0, 0.0)
    light: tuple[float, float] = (0.0, 0.0)
    key: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: tuple[float, float] = (1.0, 1.0)
    blur: float = 0.0


@dataclass
class Shot:
    """One shot: a camera move per pane (none = a face-free slate), or a rerun of an earlier shot."""

    frames: int = 0
    moves: list[Move] = field(default_factory=list)
    rerun_of: int | None = None


WARM, COOL = (1.08, 1.0, 0.88), (0.9, 0.98, 1.1)
"""Tints of a tungsten-like and a daylight-like key light."""


def full_shots() -> list[Shot]:
    """The demo's shot list with all nine people: ~45 s, every kind of shot the chain has to handle.

    Each shot has its own set-up (framing, head movement, key light, colour, focus), so the two shots
    of a person differ as two set-ups of an interview do; the rerun repeats the first shot exactly.
    """
    return [
        # 0: close-up, the head turns from the left to the right under a warm key light from the left
        Shot(100, [Move("astronaut", zoom=(2.4, 2.0), pan=((0.0, 0.2), (0.05, 0.15)), yaw=(-28, 12),
                        pitch=(4, -4), roll=(0, 2), light=(-60, -60), key=0.9, tint=WARM)]),
        # 1: split screen, two people at the table
        Shot(100, [Move("t1_1", zoom=(2.4, 2.2), pan=((0.0, 0.25), (0.0, 0.2)), yaw=(-20, 15),
                        pitch=(-4, 6), light=(50, 50), key=0.8),
                   Move("t1_2", zoom=(2.3, 2.5), pan=((0.0, 0.2), (0.0, 0.25)), yaw=(18, -18),
                        pitch=(6, -2), light=(-45, -45), key=0.8, tint=WARM)]),
        # 2: a slow push in on a portrait inset
        Shot(90, [Move("tom_hanks", zoom=(2.6, 2.0), pan=((0.1, 0.1), (0.0, 0.05)), yaw=(-15, 22),
                       pitch=(-6, 4), light=(40, 40), key=0.9, tint=COOL)]),
        Shot(40, []),  # 3: face-free slate
        # 4: the gallery's person (removed by dedup-overlap)
        Shot(90, [Move("grace_hopper", zoom=(2.2, 2.6), pan=((0.0, 0.2), (0.1, 0.2)), yaw=(20, -20),
                       pitch=(0, 6), light=(-40, -40), key=0.8)]),
        # 5: split screen
        Shot(100, [Move("t1_3", zoom=(2.2, 2.4), yaw=(22, -16), pitch=(4, -6), light=(-55, -55), key=0.9),
                   Move("t1_4", zoom=(2.5, 2.2), yaw=(-18, 20), pitch=(-4, 4), light=(60, 60), key=0.8,
                        tint=WARM)]),
        # 6: close-up
        Shot(90, [Move("t1_5", zoom=(2.2, 1.9), pan=((0.0, 0.2), (0.0, 0.15)), yaw=(-20, 14),
                       pitch=(6, -4), roll=(-2, 2), light=(45, 45), key=0.9, tint=COOL)]),
        Shot(rerun_of=0),  # 7: the first shot again, unchanged
        # 8: close-up
        Shot(90, [Move("t1_6", zoom=(2.0, 2.4), pan=((0.0, 0.15), (0.0, 0.25)), yaw=(18, -22),
                       pitch=(-4, 6), light=(-50, -50), key=0.9, tint=WARM)]),
        # 9: split screen: the gallery's person again, next to another set-up of t1_1
        Shot(100, [Move("grace_hopper", zoom=(3.2, 2.9), yaw=(-24, 12), pitch=(-8, 4), roll=(-3, 2), light=(60, 60),
                        key=1.1, tint=COOL, blur=1.0),
                   Move("t1_1", zoom=(2.8, 3.0), yaw=(16, -12), pitch=(6, -4), light=(-60, -60), key=1.0,
                        tint=COOL, exposure=(0.95, 1.05), blur=0.6)]),
        # 10: the astronaut in another set-up: wider, light from the right, cool, softer focus
        Shot(90, [Move("astronaut", zoom=(3.2, 2.8), pan=((0.1, 0.3), (-0.1, 0.3)), yaw=(22, -10),
                       pitch=(-8, 2), roll=(2, -2), light=(65, 65), key=1.0, tint=COOL, exposure=(0.9, 1.0),
                       blur=1.2)]),
        # 11: split screen: two people seen before, in other set-ups
        Shot(100, [Move("tom_hanks", zoom=(2.2, 2.0), yaw=(20, -12), pitch=(6, -2), light=(-60, -60),
                        key=1.0, tint=WARM, exposure=(1.05, 0.95)),
                   Move("t1_3", zoom=(2.6, 2.9), pan=((0.0, 0.25), (0.0, 0.25)), yaw=(-10, 22), pitch=(-6, 6),
                        light=(30, 30), key=0.8, tint=WARM, exposure=(0.95, 1.05), blur=0.6)]),
        Shot(12, [Move("t1_2", zoom=(2.4, 2.4), yaw=(5, 5))]),  # 12: a very short shot
        Shot(25, []),  # 13: end slate
    ]  # fmt: skip


def fallback_shots() -> list[Shot]:
    """The shot list with the two people whose photos ship in installed packages (no archive)."""
    full = full_shots()
    return [
        full[0],
        full[4],
        full[3],
        Shot(100, [Move("astronaut", zoom=(3.0, 2.8), pan=((0.0, 0.25), (0.0, 0.2)), yaw=(18, -14),
                        pitch=(-6, 4), light=(55, 55), key=1.0, tint=COOL),
                   full[9].moves[0]]),
        Shot(rerun_of=0),
        full[10],
        Shot(12, [Move("grace_hopper", zoom=(2.4, 2.4), yaw=(5, 5))]),
        full[13],
    ]  # fmt: skip


def default_shots(people: list[str] | None = None) -> list[Shot]:
    """The full shot list when every person's photo is at hand (default: looked up), else the fallback."""
    if people is None:
        people = available_people(set(_photos_at_hand()))
    return full_shots() if set(PEOPLE) <= set(people) else fallback_shots()


def _photos_at_hand() -> list[str]:
    """Photos that can be read without decoding them: package photos, and archive members if it exists."""
    here = archive_path().is_file()
    return [name for name, photo in PHOTOS.items() if here or not photo.archive]


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


def spec_people(spec: DemoSpec) -> list[str]:
    """The people the spec's shots show, in order of first appearance."""
    seen: dict[str, None] = {}
    for shot in spec.shots:
        for move in shot.moves:
            seen.setdefault(move.identity, None)
    return list(seen)


# ---------------------------------------------------------------------------------------- rendering


def pane_rects(n: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Pane rectangles [x, y, w, h]: the whole frame for one pane, side by side with margins for more."""
    if n <= 1:
        return [(0, 0, width, height)][:n]
    half = width // n
    return [(i * half + 8, 20, half - 16, height - 40) for i in range(n)]


@dataclass
class Stage:
    """A person's photo ready to be filmed: the picture (region cut out, borders padded) and the face box."""

    image: np.ndarray
    face: tuple[float, float, float, float]


def _soft_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, done at a lower resolution (what it keeps is smooth, so nothing is lost)."""
    f = max(1, int(sigma // 3))
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def prepare_stage(person: Person, photo: np.ndarray) -> Stage:
    """The person's region of the photo on a wide, defocused backdrop (the region mirrored and blurred
    past recognition), so that the camera never shows another face and never runs off the picture."""
    img = photo
    x1, y1, x2, y2 = person.face
    if person.region is not None:
        rx1, ry1, rx2, ry2 = person.region
        img = photo[ry1:ry2, rx1:rx2]
        x1, x2, y1, y2 = x1 - rx1, x2 - rx1, y1 - ry1, y2 - ry1
    side = max(x2 - x1, y2 - y1)
    pad = int(math.ceil(side * 3.0))
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    ih, iw = img.shape[:2]
    mask = np.zeros(padded.shape[:2], np.float32)
    if person.oval:
        centre = (round(pad + (x1 + x2) / 2), round(pad + (y1 + y2) / 2 - 0.05 * side))
        axes = (round(0.56 * (x2 - x1)), round(0.58 * (y2 - y1)))
        cv2.ellipse(mask, centre, axes, 0.0, 0.0, 360.0, 1.0, -1)
        backdrop = np.empty_like(padded)
        backdrop[:] = np.median(img.reshape(-1, 3), axis=0).astype(np.uint8)
    else:
        mask[pad : pad + ih, pad : pad + iw] = 1.0
        backdrop = _soft_blur(padded, side / 3.0)
    mask = _soft_blur(mask, max(2.0, side / 16.0))[..., None]
    image = (padded * mask + backdrop * (1.0 - mask)).astype(np.uint8)
    return Stage(image, (x1 + pad, y1 + pad, x2 + pad, y2 + pad))


def _lerp(a: float, b: float, s: float) -> float:
    return a + (b - a) * s


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


_GRID = 4
"""Head warp and shading are computed on a grid this many pixels apart and interpolated (smooth fields)."""


def _coarse(n: int) -> np.ndarray:
    """Pixel positions of the coarse samples that cv2.resize interpolates back to ``n`` pixels exactly."""
    m = max(1, -(-n // _GRID))
    return (np.arange(m, dtype=np.float32) + 0.5) * (n / m) - 0.5


def head_fields(
    qx: np.ndarray,
    qy: np.ndarray,
    face: tuple[float, float, float, float],
    yaw: float,
    pitch: float,
    light: float,
    key: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For points (qx, qy) of the posed scene (photo pixels): where to read the photo (dx, dy offsets)
    for the head turned by ``yaw`` and nodded by ``pitch``, and the shading of a key light at ``light``.

    The head is a cylinder about the vertical axis for the turn (and about the horizontal one for the
    nod): a point at angle phi on it moves to phi + yaw, so features near the middle (the nose) travel
    furthest and the far cheek narrows. The warp fades out past the head, leaving the rest still.
    Shading is Lambert's on the ellipsoid of the head over an ambient light; the rest of the picture
    gets the key light's average.
    """
    x1, y1, x2, y2 = face
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    rx, ry = 0.62 * (x2 - x1), 0.62 * (y2 - y1)
    u = (qx - cx) / rx
    v = (qy - cy) / ry
    uc, vc = np.clip(u, -1.0, 1.0), np.clip(v, -1.0, 1.0)
    half_pi = np.float32(np.pi / 2)
    su = np.sin(np.clip(np.arcsin(uc) - np.float32(math.radians(yaw)), -half_pi, half_pi))
    sv = np.sin(np.clip(np.arcsin(vc) + np.float32(math.radians(pitch)), -half_pi, half_pi))
    r = np.sqrt((u / 1.5) ** 2 + (v / 1.5) ** 2)
    weight = _smoothstep((1.0 - r) / 0.45)
    dx = weight * (su - uc) * rx
    dy = weight * (sv - vc) * ry
    if key <= 0:
        return dx, dy, np.ones_like(qx)
    nz = np.sqrt(np.clip(1.0 - uc * uc - 0.5 * vc * vc, 0.0, 1.0))
    a = math.radians(light)
    lambert = np.clip(uc * math.sin(a) + nz * math.cos(a), 0.0, 1.0)
    inside = _smoothstep((1.25 - np.sqrt(u * u + v * v)) / 0.35)
    lit = inside * lambert + (1.0 - inside) * 0.5
    return dx, dy, (0.55 + key * lit) / (0.55 + key * 0.85)


def render_view(
    photo: np.ndarray, centre: tuple[float, float], view_w: float, size: tuple[int, int]
) -> np.ndarray:
    """A still camera's view of ``photo``: a window of width ``view_w`` centred at ``centre``, scaled to ``size``."""
    w, h = size
    scale = w / view_w
    cx, cy = centre
    m = np.array([[scale, 0.0, w / 2 - scale * cx], [0.0, scale, h / 2 - scale * cy]], np.float32)
    return cv2.warpAffine(
        photo, m, (w, h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderValue=(20, 20, 24)
    )


def render_pane(stage: Stage, move: Move, s: float, size: tuple[int, int]) -> np.ndarray:
    """The camera's view of a person (pane of ``size`` = (w, h)) at time ``s`` (0..1) of the shot."""
    w, h = size
    x1, y1, x2, y2 = stage.face
    fw, fh = x2 - x1, y2 - y1
    pan = (_lerp(move.pan[0][0], move.pan[1][0], s), _lerp(move.pan[0][1], move.pan[1][1], s))
    centre = ((x1 + x2) / 2.0 + pan[0] * fw, (y1 + y2) / 2.0 + pan[1] * fh)
    scale = _lerp(*move.zoom, s) * fh / h  # photo pixels per pane pixel
    roll = math.radians(_lerp(*move.roll, s))
    c, sn = math.cos(roll) * scale, math.sin(roll) * scale
    # The camera maps pane pixels to the posed scene; the head fields map the scene to the photo. Both
    # are smooth, so they are computed on a coarse grid and interpolated to every pixel.
    gx, gy = np.meshgrid(_coarse(w) - (w - 1) / 2.0, _coarse(h) - (h - 1) / 2.0)
    qx = (centre[0] + c * gx - sn * gy).astype(np.float32)
    qy = (centre[1] + sn * gx + c * gy).astype(np.float32)
    dx, dy, shade = head_fields(
        qx, qy, stage.face, _lerp(*move.yaw, s), _lerp(*move.pitch, s), _lerp(*move.light, s), move.key
    )
    mx = cv2.resize(qx + dx, (w, h), interpolation=cv2.INTER_LINEAR)
    my = cv2.resize(qy + dy, (w, h), interpolation=cv2.INTER_LINEAR)
    view = cv2.remap(stage.image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gain = np.asarray(move.tint, np.float32) * np.float32(_lerp(*move.exposure, s))
    light = cv2.resize(shade[..., None] * gain, (w, h), interpolation=cv2.INTER_LINEAR)
    view = cv2.multiply(view, light, dtype=cv2.CV_8U)
    if move.blur > 0:
        view = cv2.GaussianBlur(view, (0, 0), sigmaX=move.blur)
    return view


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


NOISE_FIELDS = 16
"""Sensor-noise fields drawn from per frame."""


def iter_frames(spec: DemoSpec, stages: dict[str, Stage]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(shot_index, RGB frame)`` of the broadcast in order (reruns repeat their shot exactly)."""
    rng = np.random.default_rng(spec.seed)
    # Sensor noise: a bank of noise fields, one drawn per frame (drawing a field per frame costs more
    # than rendering it).
    bank = [
        np.round(rng.standard_normal((spec.height, spec.width, 3), np.float32) * spec.noise).astype(np.int16)
        for _ in range(NOISE_FIELDS if spec.noise > 0 else 0)
    ]
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
                    canvas[y : y + h, x : x + w] = render_pane(stages[move.identity], move, s, (w, h))
            if bank:
                canvas = cv2.add(canvas, bank[int(rng.integers(len(bank)))], dtype=cv2.CV_8U)
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
    """Paths of a generated demo: the video, its ground truth, the gallery and the identity set."""

    video: Path
    ground_truth: Path
    gallery: Path
    frames: int
    identities: Path | None = None
    people: list[str] = field(default_factory=list)
    note: str = ""


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


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise ValueError("JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


PHOTO_VIEWS: dict[str, Move] = {
    "front": Move("", (2.0, 2.0), ((0.0, 0.15), (0.0, 0.15))),
    "left": Move("", (2.4, 2.4), ((0.0, 0.2), (0.0, 0.2)), (-25, -25), (3, 3), light=(-50, -50), key=0.8),
    "right": Move("", (2.2, 2.2), ((0.0, 0.2), (0.0, 0.2)), (25, 25), (-3, -3), light=(50, 50), key=0.8),
    "up": Move("", (2.6, 2.6), ((0.0, 0.2), (0.0, 0.2)), (8, 8), (10, 10), tint=(1.08, 1.0, 0.88)),
    "down": Move("", (2.0, 2.0), ((0.0, 0.2), (0.0, 0.2)), (-8, -8), (-10, -10), tint=(0.9, 0.98, 1.1)),
    "soft": Move("", (3.0, 3.0), ((0.0, 0.25), (0.0, 0.25)), (12, 12), light=(30, 30), key=0.6, blur=1.5),
}
"""Photo-like views of a person (pose, light, framing) for the gallery and the labelled identity set."""


def write_views(folder: Path, identity: str, stage: Stage, views: list[str], size: int = 256) -> None:
    """Photos of one person (``folder/identity/identity_VIEW.jpg``), one per named view in :data:`PHOTO_VIEWS`."""
    for name in views:
        img = render_pane(stage, PHOTO_VIEWS[name], 0.0, (size, size))
        _write_jpeg(folder / identity / f"{identity}_{name}.jpg", img)


def make_demo_broadcast(
    out_dir: str | Path,
    name: str = "demo_broadcast",
    spec: DemoSpec | None = None,
    gallery_identities: tuple[str, ...] = ("grace_hopper",),
    archive: Path | None = None,
) -> DemoBroadcast:
    """Write ``out_dir/NAME.mp4``, ``NAME.gt.json``, ``gallery/`` (views of the gallery's people, for
    dedup-overlap) and ``identities/`` (a labelled identity set of every person shown, for training);
    reused when made from the same spec."""
    photos, note = load_photos(archive)
    spec = spec or DemoSpec(shots=default_shots(available_people(photos)))
    people = spec_people(spec)
    lacking = [p for p in people if PEOPLE[p].photo not in photos]
    if lacking:
        raise InputError(f"the demo spec shows {', '.join(lacking)}, whose photos are missing: {note}")
    if note:
        log.warning("%s", note)
    out_dir = Path(out_dir)
    video, gt_path = out_dir / f"{name}.mp4", out_dir / f"{name}.gt.json"
    gallery, identities = out_dir / "gallery", out_dir / "identities"
    gt = ground_truth(spec, video.name)
    gt["spec_hash"] = spec_hash(spec)
    made = DemoBroadcast(video, gt_path, gallery, gt["frames"], identities, people, note)
    if video.is_file() and gt_path.is_file():
        try:
            same = json.loads(gt_path.read_text()).get("spec_hash") == gt["spec_hash"]
        except (OSError, ValueError):
            same = False
        folders = [gallery / i for i in gallery_identities] + [identities / p for p in people]
        if same and all(f.is_dir() for f in folders):
            return made
    stages = {p: prepare_stage(PEOPLE[p], photos[PEOPLE[p].photo]) for p in {*people, *gallery_identities}}
    n = write_video((frame for _, frame in iter_frames(spec, stages)), video, spec)
    if n != gt["frames"]:
        raise RuntimeError(f"{video}: wrote {n} frames, the ground truth has {gt['frames']}")
    for identity in gallery_identities:
        write_views(gallery, identity, stages[identity], ["front", "left", "right"])
    for identity in people:
        write_views(identities, identity, stages[identity], list(PHOTO_VIEWS))
    write_json_atomic(gt_path, gt)
    return made


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
