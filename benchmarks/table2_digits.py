"""A small, offline version of SeqFace's Table 2 on scikit-learn's 8x8 digits (CPU, a few minutes).

Identity data A = digits 0-4 with their labels. Sequence data B = half of the images of digits 5-9, cut
into "sequences" of 5 images of one digit, each sequence its own label (several sequences share a digit,
as several tracks share a person). Test = open-set verification among the other half of digits 5-9
(classes never seen as labels): balanced same/different pairs, 10-fold accuracy.

Run: ``.venv/bin/python -m benchmarks.table2_digits [--seeds 5] [--steps 600]``.
Every row uses the same backbone (an MLP, 32-d feature), optimiser, steps and batch size; rows differ
only by data and losses, trained through the trainer's own ``SeqFaceModel``, ``train_step`` and loss
registry. For the rows with DSA it also reports the share of active hinge pairs (mean over the second
half of training) and the mean feature norm at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from seqbuild.config import build
from seqbuild.train.backbones import create_backbone
from seqbuild.train.config import TrainConfig
from seqbuild.train.evaluate import verification_report
from seqbuild.train.trainer import SeqFaceModel, build_losses, train_step

ROWS = [
    # name, data, chief loss, aux loss
    ("softmax (A)", "A", "softmax", ""),
    ("L2-SphereFace (A)", "A", "l2_sphereface", ""),
    ("L2-SphereFace + centre (A)", "A", "l2_sphereface", "center"),
    ("L2-SphereFace + DSA (A)", "A", "l2_sphereface", "dsa"),
    ("LSR (A+B)", "A+B", "lsr_sphereface", ""),
    ("LSR + DSA (A+B)", "A+B", "lsr_sphereface", "dsa"),
    ("L2-SphereFace, fully labelled A+B", "A+B labelled", "l2_sphereface", ""),
]
EXTRA_ROWS = [
    # not in the paper's table: sequences trained through DSA only (LSR target q = 0, overlap_removed=false)
    ("DSA only for B, q=0 (A+B)", "A+B q0", "lsr_sphereface", "dsa"),
]


def split(seed: int) -> dict[str, np.ndarray]:
    """Identity set, sequence set (labels = sequence index), held-out test images of digits 5-9."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.astype(np.float32) / 16.0 - 0.5) / 0.5
    rng = np.random.default_rng(seed)
    a = y < 5
    seq_x, seq_lab, seq_digit, test_x, test_y = [], [], [], [], []
    n_seq = 0
    for d in range(5, 10):
        idx = rng.permutation(np.flatnonzero(y == d))
        half = len(idx) // 2
        train, test = idx[:half], idx[half:]
        train = train[: len(train) // 5 * 5]
        for s in range(len(train) // 5):
            seq_x.append(x[train[s * 5 : s * 5 + 5]])
            seq_lab += [n_seq] * 5
            seq_digit += [d] * 5
            n_seq += 1
        test_x.append(x[test])
        test_y.append(np.full(len(test), d))
    return {
        "id_x": x[a],
        "id_y": y[a].astype(np.int64),
        "seq_x": np.concatenate(seq_x),
        "seq_y": np.array(seq_lab, np.int64),
        "seq_digit": np.array(seq_digit, np.int64),
        "test_x": np.concatenate(test_x),
        "test_y": np.concatenate(test_y),
    }


def pairs(test_y: np.ndarray, seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` same-digit and ``n`` different-digit pairs among the test images (interleaved for the folds)."""
    rng = np.random.default_rng(seed + 1000)
    same, diff = [], []
    while len(same) < n or len(diff) < n:
        i, j = rng.integers(0, len(test_y), 2)
        if i == j:
            continue
        if test_y[i] == test_y[j] and len(same) < n:
            same.append((i, j))
        elif test_y[i] != test_y[j] and len(diff) < n:
            diff.append((i, j))
    p = np.array([q for pair in zip(same, diff, strict=True) for q in pair])
    return p[:, 0], p[:, 1], np.tile([True, False], n)


def train_row(
    data: dict[str, np.ndarray], kind: str, chief: str, aux: str, seed: int, steps: int, base: TrainConfig
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train one row's model; the model and figures of its training (DSA's active share, feature norm)."""
    torch.manual_seed(seed)
    if kind == "A":
        xs, ys, c, h = [data["id_x"]], [data["id_y"]], 5, 0
    elif kind in ("A+B", "A+B q0"):
        h = int(data["seq_y"].max()) + 1
        xs, ys, c = [data["id_x"], data["seq_x"]], [data["id_y"], data["seq_y"] + 5], 5
    else:  # fully labelled: the sequence images with their digit as identity class
        xs, ys, c, h = [data["id_x"], data["seq_x"]], [data["id_y"], data["seq_digit"]], 10, 0
    cfg = replace(base, chief_loss=chief, aux_loss=aux, seed=seed, overlap_removed=kind != "A+B q0")
    backbone = create_backbone("mlp", in_features=64, hidden=128, dim=base.embedding_dim)
    chief_m, aux_m = build_losses(cfg, c, h, base.embedding_dim)
    model = SeqFaceModel(backbone, chief_m, aux_m, aux_normalise=base.aux_normalise, aux_scale=base.aux_scale)
    opt = torch.optim.SGD(
        model.parameters(), lr=base.lr, momentum=base.momentum, weight_decay=base.weight_decay
    )
    rng = np.random.default_rng(seed + 7)
    tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(xs, ys, strict=True)]
    per_source = base.batch_size // len(tensors)
    active, norms = [], []
    for step in range(steps):
        lr = base.lr * (0.1 if step >= int(steps * 0.75) else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        parts = [
            (x[idx], y[idx])
            for x, y in tensors
            for idx in [torch.from_numpy(rng.integers(0, len(y), per_source))]
        ]
        bx = torch.cat([p[0] for p in parts])
        by = torch.cat([p[1] for p in parts])
        comps = train_step(model, opt, bx, by, step, clip_grad_norm=base.clip_grad_norm)
        if step >= steps // 2 and "dsa_active" in comps and comps["dsa_pairs"] > 0:
            active.append(comps["dsa_active"])
        norms.append(comps["feature_norm"])
    stats = {"feature_norm": float(np.mean(norms[-20:]))}
    if active:
        stats["dsa_active"] = float(np.mean(active))
    return backbone.eval(), stats


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Open-set verification figures on the held-out digits 5-9."""
    f = torch.nn.functional.normalize(model(torch.from_numpy(data["test_x"])), dim=1).numpy()
    i, j, same = pairs(data["test_y"], seed)
    return verification_report(np.sum(f[i] * f[j], axis=1), same)


def main() -> None:
    """Train every row for each seed and print the table (mean +- sd of 10-fold accuracy)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--aux-weight", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--dsa-p", type=float, default=0.2)
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other train option, e.g. dsa_beta=1.0, aux_normalise=false (repeatable)",
    )
    ap.add_argument("--json", default="")
    ap.add_argument("--extra", action="store_true", help="also the rows that are not in the paper's table")
    ap.add_argument("--only", default="", help="only the rows whose name contains this text (a|b: either)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = {}
    for item in args.sets:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value not in ("true", "false") else value == "true"
    base = build(
        TrainConfig,
        {
            "embedding_dim": 32,
            "batch_size": 64,
            "lr": args.lr,
            "aux_weight": args.aux_weight,
            "dsa_p": args.dsa_p,
            **overrides,
        },
    )
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    wanted = args.only.split("|")
    rows = [r for r in ROWS + (EXTRA_ROWS if args.extra else []) if any(w in r[0] for w in wanted)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in rows}
    for seed in range(args.seeds):
        data = split(seed)
        for name, kind, chief, aux in rows:
            model, stats = train_row(data, kind, chief, aux, seed, args.steps, base)
            results[name].append({**evaluate(model, data, seed), **stats})
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    print(
        f"digits Table 2: {args.seeds} seeds, {args.steps} steps, aux weight {args.aux_weight}, "
        f"DSA p {args.dsa_p}, overrides {overrides or 'none'}; {elapsed:.0f} s on "
        f"{platform.machine()} ({os.cpu_count()} CPUs), load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(
        f"{'row':38s} {'10-fold acc % (mean +- sd)':>28s} {'TAR@FAR=1e-3 %':>16s} {'DSA active':>11s} {'|f|':>6s}"
    )
    table = {}
    for name, rs in results.items():
        acc = np.array([r["kfold_accuracy"] for r in rs])
        tar = np.array([r["tar_at_far_1e-3"] for r in rs])
        act = np.array([r["dsa_active"] for r in rs if "dsa_active" in r])
        norm = np.array([r["feature_norm"] for r in rs])
        # sd over seeds with ddof=1 (sample standard deviation)
        table[name] = {
            "acc_mean": acc.mean(),
            "acc_sd": acc.std(ddof=1) if len(acc) > 1 else 0.0,
            "tar_mean": tar.mean(),
            "tar_sd": tar.std(ddof=1) if len(tar) > 1 else 0.0,
            "acc_per_seed": acc.tolist(),
            "dsa_active_mean": act.mean() if len(act) else None,
            "dsa_active_sd": act.std(ddof=1) if len(act) > 1 else None,
            "feature_norm": norm.mean(),
        }
        t = table[name]
        active = f"{t['dsa_active_mean']:.3f}" if len(act) else "-"
        print(
            f"{name:38s} {100 * t['acc_mean']:20.2f} +- {100 * t['acc_sd']:4.2f} "
            f"{100 * t['tar_mean']:8.2f} +- {100 * t['tar_sd']:4.2f} {active:>11s} {t['feature_norm']:6.2f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"args": vars(args), "seconds": elapsed, "load": [load_before, load_after], "rows": table},
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
