"""`seqbuild train`, `seqbuild eval` and `seqbuild import-identities`."""

from __future__ import annotations

import json
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
@click.option("--init", default=None, help="Checkpoint whose backbone starts this run (fine-tuning).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes.")
@click.option(
    "--no-resume", "resume", flag_value=False, default=None, help="Start afresh even if OUT/last.pt exists."
)
@config_options
@log_level_option
@handle_errors
def train(config_path, sets, log_level, sequences, **flags) -> None:
    """Train a face model with SeqFace (LSR + DSA) on identity data plus produced sequences."""
    from ..pipeline.loading import save_config
    from ..train.trainer import run_train

    flags["sequences"] = list(sequences) or None
    pipeline = load_config(config_path, sets, flags_layer("train", **flags))
    cfg = pipeline["train"]
    start_logging(log_level, None)
    summary = run_train(cfg)
    save_config(pipeline, Path(cfg.out) / "config.toml")
    click.echo(json.dumps(summary, indent=1))


@click.command("eval")
@click.argument("model")
@click.option("--pairs", default=None, help="LFW-style pairs file.")
@click.option("--images", default=None, help="Image folder the pairs refer to (aligned crops).")
@click.option("--bin", "bin_paths", multiple=True, help="insightface verification .bin file (repeatable).")
@click.option("--video-pairs", default=None, help="YTF-style video pairs (CSV: video1,video2,same).")
@click.option("--videos", default=None, help="Folder with one frame folder per video.")
@click.option("--flip", is_flag=True, help="Add the feature of the mirrored image.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--out", default=None, help="Write the results as JSON here too.")
@handle_errors
def eval_cmd(model, pairs, images, bin_paths, video_pairs, videos, flip, device, out) -> None:
    """Verification accuracy of MODEL (10-fold, best threshold, TAR at FAR 1e-3)."""
    from ..devices import resolve_device
    from ..storage import write_json_atomic
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
    if out:
        write_json_atomic(out, results)


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
