"""Giving the heap memory that a finished phase freed back to the operating system.

glibc's allocator keeps freed blocks in its heap for reuse. A training step allocates and frees
many activations of different sizes, so after a training or a validation the heap holds
hundreds of megabytes of free, fragmented blocks that count in the process's resident memory
and are not given back on their own. `release_memory` asks glibc to return them
(``malloc_trim``); on other C libraries and systems it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_memory(*, collect: bool = True) -> bool:
    """Return the heap's free memory to the operating system.

    Args:
        collect: first collect garbage, so that what reference cycles still hold is freed
            too. The trim alone takes a fraction of a millisecond; a collection tens to
            hundreds of milliseconds in a process holding many objects.

    Returns:
        True when the C library could be asked to (glibc), False where it cannot.

    Example:
        >>> isinstance(release_memory(), bool)
        True
    """
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
