"""Tests of pixgate._wire: byte compatibility with execnet, and a decoder that survives
hostile input."""

from __future__ import annotations

import collections
import enum
import fractions
import io
import math
import mmap
import os
import re
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixgate import _wire
from pixgate._errors import DumpError, Error, LoadError, ProtocolError

if os.environ.get("PIXGATE_TEST_STRICT"):
    # `make test`: the cross-checks against execnet must run.
    import execnet
    from execnet import gateway_base
else:
    execnet = pytest.importorskip("execnet")
    gateway_base = pytest.importorskip("execnet.gateway_base")

HELPER_DIR = Path(__file__).resolve().parents[1]

I32_MIN = -(2**31)
I32_MAX = 2**31 - 1


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def v2(body: bytes) -> bytes:
    """A public-form encoding: version byte, ``body``, STOP."""
    return b"\x02" + body + b"Q"


def same_value(a: Any, b: Any) -> bool:
    """Deep equality that also compares types, float bits (NaN, -0.0) and dict order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("!d", a) == struct.pack("!d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return same_value(a.real, b.real) and same_value(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same_value(ka, kb) and same_value(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (set, frozenset)):
        if len(a) != len(b):
            return False
        unmatched = list(b)
        for x in a:
            for i, y in enumerate(unmatched):
                if same_value(x, y):
                    del unmatched[i]
                    break
            else:
                return False
        return True
    return a == b


# Bytes after each opcode: a fixed count, or -1 for an i32 length and that many bytes
# (plus, for U, a u64 generation and a u8 access; for V, token, offset, generation and
# access).
_OP_ARGS = {
    ord("U"): -1,
    ord("V"): -1,
    **dict.fromkeys(b"@BEFGKO", 4),
    **dict.fromkeys(b"AHIMNS", -1),
    **dict.fromkeys(b"CJLPQR", 0),
    ord("D"): 8,
    ord("T"): 16,
}


def canonical_encoding(data: bytes) -> bytes:
    """A valid encoding with the items of every set and frozenset sorted by their own
    (canonical) encodings.

    The encoder writes a set's items in the set's iteration order, which depends on the
    hash seed and on how the set was built: a frozenset decoded from bytes need not
    iterate in the order its items were written. Everything else is written in an order
    the value fixes. So two encodings of equal values agree byte for byte once the items
    of each set are compared as a multiset, which is what this form does.
    """
    pos = 1 if data[:1] == _wire.DUMPFORMAT_VERSION else 0
    head = data[:pos]
    stack: list[bytes] = []
    while True:
        op = data[pos]
        size = _OP_ARGS[op]
        if size < 0:
            tail = {ord("U"): 9, ord("V"): 25}.get(op, 0)
            size = 4 + struct.unpack_from("!i", data, pos + 1)[0] + tail
        chunk = data[pos : pos + 1 + size]
        pos += 1 + size
        if op == ord("Q"):
            (value,) = stack
            return head + value + b"Q"
        if op in b"@OE":
            n = struct.unpack_from("!i", chunk, 1)[0]
            items = stack[len(stack) - n :]
            del stack[len(stack) - n :]
            if op != ord("@"):
                items.sort()
            stack.append(b"".join(items) + chunk)
        elif op == ord("P"):
            value, key = stack.pop(), stack.pop()
            stack[-1] += key + value + chunk
        else:
            stack.append(chunk)


def test_canonical_encoding_sorts_set_items_only() -> None:
    def n(s: str) -> bytes:
        return b"N" + i32(len(s)) + s.encode()

    yx = n("y") + n("x")
    xy = n("x") + n("y")
    assert canonical_encoding(v2(yx + b"E" + i32(2))) == v2(xy + b"E" + i32(2))
    assert canonical_encoding(yx + b"O" + i32(2) + b"Q") == xy + b"O" + i32(2) + b"Q"
    # Tuples, lists and dicts keep their order; nested sets are sorted first.
    for body in (
        yx + b"@" + i32(2),
        b"J" + yx + b"P",
        b"K" + i32(1) + b"F" + i32(0) + n("y") + b"P",
    ):
        assert canonical_encoding(v2(body)) == v2(body)
    nested = v2(n("b") + yx + b"E" + i32(2) + b"E" + i32(2))
    assert canonical_encoding(nested) == v2(n("b") + xy + b"E" + i32(2) + b"E" + i32(2))
    value = {"k": [frozenset({"p", "q", "r"}), ({1, 2, "z"},)], 3: {b"a", b"b"}}
    assert canonical_encoding(_wire.dumps(value)) == canonical_encoding(
        _wire.dumps(_wire.loads(_wire.dumps(value)))
    )


# ---------------------------------------------------------------------------------------
# Edge cases against execnet

NAN = float("nan")

EDGE_CASES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    I32_MAX,
    I32_MAX + 1,
    I32_MIN,
    2**100,
    2**63,
    0.0,
    -0.0,
    1.5,
    NAN,
    float("inf"),
    float("-inf"),
    5e-324,
    1 + 2j,
    complex(NAN, -0.0),
    "",
    "ascii",
    "ä€😀",
    "\x00",
    "x" * 1000,
    b"",
    b"\x00\xff",
    bytes(range(256)),
    [],
    [1, [2]],
    [None, True, False, 1.5, "s", b"b", 2**40, [], {}, (), 1j],
    (),
    (1,),
    (1, "two", 3.0, None),
    {},
    {"a": [1, (2,)]},
    {1: "one", (1, 2): frozenset({3}), None: None, 2.5: b"x"},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({1}),
    frozenset({frozenset({1, 2}), (3, (4,))}),
    [{"k": ({1: [2, {3}]},)}, ([], [[]], [[[]]])],
    ("call", 3, {"a": 1.5, "b": "x"}, None),
    {"args": (1, 2), "kwargs": {"x": [1, 2, 3]}, "id": 7},
    list(range(100)),
    [[i, str(i), float(i)] for i in range(20)],
]


@pytest.mark.parametrize("value", EDGE_CASES, ids=lambda v: repr(v)[:40])
def test_dumps_matches_execnet_and_both_loaders_read_it(value: object) -> None:
    ours = _wire.dumps(value)
    assert ours == execnet.dumps(value)
    assert same_value(execnet.loads(ours), value)
    assert same_value(_wire.loads(ours), value)


@pytest.mark.parametrize("value", EDGE_CASES, ids=lambda v: repr(v)[:40])
def test_payload_form_matches_execnet_dumps_internal(value: object) -> None:
    ours = _wire.dumps_payload(value)
    assert ours == gateway_base.dumps_internal(value)
    assert same_value(gateway_base.loads_internal(ours), value)
    assert same_value(_wire.loads_payload(ours), value)


@pytest.mark.parametrize("value", [I32_MIN - 1, -(2**63), -(2**100), -(10**4299)])
def test_ints_below_i32_are_written_as_longint_that_execnet_reads(value: int) -> None:
    data = _wire.dumps(value)
    digits = str(value).encode()
    assert data == b"\x02H" + i32(len(digits)) + digits + b"Q"
    assert execnet.loads(data) == value
    assert _wire.loads(data) == value


def test_loads_accepts_all_of_execnets_opcode_spellings() -> None:
    # G (LONG) and I (LONGLONG) are Python 2 leftovers; S is UNICODE.
    for data, expected in [
        (v2(b"G" + i32(-5)), -5),
        (v2(b"I" + i32(3) + b"123"), 123),
        (v2(b"H" + i32(2) + b"+7"), 7),
        (v2(b"H" + i32(4) + b"-007"), -7),
        (v2(b"S" + i32(2) + "é".encode()), "é"),
        (v2(b"L" + b"@" + i32(1)), (None,)),
    ]:
        assert _wire.loads(data) == expected
        assert execnet.loads(data) == expected


def test_py2string_loads_as_bytes_publicly_and_as_latin1_text_in_payloads() -> None:
    body = b"M" + i32(2) + b"\xe4x"
    assert _wire.loads(v2(body)) == b"\xe4x"
    assert execnet.loads(v2(body)) == b"\xe4x"
    assert _wire.loads_payload(body + b"Q") == "äx"
    assert gateway_base.loads_internal(body + b"Q") == "äx"


# Every string opcode, as a tuple: py2 str b"\xe9", py3 str "é", unicode "é", bytes.
STRING_KINDS = (
    b"M" + i32(1) + b"\xe9"
    + b"N" + i32(2) + "é".encode()
    + b"S" + i32(2) + "é".encode()
    + b"A" + i32(1) + b"\xe9"
    + b"@" + i32(4)
)
OPTION_PAIRS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize(("py2", "py3"), OPTION_PAIRS)
def test_string_options_load_each_opcode_as_execnet_does(py2: bool, py3: bool) -> None:
    data = v2(STRING_KINDS)
    ours = _wire.loads(data, py2str_as_py3str=py2, py3str_as_py2str=py3)
    assert same_value(ours, execnet.loads(data, py2str_as_py3str=py2, py3str_as_py2str=py3))
    m, n, _, _ = ours
    assert m == ("é" if py2 else b"\xe9")
    assert n == ("é".encode() if py3 else "é")
    payload = STRING_KINDS + b"Q"
    theirs = gateway_base.loads_internal(payload, strconfig=(py2, py3))
    assert same_value(_wire.loads_payload_with(payload, py2, py3), theirs)
    # Version 1 loads the same (execnet 2.x refuses it; tests/test_execnet_versions.py
    # checks execnet 1.9 itself).
    assert same_value(_wire.loads(b"\x01" + data[1:], py2, py3), ours)


def test_py3str_as_py2str_also_applies_to_lists_of_strings() -> None:
    value = ["a", "é", 1, None, "b"]
    data = _wire.dumps(value)
    assert _wire.loads(data, py3str_as_py2str=True) == [b"a", "é".encode(), 1, None, b"b"]
    assert execnet.loads(data, py3str_as_py2str=True) == [b"a", "é".encode(), 1, None, b"b"]
    # execnet keeps the raw bytes, utf-8 or not; S (unicode) is always decoded.
    assert _wire.loads(v2(b"N" + i32(1) + b"\xff"), py3str_as_py2str=True) == b"\xff"
    with pytest.raises(LoadError, match="utf-8"):
        _wire.loads(v2(b"S" + i32(1) + b"\xff"), py3str_as_py2str=True)


def test_channel_payload_defaults_are_execnets_channel_defaults() -> None:
    payload = STRING_KINDS + b"Q"
    assert _wire.loads_payload(payload) == _wire.loads_payload_with(payload, True, False)
    assert _wire.loads_payload(payload) == gateway_base.loads_internal(payload)


@pytest.mark.parametrize("value", [0, None, "é", [1, "a"], {"k": (2.5, b"x")}, 2**70])
def test_version_one_differs_from_version_two_in_its_first_byte_only(value: object) -> None:
    one = _wire.dumps(value, version=1)
    two = _wire.dumps(value, version=2)
    assert two == _wire.dumps(value) == execnet.dumps(value)
    assert one == b"\x01" + two[1:]
    assert same_value(_wire.loads(one), value)
    with pytest.raises(execnet.DataFormatError):
        execnet.loads(one)


@pytest.mark.parametrize("version", [0, 3, "2", 2.0, True, None])
def test_dumps_refuses_other_format_versions(version: object) -> None:
    with pytest.raises(ValueError, match="dump format version"):
        _wire.dumps(1, version=version)  # type: ignore[arg-type]


@pytest.mark.parametrize("first", [0, 3, 0x4C, 0xFF])
def test_loads_refuses_other_version_bytes(first: int) -> None:
    with pytest.raises(LoadError, match="expected 0x01 or 0x02"):
        _wire.loads(bytes([first]) + b"LQ")


def test_loads_reads_bytearray_and_memoryviews() -> None:
    data = _wire.dumps({"a": [b"xyz", "é", 1]})
    expected = {"a": [b"xyz", "é", 1]}
    assert _wire.loads(bytearray(data)) == expected
    assert _wire.loads(memoryview(data)) == expected
    loaded = _wire.loads(memoryview(bytearray(data)))
    assert loaded == expected
    assert type(loaded["a"][0]) is bytes
    strided = memoryview(bytes(b for pair in zip(data, data) for b in pair))[::2]
    assert _wire.loads(strided) == expected
    assert _wire.loads_payload(memoryview(data)[1:]) == expected


def test_frame_helpers_match_execnets_message_framing() -> None:
    out = io.BytesIO()
    gateway_base.Message(4, 3, b"payload").to_io(out)
    assert _wire.pack_frame(4, 3, b"payload") == out.getvalue()
    assert _wire.unpack_header(out.getvalue()[:9]) == (4, 3, 7)


# ---------------------------------------------------------------------------------------
# Deliberate differences from execnet


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    def __str__(self) -> str:
        return "not this"


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Color.RED, 1),
        (Name("abc"), "abc"),
        (Point(1, 2), (1, 2)),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(list, b=[2]), {"b": [2]}),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"ab"), b"ab"),
        (memoryview(struct.pack("=2h", 1, 2)).cast("h"), struct.pack("=2h", 1, 2)),
        (memoryview(b"abcdef")[::2], b"ace"),
        (memoryview(b"abcdef").cast("B", (2, 3)), b"abcdef"),
        (memoryview(bytearray(b"abcdef"))[1:3], b"bc"),
        (fractions.Fraction(1, 4), 0.25),
        ([Color.RED, {Name("k"): bytearray(b"v")}], [1, {"k": b"v"}]),
    ],
    ids=repr,
)
def test_subclasses_and_buffers_are_written_as_their_base_value(
    value: object, plain: object
) -> None:
    assert _wire.dumps(value) == execnet.dumps(plain)
    assert _wire.dumps_payload(value) == gateway_base.dumps_internal(plain)


class Flags(enum.IntFlag):
    A = 1
    B = 2


class Ratio(float):
    pass


class Items(list):
    pass


class Pair(tuple):
    pass


class Table(dict):
    pass


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Flags.A | Flags.B, 3),
        (Ratio(0.5), 0.5),
        (Items([1, Name("x")]), [1, "x"]),
        (Pair((1, 2)), (1, 2)),
        (Table(a=Color.RED), {"a": 1}),
        ([True, False, Color.RED, 1], [True, False, 1, 1]),
    ],
    ids=repr,
)
def test_subclasses_of_every_base_are_written_as_that_base(value: object, plain: object) -> None:
    # execnet dispatches on the exact type (``save_<type name>``) and refuses these.
    with pytest.raises(execnet.DataFormatError, match="can't serialize"):
        execnet.dumps(value)
    data = _wire.dumps(value)
    assert data == execnet.dumps(plain)
    back = _wire.loads(data)
    assert same_value(back, plain)


def test_bool_stays_bool_and_int_enums_become_int() -> None:
    assert _wire.dumps(True) == b"\x02RQ"
    assert _wire.dumps(Color.RED) == b"\x02F\x00\x00\x00\x01Q"
    assert type(_wire.loads(_wire.dumps(Color.RED))) is int
    assert type(_wire.loads(_wire.dumps([True]))[0]) is bool
    if sys.version_info >= (3, 11):
        word = enum.StrEnum("Word", {"HI": "hi"}).HI
        assert _wire.dumps(word) == execnet.dumps("hi")


def test_ordered_dicts_are_written_in_their_own_order() -> None:
    ordered = collections.OrderedDict(a=1, b=2, c=3)
    ordered.move_to_end("a")
    assert _wire.dumps(ordered) == execnet.dumps({"b": 2, "c": 3, "a": 1})


def test_numpy_scalars_are_written_as_python_numbers() -> None:
    np = pytest.importorskip("numpy")
    for value, plain in [
        (np.int64(-3), -3),
        (np.uint8(200), 200),
        (np.int64(2**40), 2**40),
        (np.float64(1.5), 1.5),
        (np.float32(0.5), 0.5),
        (np.complex64(1 + 2j), 1 + 2j),
        (np.bool_(True), True),
        (np.bool_(False), False),
        (np.str_("s"), "s"),
        (np.bytes_(b"b"), b"b"),
        ([np.int32(1), (np.float64(2.0),)], [1, (2.0,)]),
    ]:
        assert _wire.dumps(value) == execnet.dumps(plain), value
    with pytest.raises(DumpError, match=r"numpy\.ndarray"):
        _wire.dumps(np.zeros(3))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "type object"),
        (Decimal("1.5"), "decimal.Decimal"),
        ([1, {2: io.BytesIO()}], "_io.BytesIO"),
        ("\ud800", "utf-8"),
        (10**5000, "digits"),
        (lambda: None, "function"),
    ],
    ids=["object", "decimal", "nested", "surrogate", "huge-int", "function"],
)
def test_unsupported_values_raise_dump_error_naming_the_problem(
    value: object, message: str
) -> None:
    with pytest.raises(DumpError, match=message):
        _wire.dumps(value)
    with pytest.raises(DumpError, match=message):
        _wire.dumps_payload(value)


def test_dump_error_is_a_pixgate_error_and_a_value_error() -> None:
    with pytest.raises(Error):
        _wire.dumps(object())
    with pytest.raises(ValueError):
        _wire.dumps(object())


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_tuples(depth: int) -> tuple:
    value: tuple = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_nesting_up_to_max_depth_round_trips_and_deeper_is_a_dump_error() -> None:
    for make in (nested_lists, nested_tuples):
        deepest = make(_wire.MAX_DEPTH)
        assert _wire.loads(_wire.dumps(deepest)) == deepest
        with pytest.raises(DumpError, match="nested deeper"):
            _wire.dumps(make(_wire.MAX_DEPTH + 1))
    deep_dict: dict = {}
    for _ in range(_wire.MAX_DEPTH):
        deep_dict = {"k": deep_dict}
    with pytest.raises(DumpError, match="nested deeper"):
        _wire.dumps(deep_dict)


def test_very_deep_values_fail_with_dump_error_not_recursion_error() -> None:
    with pytest.raises(DumpError):
        _wire.dumps(nested_lists(100_000))
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(DumpError):
        _wire.dumps(cyclic)


def test_a_list_that_shrinks_while_being_written_is_a_dump_error() -> None:
    target: list = [0, 0, 0]

    class Shrinker:
        def __index__(self) -> int:
            target.clear()
            return 1

    target[:] = [Shrinker(), [1], [2]]
    with pytest.raises(DumpError, match="changed size"):
        _wire.dumps(target)


def test_lengths_past_i32_are_dump_errors_without_copying() -> None:
    size = 2**31
    try:
        region = mmap.mmap(-1, size)
    except (OSError, OverflowError, ValueError):
        pytest.skip("cannot reserve 2 GiB of address space")
    with region:
        view = memoryview(region)
        try:
            with pytest.raises(DumpError, match="exceeds"):
                _wire.dumps(view)
            with pytest.raises(DumpError, match="exceeds"):
                _wire.pack_frame(4, 1, view)
        finally:
            view.release()


# ---------------------------------------------------------------------------------------
# Property tests against execnet

hashables = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=I32_MIN, max_value=2**200)
    | st.floats()
    | st.complex_numbers()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4).map(tuple) | st.frozensets(children, max_size=4)
    ),
    max_leaves=8,
)

values = st.recursive(
    hashables,
    lambda children: (
        st.lists(children, max_size=6)
        | st.lists(children, max_size=6).map(tuple)
        | st.dictionaries(hashables, children, max_size=5)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_dumps_equals_execnet_and_both_loaders_agree(value: object) -> None:
    ours = _wire.dumps(value)
    theirs = execnet.dumps(value)
    assert ours == theirs
    assert same_value(_wire.loads(theirs), value)
    assert same_value(_wire.loads(theirs), execnet.loads(theirs))
    one = _wire.dumps(value, version=1)
    assert one == b"\x01" + theirs[1:]
    assert same_value(_wire.loads(one), value)
    payload = _wire.dumps_payload(value)
    assert payload == theirs[1:]
    assert same_value(_wire.loads_payload(payload), gateway_base.loads_internal(payload))


string_leaves = st.one_of(
    st.binary(max_size=6).map(lambda b: b"M" + i32(len(b)) + b),
    st.text(max_size=4).map(lambda t: b"N" + i32(len(t.encode())) + t.encode()),
    st.text(max_size=4).map(lambda t: b"S" + i32(len(t.encode())) + t.encode()),
    st.binary(max_size=6).map(lambda b: b"A" + i32(len(b)) + b),
    st.integers(I32_MIN, I32_MAX).map(lambda i: b"G" + i32(i)),
    st.integers(-(2**100), 2**100).map(lambda i: b"I" + i32(len(str(i))) + str(i).encode()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(string_leaves, max_size=8), st.sampled_from(OPTION_PAIRS))
def test_legacy_opcodes_load_as_execnet_loads_them(
    leaves: list[bytes], options: tuple[bool, bool]
) -> None:
    body = b"".join(leaves) + b"@" + i32(len(leaves))
    ours = _wire.loads(v2(body), *options)
    assert same_value(ours, execnet.loads(v2(body), *options))
    assert same_value(_wire.loads(b"\x01" + v2(body)[1:], *options), ours)
    assert same_value(_wire.loads_payload_with(body + b"Q", *options), ours)


@settings(max_examples=200, deadline=None)
@given(st.integers(max_value=I32_MIN - 1, min_value=-(10**300)))
def test_negative_big_ints_round_trip_through_both_loaders(value: int) -> None:
    data = _wire.dumps(value)
    assert _wire.loads(data) == value
    assert execnet.loads(data) == value


# ---------------------------------------------------------------------------------------
# Hostile input

RICH = [
    None,
    True,
    -5,
    2**80,
    1.5,
    1j,
    "é",
    b"xy",
    [1, "a", [2.0, None], {"k": (3,)}],
    {frozenset({1}): {4, 5}},
    (),
]


def test_every_truncation_of_a_valid_encoding_is_a_load_error() -> None:
    data = _wire.dumps(RICH)
    for cut in range(len(data)):
        with pytest.raises(LoadError):
            _wire.loads(data[:cut])
        with pytest.raises(LoadError):
            _wire.loads_payload(data[1:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"\x00LQ", "version 0x00 at offset 0, expected 0x01 or 0x02"),
        (b"\x03LQ", "version 0x03"),
        (b"LQ", "version 0x4c"),
        (b"\x02", "missing stop"),
        (b"\x02L", "missing stop"),
        (b"\x02Q", "stop at offset 1 with 0 values"),
        (b"\x02LLQ", "stop at offset 3 with 2 values"),
        (b"\x02LQL", "1 trailing bytes after stop at offset 2"),
        (_wire.dumps([1, 2]) + b"\x00", "trailing bytes"),
        (b"\x02Z", "unknown opcode b'Z' at offset 1"),
        (b"\x02\x00", "unknown opcode"),
        (b"\x02\xff", "unknown opcode"),
        (b"\x02U" + i32(0) + b"Q", "bad array reference at offset 1: name of 0 bytes"),
        (b"\x02U" + i32(256) + b"a" * 256 + bytes(9) + b"Q", "name of 256 bytes"),
        (b"\x02U" + i32(1) + b"a" + bytes(8) + b"\x03Q", "access byte 3"),
        (b"\x02U" + i32(1) + b"\xffQ" + bytes(8) + b"\x00Q", "not UTF-8"),
        (b"\x02U" + i32(5) + b"ab", "truncated input: array"),
        (b"\x02U" + i32(1) + b"a" + bytes(9) + b"U" + i32(1) + b"b" + bytes(9) + b"O" + i32(2) + b"Q",
         "unhashable"),
        (v2(b"B" + i32(1)), "channel references are not supported"),
        # truncated fixed-size arguments
        (b"\x02F\x00\x00", "truncated input: int at offset 1 needs 4 more bytes, 2 remain"),
        (b"\x02D\x00", "truncated input: float"),
        (b"\x02T" + bytes(15), "truncated input: complex"),
        (b"\x02N" + i32(5) + b"abc", "truncated input: py3string"),
        (b"\x02A" + i32(5) + b"abcQ", "truncated input: bytes"),
        # negative lengths and counts
        (v2(b"N" + i32(-1)), "py3string at offset 1 has length -1"),
        (v2(b"S" + i32(-1)), "has length -1"),
        (v2(b"A" + i32(-1)), "bytes at offset 1 has length -1"),
        (v2(b"M" + i32(-1)), "has length -1"),
        (v2(b"H" + i32(-1)), "has length -1"),
        (v2(b"K" + i32(-1)), "newlist at offset 1 has length -1"),
        (v2(b"L@" + i32(-1)), "buildtuple at offset 2 has length -1"),
        (v2(b"LO" + i32(-2)), "has length -2"),
        (v2(b"LE" + i32(-3)), "has length -3"),
        # counts beyond the stack
        (v2(b"L@" + i32(2)), "buildtuple at offset 2 takes 2 values, the stack holds 1"),
        (v2(b"O" + i32(1)), "set at offset 1 takes 1 values, the stack holds 0"),
        (v2(b"LLE" + i32(7)), "takes 7 values"),
        # setitem misuse
        (v2(b"LLP"), "setitem at offset 3 needs 3 values on the stack, found 2"),
        (v2(b"F" + i32(1) + b"F" + i32(0) + b"LP"), "setitem at offset 12 into a int"),
        (v2(b"L@" + i32(1) + b"F" + i32(0) + b"LP"), "into a tuple"),
        (v2(b"K" + i32(2) + b"F" + i32(1) + b"LP" + b"F" + i32(0) + b"LP"), "list index 1"),
        (
            v2(b"K" + i32(1) + b"C" + b"N" + i32(2) + b"abP"),
            "list index False in setitem at offset 14, expected 0",
        ),
        (v2(b"K" + i32(1) + b"N" + i32(1) + b"0LP"), "list index '0'"),
        (v2(b"K" + i32(1) + b"D" + bytes(8) + b"LP"), "list index 0.0"),
        (v2(b"K" + i32(1) + b"L@" + i32(1) + b"LP"), "list index of type tuple"),
        (v2(b"K" + i32(1) + b"N" + i32(60) + b"9" * 60 + b"LP"), "list index '9999"),
        (
            v2(b"K" + i32(1) + b"F" + i32(0) + b"LP" + b"F" + i32(1) + b"LP"),
            "into a list that already holds all 1 items",
        ),
        (v2(b"K" + i32(0) + b"F" + i32(0) + b"LP"), "already holds all 0 items"),
        # lists used before they are complete
        # (short bodies would trip the 7-bytes-per-item bound first, so strings pad them)
        (
            v2(b"K" + i32(2) + b"F" + i32(0) + b"N" + i32(3) + b"abcP"),
            "list used at offset 20 holds 1 of its 2 items",
        ),
        (
            v2(b"K" + i32(2) + b"F" + i32(0) + b"N" + i32(3) + b"abcP@" + i32(1)),
            "list used at offset 20 holds 1 of its 2 items",
        ),
        (
            v2(
                b"K"
                + i32(1)
                + b"F"
                + i32(0)
                + b"K"
                + i32(2)
                + b"F"
                + i32(0)
                + b"N"
                + i32(8)
                + b"abcdefghPP"
            ),
            "list used at offset 35 holds 1 of its 2 items",
        ),
        (
            v2(b"JN" + i32(1) + b"kK" + i32(2) + b"F" + i32(0) + b"N" + i32(8) + b"abcdefghPP"),
            "list used at offset 32 holds 1 of its 2 items",
        ),
        (v2(b"K" + i32(1) + b"LL" + b"Q" * 4), "stop at offset 8 with 3 values"),
        # unhashable keys and members
        (v2(b"JK" + i32(0) + b"LP"), "unhashable dict key of type list in setitem at offset 8"),
        (v2(b"JJLP"), "unhashable dict key of type dict"),
        (v2(b"JK" + i32(0) + b"@" + i32(1) + b"LP"), "unhashable dict key of type tuple"),
        (v2(b"K" + i32(0) + b"O" + i32(1)), "unhashable member in set at offset 6"),
        (v2(b"JE" + i32(1)), "unhashable member in frozenset"),
        # malformed strings and ints
        (v2(b"N" + i32(2) + b"\xc3("), "invalid utf-8 in py3string at offset 6"),
        (v2(b"S" + i32(1) + b"\xff"), "invalid utf-8 in unicode"),
        (v2(b"N" + i32(3) + b"\xed\xa0\x80"), "invalid utf-8"),
        (v2(b"K" + i32(1) + b"F" + i32(0) + b"N" + i32(1) + b"\xffP"), "invalid utf-8"),
        (v2(b"H" + i32(0)), "longint at offset 1 is b''"),
        (v2(b"H" + i32(1) + b"-"), "expected ascii decimal digits"),
        (v2(b"H" + i32(5) + b"1_000"), "expected ascii decimal digits"),
        (v2(b"H" + i32(2) + b" 1"), "expected ascii decimal digits"),
        (v2(b"H" + i32(2) + b"1\n"), "expected ascii decimal digits"),
        (v2(b"I" + i32(3) + b"0x1"), "longlong at offset 1"),
        (v2(b"H" + i32(2) + "١".encode()), "expected ascii decimal digits"),
        (v2(b"H" + i32(5000) + b"1" * 5000), "of 5000 characters"),
        (v2(b"H" + i32(4301) + b"1" * 4301), "at most 4300 digits"),
    ],
    ids=repr,
)
def test_malformed_input_is_a_load_error_naming_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(LoadError, match=re.escape(message)):
        _wire.loads(data)


def test_load_error_messages_are_lower_case() -> None:
    for data in [b"", b"\x02Z", b"\x02K" + i32(9) + b"Q", v2(b"N" + i32(1) + b"\xff")]:
        with pytest.raises(LoadError) as info:
            _wire.loads(data)
        text = str(info.value)
        assert text[0].islower(), text


def test_longint_limits_sit_at_max_int_digits() -> None:
    digits = b"9" * _wire.MAX_INT_DIGITS
    assert _wire.loads(v2(b"H" + i32(len(digits)) + digits)) == int(digits)
    assert _wire.loads(v2(b"H" + i32(len(digits) + 1) + b"-" + digits)) == -int(digits)


def test_payload_loader_rejects_the_same_malformed_input() -> None:
    for data in [b"", b"L", b"LQL", b"Z", b"\x02LQ", b"K" + i32(1) + b"Q", b"U" + i32(0)]:
        with pytest.raises(LoadError):
            _wire.loads_payload(data)


def test_a_huge_list_count_fails_fast_without_allocating() -> None:
    data = b"\x02K\x7f\xff\xff\xff"
    try:
        import tracemalloc
    except ImportError:  # PyPy has no allocation tracing: the time bound alone
        tracemalloc = None
    if tracemalloc is not None:
        tracemalloc.start()
    try:
        start = time.perf_counter()
        for tail in (b"", b"Q", b"L" * 1000):
            with pytest.raises(LoadError, match="announces 2147483647 items"):
                _wire.loads(data + tail)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if tracemalloc is not None else 0
    finally:
        if tracemalloc is not None:
            tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 1_000_000


def test_list_count_is_bounded_by_seven_bytes_per_item() -> None:
    items = b"".join(b"F" + i32(i) + b"LP" for i in range(3))
    assert _wire.loads(v2(b"K" + i32(3) + items)) == [None] * 3
    with pytest.raises(LoadError, match="announces 4 items"):
        _wire.loads(v2(b"K" + i32(4) + items))


@pytest.mark.parametrize(
    "data",
    [
        b"\x02L" + b"@\x00\x00\x00\x01" * 100_000 + b"Q",
        b"\x02L" + b"E\x00\x00\x00\x01" * 100_000 + b"Q",
        b"\x02" + (b"K" + i32(1) + b"F" + i32(0)) * 100_000 + b"L" + b"P" * 100_000 + b"Q",
        b"\x02" + (b"JL") * 100_000 + b"L" + b"P" * 100_000 + b"Q",
        b"\x02" + b"J" + (b"L@" + i32(1) + b"J") * 100_000 + b"LL" + b"P" * 100_001 + b"Q",
    ],
    ids=["tuples", "frozensets", "lists", "dicts", "dict-keys"],
)
def test_nesting_a_hundred_thousand_deep_is_a_load_error(data: bytes) -> None:
    with pytest.raises(LoadError, match="nested deeper than 512"):
        _wire.loads(data)


def test_nesting_at_max_depth_loads_and_one_more_does_not() -> None:
    def tuples(depth: int) -> bytes:
        return b"\x02L" + (b"@" + i32(1)) * depth + b"Q"

    value = _wire.loads(tuples(_wire.MAX_DEPTH))
    for _ in range(_wire.MAX_DEPTH):
        value = value[0]
    assert value is None
    with pytest.raises(LoadError, match="nested deeper"):
        _wire.loads(tuples(_wire.MAX_DEPTH + 1))


def test_lists_mixing_plain_and_nested_items_load_like_execnet() -> None:
    for value in [
        [1, [2], 3, "x", (4,), None, {5: 6}, 7.5, True, b"b", 2**40, I32_MIN],
        [[1]] * 3 + [1] * 3,
        ["é" * 300, "", "\x00"],
    ]:
        data = execnet.dumps(value)
        assert _wire.loads(data) == execnet.loads(data) == value


def lenient_loads(data: bytes) -> object:
    try:
        return _wire.loads(data)
    except LoadError:
        return None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_load_or_raise_load_error(data: bytes) -> None:
    lenient_loads(data)
    lenient_loads(b"\x02" + data)
    try:
        _wire.loads_payload(data)
    except LoadError:
        pass


OPCODE_SOUP = st.lists(
    st.sampled_from(
        [b"L", b"R", b"C", b"P", b"J", b"Q"]
        + [op + i32(n) for op in (b"@", b"O", b"E", b"K", b"F") for n in (0, 1, 2, -1)]
        + [b"N" + i32(1) + b"a", b"D" + bytes(8), b"H" + i32(1) + b"5", b"A" + i32(0)]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(OPCODE_SOUP)
def test_well_formed_opcodes_in_any_order_load_or_raise_load_error(body: bytes) -> None:
    lenient_loads(b"\x02" + body)
    lenient_loads(b"\x02" + body + b"Q")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_encodings_load_or_raise_load_error(value: object, data: st.DataObject) -> None:
    encoded = bytearray(_wire.dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        at = data.draw(st.integers(0, len(encoded)))
        if kind == "replace" and at < len(encoded):
            encoded[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            encoded[at:at] = bytes([data.draw(st.integers(0, 255))])
        elif at < len(encoded):
            del encoded[at]
    lenient_loads(bytes(encoded))


# ---------------------------------------------------------------------------------------
# Framing


@settings(max_examples=200, deadline=None)
@given(st.integers(-128, 127), st.integers(I32_MIN, I32_MAX), st.binary(max_size=64))
def test_frames_round_trip(msgtype: int, channel: int, payload: bytes) -> None:
    frame = _wire.pack_frame(msgtype, channel, payload)
    assert len(frame) == _wire.HEADER.size + len(payload)
    assert _wire.unpack_header(frame[:9]) == (msgtype, channel, len(payload))
    assert frame[9:] == payload


def test_frame_header_with_negative_length_is_a_protocol_error() -> None:
    header = struct.pack("!bii", 4, 1, -1)
    with pytest.raises(ProtocolError, match="payload length -1"):
        _wire.unpack_header(header)
    with pytest.raises(OSError):
        _wire.unpack_header(header)


@pytest.mark.parametrize("size", [0, 8, 10])
def test_frame_header_of_the_wrong_size_is_a_protocol_error(size: int) -> None:
    with pytest.raises(ProtocolError, match=f"header of {size} bytes, expected 9"):
        _wire.unpack_header(bytes(size))


def test_pack_frame_rejects_fields_out_of_range() -> None:
    with pytest.raises(DumpError, match="message type 128"):
        _wire.pack_frame(128, 1)
    with pytest.raises(DumpError, match="channel id"):
        _wire.pack_frame(4, 2**31)
    assert _wire.pack_frame(4, 1, memoryview(b"ab")) == struct.pack("!bii", 4, 1, 2) + b"ab"


# ---------------------------------------------------------------------------------------
# Standalone


def test_module_imports_with_the_standard_library_alone() -> None:
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(HELPER_DIR)!r})\n"
        "import pixgate._wire as w\n"
        "assert w.loads(w.dumps([1, 'a', {2: (3.5,)}])) == [1, 'a', {2: (3.5,)}]\n"
        "third = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'execnet'))\n"
        "print(third)\n"
    )
    # -I ignores the environment and the user's site directory; -S skips site-packages.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_array_references_round_trip_and_match_the_rust_encoding() -> None:
    ref = _wire.ArrayRef("/pxg-1a2b-0123456789abcdef", 7, _wire.LENT)
    value = [ref, (ref,), {"a": ref}]
    assert _wire.loads(_wire.dumps(value)) == value
    payload = _wire.dumps_payload(ref)
    # The same bytes the Rust encoder writes (see src/codec.rs).
    name = b"/pxg-1a2b-0123456789abcdef"
    assert payload == b"U" + i32(len(name)) + name + (7).to_bytes(8, "big") + b"\x01Q"
    with pytest.raises(TypeError):
        hash(ref)
    with pytest.raises(DumpError):
        _wire.dumps(_wire.ArrayRef("", 0, _wire.SHARED))
    with pytest.raises(DumpError):
        _wire.dumps(_wire.ArrayRef("/x", 0, 9))


def test_descriptor_references_round_trip_and_match_the_rust_encoding() -> None:
    name = "/pxg-1a2b-0123456789abcdef"
    ref = _wire.DescriptorRef(name, 3, 0x201000, 7, _wire.LENT)
    value = [ref, (ref,), {"a": ref}]
    assert _wire.loads(_wire.dumps(value)) == value
    assert _wire.loads_payload(_wire.dumps_payload(value)) == value
    payload = _wire.dumps_payload(ref)
    # docs/PROTOCOL.md 5.7, the bytes src/codec.rs writes: V, the name, then token,
    # offset and generation as u64 and the access byte.
    raw = name.encode()
    tail = b"".join(n.to_bytes(8, "big") for n in (3, 0x201000, 7))
    assert payload == b"V" + i32(len(raw)) + raw + tail + b"\x01Q"
    # The fast path for a frame of one reference and the general decoder agree.
    assert _wire.loads_payload(b"K" + i32(1) + b"F" + i32(0) + payload[:-1] + b"PQ") == [ref]
    # RELEASE names a slot of an arena by its offset.
    assert ref.key == name + "@201000"
    assert _wire.DescriptorRef(name, 3, 0, 7, 0).key == name == _wire.ArrayRef(name, 7, 0).key
    assert ref != _wire.DescriptorRef(name, 4, 0x201000, 7, _wire.LENT)
    assert ref != _wire.ArrayRef(name, 7, _wire.LENT)
    with pytest.raises(TypeError):
        hash(ref)
    for bad in (
        _wire.DescriptorRef("", 1, 0, 0, 0),
        _wire.DescriptorRef("x" * 256, 1, 0, 0, 0),
        _wire.DescriptorRef(name, 1, 100, 0, 0),
        _wire.DescriptorRef(name, 1, 0, 0, 3),
        _wire.DescriptorRef(name, -1, 0, 0, 0),
        _wire.DescriptorRef(name, 1, 0, 1 << 64, 0),
    ):
        with pytest.raises(DumpError):
            _wire.dumps_payload(bad)


def _v(name: bytes, *fields: int, access: int = 0, length: int | None = None) -> bytes:
    n = len(name) if length is None else length
    return b"V" + i32(n) + name + b"".join(f.to_bytes(8, "big") for f in fields) + bytes([access])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_v(b"", 1, 0, 0), "name of 0 bytes"),
        (_v(b"/x", 1, 0, 0, length=-1), "name of -1 bytes"),
        (_v(b"/x", 1, 0, 0, length=300), "name of 300 bytes"),
        (_v(b"/\xff", 1, 0, 0), "name is not UTF-8"),
        (_v(b"/x", 1, 4095, 0), "offset 4095 is not a multiple of 4096"),
        (_v(b"/x", 1, (1 << 64) - 4096 + 1, 0), "is not a multiple of 4096"),
        (_v(b"/x", 1, 0, 0, access=3), "access byte 3"),
        (_v(b"/x", 1, 0, 0)[:-2], "truncated input: descriptor array at offset"),
        (_v(b"/x", 1, 0, 0)[:-20], "truncated input"),
        (b"V\x00\x00", "truncated input"),
    ],
)
def test_hostile_descriptor_references_are_refused(data: bytes, message: str) -> None:
    for load in (_wire.loads_payload, lambda d: _wire.loads(b"\x02" + d)):
        with pytest.raises(LoadError, match=message.replace("(", r"\(")):
            load(data + b"Q")


def test_descriptor_references_to_send_are_listed_with_their_token_offsets() -> None:
    name = "/pxg-1a2b-0123456789abcdef"
    events = []

    class Outgoing:
        def __init__(self, tag: str) -> None:
            self.tag = tag
            self.fd = -1

        def abandon(self) -> None:
            events.append(("abandon", self.tag))

        def sent(self) -> None:
            events.append(("sent", self.tag))

    a = _wire.DescriptorRef(name, None, 0, 1, _wire.MOVED, Outgoing("a"))
    b = _wire.DescriptorRef(name, None, 8192, 2, _wire.MOVED, Outgoing("b"))
    back = _wire.DescriptorRef(name, 0, 0, 3, _wire.LENT)
    payload, outgoing = _wire.dumps_payload_fds({"x": [a, "pad" * 9, back], "y": (b,)})
    assert [ref for _, ref in outgoing] == [a, b]
    for i, (offset, _) in enumerate(outgoing):
        payload[offset : offset + 8] = (41 + i).to_bytes(8, "big")
    decoded = _wire.loads_payload(bytes(payload))
    assert decoded["x"][0] == _wire.DescriptorRef(name, 41, 0, 1, _wire.MOVED)
    assert decoded["x"][2] == back
    assert decoded["y"][0] == _wire.DescriptorRef(name, 42, 8192, 2, _wire.MOVED)
    assert events == []
    # Nothing to send: plain bytes, as dumps_payload writes them.
    assert _wire.dumps_payload_fds([1, back]) == (_wire.dumps_payload([1, back]), [])
    assert _wire.dumps_payload_fds(5) == (_wire.dumps_payload(5), [])
    # A failure after a reference was listed abandons it; and a reference to send
    # cannot be written where no descriptor can go with it.
    with pytest.raises(DumpError):
        _wire.dumps_payload_fds([a, object()])
    assert events == [("abandon", "a")]
    with pytest.raises(DumpError, match="can only be sent as a channel item"):
        _wire.dumps(b)
    assert events == [("abandon", "a"), ("abandon", "b")]


def test_array_hooks_convert_both_ways() -> None:
    class Fake:
        pass

    fake = Fake()
    seen = []

    def export(obj: object) -> _wire.ArrayRef | None:
        return _wire.ArrayRef("/pxg-1-00", 3, _wire.MOVED) if obj is fake else None

    def import_(ref: _wire.ArrayRef) -> object:
        seen.append(ref)
        return ("mapped", ref.name)

    _wire.set_array_hooks(export, import_)
    try:
        data = _wire.dumps_payload([fake, 1])
        assert _wire.loads_payload(data) == [("mapped", "/pxg-1-00"), 1]
        assert seen == [_wire.ArrayRef("/pxg-1-00", 3, _wire.MOVED)]
        with pytest.raises(DumpError):
            _wire.dumps_payload(object())
        # The versioned form (also used for segment metadata) never maps arrays.
        assert _wire.loads(_wire.dumps([_wire.ArrayRef("/pxg-1-00", 3, 2)])) == [
            _wire.ArrayRef("/pxg-1-00", 3, 2)
        ]
        assert len(seen) == 1
    finally:
        _wire.set_array_hooks(None, None)
    assert isinstance(_wire.loads_payload(data)[0], _wire.ArrayRef)
