# -*- coding: utf-8 -*-
"""pixgate's worker for old interpreters: CPython 2.7, Jython 2.7, CPython 3.6 to 3.8.

One file, standard library only, run unmodified by every interpreter it supports (and
by current CPython, where its tests run). The host's loader installs it as the module
``pixgate`` on any interpreter that is not CPython 3.9 or newer (docs/ARCHITECTURE.md);
remote code then imports ``pixgate`` as it would with the main helper.

It speaks version 1 of the wire protocol (docs/PROTOCOL.md) as the main helper does:
the handshake, remote executions each on its own thread (or on the main thread), the
channels with execnet's interface, output attributed to channels, remote errors as
``(type, message, traceback)``, cancel, STATUS, RECONFIGURE, FORGET, GATEWAY_TERMINATE
and the exit on EOF. Its value codec is execnet's; on Python 2 it writes ``str`` as
``M`` (PY2STRING), ``unicode`` as ``S`` (UNICODE) and ``long`` as ``G``/``I``, as
execnet 1.9 does there, and reads ``N``/``S`` as ``unicode`` and ``A``/``M`` as ``str``.
Its decoder is hardened as the main helper's is (docs/PROTOCOL.md §5.6).

What differs from the main helper:

- Reading the pipe: one reader thread hands frames to per-channel queues (Jython cannot
  ``select`` on a pipe), so a round trip costs a thread hop on this side.
- Arrays: on Jython, an array reference maps the segment with Java NIO
  (``FileChannel.map``) after validating its header (docs/SEGMENT_FORMAT.md §8) and
  becomes a :class:`SharedArray`, whose typed NIO buffers (``ShortBuffer``,
  ``FloatBuffer``, ...) Java code can use without a copy; :func:`zeros` creates a
  segment that can be moved to the host. Other interpreters refuse references with a
  :class:`LoadError` (giving shared and lent ones back at once).
- SIGTERM: CPython runs the cleanup and exits with 143; Jython's JVM runs it as a
  shutdown hook and exits with 143 itself.
"""

from __future__ import absolute_import, division, print_function

import errno
import os
import re
import struct
import sys
import threading
import time

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

PY3 = sys.version_info[0] >= 3
JYTHON = sys.platform.startswith("java")

if PY3:
    import queue as _queue

    text_type = str
    binary_type = bytes
    integer_types = (int,)
    _long = int
    _BuiltinTimeout = TimeoutError  # noqa: F821 - a builtin on Python 3
else:
    import Queue as _queue  # noqa: N813

    text_type = unicode  # noqa: F821 - Python 2
    binary_type = str
    integer_types = (int, long)  # noqa: F821 - Python 2
    _long = long  # noqa: F821 - Python 2
    _BuiltinTimeout = OSError

if JYTHON:
    from java.lang import Throwable as _Throwable

    _CATCH = (BaseException, _Throwable)
else:
    _CATCH = BaseException


def _implementation():
    if JYTHON:
        return "jython"
    impl = getattr(sys, "implementation", None)
    if impl is not None:
        return impl.name
    import platform

    return platform.python_implementation().lower()


IMPLEMENTATION = _implementation()

# ---------------------------------------------------------------------------------------
# Errors: the main helper's classes, each also derived from the matching builtin.


class Error(Exception):
    """Base class of every pixgate error."""


class DataFormatError(Error, ValueError):
    """A value could not be converted to or from the wire format."""


class DumpError(DataFormatError):
    """A value could not be serialized."""


class LoadError(DataFormatError):
    """Bytes could not be deserialized into a value."""


class ProtocolError(Error, EnvironmentError):
    """The peer broke the wire protocol."""


class RemoteError(Error):
    """The other side closed the channel with an error."""

    def __init__(self, formatted):
        Error.__init__(self, formatted)
        self.formatted = formatted

    def __str__(self):
        return _native(self.formatted)


class TimeoutError(Error, _BuiltinTimeout):  # noqa: A001 - the main helper's name
    """A blocking channel operation did not complete in time."""


class Cancelled(Error):
    """The host cancelled the remote execution running on this channel."""


class ChannelClosed(Error, EOFError):
    """The channel is closed: no more items will arrive, or it can no longer send."""


class ReleaseError(Error, ValueError):
    """An array cannot be released: it is not one the host shared or lent to this
    process, or it was released or sent back already."""


class SegmentError(Error, EnvironmentError):
    """A shared-memory segment could not be created, opened or used; ``problem`` names
    the failed check (as in the main helper: ``"not found"``, ``"mode"``, ...)."""

    def __init__(self, message, problem, segment=None, errno=None):
        Error.__init__(self, message)
        self.problem = problem
        self.segment = segment
        self.errno = errno

    def __str__(self):
        return _native(self.args[0])


class HeaderError(SegmentError, ValueError):
    """A segment's header failed validation."""


class DTypeError(Error, TypeError):
    """A dtype that shared arrays cannot hold."""


class LayoutError(Error, ValueError):
    """A shape, strides or metadata that no segment can describe."""


def _retrying(call, *args):
    """``call(*args)``, again while a signal interrupts it: Python 2 raises EINTR where
    Python 3 retries, and a signal may land on any thread (a SIGTERM meant for the main
    thread's handler must not end the reader with an error)."""
    while True:
        try:
            return call(*args)
        except EnvironmentError as exc:
            if getattr(exc, "errno", None) != errno.EINTR:
                raise


def _native(text):
    """``text`` as the interpreter's native ``str`` (UTF-8 bytes on Python 2)."""
    if not PY3 and isinstance(text, text_type):
        return text.encode("utf-8")
    return text


def _text(obj):
    """``obj`` as unicode text, never raising."""
    if isinstance(obj, text_type):
        return obj
    if isinstance(obj, binary_type):
        return obj.decode("utf-8", "replace")
    try:
        return text_type(obj)
    except _CATCH:
        pass
    try:
        return str(obj).decode("utf-8", "replace")
    except _CATCH:
        try:
            return text_type(repr(obj))
        except _CATCH:
            return u"<unprintable %s>" % type(obj).__name__


# ---------------------------------------------------------------------------------------
# The value codec (docs/PROTOCOL.md §5)

DUMPFORMAT_VERSION = b"\x02"
MAX_INT_DIGITS = 4300
MAX_DEPTH = 512
MAX_LENGTH = 0x7FFFFFFF
MAX_ARRAY_NAME = 255
SHARED, LENT, MOVED = 0, 1, 2
_ACCESS_NAMES = {SHARED: "shared", LENT: "lent", MOVED: "moved"}

HEADER = struct.Struct("!bii")
_INT4 = struct.Struct("!i")
_F64 = struct.Struct("!d")
_C128 = struct.Struct("!dd")
_ARRAY_TAIL = struct.Struct("!QB")
_I32_MIN = -0x80000000
_I32_MAX = 0x7FFFFFFF

# UTF-8 of a surrogate code point: Python 2's codec writes and reads these, the wire
# does not allow them.
_SURROGATE_UTF8 = re.compile(b"\xed[\xa0-\xbf]")
_NAMES = dict(
    zip(
        bytearray(b"@ABCDEFGHIJKLMNOPQRSTU"),
        (
            "buildtuple", "bytes", "channel", "false", "float", "frozenset", "int", "long",
            "longint", "longlong", "newdict", "newlist", "none", "py2string", "py3string",
            "set", "setitem", "stop", "true", "unicode", "complex", "array",
        ),
    )
)


class ArrayRef(object):
    """A reference to an array in a named shared-memory segment, as it travels."""

    __slots__ = ("name", "generation", "access")
    __hash__ = None

    def __init__(self, name, generation, access):
        self.name = name
        self.generation = generation
        self.access = access

    def __eq__(self, other):
        return (
            type(other) is ArrayRef
            and self.name == other.name
            and self.generation == other.generation
            and self.access == other.access
        )

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "ArrayRef(%r, generation=%d, %s)" % (
            self.name,
            self.generation,
            _ACCESS_NAMES.get(self.access, str(self.access)),
        )


# The array layer's hooks: export(obj) -> ArrayRef or None for an object the codec does
# not know; import_(ref) -> object for a reference in a channel payload.
_array_export = None
_array_import = None

_END = object()


def dumps(obj):
    """Serialize a value in the public form (version byte, value, STOP)."""
    parts = [DUMPFORMAT_VERSION]
    _encode(obj, parts)
    parts.append(b"Q")
    return b"".join(parts)


def dumps_payload(obj):
    """Serialize a value as a channel payload (value, STOP)."""
    parts = []
    _encode(obj, parts)
    parts.append(b"Q")
    return b"".join(parts)


def _utf8(text):
    try:
        raw = text.encode("utf-8")
    except UnicodeError as exc:
        raise DumpError("str is not utf-8 encodable: %s" % exc)
    if not PY3 and _SURROGATE_UTF8.search(raw):
        raise DumpError("str is not utf-8 encodable: it holds a lone surrogate")
    return raw


def _op_i32(op, n):
    return op + _INT4.pack(n)


def _check_len(what, n):
    if n > _I32_MAX:
        raise DumpError("%s of length %d exceeds the limit of %d" % (what, n, _I32_MAX))


def _encode(obj, parts, canonical=False):
    """Append the encoding of ``obj`` (without STOP) to ``parts``, without recursion:
    one generator per open container yields its items and writes what goes between.

    ``canonical`` (segment metadata, which both implementations must write alike):
    Python 2's ``unicode`` and ``long`` are written as on Python 3, and its ``str`` as
    text when it is UTF-8.
    """
    append = parts.append
    py3 = PY3 or canonical
    stack = []
    try:
        while True:
            tp = type(obj)
            if obj is None:
                append(b"L")
            elif tp is bool:
                append(b"R" if obj else b"C")
            elif tp is int or tp is _long:
                small, big = (b"G", b"I") if (tp is _long and not py3) else (b"F", b"H")
                if _I32_MIN <= obj <= _I32_MAX:
                    append(small + _INT4.pack(obj))
                else:
                    try:
                        digits = str(obj).rstrip("L").encode("ascii")
                    except ValueError:  # past CPython's own digit limit
                        raise DumpError("int of more than %d decimal digits" % MAX_INT_DIGITS)
                    if len(digits) - (digits[:1] == b"-") > MAX_INT_DIGITS:
                        raise DumpError(
                            "int of %d decimal digits, at most %d allowed"
                            % (len(digits), MAX_INT_DIGITS)
                        )
                    append(_op_i32(big, len(digits)))
                    append(digits)
            elif tp is float:
                append(b"D" + _F64.pack(obj))
            elif tp is text_type:
                raw = _utf8(obj)
                _check_len("str", len(raw))
                append(_op_i32(b"N" if py3 else b"S", len(raw)))
                append(raw)
            elif tp is binary_type and canonical and not PY3:
                try:
                    obj = obj.decode("utf-8")
                except UnicodeError:
                    obj = bytearray(obj)
                continue
            elif tp is binary_type:
                _check_len("bytes", len(obj))
                append(_op_i32(b"A" if PY3 else b"M", len(obj)))
                append(obj)
            elif tp is tuple or tp is list or tp is dict or tp is set or tp is frozenset:
                if len(stack) >= MAX_DEPTH:
                    raise DumpError("containers nested deeper than %d levels" % MAX_DEPTH)
                n = len(obj)
                _check_len(tp.__name__, n)
                if tp is list:
                    append(_op_i32(b"K", n))
                    stack.append(_list_items(obj, n, append))
                elif tp is dict:
                    append(b"J")
                    stack.append(_dict_items(obj, append))
                else:
                    op = b"@" if tp is tuple else b"O" if tp is set else b"E"
                    stack.append(_items_then(list(obj), _op_i32(op, n), append))
            elif tp is complex:
                append(b"T" + _C128.pack(obj.real, obj.imag))
            elif tp is bytearray or tp is memoryview or (not PY3 and tp is buffer):  # noqa: F821
                raw = bytes(obj) if PY3 else str(obj) if tp is not memoryview else obj.tobytes()
                _check_len("bytes", len(raw))
                append(_op_i32(b"A", len(raw)))
                append(raw)
            elif tp is ArrayRef:
                _encode_array_ref(obj, append)
            else:
                ref = _array_export(obj) if _array_export is not None else None
                obj = ref if ref is not None else _coerce(obj)
                continue
            while stack:
                obj = next(stack[-1], _END)
                if obj is not _END:
                    break
                stack.pop()
            else:
                return
    except RuntimeError as exc:
        raise DumpError("value changed while being serialized: %s" % exc)


def _list_items(lst, n, append):
    for i in range(n):
        try:
            item = lst[i]
        except IndexError:
            raise DumpError("list changed size while being serialized")
        append(_op_i32(b"F", i))
        yield item
        append(b"P")


def _dict_items(d, append):
    for key, value in list(d.items()):
        yield key
        yield value
        append(b"P")


def _items_then(items, trailer, append):
    for item in items:
        yield item
    append(trailer)


def _encode_array_ref(ref, append):
    try:
        raw = _utf8(_text(ref.name))
    except DumpError:
        raise DumpError("array reference with a bad name: %r" % (ref.name,))
    if not 0 < len(raw) <= MAX_ARRAY_NAME:
        raise DumpError("array name of %d bytes, expected 1 to %d" % (len(raw), MAX_ARRAY_NAME))
    if ref.access not in _ACCESS_NAMES or not 0 <= ref.generation < 1 << 64:
        raise DumpError("bad array reference %r" % (ref,))
    append(_op_i32(b"U", len(raw)))
    append(raw)
    append(_ARRAY_TAIL.pack(ref.generation, ref.access))


def _coerce(obj):
    """The builtin value ``obj`` is written as: subclasses as their base type, other
    numbers by ``__index__``, ``numbers.Real``, ``numbers.Complex``."""
    tp = type(obj)
    for base in (bool, int, _long, float, complex, text_type, binary_type, tuple, list,
                 dict, set, frozenset):
        if isinstance(obj, base):
            if base is bool:
                return bool(obj)
            if base in (tuple, list, dict, set, frozenset):
                return base(obj)
            if base is complex:
                return complex(obj.real, obj.imag)
            return base.__new__(base, obj) if base not in (int, _long) else int(obj)
    try:
        if hasattr(tp, "__index__"):
            import operator

            return int(operator.index(obj))
        import numbers

        if isinstance(obj, numbers.Real):
            return float(obj)
        if isinstance(obj, numbers.Complex):
            return complex(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DumpError("can't serialize a value of type %s: %s" % (_type_name(tp), exc))
    raise DumpError("can't serialize a value of type %s" % _type_name(tp))


def _type_name(tp):
    module = getattr(tp, "__module__", None)
    if module in (None, "builtins", "__builtin__", "exceptions"):
        return tp.__name__
    return "%s.%s" % (module, tp.__name__)


def loads(data):
    """Deserialize the public form, as ``execnet.loads`` does with its defaults."""
    buf = bytearray(data)
    if not buf:
        raise LoadError("empty input, expected the version byte 0x02")
    if buf[0] != 2:
        raise LoadError("dump format version %#04x at offset 0, expected 0x02" % buf[0])
    return _decode(buf, 1, True, None)


def loads_payload(data, imported=None):
    """Deserialize a channel payload; array references go through the array layer
    (the objects made of them are also appended to ``imported`` when given)."""
    buf = bytearray(data)
    if not buf:
        raise LoadError("empty input, expected an opcode")
    if _array_import is None or 0x55 not in buf:
        return _decode(buf, 0, False, None)
    refused = []
    if imported is None:
        imported = []

    def on_ref(ref):
        try:
            obj = _array_import(ref, refused)
        except _CATCH as exc:
            if ref.access != MOVED:
                _send_release(ref.name, ref.generation, ref.access)
            raise LoadError(_text(exc.getMessage() if JYTHON and isinstance(exc, _Throwable) else exc))
        imported.append(obj)
        return obj

    try:
        value = _decode(buf, 0, False, on_ref)
    except LoadError:
        _drop_imported(imported)
        raise
    if refused:
        _drop_imported(imported)
        raise LoadError(refused[0])
    return value


def _drop_arrays(value):
    """Release every SharedArray in ``value``, at any depth (no recursion)."""
    todo = [value]
    while todo:
        v = todo.pop()
        tp = type(v)
        if tp in (list, tuple, set, frozenset):
            todo.extend(v)
        elif tp is dict:
            todo.extend(v.keys())
            todo.extend(v.values())
        elif tp is SharedArray:
            v._drop()


def _drop_imported(objs):
    for obj in objs:
        drop = getattr(obj, "_drop", None)
        if drop is not None:
            drop()


def _truncated(op, pos, need, end):
    return LoadError(
        "truncated input: %s at offset %d needs %d more bytes, %d remain"
        % (_NAMES.get(op, "?"), pos, need, end - pos - 1)
    )


def _negative(op, pos, n):
    return LoadError("%s at offset %d has length %d, expected at least 0" % (_NAMES[op], pos, n))


def _unfilled(lst, expected, pos):
    return LoadError("list used at offset %d holds %d of its %d items" % (pos, len(lst), expected))


def _too_deep(pos):
    return LoadError("containers nested deeper than %d levels at offset %d" % (MAX_DEPTH, pos))


_CONTAINERS = (list, dict, tuple, set, frozenset)


def _decode(buf, pos, versioned, on_ref, repeats=None):
    """Run the stack machine over the bytearray ``buf`` from ``pos`` to its STOP.

    ``pending`` maps the id of each list that ``K`` announced and ``P`` has not filled
    to its announced length; ``depths`` the id of each container nested deeper than 1
    to its depth. Entries leave with their container, so every id belongs to an object
    on the stack. ``on_ref`` turns array references into objects (channel payloads);
    None leaves them as :class:`ArrayRef`. ``repeats``, when given, receives ``(dict,
    key)`` for every SETITEM that sets a key its dict has.
    """
    end = len(buf)
    stack = []
    pending = {}
    depths = {}
    push = stack.append
    pop = stack.pop
    unpack_i32 = _INT4.unpack_from
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
                    "setitem at offset %d needs 3 values on the stack, found %d"
                    % (pos, len(stack))
                )
            value = pop()
            key = pop()
            container = stack[-1]
            depth = 1
            if type(value) in _CONTAINERS:
                vid = id(value)
                if vid in pending:
                    raise _unfilled(value, pending[vid], pos)
                depth = depths.pop(vid, 1) + 1
            ctype = type(container)
            if ctype is list:
                filled = len(container)
                if type(key) not in integer_types or key != filled:
                    raise LoadError(
                        "list index %s in setitem at offset %d, expected %d"
                        % (_describe(key), pos, filled)
                    )
                cid = id(container)
                expected = pending.get(cid)
                if expected is None:
                    raise LoadError(
                        "setitem at offset %d into a list that already holds all %d items"
                        % (pos, filled)
                    )
                container.append(value)
                if filled + 1 == expected:
                    del pending[cid]
            elif ctype is dict:
                if type(key) in _CONTAINERS:
                    depth = max(depth, depths.pop(id(key), 1) + 1)
                try:
                    if repeats is not None and key in container:
                        repeats.append((container, key))
                    container[key] = value
                except (TypeError, RuntimeError):
                    raise LoadError(
                        "unhashable dict key of type %s in setitem at offset %d"
                        % (type(key).__name__, pos)
                    )
            else:
                raise LoadError(
                    "setitem at offset %d into a %s, expected a list or dict"
                    % (pos, ctype.__name__)
                )
            if depth > 1:
                cid = id(container)
                if depth > depths.get(cid, 1):
                    if depth > MAX_DEPTH:
                        raise _too_deep(pos)
                    depths[cid] = depth
            pos += 1
        elif op in (78, 83, 65, 77):  # N PY3STRING, S UNICODE, A BYTES, M PY2STRING
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            if n < 0:
                raise _negative(op, pos, n)
            start = pos + 5
            stop = start + n
            if stop > end:
                raise _truncated(op, pos, n + 4, end)
            raw = bytes(buf[start:stop])
            if op == 78 or op == 83:
                push(_decode_utf8(raw, op, start))
            elif op == 77 and PY3 and not versioned:
                push(raw.decode("latin-1"))
            else:
                push(raw)
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
            # Each item takes at least 7 bytes: index (5), value (1), setitem (1).
            if n > (end - pos) // 7:
                raise LoadError(
                    "newlist at offset %d announces %d items, but only %d bytes follow "
                    "(each item takes at least 7)" % (pos - 5, n, end - pos)
                )
            lst = []
            if n:
                pending[id(lst)] = n
            push(lst)
        elif op in (64, 79, 69):  # @ BUILDTUPLE, O SET, E FROZENSET
            if end - pos < 5:
                raise _truncated(op, pos, 4, end)
            n = unpack_i32(buf, pos + 1)[0]
            if n < 0:
                raise _negative(op, pos, n)
            if n > len(stack):
                raise LoadError(
                    "%s at offset %d takes %d values, the stack holds %d"
                    % (_NAMES[op], pos, n, len(stack))
                )
            items = stack[len(stack) - n:] if n else []
            if n:
                del stack[len(stack) - n:]
            depth = 1
            for item in items:
                if type(item) in _CONTAINERS:
                    iid = id(item)
                    if iid in pending:
                        raise _unfilled(item, pending[iid], pos)
                    depth = max(depth, depths.pop(iid, 1) + 1)
            if depth > MAX_DEPTH:
                raise _too_deep(pos)
            if op == 64:
                value = tuple(items)
            else:
                try:
                    value = set(items) if op == 79 else frozenset(items)
                except (TypeError, RuntimeError):
                    raise LoadError(
                        "unhashable member in %s at offset %d (member types: %s)"
                        % (_NAMES[op], pos, ", ".join(sorted(set(type(i).__name__ for i in items))))
                    )
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
            push(_F64.unpack_from(buf, pos + 1)[0])
            pos += 9
        elif op == 81:  # Q STOP
            if len(stack) != 1:
                raise LoadError(
                    "stop at offset %d with %d values on the stack, expected 1"
                    % (pos, len(stack))
                )
            value = stack[0]
            if pending:
                raise _unfilled(value, pending[id(value)], pos)
            if pos + 1 != end:
                raise LoadError("%d trailing bytes after stop at offset %d" % (end - pos - 1, pos))
            return value
        elif op == 72 or op == 73:  # H LONGINT, I LONGLONG
            value, pos = _read_longint(buf, pos, end)
            push(value)
        elif op == 84:  # T COMPLEX
            if end - pos < 17:
                raise _truncated(op, pos, 16, end)
            real, imag = _C128.unpack_from(buf, pos + 1)
            push(complex(real, imag))
            pos += 17
        elif op == 66:  # B CHANNEL
            raise LoadError("channel references are not supported (opcode 'B' at offset %d)" % pos)
        elif op == 85:  # U ARRAY
            ref, pos = _array_ref_at(buf, pos, end)
            push(on_ref(ref) if on_ref is not None else ref)
        else:
            raise LoadError("unknown opcode %r at offset %d" % (bytes(bytearray([op])), pos))
    raise LoadError(
        "missing stop: input ends at offset %d with %d values on the stack" % (end, len(stack))
    )


def _decode_utf8(raw, op, start):
    if not PY3:
        m = _SURROGATE_UTF8.search(raw)
        if m is not None:
            raise LoadError(
                "invalid utf-8 in %s at offset %d: encoded surrogate" % (_NAMES[op], start + m.start())
            )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(
            "invalid utf-8 in %s at offset %d: %s" % (_NAMES[op], start + exc.start, exc.reason)
        )


def _read_longint(buf, pos, end):
    op = buf[pos]
    if end - pos < 5:
        raise _truncated(op, pos, 4, end)
    n = _INT4.unpack_from(buf, pos + 1)[0]
    if n < 0:
        raise _negative(op, pos, n)
    if n > MAX_INT_DIGITS + 1:
        raise LoadError(
            "%s at offset %d of %d characters, at most %d digits and a sign allowed"
            % (_NAMES[op], pos, n, MAX_INT_DIGITS)
        )
    start = pos + 5
    if start + n > end:
        raise _truncated(op, pos, n + 4, end)
    text = bytes(buf[start:start + n])
    digits = text[1:] if text[:1] in (b"-", b"+") else text
    if not digits or not _DIGITS.match(digits) or len(digits) > MAX_INT_DIGITS:
        raise LoadError(
            "%s at offset %d is %r, expected ascii decimal digits with an optional sign, "
            "at most %d digits" % (_NAMES[op], pos, text[:24], MAX_INT_DIGITS)
        )
    return int(text), start + n


_DIGITS = re.compile(b"[0-9]+\\Z")


def _array_ref_at(buf, pos, end):
    if end - pos < 5:
        raise _truncated(85, pos, 4, end)
    n = _INT4.unpack_from(buf, pos + 1)[0]
    if not 0 < n <= MAX_ARRAY_NAME:
        raise LoadError(
            "bad array reference at offset %d: name of %d bytes, expected 1 to %d"
            % (pos, n, MAX_ARRAY_NAME)
        )
    if end - pos < 5 + n + 9:
        raise _truncated(85, pos, 4 + n + 9, end)
    try:
        name = bytes(buf[pos + 5:pos + 5 + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError("bad array reference at offset %d: name is not UTF-8" % pos)
    generation, access = _ARRAY_TAIL.unpack_from(buf, pos + 5 + n)
    if access not in _ACCESS_NAMES:
        raise LoadError(
            "bad array reference at offset %d: access byte %d, expected 0, 1 or 2" % (pos, access)
        )
    return ArrayRef(name, generation, access), pos + 5 + n + 9


def _describe(value):
    if type(value) in _CONTAINERS:
        return "of type %s" % type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "..."


# ---------------------------------------------------------------------------------------
# The pipes

STATUS = 0
RECONFIGURE = 1
GATEWAY_TERMINATE = 2
CHANNEL_EXEC = 3
CHANNEL_DATA = 4
CHANNEL_CLOSE = 5
CHANNEL_CLOSE_ERROR = 6
CHANNEL_LAST_MESSAGE = 7
HANDSHAKE = 32
OUTPUT = 33
CANCEL = 34
EXEC_MAIN = 35
RELEASE = 36
FORGET = 37

_DEFAULT_MAX_FRAME = 256 * 1024 * 1024
_CHUNK = 65536


class _Conn(object):
    """The protocol pipes: whole frames written under a lock, frames read by one thread.

    Jython's ``os.read`` and ``os.write`` cannot use a pipe it did not open, so there
    the pipes are read and written through a ``FileInputStream`` and a
    ``FileOutputStream`` on ``/dev/fd/N``, which open the same pipes.
    """

    def __init__(self, rfd, wfd, max_frame):
        self.rfd = rfd
        self.wfd = wfd
        self.max_frame = max_frame
        self._wlock = threading.Lock()
        self._buf = b""
        self._read = os.read
        if JYTHON:
            import jarray
            from java.io import FileInputStream, FileOutputStream

            self._jout = FileOutputStream("/dev/fd/%d" % wfd)
            jin = FileInputStream("/dev/fd/%d" % rfd)
            jbuf = jarray.zeros(_CHUNK, "b")

            def read(fd, n):
                k = jin.read(jbuf, 0, min(n, _CHUNK))
                return jbuf[:k].tostring() if k > 0 else b""

            self._read = read

    def send(self, msgtype, channel, payload=b""):
        data = HEADER.pack(msgtype, channel, len(payload)) + payload
        with self._wlock:
            if JYTHON:
                try:
                    self._jout.write(data)
                except _Throwable as exc:
                    raise EnvironmentError(32, "protocol pipe: %s" % exc)
                return
            view = memoryview(data)
            while len(view):
                n = _retrying(os.write, self.wfd, view)
                view = view[n:]

    def _read_exact(self, n):
        """``n`` bytes, or None on EOF before the first one."""
        parts = []
        have = 0
        if self._buf:
            take = self._buf[:n]
            self._buf = self._buf[n:]
            parts.append(take)
            have = len(take)
        while have < n:
            chunk = _retrying(self._read, self.rfd, max(_CHUNK, min(n - have, 1 << 24)))
            if not chunk:
                if not have:
                    return None
                raise ProtocolError(
                    "protocol pipe ended inside a frame (%d bytes of it received)" % have
                )
            if have + len(chunk) > n:
                self._buf = chunk[n - have:]
                chunk = chunk[:n - have]
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def read_frame(self):
        """``(type, channel, payload, length)``, payload None if oversized; None on EOF."""
        head = self._read_exact(9)
        if head is None:
            return None
        msgtype, channel, length = HEADER.unpack(head)
        if length < 0:
            raise ProtocolError(
                "frame of type %d on channel %d has negative length %d" % (msgtype, channel, length)
            )
        if length > self.max_frame:
            left = length
            while left:
                got = self._read_exact(min(left, _CHUNK))
                if got is None:
                    raise ProtocolError("protocol pipe ended inside an oversized frame")
                left -= len(got)
            return msgtype, channel, None, length
        payload = self._read_exact(length) if length else b""
        if payload is None:
            raise ProtocolError("protocol pipe ended inside a frame (9 bytes of it received)")
        return msgtype, channel, payload, length


# ---------------------------------------------------------------------------------------
# Channels

_tls = threading.local()
_CLOSED = object()
_WAKE = object()


class _Failed(object):
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


class Channel(object):
    """The worker's end of a channel, available to remote code as ``channel``:
    :meth:`send`, :meth:`receive`, iteration, :meth:`close`, :meth:`isclosed`,
    :meth:`waitclose`, :meth:`is_cancelled`, as in the main helper."""

    def __init__(self, gateway, id):
        self.id = id
        self._gateway = gateway
        self._items = _queue.Queue()
        self._remote_closed = threading.Event()
        self._remote_error = None
        self._receive_done = False
        self._local_closed = False
        self._finished = False
        self._cancelled = False
        self._pending = {1: [], 2: []}

    def __repr__(self):
        return "<pixgate Channel id=%d %s>" % (self.id, "closed" if self._local_closed else "open")

    def send(self, item):
        """Send ``item`` to the host (raises Cancelled, ChannelClosed, DumpError)."""
        if self._cancelled:
            self._check_cancel()
        if self._local_closed:
            raise ChannelClosed("channel %d is closed for sending" % self.id)
        payload = dumps_payload(item)
        limit = self._gateway.conn.max_frame
        if len(payload) > limit:
            raise DumpError(
                "item of %d bytes exceeds the frame limit of %d bytes" % (len(payload), limit)
            )
        self._flush_output()
        self._gateway.conn.send(CHANNEL_DATA, self.id, payload)

    def receive(self, timeout=None):
        """The next item from the host, waiting up to ``timeout`` seconds (raises
        Cancelled, ChannelClosed, RemoteError, TimeoutError, LoadError)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            if self._cancelled:
                self._check_cancel()
            if self._receive_done:
                self._raise_closed()
            try:
                if deadline is None:
                    item = self._items.get()
                else:
                    left = deadline - time.time()
                    if left <= 0:
                        item = self._items.get_nowait()
                    else:
                        item = self._items.get(True, left)
            except _queue.Empty:
                raise TimeoutError("no item on channel %d within %s s" % (self.id, timeout))
            if item is _WAKE:
                continue
            if item is _CLOSED:
                self._receive_done = True
                self._raise_closed()
            if type(item) is _Failed:
                raise item.error
            return item

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.receive()
        except ChannelClosed:
            raise StopIteration

    next = __next__

    def close(self, error=None):
        """Close the sending side; with ``error``, close with that error text."""
        if self._local_closed:
            return
        self._flush_output()
        if error is None:
            msgtype, payload = CHANNEL_CLOSE, b""
        else:
            text = _fit(_safe_text(_text(error)), self._gateway.conn.max_frame - 64)
            msgtype, payload = CHANNEL_CLOSE_ERROR, dumps_payload(text)
        self._local_closed = True
        self._gateway.conn.send(msgtype, self.id, payload)
        self._gateway.forget_if_done(self)

    def isclosed(self):
        """True when either side closed the channel."""
        return self._local_closed or self._remote_closed.is_set()

    def waitclose(self, timeout=None):
        """Wait until the host closes the channel (raises RemoteError, TimeoutError)."""
        self._remote_closed.wait(timeout)
        if not self._remote_closed.is_set():
            raise TimeoutError("channel %d not closed within %s s" % (self.id, timeout))
        if self._remote_error is not None:
            raise self._remote_error

    def is_cancelled(self):
        """True when the host asked to cancel and Cancelled was not raised yet."""
        return self._cancelled

    def _check_cancel(self):
        if self._cancelled:
            self._cancelled = False
            raise Cancelled("channel %d was cancelled by the host" % self.id)

    def _raise_closed(self):
        if self._remote_error is not None:
            raise self._remote_error
        raise ChannelClosed("channel %d was closed by the host" % self.id)

    def _deliver(self, item):
        self._items.put(item)
        if self._finished:
            self._drain()

    def _finish(self):
        self._finished = True
        self._drain()

    def _drain(self):
        """Drop items nobody will receive, giving back the arrays in them."""
        try:
            while True:
                _drop_arrays(self._items.get_nowait())
        except _queue.Empty:
            pass

    def _remote_close(self, error):
        self._remote_error = error
        self._remote_closed.set()
        self._items.put(_CLOSED)
        self._gateway.forget_if_done(self)

    def _cancel(self):
        self._cancelled = True
        self._items.put(_WAKE)

    def _output(self, stream, text):
        pending = self._pending[stream]
        pending.append(text)
        if u"\n" not in text:
            return
        whole = u"".join(pending)
        head, _, tail = whole.rpartition(u"\n")
        del pending[:]
        if tail:
            pending.append(tail)
        self._send_output(stream, head + u"\n")

    def _flush_output(self):
        for stream in (1, 2):
            pending = self._pending[stream]
            if pending:
                text = u"".join(pending)
                del pending[:]
                self._send_output(stream, text)

    def _send_output(self, stream, text):
        if self._local_closed:
            _fallback_write(stream, text)
            return
        text = _safe_text(text)
        step = max(1, (self._gateway.conn.max_frame - 64) // 4)
        for start in range(0, len(text), step):
            payload = dumps_payload((stream, text[start:start + step]))
            self._gateway.conn.send(OUTPUT, self.id, payload)


_ORIGINAL_STREAMS = {}


def _fallback(stream):
    return _ORIGINAL_STREAMS.get(stream) or (sys.__stdout__ if stream == 1 else sys.__stderr__)


def _fallback_write(stream, text):
    f = _fallback(stream)
    if not PY3 and isinstance(text, text_type):
        text = text.encode("utf-8", "replace")
    f.write(text)
    try:
        f.flush()
    except _CATCH:
        pass


class _ChannelWriter(object):
    """``sys.stdout``/``sys.stderr`` replacement: text written on a thread running a
    remote execution goes to its channel, other text to the original stream."""

    def __init__(self, stream, fallback):
        self._stream = stream
        self._fallback = fallback
        self.softspace = 0  # Python 2's print statement keeps its state here

    def write(self, text):
        channel = getattr(_tls, "channel", None)
        if channel is None:
            return _fallback_write(self._stream, text)
        if not isinstance(text, text_type):
            text = _text(text)
        channel._output(self._stream, text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        channel = getattr(_tls, "channel", None)
        if channel is not None:
            channel._flush_output()
        try:
            self._fallback.flush()
        except _CATCH:
            pass

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self._fallback, name)


def _safe_text(text):
    """``text`` with lone surrogates (which UTF-8 cannot encode) escaped as ``\\udXXX``."""
    try:
        raw = text.encode("utf-8")
        if PY3 or not _SURROGATE_UTF8.search(raw):
            return text
    except UnicodeError:
        pass
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        o = ord(c)
        if 0xD800 <= o <= 0xDBFF and i + 1 < n and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            out.append(text[i:i + 2])  # a pair (narrow builds and Jython)
            i += 2
            continue
        if 0xD800 <= o <= 0xDFFF:
            out.append(u"\\u%04x" % o)
        else:
            out.append(c)
        i += 1
    return u"".join(out)


def _fit(text, limit):
    """``text`` cut from the front to at most ``limit`` UTF-8 bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    keep = max(0, limit - 40)
    return u"[... earlier text cut ...]\n" + data[len(data) - keep:].decode("utf-8", "ignore")


# ---------------------------------------------------------------------------------------
# The worker


class _WorkerGateway(object):
    def __init__(self, conn):
        self.conn = conn
        self._channels = {}
        self._lock = threading.Lock()
        self._cleanup = []
        self._exit_lock = threading.Lock()
        self._exit_done = threading.Event()
        self._main_tasks = _MainTasks()

    def channel(self, id):
        return self._channels.get(id)

    def forget_if_done(self, ch):
        if ch._local_closed and ch._remote_closed.is_set():
            with self._lock:
                if self._channels.get(ch.id) is ch:
                    del self._channels[ch.id]

    def run_cleanup(self):
        """Run the cleanup hooks once (unlink owned segments); later calls do nothing."""
        hooks, self._cleanup = self._cleanup, []
        for hook in reversed(hooks):
            try:
                hook()
            except _CATCH:
                _print_exc()

    def shutdown(self, code):
        """Run the cleanup hooks, write partial output lines to fd 1/2 and end the
        process with ``code``; a second caller waits for the first."""
        if not self._exit_lock.acquire(False):
            self._exit_done.wait(2.0)
            os._exit(code)
        self.run_cleanup()
        try:
            for ch in list(self._channels.values()):
                for stream in (1, 2):
                    if ch._pending[stream]:
                        _fallback_write(stream, u"".join(ch._pending[stream]))
                        del ch._pending[stream][:]
            for stream in (1, 2):
                _fallback(stream).flush()
        except _CATCH:
            pass
        self._exit_done.set()
        os._exit(code)

    def reader_loop(self):
        try:
            while True:
                frame = self.conn.read_frame()
                if frame is None or self.dispatch(*frame):
                    self.shutdown(0)
        except _CATCH:
            _print_exc()
            self.shutdown(70)

    def dispatch(self, msgtype, chid, payload, length):
        """Handle one frame; True means stop serving."""
        if payload is None:
            err = LoadError(
                "frame of %d bytes on channel %d exceeds the limit of %d bytes"
                % (length, chid, self.conn.max_frame)
            )
            ch = self.channel(chid)
            if ch is not None:
                ch._deliver(_Failed(err))
            else:
                _warn(str(err))
            return False
        if msgtype == CHANNEL_DATA:
            ch = self.channel(chid)
            imported = []
            try:
                item = loads_payload(payload, imported)
            except DataFormatError as exc:
                item = _Failed(exc)
            if ch is None:
                _drop_imported(imported)  # nobody will use its arrays: give them back
                return False
            ch._deliver(item)
        elif msgtype == CHANNEL_EXEC or msgtype == EXEC_MAIN:
            self.start_exec(chid, payload, msgtype == EXEC_MAIN)
        elif msgtype == CHANNEL_CLOSE or msgtype == CHANNEL_LAST_MESSAGE:
            ch = self.channel(chid)
            if ch is not None:
                ch._remote_close(None)
        elif msgtype == CHANNEL_CLOSE_ERROR:
            ch = self.channel(chid)
            if ch is not None:
                try:
                    text = _text(loads_payload(payload))
                except DataFormatError as exc:
                    text = u"undecodable error text: %s" % _text(exc)
                ch._remote_close(RemoteError(text))
        elif msgtype == CANCEL:
            ch = self.channel(chid)
            if ch is not None:
                ch._cancel()
        elif msgtype == FORGET:
            # Nothing is kept mapped after a release here; the name is checked only.
            try:
                name = loads_payload(payload)
                if not isinstance(name, text_type):
                    raise LoadError("expected a str, got %s" % type(name).__name__)
            except DataFormatError as exc:
                _warn("malformed forget message: %s" % _text(exc))
        elif msgtype == GATEWAY_TERMINATE:
            return True
        elif msgtype == STATUS:
            with self._lock:
                n = len(self._channels)
            status = {
                u"numchannels": n,
                u"numexecuting": threading.active_count() - 2,
                u"execmodel": u"thread",
            }
            self.conn.send(CHANNEL_DATA, chid, dumps_payload(status))
            self.conn.send(CHANNEL_CLOSE, chid)
        elif msgtype == RECONFIGURE:
            pass  # only the default string handling exists
        else:
            _warn("unknown message type %d on channel %d ignored" % (msgtype, chid))
        return False

    def start_exec(self, chid, payload, main):
        with self._lock:
            if chid in self._channels:
                _warn("execution request for channel %d, which is in use, ignored" % chid)
                return
            ch = self._channels[chid] = Channel(self, chid)
        try:
            task = loads_payload(payload)
            if type(task) is not tuple or len(task) != 4:
                raise ValueError("exec request must be a 4-tuple, got %s" % _describe(task))
            source, file_name, call_name, kwargs = task
            if not isinstance(source, (text_type, binary_type)):
                raise LoadError("exec source must be str, got %s" % type(source).__name__)
            if not isinstance(kwargs, dict):
                raise LoadError("exec kwargs must be dict, got %s" % type(kwargs).__name__)
        except (DataFormatError, ValueError, TypeError) as exc:
            _report_error(ch, type(exc).__name__, u"bad exec request: %s" % _text(exc), u"")
            ch._finish()
            return

        def run():
            _execute(ch, source, file_name, call_name, kwargs)

        if main:
            self._main_tasks.put(run)
        else:
            t = threading.Thread(target=run, name="pixgate-exec-%d" % chid)
            t.daemon = True
            t.start()


class _MainTasks(object):
    """Executions for the main thread. On CPython the main thread waits in ``os.read``
    on a pipe, which a signal interrupts, so the SIGTERM handler runs at once (a
    Python 2 lock wait cannot be interrupted). A signal the kernel delivers to another
    thread interrupts nothing in the main thread, where Python runs handlers: the
    pipe's write end is the wake-up descriptor (``signal.set_wakeup_fd``, installed by
    ``serve``), whose byte wakes the main thread to run it. Bytes are wake-ups only: a
    task is looked for before every read."""

    def __init__(self):
        self._tasks = []
        self._lock = threading.Lock()
        if JYTHON:
            self._queue = _queue.Queue()
        else:
            import fcntl

            self._queue = None
            self._r, self._w = os.pipe()
            for fd in (self._r, self._w):
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            fcntl.fcntl(self._w, fcntl.F_SETFL, fcntl.fcntl(self._w, fcntl.F_GETFL) | os.O_NONBLOCK)

    def wakeup_fd(self):
        """The write end, for ``signal.set_wakeup_fd`` (non-blocking), on CPython."""
        return self._w

    def put(self, task):
        if self._queue is not None:
            self._queue.put(task)
            return
        with self._lock:
            self._tasks.append(task)
        try:
            _retrying(os.write, self._w, b"t")
        except EnvironmentError as exc:
            # Full: the main thread has bytes to read, and finds the task after.
            if getattr(exc, "errno", None) != errno.EAGAIN:
                raise

    def get(self):
        if self._queue is not None:
            return self._queue.get()
        while True:
            with self._lock:
                if self._tasks:
                    return self._tasks.pop(0)
            _retrying(os.read, self._r, 4096)


def _execute(ch, source, file_name, call_name, kwargs):
    filename = _native(file_name) if file_name else "<remote exec %d>" % ch.id
    _register_source(filename, source)
    _tls.channel = ch
    try:
        try:
            namespace = {"channel": ch, "__name__": "__channelexec__"}
            # dont_inherit: remote code gets its interpreter's defaults, not this
            # module's __future__ imports.
            code = compile(source + u"\n", filename, "exec", 0, True)
            _exec(code, namespace)
            if call_name:
                fn = namespace[_native(call_name)]
                fn(ch, **dict((_native(k), v) for k, v in kwargs.items()))
        except EOFError:
            pass
        except _CATCH as exc:
            _tls.channel = None
            tb = _format_exception(exc)
            name = getattr(exc, "__class__", type(exc)).__name__
            _report_error(ch, _text(name), _exc_message(exc), tb)
            ch._finish()
            return
    finally:
        _tls.channel = None
        _forget_source(filename)
        ch._flush_output()
    try:
        ch.close()
    except EnvironmentError:
        pass
    ch._finish()


def _exec(code, namespace):
    # Its own function: Python 2 refuses exec in a function holding nested ones.
    exec(code, namespace)


def _exc_message(exc):
    if JYTHON and isinstance(exc, _Throwable):
        return _text(exc.getMessage() or u"")
    return _text(exc)


def _report_error(ch, type_name, message, tb):
    """Close ``ch`` with an error report the host can always read; if the channel is
    closed already, write it to stderr instead."""
    ch._flush_output()
    if ch._local_closed:
        _fallback_write(2, tb or u"%s: %s\n" % (type_name, message))
        return
    budget = ch._gateway.conn.max_frame - 256
    message = _fit(_safe_text(message), budget // 4)
    tb = _fit(_safe_text(tb), budget - len(message.encode("utf-8")) - len(type_name))
    ch._local_closed = True
    try:
        ch._gateway.conn.send(
            CHANNEL_CLOSE_ERROR, ch.id, dumps_payload((_safe_text(type_name), message, tb))
        )
    except EnvironmentError:
        pass
    ch._gateway.forget_if_done(ch)


def _warn(text):
    try:
        _fallback_write(2, u"pixgate worker: %s\n" % _text(text))
    except _CATCH:
        pass


def _print_exc():
    try:
        import traceback

        _sync_linecache()
        _fallback_write(2, _text(traceback.format_exc()))
    except _CATCH:
        pass


_SOURCES = {}


def _register_source(filename, source):
    _SOURCES[filename] = source


def _forget_source(filename):
    _SOURCES.pop(filename, None)
    cache = getattr(sys.modules.get("linecache"), "cache", None)
    if cache is not None:
        cache.pop(filename, None)


def _sync_linecache():
    import linecache

    sources = dict(_SOURCES)
    own = globals().get("__pixgate_source__")
    if own:
        sources["<pixgate>/pixgate_legacy.py"] = own
    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, (text + u"\n").splitlines(True), name)


def _format_exception(exc):
    try:
        import traceback

        _sync_linecache()
        info = sys.exc_info()
        if info[1] is exc:
            return _text(u"".join(_text(x) for x in traceback.format_exception(*info)))
        return _text(u"".join(_text(x) for x in traceback.format_exception_only(type(exc), exc)))
    except _CATCH:
        return u"%s: %s\n" % (type(exc).__name__, _exc_message(exc))


_gateway = None


def current_gateway():
    """The worker gateway of this process, when it is a pixgate worker."""
    return _gateway


def _helper_source():
    return "bootstrap" if globals().get("__pixgate_source__") else "installed"


def serve(rfd=3, wfd=4):
    """Serve the host on the given pipe descriptors until it terminates or goes away."""
    global _gateway, _array_import, _array_export
    max_frame = int(os.environ.pop("PIXGATE_MAX_FRAME", _DEFAULT_MAX_FRAME))
    os.environ.pop("PIXGATE_SPIN_US", None)  # the reader thread never spins
    conn = _Conn(rfd, wfd, max_frame)
    gw = _gateway = _WorkerGateway(conn)
    if JYTHON:
        from java.lang import Runtime, Thread

        Runtime.getRuntime().addShutdownHook(Thread(gw.run_cleanup))
    else:
        import fcntl
        import signal

        for fd in (rfd, wfd):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)

        def on_term(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            gw.shutdown(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        # Delivered to another thread, it wakes the main thread to run the handler.
        signal.set_wakeup_fd(gw._main_tasks.wakeup_fd())
    info = [
        (u"protocol", PROTOCOL_VERSION),
        (u"helper", _text(__version__)),
        (u"helper_source", _text(_helper_source())),
        (u"python", u"%d.%d.%d" % tuple(sys.version_info[:3])),
        (u"numpy", None),
        (u"pid", os.getpid()),
        (u"executable", _text(sys.executable or u"")),
        (u"implementation", _text(IMPLEMENTATION)),
    ]
    # A dict written in this order (Python 2 dicts have none of their own).
    parts = [b"J"]
    for key, value in info:
        _encode(key, parts)
        _encode(value, parts)
        parts.append(b"P")
    parts.append(b"Q")
    conn.send(HANDSHAKE, 0, b"".join(parts))
    _array_import = _import_array
    _array_export = _export_array
    for stream, name in ((1, "stdout"), (2, "stderr")):
        original = getattr(sys, name)
        _ORIGINAL_STREAMS[stream] = original
        setattr(sys, name, _ChannelWriter(stream, original))
    t = threading.Thread(target=gw.reader_loop, name="pixgate-reader")
    t.daemon = True
    t.start()
    while True:
        task = gw._main_tasks.get()
        task()


# ---------------------------------------------------------------------------------------
# Segments (docs/SEGMENT_FORMAT.md): header codec and validation, in pure Python.

MAGIC = b"PXGSEG\0\0"
SEGMENT_VERSION = 1
PAGE = 4096
FIXED_HEADER_LEN = 608
MAX_NDIM = 32
DTYPES = {
    "|b1": 1, "|u1": 1, "<u2": 2, "<u4": 4, "<u8": 8, "|i1": 1, "<i2": 2, "<i4": 4,
    "<i8": 8, "<f2": 2, "<f4": 4, "<f8": 8, "<c8": 8, "<c16": 16,
}
_DTYPE_NAMES = {
    "bool": "|b1", "uint8": "|u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
    "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "float16": "<f2",
    "float32": "<f4", "float64": "<f8", "complex64": "<c8", "complex128": "<c16",
    "b1": "|b1", "u1": "|u1", "u2": "<u2", "u4": "<u4", "u8": "<u8", "i1": "|i1",
    "i2": "<i2", "i4": "<i4", "i8": "<i8", "f2": "<f2", "f4": "<f4", "f8": "<f8",
    "c8": "<c8", "c16": "<c16",
}
STATE_OWNED, STATE_SHARED, STATE_LENT, STATE_MOVED = 0, 1, 2, 3
FLAG_C_CONTIGUOUS, FLAG_F_CONTIGUOUS, FLAG_POOL_SLOT = 1, 2, 4
META_KEYS = ("dims", "scale", "units", "channel_names", "name", "attrs")
_FIXED = struct.Struct("<8sIIQQ16sIIIIQQIIII")
_SHAPE = struct.Struct("<32Q")
_STRIDES = struct.Struct("<32q")
_OFF_VERSION = 8
_OFF_STATE = 80
_OFF_OWNER_PID = 84
_OFF_SHAPE = 96
_OFF_STRIDES = 352
_U64_MAX = 2 ** 64 - 1
_NAME_RE = re.compile(r"/pxg-[0-9a-f]{1,8}-[0-9a-f]{16}\Z")
_SHM_DIR = "/dev/shm"


class Header(object):
    """The validated fields of a segment header."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def check_dtype(dtype):
    """The typestr for ``dtype`` (a typestr such as ``"<u2"`` or a name such as
    ``"uint16"``)."""
    if isinstance(dtype, (text_type, binary_type)):
        d = _native(dtype) if not PY3 else dtype
        if d in DTYPES:
            return d
        if d in _DTYPE_NAMES:
            return _DTYPE_NAMES[d]
    raise DTypeError(
        "dtype %r is not supported by shared arrays; expected one of %s"
        % (dtype, " ".join(sorted(DTYPES)))
    )


def check_name(name):
    """``name`` if it is ``/pxg-<pid hex>-<16 hex digits>`` (at most 31 bytes)."""
    if isinstance(name, (text_type, binary_type)) and _NAME_RE.match(_native(name)):
        return _native(name)
    raise SegmentError(
        "segment name %r is not a pixgate segment name "
        "(expected '/pxg-<pid hex>-<16 hex digits>', at most 31 bytes)" % (name,),
        "name",
        None,
    )


def _segment_path(name):
    """The file of the segment a reference names: ``/dev/shm/pxg-...`` for a name, or
    a normalised absolute path (a pool's backing directory) whose file has a name."""
    native = _native(name)
    if native.startswith("/pxg-"):
        return os.path.join(_SHM_DIR, check_name(native)[1:])
    if os.path.isabs(native) and os.path.normpath(native) == native:
        check_name("/" + os.path.basename(native))
        return native
    check_name(native)


def _c_strides(shape, itemsize):
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _layout_flags(shape, strides, itemsize):
    if 0 in shape:
        return FLAG_C_CONTIGUOUS | FLAG_F_CONTIGUOUS
    flags = 0
    for bit, axes in (
        (FLAG_C_CONTIGUOUS, range(len(shape) - 1, -1, -1)),
        (FLAG_F_CONTIGUOUS, range(len(shape))),
    ):
        step = itemsize
        ok = True
        for i in axes:
            if shape[i] != 1:
                if strides[i] != step:
                    ok = False
                    break
                step *= shape[i]
        if ok:
            flags |= bit
    return flags


def _extent(shape, strides, itemsize):
    if 0 in shape:
        return 0
    return sum((n - 1) * s for n, s in zip(shape, strides)) + itemsize


def _bad(name, problem, message):
    return HeaderError("segment %s: %s" % (name, message), problem, name)


def encode_meta(meta, ndim):
    """Check a metadata dict; return its normalised form and encoding (SEGMENT_FORMAT
    §6: known keys only, in order, lists as lists, scales as floats)."""
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise LayoutError("meta must be a dict, got %s" % type(meta).__name__)
    for k in meta:
        if k not in META_KEYS:
            raise LayoutError(
                "unknown metadata key %r, expected one of %s (put other values in 'attrs')"
                % (k, ", ".join(META_KEYS))
            )
    items = []
    for key in ("dims", "scale", "units"):
        value = meta.get(key)
        if value is None:
            continue
        seq = list(value)
        if len(seq) != ndim:
            raise LayoutError("meta %r has %d entries, expected ndim = %d" % (key, len(seq), ndim))
        items.append((key, [float(x) for x in seq] if key == "scale" else [_text(x) for x in seq]))
    if meta.get("channel_names") is not None:
        items.append(("channel_names", [_text(x) for x in meta["channel_names"]]))
    if meta.get("name") is not None:
        items.append(("name", _text(meta["name"])))
    attrs = meta.get("attrs")
    if attrs:
        if not isinstance(attrs, dict):
            raise LayoutError("meta 'attrs' must be a dict, got %s" % type(attrs).__name__)
        items.append(("attrs", dict((_text(k), v) for k, v in attrs.items())))
    parts = [DUMPFORMAT_VERSION, b"J"]
    for key, value in items:
        _encode(_text(key), parts, True)
        _encode(value, parts, True)
        parts.append(b"P")
    parts.append(b"Q")
    return dict(items), b"".join(parts)


def encode_header(dtype, shape, strides, meta_bytes, flags, generation, owner_pid, version,
                  data_len=None):
    """The header bytes (``header_len`` of them) for the given layout; ``data_len``
    defaults to the array's extent."""
    itemsize = DTYPES[dtype]
    ndim = len(shape)
    header_len = -(-(FIXED_HEADER_LEN + len(meta_bytes)) // PAGE) * PAGE
    nbytes = itemsize
    for n in shape:
        nbytes *= n
    if data_len is None:
        data_len = _extent(shape, strides, itemsize)
    pid = os.getpid()
    fixed = _FIXED.pack(
        MAGIC, version, header_len, data_len, nbytes, dtype.encode("ascii"), itemsize, ndim,
        flags, pid, _start_time(), generation, STATE_OWNED, owner_pid, len(meta_bytes), 0,
    )
    out = bytearray(header_len)
    out[0:len(fixed)] = fixed
    out[_OFF_SHAPE:_OFF_SHAPE + 256] = _SHAPE.pack(*(list(shape) + [0] * (MAX_NDIM - ndim)))
    out[_OFF_STRIDES:_OFF_STRIDES + 256] = _STRIDES.pack(
        *(list(strides) + [0] * (MAX_NDIM - ndim))
    )
    out[FIXED_HEADER_LEN:FIXED_HEADER_LEN + len(meta_bytes)] = meta_bytes
    return bytes(out), header_len, data_len


def parse_header(data, file_size, name="<bytes>", version=None):
    """Validate a header (SEGMENT_FORMAT.md §8, steps 2 to 7) and return its fields.
    The checks, their order and their ``problem`` names are the main helper's."""
    data = bytes(data)
    if file_size < PAGE:
        raise _bad(name, "size", "segment of %d bytes, expected at least %d" % (file_size, PAGE))
    if len(data) < PAGE:
        raise _bad(name, "truncated", "header of %d bytes, expected at least %d" % (len(data), PAGE))
    (magic, stamped, header_len, data_len, nbytes, dtype_raw, itemsize, ndim, flags,
     creator_pid, creator_start, generation, state, owner_pid, meta_len,
     reserved) = _FIXED.unpack_from(data)
    if version is None:
        version = stamped
    if magic != MAGIC:
        raise _bad(name, "magic", "bad magic %r, expected %r" % (magic, MAGIC))
    if version == 0:
        raise _bad(name, "uninitialised", "segment not yet initialised (version 0)")
    if version != SEGMENT_VERSION:
        raise _bad(name, "version", "unsupported layout version %d, expected 1" % version)
    if header_len < PAGE or header_len % PAGE:
        raise _bad(name, "header_len", "header_len %d, expected a multiple of %d" % (header_len, PAGE))
    if header_len > file_size:
        raise _bad(name, "header_len", "header_len %d exceeds the segment size %d" % (header_len, file_size))
    if len(data) < header_len:
        raise _bad(name, "truncated", "header of %d bytes, header_len %d" % (len(data), header_len))
    if FIXED_HEADER_LEN + meta_len > header_len:
        raise _bad(name, "meta_len", "meta_len %d runs past header_len %d" % (meta_len, header_len))
    if reserved:
        raise _bad(name, "reserved", "reserved word %#x, expected 0" % reserved)
    if header_len + data_len > file_size:
        raise _bad(
            name, "data_len",
            "data_len %d at offset %d ends at %d, beyond the segment size %d"
            % (data_len, header_len, header_len + data_len, file_size),
        )
    text = dtype_raw.split(b"\0", 1)[0]
    if dtype_raw[len(text):].strip(b"\0"):
        text = None
    else:
        try:
            text = text.decode("ascii")
            text = str(text)
        except UnicodeError:
            text = None
    if text is None or text not in DTYPES:
        raise _bad(name, "dtype", "unknown dtype %r, expected one of %s"
                   % (dtype_raw.rstrip(b"\0"), " ".join(sorted(DTYPES))))
    if itemsize != DTYPES[text]:
        raise _bad(name, "itemsize", "itemsize %d for dtype %s, expected %d" % (itemsize, text, DTYPES[text]))
    if ndim > MAX_NDIM:
        raise _bad(name, "ndim", "ndim %d, expected at most %d" % (ndim, MAX_NDIM))
    shape = _SHAPE.unpack_from(data, _OFF_SHAPE)
    strides = _STRIDES.unpack_from(data, _OFF_STRIDES)
    for what, values in (("shape", shape), ("strides", strides)):
        for i in range(ndim, MAX_NDIM):
            if values[i]:
                raise _bad(name, what, "%s[%d] = %d with ndim %d, expected 0" % (what, i, values[i], ndim))
    shape = tuple(int(n) for n in shape[:ndim])
    strides = tuple(int(s) for s in strides[:ndim])
    for i, s in enumerate(strides):
        if s < 0:
            raise _bad(name, "stride", "stride %d on axis %d, expected a stride >= 0" % (s, i))
    expected = itemsize
    for n in shape:
        expected *= n
        if expected > _U64_MAX:
            raise _bad(name, "nbytes", "itemsize %d x shape %s overflows 64 bits" % (itemsize, shape))
    if nbytes != expected:
        raise _bad(name, "nbytes", "nbytes %d, expected %d" % (nbytes, expected))
    extent = _extent(shape, strides, itemsize)
    if extent > data_len:
        raise _bad(name, "extent", "shape %s with strides %s reaches %d bytes, beyond data_len %d"
                   % (shape, strides, extent, data_len))
    expected_flags = _layout_flags(shape, strides, itemsize) | (flags & FLAG_POOL_SLOT)
    if flags != expected_flags:
        raise _bad(name, "flags", "flags %#x, expected %#x" % (flags, expected_flags))
    block = bytearray(data[FIXED_HEADER_LEN:FIXED_HEADER_LEN + meta_len])
    try:
        if not block or block[0] != 2:
            raise LoadError("metadata must start with the version byte 0x02")

        def no_refs(ref):
            raise LoadError("holds an array reference")

        repeats = []
        value = _decode(block, 1, True, no_refs, repeats)
    except LoadError as exc:
        raise _bad(name, "meta", "metadata of %d bytes does not decode: %s" % (meta_len, exc))
    meta = _read_meta(value, ndim, name, repeats)
    return Header(
        version=version, header_len=header_len, data_len=data_len, nbytes=nbytes,
        dtype=text, itemsize=itemsize, ndim=ndim, flags=flags, creator_pid=creator_pid,
        creator_start=creator_start, generation=generation, state=state,
        owner_pid=owner_pid, shape=shape, strides=strides, meta=meta,
    )


def _read_meta(value, ndim, name, repeats):
    def bad(message):
        return _bad(name, "meta_types", "metadata " + message)

    def check_keys(d, what):
        for key in d:
            if not isinstance(key, strs):
                raise bad("%s a %s key, expected str" % (what, type(key).__name__))
        for container, key in repeats:
            if container is d:
                raise bad("%s the key %r more than once" % (what, key))

    strs = (text_type, binary_type)
    if not isinstance(value, dict):
        raise bad("is a %s, expected a dict" % type(value).__name__)
    check_keys(value, "has")
    meta = {}
    for key in META_KEYS:
        item = value.get(key)
        if item is None:
            item = value.get(_text(key))
        if item is None:
            continue
        if key == "name":
            if not isinstance(item, strs):
                raise bad("name is a %s, expected str" % type(item).__name__)
        elif key == "attrs":
            if not isinstance(item, dict):
                raise bad("attrs is a %s, expected a dict" % type(item).__name__)
            check_keys(item, "attrs has")
        else:
            if not isinstance(item, (list, tuple)):
                raise bad("%s is a %s, expected a list" % (key, type(item).__name__))
            if key != "channel_names" and len(item) != ndim:
                raise bad("%s has %d entries, expected ndim %d" % (key, len(item), ndim))
            for i, x in enumerate(item):
                ok = type(x) in (float, int, _long) if key == "scale" else isinstance(x, strs)
                if not ok:
                    raise bad("%s[%d] is a %s" % (key, i, type(x).__name__))
            item = [float(x) for x in item] if key == "scale" else list(item)
        meta[key] = item
    return meta


def _start_time():
    """This process's start time in clock ticks since boot (/proc/self/stat), or 0."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (EnvironmentError, ValueError, IndexError):
        return 0


def _new_name():
    return "/pxg-%x-%s" % (os.getpid(), "".join("%02x" % b for b in bytearray(os.urandom(8))))


# name -> path of the segments this process owns and unlinks.
_owned = {}
_owned_lock = threading.Lock()
_cleanup_registered = []


def _own(name, path):
    with _owned_lock:
        _owned[name] = path
    if not _cleanup_registered and _gateway is not None:
        _gateway._cleanup.append(_unlink_owned)
        _cleanup_registered.append(True)


def _disown(name):
    with _owned_lock:
        return _owned.pop(name, None)


def _unlink_owned():
    with _owned_lock:
        items = list(_owned.items())
        _owned.clear()
    for _, path in items:
        _unlink_path(path)


def _unlink_path(path):
    try:
        if JYTHON:
            _posix().unlink(path)
        else:
            os.unlink(path)
    except _CATCH:
        pass


def owned_names():
    """Names of the segments this process will unlink."""
    with _owned_lock:
        return sorted(_owned)


def _refuse_reference(ref, refused):
    """An interpreter without an array layer: a shared or lent reference is given back
    at once (RELEASE), a moved one, now ours, is unlinked after its header validated."""
    name = _text(ref.name)
    how = _ACCESS_NAMES.get(ref.access, "?")
    if ref.access == MOVED:
        try:
            path = _segment_path(ref.name)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            try:
                st = os.fstat(fd)
                _check_stat(st.st_uid, st.st_mode, st.st_size, name)
                data = _retrying(os.read, fd, PAGE)
                parse_header(data, st.st_size, name)
            finally:
                os.close(fd)
            os.unlink(path)
        except (EnvironmentError, Error):
            pass
    else:
        _send_release(ref.name, ref.generation, ref.access)
    refused.append(
        "array reference to %s (%s) cannot be mapped: the pixgate helper for %s %s has no "
        "array support (arrays need CPython 3.9+ with numpy, or Jython); the host got it back"
        % (name, how, IMPLEMENTATION, "%d.%d.%d" % tuple(sys.version_info[:3]))
    )
    return ref


def _send_release(name, generation, access):
    gw = _gateway
    if gw is None:
        return
    try:
        gw.conn.send(RELEASE, 0, dumps_payload((_text(name), generation, access)))
    except _CATCH:
        pass


def _check_stat(uid, mode, size, name):
    import stat as _stat

    if not _stat.S_ISREG(mode):
        raise SegmentError("segment %s: not a regular file (mode %o)" % (name, mode), "not a file", name)
    euid = os.geteuid() if hasattr(os, "geteuid") else uid
    if uid != euid:
        raise SegmentError("segment %s: owner uid %d, expected %d" % (name, uid, euid), "owner", name)
    if mode & 0o077:
        raise SegmentError(
            "segment %s: mode %o gives group or others access, expected none" % (name, mode & 0o777),
            "mode", name,
        )
    if size < PAGE:
        raise SegmentError("segment %s: %d bytes, expected at least %d" % (name, size, PAGE), "size", name)


def release(arr):
    """Give an array back at once: a host's shared or lent array is released (RELEASE),
    one this process owns is unlinked. Its buffers must not be used afterwards."""
    if not isinstance(arr, SharedArray):
        raise ReleaseError("%s is not a shared array" % type(arr).__name__)
    arr._release(True)


def _import_array(ref, refused):
    if not JYTHON:
        return _refuse_reference(ref, refused)
    return _jopen(ref)


def _export_array(obj):
    if isinstance(obj, SharedArray):
        return obj._export()
    return None


def is_shared(obj):
    """True for an array in a shared-memory segment (this module's SharedArray)."""
    return isinstance(obj, SharedArray)


# ---------------------------------------------------------------------------------------
# Jython: segments mapped with Java NIO, exposed as SharedArray.

_WINDOW = 1 << 30
_OVERLAP = 16  # the largest itemsize: any element starting in a window lies in its mapping
_POSIX = []
_FALLOCATE = []


def _window_size():
    try:
        w = int(os.environ.get("PIXGATE_JAVA_WINDOW", "") or _WINDOW)
    except ValueError:
        w = _WINDOW
    w = max(PAGE, min(w, _WINDOW)) // PAGE * PAGE
    return w


def _posix():
    if not _POSIX:
        from jnr.posix import POSIXFactory

        _POSIX.append(POSIXFactory.getNativePOSIX())
    return _POSIX[0]


def _open_flags():
    from jnr.constants.platform import OpenFlags

    return dict(
        (n, OpenFlags.valueOf(n).intValue())
        for n in ("O_RDONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOFOLLOW", "O_NONBLOCK")
    )


def _errno_problem(e):
    return {2: "not found", 13: "permission", 1: "permission", 28: "no space", 17: "exists"}.get(e, "open")


def _posix_fallocate(fd, size):
    """libc's posix_fallocate(fd, 0, size) through jffi; returns its error number."""
    if not _FALLOCATE:
        from com.kenai.jffi import CallContext, CallingConvention, Library, Type

        lib = Library.getCachedInstance("libc.so.6", Library.LAZY | Library.GLOBAL)
        addr = lib.getSymbolAddress("posix_fallocate")
        ctx = CallContext.getCallContext(
            Type.SINT, [Type.SINT, Type.SLONG, Type.SLONG], CallingConvention.DEFAULT, False
        )
        _FALLOCATE.append((ctx, addr))
    from com.kenai.jffi import Invoker

    ctx, addr = _FALLOCATE[0]
    return int(Invoker.getInstance().invokeL3(ctx, addr, fd, 0, size))


def _jmap(fd, writable, offset, size):
    """Map ``size`` bytes at ``offset`` of the open descriptor ``fd`` (the file its
    /proc/self/fd link names, so the same inode), little-endian."""
    from java.nio import ByteOrder
    from java.nio.channels import FileChannel
    from java.nio.file import Paths, StandardOpenOption

    opts = [StandardOpenOption.READ] + ([StandardOpenOption.WRITE] if writable else [])
    ch = FileChannel.open(Paths.get("/proc/self/fd/%d" % fd), opts)
    try:
        mode = FileChannel.MapMode.READ_WRITE if writable else FileChannel.MapMode.READ_ONLY
        buf = ch.map(mode, offset, size)
    finally:
        ch.close()  # a mapping outlives its channel
    buf.order(ByteOrder.LITTLE_ENDIAN)
    return buf


def _jbytes(buf, offset, n):
    import jarray

    out = jarray.zeros(n, "b")
    dup = buf.duplicate()
    dup.position(offset)
    dup.get(out)
    return out.tostring()


def _jopen(ref):
    """Map the segment a reference names, after every check of SEGMENT_FORMAT.md §8."""
    name = _native(ref.name)
    writable = ref.access != SHARED
    path = _segment_path(name)
    p = _posix()
    fl = _open_flags()
    flags = (fl["O_RDWR"] if writable else fl["O_RDONLY"]) | fl["O_NOFOLLOW"] | fl["O_NONBLOCK"]
    fd = p.open(path, flags, 0)
    if fd < 0:
        e = p.errno()
        raise SegmentError("segment %s: open failed: %s" % (name, p.strerror(e)), _errno_problem(e), name, e)
    try:
        st = p.fstat(fd)
        size = int(st.st_size())
        _check_stat(int(st.uid()), int(st.mode()), size, name)
        head = _jmap(fd, False, 0, min(size, PAGE))
        version = head.getInt(_OFF_VERSION)
        header_len = head.getInt(12) & 0xFFFFFFFF
        n = header_len if PAGE <= header_len <= size and header_len % PAGE == 0 else PAGE
        hbuf = head if n == PAGE else _jmap(fd, False, 0, n)
        raw = _jbytes(hbuf, 0, n)
        if head.getInt(_OFF_VERSION) != version:
            raise _bad(name, "changed", "header changed while it was read")
        header = parse_header(raw, size, name, version)
        if header.generation != ref.generation:
            raise LoadError(
                "segment %s: reference of generation %d, segment at generation %d (stale reference)"
                % (name, ref.generation, header.generation)
            )
        windows = _map_windows(fd, writable, header.header_len, header.data_len)
        hw = _jmap(fd, True, 0, PAGE) if ref.access == MOVED else None
    finally:
        p.close(fd)
    if hw is not None:
        # Ours now: record ourselves as the owner (aligned 4-byte stores), unlink later.
        hw.putInt(_OFF_OWNER_PID, os.getpid())
        hw.putInt(_OFF_STATE, STATE_OWNED)
        _own(name, path)
    return SharedArray(name, path, header, windows, ref.access, ref.generation)


def _map_windows(fd, writable, header_len, data_len):
    """The data area as mappings of at most window + 16 bytes, one per window."""
    w = _window_size()
    out = []
    start = 0
    while start < data_len:
        size = min(w + _OVERLAP, data_len - start)
        out.append(_jmap(fd, writable, header_len + start, size))
        start += w
    return out


class SharedArray(object):
    """An array in a shared-memory segment, mapped with Java NIO (Jython only).

    Attributes: ``name``, ``dtype`` (the typestr, e.g. ``"<u2"``), ``shape``,
    ``strides`` (bytes), ``itemsize``, ``ndim``, ``size`` (elements), ``nbytes``,
    ``meta`` (the header's metadata dict), ``access`` (``"shared"``, ``"lent"``,
    ``"moved"``, ``"owned"``), ``writable``.

    The data is mapped in windows of at most 1 GiB (a Java buffer holds less than
    2 GiB): :attr:`windows` are the little-endian ``ByteBuffer`` of each, covering the
    data bytes ``[k * window_size, (k + 1) * window_size)``, and :attr:`buffers` the
    typed views of the same bytes (``ShortBuffer`` for ``<u2``/``<i2``/``<f2``,
    ``IntBuffer``, ``LongBuffer``, ``FloatBuffer`` (two per complex64),
    ``DoubleBuffer``, ``ByteBuffer`` for one-byte types; unsigned values read as the
    signed Java type). :attr:`buffer` is the only one of them, for an array in one
    window. ``a[i]`` / ``a[i, j]`` and :meth:`get` / :meth:`set` read and write one
    element by flat (C order) or per-axis index, with numpy's value semantics.
    """

    def __init__(self, name, path, header, windows, access, generation):
        self.name = name
        self._path = path
        self.dtype = header.dtype
        self.shape = tuple(header.shape)
        self.strides = tuple(header.strides)
        self.itemsize = header.itemsize
        self.ndim = header.ndim
        self.nbytes = header.nbytes
        self.meta = header.meta
        self.flags = header.flags
        self.size = 1
        for n in self.shape:
            self.size *= n
        self.generation = generation
        self._access = access
        self.writable = access != SHARED
        self._windows = windows
        self._window = _window_size()
        self._c = bool(header.flags & FLAG_C_CONTIGUOUS)
        self._gone = False
        self._get, self._put = _ACCESSORS[self.dtype]

    @property
    def access(self):
        return "owned" if self._access is None else _ACCESS_NAMES[self._access]

    @property
    def window_size(self):
        return self._window

    @property
    def windows(self):
        self._check()
        out = []
        for k, buf in enumerate(self._windows):
            d = buf.duplicate()
            d.limit(min(self._window, d.capacity()))
            out.append(d.slice().order(buf.order()))
        return out

    @property
    def buffers(self):
        return [_typed(b, self.dtype) for b in self.windows]

    @property
    def buffer(self):
        bufs = self.buffers
        if len(bufs) != 1:
            raise ValueError(
                "array %s spans %d windows of %d bytes; use .buffers" % (self.name, len(bufs), self._window)
            )
        return bufs[0]

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self):
        return "<pixgate SharedArray %s %s %s %s>" % (self.name, self.dtype, self.shape, self.access)

    def _check(self):
        if self._gone:
            raise ReleaseError("array %s was released or sent away" % self.name)

    def _offset(self, index):
        if isinstance(index, tuple):
            if len(index) != self.ndim:
                raise IndexError("%d indices for a %d-d array" % (len(index), self.ndim))
            off = 0
            for i, n, s in zip(index, self.shape, self.strides):
                if i < 0:
                    i += n
                if not 0 <= i < n:
                    raise IndexError("index %d out of range for an axis of %d" % (i, n))
                off += i * s
            return off
        i = int(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError("flat index %d out of range for %d elements" % (index, self.size))
        if self._c:
            return i * self.itemsize
        off = 0
        for n, s in reversed(list(zip(self.shape, self.strides))):
            i, r = divmod(i, n)
            off += r * s
        return off

    def _locate(self, index):
        self._check()
        off = self._offset(index)
        k = off // self._window
        return self._windows[k], off - k * self._window

    def get(self, index):
        """The element at ``index`` (a flat C-order index or a tuple of per-axis ones)."""
        buf, off = self._locate(index)
        return self._get(buf, off)

    def set(self, index, value):
        """Write the element at ``index``."""
        if not self.writable:
            raise ValueError("array %s is a read-only share" % self.name)
        buf, off = self._locate(index)
        self._put(buf, off, value)

    __getitem__ = get
    __setitem__ = set

    def tolist(self):
        """Every element in C order, as a flat list (for small arrays)."""
        return [self.get(i) for i in range(self.size)]

    def _drop(self):
        self._release(False)

    def _release(self, explicit):
        if self._gone:
            if explicit:
                raise ReleaseError("array %s was released or sent away already" % self.name)
            return
        self._gone = True
        self._windows = []
        if self._access in (SHARED, LENT):
            _send_release(self.name, self.generation, self._access)
        else:
            path = _disown(self.name)
            if path is not None:
                _unlink_path(path)

    def _export(self):
        self._check()
        if self._access in (SHARED, LENT):
            ref = ArrayRef(_text(self.name), self.generation, self._access)
        else:
            if _disown(self.name) is None:
                raise DumpError("array %s is not owned by this process" % self.name)
            ref = ArrayRef(_text(self.name), self.generation, MOVED)
            try:
                hw = _reopen_header(self._path)
                hw.putInt(_OFF_STATE, STATE_MOVED)
            except _CATCH:
                pass
        self._gone = True
        self._windows = []
        return ref

    def __del__(self):
        try:
            self._release(False)
        except _CATCH:
            pass


def _reopen_header(path):
    p = _posix()
    fl = _open_flags()
    fd = p.open(path, fl["O_RDWR"] | fl["O_NOFOLLOW"] | fl["O_NONBLOCK"], 0)
    if fd < 0:
        raise SegmentError("segment %s: open failed" % path, "open", path)
    try:
        return _jmap(fd, True, 0, PAGE)
    finally:
        p.close(fd)


def _typed(buf, dtype):
    kind = dtype[1:]
    if kind in ("u2", "i2", "f2"):
        return buf.asShortBuffer()
    if kind in ("u4", "i4"):
        return buf.asIntBuffer()
    if kind in ("u8", "i8"):
        return buf.asLongBuffer()
    if kind in ("f4", "c8"):
        return buf.asFloatBuffer()
    if kind in ("f8", "c16"):
        return buf.asDoubleBuffer()
    return buf


def _signed(v, bits):
    v = int(v) & ((1 << bits) - 1)
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def _half_to_float(h):
    s = -1.0 if h & 0x8000 else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        return s * m * 2.0 ** -24
    if e == 31:
        return s * float("inf") if not m else float("nan")
    return s * (1 + m / 1024.0) * 2.0 ** (e - 15)


def _float_to_half(f):
    bits = struct.unpack("<I", struct.pack("<f", float(f)))[0]
    sign = (bits >> 16) & 0x8000
    e = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    if e == 255:
        return sign | 0x7C00 | (0x200 if m else 0)
    e = e - 127 + 15
    if e >= 31:
        return sign | 0x7C00
    if e <= 0:
        if e < -10:
            return sign
        m |= 0x800000
        shift = 14 - e
        half = m >> shift
        rest = m & ((1 << shift) - 1)
        mid = 1 << (shift - 1)
        if rest > mid or (rest == mid and half & 1):
            half += 1
        return sign | half
    half = (e << 10) | (m >> 13)
    rest = m & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and half & 1):
        half += 1
    return sign | half


def _u64(v):
    return v + (1 << 64) if v < 0 else v


_ACCESSORS = {
    "|b1": (lambda b, o: b.get(o) != 0, lambda b, o, v: b.put(o, 1 if v else 0)),
    "|u1": (lambda b, o: b.get(o) & 0xFF, lambda b, o, v: b.put(o, _signed(v, 8))),
    "|i1": (lambda b, o: int(b.get(o)), lambda b, o, v: b.put(o, _signed(v, 8))),
    "<u2": (lambda b, o: b.getShort(o) & 0xFFFF, lambda b, o, v: b.putShort(o, _signed(v, 16))),
    "<i2": (lambda b, o: int(b.getShort(o)), lambda b, o, v: b.putShort(o, _signed(v, 16))),
    "<u4": (lambda b, o: b.getInt(o) & 0xFFFFFFFF, lambda b, o, v: b.putInt(o, _signed(v, 32))),
    "<i4": (lambda b, o: int(b.getInt(o)), lambda b, o, v: b.putInt(o, _signed(v, 32))),
    "<u8": (lambda b, o: _u64(b.getLong(o)), lambda b, o, v: b.putLong(o, _signed(v, 64))),
    "<i8": (lambda b, o: int(b.getLong(o)), lambda b, o, v: b.putLong(o, _signed(v, 64))),
    "<f2": (
        lambda b, o: _half_to_float(b.getShort(o) & 0xFFFF),
        lambda b, o, v: b.putShort(o, _signed(_float_to_half(v), 16)),
    ),
    "<f4": (lambda b, o: float(b.getFloat(o)), lambda b, o, v: b.putFloat(o, float(v))),
    "<f8": (lambda b, o: float(b.getDouble(o)), lambda b, o, v: b.putDouble(o, float(v))),
    "<c8": (
        lambda b, o: complex(b.getFloat(o), b.getFloat(o + 4)),
        lambda b, o, v: (b.putFloat(o, complex(v).real), b.putFloat(o + 4, complex(v).imag)),
    ),
    "<c16": (
        lambda b, o: complex(b.getDouble(o), b.getDouble(o + 8)),
        lambda b, o, v: (b.putDouble(o, complex(v).real), b.putDouble(o + 8, complex(v).imag)),
    ),
}


def zeros(shape, dtype="<f8", meta=None):
    """A new zero-filled array in a segment this process owns (Jython only); sending
    it moves it to the host. ``dtype`` is a typestr (``"<u2"``) or a numpy name
    (``"uint16"``); ``meta`` as in SEGMENT_FORMAT.md §6."""
    if not JYTHON:
        raise Error("shared arrays need Jython (or the main helper with numpy)")
    typestr = check_dtype(dtype)
    if isinstance(shape, integer_types):
        shape = (shape,)
    shape = tuple(int(n) for n in shape)
    if len(shape) > MAX_NDIM or any(n < 0 for n in shape):
        raise LayoutError("shape %s: at most %d non-negative entries" % (shape, MAX_NDIM))
    itemsize = DTYPES[typestr]
    strides = _c_strides(shape, itemsize)
    meta_dict, meta_bytes = encode_meta(meta, len(shape))
    flags = _layout_flags(shape, strides, itemsize)
    raw, header_len, data_len = encode_header(
        typestr, shape, strides, meta_bytes, flags, 0, os.getpid(), 0
    )
    total = -(-(header_len + data_len) // PAGE) * PAGE
    p = _posix()
    fl = _open_flags()
    for _ in range(8):
        name = _new_name()
        path = os.path.join(_SHM_DIR, name[1:])
        fd = p.open(path, fl["O_CREAT"] | fl["O_EXCL"] | fl["O_RDWR"] | fl["O_NOFOLLOW"], 0o600)
        if fd >= 0:
            break
        e = p.errno()
        if e != 17:
            raise SegmentError("segment %s: create failed: %s" % (name, p.strerror(e)), _errno_problem(e), name, e)
    else:
        raise SegmentError("segment %s: create failed: name taken" % name, "create", name)
    try:
        try:
            p.fchmod(fd, 0o600)
            if p.ftruncate(fd, total) != 0:
                e = p.errno()
                raise SegmentError("segment %s: resize failed: %s" % (name, p.strerror(e)), "create", name, e)
            err = _posix_fallocate(fd, total)
            if err == 28:
                raise SegmentError(
                    "segment %s: no space for %d bytes of shared memory (is /dev/shm full?)"
                    % (name, total), "no space", name, err,
                )
            if err:
                raise SegmentError("segment %s: reserving %d bytes failed: %s" % (name, total, p.strerror(err)),
                                   "create", name, err)
            hw = _jmap(fd, True, 0, header_len)
            import jarray

            hw.position(0)
            hw.put(jarray.array([b - 256 if b > 127 else b for b in bytearray(raw)], "b"))
            hw.putInt(_OFF_VERSION, SEGMENT_VERSION)  # the version stamp, last
            windows = _map_windows(fd, True, header_len, data_len)
        finally:
            p.close(fd)
    except _CATCH:
        p.unlink(path)
        raise
    _own(name, path)
    header = parse_header(raw[:_OFF_VERSION] + struct.pack("<I", 1) + raw[_OFF_VERSION + 4:],
                          total, name)
    return SharedArray(name, path, header, windows, None, 0)


empty = zeros
