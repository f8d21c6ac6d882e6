"""Arrays on channels: the codec hooks of a worker.

A received array reference becomes a numpy array over the segment's mapping:
read-only for a *shared* reference, writable for a *lent* or *moved* one (a moved
segment becomes this process's to unlink). When the array of a shared or lent
reference is garbage-collected, the worker sends RELEASE so the host may use it again;
sending it back to the host releases it instead. The mapping of a shared or lent
segment is kept for the next reference to it until the host sends FORGET.

An array being sent becomes a reference: the host's own array goes back with the access
it came with; a whole shared array this process created (and still owns) moves to the
host; anything else (a plain numpy array, part of a shared one, or an array whose segment
moved already) is copied once into a new segment, which moves. Shapes cross exactly as
they are, 0-d and zero-size ones included. The wire is specified in docs/PROTOCOL.md, the segment in
docs/SEGMENT_FORMAT.md.
"""

from __future__ import annotations

__all__ = ["FORGET", "RELEASE", "forget", "frames", "install", "release"]

import struct
import sys

from . import _array, _segment, _wire, _worker
from ._errors import DumpError, Error, LoadError, ReleaseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ._segment import Segment

RELEASE = 36
FORGET = 37


class _Held:
    """One shared or lent reference from the host, mapped here: the lease of its array."""

    __slots__ = ("name", "generation", "access", "returned")

    def __init__(self, name: str, generation: int, access: int) -> None:
        self.name = name
        self.generation = generation
        self.access = access
        self.returned = False


# (name, writable) -> the host's segment, kept mapped across references until the host
# sends FORGET (docs/PROTOCOL.md 4.13): the next reference to it then costs no open, map,
# validation or page faults. Arrays keep their segment alive by themselves (the array
# layer's registry), so dropping an entry unmaps only once they are gone too.
_resident: dict[tuple[str, bool], Segment] = {}


def _send_release(held: _Held) -> None:
    """The array of a reference was garbage-collected: release it, unless that was done."""
    if held.returned:
        return
    held.returned = True
    _notify(held)


def _release_payload(held: _Held) -> bytes:
    """``dumps_payload((name, generation, access))``, built directly for the common case
    (a frame's release is on the hot path of a stream)."""
    g = held.generation
    if not 0 <= g < 2**31:
        return _wire.dumps_payload((held.name, g, held.access))
    name = held.name.encode()
    return b"".join(
        (b"N", _I32.pack(len(name)), name, b"F", _I32.pack(g), b"F", _I32.pack(held.access), _TUPLE3)
    )


_I32 = struct.Struct("!i")
_TUPLE3 = b"@\x00\x00\x00\x03Q"


def _notify(held: _Held) -> None:
    gw = _worker.current_gateway()
    if gw is None:
        return
    try:
        gw.conn.send(RELEASE, 0, _release_payload(held))
    except (OSError, Error):
        pass  # the host is gone; nothing to release to


def forget(name: str) -> None:
    """Drop the mappings kept of the host's segment ``name`` (FORGET)."""
    _resident.pop((name, False), None)
    _resident.pop((name, True), None)


def _mapped(ref: _wire.ArrayRef, writable: bool, keep: bool) -> Segment:
    """The segment of a reference: the kept mapping when it is current, else a new one;
    kept for the next reference when ``keep``."""
    key = (ref.name, writable)
    seg = _resident.pop(key, None)
    if seg is not None and (seg.closed or seg.header.generation != ref.generation):
        # Another generation: the header may have changed. A pool slot is re-read over
        # the same mapping (that is what the slot is for); anything else is opened anew.
        seg = seg.reread() if seg.pool_slot and not seg.closed else None
    if seg is None:
        # Lazily: the first handoff costs the same at any size, and only pages the code
        # touches are faulted in; a kept mapping keeps its faulted pages. A pool slot is
        # populated once, as it will be mapped for good.
        name, directory = _split(ref.name)
        seg = _segment.open(name, writable=writable, populate=False, directory=directory)
        if seg.pool_slot and keep:
            seg.populate()
    if seg.generation != ref.generation:
        raise LoadError(
            f"array {ref.name}: reference of generation {ref.generation}, "
            f"segment at generation {seg.generation} (stale reference)"
        )
    if keep:
        _resident[key] = seg
    return seg


def _split(wire_name: str) -> tuple[str, str | None]:
    """A reference's name as (segment name, backing directory): a POSIX shared-memory
    name stands alone; a segment in a backing directory travels as its file's absolute
    path (docs/PROTOCOL.md 5.5)."""
    import os.path

    if wire_name.startswith("/pxg-"):
        return wire_name, None
    directory, base = os.path.split(wire_name)
    if not os.path.isabs(directory) or os.path.normpath(directory) != directory:
        raise LoadError(f"array reference {wire_name!r}: not a segment name or absolute path")
    return "/" + base, directory


def _import(ref: _wire.ArrayRef) -> Any:
    """Map a received reference as a numpy array."""
    try:
        if ref.access == _wire.MOVED:
            # Ours from now on: a mapping kept from an earlier lend serves once more, and
            # then the array's lifetime decides.
            _resident.pop((ref.name, False), None)
            seg = _mapped(ref, True, keep=False)
            arr = _array.map_array(seg)
            seg.adopt()
            return arr
        seg = _mapped(ref, ref.access != _wire.SHARED, keep=True)
        held = _Held(ref.name, ref.generation, ref.access)
        return _array.map_array(seg, lease=held, on_release=lambda: _send_release(held))
    except LoadError:
        raise
    except (Error, OSError, ImportError) as exc:
        raise LoadError(f"array {ref.name}: {exc}") from exc


def _export(obj: object) -> _wire.ArrayRef | None:
    """A reference for a numpy array being sent, or None for anything else."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    found = _array.entry_of(obj)
    if found is not None and found[1]:
        seg: Segment = found[0]
        held = found[2]
        if isinstance(held, _Held):
            if held.returned:
                raise DumpError(f"array {seg.name} was already given back to the host")
            held.returned = True
            return _wire.ArrayRef(held.name, held.generation, held.access)
        if seg.owned:
            seg.disown()
            return _wire.ArrayRef(seg.name, seg.generation, _wire.MOVED)
    # Anything else is copied, with its shape exactly (0-d and zero-size included:
    # np.ascontiguousarray would make a 0-d array 1-d), also a whole shared array whose
    # segment was handed to the host already.
    try:
        copy = _array.shared_copy(obj)
    except (Error, TypeError, ValueError) as exc:
        raise DumpError(f"cannot share an array of {obj.dtype} {obj.shape}: {exc}") from exc
    seg = _array.disown(copy)
    return _wire.ArrayRef(seg.name, seg.generation, _wire.MOVED)


def release(arr: object) -> None:
    """Give an array the host shared or lent back to the host now, without sending it.

    From then on the host may write it again (a pool slot goes back to its pool and
    is reused), so this process must not touch the array after the call: numpy cannot
    revoke it. Without this, the release happens when the array and every view of it
    have been garbage-collected.

    Parameters
    ----------
    arr : numpy.ndarray
        An array received from the host (shared or lent), or a view of one.

    Raises
    ------
    ReleaseError
        ``arr`` is not such an array, or it was released or sent back already.
    """
    found = _array.entry_of(arr)
    held = found[2] if found is not None else None
    if not isinstance(held, _Held):
        raise ReleaseError(
            "release() needs an array the host shared or lent to this process, got "
            + (f"an array of segment {found[0].name}" if found else type(arr).__name__)
        )
    if held.returned:
        raise ReleaseError(f"array {held.name} was already released or given back")
    held.returned = True
    _notify(held)


def _release_all(item: object, into: list[_Held] | None = None) -> None:
    """Release every array from the host in ``item`` that is still held: at once, or by
    adding it to ``into`` for :func:`_send_releases`."""
    todo = [item]
    while todo:
        x = todo.pop()
        if isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        else:
            found = _array.entry_of(x)
            held = found[2] if found is not None else None
            if isinstance(held, _Held) and not held.returned:
                held.returned = True
                if into is None:
                    _notify(held)
                else:
                    into.append(held)


def _send_releases(pending: list[_Held]) -> None:
    """Send the releases in ``pending`` with one write, and empty it."""
    gw = _worker.current_gateway()
    batch = [(RELEASE, 0, _release_payload(h)) for h in pending]
    pending.clear()
    if gw is None or not batch:
        return
    try:
        gw.conn.send_small(batch)
    except (OSError, Error):
        pass  # the host is gone; nothing to release to


# A frame loop sends its releases together while frames keep coming: each write to the
# pipe wakes the host, which on a virtual machine costs more than the frame's handling.
# They go at once when the loop would wait for the next frame, and at the latest after
# this many releases or this many seconds.
_BATCH_RELEASES = 16
_BATCH_SECONDS = 0.0002


def frames(channel: Any) -> Iterator[Any]:
    """Iterate over the items the host sends on ``channel`` until it closes it, giving
    the host's arrays in each item back as soon as the next item is asked for.

    The consumer side of a host's frame stream: each frame (or anything holding arrays
    the host shared or lent) is released when the loop moves on, or when it ends, so a
    pool slot is free for the next frame without waiting for garbage collection. An
    array the loop body sends back is not released twice. Keep nothing of a frame past
    its iteration; copy what must outlive it.

    While the next frames have already arrived, releases are sent together (at most
    16, at most 0.2 ms late); when the loop would wait for a frame, at once.

    Parameters
    ----------
    channel : pixgate.Channel
        The channel of the remote code.

    Yields
    ------
    object
        Each item, in the order the host sent them.
    """
    import time

    pending: list[_Held] = []
    last = time.monotonic()

    def flush() -> None:
        # The channel calls this whenever a receive is about to block, whatever is
        # queued or readable: the host may be waiting for exactly these releases.
        nonlocal last
        if pending:
            _send_releases(pending)
            last = time.monotonic()

    outer = channel._before_wait
    channel._before_wait = flush
    try:
        for item in channel:
            try:
                yield item
            finally:
                _release_all(item, pending)
                if pending:
                    now = time.monotonic()
                    if len(pending) >= _BATCH_RELEASES or now - last >= _BATCH_SECONDS:
                        _send_releases(pending)
                        last = now
    finally:
        channel._before_wait = outer
        _send_releases(pending)


def install() -> None:
    """Make this worker's codec map received arrays and share sent ones."""
    _wire.set_array_hooks(_export, _import)
