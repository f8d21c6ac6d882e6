"""Arrays on channels: the codec hooks of a worker.

A received array reference becomes a numpy array over the segment's mapping:
read-only for a *shared* reference, writable for a *lent* or *moved* one (a moved
segment becomes this process's to unlink). When the array of a shared or lent
reference is garbage-collected, the worker sends RELEASE so the host may use it again;
sending it back to the host releases it instead.

An array being sent becomes a reference: the host's own array goes back with the access
it came with; a whole shared array this process created moves to the host; anything
else (a plain numpy array, or part of a shared one) is copied once into a new segment,
which moves. The wire is specified in docs/PROTOCOL.md, the segment in
docs/SEGMENT_FORMAT.md.
"""

from __future__ import annotations

__all__ = ["install", "RELEASE"]

import sys

from . import _wire
from ._errors import DumpError, Error, LoadError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._segment import Segment

RELEASE = 36


class _Held:
    """A host segment mapped here under a shared or lent reference."""

    __slots__ = ("name", "generation", "access", "returned")

    def __init__(self, name: str, generation: int, access: int) -> None:
        self.name = name
        self.generation = generation
        self.access = access
        self.returned = False


# id(Segment) -> _Held, for the host segments this worker holds. A Segment lives as long
# as the arrays made from it (the array layer's registry keeps it).
_held: dict[int, _Held] = {}


def _send_release(held: _Held, key: int) -> None:
    _held.pop(key, None)
    if held.returned:
        return
    from . import _worker

    gw = _worker.current_gateway()
    if gw is None:
        return
    try:
        payload = _wire.dumps_payload((held.name, held.generation, held.access))
        gw.conn.send(RELEASE, 0, payload)
    except (OSError, Error):
        pass  # the host is gone; nothing to release to


def _import(ref: _wire.ArrayRef) -> Any:
    """Map a received reference as a numpy array."""
    import weakref

    from . import _array, _segment

    try:
        # Lazily: a handoff then costs the same at any size, and only pages the code
        # touches are faulted in (populating cost ~40 ms/GiB per handoff and saved
        # nothing measurable when every page was read: BENCHMARKS.md, P2/P3).
        seg = _segment.open(ref.name, writable=ref.access != _wire.SHARED, populate=False)
        if seg.generation != ref.generation:
            raise LoadError(
                f"array {ref.name}: reference of generation {ref.generation}, "
                f"segment at generation {seg.generation} (stale reference)"
            )
        arr = _array.map_array(seg)
    except LoadError:
        raise
    except (Error, OSError, ImportError) as exc:
        raise LoadError(f"array {ref.name}: {exc}") from exc
    if ref.access == _wire.MOVED:
        seg.adopt()
    else:
        held = _Held(ref.name, ref.generation, ref.access)
        key = id(seg)
        _held[key] = held
        weakref.finalize(seg, _send_release, held, key)
    return arr


def _export(obj: object) -> _wire.ArrayRef | None:
    """A reference for a numpy array being sent, or None for anything else."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    from . import _array

    found = _array.segment_of(obj)
    if found is not None and found[1]:
        seg: Segment = found[0]
        held = _held.get(id(seg))
        if held is not None:
            if held.returned:
                raise DumpError(f"array {seg.name} was already given back to the host")
            held.returned = True
            return _wire.ArrayRef(seg.name, held.generation, held.access)
        if seg.owned:
            seg.disown()
            return _wire.ArrayRef(seg.name, seg.generation, _wire.MOVED)
    try:
        copy = _array.asarray(np.ascontiguousarray(obj))
    except (Error, TypeError, ValueError) as exc:
        raise DumpError(f"cannot share an array of {obj.dtype} {obj.shape}: {exc}") from exc
    seg = _array.disown(copy)
    return _wire.ArrayRef(seg.name, seg.generation, _wire.MOVED)


def install() -> None:
    """Make this worker's codec map received arrays and share sent ones."""
    _wire.set_array_hooks(_export, _import)
