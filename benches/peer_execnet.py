"""execnet's channel round trip, measured the way pixgate's bench measures its own.

Usage: python peer_execnet.py N  ->  prints the total seconds of N round trips of a small
int (host sends, remote echoes, host receives), after a warm-up.
"""

from __future__ import annotations

import sys
import time

import execnet


def main() -> None:
    n = int(sys.argv[1])
    gw = execnet.makegateway(f"popen//python={sys.executable}")
    ch = gw.remote_exec("for x in channel:\n    channel.send(x)")
    for i in range(200):
        ch.send(i)
        ch.receive(10)
    t = time.perf_counter()
    for i in range(n):
        ch.send(i)
        ch.receive(10)
    total = time.perf_counter() - t
    ch.close()
    gw.exit()
    print(f"{total:.9f}")


if __name__ == "__main__":
    main()
