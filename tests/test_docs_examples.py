"""The docs' examples: what `make docs-check` runs is found, its tables name real examples, and every command,
option and config key the docs name exists. (`make docs-check` runs the examples themselves.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs_check():
    spec = importlib.util.spec_from_file_location("docs_check", REPO / "tools" / "docs_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_check"] = module
    spec.loader.exec_module(module)
    return module


def test_examples_are_extracted_in_order_with_continuations_and_exports(docs_check, tmp_path):
    (tmp_path / "a.md").write_text(
        "text\n```bash\n# a comment\nexport X=1\nseqbuild run p.toml \\\n    --out r   # why\n\n"
        "echo $X\n```\n```\nnot a command\n```\n```python\nprint(1)\n```\n```toml\n[run]\n```\n"
    )
    examples = docs_check.extract_examples(["a.md"], tmp_path)
    assert [(e.kind, e.line) for e in examples] == [
        ("shell", 4),
        ("shell", 5),
        ("shell", 8),
        ("python", 14),
        ("toml", 17),
    ]
    assert examples[1].key == "seqbuild run p.toml --out r"  # joined, trailing comment dropped
    assert examples[2].env == ["export X=1"]


def test_the_tables_name_only_examples_that_are_in_the_docs(docs_check):
    examples = docs_check.extract_examples()
    assert len(examples) > 40
    assert docs_check.stale_keys(examples) == []
    # every README example of the stage chain runs (none is skipped)
    chain = [e for e in examples if e.doc == "README.md" and e.key.startswith("seqbuild ingest")]
    assert chain and all(docs_check.skip_reason(e, docs_check.prepared_text(e)[0]) is None for e in chain)
    # a skipped example says why, and is a GPU, cluster, absent-data or test-suite case
    for e in examples:
        reason = docs_check.skip_reason(e, docs_check.prepared_text(e)[0])
        assert reason is None or reason.startswith(("GPU", "cluster", "absent data", "the test suite")), (
            e.name
        )


def test_every_command_option_and_key_the_docs_name_exists(docs_check):
    commands = docs_check.named_commands()
    assert len(commands) > 100
    problems = [(where, p) for where, text in commands for p in docs_check.command_problems(text)]
    problems += [
        (where, p) for where, key in docs_check.named_settings() for p in docs_check.setting_problems(key)
    ]
    problems += [
        (where, p) for where, flag in docs_check.named_flags() for p in docs_check.flag_problems(flag)
    ]
    assert problems == []


def test_the_static_checks_catch_what_does_not_exist(docs_check):
    assert docs_check.command_problems("seqbuild dedup-overlap RUN --weights x.pt") == [
        "dedup-overlap has no option --weights"
    ]
    assert docs_check.command_problems("seqbuild galery build SRC") == ["no command 'galery'"]
    assert docs_check.command_problems("seqbuild run p.toml --set ingest.no_such_key=1") == [
        "no config key ingest.no_such_key"
    ]
    assert docs_check.command_problems("seqbuild ingest v.mp4 --out R && seqbuild track R --nope") == [
        "track has no option --nope"
    ]
    assert docs_check.command_problems("seqbuild gallery build SRC --out G --model facenet") == []
    assert docs_check.flag_problems("--retry-failed") == [] and docs_check.flag_problems("--retry") != []
