"""`metamodal.memory.release_memory`: freed heap memory goes back to the operating system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from metamodal.memory import _malloc_trim, release_memory

glibc = pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")


@glibc
def test_freed_heap_blocks_leave_the_resident_memory() -> None:
    # 3,000 blocks of 64 KiB come from the heap (below glibc's mmap threshold); all but the last
    # are freed, which the heap keeps (the last block pins its top): about 190 MB stay resident
    # until release_memory gives them back
    script = textwrap.dedent("""
        from metamodal.memory import release_memory

        def resident_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024

        blocks = [bytearray(b"x" * 65536) for _ in range(3000)]
        last = blocks[-1]
        del blocks
        before = resident_mb()
        assert release_memory()
        print(before - resident_mb())
    """)
    freed = float(subprocess.run([sys.executable, "-c", script], check=True,
                                 capture_output=True, text=True).stdout)
    assert freed > 100, f"only {freed:.0f} MB returned"


def test_release_memory_says_whether_it_could() -> None:
    assert release_memory() is (_malloc_trim() is not None)
