"""Run a Python program (under tracemalloc unless ``--light``); write a memory report on SIGUSR1.

Used by ``benchmarks/operator.py --tracemalloc`` to see, side by side, where our operator and the
no-op kopf operator keep their memory after a burst:

    python benchmarks/memtrace.py REPORT_PREFIX -m paddle_operator.cli run --namespace NS
    python benchmarks/memtrace.py REPORT_PREFIX -m kopf run --standalone benchmarks/noop_operator.py
    kill -USR1 <pid>    # writes REPORT_PREFIX.<n>.json, n = 1, 2, ...
    python benchmarks/memtrace.py --light REPORT_PREFIX ...   # no tracemalloc: at full speed

Every report has the allocators' own accounts: pymalloc's (arenas mapped against bytes in live
blocks, from ``sys._debugmallocstats``) and glibc's (``mallinfo2``: heap bytes in use against free
bytes kept), so RSS kept after a burst can be split into live objects and freed memory the allocators
hold; plus object counts by type, asyncio tasks and threads.

Under tracemalloc a report also has live traced bytes grouped by who allocated them (``ours`` when
any frame of the traceback is in paddle_operator, else the package of the innermost frame outside the
standard library, else the standard-library module) and the top tracebacks. tracemalloc itself
roughly doubles the memory and slows the program: RSS figures taken under it are not comparable with
a plain run.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

FRAMES = 12
STDLIB = sysconfig.get_paths()["stdlib"]


def _package(filename: str) -> str:
    if "paddle_operator" in filename:
        return "ours"
    if "site-packages" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(STDLIB):
        rest = filename[len(STDLIB) :].lstrip("/")
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    return "other:" + Path(filename).name


def owner(tb: tracemalloc.Traceback) -> str:
    """Who keeps this allocation: ours if our code is on the stack, else the innermost package."""
    names = [_package(f.filename) for f in tb]  # most recent call first
    if "ours" in names:
        return "ours"
    for n in names:
        if not n.startswith("stdlib:") and not n.startswith("other:"):
            return n
    return names[0] if names else "?"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]


def glibc_accounts() -> dict[str, float]:
    """glibc's view (all arenas): bytes obtained with brk/mmap for the heap, in use, free but kept."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    mi = fn()
    mb = 2**20
    return {
        "heap_mb": round(mi.arena / mb, 1),  # sbrk heap + the other arenas' heaps
        "in_use_mb": round(mi.uordblks / mb, 1),
        "free_kept_mb": round(mi.fordblks / mb, 1),
        "top_trimmable_mb": round(mi.keepcost / mb, 1),
        "mmapped_mb": round(mi.hblkhd / mb, 1),  # large blocks mapped one by one
        "mmapped_blocks": mi.hblks,
    }


def pymalloc_accounts() -> dict[str, float]:
    """pymalloc's view from ``sys._debugmallocstats`` (it writes to fd 2, so fd 2 is borrowed)."""
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    wanted = {
        "# arenas allocated current": "arenas",
        "# bytes in allocated blocks": "live_bytes",
        "# bytes in available blocks": "free_block_bytes",
        "Total": "total_bytes",  # the first Total: arenas; the second is the arena map's
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        label, _, value = line.rpartition("=")
        label = label.strip()
        if label in wanted and wanted[label] not in out and value.strip().replace(",", "").isdigit():
            out[wanted[label]] = int(value.strip().replace(",", ""))
    mb = 2**20
    return {
        "arenas": out.get("arenas", 0),
        "mapped_mb": round(out.get("total_bytes", 0) / mb, 1),  # arenas (1 MiB each) + bookkeeping
        "live_mb": round(out.get("live_bytes", 0) / mb, 1),
        "free_in_pools_mb": round(out.get("free_block_bytes", 0) / mb, 1),
    }


def report(prefix: str, n: int) -> None:
    """Write one report (called from the SIGUSR1 handler, in the main thread)."""
    t0 = time.monotonic()
    gc.collect()
    traced = tracemalloc.is_tracing()
    by_owner: collections.Counter[str] = collections.Counter()
    top = []
    if traced:
        stats = tracemalloc.take_snapshot().statistics("traceback")
        for s in stats:
            by_owner[owner(s.traceback)] += s.size
        for s in stats[:40]:
            frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in s.traceback[:8]]
            top.append(
                {"kb": round(s.size / 1024, 1), "count": s.count, "owner": owner(s.traceback), "frames": frames}
            )
    types: collections.Counter[str] = collections.Counter(type(o).__name__ for o in gc.get_objects())
    try:
        import asyncio

        tasks = asyncio.all_tasks(asyncio.get_event_loop_policy().get_event_loop())
        task_names: collections.Counter[str] = collections.Counter(
            t.get_name().split(" for ")[0].split("(")[0] for t in tasks
        )
    except Exception:  # noqa: BLE001 - diagnostics only
        task_names = collections.Counter()
    traced_now, peak = tracemalloc.get_traced_memory()
    rss = next(
        int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS")
    )
    out: dict[str, Any] = {
        **(
            {
                "traced_mb": round(traced_now / 2**20, 1),
                "traced_peak_mb": round(peak / 2**20, 1),
                "by_owner_mb": {k: round(v / 2**20, 2) for k, v in by_owner.most_common()},
            }
            if traced
            else {}
        ),
        "rss_mb": round(rss / 1024, 1),
        "tracemalloc": traced,
        "pymalloc": pymalloc_accounts(),
        "glibc": glibc_accounts(),
        "allocated_blocks": sys.getallocatedblocks(),
        "objects": dict(types.most_common(25)),
        "asyncio_tasks": dict(task_names.most_common(10)),
        "threads": threading.active_count(),
        "top": top,
        "report_s": 0.0,
    }
    out["report_s"] = round(time.monotonic() - t0, 2)
    path = Path(f"{prefix}.{n}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.rename(path)  # readers wait for the final name


def main() -> None:
    """``memtrace.py [--light] PREFIX -m module args...`` or ``... PREFIX script.py args...``."""
    light = sys.argv[1] == "--light"
    prefix, rest = sys.argv[1 + light], sys.argv[2 + light :]
    count = [0]

    def on_signal(_sig: int, _frame: Any) -> None:
        count[0] += 1
        report(prefix, count[0])

    # Imports first, untraced: under tracemalloc, importing kopf (and the kubernetes client it loads)
    # takes minutes on a busy machine. What they hold is in the idle RSS, the same in both processes.
    for module in ("kopf", *([rest[1]] if rest[0] == "-m" else [])):
        __import__(module)
    if rest[0] == "-m" and rest[1] == "paddle_operator.cli":
        __import__("paddle_operator.handlers")
    if not light:
        tracemalloc.start(FRAMES)
    Path(f"{prefix}.started").write_text(str(os.getpid()))
    signal.signal(signal.SIGUSR1, on_signal)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
