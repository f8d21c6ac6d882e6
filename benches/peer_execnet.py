"""execnet's channel round trip and start-up, measured the way pixgate's benches measure
their own.

Usage:

- ``python peer_execnet.py N``: prints the total seconds of N round trips of a small
  int (host sends, remote echoes, host receives), after 200 warm-up round trips;
- ``python peer_execnet.py N --each``: the same, printing each round trip's seconds
  on one line, separated by spaces;
- ``python peer_execnet.py startup K``: K times, ``makegateway`` + ``remote_exec`` of
  ``channel.send(1)`` + ``receive``; prints each of the K times on one line (the
  gateway's exit is not timed).
"""

from __future__ import annotations

import sys
import time

import execnet


def round_trips(n: int, each: bool) -> None:
    gw = execnet.makegateway(f"popen//python={sys.executable}")
    ch = gw.remote_exec("for x in channel:\n    channel.send(x)")
    for i in range(200):
        ch.send(i)
        ch.receive(10)
    times = []
    t = time.perf_counter()
    for i in range(n):
        t1 = time.perf_counter()
        ch.send(i)
        ch.receive(10)
        if each:
            times.append(time.perf_counter() - t1)
    total = time.perf_counter() - t
    ch.close()
    gw.exit()
    if each:
        print(" ".join(f"{x:.9f}" for x in times))
    else:
        print(f"{total:.9f}")


def startup(k: int) -> None:
    times = []
    for _ in range(k):
        t = time.perf_counter()
        gw = execnet.makegateway(f"popen//python={sys.executable}")
        ch = gw.remote_exec("channel.send(1)")
        ch.receive(30)
        times.append(time.perf_counter() - t)
        gw.exit()
    print(" ".join(f"{x:.9f}" for x in times))


def main() -> None:
    if sys.argv[1] == "startup":
        startup(int(sys.argv[2]))
    else:
        round_trips(int(sys.argv[1]), "--each" in sys.argv[2:])


if __name__ == "__main__":
    main()
