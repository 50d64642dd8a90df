"""`seqbuild train` under `torchrun --nproc-per-node 2` (gloo, CPU): every rank ends with the same state.

Each rank trains on its own slice of every global batch, as the sampler gives it. After several steps the
backbone, its BatchNorm statistics, the class weights of the chief loss, the DSA centres and the
optimiser's momentum must be identical on both ranks, or a multi-GPU run silently trains several
diverging models and keeps only rank 0's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_data import make_training_inputs, tiny_train_args

from seqbuild.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_inputs(tmp_path_factory.mktemp("ddpdata"), identities=6, sequences=8)


def _torchrun_train(data: Path, out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "seqbuild",
        *tiny_train_args(data, out, steps),
        "--lr",
        "0.1",
        "--set",
        "train.dsa_p=0.5",
        "--set",
        "train.rank_checkpoints=true",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _differences(a: dict, b: dict) -> list[str]:
    """Names of every tensor that differs between two checkpoints (model, chief, aux, optimiser)."""
    out = []
    for part in ("model", "chief", "aux"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if not torch.equal(a[part][k], b[part][k]):
                diff = (a[part][k].double() - b[part][k].double()).abs().max()
                out.append(f"{part}.{k} (max |diff| {float(diff):.3g})")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            if isinstance(v, torch.Tensor) and not torch.equal(v, sb[i][k]):
                out.append(f"optimizer.state[{i}].{k}")
    return out


def test_every_parameter_buffer_and_optimiser_state_agree_across_ranks(data, tmp_path):
    out = tmp_path / "ddp"
    # 3 steps, then a resumed run to 6: both ranks restart from rank 0's checkpoint and stay together
    for steps in (3, 6):
        res = _torchrun_train(data, out, steps)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count('"steps": 6') == 1  # one summary, from rank 0
    r0, r1 = load_checkpoint(out / "last.pt"), load_checkpoint(out / "last.rank1.pt")
    assert r0["step"] == r1["step"] == 6 and r0["world_size"] == 2
    # the parts the check must cover are there and have moved
    assert r0["chief"] and r0["aux"]["centres"].abs().sum() > 0
    assert any("running_mean" in k for k in r0["model"])
    assert len(r0["optimizer"]["state"]) > 0
    assert _differences(r0, r1) == []
