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


def _commands(group=cli, prefix=()):
    """Every leaf command with its path of names."""
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_help_texts_say_what_the_options_take():
    import click

    progress = {("train",), ("gallery", "build"), ("import-identities",), ("eval",), ("run",), ("demo",)}
    for path, command in _commands():
        options = {name: p for p in command.params for name in (*p.opts, *p.secondary_opts)}
        if "--set" in options:
            assert "repeatable" in options["--set"].help, path
        for param in command.params:
            if isinstance(param.type, click.Choice) and param.default is not None and not param.multiple:
                assert param.default in param.type.choices, (path, param.name)  # [default: x] is a choice
        if "--log-level" in options:
            assert options["--log-level"].show_default
        if path in progress or "--workers" in options:  # every command with a progress bar
            assert "--no-progress" in options, path
    after = CliRunner().invoke(cli, ["export", "--help"], terminal_width=200).output
    assert "--after [track|clean|dedup-overlap|dedup_overlap]" in after


def test_version_says_where_it_comes_from():
    from seqbuild import __version__

    out = CliRunner().invoke(cli, ["--version"]).output.strip()
    assert out.startswith(f"seqbuild {__version__} (") and "seqbuild" in out.split("(", 1)[1]
