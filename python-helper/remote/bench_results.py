# pixgate bench P10 (src/cli/bench/results.rs): in turn, the time to hold a copy of a
# uint16 stack in numpy memory, in pixgate.empty (a segment reused from the array
# before; a new segment; one the host let go of after a move), and in a bare shared
# mapping.
import mmap, time
import numpy as np
import pixgate
from pixgate import _array, _segment

nbytes, rounds = channel.receive()
src = np.arange(nbytes // 2, dtype=np.uint16)
# The moved case's arrays are one page longer, so that their segments are a size of
# their own and it reuses only what the host let go of (kept segments are reused by
# size).
longer = src.size + 2048


def plain():
    a = np.empty_like(src)
    np.copyto(a, src)
    return a


def shared():
    a = pixgate.empty(src.shape, src.dtype)
    np.copyto(a, src)
    return a


def fresh():
    # What pixgate.empty costs when no segment is kept for reuse: a new one each time.
    seg = _segment.create_anonymous(src.dtype.str, src.shape)
    a = _array.map_array(seg)
    np.copyto(a, src)
    return a


def moved():
    a = pixgate.empty((longer,), src.dtype)
    np.copyto(a[: src.size], src)
    return a


def floor():
    mm = mmap.mmap(-1, src.nbytes, flags=mmap.MAP_SHARED)
    a = np.frombuffer(mm, dtype=np.uint16)
    np.copyto(a, src)
    return a, mm


cases = (plain, shared, fresh, moved, floor)
times = tuple([] for _ in cases)
for r in range(rounds + 2):
    for k, make in enumerate(cases):
        t = time.perf_counter()
        out = make()
        dt = time.perf_counter() - t
        if make is moved:
            # Moved to the host, which drops it and says so.
            channel.send(out)
            del out
            channel.receive()
        else:
            del out
        if r >= 2:
            times[k].append(dt)
channel.send(times)
