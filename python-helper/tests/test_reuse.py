"""Reuse of this process's own anonymous segments (docs/SEGMENT_FORMAT.md 10): real
memfds and mappings in this process; the end-to-end cases with a Rust host are in
tests/reuse.rs."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest
from conftest import collect

from pixgate import _array, _segment

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="anonymous segments are memfds on Linux"
)

MIB = 1 << 20
SIZE = 2 * MIB + _segment.PAGE  # a 2 MiB uint8 array and its header page


@pytest.fixture(autouse=True)
def nothing_kept_after() -> Iterator[None]:
    yield
    collect()
    _segment.drop_kept()


def state_of(name: str) -> int:
    rec = next(r for r in _segment._kept if r.name == name)
    assert rec.mm is not None
    return int(_segment._U32.unpack_from(rec.mm, 80)[0])


def new(nbytes: int = 2 * MIB) -> tuple[_segment.Segment, object]:
    seg = _segment.create_anonymous("|u1", (nbytes,), reuse=True)
    return seg, _array.map_array(seg)


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_segment_is_kept_when_its_array_goes_and_reused_by_size() -> None:
    seg, arr = new()
    arr[...] = 7  # type: ignore[index]
    name = seg.name
    assert not _segment.reused(seg)
    del seg, arr
    collect()
    assert _segment.kept() == [(name, SIZE, False)]
    assert state_of(name) == _segment.STATE_FREE
    again, arr2 = new()
    assert again.name == name and _segment.reused(again)
    assert again.generation == 1 and again.state == _segment.STATE_OWNED
    assert int(arr2.min()) == 7, "the data are the last array's"  # type: ignore[attr-defined]
    # The rewritten header validates as any other: map the object anew and read it.
    fd = again.descriptor
    assert fd is not None
    mapping, size = _segment.map_descriptor(fd, name, 0, writable=False)
    mapping.acquire()
    try:
        seen = _segment.at_offset(mapping, size, name, 0, writable=False)
        assert (seen.shape, seen.generation) == ((2 * MIB,), 1)
        seen.close()
    finally:
        mapping.release()
    assert _segment.kept() == []
    other, _ = new(3 * MIB)
    assert other.name != name, "another size is another object"


def test_nothing_is_reused_while_an_array_or_the_segment_object_lives() -> None:
    seg, arr = new()
    name = seg.name
    del arr  # the segment object still holds its use
    collect()
    assert _segment.kept() == []
    assert new()[0].name != name
    seg2, arr2 = new()
    del seg2  # the array still maps it
    collect()
    assert all(k[0] != _array.segment_of(arr2)[0].name for k in _segment.kept())  # type: ignore[index]


def test_small_ones_and_given_up_ones_are_not_kept() -> None:
    before = fds()
    seg, arr = new(MIB // 2)
    del seg, arr
    seg, arr = new()
    seg.disown()  # its descriptor closes now: nothing to keep
    del seg, arr
    collect()
    assert _segment.kept() == []
    assert fds() == before


def test_the_two_parts_arriving_on_two_threads_keep_the_record_once() -> None:
    before = fds()
    for i in range(200):
        name = f"/pxg-{os.getpid():x}-{i:016x}"
        fd = _segment.anonymous_object(name)
        os.ftruncate(fd, SIZE)
        mm = _segment._map(fd, SIZE, True, name, populate=False)
        rec = _segment._Kept(name, SIZE)
        go = threading.Barrier(2)

        def give_fd(rec: _segment._Kept = rec, fd: int = fd, go: threading.Barrier = go) -> None:
            go.wait()
            rec.give_descriptor(fd)

        t = threading.Thread(target=give_fd)
        t.start()
        go.wait()
        rec.give_mapping(mm)
        t.join(10)
        assert not t.is_alive()
        names = [k[0] for k in _segment.kept()]
        assert names.count(name) == 1, (i, names)
    assert len(_segment.kept()) == 8, "at most eight are kept"
    _segment.drop_kept()
    assert fds() == before, "every descriptor of a dropped record is closed"


def test_a_moved_one_is_kept_out_and_reused_only_once_written_free() -> None:
    seg, arr = new()
    name = seg.name
    ref = seg.move_out()
    assert ref.outgoing is not None
    ref.outgoing.sent()  # as after the frame that carries it
    del seg, arr, ref
    collect()
    assert _segment.kept() == [(name, SIZE, True)]
    assert state_of(name) == _segment.STATE_MOVED
    seg2, arr2 = new()
    assert seg2.name != name, "not while the receiver may hold it"
    del seg2, arr2
    collect()
    rec = next(r for r in _segment._kept if r.name == name)
    assert rec.mm is not None
    _segment._U32.pack_into(rec.mm, 80, _segment.STATE_FREE)  # the receiver let go
    held = [new() for _ in range(2)]
    names = {s.name for s, _ in held}
    assert name in names


def test_reuse_limit_takes_bytes_and_zero_gives_up_everything() -> None:
    assert _segment.reuse_limit() == 256 * MIB
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError):
            _segment.reuse_limit(bad)  # type: ignore[arg-type]
    seg, arr = new()
    del seg, arr
    collect()
    assert len(_segment.kept()) == 1
    try:
        assert _segment.reuse_limit(0) == 0
        assert _segment.kept() == []
        seg, arr = new()
        name = seg.name
        del seg, arr
        collect()
        assert _segment.kept() == [] and new()[0].name != name
    finally:
        _segment.reuse_limit(256 * MIB)
