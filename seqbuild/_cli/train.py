"""`seqbuild train`, `seqbuild eval` and `seqbuild import-identities`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .common import config_options, flags_layer, handle_errors, load_config, log_level_option, start_logging


@click.command()
@click.option("--identities", default=None, help="Identity dataset (from import-identities).")
@click.option("--sequences", multiple=True, help="Final dataset folder(s) of seqbuild runs.")
@click.option("--out", default=None, help="Checkpoint folder.")
@click.option("--backbone", default=None, help="resnet27 | resnet64 | resnet20 | tiny.")
@click.option(
    "--chief-loss", default=None, help="softmax | l2_sphereface | lsr_sphereface | arcface | cosface."
)
@click.option("--aux-loss", default=None, help="dsa | center | margin | '' (none).")
@click.option("--epochs", type=int, default=None, help="Passes over the identity data.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--batch-size", type=int, default=None, help="Images per batch.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option(
    "--init",
    default=None,
    help="Checkpoint that starts this run (backbone; head too for the same identities).",
)
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes.")
@click.option(
    "--no-resume", "resume", flag_value=False, default=None, help="Start afresh even if OUT/last.pt exists."
)
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@config_options
@log_level_option
@handle_errors
def train(config_path, sets, log_level, sequences, no_progress, **flags) -> None:
    """Train a face model with SeqFace (LSR + DSA) on identity data plus produced sequences."""
    from ..pipeline.loading import save_config
    from ..train.trainer import run_train

    flags["sequences"] = list(sequences) or None
    pipeline = load_config(config_path, sets, flags_layer("train", **flags))
    cfg = pipeline["train"]
    start_logging(log_level, None)
    summary = run_train(cfg, progress=not no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one config and one summary
        save_config(pipeline, Path(cfg.out) / "config.toml")
        click.echo(json.dumps(summary, indent=1))


def _int_list(value: str | None, name: str) -> list[int] | None:
    from ..errors import ConfigError

    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {value!r}") from None


@click.command("eval")
@click.argument("model")
@click.option(
    "--pairs",
    default=None,
    help="LFW pairs.txt: an optional first line 'folds pairs_per_fold', then one pair per line, 'NAME I J'"
    " (two images of one person) or 'NAME1 I NAME2 J' (two people); image I of NAME is"
    " IMAGES/NAME/NAME_NNNN.jpg, I in 4 digits (NAME_0001.jpg; .png and .jpeg too).",
)
@click.option(
    "--images",
    default=None,
    help="Folder of the --pairs images: aligned face crops (the 144x144 crops of a run or import-identities),"
    " resized to the model's canvas (144 by default) and centre-cropped to its input (128); never detected.",
)
@click.option("--bin", "bin_paths", multiple=True, help="insightface verification .bin file (repeatable).")
@click.option("--video-pairs", default=None, help="YTF-style video pairs (CSV: video1,video2,same).")
@click.option("--videos", default=None, help="Folder with one frame folder per video.")
@click.option("--flip", is_flag=True, help="Add the feature of the mirrored image.")
@click.option(
    "--identification",
    "probes",
    default=None,
    help="Probe set for identification against --distractors (MegaFace protocol): an image folder with one"
    " sub-folder per identity, train.rec, or features (.npy + .txt, .npz, .pkl, a folder of MegaFace .bin).",
)
@click.option("--distractors", default=None, help="Distractor set, in any of the forms of --identification.")
@click.option(
    "--sizes",
    default=None,
    help="Distractor-set sizes, comma-separated [10,100,...,1000000, as far as the set allows].",
)
@click.option("--ranks", default="1,5,10", show_default=True, help="CMC ranks, comma-separated.")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Score threshold of the FPIR/FNIR-vs-size figures [dedup-overlap's default for MODEL].",
)
@click.option(
    "--gallery-images",
    type=click.Choice(["each", "first"]),
    default="each",
    show_default=True,
    help="each: every image of a probe identity in turn is its gallery entry (MegaFace); first: the first only.",
)
@click.option(
    "--memory-mb",
    type=float,
    default=512,
    show_default=True,
    help="Bound on the streamed distractor buffers.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the nested distractor subsets.")
@click.option("--aligned", is_flag=True, help="Identification images are aligned face crops (no detection).")
@click.option(
    "--weights", default="", help="Weights of an embedder MODEL (facenet: a file or a pretrained name)."
)
@click.option(
    "--features-dir",
    default=None,
    help="Folder where embedded image sets are kept and re-used [OUT without .json, plus .features].",
)
@click.option("--no-progress", "progress", flag_value=False, default=True, help="No progress bars.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option(
    "--out", default=None, help="Write the results as JSON here too (identification plots beside it)."
)
@handle_errors
def eval_cmd(
    model,
    pairs,
    images,
    bin_paths,
    video_pairs,
    videos,
    flip,
    probes,
    distractors,
    sizes,
    ranks,
    threshold,
    gallery_images,
    memory_mb,
    seed,
    aligned,
    weights,
    features_dir,
    progress,
    device,
    out,
) -> None:
    """Verification (10-fold, best threshold, TAR at FAR 1e-3) and identification against distractors.

    MODEL: a checkpoint of `seqbuild train`; for identification also an embedder name (facenet) or
    NAME:WEIGHTS. Identification follows the MegaFace protocol and adds open-set rates (FNIR at FPIR,
    FPIR against gallery size); see docs/evaluation.md.
    """
    from ..errors import InputError
    from ..storage import write_json_atomic

    if bool(probes) != bool(distractors):
        raise InputError("identification needs both --identification PROBES and --distractors DISTRACTORS")
    results: dict = {}
    if pairs or bin_paths or video_pairs or not probes:
        from ..devices import resolve_device
        from ..train.checkpoint import load_backbone_for_inference
        from ..train.evaluate import evaluate_model

        dev = resolve_device(device)
        net = load_backbone_for_inference(model, dev)
        results = evaluate_model(net, dev, pairs, images, bin_paths, video_pairs, videos, flip)
        for name, r in results.items():
            click.echo(
                f"{name}: {r['pairs']} pairs  10-fold accuracy {r['kfold_accuracy']:.4f} +- {r['kfold_std']:.4f}  "
                f"best-threshold accuracy {r['best_threshold_accuracy']:.4f} (t={r['best_threshold']:.3f})  "
                f"TAR@FAR=1e-3 {r['tar_at_far_1e-3']:.4f}"
            )
    if probes:
        from ..identification import IdentificationConfig, evaluate_identification

        cfg = IdentificationConfig(
            ranks=_int_list(ranks, "--ranks"),
            gallery_images=gallery_images,
            threshold=threshold,
            memory_mb=memory_mb,
            seed=seed,
        )
        if sizes:
            cfg.sizes = _int_list(sizes, "--sizes")
        if features_dir is None and out:
            features_dir = str(Path(out).with_suffix("")) + ".features"
        result = evaluate_identification(
            model, probes, distractors, cfg, weights, device, aligned, features_dir, progress
        )
        results["identification"] = result
        for line in identification_summary(result):
            click.echo(line)
    if out:
        write_json_atomic(out, results)
        if probes:
            from ..identification.plots import write_plots

            for path in write_plots(results["identification"], out):
                click.echo(f"wrote {path}")


def identification_summary(result: dict) -> list[str]:
    """The lines `seqbuild eval` prints for an identification result."""
    p, d, o = result["probes"], result["distractors"], result["open_set"]
    lines = [
        f"identification ({result['model']}): {p['identities']} identities, {p['images']} probe images, "
        f"{p['mated_searches']} mated searches against up to {d['count']:,} distractors"
    ]
    for j, n in enumerate(result["sizes"]):
        cmc = "  ".join(f"rank-{r} {v[j]:.4f}" for r, v in result["cmc"].items())
        fnir = "  ".join(
            f"FNIR@FPIR={f} {rows[j]['fnir']:.4f}"
            for f, rows in o["fnir_at_fpir"].items()
            if rows[j]["resolved"]
        )
        at_t = f"  FPIR@{o['threshold']:.3g} {o['fpir_at_threshold'][j]:.4f}" if "threshold" in o else ""
        lines.append(f"  N={n:>9,}: {cmc}{at_t}  {fnir}")
    tars = "  ".join(
        f"TAR@FAR={f} {v['tar']:.4f}"
        for f, v in result["verification"]["tar_at_far"].items()
        if v["resolved"]
    )
    lines.append(f"  verification: {tars}")
    if "threshold" in o:
        shown = [n for n in ("100", "5749", "85742", "1000000") if n in o["independent_fpir_at_threshold"]]
        models = {
            "measured FAR, pooled": o["independent_fpir_at_threshold"],
            "measured FAR, per probe": o["probewise_fpir_at_threshold"],
        }
        models.update({m: v["fpir_at_threshold"] for m, v in o["models"].items() if "fpir_at_threshold" in v})
        for name, fpir in models.items():
            lines.append(
                f"  FPIR at {o['threshold']:.3g} for larger galleries ({name}): "
                + "  ".join(f"N={int(n):,} {fpir[n]:.4g}" for n in shown)
            )
    return lines


@click.command("import-identities")
@click.argument("src")
@click.option("--out", required=True, help="Identity dataset folder to write.")
@click.option(
    "--aligned", is_flag=True, default=None, help="Images are already aligned face crops (no detection)."
)
@click.option("--size", type=int, default=None, help="Crop size [default: 144].")
@click.option("--min-face", type=int, default=None, help="Smallest face side in a photo [default: 20].")
@click.option("--device", default=None, help="Detector device: auto | cpu | cuda | cuda:N.")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@config_options
@log_level_option
@handle_errors
def import_identities(src, out, config_path, sets, log_level, no_progress, **flags) -> None:
    """Import a labelled identity set (image folder or train.rec/.idx) as aligned 144x144 crops."""
    from ..train.identities import import_identities as run_import

    start_logging(log_level, None)
    pipeline = load_config(config_path, sets, flags_layer("import_identities", **flags))
    summary = run_import(src, out, pipeline["import_identities"], progress=not no_progress)
    click.echo(json.dumps(summary))
    if summary.get("refused"):
        from ..train.identities import REFUSED

        listed = Path(out) / "skipped.json"
        first = next(s for s in json.loads(listed.read_text()) if s["reason"] in REFUSED)
        click.echo(
            f"error: {first['detail']} ({summary['refused']} damaged record(s) or unusable identity "
            f"folder(s) refused in all, listed in {listed}; the other {summary['images']} images were imported)",
            err=True,
        )
        sys.exit(1)
