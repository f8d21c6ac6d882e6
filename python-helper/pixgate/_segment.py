"""Shared-memory segments holding one array each: header codec and mapping.

A segment lives in a named POSIX shared-memory object (:func:`create`, :func:`open`) or
in an anonymous one, reached only through a descriptor (:func:`create_anonymous`;
:func:`map_descriptor` and :func:`at_offset` for one a peer sent, which may hold a pool
arena's slots at page-aligned offsets). The byte layout is specified in
``docs/SEGMENT_FORMAT.md`` (layout version 1) and shared with the Rust side; this module
writes the same bytes for the same fields and validates every header it maps before any
view of the data exists.

Standard library only: numpy views of a segment are built in :mod:`pixgate._array`.
Segments are never handled with :mod:`multiprocessing.shared_memory`, whose resource
tracker unlinks segments the process merely attached.

Validation problems
-------------------
Every failure to open a segment is a :class:`~pixgate.SegmentError` (or its subclass
:class:`~pixgate.HeaderError` for the header's contents) whose ``problem`` attribute
names the failed check, in the order the checks run:

=================  ====================================================================
problem            check
=================  ====================================================================
``name``           the name is ``/pxg-<hex pid>-<16 hex digits>``, at most 31 bytes
``not found``      the segment exists (also ``permission``, ``open`` for other errors)
``not a file``     the object is a regular file
``owner``          its owner is this process's effective uid
``mode``           no access for group or others (``mode & 0o077 == 0``)
``size``           at least 4096 bytes
``not sealed``     (a received descriptor, Linux) sealed against shrinking and growing
``access``         (a received descriptor) opened read-write when the reference needs
                   it writable
``offset``         (a received descriptor) the segment's offset is a multiple of 4096
                   with at least 4096 bytes of the object after it
``uninitialised``  version is not 0 (the creator has not finished the header)
``changed``        the version did not change while the header was copied
``truncated``      (bytes parsed directly) at least 4096 bytes, and header_len of them
``magic``          the bytes ``PXGSEG\\0\\0``
``version``        version is 1
``header_len``     a multiple of 4096, at least 4096, at most the segment size
``meta_len``       608 + meta_len <= header_len
``reserved``       the reserved word is 0
``data_len``       header_len + data_len <= segment size
``dtype``          one of the 14 typestrs (little-endian), NUL-padded
``itemsize``       the dtype's size
``ndim``           at most 32
``shape``          shape entries at index >= ndim are 0
``strides``        stride entries at index >= ndim are 0
``stride``         no negative stride
``nbytes``         itemsize × Π shape, without overflowing 64 bits
``extent``         the bytes the shape and strides reach lie inside data_len
``flags``          the contiguity flags match the shape and strides
``meta``           the metadata block decodes (and holds no array reference)
``meta_types``     to a dict with str keys, none repeated (nor in ``attrs``), whose known
                   keys have the documented types and lengths
=================  ====================================================================

The checks are those of the Rust reader, in the same order, so that both accept the
same headers. Like it, the metadata reader ignores unknown keys, treats a key whose value
is None as absent, and accepts tuples for lists and ints for scales.

Ordering
--------
The creator writes the whole header with version 0 and stamps version 1 last. A reader
loads the version first, then copies the header out of the mapping and parses the copy.
CPython has no atomic loads or fences; what makes this sound is that a reader learns a
segment's name from a message (a pipe write and read, which order memory) sent after the
creator finished; the version stamp guards against opening a segment found any other way
(listing /dev/shm) while it is being written. Aligned 4- and 8-byte fields are read and
written with single copies (``struct``), which do not tear on the supported platforms.
"""

from __future__ import annotations

__all__ = [
    "DTYPES",
    "FIXED_HEADER_LEN",
    "MAGIC",
    "MAX_NDIM",
    "PAGE",
    "STATE_LENT",
    "STATE_MOVED",
    "STATE_OWNED",
    "STATE_SHARED",
    "VERSION",
    "Header",
    "Segment",
    "build_header",
    "check_dtype",
    "check_name",
    "create",
    "encode_header",
    "encode_meta",
    "open",
    "owned_names",
    "parse_header",
    "unlink",
]

import errno
import fcntl
import mmap
import os
import stat
import struct
import sys
import threading
import weakref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

from . import _wire
from ._errors import DTypeError, HeaderError, LayoutError, LoadError, SegmentError

try:
    import _posixshmem
except ImportError:  # pragma: no cover - CPython builds without it
    _posixshmem = None

#: The first 8 bytes of every segment.
MAGIC = b"PXGSEG\0\0"
#: The layout version this module reads and writes.
VERSION = 1
#: Header sizes and the data offset are multiples of this.
PAGE = 4096
#: Bytes of the fixed part of the header; the metadata block starts here.
FIXED_HEADER_LEN = 608
#: Most dimensions an array may have.
MAX_NDIM = 32

#: The dtypes a segment can hold: numpy typestr -> itemsize.
DTYPES = {
    "|b1": 1,
    "|u1": 1,
    "<u2": 2,
    "<u4": 4,
    "<u8": 8,
    "|i1": 1,
    "<i2": 2,
    "<i4": 4,
    "<i8": 8,
    "<f2": 2,
    "<f4": 4,
    "<f8": 8,
    "<c8": 8,
    "<c16": 16,
}

#: Values of the advisory ``state`` word.
STATE_OWNED = 0
STATE_SHARED = 1
STATE_LENT = 2
STATE_MOVED = 3
#: An anonymous segment whose array is gone, kept by its creator for a later array of
#: the same size (docs/SEGMENT_FORMAT.md §10); written by whoever let it go last.
STATE_FREE = 4

FLAG_C_CONTIGUOUS = 1
FLAG_F_CONTIGUOUS = 2
# A pool's slot: its layout is rewritten (generation bumped) on every reuse; receivers
# map it populated and keep it mapped.
FLAG_POOL_SLOT = 4

#: Keys of the metadata dict, in the order they are written.
META_KEYS = ("dims", "scale", "units", "channel_names", "name", "attrs")

# magic, version, header_len, data_len, nbytes, dtype, itemsize, ndim, flags,
# creator_pid, creator_start, generation, state, owner_pid, meta_len, reserved
_FIXED = struct.Struct("<8sIIQQ16sIIIIQQIIII")
_SHAPE = struct.Struct("<32Q")
_STRIDES = struct.Struct("<32q")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OFF_VERSION = 8
_OFF_HEADER_LEN = 12
_OFF_CREATOR_PID = 60
_OFF_GENERATION = 72
_OFF_STATE = 80
_OFF_OWNER_PID = 84
_OFF_META_LEN = 88
_OFF_SHAPE = 96
# Linux 5.14's madvise advice that maps every page of a range (MADV_POPULATE_READ and
# MADV_POPULATE_WRITE); Python 3.11's mmap module does not name them.
_MADV_POPULATE_READ = 22
_MADV_POPULATE_WRITE = 23
_OFF_STRIDES = 352
# The fields from creator_pid to owner_pid, which validation copies without a check.
_ADVISORY = struct.Struct("<IQQII")

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_I64_MAX = 2**63 - 1
_NAME_PREFIX = "/pxg-"
_NAME_MAX = 31
_HEX_DIGITS = frozenset("0123456789abcdef")
_SHM_DIR = "/dev/shm"
_LINUX = sys.platform.startswith("linux")
# Whether mmap.mmap takes trackfd (Python 3.13): a mapping that holds no descriptor.
_TRACKFD = sys.version_info >= (3, 13)


# ---------------------------------------------------------------------------------------
# The header


class Header:
    """The fields of a segment header (see ``docs/SEGMENT_FORMAT.md``).

    Attributes mirror the byte table: ``version``, ``header_len``, ``data_len``,
    ``nbytes``, ``dtype`` (the typestr, e.g. ``"<u2"``), ``itemsize``, ``ndim``,
    ``flags``, ``creator_pid``, ``creator_start``, ``generation``, ``state``,
    ``owner_pid``, ``shape`` and ``strides`` (tuples of ``ndim`` ints), ``meta`` (the
    metadata dict) and ``meta_bytes`` (its encoding; ``meta_len`` is its length).
    Instances come from :func:`build_header` and :func:`parse_header`.
    """

    __slots__ = (
        "version",
        "header_len",
        "data_len",
        "nbytes",
        "dtype",
        "itemsize",
        "ndim",
        "flags",
        "creator_pid",
        "creator_start",
        "generation",
        "state",
        "owner_pid",
        "shape",
        "strides",
        "meta",
        "meta_bytes",
    )

    version: int
    header_len: int
    data_len: int
    nbytes: int
    dtype: str
    itemsize: int
    ndim: int
    flags: int
    creator_pid: int
    creator_start: int
    generation: int
    state: int
    owner_pid: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    meta: dict[str, Any]
    meta_bytes: bytes

    def __init__(self, **fields: Any) -> None:
        for key in self.__slots__:
            setattr(self, key, fields.pop(key))
        if fields:
            raise TypeError(f"unknown header fields: {', '.join(sorted(fields))}")

    @property
    def meta_len(self) -> int:
        """Bytes of the metadata block."""
        return len(self.meta_bytes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__[:-1])
        return f"Header({fields})"


def encode_meta(meta: dict[str, Any] | None, ndim: int) -> tuple[dict[str, Any], bytes]:
    """Check a metadata dict and encode it the way both implementations do.

    Keys are written in the order ``dims, scale, units, channel_names, name, attrs``;
    keys whose value is None are left out, and so is an empty ``attrs``. Sequences are
    written as lists and scales as floats.

    Parameters
    ----------
    meta : dict or None
        Optional keys ``dims`` (ndim str), ``scale`` (ndim real numbers), ``units``
        (ndim str), ``channel_names`` (str), ``name`` (str), ``attrs`` (dict with str
        keys and values the codec can write).
    ndim : int
        The number of dimensions of the array the metadata describes.

    Returns
    -------
    meta : dict
        The normalised dict, in key order.
    encoded : bytes
        Its encoding (``pixgate.dumps``).

    Raises
    ------
    LayoutError
        An unknown key, a value of the wrong type, or a list of the wrong length.
    DumpError
        An ``attrs`` value the codec cannot write.
    """
    out: dict[str, Any] = {}
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise LayoutError(f"meta must be a dict, got {type(meta).__name__}")
    unknown = [k for k in meta if k not in META_KEYS]
    if unknown:
        raise LayoutError(
            f"unknown metadata key {unknown[0]!r}, expected one of {', '.join(META_KEYS)} "
            "(put other values in 'attrs')"
        )
    for key in ("dims", "scale", "units"):
        value = meta.get(key)
        if value is None:
            continue
        items = _as_list(value, key)
        if len(items) != ndim:
            raise LayoutError(f"meta {key!r} has {len(items)} entries, expected ndim = {ndim}")
        if key == "scale":
            out[key] = [_as_float(x, key) for x in items]
        else:
            out[key] = [_as_str(x, key) for x in items]
    names = meta.get("channel_names")
    if names is not None:
        out["channel_names"] = [
            _as_str(x, "channel_names") for x in _as_list(names, "channel_names")
        ]
    name = meta.get("name")
    if name is not None:
        out["name"] = _as_str(name, "name")
    attrs = meta.get("attrs")
    if attrs is not None:
        if not isinstance(attrs, dict):
            raise LayoutError(f"meta 'attrs' must be a dict, got {type(attrs).__name__}")
        for k in attrs:
            if not isinstance(k, str):
                raise LayoutError(f"meta 'attrs' keys must be str, got {type(k).__name__}")
        if attrs:
            out["attrs"] = dict(attrs)
    return out, _wire.dumps(out)


def _as_list(value: object, key: str) -> list[Any]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise LayoutError(f"meta {key!r} must be a list, got {type(value).__name__}")
    return list(value)  # type: ignore[call-overload]


def _as_str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise LayoutError(f"meta {key!r} entries must be str, got {type(value).__name__}")
    return str(value)


def _as_float(value: object, key: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise LayoutError(f"meta {key!r} entries must be real numbers, got {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LayoutError(
            f"meta {key!r} entries must be real numbers, got {type(value).__name__}"
        ) from None


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _layout_flags(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> int:
    """C/F contiguity as numpy defines it: axes of length 1 may have any stride."""
    if 0 in shape:
        return FLAG_C_CONTIGUOUS | FLAG_F_CONTIGUOUS
    flags = 0
    for bit, axes in (
        (FLAG_C_CONTIGUOUS, range(len(shape) - 1, -1, -1)),
        (FLAG_F_CONTIGUOUS, range(len(shape))),
    ):
        step = itemsize
        for i in axes:
            if shape[i] != 1:
                if strides[i] != step:
                    break
                step *= shape[i]
        else:
            flags |= bit
    return flags


def _extent(shape: Iterable[int], strides: Iterable[int], itemsize: int) -> int:
    """Bytes from the first element to the end of the last one (0 for empty arrays)."""
    shape = tuple(shape)
    if 0 in shape:
        return 0
    return sum((n - 1) * s for n, s in zip(shape, strides)) + itemsize


def check_dtype(dtype: object) -> str:
    """Return ``dtype`` if it is one of the :data:`DTYPES` typestrs.

    Raises
    ------
    DTypeError
        Anything else.
    """
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    raise DTypeError(
        f"dtype {dtype!r} is not supported by shared arrays; expected one of {' '.join(DTYPES)}"
    )


def build_header(
    dtype: str,
    shape: Iterable[int],
    strides: Iterable[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> Header:
    """The header of a new segment for an array of this layout, created by this process.

    Parameters
    ----------
    dtype : str
        One of the :data:`DTYPES` typestrs.
    shape : iterable of int
        At most :data:`MAX_NDIM` non-negative sizes.
    strides : iterable of int, optional
        Non-negative byte strides, one per axis; C order when omitted.
    meta : dict, optional
        Metadata, as for :func:`encode_meta`.

    Returns
    -------
    Header
        Version 1, generation 0, state owned, owner and creator this process;
        ``data_len`` is the extent of the array, ``header_len`` the smallest multiple of
        4096 that holds the metadata.

    Raises
    ------
    DTypeError
        ``dtype`` is not supported.
    LayoutError
        Bad shape, strides or metadata, or an array too large to describe.
    """
    dtype = check_dtype(dtype)
    itemsize = DTYPES[dtype]
    shape_t = int_tuple(shape, "shape")
    ndim = len(shape_t)
    if ndim > MAX_NDIM:
        raise LayoutError(f"ndim {ndim}, expected at most {MAX_NDIM}")
    for n in shape_t:
        if n < 0 or n > _U64_MAX:
            raise LayoutError(f"shape {shape_t}: sizes must be in 0..2**64-1")
    if strides is None:
        strides_t = _c_strides(shape_t, itemsize)
    else:
        strides_t = int_tuple(strides, "strides")
        if len(strides_t) != ndim:
            raise LayoutError(f"{len(strides_t)} strides for shape {shape_t}, expected {ndim}")
        for s in strides_t:
            if s < 0 or s > _I64_MAX:
                raise LayoutError(f"strides {strides_t}: strides must be in 0..2**63-1")
    nbytes = itemsize
    for n in shape_t:
        nbytes *= n
    if nbytes > _U64_MAX:
        raise LayoutError(f"shape {shape_t} of {dtype} holds more than 2**64-1 bytes")
    data_len = _extent(shape_t, strides_t, itemsize)
    meta_d, meta_b = encode_meta(meta, ndim)
    header_len = -(-(FIXED_HEADER_LEN + len(meta_b)) // PAGE) * PAGE
    if header_len > _U32_MAX - PAGE + 1 or header_len + data_len > _I64_MAX - PAGE:
        raise LayoutError(
            f"array of {data_len} bytes with {len(meta_b)} bytes of metadata is too large"
        )
    pid = os.getpid()
    return Header(
        version=VERSION,
        header_len=header_len,
        data_len=data_len,
        nbytes=nbytes,
        dtype=dtype,
        itemsize=itemsize,
        ndim=ndim,
        flags=_layout_flags(shape_t, strides_t, itemsize),
        creator_pid=pid,
        creator_start=_start_time(pid),
        generation=0,
        state=STATE_OWNED,
        owner_pid=pid,
        shape=shape_t,
        strides=strides_t,
        meta=meta_d,
        meta_bytes=meta_b,
    )


def int_tuple(values: object, what: str) -> tuple[int, ...]:
    """``values`` (an int or an iterable of ints) as a tuple of ints, or LayoutError."""
    import operator

    try:
        if hasattr(values, "__index__"):
            return (operator.index(values),)  # type: ignore[arg-type]
        return tuple(operator.index(v) for v in values)  # type: ignore[attr-defined]
    except TypeError:
        raise LayoutError(f"{what} must be a sequence of ints, got {values!r}") from None


def encode_header(header: Header) -> bytes:
    """Encode ``header`` into exactly ``header.header_len`` bytes.

    The fields are written as given (nothing is recomputed); ``meta_bytes`` is written
    as the metadata block and the rest up to ``header_len`` is zeros.

    Raises
    ------
    LayoutError
        The fields do not fit the byte table (a field out of range, ndim over 32, a
        metadata block that does not fit in ``header_len``).
    """
    ndim = header.ndim
    if not 0 <= ndim <= MAX_NDIM or len(header.shape) != ndim or len(header.strides) != ndim:
        raise LayoutError(
            f"ndim {ndim} with shape {header.shape} and strides {header.strides} "
            "does not fit the header"
        )
    meta_len = len(header.meta_bytes)
    if FIXED_HEADER_LEN + meta_len > header.header_len:
        raise LayoutError(
            f"{meta_len} bytes of metadata do not fit in header_len {header.header_len}"
        )
    dtype = header.dtype.encode("ascii")
    if len(dtype) > 16:
        raise LayoutError(f"dtype {header.dtype!r} is longer than 16 bytes")
    pad = MAX_NDIM - ndim
    try:
        return b"".join(
            (
                _FIXED.pack(
                    MAGIC,
                    header.version,
                    header.header_len,
                    header.data_len,
                    header.nbytes,
                    dtype,
                    header.itemsize,
                    ndim,
                    header.flags,
                    header.creator_pid,
                    header.creator_start,
                    header.generation,
                    header.state,
                    header.owner_pid,
                    meta_len,
                    0,
                ),
                _SHAPE.pack(*header.shape, *(0,) * pad),
                _STRIDES.pack(*header.strides, *(0,) * pad),
                header.meta_bytes,
                bytes(header.header_len - FIXED_HEADER_LEN - meta_len),
            )
        )
    except struct.error as exc:
        raise LayoutError(f"header field out of range: {exc}") from None


def parse_header(
    data: bytes | bytearray | memoryview,
    file_size: int,
    name: str = "<bytes>",
    version: int | None = None,
) -> Header:
    """Validate a header (steps 2 to 7 of the contract) and return its fields.

    Parameters
    ----------
    data : bytes-like
        The segment's first bytes: at least ``header_len`` of them (more are ignored).
    file_size : int
        The size of the segment the header claims to describe.
    name : str, optional
        The segment's name, for messages.
    version : int, optional
        The version as loaded from the live mapping before ``data`` was copied; read
        from ``data`` when omitted.

    Returns
    -------
    Header

    Raises
    ------
    HeaderError
        The first failed check; see the module docs for the ``problem`` values.
    """
    data = bytes(data)
    key = None
    if len(data) >= FIXED_HEADER_LEN:
        meta_len = _U32.unpack_from(data, _OFF_META_LEN)[0]
        if meta_len <= _VALIDATED_META:
            # Every byte the checks below read, and what they read it against: the same
            # key validates the same way, so a layout validated before is not again.
            key = (
                file_size,
                len(data),
                version,
                data[:_OFF_CREATOR_PID],
                data[_OFF_META_LEN : FIXED_HEADER_LEN + meta_len],
            )
            known = _validated.get(key)
            if known is not None:
                return _same_layout(known, data, version, name)
    header = _parse_header(data, file_size, name, version)
    if key is not None:
        if len(_validated) >= _VALIDATED_KEPT:
            _validated.clear()
        _validated[key] = _same_layout(header, data, version, name)
    return header


#: Headers validated before (:func:`parse_header`), by the bytes their validation read:
#: fresh arrays of one layout, handed over one after another, pay the whole validation
#: once (docs/ARCHITECTURE.md, "Validating headers"). Kept for metadata of up to the rest of
#: a first page, and at most ``_VALIDATED_KEPT`` layouts (all forgotten when full).
_validated: dict[tuple[Any, ...], Header] = {}
_VALIDATED_KEPT = 64
_VALIDATED_META = PAGE - FIXED_HEADER_LEN


def _same_layout(known: Header, data: bytes, version: int | None, name: str) -> Header:
    """A new header with ``known``'s layout and metadata and the fields of ``data`` that
    validation only copies (version, creator, generation, state, owner); its metadata
    dict is its own."""
    h = Header.__new__(Header)
    h.version = _U32.unpack_from(data, _OFF_VERSION)[0] if version is None else version
    h.header_len = known.header_len
    h.data_len = known.data_len
    h.nbytes = known.nbytes
    h.dtype = known.dtype
    h.itemsize = known.itemsize
    h.ndim = known.ndim
    h.flags = known.flags
    (
        h.creator_pid,
        h.creator_start,
        h.generation,
        h.state,
        h.owner_pid,
    ) = _ADVISORY.unpack_from(data, _OFF_CREATOR_PID)
    h.shape = known.shape
    h.strides = known.strides
    h.meta_bytes = known.meta_bytes
    if known.meta:
        # Decoded anew (it validated before): a caller may change the dict it got.
        value, repeats = _wire.loads_noting_repeats(known.meta_bytes)
        h.meta = _read_meta(value, known.ndim, name, repeats)
    else:
        h.meta = {}
    return h


def _parse_header(data: bytes, file_size: int, name: str, version: int | None) -> Header:
    """:func:`parse_header` without the memory of layouts validated before."""
    if file_size < PAGE:
        raise _bad(name, "size", f"segment of {file_size} bytes, expected at least {PAGE}")
    if len(data) < PAGE:
        raise _bad(name, "truncated", f"header of {len(data)} bytes, expected at least {PAGE}")
    (
        magic,
        stamped,
        header_len,
        data_len,
        nbytes,
        dtype_raw,
        itemsize,
        ndim,
        flags,
        creator_pid,
        creator_start,
        generation,
        state,
        owner_pid,
        meta_len,
        reserved,
    ) = _FIXED.unpack_from(data)
    if version is None:
        version = stamped

    # Step 2: magic, version, header_len, meta_len.
    if magic != MAGIC:
        raise _bad(name, "magic", f"bad magic {magic!r}, expected {MAGIC!r}")
    if version == 0:
        raise _bad(name, "uninitialised", "segment not yet initialised (version 0)")
    if version != VERSION:
        raise _bad(name, "version", f"unsupported layout version {version}, expected {VERSION}")
    if header_len < PAGE or header_len % PAGE:
        raise _bad(name, "header_len", f"header_len {header_len}, expected a multiple of {PAGE}")
    if header_len > file_size:
        raise _bad(
            name,
            "header_len",
            f"header_len {header_len} exceeds the segment size {file_size}",
        )
    if len(data) < header_len:
        raise _bad(name, "truncated", f"header of {len(data)} bytes, header_len {header_len}")
    if FIXED_HEADER_LEN + meta_len > header_len:
        raise _bad(
            name,
            "meta_len",
            f"meta_len {meta_len} runs past header_len {header_len} "
            f"(608 + meta_len = {FIXED_HEADER_LEN + meta_len})",
        )
    if reserved:
        raise _bad(name, "reserved", f"reserved word {reserved:#x}, expected 0")

    # Step 3: the data area lies inside the segment.
    if header_len + data_len > file_size:
        raise _bad(
            name,
            "data_len",
            f"data_len {data_len} at offset {header_len} ends at {header_len + data_len}, "
            f"beyond the segment size {file_size}",
        )

    # Step 4: dtype, itemsize, ndim, unused shape/stride entries, signs.
    text = _typestr(dtype_raw)
    if text is None or text not in DTYPES:
        shown = dtype_raw.rstrip(b"\0") if text is None else text
        what = "big-endian dtype" if dtype_raw.startswith(b">") else "unknown dtype"
        raise _bad(name, "dtype", f"{what} {shown!r}, expected one of {' '.join(DTYPES)}")
    if itemsize != DTYPES[text]:
        raise _bad(
            name,
            "itemsize",
            f"itemsize {itemsize} for dtype {text}, expected {DTYPES[text]}",
        )
    if ndim > MAX_NDIM:
        raise _bad(name, "ndim", f"ndim {ndim}, expected at most {MAX_NDIM}")
    shape = _SHAPE.unpack_from(data, _OFF_SHAPE)
    strides = _STRIDES.unpack_from(data, _OFF_STRIDES)
    for what, values in (("shape", shape), ("strides", strides)):
        for i in range(ndim, MAX_NDIM):
            if values[i]:
                raise _bad(
                    name,
                    what,
                    f"{what}[{i}] = {values[i]} with ndim {ndim}, expected 0",
                )
    shape = shape[:ndim]
    strides = strides[:ndim]
    for i, s in enumerate(strides):
        if s < 0:
            raise _bad(name, "stride", f"stride {s} on axis {i}, expected a stride >= 0")

    # Step 5: nbytes, with the multiplication checked at every step.
    expected = itemsize
    for n in shape:
        expected *= n
        if expected > _U64_MAX:
            raise _bad(
                name,
                "nbytes",
                f"itemsize {itemsize} × shape {shape} overflows 64 bits",
            )
    if nbytes != expected:
        raise _bad(
            name,
            "nbytes",
            f"nbytes {nbytes}, expected itemsize {itemsize} × shape {shape} = {expected}",
        )

    # Step 6: every element lies inside the data area.
    extent = _extent(shape, strides, itemsize)
    if extent > data_len:
        raise _bad(
            name,
            "extent",
            f"shape {shape} with strides {strides} reaches {extent} bytes, "
            f"beyond data_len {data_len}",
        )

    expected_flags = _layout_flags(shape, strides, itemsize) | (flags & FLAG_POOL_SLOT)
    if flags != expected_flags:
        raise _bad(
            name,
            "flags",
            f"flags {flags:#x}, expected {expected_flags:#x} for shape {shape} "
            f"and strides {strides}",
        )

    # Step 7: the metadata.
    meta_bytes = data[FIXED_HEADER_LEN : FIXED_HEADER_LEN + meta_len]
    problem = _array_ref_in(meta_bytes)
    if problem:
        raise _bad(name, "meta", f"metadata of {meta_len} bytes {problem}")
    try:
        value, repeats = _wire.loads_noting_repeats(meta_bytes)
    except LoadError as exc:
        raise _bad(name, "meta", f"metadata of {meta_len} bytes does not decode: {exc}") from None
    meta = _read_meta(value, ndim, name, repeats)

    return Header(
        version=version,
        header_len=header_len,
        data_len=data_len,
        nbytes=nbytes,
        dtype=text,
        itemsize=itemsize,
        ndim=ndim,
        flags=flags,
        creator_pid=creator_pid,
        creator_start=creator_start,
        generation=generation,
        state=state,
        owner_pid=owner_pid,
        shape=shape,
        strides=strides,
        meta=meta,
        meta_bytes=meta_bytes,
    )


def _typestr(raw: bytes) -> str | None:
    """The ASCII text before the NUL padding, or None if the field is malformed."""
    text = raw.split(b"\0", 1)[0]
    if raw[len(text) :].strip(b"\0"):
        return None
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        return None


def _read_meta(
    value: object, ndim: int, name: str, repeats: list[tuple[dict[Any, Any], Any]]
) -> dict[str, Any]:
    """The known keys of a decoded metadata block, checked and in contract order.

    Tolerant where it costs nothing, as the Rust reader is: a known key whose value is
    None counts as absent, lists may be tuples, ``scale`` entries may be ints, unknown
    keys are ignored. A key that repeats in the dict or in ``attrs`` is refused
    (``repeats`` as :func:`pixgate._wire.loads_noting_repeats` gives them).
    """

    def bad(message: str) -> HeaderError:
        return _bad(name, "meta_types", f"metadata {message}")

    def repeated(d: object) -> object | None:
        return next((key for container, key in repeats if container is d), None)

    if not isinstance(value, dict):
        raise bad(f"is a {type(value).__name__}, expected a dict")
    for key in value:
        if not isinstance(key, str):
            raise bad(f"has a {type(key).__name__} key, expected str")
    key = repeated(value)
    if key is not None:
        raise bad(f"repeats the key {key!r}")
    meta: dict[str, Any] = {}
    for key in META_KEYS:
        item = value.get(key)
        if item is None:
            continue
        if key == "name":
            if not isinstance(item, str):
                raise bad(f"name is a {type(item).__name__}, expected str")
            meta[key] = item
        elif key == "attrs":
            if not isinstance(item, dict):
                raise bad(f"attrs is a {type(item).__name__}, expected a dict")
            for k in item:
                if not isinstance(k, str):
                    raise bad(f"attrs has a {type(k).__name__} key, expected str")
            k = repeated(item)
            if k is not None:
                raise bad(f"attrs repeats the key {k!r}")
            meta[key] = item
        else:
            if not isinstance(item, (list, tuple)):
                raise bad(f"{key} is a {type(item).__name__}, expected a list")
            if key != "channel_names" and len(item) != ndim:
                raise bad(f"{key} has {len(item)} entries, expected ndim {ndim}")
            for i, x in enumerate(item):
                ok = type(x) in (float, int) if key == "scale" else type(x) is str
                if not ok:
                    expected = "float" if key == "scale" else "str"
                    raise bad(f"{key}[{i}] is a {type(x).__name__}, expected {expected}")
            meta[key] = [float(x) for x in item] if key == "scale" else list(item)
    return meta


# Bytes after each opcode of the value format, for the scan below: a fixed count, or
# -1 for an i32 length followed by that many bytes.
_OP_ARGS = {
    **dict.fromkeys(b"@BEFGKO", 4),
    **dict.fromkeys(b"AHIMNS", -1),
    **dict.fromkeys(b"CJLPQR", 0),
    ord("D"): 8,
    ord("T"): 16,
}


def _array_ref_in(block: bytes) -> str | None:
    """Why ``block`` must not be decoded: it holds an array reference (or cannot be
    framed); None when it is safe to hand to the decoder.

    A worker's decoder maps the segment an array reference names (and may take
    ownership of it), so metadata read from a header is framed first, opcode by opcode
    exactly as the decoder reads it, and refused if any opcode is ``U`` or ``V``.
    """
    pos = 1  # the version byte
    end = len(block)
    while pos < end:
        op = block[pos]
        if op == 0x55 or op == 0x56:  # U, V
            return f"holds an array reference at offset {pos}"
        size = _OP_ARGS.get(op)
        if size is None:
            return f"has unknown opcode {op:#04x} at offset {pos}"
        pos += 1
        if op == 0x51:  # Q: the decoder checks that nothing follows
            return None
        if size < 0:
            if end - pos < 4:
                return None  # truncated: the decoder reports it
            n = int.from_bytes(block[pos : pos + 4], "big", signed=True)
            if n < 0:
                return None  # the decoder reports it
            size = 4 + n
        pos += size
    return None


def _bad(name: str, problem: str, message: str) -> HeaderError:
    return HeaderError(f"segment {name}: {message}", problem, name)


# ---------------------------------------------------------------------------------------
# Names and system calls


def _new_name() -> str:
    return f"{_NAME_PREFIX}{os.getpid():x}-{os.urandom(8).hex()}"


def check_name(name: object) -> str:
    """Return ``name`` if it has the shape of a pixgate segment name.

    Raises
    ------
    SegmentError
        With problem ``"name"``: not ``/pxg-<1 to 8 hex digits>-<16 hex digits>``
        in lower case, or longer than 31 bytes.
    """
    # Set operations, not a loop over the characters: a handoff runs cold, where each
    # step of a Python loop costs.
    if isinstance(name, str) and len(name) <= _NAME_MAX and name.startswith(_NAME_PREFIX):
        pid, dash, rest = name[len(_NAME_PREFIX) :].partition("-")
        if (
            dash
            and 1 <= len(pid) <= 8
            and len(rest) == 16
            and _HEX_DIGITS.issuperset(pid)
            and _HEX_DIGITS.issuperset(rest)
        ):
            return name
    raise SegmentError(
        f"segment name {name!r} is not a pixgate segment name "
        "(expected '/pxg-<pid hex>-<16 hex digits>', at most 31 bytes)",
        "name",
        name if isinstance(name, str) else None,
    )


def _shm_open(name: str, flags: int, mode: int, directory: str | None) -> int:
    if directory is None and _posixshmem is not None:
        return _posixshmem.shm_open(name, flags, mode)
    path = os.path.join(directory or _SHM_DIR, name[1:])
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)


def _shm_unlink(name: str, directory: str | None) -> None:
    if directory is None and _posixshmem is not None:
        _posixshmem.shm_unlink(name)
    else:
        os.unlink(os.path.join(directory or _SHM_DIR, name[1:]))


def _os_error(name: str, exc: OSError, doing: str) -> SegmentError:
    import errno

    problem = {
        errno.ENOENT: "not found",
        errno.EACCES: "permission",
        errno.EPERM: "permission",
        errno.ENOSPC: "no space",
    }.get(exc.errno or 0, doing)
    reason = exc.strerror or str(exc)
    return SegmentError(f"segment {name}: {doing} failed: {reason}", problem, name, exc.errno)


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or 0."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return 0
    try:
        text = os.read(fd, 4096)
    except OSError:
        return 0
    finally:
        os.close(fd)
    try:
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return 0


def _unlink_quietly(name: str, directory: str | None) -> None:
    try:
        _shm_unlink(name, directory)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# Ownership: what this process unlinks


# name -> (pid of the owning process, directory); only the process that registered a
# name unlinks it (a forked child inherits the dict but owns nothing).
_owned: dict[str, tuple[int, str | None]] = {}
_atexit_registered = False
_hooked_gateway: object = None


def _register_owned(seg: Segment) -> None:
    _owned[seg.name] = (os.getpid(), seg.directory)
    _ensure_exit_hooks()
    fin = weakref.finalize(seg, _release, seg.name)
    fin.atexit = False  # _unlink_owned covers exit, also when a worker ends with _exit
    seg._finalizer = fin


def _release(name: str) -> None:
    """Unlink ``name`` if this process still owns it (a segment or its array was freed)."""
    entry = _owned.pop(name, None)
    if entry is not None and entry[0] == os.getpid():
        _unlink_quietly(name, entry[1])


def _unlink_owned() -> None:
    """Unlink every segment this process owns (at exit)."""
    pid = os.getpid()
    while _owned:
        name, (owner, directory) = _owned.popitem()
        if owner == pid:
            _unlink_quietly(name, directory)


def _ensure_exit_hooks() -> None:
    global _atexit_registered, _hooked_gateway
    if not _atexit_registered:
        import atexit

        atexit.register(_unlink_owned)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_owned.clear)
        _atexit_registered = True
    from . import _worker

    gw = _worker.current_gateway()
    if gw is not None and _hooked_gateway is not gw:
        # The worker ends with os._exit (also when the host dies), which skips atexit.
        gw.on_exit(_unlink_owned)
        _hooked_gateway = gw


def _register_owned_anonymous(seg: Segment, fd: int | None) -> None:
    """Make an anonymous segment this process's; it keeps ``fd`` (its object's
    descriptor, when this process has one) and closes it when it goes (or hands it to
    the segment's reuse record, for one this process made)."""
    if seg._finalizer is not None:
        seg._finalizer.detach()
    if fd is not None:
        old, seg._fd = seg._fd, fd
        if old is not None and old != fd:
            _close_quietly(old)
    keep = seg._mapping.keep
    done = _close_quietly if keep is None else keep.give_descriptor
    fin = weakref.finalize(seg, done, seg._fd)
    fin.atexit = False  # every descriptor closes at exit anyway
    seg._finalizer = fin


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class _Outgoing:
    """The descriptor of an anonymous segment this process moves to the host, between
    :meth:`Segment.move_out` and the frame that carries it."""

    __slots__ = ("_done", "fd", "segment")

    def __init__(self, segment: Segment, fd: int) -> None:
        self.segment = segment
        self.fd = fd
        self._done = False

    def sent(self) -> None:
        """The descriptor went out (or the gateway broke sending it): close this copy,
        or keep it with the segment's reuse record, for when the host lets go."""
        if not self._done:
            self._done = True
            keep = self.segment._mapping.keep
            if keep is not None:
                keep.out = True
                keep.give_descriptor(self.fd)
            else:
                _close_quietly(self.fd)

    def abandon(self) -> None:
        """Nothing was sent: the segment is this process's again, with its descriptor."""
        if self._done:
            return
        self._done = True
        seg = self.segment
        _register_owned_anonymous(seg, self.fd)
        if seg.writable and not seg.closed:
            seg.set_state(STATE_OWNED)


def owned_names() -> list[str]:
    """Names of the segments this process will unlink."""
    pid = os.getpid()
    return [name for name, (owner, _) in _owned.items() if owner == pid]


# ---------------------------------------------------------------------------------------
# Segments


class SegmentMapping:
    """One mmap of a segment and the count of its uses.

    Every open :class:`Segment` over the mmap is one use until it is closed or
    collected (a pool slot re-read with :meth:`Segment.reread` gives a second Segment
    over the same mmap), and so is every array :mod:`pixgate._array` makes over it,
    until that array is garbage-collected. The mmap is closed when the last use ends, and never earlier: a numpy array over a
    closed mapping points at unmapped memory, and touching it is a crash, not an error.
    Whether ``mmap.close()`` refuses while buffers of the mapping exist is an interpreter
    detail (CPython refuses, PyPy does not), so nothing here relies on it.

    Uses are counted with a list's ``append`` and ``pop``, which are atomic, because the
    count also drops in weakref callbacks, which may run on any thread at any moment
    (also inside a method of this class); a lock could deadlock there.
    """

    __slots__ = ("_uses", "keep", "mm")

    def __init__(self, mm: mmap.mmap, keep: _Kept | None = None) -> None:
        self.mm: mmap.mmap | None = mm
        self._uses: list[None] = []
        #: Where the mmap goes when the last use ends, instead of being closed: the
        #: record of an object this process made and may reuse (see :class:`_Kept`).
        self.keep = keep

    def acquire(self) -> None:
        """Count one more use. Only a holder of a use may add one (an open Segment),
        so the count never climbs back from zero."""
        self._uses.append(None)

    def release(self) -> None:
        """End one use; close the mmap when it was the last."""
        uses = self._uses
        uses.pop()
        if not uses:
            self._close()

    @property
    def uses(self) -> int:
        """How many uses are counted now."""
        return len(self._uses)

    def _close(self) -> None:
        mm, self.mm = self.mm, None
        if mm is None:
            return
        if self.keep is not None:
            self.keep.give_mapping(mm)
            return
        _close_mapping(mm)


def _close_mapping(mm: mmap.mmap) -> None:
    """Close an mmap whose last counted use has ended."""
    try:
        mm.close()
    except BufferError:
        # CPython still counts a buffer of the mapping that no counted use holds: the
        # one of the array whose collection ended the last use (its weakref callback
        # runs just before numpy lets go of its buffer), or a memoryview a caller took
        # of Segment.data or Segment.mapping. Without this object's reference, the mmap
        # is unmapped when that buffer goes.
        pass


class Segment:
    """One mapped segment: its validated header and the mapping.

    Instances come from :func:`create` and :func:`open`. Header fields are attributes
    (``dtype``, ``shape``, ``strides``, ``header_len``, ``data_len``, ``nbytes``,
    ``meta``, ...), read once when the segment was opened; ``generation``, ``state``
    and ``owner_pid``, which the owner may change, are read from the live mapping.

    A segment is *owned* when this process is the one that unlinks it: at exit, when
    the segment object and every array made from it are gone, or on :meth:`unlink`.

    The mapping is shared by the segment object and the arrays made from it (see
    :class:`SegmentMapping`): :meth:`close` ends the object's use of it, and the mapping is
    unmapped once no open segment object and no array uses it.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_data",
        "_end_use",
        "_fd",
        "_finalizer",
        "_mapping",
        "_raw",
        "anonymous",
        "base",
        "directory",
        "header",
        "name",
        "writable",
    )

    def __init__(
        self,
        name: str,
        header: Header,
        mapping: SegmentMapping,
        writable: bool,
        directory: str | None = None,
        base: int = 0,
        anonymous: bool = False,
    ) -> None:
        self.name = name
        self.header = header
        self.writable = writable
        self.directory = directory
        #: Where the header starts in the mapping: 0, or a pool slot's offset in the
        #: arena it lives in (anonymous transport).
        self.base = base
        #: Whether the segment lives in an anonymous object (no name to open or unlink).
        self.anonymous = anonymous
        mapping.acquire()
        self._mapping = mapping
        self._closed = False
        # A segment object collected without close() ends its use too: the worker drops
        # the old object each time a pool slot is re-read for a new layout, and those
        # uses would otherwise pile up for the life of the slot. (A weakref callback,
        # not __del__: PyPy clears weak references to objects with __del__ only at the
        # collection after the one that finalized them, which would delay the unlinking
        # of an owned segment.)
        end = weakref.finalize(self, mapping.release)
        end.atexit = False
        self._end_use = end
        self._data: memoryview | None = None
        # The header bytes this object's header was validated from, when kept (reread).
        self._raw: bytes | None = None
        self._finalizer: weakref.finalize | None = None
        # The descriptor of an anonymous object this process owns: kept while it is
        # ours, so that it can be passed on when the array moves (see move_out).
        self._fd: int | None = None

    # -- header fields --------------------------------------------------------

    @property
    def dtype(self) -> str:
        """The numpy typestr of the elements, e.g. ``"<u2"``."""
        return self.header.dtype

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.header.itemsize

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.header.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.header.shape

    @property
    def strides(self) -> tuple[int, ...]:
        """The array's byte strides."""
        return self.header.strides

    @property
    def header_len(self) -> int:
        """Offset of the data area."""
        return self.header.header_len

    @property
    def data_len(self) -> int:
        """Bytes of the data area."""
        return self.header.data_len

    @property
    def nbytes(self) -> int:
        """Bytes the array's elements occupy."""
        return self.header.nbytes

    @property
    def flags(self) -> int:
        """Contiguity bits: 1 C-contiguous, 2 F-contiguous."""
        return self.header.flags

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata dict (dims, scale, units, channel_names, name, attrs)."""
        return self.header.meta

    @property
    def creator_pid(self) -> int:
        """The pid of the process that created the segment."""
        return self.header.creator_pid

    @property
    def creator_start(self) -> int:
        """The creator's start time in clock ticks since boot (0 when unknown)."""
        return self.header.creator_start

    # -- live fields ------------------------------------------------------------

    @property
    def mapping(self) -> mmap.mmap:
        """The mapping of the whole segment (read-only unless :attr:`writable`).

        Raises
        ------
        SegmentError
            With problem ``"closed"``, after :meth:`close`.
        """
        mm = self._mapping.mm
        if self._closed or mm is None or mm.closed:
            raise SegmentError(f"segment {self.name}: closed", "closed", self.name)
        return mm

    @property
    def data(self) -> memoryview:
        """The data area of the mapping (read-only unless :attr:`writable`).

        Made once and kept until :meth:`close`. Arrays over it are made by
        :func:`pixgate._array.map_array`, which counts them as uses of the mapping; a
        caller's own view of these bytes is not counted and must not outlive
        :meth:`close`.

        Raises
        ------
        SegmentError
            With problem ``"closed"``, after :meth:`close`.
        """
        view = self._data
        if view is None:  # also after close(): self.mapping raises
            start = self.base + self.header.header_len
            view = self._data = memoryview(self.mapping)[start : start + self.data_len]
        return view

    @property
    def generation(self) -> int:
        """The generation counter, read from the mapping."""
        return int(_U64.unpack_from(self.mapping, self.base + _OFF_GENERATION)[0])

    @property
    def state(self) -> int:
        """The advisory state word (``STATE_*``), read from the mapping."""
        return int(_U32.unpack_from(self.mapping, self.base + _OFF_STATE)[0])

    @property
    def owner_pid(self) -> int:
        """The pid of the process that will unlink the segment (anonymous: whose array
        it is), read from the mapping."""
        return int(_U32.unpack_from(self.mapping, self.base + _OFF_OWNER_PID)[0])

    @property
    def key(self) -> str:
        """What RELEASE names: the name, or, for a segment at an offset other than 0 of
        its object (a pool slot in an arena), the name, ``@`` and the offset in hex."""
        return self.name if not self.base else f"{self.name}@{self.base:x}"

    def set_state(self, state: int, owner_pid: int | None = None) -> None:
        """Store the advisory state word (and the owner's pid) into the header.

        Raises
        ------
        SegmentError
            The segment is mapped read-only.
        """
        mm = self._writable_mapping()
        _U32.pack_into(mm, self.base + _OFF_STATE, state)
        if owner_pid is not None:
            _U32.pack_into(mm, self.base + _OFF_OWNER_PID, owner_pid)

    def bump_generation(self) -> int:
        """Increment the generation counter and return the new value.

        Raises
        ------
        SegmentError
            The segment is mapped read-only.
        """
        mm = self._writable_mapping()
        off = self.base + _OFF_GENERATION
        generation = (_U64.unpack_from(mm, off)[0] + 1) & _U64_MAX
        _U64.pack_into(mm, off, generation)
        return generation

    @property
    def pool_slot(self) -> bool:
        """Whether the owner reuses this segment for one array after another."""
        return bool(self.header.flags & FLAG_POOL_SLOT)

    def reread(self) -> Segment:
        """The segment as its header now says, over the same mapping.

        For a pool slot the owner has rewritten for its next use: the header is copied
        and validated again, and a new :class:`Segment` shares this one's mapping
        (arrays made from this one keep it). When only the generation changed, this
        segment itself is returned with the new generation.

        Raises
        ------
        HeaderError
            The header no longer validates, or its data area moved or changed size.
        """
        mm = self.mapping
        header_len = self.header.header_len
        base = self.base
        raw = mm[base : base + header_len]
        old, known = self.header, self._raw
        if (
            known is not None
            and raw[:_OFF_GENERATION] == known[:_OFF_GENERATION]
            and raw[_OFF_META_LEN:] == known[_OFF_META_LEN:]
        ):
            # The same layout and metadata, validated before: only the generation moves
            # (arrays of earlier uses see the same layout, so they may share it).
            old.generation = _U64.unpack_from(raw, _OFF_GENERATION)[0]
            return self
        header = _read_header(mm, len(mm), self.name, base)
        if (header.header_len, header.data_len) != (header_len, old.data_len):
            raise _bad(
                self.name,
                "changed",
                f"header_len/data_len changed from {header_len}/{old.data_len} to "
                f"{header.header_len}/{header.data_len}",
            )
        seg = Segment(
            self.name, header, self._mapping, self.writable, self.directory, base, self.anonymous
        )
        seg._data = self._data
        seg._raw = raw
        return seg

    def populate(self) -> None:
        """Map every page of the segment now (where the kernel can), instead of one by
        one as they are touched."""
        advice = _MADV_POPULATE_WRITE if self.writable else _MADV_POPULATE_READ
        mm = self.mapping
        try:
            if self.base or self.anonymous:
                # This segment's range only: an arena holds other slots too.
                end = self.base + self.header.header_len + self.data_len
                length = min(-(-(end - self.base) // PAGE) * PAGE, len(mm) - self.base)
                mm.madvise(advice, self.base, length)
            else:
                mm.madvise(advice)
        except (OSError, ValueError):
            # An older kernel: touch a byte per page.
            data = self.data
            for off in range(0, len(data), PAGE):
                data[off]

    def _writable_mapping(self) -> mmap.mmap:
        if not self.writable:
            raise SegmentError(f"segment {self.name}: mapped read-only", "read-only", self.name)
        return self.mapping

    # -- ownership and lifetime -----------------------------------------------

    @property
    def owned(self) -> bool:
        """Whether the segment is this process's: it unlinks a named one; an anonymous
        one is its array, which it may move on."""
        fin = self._finalizer
        if fin is None or not fin.alive:
            return False
        return self.anonymous or self.name in _owned

    @property
    def descriptor(self) -> int | None:
        """The descriptor of an anonymous object this process owns and can pass on
        (None for anything else)."""
        return self._fd if self.owned else None

    def adopt(self, fd: int | None = None) -> None:
        """Take ownership: the segment was moved to this process, which will unlink it
        (named) or may move it on (anonymous: with ``fd``, its object's descriptor, which
        this segment then keeps and closes when it goes).

        On a writable mapping this process is also recorded in the header (``owner_pid``,
        state owned), as the format asks of a receiver: sweepers keep a segment whose
        owner runs, also after its creator has died, and ``pixgate ls`` shows whose an
        anonymous array is.
        """
        if self.anonymous:
            # Ours again: a record kept of it from an earlier move is out of date.
            _forget_kept(self.name)
            _register_owned_anonymous(self, fd)
        elif not self.owned:
            _register_owned(self)
        if self.writable:
            self.set_state(STATE_OWNED, owner_pid=os.getpid())

    def disown(self) -> None:
        """Give up ownership: another process will unlink the segment (anonymous: this
        process no longer moves it on, and closes its descriptor)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self.anonymous:
            fd, self._fd = self._fd, None
            if fd is not None:
                _close_quietly(fd)
                keep = self._mapping.keep
                if keep is not None:
                    keep.spoil()
            return
        entry = _owned.get(self.name)
        if entry is not None and entry[0] == os.getpid():
            del _owned[self.name]

    def move_out(self) -> _wire.DescriptorRef:
        """A moved reference to this anonymous segment, with its descriptor to pass.

        Ownership leaves at once (the state word says *moved*): the reference's
        ``outgoing.sent()`` closes the descriptor once it is on its way, and
        ``outgoing.abandon()`` makes the segment this process's again if nothing was
        sent.

        Raises
        ------
        SegmentError
            The segment is not an anonymous one this process owns with its descriptor.
        """
        fd = self.descriptor
        if fd is None:
            raise SegmentError(
                f"segment {self.name}: no descriptor of it to pass on", "descriptor", self.name
            )
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._fd = None
        if self.writable:
            self.set_state(STATE_MOVED)
        return _wire.DescriptorRef(
            self.name, None, self.base, self.generation, _wire.MOVED, _Outgoing(self, fd)
        )

    def unlink(self) -> None:
        """Remove the segment's name now; mappings stay valid until they are closed.

        An anonymous segment has no name to remove: this only gives up ownership.

        Raises
        ------
        SegmentError
            The name no longer exists (problem ``"not found"``) or cannot be removed.
        """
        self.disown()
        if self.anonymous:
            return
        try:
            _shm_unlink(self.name, self.directory)
        except OSError as exc:
            raise _os_error(self.name, exc, "unlink") from None

    @property
    def closed(self) -> bool:
        """Whether this object was closed (or its mapping unmapped)."""
        mm = self._mapping.mm
        return self._closed or mm is None or mm.closed

    def close(self) -> None:
        """End this object's use of the mapping; a second call does nothing.

        The segment's header, data and live fields can no longer be read through this
        object (``SegmentError`` with problem ``"closed"``). The mapping is unmapped
        now if nothing else uses it, else when the last array made over it is
        garbage-collected and every other segment object over it is closed, so an
        array never outlives its mapping. Closing does not unlink: an owned segment is
        still unlinked when this object and its arrays are gone, or at exit.
        """
        if self._closed:
            return
        self._closed = True
        self._data = None
        if self._end_use.detach() is not None:
            self._mapping.release()

    def begin_use(self) -> Callable[[], None]:
        """Count one more use of the mapping (an array made over :attr:`data`) and
        return the function that ends it.

        Raises
        ------
        SegmentError
            With problem ``"closed"``, after :meth:`close`.
        """
        if self._closed:
            raise SegmentError(f"segment {self.name}: closed", "closed", self.name)
        mapping = self._mapping
        mapping.acquire()
        return mapping.release

    def __repr__(self) -> str:
        access = "writable" if self.writable else "read-only"
        owned = ", owned" if self.owned else ""
        kind = "anonymous " if self.anonymous else ""
        at = f" at {self.base:#x}" if self.base else ""
        return f"<{kind}Segment {self.name}{at}: {self.dtype} {self.shape}, {access}{owned}>"


def create(
    dtype: str,
    shape: Iterable[int],
    strides: Iterable[int] | None = None,
    meta: dict[str, Any] | None = None,
    directory: str | None = None,
) -> Segment:
    """Create, size, reserve and initialise a new segment owned by this process.

    Parameters
    ----------
    dtype : str
        One of the :data:`DTYPES` typestrs.
    shape : iterable of int
        The array's shape.
    strides : iterable of int, optional
        Non-negative byte strides; C order when omitted.
    meta : dict, optional
        Metadata, as for :func:`encode_meta`.
    directory : str, optional
        Create the segment as a file in this directory (a tmpfs) instead of with
        ``shm_open``; for tests.

    Returns
    -------
    Segment
        Mapped read-write, zero-filled, owned by this process.

    Raises
    ------
    DTypeError, LayoutError
        As for :func:`build_header`.
    SegmentError
        ``"no space"`` when the memory cannot be reserved (a full /dev/shm), or another
        failed system call.
    """
    header = build_header(dtype, shape, strides, meta)
    size = -(-(header.header_len + header.data_len) // PAGE) * PAGE
    for _ in range(8):
        name = _new_name()
        try:
            fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600, directory)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _os_error(name, exc, "create") from None
    else:  # pragma: no cover - 64 random bits collided eight times
        raise SegmentError(f"segment {name}: create failed: name taken", "create", name)
    mm = None
    try:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            raise _os_error(name, exc, f"resize to {size} bytes") from None
        mm = _reserve_and_stamp(fd, size, header, name)
        seg = Segment(name, header, SegmentMapping(mm), True, directory)
        _register_owned(seg)
    except BaseException:
        if mm is not None:
            mm.close()
        _unlink_quietly(name, directory)
        raise
    finally:
        os.close(fd)
    return seg


# memfd_create's flags (Linux): MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL (6.3).
_MFD_CLOEXEC = 0x0001
_MFD_ALLOW_SEALING = 0x0002
_MFD_NOEXEC_SEAL = 0x0008
# fcntl's sealing commands and seals (Linux; PyPy's fcntl module does not name them).
_F_ADD_SEALS = 1033
_F_GET_SEALS = 1034
_F_SEAL_SEAL = 0x0001
_F_SEAL_SHRINK = 0x0002
_F_SEAL_GROW = 0x0004


def create_anonymous(
    dtype: str,
    shape: Iterable[int],
    strides: Iterable[int] | None = None,
    meta: dict[str, Any] | None = None,
    reuse: bool = False,
) -> Segment:
    """Create a segment in a new anonymous object, owned by this process.

    The object has no name in any directory (docs/SEGMENT_FORMAT.md 3.2): on Linux a
    ``memfd`` named ``pxg-<pid hex>-<16 hex digits>``, mode 0400, reserved, its header
    written and stamped, then sealed against shrinking and growing; on macOS a
    shared-memory object unlinked at once (it cannot be sealed there). Other processes
    reach it only through its descriptor, which the segment keeps while it is this
    process's (:meth:`Segment.move_out` passes it on). Nothing is ever unlinked: the
    memory goes when the last descriptor and mapping of it do.

    Parameters
    ----------
    dtype, shape, strides, meta
        As for :func:`create`.
    reuse : bool, optional
        Reuse an object of the same size that this process made for an earlier array
        and kept when that array was gone (see :func:`reuse_limit`), with its data as
        that array left it; and keep this one for reuse in turn, when it is at least
        :data:`KEEP_MIN` bytes.

    Returns
    -------
    Segment
        Mapped read-write, owned by this process; zero-filled unless reused.

    Raises
    ------
    DTypeError, LayoutError
        As for :func:`build_header`.
    SegmentError
        ``"no space"`` when the memory cannot be reserved, ``"descriptors"`` when the
        process has no descriptor left, or another failed system call.
    """
    header = build_header(dtype, shape, strides, meta)
    size = -(-(header.header_len + header.data_len) // PAGE) * PAGE
    reusable = reuse and size >= KEEP_MIN and _keep_bytes >= size
    if reusable and _kept:
        seg = _reuse_anonymous(header, size)
        if seg is not None:
            return seg
    name = _new_name()
    keep = _Kept(name, size) if reusable else None
    fd = anonymous_object(name)
    mm = None
    try:
        if _LINUX:
            try:
                # Read-only for everyone but root: a read-only descriptor of it cannot
                # be reopened writable through /proc by another process of the user.
                os.fchmod(fd, 0o400)
                os.ftruncate(fd, size)
            except OSError as exc:
                raise _os_error(name, exc, "sizing the anonymous object") from None
        else:
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                raise _os_error(name, exc, f"resize to {size} bytes") from None
        mm = _reserve_and_stamp(fd, size, header, name)
        try:
            seal(fd)
        except OSError as exc:
            raise _os_error(name, exc, "sealing the anonymous object") from None
        seg = Segment(name, header, SegmentMapping(mm, keep), True, None, 0, anonymous=True)
    except BaseException:
        if mm is not None:
            mm.close()
        os.close(fd)
        raise
    _register_owned_anonymous(seg, fd)
    return seg


# ---------------------------------------------------------------------------------------
# Reuse of this process's own anonymous segments
#
# Memory that was never mapped costs a page fault per 4 KiB page on first touch (shared
# memory gets transparent huge pages only where shmem_enabled allows them), five times
# what a copy into numpy's own memory costs. So an anonymous object this process made for
# an array (pixgate.empty and friends) is kept, mapped, when its array is gone, and the
# next array of the same size reuses it: its pages are already faulted in. Kept are the
# objects whose array died here (nobody else ever had the descriptor), and the ones moved
# to the host, which become reusable when the host writes STATE_FREE into the header as
# it lets go of them (docs/SEGMENT_FORMAT.md §10). At most _KEEP_COUNT objects and
# reuse_limit() bytes are kept; the oldest go first.

#: Objects smaller than this are not kept: their faults cost little.
KEEP_MIN = 1 << 20
_KEEP_COUNT = 8
_keep_bytes = 256 << 20
_kept: list[_Kept] = []  # oldest first
_kept_lock = threading.Lock()


class _Kept:
    """The reuse record of an anonymous object this process made: it collects the
    object's descriptor (when the segment goes, or once it was moved out) and its mmap
    (when the last use ends), and when it has both, keeps them for reuse (:func:`_park`).

    Each of the two parts arrives once, possibly from weakref callbacks on any thread;
    ``itertools.count`` decides atomically which arrival is the second."""

    __slots__ = ("_parts", "fd", "mm", "name", "out", "size", "spoiled")

    def __init__(self, name: str, size: int) -> None:
        import itertools

        self.name = name
        self.size = size
        self.fd: int | None = None
        self.mm: mmap.mmap | None = None
        #: Moved to the host: reusable once the host has written STATE_FREE.
        self.out = False
        #: The descriptor was closed (given up): nothing is kept.
        self.spoiled = False
        self._parts = itertools.count()

    def give_descriptor(self, fd: int | None) -> None:
        """The descriptor part: the object's descriptor (None: there is none to keep)."""
        self.fd = fd
        self.spoiled = self.spoiled or fd is None
        self._arrived()

    def give_mapping(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self._arrived()

    def spoil(self) -> None:
        """The descriptor part, closed elsewhere: the mapping is closed when it comes."""
        self.spoiled = True
        self._arrived()

    def _arrived(self) -> None:
        if next(self._parts) == 1:
            _park(self)

    def discard(self) -> None:
        mm, self.mm = self.mm, None
        if mm is not None:
            _close_mapping(mm)
        fd, self.fd = self.fd, None
        _close_quietly(fd)

    def reusable(self, size: int) -> bool:
        if self.size != size or self.mm is None:
            return False
        if not self.out:
            return True
        try:
            return _U32.unpack_from(self.mm, _OFF_STATE)[0] == STATE_FREE
        except (ValueError, struct.error):  # pragma: no cover - a closed mapping
            return False


def _park(rec: _Kept) -> None:
    """Keep a record whose descriptor and mapping have both arrived, within the bounds;
    from weakref callbacks too, so it never waits for the lock (and discards instead)."""
    if rec.spoiled or rec.fd is None or rec.mm is None or rec.size > _keep_bytes:
        rec.discard()
        return
    if not _kept_lock.acquire(blocking=False):
        rec.discard()
        return
    try:
        if not rec.out:
            try:
                _U32.pack_into(rec.mm, _OFF_STATE, STATE_FREE)
            except (ValueError, TypeError):  # pragma: no cover - a closed mapping
                rec.discard()
                return
        _kept.append(rec)
        _trim(_KEEP_COUNT, _keep_bytes)
    finally:
        _kept_lock.release()


def _trim(count: int, nbytes: int) -> None:
    """Discard the oldest kept records until at most ``count`` of at most ``nbytes``
    are left (the lock held)."""
    total = sum(r.size for r in _kept)
    while _kept and (len(_kept) > count or total > nbytes):
        victim = _kept.pop(0)
        total -= victim.size
        victim.discard()


def _take_kept(size: int) -> _Kept | None:
    with _kept_lock:
        for i, rec in enumerate(_kept):
            if rec.reusable(size):
                del _kept[i]
                return rec
    return None


def _forget_kept(name: str) -> None:
    if not _kept:
        return
    with _kept_lock:
        for i, rec in enumerate(_kept):
            if rec.name == name:
                del _kept[i]
                rec.discard()
                return


def reuse_limit(nbytes: int | None = None) -> int:
    """The most bytes of freed anonymous segments this process keeps for reuse, after
    setting it to ``nbytes`` when given (0 keeps none and lets go of those kept)."""
    global _keep_bytes
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"reuse_limit takes a number of bytes >= 0, got {nbytes!r}")
        with _kept_lock:
            _keep_bytes = nbytes
            _trim(_KEEP_COUNT, nbytes)
    return _keep_bytes


def kept() -> list[tuple[str, int, bool]]:
    """The anonymous objects kept for reuse now: (name, size, whether moved out)."""
    with _kept_lock:
        return [(r.name, r.size, r.out) for r in _kept]


def drop_kept() -> None:
    """Let go of every object kept for reuse (the limit stays)."""
    with _kept_lock:
        _trim(0, 0)


def reused(seg: Segment) -> bool:
    """Whether ``seg``, just made by :func:`create_anonymous`, reuses a kept object (and
    holds the bytes of the array before it)."""
    return seg.anonymous and seg.header.generation != 0


def _reuse_anonymous(header: Header, size: int) -> Segment | None:
    """A segment for ``header`` in a kept object of ``size`` bytes, or None. Its header
    is written as a new one's (version last) with the generation one past the object's
    last, so that a receiver that cached the old header reads this one again, and never
    0, which tells a reused segment from a new one (:func:`reused`); its data are
    whatever the last array left."""
    rec = _take_kept(size)
    if rec is None:
        return None
    mm, fd = rec.mm, rec.fd
    assert mm is not None and fd is not None
    try:
        header.generation = (_U64.unpack_from(mm, _OFF_GENERATION)[0] + 1) & _U64_MAX or 1
        _U32.pack_into(mm, _OFF_VERSION, 0)
        header.version = 0
        mm[: header.header_len] = encode_header(header)
        header.version = VERSION
        _U32.pack_into(mm, _OFF_VERSION, VERSION)  # the version stamp, last
    except BaseException:
        rec.discard()
        raise
    keep = _Kept(rec.name, size)
    seg = Segment(rec.name, header, SegmentMapping(mm, keep), True, None, 0, anonymous=True)
    _register_owned_anonymous(seg, fd)
    return seg


def anonymous_object(name: str) -> int:
    """A new anonymous object's descriptor (close-on-exec), not yet sized.

    Raises
    ------
    SegmentError
        With problem ``"descriptors"`` when this process or the system has no
        descriptor left, else the problem of the failed call.
    """
    import errno

    try:
        if _LINUX:
            label = name[1:]
            flags = _MFD_CLOEXEC | _MFD_ALLOW_SEALING
            try:
                return os.memfd_create(label, flags | _MFD_NOEXEC_SEAL)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a kernel before 6.3 has no NOEXEC_SEAL
                    raise
                return os.memfd_create(label, flags)
        fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600, None)
        _unlink_quietly(name, None)
        return fd
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise SegmentError(
                f"segment {name}: no descriptor left for an anonymous object: "
                f"{exc.strerror}",
                "descriptors",
                name,
                exc.errno,
            ) from None
        raise _os_error(name, exc, "create") from None


def seal(fd: int) -> None:
    """Seal the anonymous object ``fd`` at its size: against shrinking, growing and
    further seals (Linux; elsewhere objects cannot be sealed and this does nothing).

    Raises
    ------
    OSError
        The system refused.
    """
    if _LINUX:
        fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_SEAL)


def map_descriptor(fd: int, name: str, offset: int, writable: bool) -> tuple[SegmentMapping, int]:
    """Validate a descriptor a peer sent for the segment at ``offset`` of the anonymous
    object ``name`` (docs/SEGMENT_FORMAT.md 8, step 0) and map the whole object.

    The caller keeps ``fd`` (and closes it); the mapping does not need it.

    Parameters
    ----------
    fd : int
        The received descriptor.
    name : str
        The object's name from the reference (checked, never opened).
    offset : int
        Where the referenced segment's header starts in the object.
    writable : bool
        Map read-write (a lent or moved reference); read-only otherwise, whatever the
        descriptor allows.

    Returns
    -------
    mapping : SegmentMapping
        The mapping of the whole object, with no use counted yet.
    size : int
        The object's size.

    Raises
    ------
    SegmentError
        The first check that failed: ``name``, ``not a file``, ``owner``, ``mode``,
        ``size``, ``not sealed`` (it could shrink under the mapping), ``access`` (a
        read-only descriptor for a writable reference), ``offset`` (not a multiple of 4096, or
        no page left from it), ``map``.
    """
    check_name(name)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise _os_error(name, exc, "fstat") from None
    size = _check_stat(st, name)
    if _LINUX:
        try:
            seals = fcntl.fcntl(fd, _F_GET_SEALS)
        except OSError:
            seals = 0  # not a memfd (or shmem file): it has no seals
        if seals & (_F_SEAL_SHRINK | _F_SEAL_GROW) != _F_SEAL_SHRINK | _F_SEAL_GROW:
            raise SegmentError(
                f"segment {name}: the object is not sealed against shrinking and growing "
                f"(seals {seals:#x}), so a mapping of it could fault",
                "not sealed",
                name,
            )
    if writable:
        try:
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_ACCMODE", 3)
        except OSError as exc:
            raise _os_error(name, exc, "F_GETFL") from None
        if mode != os.O_RDWR:
            raise SegmentError(
                f"segment {name}: the descriptor was opened read-only, and the "
                "reference needs it writable",
                "access",
                name,
            )
    if offset < 0 or offset % PAGE or offset + PAGE > size:
        raise SegmentError(
            f"segment {name}: offset {offset} in an object of {size} bytes, expected a "
            f"multiple of {PAGE} with at least {PAGE} bytes after it",
            "offset",
            name,
        )
    return SegmentMapping(_map(fd, size, writable, name, populate=False)), size


def at_offset(mapping: SegmentMapping, size: int, name: str, offset: int, writable: bool) -> Segment:
    """The segment whose header is at ``offset`` of a mapped anonymous object, after
    validating that header as for any segment (the segment may use the ``size -
    offset`` bytes from there).

    ``mapping`` must be held (counted) by the caller while this runs; the segment
    counts its own use.

    Raises
    ------
    HeaderError
        The header failed validation.
    SegmentError
        The mapping was closed.
    """
    mm = mapping.mm
    if mm is None or mm.closed:
        raise SegmentError(f"segment {name}: closed", "closed", name)
    header = _read_header(mm, size, name, offset)
    return Segment(name, header, mapping, writable, None, offset, anonymous=True)


def _reserve_and_stamp(fd: int, size: int, header: Header, name: str) -> mmap.mmap:
    """Reserve a new segment's ``size`` bytes, map them writable, write ``header`` and
    stamp its version last (docs/SEGMENT_FORMAT.md §7); the mapping is returned."""
    _reserve(fd, size, name)
    mm = _map(fd, size, True, name, populate=False)
    header.version = 0
    mm[: header.header_len] = encode_header(header)
    header.version = VERSION
    _U32.pack_into(mm, _OFF_VERSION, VERSION)  # the version stamp, last
    return mm


# Without reference counting (PyPy, which has no trackfd either) the mmap objects of
# arrays already dropped keep their duplicate descriptors until the collector runs,
# which knows nothing of descriptors. Every few mappings the open descriptors are
# counted; past a quarter of the limit the collector runs, before the process runs out.
_LAZY_FDS = sys.implementation.name != "cpython" and not _TRACKFD and _LINUX
_CHECK_EVERY = 8
_maps_made = 0
_fd_budget = 0


# One collection at a time, its callbacks (releases sent to the host) included: a
# thread that collects after another has found the garbage first waits for that one's
# callbacks, so that what they send goes before what it sends next. Reentrant: a
# callback may map memory, which may collect.
_collecting = threading.RLock()


def collect_all(passes: int = 4) -> None:
    """Run the garbage collector ``passes`` times: on PyPy each finalizer of a numpy
    array's chain (array, anchor, mapping) frees the next link only at the next pass."""
    import gc

    with _collecting:
        for _ in range(passes):
            gc.collect()


def _relieve_descriptors() -> None:
    global _maps_made, _fd_budget
    _maps_made += 1
    if _maps_made % _CHECK_EVERY:
        return
    if not _fd_budget:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            soft = 1024
        _fd_budget = max(8, (soft if 0 < soft < 1 << 20 else 1 << 20) // 4)
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:
        return
    if held >= _fd_budget:
        collect_all()


def _map(fd: int, size: int, writable: bool, name: str, populate: bool) -> mmap.mmap:
    if _LAZY_FDS:
        _relieve_descriptors()
    try:
        return _map_once(fd, size, writable, name, populate)
    except SegmentError as exc:
        # Before Python 3.13 each mmap object holds a duplicate of its descriptor;
        # without reference counting (PyPy) the mappings of arrays already dropped
        # may hold them still. Collect them once, and try again.
        if exc.errno not in (errno.EMFILE, errno.ENFILE) or sys.implementation.name == "cpython":
            raise
        collect_all()
        return _map_once(fd, size, writable, name, populate)


def _map_once(fd: int, size: int, writable: bool, name: str, populate: bool) -> mmap.mmap:
    # Populating a mapping of pages that exist (a segment another process filled) costs
    # a quarter of faulting them in one by one; on a new segment it only moves the cost.
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        global _TRACKFD
        if _TRACKFD:
            # A mapping needs no descriptor: without trackfd=False the mmap object keeps
            # a duplicate of it for as long as it lives (Python before 3.13 always does).
            try:
                # (typeshed knows trackfd from Python 3.13 only)
                return mmap.mmap(fd, size, flags=flags, prot=prot, trackfd=False)  # type: ignore[call-arg,unused-ignore]
            except TypeError:  # an interpreter that does not take it
                _TRACKFD = False
        return mmap.mmap(fd, size, flags=flags, prot=prot)
    except (OSError, OverflowError) as exc:
        raise SegmentError(
            f"segment {name}: mapping {size} bytes failed: {exc}",
            "map",
            name,
            getattr(exc, "errno", None),
        ) from None


def _reserve(fd: int, size: int, name: str) -> None:
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS: shm objects cannot be fallocated
        return
    try:
        failed = fallocate(fd, 0, size)
        if failed:
            # PyPy returns posix_fallocate's error number instead of raising it: the
            # memory is not reserved, and writing past the free space would be a
            # SIGBUS later.
            raise OSError(failed, os.strerror(failed))
    except OSError as exc:
        import errno

        # An anonymous object runs out of memory rather than of file system space.
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise SegmentError(
                f"segment {name}: no space for {size} bytes of shared memory "
                f"(is /dev/shm full or too small?)",
                "no space",
                name,
                exc.errno,
            ) from None
        raise _os_error(name, exc, f"reserving {size} bytes") from None


def open(
    name: str,
    writable: bool = False,
    *,
    populate: bool = True,
    directory: str | None = None,
) -> Segment:
    """Open and map an existing segment after validating all of its header.

    Parameters
    ----------
    name : str
        The segment's name, with its leading slash.
    writable : bool, optional
        Map read-write (a lent segment); read-only by default, with the mapping itself
        read-only so no view of it can ever be made writable.
    populate : bool, optional
        Map every page up front (``MAP_POPULATE``, where available): about a quarter
        of the cost of faulting the pages in one by one when the array is read whole,
        wasted when only part of it is read.
    directory : str, optional
        Open a file in this directory instead of a POSIX shm object; for tests.

    Returns
    -------
    Segment
        Not owned by this process (see :meth:`Segment.adopt`).

    Raises
    ------
    SegmentError
        A bad name, a missing segment, wrong owner or permissions, a segment under 4096
        bytes.
    HeaderError
        The header failed validation; ``problem`` names the check.
    """
    check_name(name)
    try:
        # O_NONBLOCK: something that is not a regular file (a FIFO planted under a
        # pixgate name) must fail the checks below, not hang the open.
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK
        fd = _shm_open(name, flags, 0, directory)
    except OSError as exc:
        raise _os_error(name, exc, "open") from None
    try:
        size = _check_stat(os.fstat(fd), name)
        mm = _map(fd, size, writable, name, populate)
    finally:
        os.close(fd)
    try:
        header = _read_header(mm, size, name)
    except BaseException:
        mm.close()
        raise
    return Segment(name, header, SegmentMapping(mm), writable, directory)


def _check_stat(st: os.stat_result, name: str) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise SegmentError(f"segment {name}: not a regular file", "not a file", name)
    euid = os.geteuid()
    if st.st_uid != euid:
        raise SegmentError(
            f"segment {name}: owned by uid {st.st_uid}, expected uid {euid}", "owner", name
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SegmentError(
            f"segment {name}: mode {mode:#o} gives group or others access, expected "
            "mode & 0o077 == 0",
            "mode",
            name,
        )
    if st.st_size < PAGE:
        raise SegmentError(
            f"segment {name}: size {st.st_size} bytes, expected at least {PAGE}", "size", name
        )
    return int(st.st_size)


def _read_header(mm: mmap.mmap, size: int, name: str, base: int = 0) -> Header:
    """Copy and validate the header at ``base`` of a mapping of ``size`` bytes (at least
    ``base`` + 4096): the segment there may use the ``size - base`` bytes from it."""
    # The version first (see "Ordering" in the module docs), then a private copy of the
    # header: the owner may write the advisory fields while it is parsed.
    size -= base
    version = _U32.unpack_from(mm, base + _OFF_VERSION)[0]
    if version == 0:
        raise _bad(name, "uninitialised", "segment not yet initialised (version 0)")
    header_len = _U32.unpack_from(mm, base + _OFF_HEADER_LEN)[0]
    data = mm[base : base + (header_len if PAGE < header_len <= size else PAGE)]
    # The owner may rewrite the metadata of a segment it has not handed out yet, with
    # the version at 0 meanwhile; a copy taken across such a rewrite is refused.
    if _U32.unpack_from(mm, base + _OFF_VERSION)[0] != version:
        raise _bad(name, "changed", "header changed while it was read")
    return parse_header(data, size, name, version)


def unlink(name: str, directory: str | None = None) -> None:
    """Remove a segment's name (whoever owns it) and forget any ownership of it.

    Raises
    ------
    SegmentError
        A bad name, or the name does not exist or cannot be removed.
    """
    check_name(name)
    entry = _owned.get(name)
    if entry is not None and entry[0] == os.getpid():
        del _owned[name]
    try:
        _shm_unlink(name, directory)
    except OSError as exc:
        raise _os_error(name, exc, "unlink") from None
