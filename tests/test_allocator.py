"""`train.common.reuse_freed_memory`: after it, a large tensor comes from glibc's heap (reused across steps)
instead of a fresh mmap; `ALIGNKIT_REUSE_MEMORY=0` leaves malloc alone. Each case runs in its own process,
since the setting is process-wide."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="a glibc setting")

PROBE = """
import ctypes, json
import torch
from alignkit.train.common import reuse_freed_memory

class MallInfo2(ctypes.Structure):  # <malloc.h>
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
on = reuse_freed_memory()
before = mallinfo2()
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB: above the largest mmap threshold glibc ever uses (32 MB)
during = mallinfo2()
del x
after = mallinfo2()
print(json.dumps({"on": on, "mapped": during.hblkhd - before.hblkhd, "heap": during.uordblks - before.uordblks,
                  "released": during.arena - after.arena}))
"""


def probe(**env) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**os.environ, **env},
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_large_tensors_come_from_the_heap_and_stay_there():
    r = probe(ALIGNKIT_REUSE_MEMORY="1")
    assert r["on"] is True
    assert r["mapped"] < 1 << 20  # no new mmapped block
    assert r["heap"] >= 64 << 20  # the heap holds the tensor...
    assert r["released"] == 0  # ...and keeps its memory once it is freed, for the next one


def test_opting_out_leaves_malloc_alone():
    r = probe(ALIGNKIT_REUSE_MEMORY="0")
    assert r["on"] is False
    assert r["mapped"] >= 64 << 20  # glibc's default: its own mmap, unmapped on free
    assert r["heap"] < 1 << 20


RETURN = """
import json
import torch
from alignkit.train.common import return_freed_memory, reuse_freed_memory

def rss() -> int:
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) << 10

reuse_freed_memory()
x = torch.ones(128 << 20, dtype=torch.uint8)  # 128 MB, every page touched
y = torch.ones(1 << 20, dtype=torch.uint8)  # above it in the heap
del x
kept = rss()
return_freed_memory()
print(json.dumps({"kept": kept, "returned": kept - rss()}))
"""


def test_the_kept_memory_goes_back_to_the_system_between_runs():
    """What `reuse_freed_memory` keeps after a run, `return_freed_memory` hands back (the demo calls it between
    stages): the resident size falls by the freed tensor, most of its 128 MB."""
    r = subprocess.run([sys.executable, "-c", RETURN], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["returned"] >= 100 << 20, out
