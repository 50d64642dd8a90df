"""Figures of an identification result, as PNGs beside its JSON: the rank-1 rate against the number of
distractors (MegaFace's curve), the DET curve per distractor-set size, and FPIR against gallery size at
the operating threshold (measured and modelled)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

GREY, BLUE, ORANGE = "#999999", "#1f77b4", "#ff7f0e"


def _pyplot():
    from ..errors import requires

    matplotlib = requires("matplotlib", "report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, legend_size: int = 8) -> Path:
    """Grid, legend and layout; the figure written atomically as a PNG at ``path``, then closed."""
    import matplotlib.pyplot as plt

    from ..storage import atomic_path

    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_rank1(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Rank-1 identification rate (and the other CMC ranks) against the number of distractors."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    sizes = result["sizes"]
    colours = [BLUE, ORANGE, GREY, "#2ca02c", "#9467bd"]
    for i, (rank, rates) in enumerate(sorted(result["cmc"].items(), key=lambda kv: int(kv[0]))):
        ax.plot(sizes, rates, marker="o", ms=3, color=colours[i % len(colours)], label=f"rank {rank}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("distractors in the gallery")
    ax.set_ylabel("identification rate")
    ax.set_title(
        f"{result.get('model', '')}: {result['probes']['mated_searches']} mated searches", fontsize=9
    )
    return _finish(fig, ax, Path(path))


def plot_det(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """FNIR against FPIR for each distractor-set size (log axes; zero rates drawn at the axis floor)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    open_set = result["open_set"]
    n_non = max(result["probes"]["nonmated_searches"], 1)
    n_mated = max(result["probes"]["mated_searches"], 1)
    floor_x, floor_y = 0.5 / n_non, 0.5 / n_mated
    cmap = plt.get_cmap("viridis")
    curves = open_set["det"]
    for i, det in enumerate(curves):
        x = np.maximum(np.asarray(det["fpir"], float), floor_x)
        y = np.maximum(np.asarray(det["fnir"], float), floor_y)
        order = np.lexsort((-y, x))
        colour = cmap(i / max(len(curves) - 1, 1))
        ax.plot(x[order], y[order], color=colour, lw=1.2, label=f"N = {det['size']:,}")
    if "fpir_at_threshold" in open_set:
        ax.scatter(
            np.maximum(open_set["fpir_at_threshold"], floor_x),
            np.maximum(open_set["fnir_at_threshold"], floor_y),
            color="k",
            s=12,
            zorder=3,
            label=f"T = {open_set['threshold']:.3g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor_x * 0.8, 1.05)
    ax.set_ylim(floor_y * 0.8, 1.05)
    ax.set_xlabel("FPIR (non-mated searches matched)")
    ax.set_ylabel("FNIR (mates missed at rank 1)")
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, ax, Path(path), legend_size=7)


def plot_fpir_vs_size(result: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """FPIR at the operating threshold against gallery size: measured points, modelled curve."""
    open_set = result["open_set"]
    if "fpir_at_threshold" not in open_set:
        return None
    from .. import openset

    plt = _pyplot()
    t = open_set["threshold"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    n = np.logspace(0, max(6.0, np.log10(max(result["sizes"])) + 0.5), 200)
    far = open_set["far_at_threshold"]
    ax.plot(n, openset.fpir_from_far(far, n), color=GREY, label=f"measured FAR {far:.2g}, pooled")
    if "probewise_fpir_at_threshold" in open_set:
        pw = open_set["probewise_fpir_at_threshold"]
        ns = sorted(int(k) for k in pw)
        ax.plot(ns, [pw[str(k)] for k in ns], color=GREY, ls="--", label="measured FAR, per probe")
    styles = {"robust": (BLUE, "-"), "tail": (BLUE, "--"), "moments": (BLUE, ":")}
    for method, model in open_set["models"].items():
        if "fit" not in model:
            continue
        fit = openset.ImpostorFit(**model["fit"])
        colour, ls = styles.get(method, (BLUE, "-."))
        label = f"{method} fit, FAR {float(fit.far(t)):.2g}"
        ax.plot(n, openset.model_fpir(fit, t, n), color=colour, ls=ls, label=label)
    ax.plot(result["sizes"], open_set["fpir_at_threshold"], "o", color=ORANGE, ms=4, label="measured")
    for name, size in (("LFW", 5_749), ("MS1M-v2", 85_742)):
        ax.axvline(size, color=GREY, lw=0.8, ls="--")
        ax.text(size, 0.02, f" {name}", fontsize=7, color="#555555")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("gallery size N")
    ax.set_ylabel("FPIR")
    ax.set_title(f"{result.get('model', '')}: threshold {t:.3g}", fontsize=9)
    return _finish(fig, ax, Path(path))


def write_plots(result: dict[str, Any], json_path: str | os.PathLike[str]) -> list[Path]:
    """All figures of ``result``, named after the JSON file they sit beside."""
    base = Path(json_path)
    stem = base.with_suffix("")
    paths = [
        plot_rank1(result, f"{stem}.rank1.png"),
        plot_det(result, f"{stem}.det.png"),
        plot_fpir_vs_size(result, f"{stem}.fpir.png"),
    ]
    return [p for p in paths if p is not None]
