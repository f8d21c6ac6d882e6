"""execnet's value codec and message framing, with a hardened decoder.

The encoder writes exactly the bytes of ``execnet.dumps`` (and of
``execnet.gateway_base.dumps_internal`` for channel payloads) for every value execnet
can serialize. The decoder reads everything execnet writes, and treats its input as
hostile: it checks every length and count against the bytes that are actually present
before it allocates anything, bounds nesting, and reports every malformed input as a
:class:`~pixgate.LoadError` that names the offset (counted from the first byte passed
in; for :func:`loads` the version byte is offset 0).

Value format
------------
A value is a program for a stack machine: one-byte ASCII opcodes, some followed by an
argument. Counts and lengths are signed 32-bit big-endian integers (``i32`` below).
A program ends with ``Q`` (STOP), which must leave exactly one value on the stack.
The public form (:func:`dumps`, :func:`loads`) starts with a version byte: ``0x02``
(execnet 2.0 and later, written by default) or ``0x01`` (execnet 1.9 and earlier, on
Python 2, 3 and Jython; ``dumps(obj, version=1)``). Both versions have the same opcodes
and both are read. Channel payloads (:func:`dumps_payload`, :func:`loads_payload`) have
no version byte.

======  ==========  =================================================================
byte    name        meaning
======  ==========  =================================================================
``@``   BUILDTUPLE  ``i32`` n: pop n values, push a tuple of them (oldest first)
``A``   BYTES       ``i32`` length, raw bytes: push bytes
``B``   CHANNEL     ``i32`` channel id (execnet channel objects; not supported here)
``C``   FALSE       push False
``D``   FLOAT       8-byte big-endian IEEE 754 double: push a float
``E``   FROZENSET   ``i32`` n: pop n values, push a frozenset of them
``F``   INT         ``i32`` value: push an int
``G``   LONG        same as ``F``
``H``   LONGINT     ``i32`` length, ASCII decimal with optional sign: push an int
``I``   LONGLONG    same as ``H``
``J``   NEWDICT     push an empty dict
``K``   NEWLIST     ``i32`` n: push a list that ``P`` fills with items 0 .. n-1
``L``   NONE        push None
``M``   PY2STRING   ``i32`` length, raw bytes (a Python 2 str): push bytes, or latin-1
                    text with ``py2str_as_py3str`` (which :func:`loads_payload`
                    always uses)
``N``   PY3STRING   ``i32`` length, UTF-8: push a str, or its raw bytes with
                    ``py3str_as_py2str``
``O``   SET         ``i32`` n: pop n values, push a set of them
``P``   SETITEM     pop value, pop key, store ``container[key] = value`` into the
                    list or dict now on top
``Q``   STOP        end of the program
``R``   TRUE        push True
``S``   UNICODE     ``i32`` length, UTF-8 (a Python 2 unicode): push a str
``T``   COMPLEX     two 8-byte big-endian doubles (real, imaginary): push a complex
``U``   ARRAY       an array reference (pixgate's own; see :class:`ArrayRef`)
``V``   DESCRIPTOR  an array reference by descriptor (pixgate's own; see
        ARRAY       :class:`DescriptorRef`)
======  ==========  =================================================================

The encoder writes a list as ``K n`` then, per item, its index (``F i``), the item and
``P``; a dict as ``J`` then key, value, ``P`` per entry; a tuple, set or frozenset as its
items followed by ``@ n``, ``O n`` or ``E n``; ints outside the ``i32`` range as ``H``.

Limits
------
Lengths and counts are at most ``2**31 - 1`` (:data:`MAX_LENGTH`). Containers nest at
most :data:`MAX_DEPTH` deep (a scalar has depth 0, a container one more than its deepest
item). Ints have at most :data:`MAX_INT_DIGITS` decimal digits (CPython's default limit
for int/str conversion).

Differences from execnet
------------------------
- Ints below ``-2**31`` are written as ``H`` (execnet's encoder fails on them).
- bytearray and memoryview are written as bytes; instances of subclasses of the
  builtin types (an ``IntEnum``, a ``str`` subclass, a namedtuple, an ``OrderedDict``)
  are written as their base value, where execnet, which dispatches on the exact type,
  raises ``DumpError``;
  other numbers are written as int (types with ``__index__``), float
  (``numbers.Real``) or complex (``numbers.Complex``), which covers numpy scalars
  without importing numpy; ``numpy.bool_`` is written as a bool.
- Channel references (``B``) are not supported; ``U`` and ``V`` are array references.
- The decoder rejects what execnet's would accept or crash on: truncated input, trailing
  bytes after STOP, lists that are filled out of order or not completely, nesting
  deeper than :data:`MAX_DEPTH`, malformed or oversized decimal ints.

Framing
-------
A message is a 9-byte header (:data:`HEADER`: message type ``i8``, channel id ``i32``,
payload length ``i32``, all big-endian) followed by the payload.
"""

from __future__ import annotations

__all__ = [
    "DUMPFORMAT_VERSION",
    "DUMPFORMAT_VERSIONS",
    "HEADER",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_LENGTH",
    "OP_ARRAY",
    "OP_DESC_ARRAY",
    "ArrayRef",
    "DescriptorRef",
    "dumps",
    "dumps_payload",
    "dumps_payload_fds",
    "loads",
    "loads_payload",
    "loads_payload_with",
    "pack_frame",
    "unpack_header",
]

import struct

# `typing` costs ~15 ms to import; annotations are strings here, so only type
# checkers need it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from ._errors import DumpError, LoadError, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

#: The byte that starts the public form of a value as :func:`dumps` writes it by default
#: (execnet 2.0 and later).
DUMPFORMAT_VERSION = b"\x02"
#: The format versions :func:`dumps` writes and :func:`loads` reads: 1 (execnet 1.9 and
#: earlier) and 2.
DUMPFORMAT_VERSIONS = (1, 2)
#: Most decimal digits an int may have, on either side.
MAX_INT_DIGITS = 4300
#: Deepest container nesting accepted, on either side.
MAX_DEPTH = 512
#: Largest length or count the format can carry (a signed 32-bit integer).
MAX_LENGTH = 0x7FFFFFFF

#: An array reference to a named segment.
OP_ARRAY = b"U"
#: An array reference to an anonymous segment, by descriptor.
OP_DESC_ARRAY = b"V"
MAX_ARRAY_NAME = 255

SHARED, LENT, MOVED = 0, 1, 2
_ACCESS_NAMES = {SHARED: "shared", LENT: "lent", MOVED: "moved"}


class ArrayRef:
    """A reference to an array in a named shared-memory segment, as it travels.

    Parameters
    ----------
    name : str
        The segment's name, with its leading slash.
    generation : int
        The segment's generation when the reference was made.
    access : int
        ``SHARED`` (0, read-only), ``LENT`` (1, writable until released) or ``MOVED``
        (2, ownership passes to the receiver).
    """

    __slots__ = ("name", "generation", "access")
    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable in Python

    def __init__(self, name: str, generation: int, access: int) -> None:
        self.name = name
        self.generation = generation
        self.access = access

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is ArrayRef
            and self.name == other.name
            and self.generation == other.generation
            and self.access == other.access
        )

    @property
    def key(self) -> str:
        """What RELEASE and FORGET name: the segment's name."""
        return self.name

    def __repr__(self) -> str:
        access = _ACCESS_NAMES.get(self.access, str(self.access))
        return f"ArrayRef({self.name!r}, generation={self.generation}, {access})"


class DescriptorRef:
    """A reference to an array in an anonymous segment (opcode ``V``), as it travels.

    The segment's memory has no name to open: it is reached through a descriptor that
    the sender passes on the gateway's descriptor socket before the frame, under
    ``token`` (docs/PROTOCOL.md 2.7, 5.7).

    Parameters
    ----------
    name : str
        The object's name, ``/pxg-<pid hex>-<16 hex digits>``: its identity, never
        opened.
    token : int or None
        The token of the descriptor to map; 0 when the receiver maps the object already
        with the access this reference needs. None on an outgoing reference whose
        descriptor (``outgoing``) gets its token when the frame is sent.
    offset : int
        Where the segment's header starts in the object: 0, or a pool slot's offset in
        its arena (a multiple of 4096).
    generation : int
        The segment's generation when the reference was made.
    access : int
        ``SHARED`` (0), ``LENT`` (1) or ``MOVED`` (2), as for :class:`ArrayRef`.
    outgoing : object, optional
        For a reference this process sends with a new descriptor: an object with the
        descriptor as ``fd`` and two methods, ``sent()`` (the descriptor went out: the
        sender closes its copy) and ``abandon()`` (nothing was sent: undo what making
        the reference did).
    """

    # In the order of the wire.
    __slots__ = ("name", "token", "offset", "generation", "access", "outgoing")
    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable in Python

    def __init__(
        self,
        name: str,
        token: int | None,
        offset: int,
        generation: int,
        access: int,
        outgoing: Any = None,
    ) -> None:
        self.name = name
        self.token = token
        self.offset = offset
        self.generation = generation
        self.access = access
        self.outgoing = outgoing

    @property
    def key(self) -> str:
        """What RELEASE names: the name, or for a segment at an offset other than 0 the
        name, ``@`` and the offset in lower-case hex."""
        return self.name if not self.offset else f"{self.name}@{self.offset:x}"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is DescriptorRef
            and self.name == other.name
            and self.token == other.token
            and self.offset == other.offset
            and self.generation == other.generation
            and self.access == other.access
        )

    def __repr__(self) -> str:
        access = _ACCESS_NAMES.get(self.access, str(self.access))
        return (
            f"DescriptorRef({self.name!r}, token={self.token}, offset={self.offset:#x}, "
            f"generation={self.generation}, {access})"
        )


# Installed by the array layer: ``export(obj) -> ArrayRef | DescriptorRef | None`` turns
# an object the codec does not know (a numpy array) into a reference; ``import_(ref) ->
# object`` turns a received reference into an array. Without them, references load as
# ArrayRef and DescriptorRef.
_array_export: Callable[[object], ArrayRef | DescriptorRef | None] | None = None
_array_import: Callable[[ArrayRef | DescriptorRef], object] | None = None


def set_array_hooks(
    export: Callable[[object], ArrayRef | DescriptorRef | None] | None,
    import_: Callable[[ArrayRef | DescriptorRef], object] | None,
) -> None:
    """Install (or, with None, remove) the array layer's conversion hooks."""
    global _array_export, _array_import
    _array_export = export
    _array_import = import_

#: Frame header: message type (i8), channel id (i32), payload length (i32), big-endian.
HEADER = struct.Struct("!bii")
_INT4 = struct.Struct("!i")
_ARRAY_TAIL = struct.Struct("!QB")
# V after the name: token, offset, generation, access.
_DESC_TAIL = struct.Struct("!QQQB")
_TOKEN = struct.Struct("!Q")
# Offsets of segments in their objects are multiples of this.
_PAGE = 4096

_I32_MIN = -0x80000000
_I32_MAX = 0x7FFFFFFF

# Opcode followed by an i32 / a double / two doubles; an INT followed by STOP.
_pack_op_i32 = struct.Struct("!ci").pack
_pack_op_f64 = struct.Struct("!cd").pack
_pack_op_c128 = struct.Struct("!cdd").pack
_pack_int_stop = struct.Struct("!cic").pack
# A list item: INT index, INT or FLOAT value, SETITEM.
_pack_int_item = struct.Struct("!cicic").pack
_pack_float_item = struct.Struct("!cicdc").pack
_unpack_i32 = struct.Struct("!i").unpack_from
_unpack_f64 = struct.Struct("!d").unpack_from
_unpack_c128 = struct.Struct("!dd").unpack_from

_EMPTY_TUPLE = b"@\x00\x00\x00\x00"
_EMPTY_LIST = b"K\x00\x00\x00\x00"
_EMPTY_SET = b"O\x00\x00\x00\x00"
_EMPTY_FROZENSET = b"E\x00\x00\x00\x00"

# Opcode byte -> name, for error messages.
# fmt: off
_NAMES = dict(zip(b"@ABCDEFGHIJKLMNOPQRSTUV", (
    "buildtuple", "bytes", "channel", "false", "float", "frozenset", "int", "long", "longint",
    "longlong", "newdict", "newlist", "none", "py2string", "py3string", "set", "setitem",
    "stop", "true", "unicode", "complex", "array", "descriptor array",
)))
# fmt: on


def _strict_utf8() -> str:
    """The encoding name whose ``str(raw, name)`` refuses UTF-8-encoded surrogates.

    ``str(raw, "utf-8")`` is the fastest strict decode on CPython. PyPy's ``str()``
    takes a fast path for that name which lets ``ed a0 80`` (an encoded surrogate)
    through, while its codec refuses it; the Rust side refuses it too, so both must.
    """
    for name in ("utf-8", "utf_8", "UTF-8"):
        try:
            str(b"\xed\xa0\x80", name)
        except UnicodeDecodeError:
            return name
    return "utf-8"  # pragma: no cover - every known interpreter refuses one of them


_UTF8 = _strict_utf8()

_EXACT_TYPES = frozenset(
    {type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset}
)

# Strings up to this many characters are encoded into one part with their header.
_SHORT_STR = 256

_CONTAINER_TYPES = frozenset({list, dict, tuple, set, frozenset})

# Marks the end of an open container's items in the encoder.
_END = object()


# ---------------------------------------------------------------------------------------
# Encoding


def dumps(obj: object, version: int = 2) -> bytes:
    """Serialize a value in the public form, the bytes of ``execnet.dumps``.

    Parameters
    ----------
    obj : object
        None, bool, int, float, complex, str, bytes (or bytearray, memoryview), and
        lists, tuples, dicts, sets and frozensets of these, nested at most
        :data:`MAX_DEPTH` deep.
    version : int
        The format version: 2 (the default) for execnet 2.0 and later, 1 for execnet
        1.9 and earlier (which refuse version 2). The two differ only in the first byte.

    Returns
    -------
    bytes
        The version byte, the value, STOP.

    Raises
    ------
    DumpError
        A value of an unsupported type, a str that is not UTF-8 encodable, an int of
        more than :data:`MAX_INT_DIGITS` digits, a length over :data:`MAX_LENGTH`,
        nesting deeper than :data:`MAX_DEPTH`, or a container changed while being
        serialized.
    ValueError
        ``version`` is not one of :data:`DUMPFORMAT_VERSIONS`.
    """
    if version == 2 and type(version) is int:
        parts: list[Any] = [DUMPFORMAT_VERSION]
    elif version == 1 and type(version) is int:
        parts = [b"\x01"]
    else:
        raise ValueError(f"dump format version {version!r}, expected 1 or 2")
    _encode(obj, parts)
    parts.append(b"Q")
    return b"".join(parts)


def dumps_payload(obj: object) -> bytes:
    """Serialize a value as a channel payload, the bytes of execnet's ``dumps_internal``.

    Parameters
    ----------
    obj : object
        As for :func:`dumps`.

    Returns
    -------
    bytes
        The value and STOP, without the version byte.

    Raises
    ------
    DumpError
        As for :func:`dumps`.
    """
    if type(obj) is int and _I32_MIN <= obj <= _I32_MAX:
        return _pack_int_stop(b"F", obj, b"Q")
    parts: list[Any] = []
    _encode(obj, parts)
    parts.append(b"Q")
    return b"".join(parts)


def dumps_payload_fds(obj: object) -> tuple[bytes | bytearray, list[tuple[int, DescriptorRef]]]:
    """Serialize a value as a channel payload that may pass descriptors.

    As :func:`dumps_payload`, but a :class:`DescriptorRef` whose descriptor is still to
    be sent (token None, from the array layer's export hook) is written with a
    placeholder token, and listed: the sender gives each its token and sends its
    descriptor right before the frame (docs/PROTOCOL.md 2.7).

    Parameters
    ----------
    obj : object
        As for :func:`dumps`.

    Returns
    -------
    payload : bytes or bytearray
        The value and STOP; a bytearray when descriptors go with it.
    outgoing : list of (int, DescriptorRef)
        For each descriptor to send, in token order: the offset of its 8-byte token in
        ``payload``, and the reference.

    Raises
    ------
    DumpError
        As for :func:`dumps`; the references listed so far are abandoned first.
    """
    if type(obj) is int and _I32_MIN <= obj <= _I32_MAX:
        return _pack_int_stop(b"F", obj, b"Q"), []
    parts: list[Any] = []
    places: list[tuple[int, DescriptorRef]] = []
    try:
        _encode(obj, parts, places)
    except BaseException:
        for _, ref in places:
            ref.outgoing.abandon()
        raise
    parts.append(b"Q")
    if not places:
        return b"".join(parts), []
    # Part indices to byte offsets: one pass over the parts.
    outgoing = []
    offset = 0
    want = iter(places)
    index, ref = next(want)
    for i, part in enumerate(parts):
        if i == index:
            outgoing.append((offset, ref))
            nxt = next(want, None)
            if nxt is None:
                break
            index, ref = nxt
        offset += len(part) if type(part) is not memoryview else part.nbytes
    return bytearray().join(parts), outgoing


def _encode(
    obj: Any, parts: list[Any], places: list[tuple[int, DescriptorRef]] | None = None
) -> None:
    """Append the encoding of ``obj`` (without STOP) to ``parts``.

    Containers are walked with an explicit stack of generators, one per open container;
    each generator yields the container's items and appends the bytes that go between
    and after them, so the depth of the Python stack never depends on the value.

    A :class:`DescriptorRef` still to be sent is written with a placeholder token, and
    the placeholder's index in ``parts`` and the reference are appended to ``places``;
    without ``places`` such a reference is abandoned and refused.
    """
    append = parts.append
    stack: list[Iterator[object]] = []
    push = stack.append
    try:
        while True:
            tp = type(obj)
            if tp is int:
                if _I32_MIN <= obj <= _I32_MAX:
                    append(_pack_op_i32(b"F", obj))
                else:
                    _encode_longint(obj, append)
            elif tp is str:
                try:
                    raw = obj.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise DumpError(
                        f"str is not utf-8 encodable: {exc.reason} at index {exc.start}"
                    ) from None
                n = len(raw)
                if n > _I32_MAX:
                    raise _too_long("str", n)
                append(_pack_op_i32(b"N", n))
                append(raw)
            elif obj is None:
                append(b"L")
            elif tp is bool:
                append(b"R" if obj else b"C")
            elif tp is float:
                append(_pack_op_f64(b"D", obj))
            elif tp is tuple:
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep()
                n = len(obj)
                if n:
                    if n > _I32_MAX:
                        raise _too_long("tuple", n)
                    trailer = _pack_op_i32(b"@", n)
                    done = _scalar_run(obj, append)
                    if done < n:
                        rest = obj[done:] if done else obj
                        push(_items_then(rest, trailer, append))
                    else:
                        append(trailer)
                else:
                    append(_EMPTY_TUPLE)
            elif tp is list:
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep()
                n = len(obj)
                if n:
                    if n > _I32_MAX:
                        raise _too_long("list", n)
                    append(_pack_op_i32(b"K", n))
                    done = _scalar_list_items(obj, n, append)
                    if done < n:
                        push(_list_items(obj, done, n, append))
                else:
                    append(_EMPTY_LIST)
            elif tp is dict:
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep()
                append(b"J")
                if obj:
                    entries = iter(obj.items())
                    rest = _scalar_entries(entries, append)
                    if rest is not None:
                        push(_dict_items(rest, entries, append))
            elif tp is bytes:
                n = len(obj)
                if n > _I32_MAX:
                    raise _too_long("bytes", n)
                append(_pack_op_i32(b"A", n))
                append(obj)
            elif tp is set or tp is frozenset:
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep()
                n = len(obj)
                if n:
                    if n > _I32_MAX:
                        raise _too_long(tp.__name__, n)
                    op = b"O" if tp is set else b"E"
                    push(_items_then(obj, _pack_op_i32(op, n), append))
                else:
                    append(_EMPTY_SET if tp is set else _EMPTY_FROZENSET)
            elif tp is complex:
                append(_pack_op_c128(b"T", obj.real, obj.imag))
            elif isinstance(obj, (bytearray, memoryview)):
                _encode_buffer(obj, append)
            elif tp is ArrayRef:
                _encode_array_ref(obj, append)
            elif tp is DescriptorRef:
                _encode_descriptor_ref(obj, parts, places)
            else:
                if _array_export is not None:
                    ref = _array_export(obj)
                    if ref is not None:
                        obj = ref
                        continue
                obj = _coerce(obj)
                continue
            # The value is written: resume the innermost open container.
            while stack:
                obj = next(stack[-1], _END)
                if obj is not _END:
                    break
                stack.pop()
            else:
                return
    except RuntimeError as exc:
        # A dict or set changed size while being iterated.
        raise DumpError(f"value changed while being serialized: {exc}") from None


def _scalar(obj: Any) -> bytes | None:
    """Return the encoding of a plain scalar of an exact builtin type, else None."""
    tp = type(obj)
    if tp is int:
        if _I32_MIN <= obj <= _I32_MAX:
            return _pack_op_i32(b"F", obj)
    elif tp is str:
        if len(obj) <= _SHORT_STR:
            try:
                raw: bytes = obj.encode("utf-8")
            except UnicodeEncodeError:
                return None
            return _pack_op_i32(b"N", len(raw)) + raw
    elif obj is None:
        return b"L"
    elif tp is float:
        return _pack_op_f64(b"D", obj)
    elif tp is bool:
        return b"R" if obj else b"C"
    return None


def _scalar_run(items: Iterable[object], append: Callable[[bytes], None]) -> int:
    """Write the leading plain scalars of ``items``; return how many were written."""
    done = 0
    for item in items:
        raw = _scalar(item)
        if raw is None:
            break
        append(raw)
        done += 1
    return done


def _scalar_list_items(lst: list[Any], n: int, append: Callable[[bytes], None]) -> int:
    """Write the leading items of a list that are plain scalars, each as index, value,
    ``P``; return how many were written."""
    for i in range(n):
        try:
            item = lst[i]
        except IndexError:
            return i
        tp = type(item)
        if tp is int:
            if not _I32_MIN <= item <= _I32_MAX:
                return i
            append(_pack_int_item(b"F", i, b"F", item, b"P"))
        elif tp is float:
            append(_pack_float_item(b"F", i, b"D", item, b"P"))
        else:
            raw = _scalar(item)
            if raw is None:
                return i
            append(_pack_op_i32(b"F", i))
            append(raw)
            append(b"P")
    return n


def _scalar_entries(
    entries: Iterator[tuple[object, object]], append: Callable[[bytes], None]
) -> tuple[object, object] | None:
    """Write dict entries whose key and value are plain scalars, each as key, value, ``P``.

    Returns the first entry that is not of that form, unwritten, or None when
    ``entries`` is exhausted.
    """
    for entry in entries:
        key, value = entry
        raw_key = _scalar(key)
        if raw_key is None:
            return entry
        raw_value = _scalar(value)
        if raw_value is None:
            return entry
        append(raw_key)
        append(raw_value)
        append(b"P")
    return None


def _list_items(
    lst: list[object], start: int, n: int, append: Callable[[bytes], None]
) -> Iterator[object]:
    """Yield the items ``start`` to ``n - 1`` of a list, writing index before, ``P`` after."""
    for i in range(start, n):
        try:
            item = lst[i]
        except IndexError:
            raise DumpError(
                f"list changed size while being serialized: {n} items expected, {i} found"
            ) from None
        append(_pack_op_i32(b"F", i))
        yield item
        append(b"P")


def _dict_items(
    first: tuple[object, object],
    entries: Iterator[tuple[object, object]],
    append: Callable[[bytes], None],
) -> Iterator[object]:
    """Yield the key and value of ``first`` and of each further entry, writing ``P`` after."""
    key, value = first
    yield key
    yield value
    append(b"P")
    for key, value in entries:
        yield key
        yield value
        append(b"P")


def _items_then(
    items: Iterable[object], trailer: bytes, append: Callable[[bytes], None]
) -> Iterator[object]:
    """Yield ``items``, then write ``trailer``."""
    yield from items
    append(trailer)


def _encode_buffer(obj: bytearray | memoryview, append: Callable[[Any], None]) -> None:
    """Write a bytearray or memoryview as BYTES, copying it only when it is not contiguous.

    The view stays in ``parts`` until they are joined; while it exists, a bytearray
    cannot be resized, so the length written stays true.
    """
    view = memoryview(obj)
    n = view.nbytes
    if n > _I32_MAX:
        raise _too_long(_type_name(type(obj)), n)
    append(_pack_op_i32(b"A", n))
    if view.c_contiguous:
        append(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    else:
        append(view.tobytes())


def _encode_array_ref(ref: ArrayRef, append: Callable[[Any], None]) -> None:
    try:
        raw = ref.name.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise DumpError(f"array reference with a bad name: {ref.name!r}") from None
    if not 0 < len(raw) <= MAX_ARRAY_NAME:
        raise DumpError(f"array name of {len(raw)} bytes, expected 1 to {MAX_ARRAY_NAME}")
    if ref.access not in _ACCESS_NAMES or not 0 <= ref.generation < 1 << 64:
        raise DumpError(f"bad array reference {ref!r}")
    append(_pack_op_i32(b"U", len(raw)))
    append(raw)
    append(_ARRAY_TAIL.pack(ref.generation, ref.access))


def _encode_descriptor_ref(
    ref: DescriptorRef, parts: list[Any], places: list[tuple[int, DescriptorRef]] | None
) -> None:
    token = ref.token
    if token is None:
        # A descriptor to send: listed first, so that whatever fails from here on, the
        # caller abandons it.
        if places is None:
            if ref.outgoing is not None:
                ref.outgoing.abandon()
            raise DumpError(
                f"array {ref.name} lives in an anonymous segment: it can only be sent "
                "as a channel item (channel.send), which passes its descriptor"
            )
        places.append((len(parts) + 2, ref))
    try:
        raw = ref.name.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise DumpError(f"array reference with a bad name: {ref.name!r}") from None
    if not 0 < len(raw) <= MAX_ARRAY_NAME:
        raise DumpError(f"array name of {len(raw)} bytes, expected 1 to {MAX_ARRAY_NAME}")
    offset, generation = ref.offset, ref.generation
    if (
        ref.access not in _ACCESS_NAMES
        or not 0 <= generation < 1 << 64
        or not 0 <= offset < 1 << 64
        or offset % _PAGE
        or not (token is None or 0 <= token < 1 << 64)
    ):
        raise DumpError(f"bad array reference {ref!r}")
    parts.append(_pack_op_i32(b"V", len(raw)))
    parts.append(raw)
    if token is None:
        # The token's place (parts index recorded above), then the rest.
        parts.append(_TOKEN.pack(0))
        parts.append(_DESC_TAIL.pack(0, offset, generation, ref.access)[8:])
    else:
        parts.append(_DESC_TAIL.pack(token, offset, generation, ref.access))


def _encode_longint(i: int, append: Callable[[bytes], None]) -> None:
    """Write an int as LONGINT: ``H``, the length, the decimal digits."""
    try:
        digits = str(i).encode("ascii")
    except ValueError:
        # CPython refuses to convert ints past its digit limit.
        raise DumpError(
            f"int of {i.bit_length()} bits has more than {MAX_INT_DIGITS} decimal digits"
        ) from None
    ndigits = len(digits) - (digits[0] == 45)  # 45 is "-"
    if ndigits > MAX_INT_DIGITS:
        raise DumpError(f"int of {ndigits} decimal digits, at most {MAX_INT_DIGITS} allowed")
    append(_pack_op_i32(b"H", len(digits)))
    append(digits)


def _coerce(obj: Any) -> object:
    """Return the value of a builtin type that ``obj`` is written as.

    Raises
    ------
    DumpError
        No builtin type fits ``obj``.
    """
    tp = type(obj)
    try:
        if isinstance(obj, int):
            value: object = int.__int__(obj)
        elif isinstance(obj, float):
            value = float.__float__(obj)
        elif isinstance(obj, str):
            value = str.__str__(obj)
        elif isinstance(obj, bytes):
            value = bytes(memoryview(obj))
        elif isinstance(obj, tuple):
            value = tuple(obj)
        elif isinstance(obj, list):
            value = list(obj)
        elif isinstance(obj, dict):
            value = dict(obj)
        elif isinstance(obj, set):
            value = set(obj)
        elif isinstance(obj, frozenset):
            value = frozenset(obj)
        elif isinstance(obj, complex):
            value = complex(complex.real.__get__(obj), complex.imag.__get__(obj))
        elif tp.__module__ == "numpy" and tp.__name__ in ("bool_", "bool"):
            value = bool(obj)
        elif hasattr(tp, "__index__"):
            import operator

            value = int(operator.index(obj))
        else:
            import numbers

            if isinstance(obj, numbers.Real):
                value = float(obj)
            elif isinstance(obj, numbers.Complex):
                value = complex(obj)
            else:
                raise DumpError(f"can't serialize a value of type {_type_name(tp)}")
    except DumpError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise DumpError(f"can't serialize a value of type {_type_name(tp)}: {exc}") from None
    if type(value) not in _EXACT_TYPES:
        raise DumpError(
            f"can't serialize a value of type {_type_name(tp)}: "
            f"it converts to {_type_name(type(value))}"
        )
    return value


def _type_name(tp: type) -> str:
    module = tp.__module__
    if module == "builtins":
        return tp.__qualname__
    return f"{module}.{tp.__qualname__}"


def _too_long(what: str, n: int) -> DumpError:
    return DumpError(f"{what} of length {n} exceeds the limit of {_I32_MAX}")


def _too_deep() -> DumpError:
    return DumpError(f"containers nested deeper than {MAX_DEPTH} levels")


# ---------------------------------------------------------------------------------------
# Decoding


def loads(
    data: bytes | bytearray | memoryview,
    py2str_as_py3str: bool = False,
    py3str_as_py2str: bool = False,
) -> Any:
    """Deserialize the public form of either format version, as ``execnet.loads`` does.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The version byte ``0x01`` or ``0x02``, one value, STOP, and nothing after it.
    py2str_as_py3str : bool
        Load ``M`` (PY2STRING, a Python 2 ``str``) as text decoded from latin-1 instead
        of bytes.
    py3str_as_py2str : bool
        Load ``N`` (PY3STRING, a Python 3 ``str``) as its raw UTF-8 bytes instead of
        text, as execnet 2.0 and later do (execnet 1.9 ignores this on Python 3).

    Returns
    -------
    object
        The value. ``S`` (UNICODE) always loads as str, ``A`` (BYTES) as bytes. Array
        references load as :class:`ArrayRef`, never as mapped arrays.

    Raises
    ------
    LoadError
        The input is not exactly one well-formed value.
    TypeError
        ``data`` does not support the buffer protocol.
    """
    buf = data if type(data) is bytes else _as_buffer(data)
    if not len(buf):
        raise LoadError("empty input, expected the version byte 0x01 or 0x02")
    if buf[0] != 2 and buf[0] != 1:
        raise LoadError(f"dump format version {buf[0]:#04x} at offset 0, expected 0x01 or 0x02")
    return _decode(buf, 1, py2str_as_py3str, py3str_as_py2str, False)


def loads_noting_repeats(
    data: bytes | bytearray | memoryview,
) -> tuple[Any, list[tuple[dict[Any, Any], Any]]]:
    """Deserialize as :func:`loads` does (no string option) and tell which dict keys
    repeated: a dict keeps the last value set for a key, and a reader that must refuse
    repeated keys (a segment's metadata, docs/SEGMENT_FORMAT.md §6) cannot see that
    in the value.

    Returns
    -------
    tuple
        The value and a list of ``(dict, key)``, one for each SETITEM that set a key its
        dict already held, in the order they came; each ``dict`` is the object in the
        value.

    Raises
    ------
    LoadError
        As :func:`loads`.
    """
    buf = data if type(data) is bytes else _as_buffer(data)
    if not len(buf):
        raise LoadError("empty input, expected the version byte 0x01 or 0x02")
    if buf[0] != 2 and buf[0] != 1:
        raise LoadError(f"dump format version {buf[0]:#04x} at offset 0, expected 0x01 or 0x02")
    repeats: list[tuple[dict[Any, Any], Any]] = []
    return _decode(buf, 1, False, False, False, repeats), repeats


def loads_payload(data: bytes | bytearray | memoryview) -> Any:
    """Deserialize a channel payload, as execnet's ``loads_internal`` does on a channel
    that was never reconfigured: ``M`` (PY2STRING) loads as str, decoded as latin-1.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        One value and STOP, without a version byte, and nothing after it.

    Returns
    -------
    object
        The value. Array references load as mapped arrays when the array layer has
        installed its import hook (in a worker), else as :class:`ArrayRef`.

    Raises
    ------
    LoadError
        The input is not exactly one well-formed value.
    TypeError
        ``data`` does not support the buffer protocol.
    """
    buf = data if type(data) is bytes else _as_buffer(data)
    n = len(buf)
    # Fast path for the commonest payload, a small int: 'F', 4 bytes, 'Q'.
    if n == 6 and buf[0] == 0x46 and buf[5] == 0x51:
        return _INT4.unpack_from(buf, 1)[0]
    if not n:
        raise LoadError("empty input, expected an opcode")
    # And for a frame of a stream: one array reference, then STOP.
    if buf[n - 1] == 0x51:
        first = buf[0]
        ref: ArrayRef | DescriptorRef
        if first == 0x55 and n >= 15:
            ref, pos = _array_ref_at(buf, 0, n)
        elif first == 0x56 and n >= 31:
            ref, pos = _descriptor_ref_at(buf, 0, n)
        else:
            pos = -1
        if pos == n - 1:
            hook = _array_import
            return hook(ref) if hook is not None else ref
    return _decode(buf, 0, True, False, True)


def loads_payload_with(
    data: bytes | bytearray | memoryview, py2str_as_py3str: bool, py3str_as_py2str: bool
) -> Any:
    """Deserialize a channel payload with execnet's string options, as
    ``loads_internal`` does on a channel reconfigured to them.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        As for :func:`loads_payload`.
    py2str_as_py3str, py3str_as_py2str : bool
        As for :func:`loads`; :func:`loads_payload` is this with ``True, False``, the
        setting of every channel until a reconfigure.

    Returns
    -------
    object
        As for :func:`loads_payload`.

    Raises
    ------
    LoadError
        The input is not exactly one well-formed value.
    TypeError
        ``data`` does not support the buffer protocol.
    """
    if py2str_as_py3str and not py3str_as_py2str:
        return loads_payload(data)
    buf = data if type(data) is bytes else _as_buffer(data)
    if not len(buf):
        raise LoadError("empty input, expected an opcode")
    return _decode(buf, 0, py2str_as_py3str, py3str_as_py2str, True)


def _as_buffer(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """Return a contiguous, one-dimensional byte view of ``data``."""
    view = memoryview(data)
    if not view.c_contiguous:
        return view.tobytes()
    if view.format != "B" or view.ndim != 1:
        return view.cast("B")
    return view


def _decode(
    buf: bytes | bytearray | memoryview,
    pos: int,
    py2str_as_py3str: bool,
    py3str_as_py2str: bool,
    arrays: bool,
    repeats: list[tuple[dict[Any, Any], Any]] | None = None,
) -> Any:
    """Run the stack machine over ``buf`` from ``pos`` to STOP at the end of ``buf``.

    The two string options are execnet's (see :func:`loads`); ``arrays`` lets the array
    layer's import hook map array references (channel payloads only); ``repeats``, when
    given, receives ``(dict, key)`` for every SETITEM that sets a key its dict has.

    Besides the value stack, two maps keyed by ``id()`` hold what is known about
    containers on the stack: ``pending`` maps each list that ``K`` announced and ``P``
    has not yet filled to its announced length (consuming such a list is an error), and
    ``depths`` maps each container nested deeper than 1 to its depth. An entry leaves
    its map when its container is consumed, so every id in them belongs to an object on
    the stack.
    """
    end = len(buf)
    is_bytes = type(buf) is bytes
    stack: list[Any] = []
    pending: dict[int, int] = {}
    depths: dict[int, int] = {}
    push = stack.append
    pop = stack.pop
    unpack_i32 = _unpack_i32
    containers = _CONTAINER_TYPES
    while pos < end:
        op = buf[pos]
        if op == 70 or op == 71:  # F INT, G LONG
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            push(unpack_i32(buf, pos + 1)[0])
            pos += 5
        elif op == 80:  # P SETITEM
            if len(stack) < 3:
                raise LoadError(
                    f"setitem at offset {pos} needs 3 values on the stack, found {len(stack)}"
                )
            value = pop()
            key = pop()
            container = stack[-1]
            if type(value) in containers:
                vid = id(value)
                if vid in pending:
                    raise _unfilled(value, pending[vid], pos)
                depth = depths.pop(vid, 1) + 1
            else:
                depth = 1
            ctype = type(container)
            if ctype is list:
                filled = len(container)
                if key != filled or type(key) is not int:
                    raise LoadError(
                        f"list index {_describe(key)} in setitem at offset {pos}, expected {filled}"
                    )
                cid = id(container)
                expected = pending.get(cid)
                if expected is None:
                    raise LoadError(
                        f"setitem at offset {pos} into a list that already holds all {filled} items"
                    )
                container.append(value)
                if filled + 1 == expected:
                    del pending[cid]
            elif ctype is dict:
                if type(key) in containers:
                    kdepth = depths.pop(id(key), 1) + 1
                    depth = max(depth, kdepth)
                try:
                    if repeats is not None and key in container:
                        repeats.append((container, key))
                    container[key] = value
                except (TypeError, RecursionError):
                    raise LoadError(
                        f"unhashable dict key of type {type(key).__name__} "
                        f"in setitem at offset {pos}"
                    ) from None
            else:
                raise LoadError(
                    f"setitem at offset {pos} into a {ctype.__name__}, expected a list or dict"
                )
            if depth > 1:
                cid = id(container)
                if depth > depths.get(cid, 1):
                    if depth > MAX_DEPTH:
                        raise _nested_too_deep(pos)
                    depths[cid] = depth
            pos += 1
        elif op == 78 or op == 83:  # N PY3STRING, S UNICODE
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            start = pos + 5
            stop = start + n
            if n < 0:
                raise _negative(op, pos, n)
            if stop > end:
                raise _truncated(op, pos, n + 4, end)
            if py3str_as_py2str and op == 78:
                # execnet (2.0 on) keeps the raw bytes, valid UTF-8 or not.
                push(bytes(buf[start:stop]))
                pos = stop
                continue
            try:
                push(str(buf[start:stop], _UTF8))
            except UnicodeDecodeError as exc:
                raise LoadError(
                    f"invalid utf-8 in {_NAMES[op]} at offset {start + exc.start}: {exc.reason}"
                ) from None
            pos = stop
        elif op == 76:  # L NONE
            push(None)
            pos += 1
        elif op == 75:  # K NEWLIST
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            if n < 0:
                raise _negative(op, pos, n)
            pos += 5
            lst: list[Any] = []
            if n:
                # Each item takes at least 7 bytes: index (5), value (1), setitem (1).
                if n > (end - pos) // 7:
                    raise LoadError(
                        f"newlist at offset {pos - 5} announces {n} items, but only "
                        f"{end - pos} bytes follow (each item takes at least 7)"
                    )
                if not py3str_as_py2str:
                    pos = _fill_scalar_items(buf, pos, end, lst, n)
                if len(lst) < n:
                    pending[id(lst)] = n
            push(lst)
        elif op == 64 or op == 79 or op == 69:  # @ BUILDTUPLE, O SET, E FROZENSET
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            if n < 0:
                raise _negative(op, pos, n)
            if n > len(stack):
                raise LoadError(
                    f"{_NAMES[op]} at offset {pos} takes {n} values, the stack holds {len(stack)}"
                )
            if n:
                items = stack[-n:]
                del stack[-n:]
            else:
                items = []
            depth = 1
            for item in items:
                if type(item) in containers:
                    iid = id(item)
                    if iid in pending:
                        raise _unfilled(item, pending[iid], pos)
                    idepth = depths.pop(iid, 1) + 1
                    depth = max(depth, idepth)
            if depth > MAX_DEPTH:
                raise _nested_too_deep(pos)
            if op == 64:
                value = tuple(items)
            else:
                try:
                    value = set(items) if op == 79 else frozenset(items)
                except (TypeError, RecursionError):
                    kinds = sorted({type(item).__name__ for item in items})
                    raise LoadError(
                        f"unhashable member in {_NAMES[op]} at offset {pos} "
                        f"(member types: {', '.join(kinds)})"
                    ) from None
            push(value)
            if depth > 1:
                depths[id(value)] = depth
            pos += 5
        elif op == 74:  # J NEWDICT
            push({})
            pos += 1
        elif op == 82:  # R TRUE
            push(True)
            pos += 1
        elif op == 67:  # C FALSE
            push(False)
            pos += 1
        elif op == 68:  # D FLOAT
            if end - pos < 9:
                raise _truncated(op, pos, 8, end)
            push(_unpack_f64(buf, pos + 1)[0])
            pos += 9
        elif op == 65 or op == 77:  # A BYTES, M PY2STRING
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            start = pos + 5
            stop = start + n
            if n < 0:
                raise _negative(op, pos, n)
            if stop > end:
                raise _truncated(op, pos, n + 4, end)
            raw = buf[start:stop]
            if op == 77 and py2str_as_py3str:
                push(str(raw, "latin-1"))
            else:
                push(raw if is_bytes else bytes(raw))
            pos = stop
        elif op == 81:  # Q STOP
            if len(stack) != 1:
                raise LoadError(
                    f"stop at offset {pos} with {len(stack)} values on the stack, expected 1"
                )
            value = stack[0]
            if pending:
                # A list still being filled is on the stack, so it is this value.
                raise _unfilled(value, pending[id(value)], pos)
            if pos + 1 != end:
                raise LoadError(f"{end - pos - 1} trailing bytes after stop at offset {pos}")
            return value
        elif op == 72 or op == 73:  # H LONGINT, I LONGLONG
            value, pos = _read_longint(buf, pos, end)
            push(value)
        elif op == 84:  # T COMPLEX
            if end - pos < 17:
                raise _truncated(op, pos, 16, end)
            real, imag = _unpack_c128(buf, pos + 1)
            push(complex(real, imag))
            pos += 17
        elif op == 66:  # B CHANNEL
            raise LoadError(f"channel references are not supported (opcode 'B' at offset {pos})")
        elif op == 85 or op == 86:  # U ARRAY, V DESCRIPTOR ARRAY
            ref: ArrayRef | DescriptorRef
            if op == 85:
                ref, pos = _array_ref_at(buf, pos, end)
            else:
                ref, pos = _descriptor_ref_at(buf, pos, end)
            # Only channel payloads (not the versioned form, which also serves segment
            # metadata) may turn references into mapped arrays.
            hook = _array_import if arrays else None
            push(hook(ref) if hook is not None else ref)
        else:
            raise LoadError(f"unknown opcode {bytes((op,))!r} at offset {pos}")
    raise LoadError(
        f"missing stop: input ends at offset {end} with {len(stack)} values on the stack"
    )


def _ref_name_at(
    buf: bytes | bytearray | memoryview, pos: int, end: int, op: int, tail_len: int
) -> tuple[str, int]:
    """The name of the array reference whose opcode ``op`` is at ``pos``, and where the
    ``tail_len`` bytes after the name start (checked to be there)."""
    if end - pos < 5:
        raise _truncated(op, pos, 4, end)
    n = _INT4.unpack_from(buf, pos + 1)[0]
    if not 0 < n <= MAX_ARRAY_NAME:
        raise LoadError(
            f"bad array reference at offset {pos}: name of {n} bytes, "
            f"expected 1 to {MAX_ARRAY_NAME}"
        )
    tail = pos + 5 + n
    if end - tail < tail_len:
        raise _truncated(op, pos, 4 + n + tail_len, end)
    try:
        name = bytes(buf[pos + 5 : tail]).decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError(f"bad array reference at offset {pos}: name is not UTF-8") from None
    return name, tail


def _check_access(access: int, pos: int) -> None:
    if access not in _ACCESS_NAMES:
        raise LoadError(
            f"bad array reference at offset {pos}: access byte {access}, expected 0, 1 or 2"
        )


def _array_ref_at(
    buf: bytes | bytearray | memoryview, pos: int, end: int
) -> tuple[ArrayRef, int]:
    """The array reference whose ``U`` opcode is at ``pos``, and where it ends."""
    name, tail = _ref_name_at(buf, pos, end, 85, _ARRAY_TAIL.size)
    generation, access = _ARRAY_TAIL.unpack_from(buf, tail)
    _check_access(access, pos)
    return ArrayRef(name, generation, access), tail + _ARRAY_TAIL.size


def _descriptor_ref_at(
    buf: bytes | bytearray | memoryview, pos: int, end: int
) -> tuple[DescriptorRef, int]:
    """The array reference whose ``V`` opcode is at ``pos``, and where it ends."""
    name, tail = _ref_name_at(buf, pos, end, 86, _DESC_TAIL.size)
    token, offset, generation, access = _DESC_TAIL.unpack_from(buf, tail)
    if offset % _PAGE:
        raise LoadError(
            f"bad array reference at offset {pos}: segment offset {offset} is not a "
            f"multiple of {_PAGE}"
        )
    _check_access(access, pos)
    return DescriptorRef(name, token, offset, generation, access), tail + _DESC_TAIL.size


def _fill_scalar_items(
    buf: bytes | bytearray | memoryview, pos: int, end: int, lst: list[Any], n: int
) -> int:
    """Read the leading items of a new list that are plain scalars; return where they end.

    Appends to ``lst`` each item at ``pos`` of the form ``F index``, a None, bool, INT,
    FLOAT or PY3STRING value, ``P`` (the form the encoder writes) while the index is
    the next one and at most ``n`` items are filled. It stops without consuming
    anything at the first item of any other form, malformed ones included, which the
    general loop then reads.
    """
    append = lst.append
    unpack_i32 = _unpack_i32
    filled = 0
    while filled < n and end - pos >= 7:
        if buf[pos] != 70 or unpack_i32(buf, pos + 1)[0] != filled:
            break
        op = buf[pos + 5]
        if op == 70:  # F INT
            stop = pos + 10
            if stop >= end or buf[stop] != 80:
                break
            append(unpack_i32(buf, pos + 6)[0])
        elif op == 78:  # N PY3STRING
            if end - pos < 11:
                break
            length = unpack_i32(buf, pos + 6)[0]
            stop = pos + 10 + length
            if length < 0 or stop >= end or buf[stop] != 80:
                break
            try:
                append(str(buf[pos + 10 : stop], _UTF8))
            except UnicodeDecodeError:
                break
        elif op == 76 or op == 82 or op == 67:  # L NONE, R TRUE, C FALSE
            stop = pos + 6
            if buf[stop] != 80:
                break
            append(None if op == 76 else op == 82)
        elif op == 68:  # D FLOAT
            stop = pos + 14
            if stop >= end or buf[stop] != 80:
                break
            append(_unpack_f64(buf, pos + 6)[0])
        else:
            break
        filled += 1
        pos = stop + 1
    return pos


def _read_longint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Read the LONGINT at ``pos``; return its value and the offset after it."""
    op = buf[pos]
    if end - pos < 5:
        raise _truncated(op, pos, 4, end)
    n = _unpack_i32(buf, pos + 1)[0]
    if n < 0:
        raise _negative(op, pos, n)
    if n > MAX_INT_DIGITS + 1:
        raise LoadError(
            f"{_NAMES[op]} at offset {pos} of {n} characters, "
            f"at most {MAX_INT_DIGITS} digits and a sign allowed"
        )
    start = pos + 5
    if start + n > end:
        raise _truncated(op, pos, n + 4, end)
    text = bytes(buf[start : start + n])
    digits = text[1:] if text[:1] in (b"-", b"+") else text
    # bytes.isdigit() accepts ASCII digits only; int() alone would also take "_" and spaces.
    if not digits.isdigit() or len(digits) > MAX_INT_DIGITS:
        raise LoadError(
            f"{_NAMES[op]} at offset {pos} is {_preview(text)}, expected ascii decimal digits "
            f"with an optional sign, at most {MAX_INT_DIGITS} digits"
        )
    try:
        return int(text), start + n
    except ValueError as exc:
        # The interpreter's own digit limit may be lower than MAX_INT_DIGITS.
        raise LoadError(f"{_NAMES[op]} at offset {pos}: {exc}") from None


def _preview(raw: bytes) -> str:
    if len(raw) <= 24:
        return repr(raw)
    return f"{raw[:20]!r}... ({len(raw)} bytes)"


def _describe(value: object) -> str:
    """Name a decoded value in an error message, briefly and without recursing."""
    tp = type(value)
    if tp in _CONTAINER_TYPES:
        return f"of type {tp.__name__}"
    text = repr(value)
    if len(text) > 40:
        text = text[:36] + "..."
    return text


def _truncated(op: int, pos: int, need: int, end: int) -> LoadError:
    return LoadError(
        f"truncated input: {_NAMES[op]} at offset {pos} needs {need} more bytes, "
        f"{end - pos - 1} remain"
    )


def _negative(op: int, pos: int, n: int) -> LoadError:
    return LoadError(f"{_NAMES[op]} at offset {pos} has length {n}, expected at least 0")


def _unfilled(lst: list[Any], expected: int, pos: int) -> LoadError:
    return LoadError(f"list used at offset {pos} holds {len(lst)} of its {expected} items")


def _nested_too_deep(pos: int) -> LoadError:
    return LoadError(f"containers nested deeper than {MAX_DEPTH} levels at offset {pos}")


# ---------------------------------------------------------------------------------------
# Framing


def pack_frame(msgtype: int, channel: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Build a frame: the 9-byte header followed by ``payload``.

    Parameters
    ----------
    msgtype : int
        Message type, -128 to 127.
    channel : int
        Channel id, a signed 32-bit integer.
    payload : bytes, bytearray or memoryview
        At most :data:`MAX_LENGTH` bytes.

    Returns
    -------
    bytes
        Header and payload.

    Raises
    ------
    DumpError
        A field is out of range or the payload is too long.
    """
    if type(payload) is not bytes:
        view = memoryview(payload)
        payload = view if view.c_contiguous else view.tobytes()
    n = payload.nbytes if type(payload) is memoryview else len(payload)
    if n > _I32_MAX:
        raise DumpError(f"frame payload of {n} bytes exceeds the limit of {_I32_MAX}")
    if not -128 <= msgtype <= 127:
        raise DumpError(f"frame message type {msgtype} out of range -128..127")
    if not _I32_MIN <= channel <= _I32_MAX:
        raise DumpError(f"frame channel id {channel} out of range {_I32_MIN}..{_I32_MAX}")
    return HEADER.pack(msgtype, channel, n) + payload


def unpack_header(header: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Parse a frame header.

    Parameters
    ----------
    header : bytes, bytearray or memoryview
        Exactly 9 bytes.

    Returns
    -------
    tuple of int
        Message type, channel id, payload length.

    Raises
    ------
    ProtocolError
        The header is not 9 bytes long or announces a negative payload length.
    """
    size = len(header) if type(header) is bytes else memoryview(header).nbytes
    if size != HEADER.size:
        raise ProtocolError(f"frame header of {size} bytes, expected {HEADER.size}")
    msgtype, channel, n = HEADER.unpack(header)
    if n < 0:
        raise ProtocolError(
            f"frame header for channel {channel} announces payload length {n}, expected at least 0"
        )
    return msgtype, channel, n
