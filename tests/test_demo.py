"""The demo generator: its ground truth must describe the video it writes, with or without the archive."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from seqbuild.demo import (
    PEOPLE,
    PHOTO_VIEWS,
    PHOTOS,
    DemoSpec,
    Move,
    Shot,
    Stage,
    archive_path,
    default_shots,
    fallback_shots,
    full_shots,
    ground_truth,
    head_fields,
    load_photo,
    load_photos,
    make_demo_broadcast,
    pane_rects,
    render_pane,
    spec_people,
)
from seqbuild.errors import InputError

PACKAGE_PEOPLE = {name for name, person in PEOPLE.items() if not PHOTOS[person.photo].archive}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo broadcast, made once for the module, with its decoded frames."""
    import av

    out = tmp_path_factory.mktemp("demo")
    made = make_demo_broadcast(out)
    with av.open(str(made.video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    gt = json.loads(made.ground_truth.read_text())
    return made, gt, frames


@pytest.fixture
def no_archive(tmp_path, monkeypatch):
    """A user cache without the insightface source archive."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return archive_path()


def test_ground_truth_covers_every_decoded_frame(demo):
    made, gt, frames = demo
    assert len(frames) == gt["frames"] == made.frames
    assert frames[0].shape == (gt["height"], gt["width"], 3)
    starts = [s["start"] for s in gt["shots"]]
    ends = [s["end"] for s in gt["shots"]]
    assert starts[0] == 0 and ends[-1] == gt["frames"]
    assert starts[1:] == ends[:-1], "shots must tile the video without gaps or overlaps"
    kinds = {s["kind"] for s in gt["shots"]}
    assert kinds == {"shot", "rerun"}
    assert any(len(s["panes"]) == 2 for s in gt["shots"]), "a split-screen shot"
    assert any(not s["panes"] for s in gt["shots"]), "a face-free slate"
    for shot in gt["shots"]:
        for pane in shot["panes"]:
            x, y, w, h = pane["rect"]
            assert 0 <= x and 0 <= y and x + w <= gt["width"] and y + h <= gt["height"]


def test_cuts_are_where_the_ground_truth_says(demo):
    _, gt, frames = demo
    diffs = np.array(
        [np.abs(frames[i].astype(np.int16) - frames[i - 1]).mean() for i in range(1, len(frames))]
    )
    cuts = [s["start"] for s in gt["shots"][1:]]
    at_cuts = diffs[[c - 1 for c in cuts]]
    inside = np.delete(diffs, [c - 1 for c in cuts])
    # A hard cut changes the whole picture; camera moves, head turns and noise change it a little.
    assert at_cuts.min() > 3 * inside.max()
    # And no frame change inside a shot looks like a cut the ground truth does not list.
    assert int((diffs > at_cuts.min() / 2).sum()) == len(cuts)


def test_rerun_repeats_its_shot(demo):
    _, gt, frames = demo
    reruns = [s for s in gt["shots"] if s["kind"] == "rerun"]
    assert reruns
    for rerun in reruns:
        src = gt["shots"][rerun["rerun_of"]]
        assert rerun["end"] - rerun["start"] == src["end"] - src["start"]
        assert rerun["panes"] == src["panes"]
        same = np.abs(frames[rerun["start"] + 5].astype(np.int16) - frames[src["start"] + 5]).mean()
        other = np.abs(frames[rerun["start"] + 5].astype(np.int16) - frames[src["end"] + 5]).mean()
        assert same < 2.0 < other


def test_faces_in_a_shot_are_never_pixel_copies(demo):
    _, gt, frames = demo
    for shot in gt["shots"]:
        if not shot["panes"] or shot["end"] - shot["start"] < 20:
            continue
        for pane in shot["panes"]:
            x, y, w, h = pane["rect"]
            a, b = (
                frames[t][y : y + h, x : x + w].astype(np.int16) for t in (shot["start"], shot["end"] - 1)
            )
            # More than the sensor noise and the codec change a pane over a shot: the face moved.
            noise = np.abs(frames[shot["start"] + 1][y : y + h, x : x + w].astype(np.int16) - a).mean()
            assert np.abs(a - b).mean() > 2 * noise, f"shot {shot['index']} {pane['identity']}"


def test_a_face_is_detected_inside_every_pane_and_none_on_slates(demo):
    from facenet_pytorch import MTCNN

    _, gt, frames = demo
    mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=60)
    # Near both ends of every shot, where the head is turned furthest.
    looks = [(shot, t) for shot in gt["shots"] for t in sorted({shot["start"] + 8, shot["end"] - 8})]
    boxes, probs = mtcnn.detect([frames[t] for _, t in looks])
    for (shot, t), frame_boxes, frame_probs in zip(looks, boxes, probs, strict=True):
        found = [] if frame_boxes is None else zip(frame_boxes, frame_probs, strict=True)
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b, p in found if p > 0.95]
        if not shot["panes"]:
            assert not centres, f"shot {shot['index']}: a face on a slate"
        for pane in shot["panes"]:
            x, y, w, h = pane["rect"]
            inside = [c for c in centres if x <= c[0] < x + w and y <= c[1] < y + h]
            assert len(inside) == 1, f"frame {t} pane {pane['identity']}: {len(inside)} faces"


def test_gallery_and_identity_set_are_written(demo):
    made, gt, _ = demo
    shown = {p["identity"] for s in gt["shots"] for p in s["panes"]}
    assert set(made.people) == shown
    assert sorted(p.name for p in made.gallery.iterdir()) == ["grace_hopper"]
    assert {p.name for p in made.identities.iterdir()} == shown
    for person in shown:
        assert len(list((made.identities / person).glob("*.jpg"))) == len(PHOTO_VIEWS)


def test_generated_demo_is_reused_and_spec_changes_remake_it(tmp_path):
    shots = [Shot(6, [Move("astronaut")]), Shot(4, []), Shot(6, [Move("astronaut", zoom=(3.0, 3.0))])]
    spec = DemoSpec(width=160, height=96, shots=shots)
    first = make_demo_broadcast(tmp_path, spec=spec)
    stamp = first.video.stat().st_mtime_ns
    again = make_demo_broadcast(tmp_path, spec=spec)
    assert again.video.stat().st_mtime_ns == stamp
    other = DemoSpec(width=160, height=96, shots=shots[:2])
    remade = make_demo_broadcast(tmp_path, spec=other)
    assert remade.frames == ground_truth(other, "x")["frames"] != first.frames
    assert sorted(p.name for p in (tmp_path / "gallery" / "grace_hopper").iterdir())


def test_split_screen_panes_do_not_overlap():
    (a, b) = pane_rects(2, 640, 360)
    assert a[0] + a[2] <= b[0]


def test_shot_lists_show_known_people_and_each_person_is_framed_alone():
    for shots in (full_shots(), fallback_shots()):
        for shot in shots:
            assert shot.rerun_of is None or shots[shot.rerun_of].rerun_of is None
            assert all(m.identity in PEOPLE for m in shot.moves)
    assert set(spec_people(DemoSpec(shots=full_shots()))) == set(PEOPLE)
    assert set(spec_people(DemoSpec(shots=fallback_shots()))) <= PACKAGE_PEOPLE
    for name, person in PEOPLE.items():
        x1, y1, x2, y2 = person.face
        if person.region is not None:
            rx1, ry1, rx2, ry2 = person.region
            assert rx1 <= x1 < x2 <= rx2 and ry1 <= y1 < y2 <= ry2, name
            for other in PEOPLE.values():
                if other is not person and other.photo == person.photo:
                    ox, oy = (other.face[0] + other.face[2]) / 2, (other.face[1] + other.face[3]) / 2
                    assert not (rx1 <= ox < rx2 and ry1 <= oy < ry2), f"{name}'s region shows another face"


def test_head_turn_moves_the_middle_of_the_face_most_and_leaves_the_rest_still():
    face = (100.0, 100.0, 200.0, 220.0)
    xs = np.array([[150.0, 185.0, 400.0]], np.float32)
    ys = np.full_like(xs, 160.0)
    dx, dy, shade = head_fields(xs, ys, face, yaw=20.0, pitch=0.0, light=0.0, key=0.0)
    assert abs(dx[0, 0]) > abs(dx[0, 1]) > 0, "the nose travels further than the cheek"
    assert dx[0, 2] == 0 and np.all(dy == 0) and np.all(shade == 1)
    dx0, dy0, _ = head_fields(xs, ys, face, yaw=0.0, pitch=0.0, light=0.0, key=0.0)
    assert np.all(dx0 == 0) and np.all(dy0 == 0)
    _, _, lit = head_fields(np.array([[130.0, 170.0]], np.float32), np.full((1, 2), 160.0, np.float32), face,
                            yaw=0.0, pitch=0.0, light=-60.0, key=1.0)  # fmt: skip
    assert lit[0, 0] > lit[0, 1], "a key light from the left lights the left cheek more"


def test_a_still_pose_renders_the_plain_camera_view():
    ys, xs = np.mgrid[0:200, 0:300].astype(np.float32)
    img = np.stack([xs * 0.6, ys * 0.9, np.full_like(xs, 90.0)], axis=2).astype(np.uint8)
    face = (100.0, 50.0, 160.0, 130.0)
    stage = Stage(img, face)
    frame = ((0.0, 0.0), (0.0, 0.0))
    still = render_pane(stage, Move("x", zoom=(1.5, 1.5), pan=frame), 0.0, (64, 64))
    turned = render_pane(stage, Move("x", zoom=(1.5, 1.5), pan=frame, yaw=(20, 20)), 0.0, (64, 64))
    # The view is 1.5 face heights (120 photo pixels) around the face centre (130, 90).
    scale = 120 / 64
    py, px = np.mgrid[0:64, 0:64].astype(np.float32)
    expect_x, expect_y = 130 + (px - 31.5) * scale, 90 + (py - 31.5) * scale
    # (Within two pixels of the border the interpolated camera map is held at its last grid sample.)
    inner = np.s_[2:-2, 2:-2]
    assert np.abs(still[..., 0] - expect_x * 0.6)[inner].max() <= 1.5
    assert np.abs(still[..., 1] - expect_y * 0.9)[inner].max() <= 1.5
    assert np.abs(turned[..., 0].astype(int) - still[..., 0]).max() > 5, "a head turn moves the face"


def test_missing_archive_gives_fewer_people_and_a_note(no_archive, tmp_path):
    photos, note = load_photos()
    assert set(photos) == {n for n, p in PHOTOS.items() if not p.archive}
    assert str(no_archive) in note and "pip download" in note and "insightface==2.1" in note
    assert set(spec_people(DemoSpec(shots=default_shots()))) <= PACKAGE_PEOPLE
    with pytest.raises(InputError, match="t1_1"):
        make_demo_broadcast(tmp_path / "full", spec=DemoSpec(shots=full_shots()))
    small = DemoSpec(width=320, height=180, shots=fallback_shots()[:2])
    made = make_demo_broadcast(tmp_path / "small", spec=small)
    assert made.note == note and set(made.people) <= PACKAGE_PEOPLE


def test_archive_members_are_checked(tmp_path):
    archive = tmp_path / "insightface-2.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for photo in PHOTOS.values():
            if photo.archive:
                data = b"not the photo"
                info = tarfile.TarInfo(photo.path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    name = next(n for n, p in PHOTOS.items() if p.archive)
    with pytest.raises(InputError, match="sha256"):
        load_photo(name, archive)
    photos, note = load_photos(archive)
    assert name not in photos and "sha256" in note
    (tmp_path / "broken.tar.gz").write_bytes(b"nothing")
    with pytest.raises(InputError, match="unreadable"):
        load_photo(name, tmp_path / "broken.tar.gz")


def test_archive_photos_are_read_from_the_cached_archive():
    if not archive_path().is_file():
        pytest.skip(f"{archive_path()} not found (`make setup` downloads it when online)")
    photos, note = load_photos()
    assert note == "" and set(photos) == set(PHOTOS)
    assert set(spec_people(DemoSpec())) == set(PEOPLE)
