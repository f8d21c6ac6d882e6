"""The Python-only way to hand a worker memory: ``multiprocessing.shared_memory`` blocks
whose names go over a ``multiprocessing.Pipe`` to a forked child.

Usage:

- ``python peer_multiprocessing.py handoff BYTES N``: a block of BYTES bytes, written
  once; then N times the block's name goes to the child, which attaches it (the first
  time only; it keeps the mapping, as pixgate's worker does), wraps it in a numpy array
  and answers; prints the seconds of each of the N exchanges on one line.
- ``python peer_multiprocessing.py frames SIDE FRAMES BATCHES DEPTH``: 6 blocks of one
  SIDE × SIDE uint16 frame each, written once; frames are handed over round-robin, the
  child wraps each in a numpy array and answers with its name. DEPTH 1 is lock-step;
  more keeps up to DEPTH frames in flight. After one warm-up batch, BATCHES batches of
  FRAMES frames; prints each batch's seconds per frame on one line.

Every block is unlinked by the parent before it exits.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import sys
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

SLOTS = 6


def child(conn) -> None:
    cache = {}
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, shape, dtype = msg
        shm = cache.get(name)
        if shm is None:
            shm = cache[name] = shared_memory.SharedMemory(name=name)
        arr = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
        del arr
        conn.send(name)
    for shm in cache.values():
        shm.close()
    conn.close()


def blocks(nbytes: int, count: int) -> list:
    out = []
    for _ in range(count):
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        out.append(shm)
        view = np.ndarray((nbytes,), dtype=np.uint8, buffer=shm.buf)
        view.fill(1)
        del view
    return out


def handoff(conn, nbytes: int, n: int) -> list:
    (shm,) = held = blocks(nbytes, 1)
    try:
        msg = (shm.name, (nbytes,), "uint8")
        conn.send(msg)
        conn.recv()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            conn.send(msg)
            conn.recv()
            times.append(time.perf_counter() - t)
        return times
    finally:
        release(held)


def frames(conn, side: int, count: int, batches: int, depth: int) -> list:
    held = blocks(side * side * 2, SLOTS)
    try:
        msgs = [(s.name, (side, side), "uint16") for s in held]
        out = []
        for b in range(batches + 1):
            pending = collections.deque()
            t = time.perf_counter()
            for i in range(count):
                while len(pending) >= depth:
                    pending.popleft()
                    conn.recv()
                conn.send(msgs[i % SLOTS])
                pending.append(i)
            while pending:
                pending.popleft()
                conn.recv()
            if b:
                out.append((time.perf_counter() - t) / count)
        return out
    finally:
        release(held)


def release(held: list) -> None:
    for shm in held:
        shm.close()
        shm.unlink()


def main() -> None:
    # One resource tracker for both processes: started after the fork, the child would
    # get its own, which "cleans up" the parent's blocks when the child exits
    # (CPython gh-82300).
    resource_tracker.ensure_running()
    ctx = mp.get_context("fork")
    parent, kid = ctx.Pipe()
    proc = ctx.Process(target=child, args=(kid,), daemon=True)
    proc.start()
    try:
        if sys.argv[1] == "handoff":
            times = handoff(parent, int(sys.argv[2]), int(sys.argv[3]))
        else:
            side, count, batches, depth = map(int, sys.argv[2:6])
            times = frames(parent, side, count, batches, max(depth, 1))
        print(" ".join(f"{x:.9f}" for x in times))
    finally:
        parent.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()


if __name__ == "__main__":
    main()
