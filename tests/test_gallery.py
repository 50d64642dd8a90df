"""Gallery building: image folders, RecordIO, features; faceless, ambiguous and corrupt images; resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_overlap_fakes import (
    BLUE,
    DIM,
    GREEN,
    MODEL_ID,
    NAME,
    RED,
    YELLOW,
    ColourDetector,
    ColourEmbedder,
    colour_vector,
    photo,
)

from seqbuild._cli.main import cli
from seqbuild.errors import InputError
from seqbuild.imaging import encode_jpeg
from seqbuild.ingest.detect import Face
from seqbuild.overlap.config import OverlapConfig
from seqbuild.overlap.gallery import build_gallery, choose_face, load_gallery, read_gallery_images, same_model
from seqbuild.overlap.search import search
from seqbuild.recordio import read_index, write_insightface_rec


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(img))


def make_folder(root):
    """alice: 2 red photos + a corrupt file; bob: 1 green + 1 faceless; carol: a 2-face group + a portrait."""
    _write(root / "alice" / "1.jpg", photo([(RED, 40, 40, 100)]))
    _write(root / "alice" / "2.jpg", photo([(RED, 60, 30, 80)]))
    (root / "alice" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    _write(root / "bob" / "1.jpg", photo([(GREEN, 50, 50, 90)]))
    _write(root / "bob" / "empty.jpg", photo([]))
    # Two faces of comparable size: whose name is it? Not guessed.
    _write(root / "carol" / "group.jpg", photo([(BLUE, 10, 10, 70), (YELLOW, 110, 110, 60)]))
    # A portrait with a small bystander: the large face dominates.
    _write(root / "carol" / "portrait.jpg", photo([(BLUE, 30, 30, 120), (YELLOW, 165, 5, 25)]))
    (root / "notes.txt").write_text("top-level files are not identities")
    return root


def fake_cfg(**kw):
    return OverlapConfig(model=NAME, detector=NAME, min_face=10, **kw)


def statuses(gallery_path):
    t = read_gallery_images(gallery_path).to_pydict()
    return {i: (s, e) for i, s, e in zip(t["image_id"], t["status"], t["error"], strict=True)}


def test_choose_face_policy():
    def face(side):
        return Face(box=np.array([0, 0, side, side], np.float32), score=0.99, landmarks=np.zeros((5, 2)))

    assert choose_face([], 2.0)[:2] == (None, "no_face")
    assert choose_face([face(50)], 2.0)[:2] == (0, "ok")
    assert choose_face([face(50), face(40)], 2.0)[:2] == (None, "several_faces")
    idx, status, note = choose_face([face(30), face(100), face(20)], 2.0)
    assert (idx, status) == (1, "ok") and "3 faces" in note
    assert choose_face([face(30), face(100)], 5.0)[:2] == (None, "several_faces")


def test_same_model_compares_the_whole_model_id():
    a = "seqface@0123456789abcdef/fixed-centre128/sphereface144"
    assert same_model(a, a)
    assert not same_model(a, a.replace("0123", "ffff"))  # other weights, same file name or not
    assert not same_model(a, a.replace("fixed", "prewhiten"))
    assert not same_model(a, a.replace("sphereface144", "arcface112"))
    assert not same_model(a, "seqface")


def test_build_from_image_folder_reports_faceless_ambiguous_and_corrupt_images(tmp_path, allow_error_logs):
    src = make_folder(tmp_path / "photos")
    emb = ColourEmbedder()
    manifest = build_gallery(
        src, tmp_path / "g", fake_cfg(), embedder=emb, detector=ColourDetector(10), progress=False
    )
    st = statuses(tmp_path / "g")
    assert st["alice/1.jpg"][0] == "ok" and st["alice/2.jpg"][0] == "ok"
    assert st["alice/3.jpg"][0] == "unreadable" and "alice/3.jpg" in st["alice/3.jpg"][1]
    assert st["bob/empty.jpg"][0] == "no_face"
    assert st["carol/group.jpg"][0] == "several_faces"
    assert st["carol/portrait.jpg"][0] == "ok" and "largest dominates" in st["carol/portrait.jpg"][1]
    assert len(st) == 7  # notes.txt is not an image of an identity
    assert manifest["status_counts"] == {"ok": 4, "unreadable": 1, "no_face": 1, "several_faces": 1}
    assert manifest["embedder"] == MODEL_ID and manifest["dim"] == DIM
    assert manifest["threshold"] == ColourEmbedder.same_identity_threshold
    assert emb.calls == 4  # only usable faces are embedded

    g = load_gallery(tmp_path / "g")
    assert g.identities == ["alice", "bob", "carol"]
    ident = pq.read_table(tmp_path / "g" / "identities.parquet").to_pydict()
    assert ident["n_images"] == [2, 1, 1]
    # carol's centre is the dominant blue face, not the yellow bystander
    assert float(g.centres[2] @ colour_vector(BLUE)) > 0.99
    assert np.allclose(np.linalg.norm(g.centres, axis=1), 1.0, atol=1e-5)
    scores, ids = search(g.index(), np.stack([colour_vector(GREEN), colour_vector(RED)]))
    assert ids[:, 0].tolist() == [1, 0] and scores[0, 0] > 0.99


def test_identity_with_no_usable_image_is_reported(tmp_path, allow_error_logs):
    _write(tmp_path / "src" / "dave" / "1.jpg", photo([]))
    _write(tmp_path / "src" / "erin" / "1.jpg", photo([(RED, 40, 40, 90)]))
    manifest = build_gallery(
        tmp_path / "src",
        tmp_path / "g",
        fake_cfg(),
        embedder=ColourEmbedder(),
        detector=ColourDetector(10),
        progress=False,
    )
    assert manifest["identities_without_images"] == ["dave"]
    assert load_gallery(tmp_path / "g").identities == ["erin"]


def test_build_from_recordio_with_a_damaged_record(tmp_path, allow_error_logs):
    images = [
        (0, encode_jpeg(photo([(RED, 40, 40, 100)]))),
        (0, encode_jpeg(photo([(RED, 50, 50, 90)]))),
        (1, encode_jpeg(photo([(GREEN, 40, 40, 100)]))),
        (1, encode_jpeg(photo([(GREEN, 30, 60, 80)]))),
        (2, b"not a jpeg at all"),
    ]
    rec = tmp_path / "ms1m" / "train.rec"
    rec.parent.mkdir()
    write_insightface_rec(rec, images)
    offsets = read_index(rec.with_suffix(".idx"))
    raw = bytearray(rec.read_bytes())
    raw[offsets[4] : offsets[4] + 4] = b"\x00\x01\x02\x03"  # damage record 4 (label 1)
    rec.write_bytes(bytes(raw))

    manifest = build_gallery(
        rec.parent,
        tmp_path / "g",
        fake_cfg(),
        embedder=ColourEmbedder(),
        detector=ColourDetector(10),
        progress=False,
    )
    st = statuses(tmp_path / "g")
    assert manifest["source_kind"] == "rec"
    assert st["rec:1"][0] == st["rec:2"][0] == st["rec:3"][0] == "ok"
    assert st["rec:4"][0] == "unreadable" and "train.rec: record 4: bad magic" in st["rec:4"][1]
    assert st["rec:5"][0] == "unreadable"  # undecodable image bytes
    assert "rec:6" not in st  # identity-range records are not images
    g = load_gallery(tmp_path / "g")
    assert g.identities == ["0", "1"]
    assert float(g.centres[1] @ colour_vector(GREEN)) > 0.99
    assert manifest["identities_without_images"] == ["2"]


def test_build_from_npy_and_parquet_features(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 16)).astype(np.float32)
    names = ["a", "a", "b", "b", "b", "c"]
    np.save(tmp_path / "f.npy", feats)
    (tmp_path / "f.txt").write_text("\n".join(names) + "\n")
    m = build_gallery(tmp_path / "f.npy", tmp_path / "g1", OverlapConfig(model="facenet"), progress=False)
    assert m["dim"] == 16 and m["n_identities"] == 3 and m["embedder"] == "facenet"
    g = load_gallery(tmp_path / "g1")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    want_b = unit[2:5].mean(axis=0)
    assert np.allclose(g.centres[1], want_b / np.linalg.norm(want_b), atol=1e-5)

    table = pa.table({"identity": names, "embedding": [list(map(float, f)) for f in feats]})
    pq.write_table(table, tmp_path / "f.parquet")
    build_gallery(tmp_path / "f.parquet", tmp_path / "g2", OverlapConfig(model="facenet"), progress=False)
    assert np.allclose(load_gallery(tmp_path / "g2").centres, g.centres, atol=1e-6)

    (tmp_path / "f.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="6 identities|2 identities"):
        build_gallery(tmp_path / "f.npy", tmp_path / "g3", OverlapConfig(model="facenet"), progress=False)


def test_rebuild_reuses_finished_parts(tmp_path, allow_error_logs):
    src = make_folder(tmp_path / "photos")
    cfg = fake_cfg(chunk_size=3)
    first = ColourEmbedder()
    build_gallery(src, tmp_path / "g", cfg, embedder=first, detector=ColourDetector(10), progress=False)
    assert len(list((tmp_path / "g" / "images").glob("part-*.parquet"))) == 3
    (tmp_path / "g" / "images" / "part-00001.parquet").unlink()  # as if the build had stopped there
    second = ColourEmbedder()
    det = ColourDetector(10)
    m = build_gallery(src, tmp_path / "g", cfg, embedder=second, detector=det, progress=False)
    assert det.calls == 3  # only the three photos of the missing part were detected again (one unreadable)
    assert m["status_counts"]["ok"] == 4
    assert statuses(tmp_path / "g")["carol/group.jpg"][0] == "several_faces"


def test_gallery_build_cli(tmp_path, allow_error_logs):
    src = make_folder(tmp_path / "photos")
    out = tmp_path / "g"
    res = CliRunner().invoke(
        cli,
        [
            "gallery",
            "build",
            str(src),
            "--out",
            str(out),
            "--model",
            NAME,
            "--detector",
            NAME,
            "--set",
            "dedup_overlap.min_face=12",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "3 identities from 7 images" in res.output
    assert json.loads((out / "manifest.json").read_text())["status_counts"]["no_face"] == 1
    res = CliRunner().invoke(cli, ["gallery", "build", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code != 0


@pytest.mark.slow
def test_real_gallery_photos_with_mtcnn_and_facenet(media, tmp_path, allow_error_logs):
    """The shared gallery photos, plus a faceless and a corrupt image, through the real detector and embedder."""
    import shutil

    src = tmp_path / "photos"
    shutil.copytree(media / "gallery", src)
    _write(
        src / "barack_obama" / "sky.jpg",
        np.tile(np.linspace(80, 200, 300, dtype=np.uint8)[:, None, None], (1, 300, 3)),
    )
    (src / "joe_biden" / "broken.jpg").write_bytes(
        (media / "gallery" / "joe_biden" / "1.jpg").read_bytes()[:300]
    )
    m = build_gallery(src, tmp_path / "g", OverlapConfig(model="facenet", device="cpu"), progress=False)
    st = statuses(tmp_path / "g")
    assert st["barack_obama/sky.jpg"][0] == "no_face"
    assert st["joe_biden/broken.jpg"][0] == "unreadable"
    assert m["n_identities"] == 6
    assert m["threshold"] == 0.45  # the documented facenet centre threshold
    # leave one out: each photo of a two-photo identity is nearest to its own identity's other photo
    t = read_gallery_images(tmp_path / "g").to_pydict()
    ok = [
        (i, np.asarray(e))
        for i, s, e in zip(t["identity"], t["status"], t["embedding"], strict=True)
        if s == "ok"
    ]
    names = sorted({i for i, _ in ok})
    checked = 0
    for k, (ident, vec) in enumerate(ok):
        others = [v for j, (i, v) in enumerate(ok) if i == ident and j != k]
        if not others:
            continue
        refs = {n: np.mean([v for i, v in ok if i == n], axis=0) for n in names if n != ident}
        refs[ident] = np.mean(others, axis=0)
        scores = {n: float(vec @ r / np.linalg.norm(r)) for n, r in refs.items()}
        assert max(scores, key=scores.get) == ident, (ident, scores)
        assert scores[ident] > m["threshold"]
        checked += 1
    assert checked >= 8
