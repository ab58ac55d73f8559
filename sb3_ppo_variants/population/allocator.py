"""Keep freed memory in the process, so that a population's large temporaries do not fault in fresh pages each step.

A K=64 update allocates and frees many activation tensors of a few MB each (64 members x 256 rows x 64 units is 4 MB
of float32). glibc's ``malloc`` serves them from ``mmap`` or hands the freed top of its heap back to the kernel
(``M_TRIM_THRESHOLD``, by default twice the dynamic ``mmap`` threshold), so the next allocation of the same size
faults in zeroed pages again: 0.5-0.6 million page faults and ~0.9 s of system time in a 6 s K=64 CartPole ``learn()``
measured here (2026-12-02). With ``mmap`` kept for allocations above 32 MB and the heap trimmed only beyond 1 GB free,
the same run faulted 0.09 million times (most of them at import) and took 8-14% less wall time (5 paired runs).

PyTorch's CPU performance guide gives the same advice through another allocator (jemalloc or tcmalloc with
``LD_PRELOAD``); :func:`retain_freed_memory` reaches glibc's own public switch, ``mallopt``, so nothing needs
installing. Where the C library has no ``mallopt`` (macOS, musl's stub) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

#: allocations above this many bytes still get their own mapping (glibc's largest allowed on 64-bit systems)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: the heap's free top is handed back to the kernel only beyond this many bytes
TRIM_THRESHOLD = 1024 * 1024 * 1024
# mallopt's parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`)
    for this process, once; :class:`~sb3_ppo_variants.population.Population` calls it for populations on the CPU.

    Both must be set together: a fixed trim threshold alone also fixes the ``mmap`` threshold at its 128 kB default,
    and every activation tensor is then mapped and unmapped (3.9 million faults in the run above, 60% slower).

    :return: whether the settings are in force (False where the C library has no ``mallopt``)
    """
    global _applied
    if _applied is None:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            _applied = False
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
