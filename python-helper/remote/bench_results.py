# pixgate bench P10 (src/cli/bench/results.rs): in turn, the time to hold a copy of a
# uint16 stack in numpy memory, in pixgate.empty, and in a bare shared mapping.
import mmap, time
import numpy as np
import pixgate

nbytes, rounds = channel.receive()
src = np.arange(nbytes // 2, dtype=np.uint16)


def plain():
    a = np.empty_like(src)
    np.copyto(a, src)
    return a


def shared():
    a = pixgate.empty(src.shape, src.dtype)
    np.copyto(a, src)
    return a


def floor():
    mm = mmap.mmap(-1, src.nbytes, flags=mmap.MAP_SHARED)
    a = np.frombuffer(mm, dtype=np.uint16)
    np.copyto(a, src)
    return a, mm


times = ([], [], [])
for r in range(rounds + 2):
    for k, make in enumerate((plain, shared, floor)):
        t = time.perf_counter()
        out = make()
        dt = time.perf_counter() - t
        del out
        if r >= 2:
            times[k].append(dt)
channel.send(times)
