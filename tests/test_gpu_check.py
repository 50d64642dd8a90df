"""benchmarks/gpu_check.sh in its CI form (--device cpu --quick): every part runs and writes sane figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO, media_dir


def test_gpu_check_quick_on_cpu_writes_its_figures(tmp_path):
    out = tmp_path / "figures"
    cmd = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out)]
    media = media_dir()
    if media is not None:
        cmd += ["--media", str(media)]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert f"results: {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}" in res.stdout
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["quick"] and r["environment"]["device"] == "cpu"
    ingest = r["ingest"]
    if media is None or not (media / "dev_broadcast.mp4").is_file():
        assert "not found" in ingest["skipped"]
    else:
        assert 2.5 <= ingest["video_seconds"] <= 3.5 and ingest["frames"] > 0
        rtf = ingest["video_seconds"] / ingest["wall_seconds"]  # both rounded in the file
        assert ingest["realtime_factor"] > 0 and abs(ingest["realtime_factor"] - rtf) <= 0.01 * rtf
        assert ingest["faces"] > 0  # the first seconds of the broadcast show a face
    embed = r["embed"]
    assert embed["faces"] == 4 and embed["precision"] == "fp32" and embed["faces_per_s"] > 0
    train = r["train"]
    assert train["fp32"]["images_per_s"] > 0 and math.isfinite(train["fp32"]["final_loss"])
    assert train["fp32"]["dsa_centres_kept"] > 0  # DSA was on
    assert train["fp32_with_loader"]["images_per_s"] > 0
    faiss = r["faiss"]
    assert faiss["where"] == "cpu" and faiss["queries_per_s"] > 0
    assert faiss["self_match_rate"] == 1.0  # each query is a lightly perturbed copy of a base vector
    text = (out / "gpu_check.txt").read_text()
    assert "faces/s" in text and "images/s" in text and "queries/s" in text
