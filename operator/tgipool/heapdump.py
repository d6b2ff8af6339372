"""What the operator's heap holds, for `TGIPOOL_HEAPDUMP` (cli.py): malloc's view, Python objects by
type, and, while tracemalloc traces, the lines that allocated the most."""

from __future__ import annotations

import ctypes
import gc
import sys
import tracemalloc
from collections import Counter

_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS.split()]


def _malloc_lines() -> list[str]:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return ["malloc: no mallinfo2 (not glibc >= 2.33)"]
    fn.restype = _MallInfo2
    m = fn()
    mib = 2**20
    return [
        f"malloc: in use {m.uordblks / mib:.1f} MiB, free but held {m.fordblks / mib:.1f} MiB, "
        f"mmapped {m.hblkhd / mib:.1f} MiB (main arena + others: {m.arena / mib:.1f} MiB)"
    ]


def heap_report(top: int = 40) -> str:
    lines = _malloc_lines()
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        sizes[name] += sys.getsizeof(obj)
        counts[name] += 1
    lines.append(f"gc-tracked objects: {sum(counts.values())}, shallow {sum(sizes.values()) / 2**20:.1f} MiB")
    lines += [f"{size / 2**20:8.2f} MiB {counts[name]:9d} {name}" for name, size in sizes.most_common(top)]
    if tracemalloc.is_tracing():
        stats = tracemalloc.take_snapshot().statistics("lineno")
        lines.append(f"tracemalloc: {sum(s.size for s in stats) / 2**20:.1f} MiB")
        lines += [f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback}" for s in stats[:top]]
    return "\n".join(lines) + "\n"
