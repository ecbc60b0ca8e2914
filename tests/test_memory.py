"""`metamodal.memory.release_memory`: freed heap memory goes back to the operating system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from metamodal.memory import _malloc_trim, release_memory

glibc = pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")

PREAMBLE = textwrap.dedent("""
    import gc
    from metamodal.memory import release_memory

    def resident_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
""")


def _printed(body: str) -> list[float]:
    """The numbers ``body`` prints, run after `PREAMBLE` in a fresh interpreter (whose heap
    holds nothing of this test process)."""
    script = PREAMBLE + textwrap.dedent(body)
    return [float(x) for x in subprocess.run([sys.executable, "-c", script], check=True,
                                             capture_output=True, text=True).stdout.split()]


@glibc
def test_freed_heap_blocks_leave_the_resident_memory() -> None:
    # 3,000 blocks of 64 KiB come from the heap (below glibc's mmap threshold); all but the last
    # are freed, which the heap keeps (the last block pins its top): about 190 MB stay resident
    # until release_memory gives them back
    [freed] = _printed("""
        blocks = [bytearray(b"x" * 65536) for _ in range(3000)]
        last = blocks[-1]
        del blocks
        before = resident_mb()
        assert release_memory()
        print(before - resident_mb())
    """)
    assert freed > 100, f"only {freed:.0f} MB returned"


@glibc
def test_memory_held_by_a_reference_cycle_needs_the_collection() -> None:
    # a cycle keeps ~190 MB of heap blocks alive after its last name is gone: the trim alone
    # cannot return them, the collection first frees them
    kept, freed = _printed("""
        gc.disable()
        class Holder:
            pass
        holder = Holder()
        holder.me = holder
        holder.blocks = [bytearray(b"x" * 65536) for _ in range(3000)]
        pin = bytearray(b"x" * 65536)
        del holder
        before = resident_mb()
        release_memory(collect=False)
        kept = before - resident_mb()
        release_memory()
        print(kept, before - resident_mb())
    """)
    assert kept < 20 and freed > 100, (kept, freed)


def test_release_memory_says_whether_it_could() -> None:
    assert release_memory() is (_malloc_trim() is not None)
