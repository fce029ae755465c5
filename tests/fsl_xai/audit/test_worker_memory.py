"""A worker process keeps freed memory for reuse (fsl_xai.audit.chunks.keep_freed_memory): a large
block allocated again and again is mapped (and its pages faulted in) once, not every time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# in a fresh process: the settings are process-wide and stay
SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from fsl_xai.audit.chunks import keep_freed_memory

    def faults_of_repeated_blocks():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(8):
            block = np.ones(80 << 20, dtype=np.uint8)  # 80 MiB: above glibc's largest mmap threshold
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_repeated_blocks()
    default = faults_of_repeated_blocks()
    took = keep_freed_memory()
    assert keep_freed_memory() == took  # once per process
    faults_of_repeated_blocks()
    kept = faults_of_repeated_blocks()
    print(took, default, kept)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_keep_freed_memory_reuses_large_blocks() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    took, default, kept = done.stdout.split()
    if took != "True":
        pytest.skip("not glibc: keep_freed_memory leaves malloc as it is")
    # by default each block is mapped and faulted in afresh: at least one fault per 2 MiB (huge) page
    assert int(default) >= 8 * (80 << 20) // (2 << 20)
    assert int(kept) * 4 < int(default)  # the blocks reuse the kept heap
