"""Hand freed heap memory back to the kernel between work items, so that stages do not stack up peaks.

A stage's work on one video frees most of what it allocated, but glibc malloc keeps the freed blocks
inside the heap for reuse. The next video (or the next stage, in the same process) allocates blocks of
other sizes, which do not fit those holes, so the heap grows and the peak resident set of a long chain
is the sum of its stages' leftovers rather than the largest of them. ``malloc_trim(0)`` returns every
free page of every arena; it is called once per work item, so its cost does not matter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache
from typing import Any


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel; True when the C library could do it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def call_and_release(fn: Callable[[Any], Any], item: Any) -> Any:
    """``fn(item)``, then :func:`release_free_memory` (top-level, so that it pickles for any executor)."""
    try:
        return fn(item)
    finally:
        release_free_memory()
