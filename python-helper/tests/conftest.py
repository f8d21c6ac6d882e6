"""Shared test fixtures: every test leaves /dev/shm without segments of this process,
and this process without descriptors or mappings of anonymous segments."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator

import pytest

OUR_PREFIX = f"pxg-{os.getpid():x}-"


def our_segments() -> list[str]:
    """This process's segments in /dev/shm."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(OUR_PREFIX))


def collect() -> None:
    """Run the garbage collector until what it frees has been finalized: one pass on
    CPython; on PyPy an object behind a numpy array (of its C-API layer) goes only
    after a few passes, each finalizer freeing the next link of the chain."""
    for _ in range(1 if sys.implementation.name == "cpython" else 5):
        gc.collect()


def our_anonymous_objects() -> list[str]:
    """Anonymous pixgate objects this process holds a descriptor or a mapping of."""
    held = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if target.startswith("/memfd:pxg-"):
            held.add(target)
    with open("/proc/self/maps") as f:
        held.update(line.split(None, 5)[5].strip() for line in f if "/memfd:pxg-" in line)
    return sorted(held)


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Fail a test that leaves a segment of this process behind (and remove it)."""
    yield
    collect()
    leaked = our_segments()
    for name in leaked:
        os.unlink("/dev/shm/" + name)
    assert leaked == [], f"segments left in /dev/shm: {leaked}"
    held = our_anonymous_objects()
    assert held == [], f"anonymous segments still held: {held}"
