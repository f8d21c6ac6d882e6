"""Arrays on channels: the codec hooks of a worker.

A received array reference becomes a numpy array over the segment's mapping:
read-only for a *shared* reference, writable for a *lent* or *moved* one (a moved
segment becomes this process's to unlink). When the array of a shared or lent
reference is garbage-collected, the worker sends RELEASE so the host may use it again;
sending it back to the host releases it instead. The mapping of a shared or lent
segment is kept for the next reference to it until the host sends FORGET.

An array being sent becomes a reference: the host's own array goes back with the access
it came with; a whole shared array this process created moves to the host; anything
else (a plain numpy array, or part of a shared one) is copied once into a new segment,
which moves. The wire is specified in docs/PROTOCOL.md, the segment in
docs/SEGMENT_FORMAT.md.
"""

from __future__ import annotations

__all__ = ["FORGET", "RELEASE", "forget", "install"]

import sys

from . import _array, _segment, _wire
from ._errors import DumpError, Error, LoadError

TYPE_CHECKING = False
if TYPE_CHECKING:
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


def forget(name: str) -> None:
    """Drop the mappings kept of the host's segment ``name`` (FORGET)."""
    _resident.pop((name, False), None)
    _resident.pop((name, True), None)


def _mapped(ref: _wire.ArrayRef, writable: bool, keep: bool) -> Segment:
    """The segment of a reference: the kept mapping when it is current, else a new one;
    kept for the next reference when ``keep``."""
    key = (ref.name, writable)
    seg = _resident.pop(key, None)
    # Another generation: the header may have changed (metadata rewritten, pool slot
    # reused); read it anew.
    if seg is None or seg.closed or seg.header.generation != ref.generation:
        # Lazily: the first handoff costs the same at any size, and only pages the code
        # touches are faulted in; a kept mapping keeps its faulted pages.
        seg = _segment.open(ref.name, writable=writable, populate=False)
    if seg.generation != ref.generation:
        raise LoadError(
            f"array {ref.name}: reference of generation {ref.generation}, "
            f"segment at generation {seg.generation} (stale reference)"
        )
    if keep:
        _resident[key] = seg
    return seg


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
