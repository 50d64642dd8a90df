"""Run every command example of README.md and docs/*.md, in order, on the demo's outputs; print the result.

    python -m tools.docs_check [--work runs/docs-check] [--demo RUN] [--only TEXT] [--list]
    make docs-check

An example is each command of a fenced ```bash or ```sh block (lines joined at a trailing backslash,
comment lines dropped; an ``export`` holds for the rest of its block), each ```python block (run whole)
and each ```toml block (loaded as a pipeline file: every section and key must exist). Examples run in
the order of the files (README.md, then docs/*.md by name) in one work folder, WORK: a fresh
`seqbuild demo --out WORK/runs/demo` first (or ``--demo RUN``, linked there as runs/demo), then every
example as written, with ``seqbuild``, ``python`` and ``torchrun`` the ones of this checkout. What the
examples name and the demo does not make under that name is prepared in WORK beforehand (STAND_INS);
a few examples run in another form (MAPPED) and the ones that cannot run here are skipped by their text
with the reason (SKIPPED: a GPU, a cluster, data that is not here). Both tables are keyed by the
example's text, so an example that changes must be looked at again: a key that matches no example is an
error. Each example passes when it exits with 0. Fenced blocks in another language (the run layout, a
printed result) are not commands.

Inline commands of the prose are not run (the table of docs/hardening.md is produced by
tools/hardening_cases.py, the figures of docs/benchmarks.md by `make bench-*`); tests/test_docs_examples.py
checks that every `seqbuild ...` they name is a command with those options.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's seqbuild, whichever is installed
    sys.path.insert(0, str(REPO))
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
TIMEOUT = 900.0


@dataclass
class Example:
    """One command (or Python or TOML block) of a document."""

    doc: str
    line: int
    kind: str  # "shell", "python" or "toml"
    text: str
    env: list[str] = field(default_factory=list)  # `export` lines before it in its block

    @property
    def name(self) -> str:
        """Where it is written: ``README.md:58``."""
        return f"{self.doc}:{self.line}"

    @property
    def key(self) -> str:
        """The text that names it in MAPPED, SKIPPED and BEFORE (no trailing comment, whitespace collapsed)."""
        return command_key(self.text)


def lookup(table: dict, text: str):
    """The entry of ``table`` for an example's text: by its whole text, else without its trailing comment."""
    whole = " ".join(text.split())
    return table[whole] if whole in table else table.get(command_key(text))


def command_key(text: str) -> str:
    """``text`` without a trailing shell comment, its whitespace collapsed."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()) and "\n" not in text:
            text = text[:i]
            break
    return " ".join(text.split())


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line of the first content line, lines) of each fenced block of a Markdown text."""
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if lang is None and stripped.startswith("```"):
            lang, start, lines = stripped[3:].strip().lower(), n + 1, []
        elif lang is not None and stripped.startswith("```"):
            blocks.append((lang, start, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def shell_commands(lines: list[str], first_line: int) -> list[tuple[int, str]]:
    """The commands of a shell block: continuation lines joined, blank and comment lines dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for n, raw in enumerate(lines, first_line):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending.strip()))
    return out


def extract_examples(docs: list[str] = DOCS, root: Path = REPO) -> list[Example]:
    """Every example of ``docs``, in order."""
    examples: list[Example] = []
    for doc in docs:
        for lang, start, lines in fenced_blocks((root / doc).read_text()):
            if lang in SHELL:
                env: list[str] = []
                for line, command in shell_commands(lines, start):
                    examples.append(Example(doc, line, "shell", command, list(env)))
                    if command.startswith("export "):
                        env.append(command)
            elif lang == "python":
                examples.append(Example(doc, start, "python", "\n".join(lines)))
            elif lang == "toml":
                examples.append(Example(doc, start, "toml", "\n".join(lines)))
    return examples


# ------------------------------------------------------------------------------------------------ tables

STAND_INS = {
    "video1.mp4, videos/demo_copy.mp4, urls.txt": "the demo's broadcast under two names, and a list that"
    " names video1.mp4 again (read once): the chain's examples read two videos, one a rerun of the other",
    "data/lfw (for /data/lfw)": "an image folder of two of the demo's people (astronaut, tom_hanks), from"
    " its labelled photos (runs/demo/media/identities), in LFW's layout",
    "optout/": "the demo's gallery photos (grace_hopper), one folder per identity",
    "data/ms1m/train.rec (for /data/ms1m/train.rec)": "the aligned crops of runs/demo/dataset, one class per"
    " sequence, as an insightface RecordIO pair (train.rec + train.idx)",
    "data/lfw.bin (for /data/lfw.bin)": "pairs of those crops in insightface's verification .bin format: two"
    " faces of one sequence (same) or of two sequences (different, though two shots may show one person)",
    "decisions.csv": "two of runs/tv's searched sequences, one to keep and one to remove (written before the"
    " example that reads it, once runs/tv has been through dedup-overlap)",
    "../shared": "the shared media's parent folder when it is present (SEQBUILD_MEDIA or ../shared/media)",
}

# (pattern, replacement) applied to the text of every example before it runs.
SUBSTITUTIONS = [
    (re.compile(r"(?<![\w.])/data/"), "data/"),
    (re.compile(r'(?<=["\'])RUN/'), "runs/tv/"),
]

MAPPED = {
    "make demo": (
        "seqbuild demo --out runs/demo",
        "the target's command; `make` would first set up .venv, which this checkout already has",
    ),
    "seqbuild train --identities data/ms1m --sequences runs/tv/dataset --out checkpoints/seqface": (
        "seqbuild train --identities data/ms1m --sequences runs/tv/dataset --out checkpoints/seqface"
        " --config pipelines/train-demo.toml",
        "the defaults are GPU-sized (resnet27, batch 128); pipelines/train-demo.toml is the CPU recipe",
    ),
}

GPU = "GPU: needs CUDA devices"
CLUSTER = "cluster: needs a Ray cluster or several machines"

SKIPPED: dict[str, str] = {
    "make test": "the test suite itself (`make test`, run by CI), not an example on the demo's outputs",
    "seqbuild run pipelines/e2e.toml --executor ray --ray-address auto": CLUSTER,
    # README: ONNX models
    "seqbuild embed runs/tv --model onnx:/models/buffalo_l/w600k_r50.onnx": "absent data: insightface's"
    " buffalo_l w600k_r50.onnx, which users download themselves under its licence",
    # (the full text, comment included: the same command earlier in README.md runs)
    "seqbuild clean runs/tv # its thresholds are derived from the run for a model other than FaceNet": (
        "absent data: follows the buffalo_l embedding above"
    ),
    "seqbuild gallery build data/lfw --out galleries/lfw-r50 --model onnx:/models/buffalo_l/w600k_r50.onnx": (
        "absent data: buffalo_l's w600k_r50.onnx"
    ),
    "seqbuild dedup-overlap runs/tv --gallery galleries/lfw-r50": "absent data: follows the buffalo_l gallery above",
    "torchrun --nproc-per-node 8 -m seqbuild train ...": GPU,
    # docs/evaluation.md: the public benchmarks (the same commands run on inputs built from the demo there)
    "seqbuild eval checkpoints/seqface/last.pt --pairs pairs.txt --images lfw-aligned/": "absent data: LFW's"
    " pairs.txt and aligned images (the same command runs on inputs built from the demo further down)",
    "seqbuild eval checkpoints/seqface/last.pt --video-pairs splits.txt --videos ytf-aligned/": "absent data:"
    " YouTube Faces (the same command runs on inputs built from the demo further down)",
    "seqbuild eval facenet --identification facescrub/ --distractors megaface_1m.npy --out results/mf.json": (
        "absent data: FaceScrub and MegaFace (the same command runs on inputs built from the demo further down)"
    ),
    # docs/scaling.md
    "export RAY_AUTH_MODE=token": CLUSTER,
    "ray get-auth-token --generate": CLUSTER,
    "ray start --head --port=6379 --num-gpus=$(nvidia-smi -L | wc -l)": CLUSTER,
    "ray start --address=HEAD_IP:6379 --num-gpus=$(nvidia-smi -L | wc -l)": CLUSTER,
    "seqbuild run pipelines/e2e.toml --out /shared/runs/tv --set ingest.inputs=/shared/videos --set"
    " dedup_overlap.galleries=/shared/galleries/lfw --executor ray --ray-address auto": CLUSTER,
    "torchrun --nproc-per-node 8 -m seqbuild train --config pipelines/train-finetune.toml --identities"
    " data/ms1m --sequences runs/tv/dataset --out runs/seqface": GPU,
    "torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK --rdzv-backend c10d --rdzv-endpoint"
    " HEAD_IP:29500 -m seqbuild train --config pipelines/train-finetune.toml --identities data/ms1m"
    " --sequences runs/tv/dataset --out runs/seqface": CLUSTER,
    # docs/usage.md
    "seqbuild embed runs/demo --device cuda:1": GPU,
    "seqbuild run pipelines/e2e.toml --out runs/demo --set ingest.device=cuda:1 --set embed.device=cuda:1"
    " --set clean.device=cuda:1 --set dedup_overlap.device=cuda:1": GPU,
    "CUDA_VISIBLE_DEVICES=1 seqbuild run pipelines/e2e.toml --out runs/demo": GPU,
}
"""Examples that cannot run here, by their text (after SUBSTITUTIONS), with the reason."""


def media_parent() -> Path | None:
    """The folder holding the shared media (``SEQBUILD_MEDIA``'s parent, or ../shared), if present."""
    media = Path(os.environ.get("SEQBUILD_MEDIA") or REPO.parent / "shared" / "media")
    return media.parent if media.is_dir() else None


def skip_reason(example: Example, text: str) -> str | None:
    """Why ``example`` (as it would run: ``text``) is not run here, or None."""
    reason = lookup(SKIPPED, text)
    if reason:
        return reason
    if "../shared" in example.text and media_parent() is None:
        return "absent data: the shared media (../shared) is not here"
    return None


# ------------------------------------------------------------------------------------------------ static


INLINE_CODE = re.compile(r"`([^`\n]+)`")
FILE_SUFFIXES = {"rec", "idx", "txt", "json", "toml", "pt", "npy", "npz", "parquet", "bin", "csv", "md"}
"""``train.rec`` is a file, not the key ``rec`` of the ``train`` section."""


def named_commands(docs: list[str] = DOCS, root: Path = REPO) -> list[tuple[str, str]]:
    """(where, text) of every ``seqbuild`` command the docs name: in examples and in the prose's code spans."""
    out = []
    for e in extract_examples(docs, root):
        if e.kind == "shell" and re.search(r"(^|\s)(seqbuild|-m seqbuild)\s", e.text):
            out.append((e.name, e.text))
    for doc in docs:
        text = (root / doc).read_text()
        prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        for n, line in enumerate(prose.splitlines(), 1):
            for span in INLINE_CODE.findall(line):
                if re.match(r"(seqbuild|python -m seqbuild)\s", span):
                    out.append((f"{doc}:{n}", span))
    return out


def command_problems(text: str) -> list[str]:
    """What is wrong with a ``seqbuild`` command line: an unknown command, option or --set key (none: [])."""
    import shlex

    import click

    from seqbuild._cli.main import cli

    parts = [p for p in re.split(r"&&|\|\||;|\|", command_key(text)) if re.search(r"(^|\s)seqbuild(\s|$)", p)]
    if len(parts) != 1:
        return [problem for part in parts for problem in command_problems(part)]
    try:
        tokens = shlex.split(parts[0])
    except ValueError:
        tokens = parts[0].split()
    start = tokens.index("seqbuild") + 1
    command: click.Command = cli
    args = tokens[start:]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        if sub is None:
            return [f"no command {args[0]!r}"]
        command, args = sub, args[1:]
    if isinstance(command, click.Group):
        return []
    names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    problems = []
    for i, arg in enumerate(args):
        option = arg.split("=", 1)[0]
        if option.startswith("--") and option not in names and option != "--help":
            problems.append(f"{command.name} has no option {option}")
        if option == "--set" and i + 1 < len(args):
            problems += setting_problems(args[i + 1].split("=", 1)[0])
    return problems


def setting_problems(key: str) -> list[str]:
    """What is wrong with a config key ``section.name`` (none: [])."""
    import dataclasses

    from seqbuild.stages import section_class, sections

    section, _, name = key.partition(".")
    if section not in sections():
        return [f"no config section {section!r} ({key})"]
    fields = {f.name for f in dataclasses.fields(section_class(section))}
    return [] if name in fields else [f"no config key {key}"]


OTHER_PROGRAMS_FLAGS = {"--num-cpus": "ray start"}
"""Options named alone in the prose that belong to another program."""


def named_flags(docs: list[str] = DOCS, root: Path = REPO) -> list[tuple[str, str]]:
    """(where, option) of every code span of the prose that starts with an option (benchmarks.md aside,
    whose options are its scripts')."""
    out = []
    for doc in docs:
        if doc.endswith("benchmarks.md"):
            continue
        for n, line in enumerate((root / doc).read_text().splitlines(), 1):
            for span in INLINE_CODE.findall(line):
                if span.startswith("--"):
                    out.append((f"{doc}:{n}", span.split()[0].split("=", 1)[0]))
    return out


def flag_problems(option: str) -> list[str]:
    """[] when some seqbuild command has ``option`` (or another program's is listed), else the problem."""
    import click

    from seqbuild._cli.main import cli

    def options(command: click.Command) -> set[str]:
        if isinstance(command, click.Group):
            return set().union(*(options(c) for c in command.commands.values()))
        return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}

    if option in OTHER_PROGRAMS_FLAGS or option in options(cli):
        return []
    return [f"no seqbuild command has {option}"]


def named_settings(docs: list[str] = DOCS, root: Path = REPO) -> list[tuple[str, str]]:
    """(where, key) of every ``section.key`` code span of the docs whose section is a config section."""
    from seqbuild.stages import sections

    known = set(sections())
    out = []
    for doc in docs:
        for n, line in enumerate((root / doc).read_text().splitlines(), 1):
            for span in INLINE_CODE.findall(line):
                m = re.fullmatch(r"([a-z_]+)\.([a-z_]+)(\s*=.*)?", span.strip())
                if m and m.group(1) in known and m.group(2) not in FILE_SUFFIXES:
                    out.append((f"{doc}:{n}", f"{m.group(1)}.{m.group(2)}"))
    return out


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Result:
    """What one example did."""

    example: Example
    status: str  # pass | fail | skip
    seconds: float = 0.0
    ran: str = ""
    note: str = ""
    tail: str = ""


def prepared_text(example: Example) -> tuple[str, str]:
    """The text to run and, when it is not the example's own, why."""
    text = example.text
    for pattern, replacement in SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    shared = media_parent()
    if shared is not None:
        text = text.replace("../shared", str(shared))
    mapped = lookup(MAPPED, text)
    if mapped:
        return mapped[0], mapped[1]
    return text, ""


def make_tools(work: Path) -> Path:
    """WORK/bin with ``seqbuild``, ``python`` and ``torchrun`` of this checkout's interpreter."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    for name, args in (("seqbuild", "-m seqbuild"), ("torchrun", "-m torch.distributed.run"), ("python", "")):
        path = bin_dir / name
        path.write_text("#!/bin/sh\nexec " + " ".join(filter(None, [f'"{py}"', args, '"$@"'])) + "\n")
        path.chmod(0o755)
    return bin_dir


def environment(work: Path) -> dict[str, str]:
    """The examples' environment: this checkout first on the path, no progress bars."""
    env = dict(os.environ)
    env["PATH"] = f"{make_tools(work)}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TQDM_DISABLE"] = "1"
    return env


def run_shell(command: str, work: Path, env: dict[str, str], timeout: float = TIMEOUT) -> tuple[int, str]:
    """Exit code and output of ``command`` run by bash in ``work``."""
    try:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return 124, out + f"\n(timed out after {timeout:.0f} s)"
    return proc.returncode, proc.stdout


def check_toml(text: str, work: Path) -> tuple[int, str]:
    """Load a TOML block as a pipeline file: 0, or 1 and the error."""
    from seqbuild.errors import SeqbuildError
    from seqbuild.pipeline.loading import load_pipeline

    path = work / "_block.toml"
    path.write_text(text + "\n")
    try:
        load_pipeline(path)
    except SeqbuildError as exc:
        return 1, str(exc)
    return 0, ""


def run_example(example: Example, work: Path, env: dict[str, str]) -> Result:
    """Run one example (or skip it) in ``work``."""
    text, note = prepared_text(example)
    reason = skip_reason(example, text)
    if reason:
        return Result(example, "skip", note=reason)
    hook = lookup(BEFORE, text)
    start = time.monotonic()
    if hook:
        hook(work)
    if example.kind == "toml":
        rc, out = check_toml(text, work)
    elif example.kind == "python":
        script = work / "_block.py"
        script.write_text(text + "\n")
        rc, out = run_shell(f"python {script.name}", work, env)
    else:
        rc, out = run_shell("\n".join([*example.env, text]), work, env)
    seconds = time.monotonic() - start
    ran = text if text != example.text else ""
    tail = "\n".join(out.strip().splitlines()[-6:]) if rc else ""
    return Result(example, "pass" if rc == 0 else "fail", seconds, ran, note, tail)


# ------------------------------------------------------------------------------------------------ stand-ins


def prepare_stand_ins(work: Path) -> None:
    """The files the examples name that the demo does not make under that name (STAND_INS)."""
    demo = work / "runs" / "demo"
    video = demo / "media" / "demo_broadcast.mp4"
    (work / "video1.mp4").symlink_to(video.resolve())
    (work / "videos").mkdir()
    (work / "videos" / "demo_copy.mp4").symlink_to(video.resolve())
    # A list of sources; it names video1.mp4 again, which ingest reads once.
    (work / "urls.txt").write_text(
        "# one source per line: paths (relative to this file) or URLs\nvideo1.mp4\n"
    )
    identities = demo / "media" / "identities"
    for name in ("astronaut", "tom_hanks"):
        shutil.copytree(identities / name, work / "data" / "lfw" / name)
    shutil.copytree(demo / "media" / "gallery", work / "optout")
    # Labelled aligned crops without another detection pass: the demo dataset's faces, one label per sequence.
    faces = pd.read_parquet(demo / "dataset" / "faces", columns=["seq_id", "image"])
    label_of = {seq: k for k, seq in enumerate(sorted(faces["seq_id"].unique()))}
    labels, images = [label_of[s] for s in faces["seq_id"]], list(faces["image"])
    from seqbuild.recordio import write_insightface_rec

    (work / "data" / "ms1m").mkdir(parents=True)
    write_insightface_rec(work / "data" / "ms1m" / "train.rec", list(zip(labels, images, strict=True)))
    by_label: dict[int, list[bytes]] = {}
    for label, image in zip(labels, images, strict=True):
        by_label.setdefault(label, []).append(image)
    groups = [v for v in by_label.values() if len(v) >= 2]
    bins, same = [], []
    for k, group in enumerate(groups):
        for i in range(min(len(group) - 1, 3)):
            bins += [group[i], group[i + 1]]
            same.append(True)
            other = groups[(k + 1 + i) % len(groups)]
            bins += [group[i], other[i % len(other)]]
            same.append(False)
    (work / "data" / "lfw.bin").write_bytes(pickle.dumps((bins, np.array(same, dtype=bool)), protocol=2))


def write_decisions(work: Path) -> None:
    """decisions.csv: keep one of runs/tv's searched sequences and remove another."""
    matches = pd.read_parquet(work / "runs" / "tv" / "dedup_overlap" / "matches")
    seqs = sorted(matches["seq_id"].unique())
    if len(seqs) < 2:
        raise RuntimeError("runs/tv has fewer than two searched sequences for decisions.csv")
    (work / "decisions.csv").write_text(f"seq_id,decision\n{seqs[0]},keep\n{seqs[-1]},remove\n")


BEFORE: dict[str, Callable[[Path], None]] = {"cat decisions.csv": write_decisions}
"""Preparation that needs an earlier example's output, run just before the example (by its text)."""


# ------------------------------------------------------------------------------------------------ main


def stale_keys(examples: list[Example]) -> list[str]:
    """Keys of MAPPED, SKIPPED and BEFORE that match no example (an example changed: look at it again)."""
    texts = set()
    for e in examples:
        text = e.text
        for pattern, replacement in SUBSTITUTIONS:
            text = pattern.sub(replacement, text)
        texts |= {command_key(e.text), command_key(text), " ".join(text.split())}
    return [k for k in [*MAPPED, *SKIPPED, *BEFORE] if k not in texts]


def main(argv: list[str] | None = None) -> int:
    """Run the examples; exit 1 when one fails or a table names an example that is no longer there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", default=str(REPO / "runs" / "docs-check"), help="work folder (emptied first)"
    )
    parser.add_argument(
        "--demo",
        default=None,
        help="an existing `seqbuild demo` run to use, linked as runs/demo: the examples change it (default: make one)",
    )
    parser.add_argument("--only", default=None, help="run only the examples whose text or name contains this")
    parser.add_argument("--list", action="store_true", help="list the examples and what would happen to each")
    args = parser.parse_args(argv)
    examples = extract_examples()
    stale = stale_keys(examples)
    for key in stale:
        print(f"error: tools/docs_check.py names an example that is not in the docs: {key!r}")
    if args.list:
        for e in examples:
            text, note = prepared_text(e)
            reason = skip_reason(e, text)
            state = f"skip: {reason}" if reason else f"run as: {text}" if note else "run"
            print(f"{e.name:<28} {e.key[:90]}\n{'':<28} {state}")
        return 1 if stale else 0

    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    (work / "runs").mkdir(parents=True)
    env = environment(work)
    (work / "pipelines").symlink_to(REPO / "pipelines")
    t0 = time.monotonic()
    print(f"docs check in {work}")
    if args.demo:
        (work / "runs" / "demo").symlink_to(Path(args.demo).resolve())
        print(f"demo: {args.demo} (linked as runs/demo)")
    else:
        rc, out = run_shell("seqbuild demo --out runs/demo --no-progress", work, env)
        print(f"demo: runs/demo made in {time.monotonic() - t0:.0f} s")
        if rc:
            print(out)
            return 1
    prepare_stand_ins(work)
    print("stand-ins:")
    for name, what in STAND_INS.items():
        print(f"  {name}: {what}")
    results = []
    for e in examples:
        if args.only and args.only not in e.text and args.only not in e.name:
            continue
        r = run_example(e, work, env)
        results.append(r)
        head = f"{r.status.upper():<4} {e.name:<26} {e.key[:100]}"
        print(head + (f"  ({r.seconds:.1f} s)" if r.status != "skip" else ""), flush=True)
        if r.status == "skip":
            print(f"       skipped: {r.note}")
        elif r.ran:
            print(f"       ran as: {' '.join(r.ran.split())[:160]}" + (f" ({r.note})" if r.note else ""))
        if r.tail:
            print("       | " + r.tail.replace("\n", "\n       | "))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    total = time.monotonic() - t0
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in {total:.0f} s")
    report = [
        {"example": r.example.name, "text": r.example.key, "status": r.status, "seconds": round(r.seconds, 1)}
        | ({"reason": r.note} if r.note else {})
        for r in results
    ]
    (work / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if counts["fail"] or stale else 0


if __name__ == "__main__":
    sys.exit(main())
