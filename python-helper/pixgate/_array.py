"""numpy arrays backed by shared-memory segments, and the public array API.

An array made here lives in its own segment (see :mod:`pixgate._segment`): the host can
map it without a copy. In a worker whose gateway passes descriptors the segment is an
anonymous object (no name in /dev/shm; it moves to the host with its descriptor),
otherwise a named one. numpy is imported when a function needs it, so ``import pixgate``
works without numpy; xarray is optional and only :func:`to_xarray` imports it.

Lifetime
--------
The data of a segment's array is a view of an *anchor*, ``np.frombuffer(segment.data)``
(``data`` is a memoryview of the mapping's data area), which every numpy view of the
array has as its base. Each anchor counts as a use of the mapping from the moment it is
made until it is garbage-collected (a weakref callback ends the use), and the mapping is
unmapped only when no use is left (:class:`pixgate._segment.SegmentMapping`): so the mapping
stays mapped as long as the array or any view of it exists, whatever happens to the
:class:`~pixgate._segment.Segment` object and on any interpreter (CPython refuses
``mmap.close()`` while buffers are exported, PyPy does not; nothing relies on either).
The anchor must come from ``frombuffer``: ``np.ndarray(buffer=mapping)`` alone keeps no
buffer of the mapping, so the mmap object could be collected under the array. A
segment this process owns is unlinked when its last array is garbage-collected (or at
exit), unless its ownership was handed to another process with :func:`disown`.

Read-only segments are mapped without write permission, so their arrays are not
writeable and numpy refuses to make them writeable.
"""

from __future__ import annotations

__all__ = [
    "asarray",
    "disown",
    "empty",
    "entry_of",
    "full",
    "is_shared",
    "map_array",
    "meta",
    "reuse_limit",
    "segment_of",
    "shared_copy",
    "to_xarray",
    "zeros",
]

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    import numpy as np

from . import _segment
from ._errors import DTypeError, LayoutError
from ._segment import Segment

# id(anchor) -> (weak reference to the anchor, its segment, its lease, weak reference to
# the array map_array returned over it). The anchor is
# the flat uint8 array over the data area that map_array makes for each array; every
# array it makes, and every numpy view of one, has it as its ``base`` (numpy collapses
# view chains down to the array whose base is not an ndarray, here the anchor, whose
# base is a memoryview of the mapping). The entry holds the segment alive exactly as
# long as the anchor exists; the lease is what the array was mapped for (see entry_of).
_anchors: dict[int, tuple[Any, Segment, object, Any]] = {}

# typestr -> numpy dtype, built once per type.
_dtypes: dict[str, Any] = {}


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ImportError(
            "pixgate's shared arrays need numpy, which is not installed (pip install numpy)"
        ) from None
    return numpy


def map_array(
    segment: Segment,
    lease: object = None,
    on_release: Callable[[], object] | None = None,
) -> np.ndarray:
    """The array a segment holds, as a numpy view of its mapping.

    Every call makes a new array, also for a segment mapped before.

    Parameters
    ----------
    segment : Segment
        An open segment; its header has been validated.
    lease : object, optional
        Anything; :func:`entry_of` returns it for this array and its views.
    on_release : callable, optional
        Called once when this array and every view of it have been garbage-collected
        (from a weakref callback: it must not raise).

    Returns
    -------
    numpy.ndarray
        Writeable only if the segment was mapped writable. The array keeps the mapping
        alive, and the segment alive and registered (see :func:`segment_of`).
    """
    import weakref

    np = _numpy()
    dtype = _dtypes.get(segment.dtype)
    if dtype is None:
        dtype = _dtypes[segment.dtype] = np.dtype(segment.dtype)
    # The anchor, one per call, holds the export that pins the mapping; numpy makes it
    # the base of the array and of every view of it. It must come from frombuffer:
    # np.ndarray(buffer=...) releases the buffer it is given and keeps only a reference,
    # so the mapping could then be closed under a live array (a crash, not an error).
    anchor = np.frombuffer(segment.data, dtype=np.uint8)
    arr = np.ndarray(segment.shape, dtype=dtype, buffer=anchor, strides=segment.strides)
    key = id(anchor)
    # The anchor is a use of the mapping until it is collected: the mapping is never
    # closed under it, whatever the interpreter lets mmap.close() do.
    end_use = segment.begin_use()

    def gone(ref: object, key: int = key) -> None:
        entry = _anchors.get(key)
        if entry is not None and entry[0] is ref:
            del _anchors[key]
        end_use()
        if on_release is not None:
            on_release()

    _anchors[key] = (weakref.ref(anchor, gone), segment, lease, weakref.ref(arr))
    return arr


def segment_of(arr: object) -> tuple[Segment, bool] | None:
    """The segment an array's memory belongs to.

    Parameters
    ----------
    arr : object
        Any object; only numpy arrays can be shared.

    Returns
    -------
    (Segment, bool) or None
        None when ``arr`` is not a view of a segment. Otherwise the segment and whether
        ``arr`` is exactly the segment's array: the same data pointer, shape, strides
        and dtype. A view of part of it (or of its bytes as another type) gives False.
    """
    found = entry_of(arr)
    return None if found is None else (found[0], found[1])


def entry_of(arr: object) -> tuple[Segment, bool, object] | None:
    """As :func:`segment_of`, with the ``lease`` :func:`map_array` was given as third
    item."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(arr, np.ndarray) or not _anchors:
        return None
    base: object = arr
    while isinstance(base, np.ndarray):
        entry = _anchors.get(id(base))
        if entry is not None and entry[0]() is base:
            seg = entry[1]
            whole = entry[3]() is arr or (
                arr.__array_interface__["data"][0] == base.__array_interface__["data"][0]
                and arr.shape == seg.shape
                and arr.strides == seg.strides
                and arr.dtype == _dtypes[seg.dtype]
            )
            return seg, whole, entry[2]
        base = base.base
    return None


def is_shared(arr: object) -> bool:
    """Whether ``arr`` is (a view of) an array in a shared-memory segment.

    Parameters
    ----------
    arr : object
        Any object.

    Returns
    -------
    bool
    """
    return segment_of(arr) is not None


def disown(arr: object) -> Segment:
    """Give up this process's ownership of the segment behind ``arr``.

    The segment is then no longer unlinked when the array is garbage-collected or at
    exit: the process it was handed to unlinks it.

    Parameters
    ----------
    arr : numpy.ndarray
        A shared array or a view of one.

    Returns
    -------
    Segment
        The segment.

    Raises
    ------
    TypeError
        ``arr`` is not a shared array.
    """
    found = segment_of(arr)
    if found is None:
        raise TypeError("disown() needs a shared array (from pixgate.empty, zeros, ...)")
    found[0].disown()
    return found[0]


def _typestr(dtype: object) -> str:
    """The segment typestr of a dtype-like, or DTypeError."""
    np = _numpy()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"dtype {dtype!r} is not a numpy dtype") from None
    typestr = dt.str
    if typestr not in _segment.DTYPES or dt.fields is not None or dt.subdtype is not None:
        raise DTypeError(
            f"dtype {dt} ({typestr}) is not supported by shared arrays; expected bool, "
            "uint8-uint64, int8-int64, float16, float32, float64, complex64 or "
            "complex128, little-endian"
        )
    if sys.byteorder != "little":  # pragma: no cover - no big-endian test machine
        raise DTypeError("shared arrays need a little-endian machine")
    return str(typestr)


def _merge_meta(
    ndim: int, dims: Iterable[str] | None, meta: dict[str, Any] | None
) -> dict[str, Any] | None:
    if dims is None:
        return meta
    if isinstance(dims, str) or not hasattr(dims, "__iter__"):
        raise LayoutError(f"dims must be a sequence of str, one per axis, got {dims!r}")
    merged = dict(meta or {})
    if merged.get("dims") is not None and list(merged["dims"]) != list(dims):
        raise LayoutError(f"dims {list(dims)} disagree with meta['dims'] {merged['dims']}")
    merged["dims"] = list(dims)
    return merged


def empty(
    shape: int | Iterable[int],
    dtype: object = "float64",
    dims: Iterable[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """A new C-ordered shared array; as with ``numpy.empty``, its values are whatever
    its memory held (zeros in a new segment; a worker reuses the segment of an earlier
    array of the same size, see :func:`reuse_limit`). Use :func:`zeros` for zeros.

    Parameters
    ----------
    shape : int or sequence of int
        At most 32 dimensions; zero-size axes are allowed.
    dtype : dtype-like, optional
        bool, uint8-uint64, int8-int64, float16, float32, float64, complex64 or
        complex128 (little-endian); float64 by default.
    dims : sequence of str, optional
        Dimension names, one per axis (such as ``["t", "z", "c", "y", "x"]``); short
        for ``meta={"dims": ...}``.
    meta : dict, optional
        Metadata stored in the segment's header: ``dims``, ``scale`` (one float per
        axis), ``units`` (one str per axis), ``channel_names``, ``name``, ``attrs``
        (a dict of plain values).

    Returns
    -------
    numpy.ndarray
        A writeable array owned by this process. In a worker on a gateway with the
        anonymous transport its segment is an anonymous object, whose memory goes with
        the array's last view (or with the host, once sent); otherwise a named segment,
        unlinked when the array (and every view of it) is garbage-collected, or at exit.

    Raises
    ------
    DTypeError
        An unsupported dtype (a ``TypeError``).
    LayoutError
        A bad shape or metadata (a ``ValueError``).
    SegmentError
        The segment could not be created, e.g. ``problem == "no space"``.
    ImportError
        numpy is not installed.
    """
    return _new(shape, dtype, dims, meta, zero=False)


def _new(
    shape: int | Iterable[int],
    dtype: object,
    dims: Iterable[str] | None,
    meta: dict[str, Any] | None,
    zero: bool,
) -> np.ndarray:
    typestr = _typestr(dtype)
    shape_t = _segment.int_tuple(shape, "shape")
    merged = _merge_meta(len(shape_t), dims, meta)
    if not _anonymous():
        return map_array(_segment.create(typestr, shape_t, None, merged))
    seg = _segment.create_anonymous(typestr, shape_t, None, merged, reuse=True)
    arr = map_array(seg)
    if zero and _segment.reused(seg):
        # A new segment reads as zeros (reserved with posix_fallocate); a reused one
        # holds the bytes of the array before it.
        arr.fill(0)
    return arr


def _anonymous() -> bool:
    """Whether new arrays go into anonymous segments: in a worker whose gateway passes
    descriptors (the anonymous transport), else into named ones."""
    from . import _worker

    gw = _worker.current_gateway()
    return gw is not None and gw.conn.descriptors is not None


def zeros(
    shape: int | Iterable[int],
    dtype: object = "float64",
    dims: Iterable[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """A new shared array of zeros; parameters and errors as for :func:`empty`.

    Returns
    -------
    numpy.ndarray
    """
    return _new(shape, dtype, dims, meta, zero=True)


def reuse_limit(nbytes: int | None = None) -> int:
    """How many bytes of freed arrays' memory this worker keeps for new arrays.

    Memory that was never touched costs a page fault per 4 KiB page on its first write
    (shared memory seldom gets huge pages), so making a large array in a new segment
    costs several times a copy into numpy's own memory. A worker therefore keeps the
    anonymous segment of an array it made (of at least 1 MiB) when the array is gone,
    or once the host has let go of it after a move, and :func:`empty` reuses it for
    the next array of the same size: its pages are faulted in already. At most eight
    segments and this many bytes are kept (256 MiB unless set), the oldest given up
    first; what is kept goes with the process.

    Parameters
    ----------
    nbytes : int, optional
        The new limit; 0 keeps nothing and gives up what is kept now.

    Returns
    -------
    int
        The limit (after the change).

    Raises
    ------
    ValueError
        ``nbytes`` is not an int >= 0.
    """
    return _segment.reuse_limit(nbytes)


def full(
    shape: int | Iterable[int],
    fill_value: object,
    dtype: object = None,
    dims: Iterable[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """A new shared array filled with ``fill_value``.

    Parameters
    ----------
    shape : int or sequence of int
        As for :func:`empty`.
    fill_value : scalar or array_like
        The value of every element (broadcast to ``shape``).
    dtype : dtype-like, optional
        As for :func:`empty`; by default the dtype numpy gives ``fill_value``.
    dims, meta
        As for :func:`empty`.

    Returns
    -------
    numpy.ndarray
    """
    np = _numpy()
    if dtype is None:
        dtype = np.array(fill_value).dtype
    arr = empty(shape, dtype, dims, meta)
    arr[...] = fill_value
    return arr


def asarray(
    array: object,
    dims: Iterable[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """The array as a shared array: itself if it already is one, else a shared copy.

    Parameters
    ----------
    array : array_like
        A shared array (returned as is when ``dims`` and ``meta`` are not given), or
        anything ``numpy.asarray`` accepts, copied into a new C-ordered segment.
        Big-endian data is converted to little-endian.
    dims, meta
        As for :func:`empty`; a copy takes no metadata from ``array``.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DTypeError, LayoutError, SegmentError, ImportError
        As for :func:`empty`.
    """
    if dims is None and meta is None:
        found = segment_of(array)
        if found is not None and found[1]:
            return array  # type: ignore[return-value]
    return shared_copy(array, dims, meta)


def shared_copy(
    array: object,
    dims: Iterable[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """A new C-ordered shared array holding a copy of ``array``, of exactly its shape.

    Parameters
    ----------
    array : array_like
        Anything ``numpy.asarray`` accepts, shared or not; 0-d arrays stay 0-d.
        Big-endian data is converted to little-endian.
    dims, meta
        As for :func:`empty`.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DTypeError, LayoutError, SegmentError, ImportError
        As for :func:`empty`.
    """
    np = _numpy()
    src = np.asarray(array)
    dt = src.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big"):
        dt = dt.newbyteorder("<")
    out = empty(src.shape, dt, dims, meta)
    out[...] = src
    return out


def meta(arr: object) -> dict[str, Any]:
    """The metadata of a shared array.

    Parameters
    ----------
    arr : object
        Any object.

    Returns
    -------
    dict
        The keys of the segment's header metadata that are present (``dims``,
        ``scale``, ``units``, ``channel_names``, ``name``, ``attrs``), as a new dict.
        Empty for anything that is not exactly a segment's whole array: plain arrays,
        and views of part of a segment (whose axes the header does not describe).
    """
    import copy

    found = segment_of(arr)
    if found is None or not found[1]:
        return {}
    return copy.deepcopy(found[0].meta)


def to_xarray(arr: np.ndarray) -> Any:
    """A shared array as an ``xarray.DataArray`` over the same memory.

    Parameters
    ----------
    arr : numpy.ndarray
        Any array; metadata comes from :func:`meta`.

    Returns
    -------
    xarray.DataArray
        Dims from the metadata (``dim_0``, ``dim_1`` ... by default); a coordinate
        ``numpy.arange(n) * scale`` for each axis with a scale (with its unit as the
        coordinate's ``units`` attribute); channel names as the coordinate of a ``c``
        or ``channel`` axis of matching length; ``name`` as the DataArray's name; attrs
        from the metadata's ``attrs`` plus ``units``, ``name`` and ``channel_names``.

    Raises
    ------
    ImportError
        xarray is not installed.
    """
    try:
        import xarray
    except ImportError:
        raise ImportError(
            "pixgate.to_xarray needs xarray, which is not installed (pip install xarray)"
        ) from None
    np = _numpy()
    m = meta(arr)
    ndim = np.ndim(arr)
    dims = list(m.get("dims") or [f"dim_{i}" for i in range(ndim)])
    scale = m.get("scale")
    units = m.get("units")
    names = m.get("channel_names")
    coords: dict[str, Any] = {}
    for i, dim in enumerate(dims):
        n = arr.shape[i]
        if names is not None and dim in ("c", "channel") and len(names) == n:
            coords[dim] = (dim, list(names))
        elif scale is not None:
            unit = {"units": units[i]} if units is not None else {}
            coords[dim] = (dim, np.arange(n) * scale[i], unit)
    attrs: dict[str, Any] = dict(m.get("attrs") or {})
    for key in ("units", "name", "channel_names"):
        if key in m:
            attrs[key] = m[key]
    return xarray.DataArray(arr, dims=dims, coords=coords, name=m.get("name"), attrs=attrs)
