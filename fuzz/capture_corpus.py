"""Regenerates the seed corpus in fuzz/corpus/ from a real host-worker exchange.

A host speaking the raw protocol (the one of python-helper/tests/test_worker.py) starts
a real worker, runs a short exchange in it (values of every kind both ways, printed
output, a remote error, shared arrays with metadata) and records every byte that
crosses the pipes. From the recording:

* frame_decoder: each direction's byte stream (whole, and cut into per-exchange pieces),
  behind the target's two control bytes (payload limit, read-split seed);
* value_decoder: every distinct non-empty frame payload, as sent (a channel payload);
  for those that loads() also accepts after a version byte, that form too; and format
  version 1: the values below as dumps(version=1) writes them, and what execnet 1.9
  writes for a table of values under Python 2.7;
* header_parser: the header of each shared array the worker created, read from its
  segment while the worker holds it, and the golden headers of tests/golden/.

Run from the repository root with the Python that has the helper and numpy installed
(`make fuzz-corpus` does this): `python fuzz/capture_corpus.py [OUT_DIR]`, where
OUT_DIR defaults to fuzz/corpus.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python-helper"))
sys.path.insert(0, os.path.join(ROOT, "python-helper", "tests"))

from pixgate import _segment, _wire
from pixgate._worker import (
    CHANNEL_CLOSE,
    CHANNEL_DATA,
    CHANNEL_LAST_MESSAGE,
    HANDSHAKE,
)
from test_worker import Host

CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# Control bytes of the frame_decoder target: a 64-byte payload limit (so large frames
# take the oversized path) and the default limit; two read-split seeds.
FRAME_PREFIXES = [b"\x40\x07", b"\xff\x2a"]

VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**31 - 1,
    -(2**31),
    2**63,
    -(2**80) + 7,
    1.5,
    float("inf"),
    float("nan"),
    -0.0,
    complex(1.0, -2.5),
    "",
    "ascii",
    "ünïcødé ✓",
    b"",
    b"\x00\xffbytes",
    [],
    [1, 2.0, "three", None],
    (),
    (1, (2, (3,))),
    {},
    {"a": 1, 2: [3, 4], (5, 6): {"nested": True}},
    {1, 2, 3},
    frozenset({"x", "y"}),
    [[[[[]]]]],
    list(range(40)),
    [0.25 * i for i in range(20)],
]

# What execnet 1.9 writes under Python 2.7 for the table of
# tests/fixtures/execnet_table.py (its `dump` mode): format version 1, with Python 2's
# str (M), unicode (S) and long (G, I). Kept here as bytes, so that regenerating the
# corpus needs no Python 2.
PYTHON2_DUMPS = [
    "014c51",
    "015251",
    "014351",
    "01460000000551",
    "01468000000051",
    "01467fffffff51",
    "01480000000a3231343734383336343851",
    "01490000001f3132363736353036303032323832323934303134393637303332303533373651",
    "01443ff800000000000051",
    "01543ff0000000000000c00400000000000051",
    "015300000005c3a974c3a951",
    "01530000000051",
    "014d0000000200e951",
    "014b00000004460000000046000000015046000000015300000001615046000000024d00000001625046000000034c5051",
    "01460000000153000000017840000000014d0000000179400000000351",
    "014a53000000016b4b0000000246000000004d00000001765046000000014440040000000000005050460000000353000000017440000000015051",
    "0146000000034f0000000151",
    "01530000000166450000000151",
    "014d000000036162e951",
    "01470000000551",
    "0147fffffffb51",
    "014900000014313834343637343430373337303935353136313651",
    "01480000000d3130393935313136323737373651",
    "014a4d000000016b4b00000003460000000047000000015046000000014d0000000176504600000002530000000177505051",
]

REMOTE_CODE = """
import numpy as np
import pixgate
for item in channel:
    channel.send(item)
print("printed line")
a = pixgate.zeros((2, 3, 4), dtype="<u2", dims=["z", "y", "x"],
                  meta={"name": "stack", "scale": [1.0, 0.5, 0.5],
                        "units": ["um", "um", "um"], "attrs": {"exposure": 0.1}})
b = pixgate.asarray(np.arange(6, dtype="<f8").reshape(2, 3).T)
c = pixgate.full((), True, dtype="|b1")
channel.send({"arrays": [a, b, c]})
channel.receive()
"""

FAILING = "raise ValueError('remote failure')"


class RecordingHost(Host):
    """The raw-protocol host, keeping every byte it writes and reads."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.payloads: list[bytes] = []

    def send(self, msgtype: int, channel: int, payload: bytes = b"") -> None:
        self.sent.append(_wire.pack_frame(msgtype, channel, payload))
        self.payloads.append(payload)
        super().send(msgtype, channel, payload)

    def frame(self, timeout: float = 20.0) -> tuple[int, int, bytes]:
        t, ch, payload = super().frame(timeout)
        self.received.append(_wire.pack_frame(t, ch, payload))
        self.payloads.append(payload)
        return t, ch, payload


def record() -> tuple[RecordingHost, list[bytes]]:
    host = RecordingHost()
    headers: list[bytes] = []
    try:
        t, ch, _ = host.frame()
        assert (t, ch) == (HANDSHAKE, 0), (t, ch)
        host.exec(1, REMOTE_CODE)
        for value in VALUES:
            host.send(CHANNEL_DATA, 1, _wire.dumps_payload(value))
            t, _ = host.next_on(1)
            assert t == CHANNEL_DATA, t
        host.send(CHANNEL_CLOSE, 1)
        t, arrays = host.next_on(1, skip_output=False)
        while t != CHANNEL_DATA:
            t, arrays = host.next_on(1, skip_output=False)
        for ref in arrays["arrays"]:
            headers.append(read_header(ref.name))
            # The worker moved its arrays to us: the receiver unlinks (PROTOCOL.md §4.12).
            os.unlink("/dev/shm" + ref.name)
        host.send(CHANNEL_DATA, 1, _wire.dumps_payload(None))
        while host.next_on(1, skip_output=False)[0] not in (CHANNEL_CLOSE, CHANNEL_LAST_MESSAGE):
            pass
        host.exec(3, FAILING)
        host.next_on(3)
    finally:
        host.close()
    return host, headers


def read_header(name: str) -> bytes:
    """The header of segment ``name`` (with its slash), as a reader copies it."""
    with open("/dev/shm" + name, "rb") as f:
        data = f.read(_segment.PAGE)
        header_len = int.from_bytes(data[12:16], "little")
        f.seek(0)
        return f.read(header_len)


def write(target: str, blobs: list[bytes]) -> None:
    d = os.path.join(sys.argv[1] if len(sys.argv) > 1 else CORPUS, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for blob in dict.fromkeys(blobs):
        name = hashlib.sha1(blob).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(blob)
    print(f"{target}: {len(os.listdir(d))} files")


def main() -> None:
    host, headers = record()
    streams = [b"".join(host.sent), b"".join(host.received)]
    pieces = [b"".join(host.received[i : i + 8]) for i in range(0, len(host.received), 8)]
    pieces += [b"".join(host.sent[i : i + 8]) for i in range(0, len(host.sent), 8)]
    write(
        "frame_decoder",
        [p + s for p in FRAME_PREFIXES for s in streams]
        + [FRAME_PREFIXES[0] + piece for piece in pieces],
    )
    payloads = [p for p in host.payloads if p]
    dumped = []
    for p in payloads:
        try:
            _wire.loads(b"\x02" + p)
        except _wire.LoadError:
            continue
        dumped.append(b"\x02" + p)
    # Format version 1: the values above as pixgate writes them, and Python 2's dumps.
    version_one = [_wire.dumps(v, version=1) for v in VALUES]
    python2 = [bytes.fromhex(h) for h in PYTHON2_DUMPS]
    write("value_decoder", payloads + dumped + version_one + python2)
    golden = os.path.join(ROOT, "tests", "golden")
    for name in sorted(os.listdir(golden)):
        if name.endswith(".hdr"):
            with open(os.path.join(golden, name), "rb") as f:
                headers.append(f.read())
    write("header_parser", headers)


if __name__ == "__main__":
    main()
