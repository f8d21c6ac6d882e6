"""The anonymous transport, worker side: a Python host passes real sealed memfds over a
real descriptor socket (docs/PROTOCOL.md 2.7, 5.7; docs/SEGMENT_FORMAT.md 3.2, 3.3, 8).

The host is the raw-protocol host of ``test_worker`` with its descriptor socket; it
builds its objects (one array, or a pool arena of slots) with plain system calls, and
looks at the worker from outside, in ``/proc/PID/fd`` and ``/proc/PID/maps``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import mmap
import os
import stat
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_worker import Host

from pixgate import _segment, _wire
from pixgate._worker import CHANNEL_DATA, FORGET, HANDSHAKE, OUTPUT

RELEASE = 36
PAGE = 4096
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
SEALS = 0x7  # F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW

# As test_array: the interpreter may have no numpy (the suite's PyPy run); the tests of
# descriptors and hostile input need none.
needs_numpy = pytest.mark.skipif(
    importlib.util.find_spec("numpy") is None, reason="mapping arrays needs numpy"
)


class Obj:
    """An anonymous object of the host: a memfd holding one segment per layout, the
    segment *k* at offset *k* × ``slot`` (a pool arena when ``pool``)."""

    def __init__(
        self,
        layouts: list[tuple[str, tuple[int, ...]]],
        *,
        pool: bool = False,
        seal: bool = True,
        mode: int = 0o400,
        fill: int = 0,
    ) -> None:
        headers = [_segment.build_header(dtype, shape) for dtype, shape in layouts]
        self.slot = max(-(-(h.header_len + h.data_len) // PAGE) * PAGE for h in headers)
        self.size = self.slot * len(headers)
        self.name = _segment._new_name()
        self.fd = os.memfd_create(self.name[1:], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.fchmod(self.fd, mode)
        os.ftruncate(self.fd, self.size)
        os.posix_fallocate(self.fd, 0, self.size)
        self.mm = mmap.mmap(self.fd, self.size)
        self.headers = headers
        self.pool = pool
        for k in range(len(headers)):
            self.write_header(k, headers[k])
            start = self.data_offset(k)
            self.mm[start : start + headers[k].data_len] = bytes([fill]) * headers[k].data_len
        if seal:
            fcntl.fcntl(self.fd, F_ADD_SEALS, SEALS)

    def offset(self, k: int) -> int:
        return k * self.slot

    def data_offset(self, k: int) -> int:
        return self.offset(k) + self.headers[k].header_len

    def write_header(self, k: int, header: _segment.Header) -> None:
        """Write ``header`` as slot ``k``'s, version last (as a pool's reuse does)."""
        if self.pool:
            header.flags |= 4
        base = self.offset(k)
        version, header.version = header.version, 0
        self.mm[base : base + header.header_len] = _segment.encode_header(header)
        header.version = version
        self.mm[base + 8 : base + 12] = version.to_bytes(4, "little")
        self.headers[k] = header

    def data(self, k: int) -> bytes:
        start = self.data_offset(k)
        return bytes(self.mm[start : start + self.headers[k].data_len])

    def descriptor(self, writable: bool) -> int:
        """A descriptor to pass: a duplicate, or the object reopened read-only."""
        if writable:
            return os.dup(self.fd)
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def ref(self, token: int, k: int = 0, access: int = _wire.SHARED) -> _wire.DescriptorRef:
        return _wire.DescriptorRef(
            self.name, token, self.offset(k), self.headers[k].generation, access
        )

    def key(self, k: int = 0) -> str:
        return self.ref(0, k).key

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


def send_ref(
    host: Host, channel: int, obj: Obj, k: int = 0, access: int = 0, token: int | None = None
) -> None:
    """Send a reference to slot ``k`` of ``obj``: with a new descriptor of the access it
    needs, or with ``token`` as given (0: the worker maps it already)."""
    if token is None:
        fd = obj.descriptor(access != _wire.SHARED)
        try:
            token = host.send_fds([fd])
        finally:
            os.close(fd)
    host.send(CHANNEL_DATA, channel, _wire.dumps_payload(obj.ref(token, k, access)))


def worker_fds(host: Host) -> list[str]:
    """Where the worker's descriptors lead."""
    out = []
    for entry in os.listdir(f"/proc/{host.proc.pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{host.proc.pid}/fd/{entry}"))
        except OSError:
            pass
    return out


def worker_maps(host: Host, name: str) -> list[str]:
    """The permissions of the worker's mappings of the anonymous object ``name``."""
    label = "/memfd:" + name[1:]
    with open(f"/proc/{host.proc.pid}/maps") as f:
        return [
            line.split()[1] for line in f if line.rstrip().endswith(label) or label + " " in line
        ]


def holds_descriptor_of(host: Host, name: str) -> bool:
    return f"/memfd:{name[1:]} (deleted)" in worker_fds(host)


def _mmap_keeps_a_descriptor() -> bool:
    """Whether the helper's mappings hold a descriptor each: Python's mmap objects keep
    a duplicate of theirs unless made with trackfd=False (Python 3.13 and later)."""
    fd = os.memfd_create("probe", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, PAGE)
        before = len(os.listdir("/proc/self/fd"))
        mm = _segment._map(fd, PAGE, False, "probe", False)
        after = len(os.listdir("/proc/self/fd"))
        mm.close()
    finally:
        os.close(fd)
    return after > before


MMAP_KEEPS_A_DESCRIPTOR = _mmap_keeps_a_descriptor()


def assert_keeps_mappings_not_descriptors(host: Host, name: str) -> None:
    """The worker holds no descriptor of ``name`` besides what its mappings of it hold
    (none, unless the interpreter's mmap objects keep one each)."""
    held = worker_fds(host).count(f"/memfd:{name[1:]} (deleted)")
    assert held == (len(worker_maps(host, name)) if MMAP_KEEPS_A_DESCRIPTOR else 0), (
        held,
        worker_maps(host, name),
    )


def data_frame(host: Host, channel: int) -> tuple[int, bytes]:
    """The next frame on ``channel`` that is not output: (type, raw payload)."""
    while True:
        t, ch, payload = host.frame()
        if t == OUTPUT:
            continue
        assert ch == channel, (t, ch, payload)
        return t, payload


def next_release(host: Host) -> tuple[str, int, int]:
    while True:
        t, ch, payload = host.frame()
        if t == OUTPUT:
            continue
        assert (t, ch) == (RELEASE, 0), (t, ch, payload)
        return _wire.loads_payload(payload)


def drop(host: Host, channel: int, command: str = "drop") -> list[tuple[str, int, int]]:
    """Have the remote code drop what it holds; the RELEASEs that come before its
    answer."""
    host.send(CHANNEL_DATA, channel, _wire.dumps_payload(command))
    releases = []
    while True:
        t, ch, payload = host.frame()
        if t == RELEASE:
            releases.append(_wire.loads_payload(payload))
        elif t != OUTPUT:
            assert ch == channel, (t, ch, payload)
            _wire.loads_payload(payload)
            return releases


def sync(host: Host, channel: int, value: object = "sync") -> Any:
    """Send ``value``, return the worker's answer (its remote code echoes strs)."""
    host.send(CHANNEL_DATA, channel, _wire.dumps_payload(value))
    return host.next_on(channel)[1]


@pytest.fixture
def dhost() -> Iterator[Host]:
    """A worker with a descriptor socket."""
    h = Host(descriptors=True)
    t, ch, payload = h.frame()
    assert (t, ch) == (HANDSHAKE, 0)
    h.info = _wire.loads_payload(payload)
    yield h
    h.close()


# Remote code: answers each item; a str is a command, anything else is held until
# "drop". Errors loading an item come back as ("LoadError", text).
SERVER = r"""
import gc, os, sys, pixgate
held = []
def collect():
    # Without reference counting (PyPy) the arrays go when the collector runs: now, so
    # that their releases come before the answer, as on CPython (the helper's own
    # collection waits for a background one and its releases).
    from pixgate import _segment
    _segment.collect_all(1 if sys.implementation.name == "cpython" else 5)
while True:
    try:
        item = channel.receive()
    except pixgate.LoadError as exc:
        channel.send(("LoadError", str(exc)))
        continue
    except pixgate.ChannelClosed:
        break
    if isinstance(item, str):
        cmd, _, arg = item.partition(" ")
        if cmd == "drop":
            held.clear()
            collect()
            channel.send("dropped")
        elif cmd == "back":
            channel.send(held.pop(int(arg)))
        elif cmd == "eval":
            channel.send(eval(arg))
        elif cmd == "exec":
            exec(arg)
        else:
            channel.send(item)
    else:
        held.append(item)
        channel.send("held")
    del item
"""


def settle(host: Host, channel: int) -> None:
    """Have the remote code run the garbage collector and answer: what it dropped is
    then gone on every interpreter (PyPy frees only when the collector runs)."""
    assert sync(host, channel, "exec collect(); channel.send('sync')") == "sync"


def server(host: Host, channel: int = 1) -> int:
    host.exec(channel, SERVER)
    assert sync(host, channel) == "sync"
    return channel


def ask(host: Host, expr: str, channel: int = 1) -> Any:
    return sync(host, channel, "eval " + expr)


# -- start-up ----------------------------------------------------------------------


def test_the_worker_offers_descriptors_on_the_socket_it_was_given(dhost: Host) -> None:
    assert dhost.info["descriptors"] is True
    pid = dhost.proc.pid
    assert stat.S_ISSOCK(os.stat(f"/proc/{pid}/fd/5").st_mode)
    with open(f"/proc/{pid}/fdinfo/5") as f:
        flags = int(f.read().split("flags:")[1].split()[0], 8)
    assert flags & 0o2000000, "fd 5 is close-on-exec: children of remote code do not get it"
    ch = server(dhost)
    assert ask(dhost, "'PIXGATE_DESCRIPTORS' in os.environ", ch) is False
    # Serving the socket costs no heavy import: the C core of socket is enough.
    assert ask(dhost, "[m for m in ('socket', 'selectors') if m in sys.modules]", ch) == []


def test_a_worker_given_no_usable_socket_offers_none() -> None:
    # A value that is no descriptor, no open descriptor, one that is not a socket (left
    # alone: it is not the worker's to close).
    for value in ("x", "99", "0"):
        h = Host(env={"PIXGATE_DESCRIPTORS": value})
        try:
            t, ch, payload = h.frame()
            assert (t, ch) == (HANDSHAKE, 0)
            assert _wire.loads_payload(payload)["descriptors"] is False, value
            if value == "0":
                assert os.readlink(f"/proc/{h.proc.pid}/fd/0") == os.devnull
        finally:
            assert h.close() == 0


# -- receiving -----------------------------------------------------------------------


@needs_numpy
def test_a_shared_anonymous_array_is_mapped_read_only_and_released_by_its_key(
    dhost: Host,
) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (64, 64))], fill=1)
    try:
        send_ref(dhost, ch, obj, access=_wire.SHARED)
        assert dhost.next_on(ch)[1] == "held"
        # The whole object, read-only; the descriptor was closed right after mapping.
        assert worker_maps(dhost, obj.name) == ["r--s"]
        assert_keeps_mappings_not_descriptors(dhost, obj.name)
        assert ask(dhost, "(int(held[0].sum()), held[0].shape, held[0].flags.writeable)") == (
            64 * 64 * 257,
            (64, 64),
            False,
        )
        # numpy refuses to write it, and cannot be talked into it.
        assert sync(dhost, ch, "exec " + WRITE_ATTEMPT) == ["ValueError", "ValueError"]
        assert drop(dhost, ch) == [(obj.key(), 0, _wire.SHARED)]
        assert obj.data(0) == b"\x01" * (64 * 64 * 2)
    finally:
        obj.close()


WRITE_ATTEMPT = r"""
out = []
for attempt in ("held[0][0, 0] = 9", "held[0].setflags(write=True)"):
    try:
        exec(attempt)
        out.append("wrote")
    except ValueError:
        out.append("ValueError")
channel.send(out)
"""


@needs_numpy
def test_a_lent_anonymous_array_is_writable_and_goes_back_by_token_0(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<f4", (1000,))])
    try:
        send_ref(dhost, ch, obj, access=_wire.LENT)
        assert dhost.next_on(ch)[1] == "held"
        assert worker_maps(dhost, obj.name) == ["rw-s"]
        assert_keeps_mappings_not_descriptors(dhost, obj.name)
        sync(dhost, ch, "exec held[0][:] = 2.5; channel.send('written')")
        assert obj.data(0) == b"\x00\x00\x20\x40" * 1000
        # Given back: the host's own name and offset, token 0, no RELEASE after it.
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("back 0"))
        t, payload = data_frame(dhost, ch)
        assert t == CHANNEL_DATA
        assert payload[:1] == b"V"
        assert _wire.loads_payload(payload) == obj.ref(0, 0, _wire.LENT)
        assert sync(dhost, ch, "next") == "next"
        assert sync(dhost, ch, "exec collect(); channel.send('ok')") == "ok"
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("end"))
        assert dhost.next_on(ch) == (CHANNEL_DATA, "end")  # no RELEASE came between
    finally:
        obj.close()


@needs_numpy
def test_the_slots_of_an_arena_are_views_of_one_mapping(dhost: Host) -> None:
    ch = server(dhost)
    arena = Obj([("|u1", (PAGE * 2,))] * 3, pool=True)
    try:
        send_ref(dhost, ch, arena, 0, _wire.LENT)
        assert dhost.next_on(ch)[1] == "held"
        for k in (1, 2):
            send_ref(dhost, ch, arena, k, _wire.LENT, token=0)
            assert dhost.next_on(ch)[1] == "held"
        # One writable mapping of the whole arena, no descriptor kept.
        assert worker_maps(dhost, arena.name) == ["rw-s"]
        assert_keeps_mappings_not_descriptors(dhost, arena.name)
        sync(dhost, ch, "exec [a.fill(i + 1) for i, a in enumerate(held)]; channel.send('ok')")
        for k in range(3):
            assert arena.data(k) == bytes([k + 1]) * (PAGE * 2)
        released = sorted(drop(dhost, ch))
        assert released == sorted((arena.key(k), 0, _wire.LENT) for k in range(3))
        assert arena.key(0) == arena.name and arena.key(1) == f"{arena.name}@{arena.slot:x}"

        # The slot reused for another layout: its header is read again at a new
        # generation, over the same mapping.
        header = _segment.build_header("<u2", (16, 32))
        header.generation = 1
        arena.write_header(1, header)
        send_ref(dhost, ch, arena, 1, _wire.SHARED, token=None)
        assert dhost.next_on(ch)[1] == "held"
        assert ask(dhost, "(held[0].dtype.str, held[0].shape, held[0].flags.writeable)") == (
            "<u2",
            (16, 32),
            False,
        )
        assert sorted(worker_maps(dhost, arena.name)) == ["r--s", "rw-s"]
        # A reference of the generation before is stale.
        dhost.send(
            CHANNEL_DATA,
            ch,
            _wire.dumps_payload(_wire.DescriptorRef(arena.name, 0, arena.offset(1), 0, 1)),
        )
        kind, text = dhost.next_on(ch)[1]
        assert kind == "LoadError" and "stale reference" in text, text
        assert drop(dhost, ch) == [(arena.key(1), 1, _wire.SHARED)]
    finally:
        arena.close()


@needs_numpy
def test_token_0_uses_the_kept_mapping_of_the_access_it_needs(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<i4", (256,))], fill=3)
    try:
        send_ref(dhost, ch, obj, access=_wire.SHARED)
        assert dhost.next_on(ch)[1] == "held"
        fds = len(worker_fds(dhost))
        for _ in range(20):
            send_ref(dhost, ch, obj, access=_wire.SHARED, token=0)
            assert dhost.next_on(ch)[1] == "held"
        assert ask(dhost, "sorted({int(a.sum()) for a in held})") == [256 * 0x03030303]
        assert worker_maps(dhost, obj.name) == ["r--s"]
        assert len(worker_fds(dhost)) == fds
        # A writable mapping does not serve a share, nor a read-only one a lend.
        send_ref(dhost, ch, obj, access=_wire.LENT, token=0)
        kind, text = dhost.next_on(ch)[1]
        assert kind == "LoadError"
        assert "token 0" in text and "no writable mapping" in text, text
        # And token 0 for an object never sent at all.
        other = _wire.DescriptorRef(_segment._new_name(), 0, 0, 0, _wire.SHARED)
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload(other))
        kind, text = dhost.next_on(ch)[1]
        assert kind == "LoadError" and "no read-only mapping" in text, text
        assert drop(dhost, ch) == [(obj.key(), 0, 0)] * 21
    finally:
        obj.close()


@needs_numpy
def test_forget_drops_every_mapping_of_an_object_once_its_arrays_are_gone(dhost: Host) -> None:
    ch = server(dhost)
    arena = Obj([("|u1", (PAGE,))] * 2, pool=True)
    try:
        send_ref(dhost, ch, arena, 0, _wire.SHARED)
        assert dhost.next_on(ch)[1] == "held"
        send_ref(dhost, ch, arena, 1, _wire.LENT)
        assert dhost.next_on(ch)[1] == "held"
        assert sorted(worker_maps(dhost, arena.name)) == ["r--s", "rw-s"]
        # Released, the mappings stay for the next references ...
        assert drop(dhost, ch, "exec held.pop(0); collect(); channel.send('one')") == [(arena.key(0), 0, 0)]
        assert sorted(worker_maps(dhost, arena.name)) == ["r--s", "rw-s"]
        # ... until FORGET. The array still held keeps its mapping until it goes.
        dhost.send(FORGET, 0, _wire.dumps_payload(arena.name))
        settle(dhost, ch)
        assert worker_maps(dhost, arena.name) == ["rw-s"]
        assert drop(dhost, ch) == [(arena.key(1), 0, 1)]
        assert worker_maps(dhost, arena.name) == []
        assert_keeps_mappings_not_descriptors(dhost, arena.name)
        # Forgotten, token 0 finds nothing.
        send_ref(dhost, ch, arena, 0, _wire.SHARED, token=0)
        assert dhost.next_on(ch)[1][0] == "LoadError"
    finally:
        arena.close()


# -- sending ---------------------------------------------------------------------------


def check_moved(
    host: Host, payload: bytes, expect: bytes, shape: tuple[int, ...]
) -> _wire.DescriptorRef:
    """A moved array from the worker: a new token, and a sealed memfd of the worker's,
    owned by it and marked moved, holding ``expect``."""
    ref = _wire.loads_payload(payload)
    assert type(ref) is _wire.DescriptorRef, ref
    assert (ref.access, ref.offset) == (_wire.MOVED, 0)
    fd = host.take_fd(ref.token)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{ref.name[1:]} (deleted)"
        assert ref.name.startswith(f"/pxg-{host.proc.pid:x}-")
        assert fcntl.fcntl(fd, F_GET_SEALS) & SEALS == SEALS
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & 3 == os.O_RDWR  # O_ACCMODE
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o400
        mapping, size = _segment.map_descriptor(fd, ref.name, 0, True)
        seg = _segment.at_offset(mapping, size, ref.name, 0, True)
        try:
            assert seg.shape == shape
            assert bytes(seg.data[: len(expect)]) == expect
            assert (seg.owner_pid, seg.state) == (host.proc.pid, _segment.STATE_MOVED)
            assert seg.generation == ref.generation
        finally:
            seg.close()
    finally:
        os.close(fd)
    return ref


@needs_numpy
def test_a_moved_array_from_the_worker_arrives_with_a_sealed_descriptor(dhost: Host) -> None:
    ch = server(dhost)
    cases = [
        ("pixgate.full((4, 5), 3, dtype='uint16')", b"\x03\x00" * 20, (4, 5)),
        # A plain numpy array, and part of a shared one: copied into a new segment.
        (
            "__import__('numpy').arange(6, dtype='<f8').reshape(2, 3)",
            struct.pack("<6d", *range(6)),
            (2, 3),
        ),
        ("pixgate.full((8, 8), 7, dtype='uint8')[2:4]", b"\x07" * 16, (2, 8)),
        ("__import__('numpy').array(5, dtype='<i8')", (5).to_bytes(8, "little"), ()),
    ]
    tokens = []
    for expr, expect, shape in cases:
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("eval " + expr))
        t, payload = data_frame(dhost, ch)
        assert t == CHANNEL_DATA
        tokens.append(check_moved(dhost, payload, expect, shape).token)
    assert tokens == [1, 2, 3, 4], "the worker's tokens count from 1 without gaps"
    # Nothing of them is left in the worker: moved, the descriptors went with them.
    assert sync(dhost, ch, "exec collect(); channel.send(0)") == 0
    assert not [f for f in worker_fds(dhost) if f.startswith("/memfd:")]
    with open(f"/proc/{dhost.proc.pid}/maps") as f:
        assert "/memfd:pxg-" not in f.read()


@needs_numpy
def test_a_moved_array_can_come_back_and_move_again(dhost: Host) -> None:
    ch = server(dhost)
    dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("eval pixgate.full((3,), 9, dtype='uint8')"))
    ref = _wire.loads_payload(data_frame(dhost, ch)[1])
    fd = dhost.take_fd(ref.token)
    try:
        # The host moves it back: the worker owns it (and says so in the header) and
        # keeps its descriptor while the array lives, to move it on.
        token = dhost.send_fds([fd])
        back = _wire.DescriptorRef(ref.name, token, 0, ref.generation, _wire.MOVED)
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload(back))
        assert dhost.next_on(ch)[1] == "held"
        assert holds_descriptor_of(dhost, ref.name)
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            head = f.read(88)
        assert int.from_bytes(head[84:88], "little") == dhost.proc.pid
        assert int.from_bytes(head[80:84], "little") == _segment.STATE_OWNED
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("back 0"))
        again = check_moved(dhost, data_frame(dhost, ch)[1], b"\x09" * 3, (3,))
        assert (again.name, again.token) == (ref.name, 2)
    finally:
        os.close(fd)


@needs_numpy
def test_an_unsent_move_stays_the_workers(dhost: Host) -> None:
    # The move fails before anything is sent (the frame is too large): the array, its
    # ownership and its descriptor stay, and the next send moves it.
    ch = server(dhost)
    code = (
        "a = pixgate.full((4,), 1, dtype='uint8')\n"
        "try:\n"
        "    channel.send([a, b'x' * (300 << 20)])\n"
        "except pixgate.DumpError as e:\n"
        "    channel.send(('refused', pixgate._segment.Segment.owned.fget("
        "pixgate._array.segment_of(a)[0])))\n"
        "channel.send(a)\n"
    )
    assert sync(dhost, ch, "exec " + code) == ("refused", True)
    ref = check_moved(dhost, data_frame(dhost, ch)[1], b"\x01" * 4, (4,))
    assert ref.token == 1, "no token was used by the refused send"


# -- descriptors do not pile up ----------------------------------------------------------


@needs_numpy
def test_the_worker_holds_no_more_descriptors_after_a_thousand_references(dhost: Host) -> None:
    ch = server(dhost)
    arena = Obj([("|u1", (PAGE,))] * 4, pool=True)
    try:
        send_ref(dhost, ch, arena, 0, _wire.LENT)
        assert dhost.next_on(ch)[1] == "held"
        assert len(drop(dhost, ch)) == 1
        settle(dhost, ch)
        before = sorted(worker_fds(dhost))
        for i in range(1000):
            if i % 2:
                # A new object each time, shared with its own descriptor, then forgotten.
                obj = Obj([("|u1", (64,))], fill=i % 256)
                send_ref(dhost, ch, obj, access=_wire.SHARED)
                assert dhost.next_on(ch)[1] == "held"
                assert [r[0] for r in drop(dhost, ch)] == [obj.name]
                dhost.send(FORGET, 0, _wire.dumps_payload(obj.name))
                obj.close()
            else:
                # A slot of the arena by token 0, and an array moved from the worker.
                send_ref(dhost, ch, arena, i % 4, _wire.LENT, token=0)
                assert dhost.next_on(ch)[1] == "held"
                dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("back 0"))
                assert _wire.loads_payload(data_frame(dhost, ch)[1]).token == 0
                dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload("eval pixgate.zeros(8)"))
                ref = _wire.loads_payload(data_frame(dhost, ch)[1])
                os.close(dhost.take_fd(ref.token))
        settle(dhost, ch)
        assert sorted(worker_fds(dhost)) == before
        with open(f"/proc/{dhost.proc.pid}/maps") as f:
            maps = [m for m in f if "/memfd:pxg-" in m]
        assert len(maps) == 1, maps  # the arena's, kept until FORGET
    finally:
        arena.close()


# -- hostile input -------------------------------------------------------------------------


def refused(host: Host, ch: int) -> str:
    answer = host.next_on(ch)[1]
    assert type(answer) is tuple and answer[0] == "LoadError", answer
    return answer[1]


def test_an_unsealed_descriptor_is_refused_and_closed(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))], seal=False)
    try:
        send_ref(dhost, ch, obj, access=_wire.LENT)
        text = refused(dhost, ch)
        assert "not sealed against shrinking and growing" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)
        assert worker_maps(dhost, obj.name) == []
    finally:
        obj.close()


def test_a_read_only_descriptor_for_a_lent_or_moved_reference_is_refused(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        for access in (_wire.LENT, _wire.MOVED):
            fd = obj.descriptor(writable=False)
            token = dhost.send_fds([fd])
            os.close(fd)
            send_ref(dhost, ch, obj, access=access, token=token)
            text = refused(dhost, ch)
            assert "opened read-only" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)
        assert worker_maps(dhost, obj.name) == []
    finally:
        obj.close()


def test_descriptors_of_other_things_are_refused(dhost: Host) -> None:
    ch = server(dhost)
    readable = Obj([("<u2", (8,))], mode=0o440)
    small = Obj([("<u2", (8,))])
    r, w = os.pipe()
    try:
        cases = [
            (r, readable.name, 0, "not a regular file"),
            (readable.descriptor(False), readable.name, 0, "gives group or others access"),
            # A page must follow the offset; offsets are pages.
            (small.descriptor(False), small.name, small.size, "offset"),
        ]
        # A name that is no object name is refused before anything is mapped.
        cases.append((small.descriptor(False), "/etc/passwd", 0, "not a pixgate segment name"))
        for fd, name, offset, expect in cases:
            token = dhost.send_fds([fd])
            if fd != r:
                os.close(fd)
            ref = _wire.DescriptorRef(name, token, offset, 0, 0)
            dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload(ref))
            text = refused(dhost, ch)
            assert expect in text, text
        # Each descriptor was closed as soon as it was refused.
        pipe = os.readlink(f"/proc/self/fd/{r}")
        assert not [f for f in worker_fds(dhost) if f.startswith("/memfd:") or f == pipe]
    finally:
        for fd in (r, w):
            os.close(fd)
        readable.close()
        small.close()


def test_a_token_never_sent_or_used_already_fails(dhost: Host) -> None:
    ch = server(dhost)
    table = "pixgate._worker.current_gateway().conn.descriptors"
    assert sync(dhost, ch, f"exec {table}.TAKE_TIMEOUT = 0.3; channel.send(0)") == 0
    obj = Obj([("<u2", (8,))])
    try:
        start = time.monotonic()
        send_ref(dhost, ch, obj, token=7)
        text = refused(dhost, ch)
        assert "descriptor 7 did not arrive within 0.3 s" in text, text
        assert time.monotonic() - start < 5
        # Token 1 is used by a good reference, then named again.
        send_ref(dhost, ch, obj, access=_wire.SHARED)
        answer = dhost.next_on(ch)[1]
        assert answer == "held" or answer[0] == "LoadError"  # numpy may be missing
        dhost.send(CHANNEL_DATA, ch, _wire.dumps_payload(obj.ref(1)))
        assert "descriptor token 1 is unknown or used already" in refused(dhost, ch)
    finally:
        obj.close()


@needs_numpy
def test_the_descriptors_of_one_message_are_taken_in_any_order(dhost: Host) -> None:
    # A reference whose token is the next expected reads the socket without a wait; a
    # message of several descriptors is filed whole, whichever reference comes first.
    ch = server(dhost)
    objs = [Obj([("|u1", (8,))], fill=10 + k) for k in range(4)]
    try:
        fds = [obj.descriptor(False) for obj in objs[:3]]
        first = dhost.send_fds(fds)
        for fd in fds:
            os.close(fd)
        # The first token, as the next expected, reads the message: all three are
        # filed, the first handed out; then the third, from the filed ones.
        for k in (0, 2):
            send_ref(dhost, ch, objs[k], access=_wire.SHARED, token=first + k)
            assert dhost.next_on(ch)[1] == "held"
        assert ask(dhost, "pixgate._worker.current_gateway().conn.descriptors.filed") == 1
        # The next expected token is then a later message's, while the second is filed.
        send_ref(dhost, ch, objs[3], access=_wire.SHARED)
        assert dhost.next_on(ch)[1] == "held"
        send_ref(dhost, ch, objs[1], access=_wire.SHARED, token=first + 1)
        assert dhost.next_on(ch)[1] == "held"
        assert ask(dhost, "[int(a[0]) for a in held]") == [10, 12, 13, 11]
        assert ask(dhost, "pixgate._worker.current_gateway().conn.descriptors.filed") == 0
    finally:
        for obj in objs:
            obj.close()


def test_a_message_announcing_more_than_came_breaks_the_socket(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        fd = obj.descriptor(False)
        dhost.send_message(2, 1, [fd])
        os.close(fd)
        send_ref(dhost, ch, obj, token=1)
        text = refused(dhost, ch)
        assert "announces 2 descriptors, 1 arrived" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)  # what came was closed
        # Broken for good: a good message after it is not read.
        dhost.next_token = 3
        send_ref(dhost, ch, obj)
        assert "the descriptor socket is broken" in refused(dhost, ch)
        # Plain values still cross.
        assert sync(dhost, ch) == "sync"
    finally:
        obj.close()


def test_a_message_carrying_more_than_it_announces_breaks_the_socket(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        fds = [obj.descriptor(False), obj.descriptor(False)]
        dhost.send_message(1, 1, fds)
        for fd in fds:
            os.close(fd)
        send_ref(dhost, ch, obj, token=1)
        text = refused(dhost, ch)
        assert "announces 1 descriptors, 2 arrived" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)  # both were closed
    finally:
        obj.close()


def test_a_message_out_of_sequence_breaks_the_socket(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        fd = obj.descriptor(False)
        dhost.send_message(1, 5, [fd])
        os.close(fd)
        send_ref(dhost, ch, obj, token=5)
        text = refused(dhost, ch)
        assert "starts at token 5, expected 1" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)
        # Nor does a message without descriptors pass.
    finally:
        obj.close()


def test_a_message_without_its_descriptors_breaks_the_socket(dhost: Host) -> None:
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        dhost.send_message(1, 1, [])
        send_ref(dhost, ch, obj, token=1)
        assert "announces 1 descriptors, 0 arrived" in refused(dhost, ch)
    finally:
        obj.close()


CUT = r"""
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
used = sorted(int(n) for n in os.listdir("/proc/self/fd"))
limit = used[-1] + 1
free = limit - len(used)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
channel.send(free)
try:
    channel.receive()
except pixgate.LoadError as exc:
    text = str(exc)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
channel.send(text)
"""


def test_a_message_whose_descriptors_were_cut_breaks_the_socket(dhost: Host) -> None:
    # The kernel cuts a message whose descriptors the receiver has no room for.
    ch = server(dhost)
    obj = Obj([("<u2", (8,))])
    try:
        free = sync(dhost, ch, "exec " + CUT)
        fds = [obj.descriptor(False) for _ in range(free + 4)]
        dhost.send_fds(fds)
        for fd in fds:
            os.close(fd)
        send_ref(dhost, ch, obj, token=1)
        text = dhost.next_on(ch)[1]
        assert "(cut)" in text, text
        assert_keeps_mappings_not_descriptors(dhost, obj.name)  # what came was closed
    finally:
        obj.close()


def test_a_by_value_object_with_a_bad_name_is_refused_under_its_token() -> None:
    # An OBJECT frame whose name is not a pixgate name: refused for the reference that
    # names its token (a LoadError there), not an exception in the reader.
    from pixgate import _worker
    from pixgate._errors import LoadError as _LoadError

    table = _worker.ByValueTable()
    for token, name in [(1, b"not-a-name"), (2, b"/pxg-zz-1")]:
        payload = struct.pack("!QQQ", token, 8192, 0) + bytes([1, len(name)]) + name
        table.object(payload)
        with pytest.raises(_LoadError, match=f"object {token} was refused"):
            table.take(token)
