"""`seqbuild run` on a local Ray cluster against the local executor: wall time and identical datasets.

Four real videos (dev_broadcast.mp4, talk_d6, talk_d9, hamilton_stage: 109 s of video, 480p to 720p)
go through the whole chain (pipelines/e2e.toml, the shared gallery built on the fly) three times, each
``seqbuild run`` in its own process and run folder:

- ``local-1``: the local executor, one video at a time (the default);
- ``local-2``: the local executor with ``workers = 2`` for every stage (a process pool);
- ``local-1-threads1`` (optional): ``local-1`` with one BLAS/OpenMP thread, as Ray gives a 1-CPU task
  (``OMP_NUM_THREADS=1``): the same float rounding as the Ray run;
- ``ray-2``: a Ray cluster started here as a user would start a head node
  (``ray start --head --num-cpus 2 --block``, its own port and temp folder), and
  ``seqbuild run ... --executor ray --ray-address 127.0.0.1:PORT`` joining it: one Ray task per video,
  two at a time. The cluster's start-up is timed apart from the run; it is stopped by its process id.

The final datasets (``RUN/dataset/{faces,sequences,removals}``) are compared row for row, every column
(face crops and embeddings included), after sorting by id. Load average before and after each run is
recorded: the machine is shared, and on 2 cores two workers can at best halve the time.

Run: ``make bench-ray`` (= ``python -m benchmarks.bench_ray [--media DIR] [--out DIR] [--runs ...]``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ("dev_broadcast.mp4", "clips/talk_d6.mp4", "clips/talk_d9.mp4", "clips/hamilton_stage.mp4")
STAGE_SECTIONS = ("ingest", "track", "embed", "clean", "dedup_overlap")
PORT = 6391


def media_dir(arg: str) -> Path | None:
    """--media, SEQBUILD_MEDIA or ../shared/media."""
    path = Path(arg or os.environ.get("SEQBUILD_MEDIA") or REPO.parent / "shared" / "media")
    return path if path.is_dir() else None


def env() -> dict[str, str]:
    """The environment of every child: this checkout's seqbuild first on the path; Ray's token
    authentication on for the head node and every client alike (recent Ray turns it on for
    ``ray start --head``, and a client without it is refused)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def seqbuild_run(run: Path, media: Path, extra: list[str], threads: str = "") -> dict:
    """``seqbuild run pipelines/e2e.toml`` on the four videos into ``run``; wall time and stage times."""
    inputs = json.dumps([str(media / v) for v in VIDEOS])
    gallery = json.dumps([str(media / "gallery")])
    cmd = [sys.executable, "-m", "seqbuild", "run", "pipelines/e2e.toml", "--out", str(run),
           "--no-progress", "--set", f"ingest.inputs={inputs}",
           "--set", f"dedup_overlap.galleries={gallery}", *extra]  # fmt: skip
    before = os.getloadavg()
    t0 = time.perf_counter()
    child_env = env()
    if threads:  # what a Ray worker gets for a 1-CPU task
        child_env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.run(cmd, cwd=REPO, env=child_env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stages = {}
    for stage in STAGE_SECTIONS:
        state = run / "_pipeline" / f"{stage}.json"
        if state.is_file():
            record = json.loads(state.read_text())
            stages[stage] = round(float(record.get("seconds", 0.0)), 1)
    return {
        "wall_s": wall,
        "stages_s": stages,
        "exit": proc.returncode,
        "error": proc.stderr.strip().splitlines()[-3:] if proc.returncode else [],
        "loadavg_before": [round(x, 2) for x in before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def start_cluster(temp: Path) -> tuple[subprocess.Popen, float]:
    """A one-node Ray cluster with 2 CPUs (head node, in the foreground of its own process); the time
    until it answers."""
    ray = Path(sys.executable).with_name("ray")
    temp.mkdir(parents=True, exist_ok=True)
    cmd = [str(ray), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0", "--port", str(PORT),
           "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{PORT}"
    while time.perf_counter() - t0 < 180:
        probe = subprocess.run(
            [str(ray), "status", "--address", address], env=env(), capture_output=True, text=True
        )
        if probe.returncode == 0 and "CPU" in probe.stdout:
            return proc, time.perf_counter() - t0
        if proc.poll() is not None:
            break
        time.sleep(1.0)
    stop_cluster(proc)
    raise SystemExit("the Ray head node did not start")


def stop_cluster(proc: subprocess.Popen) -> None:
    """Stop the head node started by :func:`start_cluster` (``ray start --block`` stops what it started)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dataset_tables(run: Path) -> dict:
    """The final dataset's tables, each sorted by its ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    keys = {"faces": ["face_id"], "sequences": ["seq_id"], "removals": ["stage", "face_id", "reason"]}
    for name, key in keys.items():
        files = sorted((run / "dataset" / name).glob("*.parquet"))
        tables = [pq.read_table(f).replace_schema_metadata(None) for f in files]
        table = pa.concat_tables(tables) if tables else None
        out[name] = table.sort_by([(k, "ascending") for k in key]) if table is not None else None
    return out


def compare(a: Path, b: Path) -> dict:
    """Whether two runs' datasets are equal row for row in every column (and which columns differ)."""
    ta, tb = dataset_tables(a), dataset_tables(b)
    res = {}
    for name in ta:
        x, y = ta[name], tb[name]
        if x is None or y is None:
            res[name] = {"equal": x is None and y is None}
            continue
        differ = [
            c for c in x.column_names if x.num_rows != y.num_rows or not x.column(c).equals(y.column(c))
        ]
        res[name] = {"rows": [x.num_rows, y.num_rows], "equal": not differ, "columns_differing": differ}
    return res


def main() -> None:
    """Run the chosen configurations, compare the datasets, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", default="")
    ap.add_argument("--out", default="/tmp/seqbuild-bench-ray")
    ap.add_argument("--runs", default="local-1,local-2,ray-2,local-1-threads1")
    args = ap.parse_args()
    media = media_dir(args.media)
    if media is None:
        print("skipped: no media (set SEQBUILD_MEDIA or place ../shared/media beside the checkout)")
        return
    out = Path(args.out)
    results: dict = {"cores": os.cpu_count(), "videos": list(VIDEOS)}
    for name in args.runs.split(","):
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        if name == "local-1":
            results[name] = seqbuild_run(run, media, [])
        elif name == "local-1-threads1":
            results[name] = seqbuild_run(run, media, [], threads="1")
        elif name == "local-2":
            sets = [x for s in STAGE_SECTIONS for x in ("--set", f"{s}.workers=2")]
            results[name] = seqbuild_run(run, media, sets)
        elif name == "ray-2":
            proc, startup = start_cluster(Path("/tmp") / f"ray-sqb-{os.getpid()}")
            try:
                results[name] = seqbuild_run(
                    run, media, ["--executor", "ray", "--ray-address", f"127.0.0.1:{PORT}"]
                )
            finally:
                stop_cluster(proc)
            results[name]["cluster_start_s"] = startup
        print(f"[{name}] {json.dumps(results[name])}", file=sys.stderr, flush=True)
    names = [n for n in args.runs.split(",") if n in results and results[n]["exit"] == 0]
    if "local-1" in names:
        base = results["local-1"]["wall_s"]
        for n in names:
            results[n]["speedup_vs_local_1"] = base / results[n]["wall_s"]
            if n != "local-1":
                results[n]["dataset_vs_local_1"] = compare(out / "local-1", out / n)
        if "ray-2" in names and "local-1-threads1" in names:
            results["ray-2"]["dataset_vs_local_1_threads1"] = compare(out / "local-1-threads1", out / "ray-2")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
