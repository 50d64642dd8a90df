"""The demo generator: its ground truth must describe the video it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqbuild.demo import DemoSpec, ground_truth, make_demo_broadcast, pane_rects


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
    # A hard cut changes the whole picture; camera moves and noise change it a little.
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


def test_a_face_is_detected_inside_every_pane_and_none_on_slates(demo):
    from facenet_pytorch import MTCNN

    _, gt, frames = demo
    mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=60)
    for shot in gt["shots"]:
        t = (shot["start"] + shot["end"]) // 2
        boxes, probs = mtcnn.detect(frames[t])
        boxes = [] if boxes is None else [b for b, p in zip(boxes, probs, strict=True) if p > 0.95]
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        if not shot["panes"]:
            assert not centres, f"shot {shot['index']}: a face on a slate"
        for pane in shot["panes"]:
            x, y, w, h = pane["rect"]
            inside = [c for c in centres if x <= c[0] < x + w and y <= c[1] < y + h]
            assert len(inside) == 1, f"shot {shot['index']} pane {pane['identity']}: {len(inside)} faces"


def test_generated_demo_is_reused_and_spec_changes_remake_it(tmp_path):
    spec = DemoSpec(width=320, height=180, shots=DemoSpec().shots[:3])
    first = make_demo_broadcast(tmp_path, spec=spec)
    stamp = first.video.stat().st_mtime_ns
    again = make_demo_broadcast(tmp_path, spec=spec)
    assert again.video.stat().st_mtime_ns == stamp
    other = DemoSpec(width=320, height=180, shots=DemoSpec().shots[:2])
    remade = make_demo_broadcast(tmp_path, spec=other)
    assert remade.frames == ground_truth(other, "x")["frames"] != first.frames
    assert sorted(p.name for p in (tmp_path / "gallery" / "grace_hopper").iterdir())


def test_split_screen_panes_do_not_overlap():
    (a, b) = pane_rects(2, 640, 360)
    assert a[0] + a[2] <= b[0]
