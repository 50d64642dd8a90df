"""Identification against distractors: the streamed search against brute force, a closed-form curve,
ties, single-image identities, every input format, the command, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from test_openset import sphere, sphere_far

from seqbuild._cli.main import cli
from seqbuild.errors import InputError
from seqbuild.identification import IdentificationConfig, evaluate_identification
from seqbuild.identification.features import (
    NpyFeatures,
    open_features,
    write_features,
    write_megaface_bin,
)
from seqbuild.identification.search import subset_levels
from seqbuild.openset import TIE_TOLERANCE


def clustered(counts: list[int], d: int, spread: float, rng: np.random.Generator, prefix: str):
    """Gaussian identities around random unit centres: (vectors, labels)."""
    centres = sphere(len(counts), d, rng)
    x = np.concatenate(
        [c + spread * rng.standard_normal((n, d)) / np.sqrt(d) for c, n in zip(centres, counts, strict=True)]
    )
    labels = [f"{prefix}{i}" for i, n in enumerate(counts) for _ in range(n)]
    return x.astype(np.float32), labels


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(probes, labels, distractors, sizes, seed, ranks, gallery_images="each", threshold=0.5):
    """Every figure by direct counting over the full score matrix of each nested subset."""
    p, dist = unit(probes), unit(distractors)
    level, _ = subset_levels(len(dist), sizes, seed)
    labels = np.asarray(labels)
    pairs = []
    for name in dict.fromkeys(labels):
        rows = np.flatnonzero(labels == name)
        gallery = rows if gallery_images == "each" else rows[:1]
        pairs += [(g, q) for g in gallery for q in rows if q != g]
    all_scores = p @ dist.T
    out = {"rank1": [], "cmc": {r: [] for r in ranks}, "fpir": [], "fnir": [], "pairs": len(pairs)}
    for j in range(len(sizes)):
        s = all_scores[:, level <= j]
        assert s.shape[1] == sizes[j]
        mate_rank = np.array([1 + np.sum(s[q] >= p[q] @ p[g] - TIE_TOLERANCE) for g, q in pairs])
        out["rank1"].append(np.mean(mate_rank <= 1))
        for r in ranks:
            out["cmc"][r].append(np.mean(mate_rank <= r))
        out["fpir"].append(np.mean(s.max(axis=1) >= threshold))
        mated = np.array([p[q] @ p[g] for g, q in pairs])
        out["fnir"].append(np.mean((mate_rank > 1) | (mated < threshold)))
    return out


@pytest.fixture
def synthetic(tmp_path):
    """Probes: 25 identities of 1-8 images (one with a single image); 2500 distractors of other people;
    one distractor duplicates a probe image and sits in the smallest subset (a tie with that mate)."""
    rng = np.random.default_rng(7)
    counts = [1] + list(rng.integers(2, 9, 24))
    probes, labels = clustered(counts, 16, 0.9, rng, "p")
    distractors, dlabels = clustered([2] * 1250, 16, 0.9, rng, "d")
    level, _ = subset_levels(len(distractors), [10, 100, 1000, 2500], seed=0)
    tie_row = int(np.flatnonzero(level == 0)[0])
    tie_image = counts[0]  # the first image of the second identity
    distractors[tie_row] = probes[tie_image]
    write_features(tmp_path / "probes", probes, labels, model="facenet")
    write_features(tmp_path / "distractors", distractors, dlabels)
    return {
        "dir": tmp_path,
        "probes": probes,
        "labels": labels,
        "distractors": distractors,
        "tie_image": tie_image,
        "counts": counts,
    }


def run(tmp_path, **cfg):
    config = IdentificationConfig(threshold=0.5, **cfg)
    return evaluate_identification(
        "facenet", tmp_path / "probes.npy", tmp_path / "distractors.npy", config, features_dir=tmp_path / "f"
    )


def test_subsets_are_nested_random_and_of_the_asked_sizes():
    sizes = [10, 100, 1000]
    level, position = subset_levels(5000, sizes, seed=3)
    for j, n in enumerate(sizes):
        assert np.sum(level <= j) == n
    assert np.sum(level == len(sizes)) == 4000  # beyond the largest subset: unused
    assert sorted(position.tolist()) == list(range(5000))
    assert np.flatnonzero(level == 0).max() > 100  # not simply the first rows of the file
    assert not np.array_equal(level, subset_levels(5000, sizes, seed=4)[0])


@pytest.mark.parametrize("gallery_images", ["each", "first"])
def test_streamed_search_equals_brute_force(synthetic, gallery_images):
    # memory_mb this small gives 256-row batches: the 2500 distractors arrive in 10 batches
    r = run(synthetic["dir"], sizes=[10, 100, 1000, 10000], memory_mb=0.01, gallery_images=gallery_images)
    assert r["run"]["batch_rows"] == 256
    assert r["sizes"] == [10, 100, 1000, 2500]  # the whole set is added after the largest size that fits
    bf = brute_force(
        synthetic["probes"],
        synthetic["labels"],
        synthetic["distractors"],
        r["sizes"],
        0,
        [1, 5, 10],
        gallery_images,
    )
    assert r["probes"]["mated_searches"] == bf["pairs"]
    assert r["rank1"] == pytest.approx(bf["rank1"])
    for rank in (1, 5, 10):
        assert r["cmc"][str(rank)] == pytest.approx(bf["cmc"][rank])
    assert r["open_set"]["fpir_at_threshold"] == pytest.approx(bf["fpir"])
    assert r["open_set"]["fnir_at_threshold"] == pytest.approx(bf["fnir"])
    # more distractors can only make identification harder and false positives likelier
    assert all(np.diff(r["rank1"]) <= 0) and all(np.diff(r["open_set"]["fpir_at_threshold"]) >= 0)
    assert 0 < r["rank1"][-1] < r["rank1"][0] <= 1


def test_a_distractor_tied_with_the_mate_ranks_before_it(synthetic, tmp_path):
    r = run(synthetic["dir"], sizes=[10, 10000], gallery_images="first")
    bf = brute_force(
        synthetic["probes"], synthetic["labels"], synthetic["distractors"], [10, 2500], 0, [1, 5, 10], "first"
    )
    assert r["rank1"] == pytest.approx(bf["rank1"]) and r["cmc"]["5"] == pytest.approx(bf["cmc"][5])
    # a hand-made case: A's two images, the gallery one copied among 9 distractors that score far below
    rng = np.random.default_rng(0)
    a1, a2 = np.eye(8)[0], np.eye(8)[0] + 0.5 * np.eye(8)[1]
    far = -np.abs(rng.normal(size=(9, 8))) - 1  # every distractor scores below 0 against A's images
    write_features(tmp_path / "probes", np.stack([a1, a2, np.eye(8)[2]]), ["A", "A", "B"])
    write_features(tmp_path / "distractors", np.vstack([far, a1]), ["x"] * 10)
    tie = run(tmp_path, sizes=[10], gallery_images="first", ranks=[1, 2])
    assert tie["probes"]["mated_searches"] == 1 and tie["probes"]["single_image_identities"] == 1
    assert tie["rank1"] == [0.0] and tie["cmc"]["2"] == [1.0]  # the copy ties with the mate: rank 2
    write_features(tmp_path / "distractors", np.vstack([far, np.eye(8)[3]]), ["x"] * 10)
    assert run(tmp_path, sizes=[10], gallery_images="first")["rank1"] == [1.0]


def test_single_image_identity_has_no_mated_search_but_is_a_non_mated_one(synthetic):
    r = run(synthetic["dir"], sizes=[10, 100])
    counts = synthetic["counts"]
    assert r["probes"]["single_image_identities"] == 1
    assert r["probes"]["identities"] == len(counts)
    assert r["probes"]["mated_searches"] == sum(n * (n - 1) for n in counts)
    assert r["probes"]["nonmated_searches"] == sum(counts)
    first = run(synthetic["dir"], sizes=[10], gallery_images="first")
    assert first["probes"]["mated_searches"] == sum(n - 1 for n in counts)


def test_rank1_curve_follows_the_closed_form_for_random_distractors(tmp_path):
    """Distractors uniform on the sphere: a mate scoring s is ranked first among N of them with probability
    F(s)^N, F the Beta CDF of the cosine; the measured curve must follow the mean of F(s)^N."""
    rng = np.random.default_rng(11)
    d = 24
    probes, labels = clustered([6] * 60, d, 0.8, rng, "p")
    write_features(tmp_path / "probes", probes, labels)
    write_features(tmp_path / "distractors", sphere(20000, d, rng), ["x"] * 20000)
    r = run(tmp_path, sizes=[10, 100, 1000, 10000])
    p = unit(probes)
    mated = np.concatenate(
        [(p[i : i + 6] @ p[i : i + 6].T)[~np.eye(6, dtype=bool)] for i in range(0, len(p), 6)]
    )
    below = np.array([1 - sphere_far(s, d) for s in mated])
    for n, measured in zip(r["sizes"], r["rank1"], strict=True):
        expected = float(np.mean(below**n))
        assert measured == pytest.approx(expected, abs=0.03), n
    assert r["rank1"][0] > 0.9 and r["rank1"][-1] < 0.6  # the curve is not flat at these sizes


def test_verification_and_impostor_fit_come_from_the_distractor_sample(synthetic):
    r = run(synthetic["dir"], sizes=[10, 100, 10000])
    v = r["verification"]
    counts = synthetic["counts"]
    assert v["genuine_pairs"] == sum(n * (n - 1) // 2 for n in counts)
    assert v["impostor_pairs"] == sum(counts) * 2500  # the default sample covers the whole set here
    assert v["tar_at_far"]["0.001"]["resolved"] and not v["tar_at_far"]["1e-06"]["resolved"]
    models = r["open_set"]["models"]
    fit = models["robust"]["fit"]
    p, dist = unit(synthetic["probes"]), unit(synthetic["distractors"])
    scores = p @ dist.T
    assert fit["loc"] == pytest.approx(np.median(scores), abs=1e-6)
    assert r["open_set"]["far_at_threshold"] == pytest.approx(np.mean(scores >= 0.5))
    assert models["tail"]["fit"]["tail_threshold"] == pytest.approx(np.quantile(scores, 0.99), abs=1e-3)
    pooled, probewise = (
        r["open_set"]["independent_fpir_at_threshold"],
        r["open_set"]["probewise_fpir_at_threshold"],
    )
    for model in (models["robust"]["fpir_at_threshold"], pooled, probewise):
        assert model["10"] < model["100"] < model["5749"] <= model["1000000"]
    # 1 - (1 - FAR)^N is concave in FAR: spreading the same false matches over every probe can only raise it
    assert all(probewise[n] <= pooled[n] + 1e-12 for n in pooled)


def test_every_feature_format_gives_the_same_result(synthetic, tmp_path):
    src = synthetic["dir"]
    base = run(src, sizes=[10, 100])
    probes, labels = synthetic["probes"], synthetic["labels"]
    np.savez(tmp_path / "probes.npz", features=probes, labels=np.array(labels), model=np.array("facenet"))
    with open(tmp_path / "probes.pkl", "wb") as fh:
        pickle.dump(
            {f"/data/{name}/{i:04d}.jpg": v for i, (v, name) in enumerate(zip(probes, labels, strict=True))},
            fh,
        )
    for i, (v, name) in enumerate(zip(probes, labels, strict=True)):
        write_megaface_bin(tmp_path / "mf" / name / f"{i:04d}.png_test.bin", v)
    for probe_src in (tmp_path / "probes.npz", tmp_path / "probes.pkl", tmp_path / "mf"):
        r = evaluate_identification(
            "facenet",
            probe_src,
            src / "distractors.npy",
            IdentificationConfig(sizes=[10, 100], threshold=0.5),
        )
        assert r["probes"]["mated_searches"] == base["probes"]["mated_searches"], probe_src
        assert r["rank1"] == pytest.approx(base["rank1"]), probe_src
        assert r["open_set"]["fpir_at_threshold"] == pytest.approx(base["open_set"]["fpir_at_threshold"])
    mf = open_features(tmp_path / "mf")
    assert mf.kind == "megaface" and mf.count == len(labels) and list(mf.labels()) == sorted(labels)


def test_npy_batches_are_bounded_and_cover_the_file(tmp_path):
    x = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    write_features(tmp_path / "f", x, [str(i) for i in range(1000)])
    source = NpyFeatures(tmp_path / "f.npy")
    blocks = [b.copy() for b in source.batches(300)]
    assert [len(b) for b in blocks] == [300, 300, 300, 100]
    assert np.array_equal(np.concatenate(blocks), x)
    assert list(source.labels())[:3] == ["0", "1", "2"]


def test_bad_feature_inputs_are_one_line_errors(synthetic, tmp_path):
    src = synthetic["dir"]
    (tmp_path / "short.npy").write_bytes((src / "probes.npy").read_bytes()[:200])
    (tmp_path / "short.txt").write_text((src / "probes.txt").read_text())
    with pytest.raises(InputError, match="truncated"):
        open_features(tmp_path / "short.npy")
    (tmp_path / "nolabels.npy").write_bytes((src / "probes.npy").read_bytes())
    with pytest.raises(InputError, match="identity list"):
        open_features(tmp_path / "nolabels.npy")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"a/1.jpg": Evil()}))
    with pytest.raises(InputError, match="not allowed"):
        open_features(tmp_path / "evil.pkl")
    write_megaface_bin(tmp_path / "bad" / "x" / "1.jpg_a.bin", np.ones(4))
    (tmp_path / "bad" / "x" / "2.jpg_a.bin").write_bytes(b"\x01\x00")
    with pytest.raises(InputError, match="too short"):
        list(open_features(tmp_path / "bad").batches(10))
    with pytest.raises(InputError, match="unknown input"):
        (tmp_path / "x.csv").write_text("1,2")
        open_features(tmp_path / "x.csv")
    # features of another model, of another dimension, a probe set with no identity of two images
    write_features(tmp_path / "other", synthetic["probes"], synthetic["labels"], model="seqface:last.pt")
    with pytest.raises(InputError, match="model"):
        evaluate_identification("facenet", tmp_path / "other.npy", src / "distractors.npy")
    write_features(tmp_path / "wide", np.ones((5, 32), np.float32), list("abcab"))
    with pytest.raises(InputError, match="16-d"):
        evaluate_identification("facenet", src / "probes.npy", tmp_path / "wide.npy")
    write_features(tmp_path / "single", synthetic["probes"][:3], ["a", "b", "c"])
    with pytest.raises(InputError, match="two or more images"):
        evaluate_identification("facenet", tmp_path / "single.npy", src / "distractors.npy")
    with pytest.raises(InputError, match="--sizes"):
        run(src, sizes=[0, 10])


# --------------------------------------------------------------------------- the command


def colour_crops(root, identities: dict[str, list[tuple[int, int, int]]]) -> None:
    """144x144 aligned 'faces' of solid colours, one folder per identity (for the colour embedder)."""
    from seqbuild.imaging import encode_jpeg

    for name, colours in identities.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(colours):
            img = np.zeros((144, 144, 3), np.uint8)
            img[:] = c
            (root / name / f"{i}.jpg").write_bytes(encode_jpeg(img))


def test_command_on_image_folders_and_rec_writes_json_plots_and_reuses_features(tmp_path):
    import test_overlap_fakes  # noqa: F401  registers the colour embedder

    from seqbuild.imaging import encode_jpeg
    from seqbuild.recordio import write_insightface_rec

    rng = np.random.default_rng(0)
    probes = {
        "red": [(200 + i, 10 * i, 5) for i in range(4)],
        "green": [(5, 200 + i, 12 * i) for i in range(3)],
        "alone": [(90, 90, 200)],
    }
    colour_crops(tmp_path / "probes", probes)
    images = []
    for label in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = np.zeros((144, 144, 3), np.uint8)
        img[:] = c
        images.append((label, encode_jpeg(img)))
    write_insightface_rec(tmp_path / "train.rec", images, tmp_path / "train.idx")
    out = tmp_path / "res" / "ident.json"
    args = [
        "eval",
        "test-colour",
        "--identification",
        str(tmp_path / "probes"),
        "--distractors",
        str(tmp_path / "train.rec"),
        "--aligned",
        "--sizes",
        "10,20,100",
        "--threshold",
        "0.99",
        "--no-progress",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.output and "N=       10" in res.output
    r = json.loads(out.read_text())["identification"]
    assert r["sizes"] == [10, 20, 40]  # 100 is beyond the set: the whole set instead
    assert r["probes"]["identities"] == 3 and r["probes"]["single_image_identities"] == 1
    assert r["probes"]["mated_searches"] == 4 * 3 + 3 * 2 and r["probes"]["embedded"] is True
    assert r["distractors"]["count"] == 40 and r["model"].startswith("test-colour")
    for suffix in ("rank1", "det", "fpir"):
        assert (tmp_path / "res" / f"ident.{suffix}.png").stat().st_size > 1000
    features = tmp_path / "res" / "ident.features"
    assert (features / "probes.npy").is_file() and (features / "distractors.json").is_file()
    # the same figures from the features written by the first run
    direct = evaluate_identification(
        "test-colour",
        features / "probes.npy",
        features / "distractors.npy",
        IdentificationConfig(sizes=[10, 20, 100], threshold=0.99),
    )
    assert direct["rank1"] == pytest.approx(r["rank1"])
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    r2 = json.loads(out.read_text())["identification"]
    assert r2["probes"]["embedded"] is False and r2["rank1"] == r["rank1"]


def test_command_bad_input_is_one_line(tmp_path, synthetic):
    src = synthetic["dir"]

    def identify(*more: str):
        args = ["eval", "facenet", "--identification", str(src / "probes.npy"), *more]
        return CliRunner().invoke(cli, args)

    res = identify()
    assert res.exit_code != 0 and "--distractors" in res.output and "Traceback" not in res.output
    res = identify("--distractors", str(tmp_path / "none"))
    assert res.exit_code != 0 and "none: not found" in res.output and "Traceback" not in res.output
    res = identify("--distractors", str(src / "distractors.npy"), "--sizes", "ten")
    assert res.exit_code == 2 and "--sizes" in res.output
