"""Arrays on channels: the codec hooks of a worker.

A received array reference becomes a numpy array over the segment's mapping:
read-only for a *shared* reference, writable for a *lent* or *moved* one (a moved
segment becomes this process's: to unlink, when named). When the array of a shared or
lent reference is garbage-collected, the worker sends RELEASE so the host may use it
again; sending it back to the host releases it instead. The mapping of a shared or lent
segment is kept for the next reference to it until the host sends FORGET.

References come in two kinds (docs/PROTOCOL.md 5.5, 5.7): ``U`` names a named segment,
which the worker opens; ``V`` names an anonymous object, whose descriptor the host
passed on the gateway's descriptor socket under a token (or token 0: the worker maps the
object already). The worker validates the descriptor, maps the *whole* object once per
access (read-only, writable), closes the descriptor, and reads the header of the segment
at the reference's offset: a pool arena's slots are views of one mapping. It keeps
mappings, never descriptors, of what it received, so the descriptors it holds do not
grow with the frames it sees.

An array being sent becomes a reference: the host's own array goes back with the access
it came with (for an anonymous one: ``V`` with token 0); a whole shared array this
process created (and still owns) moves to the host; anything else (a plain numpy array,
part of a shared one, or an array whose segment moved already) is copied once into a new
segment, which moves. On a gateway with the anonymous transport this process's arrays
are anonymous segments, and a move passes the object's descriptor with the frame.
Shapes cross exactly as they are, 0-d and zero-size ones included. The wire is specified
in docs/PROTOCOL.md, the segment in docs/SEGMENT_FORMAT.md.
"""

from __future__ import annotations

__all__ = ["FORGET", "RELEASE", "forget", "frames", "install", "release", "settle"]

import os
import struct
import sys
import threading
import time

from . import _array, _segment, _wire, _worker
from ._errors import DumpError, Error, LoadError, ReleaseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ._segment import Segment

RELEASE = 36
FORGET = 37


class _Collector:
    """Collects garbage while leases are out, on an interpreter without reference
    counting (PyPy).

    There an array the remote code drops goes only when the garbage collector runs,
    and with it the lease that gives the host its array back: an idle worker would keep
    a lent array from the host for ever (and the mapping of a segment moved to or
    from the host, whose memory nothing else frees). While any is out, a daemon thread runs
    the collector: ``FIRST`` seconds after a lease is made or one came back, then at
    doubling intervals up to ``LAST`` seconds. CPython frees an array when its last
    reference goes, and never starts the thread.
    """

    FIRST = 0.01
    LAST = 1.0

    def __init__(self) -> None:
        self.out = 0
        self._cond = threading.Condition()
        self._started = False
        #: Whether this interpreter needs it (no reference counting).
        self.active = sys.implementation.name != "cpython"

    def leased(self) -> None:
        """A lease was made."""
        if not self.active:
            return
        with self._cond:
            self.out += 1
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="pixgate-collector", daemon=True).start()
            self._cond.notify()

    def watch(self, seg: Segment) -> None:
        """``seg`` moved to or from the host: its mapping here, which lasts as long as
        the arrays over it, counts as out until the segment is collected (the host
        waits for the memory of a moved segment to be let go; the collector knows
        nothing of mapped memory and would not run for it)."""
        if not self.active:
            return
        import weakref

        self.leased()
        weakref.finalize(seg, self.returned)

    def returned(self) -> None:
        """A lease came back (released, sent back, or its array was collected)."""
        if not self.active:
            return
        with self._cond:
            self.out -= 1
            self._cond.notify()

    def _run(self) -> None:
        delay = self.FIRST
        due = time.monotonic() + delay
        seen = 0
        while True:
            with self._cond:
                while self.out == 0:
                    self._cond.wait()
                    delay = self.FIRST
                    due = time.monotonic() + delay
                if self.out != seen:  # activity: collect soon again
                    seen = self.out
                    delay = self.FIRST
                    due = min(due, time.monotonic() + delay)
                left = due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            _segment.collect_all(1)
            delay = min(delay * 2, self.LAST)
            due = time.monotonic() + delay


_collector = _Collector()


def settle() -> None:
    """Collect garbage now if leases are out on an interpreter without reference
    counting, so that what was dropped goes back before what this process sends next
    (the worker calls it when remote code ends, before its channel closes)."""
    if _collector.active and _collector.out:
        _segment.collect_all()


class _Held:
    """One shared or lent reference from the host, mapped here: the lease of its array.

    ``name`` is the segment's (or anonymous object's) name, ``key`` what RELEASE names
    (the name, or ``name@offset`` for a slot of an arena), ``offset`` where the segment
    lies in its object; ``anonymous`` says which kind of reference gives it back.
    """

    __slots__ = (
        "name", "generation", "access", "_returned", "key", "offset", "anonymous", "copy"
    )

    def __init__(
        self,
        name: str,
        generation: int,
        access: int,
        key: str | None = None,
        offset: int = 0,
        anonymous: bool = False,
    ) -> None:
        self.name = name
        self.generation = generation
        self.access = access
        self._returned = False
        _collector.leased()
        self.key = name if key is None else key
        self.offset = offset
        self.anonymous = anonymous
        #: By value, for a lend: the segment of this process's copy, whose pixels go
        #: back to the host before the release (docs/PROTOCOL.md 4.14).
        self.copy: Segment | None = None

    @property
    def returned(self) -> bool:
        """Whether the array went back to the host (released or sent back)."""
        return self._returned

    @returned.setter
    def returned(self, value: bool) -> None:
        if value and not self._returned:
            _collector.returned()
        self._returned = value

    def reference(self) -> _wire.ArrayRef | _wire.DescriptorRef:
        """The reference that gives the array back: as it came, token 0 for an
        anonymous one (the host maps its own object)."""
        if self.anonymous:
            return _wire.DescriptorRef(self.name, 0, self.offset, self.generation, self.access)
        return _wire.ArrayRef(self.name, self.generation, self.access)


class _Object:
    """A kept mapping of a whole anonymous object of the host, with one access.

    It counts as one use of its mapping until :meth:`drop` (FORGET, or the object moved
    to this process); ``segments`` holds the segment read at each offset a reference
    named (one for a plain array, one per slot of a pool arena), each a use of its own.
    """

    __slots__ = ("_dropped", "mapping", "name", "segments", "size", "writable")

    def __init__(self, name: str, mapping: _segment.SegmentMapping, size: int, writable: bool) -> None:
        self.name = name
        self.mapping = mapping
        self.size = size
        self.writable = writable
        self.segments: dict[int, Segment] = {}
        self._dropped = False
        mapping.acquire()

    def drop(self) -> None:
        """Let go of the mapping: it is unmapped once no array and no segment uses it."""
        if self._dropped:
            return
        self._dropped = True
        self.segments.clear()
        self.mapping.release()


# (name, writable) -> what is kept mapped of the host's segment or object across
# references until the host sends FORGET (docs/PROTOCOL.md 4.13): a Segment for a named
# segment, an _Object for an anonymous object (all its slots). The next reference then
# costs no open, map, validation or page faults. Arrays keep their segment alive by
# themselves (the array layer's registry), so dropping an entry unmaps only once they are
# gone too.
_resident: dict[tuple[str, bool], Any] = {}


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
        return _wire.dumps_payload((held.key, g, held.access))
    name = held.key.encode()
    return b"".join(
        (b"N", _I32.pack(len(name)), name, b"F", _I32.pack(g), b"F", _I32.pack(held.access), _TUPLE3)
    )


_I32 = struct.Struct("!i")
_TUPLE3 = b"@\x00\x00\x00\x03Q"


def _write_back(held: _Held) -> None:
    """By value: a lent array's pixels go back to the host (WRITE_BACK), once, before
    its release; then this process's copy is let go."""
    seg, held.copy = held.copy, None
    if seg is None:
        return
    gw = _worker.current_gateway()
    table = None if gw is None else gw.conn.descriptors
    try:
        if isinstance(table, _worker.ByValueTable):
            table.write_back(held.key, held.generation, seg.data)
    except (OSError, Error):
        pass  # the host is gone


def _notify(held: _Held) -> None:
    """Give ``held`` back: its pixels first (by value), then RELEASE. From a weakref
    callback this may run inside a frame write of this very thread: then it runs once
    that frame is written (the frame lock's ``soon``)."""
    gw = _worker.current_gateway()
    if gw is None:
        _write_back(held)
        return

    def give_back() -> None:
        _write_back(held)
        try:
            gw.conn.send(RELEASE, 0, _release_payload(held))
        except (OSError, Error):
            pass  # the host is gone; nothing to release to

    gw.conn.frame_lock.soon(give_back)


def forget(name: str) -> None:
    """Drop the mappings kept of the host's segment or anonymous object ``name``
    (FORGET): of an object, every slot's."""
    for writable in (False, True):
        _drop(_resident.pop((name, writable), None))


def _drop(entry: object) -> None:
    if type(entry) is _Object:
        entry.drop()


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


def _descriptors() -> Any:
    """This worker's descriptor table: a ``DescriptorTable``, a ``ByValueTable`` (its
    gateway passes arrays by value, with no shared memory), or None."""
    gw = _worker.current_gateway()
    return None if gw is None else gw.conn.descriptors


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


def _anonymous_segment(
    ref: _wire.DescriptorRef, writable: bool, keep: bool, table: Any
) -> tuple[Segment, int | None]:
    """The segment of a reference by descriptor, over the kept mapping of its object or
    a new one; kept for the next reference when ``keep``. ``table`` is this worker's
    descriptor table (:func:`_descriptors`), which the descriptor of a token comes from.

    Returns the segment and, for a reference that is not kept (a move) and came with a
    descriptor, that descriptor (the caller owns it); otherwise the descriptor is closed
    here, right after mapping.
    """
    key = (ref.name, writable)
    fd = None
    obj: Any
    if ref.token:
        if table is None:
            raise LoadError(
                f"array {ref.key}: a reference by descriptor, and this worker has no "
                "descriptor socket"
            )
        fd = table.take(ref.token)
        try:
            mapping, size = _segment.map_descriptor(fd, ref.name, ref.offset, writable)
        except BaseException:
            os.close(fd)
            raise
        if keep:
            os.close(fd)
            fd = None
        obj = _Object(ref.name, mapping, size, writable)
        fresh = True
    else:
        obj = _resident.get(key)
        if type(obj) is not _Object:
            access = "writable" if writable else "read-only"
            raise LoadError(
                f"array {ref.key}: reference without a descriptor (token 0), and this "
                f"worker keeps no {access} mapping of {ref.name}"
            )
        fresh = False
    try:
        seg = None if fresh else obj.segments.pop(ref.offset, None)
        if seg is not None and (seg.closed or seg.header.generation != ref.generation):
            # Another generation: the header may have changed. A pool slot's is re-read
            # (cheaply when only the generation moved); anything else is read anew.
            seg = seg.reread() if seg.pool_slot and not seg.closed else None
        if seg is None:
            seg = _segment.at_offset(obj.mapping, obj.size, ref.name, ref.offset, writable)
            if seg.pool_slot and keep:
                # Mapped for good: populated once, as a named slot is.
                seg.populate()
        if seg.generation != ref.generation:
            raise LoadError(
                f"array {ref.key}: reference of generation {ref.generation}, "
                f"segment at generation {seg.generation} (stale reference)"
            )
    except BaseException:
        if fresh:
            obj.drop()
        if fd is not None:
            os.close(fd)
        raise
    if keep:
        obj.segments[ref.offset] = seg
        if fresh:
            old = _resident.get(key)
            _resident[key] = obj
            if old is not None:
                _drop(old)
    elif fresh:
        obj.drop()
    return seg, fd


def import_reference(ref: _wire.ArrayRef | _wire.DescriptorRef) -> Any:
    """Map a received reference as a numpy array."""
    if isinstance(ref, _wire.DescriptorRef):
        return _import_anonymous(ref)
    try:
        if ref.access == _wire.MOVED:
            # Ours from now on: a mapping kept from an earlier lend serves once more, and
            # then the array's lifetime decides.
            _resident.pop((ref.name, False), None)
            seg = _mapped(ref, True, keep=False)
            arr = _array.map_array(seg)
            seg.adopt()
            _collector.watch(seg)
            return arr
        seg = _mapped(ref, ref.access != _wire.SHARED, keep=True)
        held = _Held(ref.name, ref.generation, ref.access)
        return _leased_array(seg, held)
    except LoadError:
        raise
    except (Error, OSError, ImportError) as exc:
        raise LoadError(f"array {ref.name}: {exc}") from exc


def _import_anonymous(ref: _wire.DescriptorRef) -> Any:
    """Map a received reference by descriptor as a numpy array."""
    access = ref.access
    # Looked up once: a handoff runs cold, where every call costs (docs/ARCHITECTURE.md).
    table = _descriptors()
    by_value = table is not None and table.by_value
    if not ref.token and access != _wire.MOVED:
        # The common cases of a resident array (shared or lent again, no descriptor)
        # and of a pool slot's next frame: the segment kept at its offset serves when
        # its header is of this generation, a slot's after it is re-read over the same
        # mapping. Anything else (nothing kept, a header that no longer validates, by
        # value) takes the general path below, which also says what is wrong.
        obj = _resident.get((ref.name, access != _wire.SHARED))
        if type(obj) is _Object and not by_value:
            seg = obj.segments.get(ref.offset)
            key = ref.key
            try:
                if seg is not None and not seg.closed:
                    if seg.header.generation != ref.generation and seg.pool_slot:
                        seg = obj.segments[ref.offset] = seg.reread()
                    if seg.header.generation == ref.generation == seg.generation:
                        held = _Held(ref.name, ref.generation, access, key, ref.offset, True)
                        return _leased_array(seg, held)
            except LoadError:
                raise
            except (Error, OSError, ImportError) as exc:
                raise LoadError(f"array {key}: {exc}") from exc
    try:
        if ref.access == _wire.MOVED:
            # Ours from now on: a mapping kept from an earlier share or lend leaves the
            # cache (a writable one serves once more when no descriptor came), and the
            # array's lifetime decides. The descriptor, when one came, stays with the
            # segment, so that the array can move on to the host.
            _drop(_resident.pop((ref.name, False), None))
            try:
                seg, fd = _anonymous_segment(ref, True, False, table)
            finally:
                _drop(_resident.pop((ref.name, True), None))
            arr = _array.map_array(seg)
            seg.adopt(fd)
            _collector.watch(seg)
            return arr
        writable = ref.access != _wire.SHARED
        if by_value:
            # A copy of the host's, made for this reference only: nothing is kept for
            # the next one (which brings its own copy), and a lend's pixels go back.
            seg, fd = _anonymous_segment(ref, writable, False, table)
            if fd is not None:
                os.close(fd)
        else:
            seg, _ = _anonymous_segment(ref, writable, True, table)
        held = _Held(ref.name, ref.generation, ref.access, ref.key, ref.offset, True)
        if writable and by_value:
            held.copy = seg
        return _leased_array(seg, held)
    except LoadError:
        raise
    except (Error, OSError, ImportError) as exc:
        raise LoadError(f"array {ref.key}: {exc}") from exc


def _leased_array(seg: Segment, held: _Held) -> Any:
    """The array of a shared or lent reference, whose collection releases ``held``; if
    it cannot be made, the lease no longer counts as out (nothing will release it)."""
    try:
        return _array.map_array(seg, lease=held, on_release=lambda: _send_release(held))
    except BaseException:
        held.returned = True
        raise


def export_array(obj: object) -> _wire.ArrayRef | _wire.DescriptorRef | None:
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
                raise DumpError(f"array {seg.key} was already given back to the host")
            held.returned = True
            _write_back(held)
            return held.reference()
        if seg.anonymous:
            # Moved with its descriptor; an anonymous array moved here without one (the
            # host knew this worker mapped the object already) is copied instead.
            if seg.descriptor is not None:
                ref = seg.move_out()
                _collector.watch(seg)
                return ref
        elif seg.owned:
            seg.disown()
            return _wire.ArrayRef(seg.name, seg.generation, _wire.MOVED)
    # Anything else is copied, with its shape exactly (0-d and zero-size included:
    # np.ascontiguousarray would make a 0-d array 1-d), also a whole shared array whose
    # segment was handed to the host already.
    try:
        copy = _array.shared_copy(obj)
    except (Error, TypeError, ValueError) as exc:
        raise DumpError(f"cannot share an array of {obj.dtype} {obj.shape}: {exc}") from exc
    made = _array.segment_of(copy)
    if made is None:  # pragma: no cover - a shared copy is a segment's whole array
        raise DumpError(f"cannot share an array of {obj.dtype} {obj.shape}")
    seg = made[0]
    if seg.anonymous:
        moved = seg.move_out()
        _collector.watch(seg)
        return moved
    seg.disown()
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
        raise ReleaseError(f"array {held.key} was already released or given back")
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
    for h in pending:
        _write_back(h)
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

    outer = _worker.set_before_wait(channel, flush)
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
        _worker.set_before_wait(channel, outer)
        _send_releases(pending)


def install() -> None:
    """Make this worker's codec map received arrays and share sent ones."""
    _wire.set_array_hooks(export_array, import_reference)
