"""Freed heap memory goes back to the kernel between work items."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from seqbuild.memory import _malloc_trim, call_and_release, release_free_memory


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_release_returns_freed_heap_pages_pinned_by_live_blocks():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 96 * 1024, 800  # below glibc's mmap threshold: these come from the heap
    big, pins = [], []
    for _ in range(count):
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)  # make the pages resident
        big.append(p)
        pins.append(libc.malloc(64))  # a live block after each one keeps the heap from shrinking
    for p in big:
        libc.free(p)
    before = _rss_kib()
    assert release_free_memory()
    after = _rss_kib()
    for p in pins:
        libc.free(p)
    freed_mib = (before - after) / 1024
    assert freed_mib > 0.5 * size * count / 2**20, f"only {freed_mib:.1f} MiB went back to the kernel"


def test_call_and_release_returns_the_result_and_keeps_errors():
    assert call_and_release(lambda x: x * 2, 21) == 42
    with pytest.raises(ValueError, match="bad item"):
        call_and_release(lambda x: (_ for _ in ()).throw(ValueError(f"bad item {x}")), 1)
