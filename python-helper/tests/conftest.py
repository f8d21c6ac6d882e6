"""Shared test fixtures: every test leaves /dev/shm without segments of this process."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

OUR_PREFIX = f"pxg-{os.getpid():x}-"


def our_segments() -> list[str]:
    """This process's segments in /dev/shm."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(OUR_PREFIX))


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Fail a test that leaves a segment of this process behind (and remove it)."""
    yield
    gc.collect()
    leaked = our_segments()
    for name in leaked:
        os.unlink("/dev/shm/" + name)
    assert leaked == [], f"segments left in /dev/shm: {leaked}"
