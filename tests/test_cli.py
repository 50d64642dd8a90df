"""The command line: every command is listed and has --help; errors are one line with a non-zero exit."""

from __future__ import annotations

from click.testing import CliRunner

from seqbuild._cli.main import cli

COMMANDS = [
    "ingest",
    "track",
    "embed",
    "clean",
    "dedup-overlap",
    "train",
    "eval",
    "run",
    "demo",
    "report",
    "gallery",
    "weights",
    "import-identities",
    "export",
]


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output, name


def test_every_command_has_help():
    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_config_error_is_one_line_with_exit_2(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text("[track]\nbogus = 1\n")
    result = CliRunner().invoke(cli, ["track", str(tmp_path / "run"), "--config", str(toml)])
    assert result.exit_code == 2, result.output
    assert "track.bogus" in result.output
    assert "Traceback" not in result.output
