"""Property tests of the Python decoders on arbitrary and damaged bytes.

The codec (``_wire.loads``, ``_wire.loads_payload``) and the header parser
(``_segment.parse_header``) read bytes another process wrote. On any input they either
return or raise their documented error (``LoadError``, ``HeaderError``); and whatever
they accept survives a round trip: encoding it and decoding again gives the same value,
and encoding that gives the same bytes, up to the order of the items of sets (which
depends on the hash seed; see ``canonical_encoding``). The round trips are also run in
fresh interpreters under several fixed hash seeds.

Besides plain random bytes, the inputs are damaged copies of the seed corpus that the
Rust fuzz targets start from (``fuzz/corpus/``, recorded from a real exchange with a
worker), so that the tests reach past the first checks.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import canonical_encoding, same_value

from pixgate import HeaderError, LoadError, _segment, _wire

CORPUS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "fuzz",
    "corpus",
)


def corpus(target: str) -> list[bytes]:
    d = os.path.join(CORPUS, target)
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append(f.read())
    assert out, f"{d} holds no corpus"
    return out


@st.composite
def damaged(draw: st.DrawFn, seeds: list[bytes], max_edits: int = 6) -> bytes:
    """A seed with a few bytes replaced, inserted or deleted, maybe cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "word"]))
        at = draw(st.integers(0, len(data)))
        if kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and at < len(data):
            del data[at]
        elif kind == "word":
            # A length, count or header field overwritten with an interesting value.
            word = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 4096]))
            data[at : at + 4] = word.to_bytes(4, draw(st.sampled_from(["big", "little"])))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ---------------------------------------------------------------------------------------
# The codec

Loader = Callable[[bytes], Any]
Dumper = Callable[[Any], bytes]
FORMS: list[tuple[Loader, Dumper]] = [
    (_wire.loads, _wire.dumps),
    (_wire.loads_payload, _wire.dumps_payload),
]


OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


def check_codec(data: bytes) -> None:
    """Each loader raises only LoadError, and what it accepts round-trips; under any
    string options too, where what loads writes as version 1 and reads back (with the
    defaults, which read an encoding as it was written) as the same value."""
    for loads, dumps in FORMS:
        try:
            value = loads(data)
        except LoadError:
            continue
        encoded = dumps(value)
        back = loads(encoded)
        assert same_value(back, value), (data, value, back)
        again = dumps(back)
        assert canonical_encoding(again) == canonical_encoding(encoded), (data, value)
    for options in OPTIONS:
        for loads_with in (_wire.loads, _wire.loads_payload_with):
            try:
                value = loads_with(data, *options)
            except LoadError:
                continue
            one = _wire.dumps(value, version=1)
            assert same_value(_wire.loads(one), value), (data, options, value)
            assert one[1:] == _wire.dumps(value)[1:]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_load_error_or_round_trip(data: bytes) -> None:
    check_codec(data)
    check_codec(b"\x02" + data)
    check_codec(b"\x01" + data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged(corpus("value_decoder")))
def test_damaged_real_payloads_raise_load_error_or_round_trip(data: bytes) -> None:
    check_codec(data)


def test_real_payloads_round_trip() -> None:
    for data in corpus("value_decoder"):
        # A versioned seed starts with its version byte, a payload with an opcode.
        if data[0] in _wire.DUMPFORMAT_VERSIONS:
            value = _wire.loads(data)
            assert same_value(_wire.loads(_wire.dumps(value, version=data[0])), value)
        else:
            value = _wire.loads_payload(data)
            assert same_value(_wire.loads_payload(_wire.dumps_payload(value)), value)


def set_heavy_inputs(rng: random.Random) -> list[bytes]:
    """Encodings of sets and frozensets of short str and bytes (whose hashes, and so
    iteration orders, change with the hash seed), nested in other containers, and
    damaged copies of them and of the corpus; the same list for every hash seed."""

    def member() -> object:
        n = rng.randrange(1, 3)
        text = "".join(rng.choice("abcxyz") for _ in range(n))
        return text.encode() if rng.random() < 0.3 else text

    values: list[object] = []
    for _ in range(150):
        items = {member() for _ in range(rng.randrange(2, 9))}
        inner = frozenset(items) if rng.random() < 0.5 else set(items)
        values.append(inner)
        values.append((frozenset(items), [1, {"k": inner}]))
        values.append(frozenset({frozenset(items), member(), (member(), member())}))
    inputs = [dump(v) for v in values for dump in (_wire.dumps, _wire.dumps_payload)]
    inputs += corpus("value_decoder")
    damaged_copies = []
    for data in inputs:
        for _ in range(3):
            copy = bytearray(data)
            at = rng.randrange(len(copy))
            copy[at] = rng.randrange(256) if rng.random() < 0.5 else copy[at] ^ 1
            damaged_copies.append(bytes(copy[: rng.randrange(at, len(copy) + 1)]))
    return inputs + damaged_copies


SEEDED_CHILD = """
import random, sys
sys.path.insert(0, sys.argv[1])
from test_fuzz import check_codec, set_heavy_inputs
inputs = set_heavy_inputs(random.Random(20261124))
for data in inputs:
    check_codec(data)
print(len(inputs))
"""


@pytest.mark.parametrize("seed", range(8))
def test_codec_round_trips_hold_under_every_hash_seed(seed: int) -> None:
    # Set iteration order depends on PYTHONHASHSEED, which is fixed when an interpreter
    # starts: each seed needs a fresh one.
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), env.get("PYTHONPATH", "")])
    done = subprocess.run(  # noqa: PLW1510 - checked below
        [sys.executable, "-c", SEEDED_CHILD, tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"PYTHONHASHSEED={seed}:\n{done.stderr[-4000:]}"
    assert int(done.stdout) > 1000


# ---------------------------------------------------------------------------------------
# The header parser


def check_header(data: bytes, file_size: int) -> None:
    """parse_header raises only HeaderError, as a validation that remembers no layout
    would; what it accepts re-encodes to the bytes it was read from (the padding after
    the metadata block aside) and parses back."""
    try:
        uncached: Any = _segment._parse_header(data, file_size, "<bytes>", None)
    except HeaderError as exc:
        uncached = exc.problem
    # Twice: the second may take what the first validated; neither may differ from a
    # validation without that memory.
    for _ in range(2):
        try:
            parsed = _segment.parse_header(data, file_size)
        except HeaderError as exc:
            assert exc.problem == uncached
        else:
            assert parsed == uncached
    if not isinstance(uncached, _segment.Header):
        return
    encoded = _segment.encode_header(parsed)
    used = _segment.FIXED_HEADER_LEN + parsed.meta_len
    assert encoded[:used] == data[:used]
    assert encoded[used:] == bytes(parsed.header_len - used)
    back = _segment.parse_header(encoded, file_size)
    for key in _segment.Header.__slots__:
        assert same_value(getattr(back, key), getattr(parsed, key)), key
    assert _segment.encode_header(back) == encoded


def announced_size(data: bytes) -> int:
    """header_len + data_len as the header states them (0 when it is too short)."""
    if len(data) < 24:
        return 0
    return int.from_bytes(data[12:16], "little") + int.from_bytes(data[16:24], "little")


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from([b"", b"PXGSEG\0\0\x01\0\0\0\0\x10\0\0"]),
    st.binary(max_size=700),
    st.integers(0, 4500),
    st.integers(-(2**70), 2**70),
)
def test_arbitrary_bytes_raise_header_error_or_round_trip(
    prefix: bytes, data: bytes, pad: int, size: int
) -> None:
    data = prefix + data + bytes(pad)
    check_header(data, size)
    check_header(data, announced_size(data))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged(corpus("header_parser"), max_edits=4), st.integers(-8192, 2**64))
def test_damaged_real_headers_raise_header_error_or_round_trip(data: bytes, size: int) -> None:
    check_header(data, size)
    check_header(data, announced_size(data))


def test_real_headers_parse_and_round_trip() -> None:
    for data in corpus("header_parser"):
        size = (announced_size(data) + 4095) // 4096 * 4096
        _segment.parse_header(data, size)
        check_header(data, size)
