"""What the operator's heap holds, for `TGIPOOL_HEAPDUMP` (cli.py): malloc's view, Python objects by
type, and, while tracemalloc traces, the lines that allocated the most."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

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


def _smaps_lines(path: str = "/proc/self/smaps") -> list[str]:
    """Where the resident pages are: the malloc heap, anonymous maps (pymalloc's arenas, thread stacks,
    malloc's other arenas), and files (the interpreter and extension modules)."""
    rss: Counter[str] = Counter()
    kind = ""
    try:
        with Path(path).open() as f:
            for line in f:
                head = line.split()
                # A mapping's first line: range perms offset dev inode [path].
                if "-" in head[0] and ":" not in head[0]:
                    name = head[5] if len(head) > 5 else ""
                    if name.startswith("/"):
                        kind = "files"
                    elif name:
                        kind = name  # [heap], [stack], [vdso] ...
                    else:
                        kind = "anonymous"
                elif head[0] == "Rss:":
                    rss[kind] += int(head[1])
    except OSError:
        return ["smaps: not readable"]
    parts = ", ".join(f"{k} {v / 1024:.1f}" for k, v in rss.most_common() if v >= 1024)
    return [f"resident {sum(rss.values()) / 1024:.1f} MiB: {parts}"]


def _pymalloc_lines() -> list[str]:
    """pymalloc's arenas (small objects; mmapped, so outside malloc's numbers): held vs in use."""
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)  # the stats go to the C stderr
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    held = re.search(r"^(\d+) arenas \* (\d+) bytes/arena", text, re.M)
    used = re.search(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", text, re.M)
    if held is None or used is None:
        return ["pymalloc: no stats"]
    arenas, size = int(held[1]), int(held[2])
    live = int(used[1].replace(",", ""))
    return [
        f"pymalloc: {arenas} arenas ({arenas * size / 2**20:.0f} MiB) hold {live / 2**20:.1f} MiB "
        "of live small objects"
    ]


def heap_report(top: int = 40) -> str:
    lines = _smaps_lines() + _pymalloc_lines() + _malloc_lines()
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        sizes[name] += sys.getsizeof(obj)
        counts[name] += 1
    lines.append(f"gc-tracked objects: {sum(counts.values())}, shallow {sum(sizes.values()) / 2**20:.1f} MiB")
    lines += [f"{size / 2**20:8.2f} MiB {counts[name]:9d} {name}" for name, size in sizes.most_common(top)]
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")
        lines.append(f"tracemalloc: {sum(s.size for s in stats) / 2**20:.1f} MiB")
        lines += [f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback}" for s in stats[:top]]
        if tracemalloc.get_traceback_limit() > 1:  # where the largest holders were allocated from
            for s in snapshot.statistics("traceback")[:5]:
                lines.append(f"{s.size / 2**20:8.2f} MiB {s.count:9d} allocated at:")
                lines += [f"    {frame}" for frame in s.traceback.format()]
    return "\n".join(lines) + "\n"
