"""The dataset report of a run: one self-contained HTML page with counts, distributions, contact sheets."""

from .build import collect_counts, write_report

__all__ = ["collect_counts", "write_report"]
