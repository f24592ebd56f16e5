"""glibc malloc settings for processes that move bulk data in 256 KiB buffers.

An SSH packet, a websocket message and a tunnel frame are each up to 256 KiB,
and every hop allocates and frees several per packet. glibc serves blocks above
its mmap threshold (128 KiB, raised on the fly up to the largest block freed)
with fresh ``mmap`` pages, and gives the top of the heap back to the kernel once
more than twice that is free: so a bulk transfer keeps faulting in and zeroing
new pages. Profiled (``perf``) during ``tsh ssh node 'cat > /dev/null'``: page
faults and ``memset`` were 5-8% of each process. :func:`tune` fixes both
thresholds; the cost is at most ``TRIM_THRESHOLD`` of freed heap kept resident.

Only glibc has ``mallopt``; elsewhere (musl, macOS) :func:`tune` does nothing.
"""

from __future__ import annotations

import os
import sys

#: blocks above this come from mmap (glibc's M_MMAP_THRESHOLD; 32-bit glibc takes
#: at most 512 KiB, still above a 256 KiB packet)
MMAP_THRESHOLD = 4 << 20
MMAP_THRESHOLD_32BIT = 512 << 10
#: free memory at the top of the heap above this goes back to the kernel (M_TRIM_THRESHOLD)
TRIM_THRESHOLD = 8 << 20
#: ``REMOTELER_MALLOC_TUNE=0`` keeps glibc's own dynamic thresholds
ENV = "REMOTELER_MALLOC_TUNE"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune() -> bool:
    """Apply the thresholds; True if this C library took both."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV) == "0":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mmap = MMAP_THRESHOLD if ctypes.sizeof(ctypes.c_void_p) == 8 else MMAP_THRESHOLD_32BIT
    took_mmap = bool(mallopt(_M_MMAP_THRESHOLD, mmap))
    took_trim = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return took_mmap and took_trim
