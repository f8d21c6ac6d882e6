"""execnet's way to hand a worker an array: the bytes go through the channel.

Usage: python peer_execnet_arrays.py MIB N  ->  one exchange to warm up, then N timed
exchanges of a MIB MiB uint16 array; prints one line of JSON: the seconds of each timed
exchange and their median, and the peak memory (VmHWM, kB) of each side.

One exchange, timed on the host with ``perf_counter``: ``arr.tobytes()``, send; the
remote does ``np.frombuffer(b, dtype=np.uint16).copy()``, doubles it in place, sends
``.tobytes()`` back; the host rebuilds the array with ``np.frombuffer(...).reshape``
(no copy: the cheapest rebuild, which favours execnet).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import execnet
import numpy as np

REMOTE = """
import numpy as np
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
for b in channel:
    if b is None:
        channel.send(hwm())
        break
    arr = np.frombuffer(b, dtype=np.uint16).copy()
    del b
    arr *= 2
    channel.send(arr.tobytes())
    del arr
"""


def hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def main() -> None:
    mib = int(sys.argv[1])
    n = int(sys.argv[2])
    shape = (mib * 512, 1024)  # uint16: 2 KiB per row
    arr = np.full(shape, 3, dtype=np.uint16)
    gw = execnet.makegateway(f"popen//python={sys.executable}")
    ch = gw.remote_exec(REMOTE)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        ch.send(arr.tobytes())
        back = np.frombuffer(ch.receive(600), dtype=np.uint16).reshape(shape)
        dt = time.perf_counter() - t
        if i:
            times.append(dt)
        arr = back
        del back
    ok = bool(arr[0, 0] == 3 * 2 ** (n + 1) % 65536)
    ch.send(None)
    remote_hwm = ch.receive(60)
    ch.close()
    gw.exit()
    print(
        json.dumps(
            {
                "mib": mib,
                "times": times,
                "median": statistics.median(times),
                "host_vmhwm_kb": hwm(),
                "remote_vmhwm_kb": remote_hwm,
                "checked": ok,
            }
        )
    )


if __name__ == "__main__":
    main()
