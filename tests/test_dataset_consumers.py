"""The dataset's consumers (the trainer, pandas, Hugging Face `datasets`) read a run that holds a video
without any surviving face, whose dataset files are empty."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_train_data import make_final_dataset, make_identity_folder

from seqbuild._cli.main import cli
from seqbuild.config import build
from seqbuild.schema import FACES, REMOVALS, SEQUENCES
from seqbuild.storage import read_table, write_table
from seqbuild.train.config import TrainConfig
from seqbuild.train.data import read_sequences


@pytest.fixture
def run_with_an_empty_video(tmp_path):
    """A final dataset with one video of faces and one video (a slate, a cartoon) that kept none."""
    dataset = make_final_dataset(tmp_path / "run", sequences=3, per_sequence=4)
    for table, schema in (("faces", FACES), ("sequences", SEQUENCES), ("removals", REMOVALS)):
        write_table(dataset / table / "000000000000.parquet", schema.empty_table(), schema, table)
    return dataset


def test_empty_tables_have_their_schema_and_no_row_group(run_with_an_empty_video):
    path = run_with_an_empty_video / "faces" / "000000000000.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups == 0
    assert read_table(path, FACES).schema.equals(FACES) and read_table(path).num_rows == 0
    assert len(pd.read_parquet(run_with_an_empty_video / "faces")) == 12


def test_hugging_face_datasets_loads_the_faces(run_with_an_empty_video):
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in (run_with_an_empty_video / "faces").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 12 and "image" in ds.column_names


def test_training_reads_the_sequences_and_steps(run_with_an_empty_video, tmp_path):
    seqs = read_sequences([run_with_an_empty_video.parent])
    assert len(seqs.names) == 3 and len(seqs.labels) == 12
    make_identity_folder(tmp_path / "src", identities=3, per_identity=4)
    res = CliRunner().invoke(
        cli, ["import-identities", str(tmp_path / "src"), "--out", str(tmp_path / "ids"), "--aligned"]
    )
    assert res.exit_code == 0, res.output
    from seqbuild.train.trainer import run_train

    cfg = build(
        TrainConfig,
        {
            "identities": str(tmp_path / "ids"),
            "sequences": [str(run_with_an_empty_video.parent)],
            "backbone": "tiny",
            "embedding_dim": 8,
            "image_size": 36,
            "crop_size": 32,
            "batch_size": 4,
            "workers": 0,
            "device": "cpu",
            "max_steps": 1,
            "out": str(tmp_path / "ckpt"),
            "tensorboard": False,
        },
    )
    summary = run_train(cfg, progress=False)
    assert summary["steps"] == 1 and (tmp_path / "ckpt" / "last.pt").is_file()
