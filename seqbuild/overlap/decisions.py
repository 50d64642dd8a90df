"""A person's decisions on sequences (``seqbuild dedup-overlap RUN --decisions FILE.csv``).

The file is CSV with a header: ``seq_id`` and ``decision`` (``keep`` or ``remove``), and optionally
``decided_by`` (who decided; else ``dedup_overlap.decided_by`` names them for the whole file). A
decision overrides the automatic outcome of its sequence and is recorded in the removals (``decided_by``)
and in ``RUN/dedup_overlap/matches``. Applying the same file again gives the same dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import config_hash
from ..errors import InputError

DECISIONS = ("keep", "remove")


def read_decisions(path: str | Path, decided_by: str = "") -> dict[str, tuple[str, str]]:
    """``seq_id -> (decision, person)`` from a decisions CSV (InputError naming the file and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: decisions file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable decisions file ({exc})") from None
    rows = list(csv.reader(text.splitlines()))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty decisions file (expected a header: seq_id,decision[,decided_by])")
    header = [c.strip().lower() for c in rows[0]]
    if "seq_id" not in header or "decision" not in header:
        raise InputError(f"{path}: the header must name seq_id and decision columns, got {rows[0]}")
    i_seq, i_dec = header.index("seq_id"), header.index("decision")
    i_by = header.index("decided_by") if "decided_by" in header else None
    out: dict[str, tuple[str, str]] = {}
    for line, row in enumerate(rows[1:], 2):
        cells = [c.strip() for c in row] + [""] * len(header)
        seq, decision = cells[i_seq], cells[i_dec].lower()
        person = (cells[i_by] if i_by is not None else "") or decided_by
        if not seq:
            raise InputError(f"{path}:{line}: no seq_id")
        if decision not in DECISIONS:
            raise InputError(f"{path}:{line}: decision {cells[i_dec]!r} for {seq} (expected keep or remove)")
        if not person:
            raise InputError(f"{path}:{line}: who decided? add a decided_by column or pass --decided-by NAME")
        if person == "auto":
            raise InputError(f"{path}:{line}: 'auto' is reserved for automatic decisions; name the person")
        if seq in out and out[seq] != (decision, person):
            raise InputError(f"{path}:{line}: {seq} is decided twice, differently")
        out[seq] = (decision, person)
    return out


def check_known(decisions: dict[str, tuple[str, str]], known: set[str], path: str | Path) -> None:
    """InputError naming the sequences of ``decisions`` that the run does not have (nothing is applied)."""
    unknown = sorted(set(decisions) - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InputError(
            f"{path}: {len(unknown)} sequence(s) not in this run's searched sequences: {shown};"
            " nothing was applied"
        )


def decisions_hash(decisions: dict[str, tuple[str, str]], seq_ids: list[str]) -> str:
    """Hash of the decisions that concern ``seq_ids`` (a video's sequences): its output depends on them."""
    return config_hash({s: list(decisions[s]) for s in sorted(seq_ids) if s in decisions})
