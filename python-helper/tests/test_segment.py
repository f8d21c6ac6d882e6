"""Tests of pixgate._segment: the header codec (byte table, golden files shared with the
Rust side, property tests), segment creation and validation on open, and ownership."""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import collect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pixgate
from pixgate import _segment, _wire
from pixgate._errors import DTypeError, Error, HeaderError, LayoutError, SegmentError
from pixgate._segment import DTYPES, Header

HELPER_DIR = Path(__file__).resolve().parents[1]
GOLDEN_DIR = HELPER_DIR.parent / "tests" / "golden"
GOLDEN_CASES = ["u16_c", "f32_meta5d", "bool_0d", "c16_strided", "u8_empty"]
TIMEOUT = 60




def run_python(code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HELPER_DIR)
    return subprocess.run(  # noqa: PLW1510 - callers check returncode
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        **kwargs,
    )


def shm_path(seg_or_name: Any) -> str:
    name = seg_or_name if isinstance(seg_or_name, str) else seg_or_name.name
    return "/dev/shm" + name


class RawMapping:
    """A writable mapping of a segment's file, bypassing all validation."""

    def __init__(self, name: str) -> None:
        self.fd = os.open(shm_path(name), os.O_RDWR)
        self.mm = mmap.mmap(self.fd, os.fstat(self.fd).st_size)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


# ---------------------------------------------------------------------------------------
# The byte table


def test_fixed_part_follows_the_byte_table() -> None:
    h = _segment.build_header("<u2", (3, 5), (20, 4), {"dims": ["y", "x"], "name": "n"})
    h.creator_pid, h.creator_start, h.generation, h.state, h.owner_pid = 7, 8, 9, 2, 11
    b = _segment.encode_header(h)
    meta = _wire.dumps({"dims": ["y", "x"], "name": "n"})
    assert len(b) == 4096 == h.header_len
    assert b[0:8] == b"PXGSEG\0\0"
    assert struct.unpack_from("<I", b, 8) == (1,)
    assert struct.unpack_from("<I", b, 12) == (4096,)
    assert struct.unpack_from("<Q", b, 16) == (2 * 20 + 4 * 4 + 2,)  # data_len: the extent
    assert struct.unpack_from("<Q", b, 24) == (2 * 15,)  # nbytes
    assert b[32:48] == b"<u2" + bytes(13)
    assert struct.unpack_from("<IIII", b, 48) == (2, 2, 0, 7)  # itemsize ndim flags pid
    assert struct.unpack_from("<QQ", b, 64) == (8, 9)  # creator_start generation
    assert struct.unpack_from("<IIII", b, 80) == (2, 11, len(meta), 0)
    assert struct.unpack_from("<32Q", b, 96) == (3, 5) + (0,) * 30
    assert struct.unpack_from("<32q", b, 352) == (20, 4) + (0,) * 30
    assert b[608 : 608 + len(meta)] == meta
    assert b[608 + len(meta) :] == bytes(4096 - 608 - len(meta))


@pytest.mark.parametrize(
    ("shape", "strides", "flags"),
    [
        ((), None, 3),
        ((5,), None, 3),
        ((0, 3), None, 3),
        ((3, 4), None, 1),
        ((3, 4), (2, 6), 2),
        ((3, 1), None, 3),
        ((3, 4), (16, 2), 0),
        ((4,), (4,), 0),
    ],
)
def test_flags_mark_contiguity(shape: tuple[int, ...], strides: Any, flags: int) -> None:
    assert _segment.build_header("<u2", shape, strides).flags == flags


def test_metadata_keys_are_written_in_contract_order() -> None:
    meta = {
        "attrs": {"b": 1, "a": [1.5, None]},
        "name": "stack",
        "channel_names": ["dapi", "gfp"],
        "units": ["s", "um"],
        "scale": [1, 0.25],
        "dims": ("t", "x"),
    }
    normal, encoded = _segment.encode_meta(meta, 2)
    assert list(normal) == ["dims", "scale", "units", "channel_names", "name", "attrs"]
    assert normal["scale"] == [1.0, 0.25] and type(normal["scale"][0]) is float
    assert list(normal["attrs"]) == ["b", "a"]  # attrs keep their own order
    assert encoded == _wire.dumps(normal)
    assert _segment.encode_meta({}, 3) == ({}, b"\x02JQ")
    assert _segment.encode_meta({"attrs": {}, "name": None}, 1) == ({}, b"\x02JQ")


@pytest.mark.parametrize(
    ("meta", "ndim"),
    [
        ({"dims": ["y"]}, 2),
        ({"dims": "yx"}, 2),
        ({"dims": ["y", 1]}, 2),
        ({"scale": [1.0, "2"]}, 2),
        ({"scale": [True, 1.0]}, 2),
        ({"units": ["um"]}, 2),
        ({"channel_names": "dapi"}, 2),
        ({"name": 3}, 2),
        ({"attrs": [1]}, 2),
        ({"attrs": {1: 2}}, 2),
        ({"colour": "red"}, 2),
        (["dims"], 2),
    ],
)
def test_encode_meta_refuses_bad_metadata(meta: Any, ndim: int) -> None:
    with pytest.raises(LayoutError):
        _segment.encode_meta(meta, ndim)


@pytest.mark.parametrize(
    ("dtype", "shape", "strides"),
    [
        ("<u3", (1,), None),
        (">u2", (1,), None),
        ("uint16", (1,), None),
    ],
)
def test_build_header_refuses_unknown_dtypes(dtype: str, shape: Any, strides: Any) -> None:
    with pytest.raises(DTypeError, match=dtype):
        _segment.build_header(dtype, shape, strides)


@pytest.mark.parametrize(
    ("shape", "strides"),
    [
        ((1,) * 33, None),
        ((-1,), None),
        ((2, 3), (6,)),
        ((2, 3), (6, -2)),
        ((2**62, 2**62), None),
        ((2**40,), (2**40,)),
        ("ab", None),
    ],
)
def test_build_header_refuses_bad_layouts(shape: Any, strides: Any) -> None:
    with pytest.raises(LayoutError):
        _segment.build_header("<u2", shape, strides)


def test_metadata_longer_than_a_page_grows_the_header() -> None:
    h = _segment.build_header("|u1", (2,), None, {"attrs": {"text": "x" * 5000}})
    assert h.header_len == 8192
    assert _segment.parse_header(_segment.encode_header(h), 8192 + 4096) == h


def _outcome(parse: Any, data: bytes, size: int) -> Any:
    """What ``parse`` makes of a header: the header, or the problem it was refused for."""
    try:
        return parse(data, size)
    except HeaderError as exc:
        return exc.problem


def test_a_layout_validated_before_is_not_validated_again(monkeypatch: Any) -> None:
    h = _segment.build_header("<u2", (3, 5), None, {"dims": ["y", "x"]})
    size = h.header_len + h.data_len
    first = _segment.encode_header(h)
    _segment.parse_header(first, size)
    validations: list[int] = []
    real = _segment._parse_header

    def counted(*args: Any) -> Any:
        validations.append(1)
        return real(*args)

    def uncached(data: bytes, size: int) -> Any:
        return real(data, size, "<bytes>", None)

    monkeypatch.setattr(_segment, "_parse_header", counted)
    # Another array of the layout: only the fields validation copies differ.
    h.generation, h.state, h.owner_pid, h.creator_pid, h.creator_start = 9, 2, 77, 5, 6
    again = _segment.parse_header(_segment.encode_header(h), size)
    assert not validations
    assert again == h
    # Its metadata dict is its own: changing it changes no later parse.
    again.meta["dims"].append("c")
    assert _segment.parse_header(first, size).meta == {"dims": ["y", "x"]}
    assert not validations
    # Any byte validation reads, changed, is validated anew, with the same outcome.
    offsets = (0, 8, 12, 16, 24, 32, 48, 52, 56, 88, 92, 96, 352, 608)
    for n, at in enumerate(offsets, 1):
        bad = bytearray(first)
        bad[at] ^= 0x40
        got = _outcome(_segment.parse_header, bytes(bad), size)
        assert len(validations) == n, at
        assert got == _outcome(uncached, bytes(bad), size), at
    # ... and so is the same header against another segment size (refused there).
    assert _outcome(_segment.parse_header, first, 4096) == "data_len"
    assert len(validations) == len(offsets) + 1


def test_the_memory_of_validated_layouts_is_bounded() -> None:
    for n in range(1, 3 * _segment._VALIDATED_KEPT):
        h = _segment.build_header("|u1", (n,))
        _segment.parse_header(_segment.encode_header(h), h.header_len + h.data_len)
        assert len(_segment._validated) <= _segment._VALIDATED_KEPT
    # Metadata past the first page is validated each time, never kept.
    big = _segment.build_header("|u1", (2,), None, {"attrs": {"text": "x" * 5000}})
    _segment._validated.clear()
    assert _segment.parse_header(_segment.encode_header(big), 8192 + 4096) == big
    assert not _segment._validated


# ---------------------------------------------------------------------------------------
# Golden files written by the Rust side


def _skip_without_golden_files() -> None:
    if not GOLDEN_DIR.is_dir():
        reason = f"{GOLDEN_DIR} does not exist: the Rust side has not written its golden files"
        if os.environ.get("PIXGATE_TEST_STRICT"):
            pytest.fail(reason)
        pytest.skip(reason)


def _golden(case: str) -> tuple[dict[str, Any], bytes]:
    _skip_without_golden_files()
    expected = json.loads((GOLDEN_DIR / "expected.json").read_text())
    return expected[f"{case}.hdr"], (GOLDEN_DIR / f"{case}.hdr").read_bytes()


def _expected_header(fields: dict[str, Any]) -> Header:
    return Header(
        version=fields["version"],
        header_len=fields["header_len"],
        data_len=fields["data_len"],
        nbytes=fields["nbytes"],
        dtype=fields["dtype"],
        itemsize=fields["itemsize"],
        ndim=fields["ndim"],
        flags=fields["flags"],
        creator_pid=fields["creator_pid"],
        creator_start=fields["creator_start"],
        generation=fields["generation"],
        state=fields["state"],
        owner_pid=fields["owner_pid"],
        shape=tuple(fields["shape"]),
        strides=tuple(fields["strides"]),
        meta=fields["meta"],
        meta_bytes=bytes.fromhex(fields["meta_hex"]),
    )


def test_golden_files_are_all_there() -> None:
    _skip_without_golden_files()
    expected = json.loads((GOLDEN_DIR / "expected.json").read_text())
    assert sorted(expected) == sorted(f"{case}.hdr" for case in GOLDEN_CASES)
    assert sorted(p.name for p in GOLDEN_DIR.glob("*.hdr")) == sorted(expected)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_header_parses_to_the_expected_fields(case: str) -> None:
    fields, data = _golden(case)
    parsed = _segment.parse_header(data, fields["file_size"], f"golden {case}")
    assert data[:8].hex() == fields["magic"]
    assert parsed == _expected_header(fields)
    assert parsed.meta_len == fields["meta_len"]
    assert list(parsed.meta) == list(fields["meta"])
    # The file holds the header alone: a smaller segment would not hold its data.
    if fields["data_len"]:
        with pytest.raises(HeaderError) as info:
            _segment.parse_header(data, fields["file_size"] - 4096)
        assert info.value.problem in ("data_len", "size")


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_header_is_what_the_encoder_writes(case: str) -> None:
    fields, data = _golden(case)
    assert _segment.encode_header(_expected_header(fields)) == data
    # From the layout and metadata alone, the derived fields come out the same.
    h = _segment.build_header(fields["dtype"], fields["shape"], fields["strides"], fields["meta"])
    assert h.meta_bytes.hex() == fields["meta_hex"]
    assert (h.nbytes, h.flags, h.itemsize, h.ndim, h.header_len) == (
        fields["nbytes"],
        fields["flags"],
        fields["itemsize"],
        fields["ndim"],
        fields["header_len"],
    )
    assert h.data_len <= fields["data_len"]  # the extent; a file may give more room
    h.data_len = fields["data_len"]
    h.creator_pid, h.creator_start = fields["creator_pid"], fields["creator_start"]
    h.generation, h.state, h.owner_pid = fields["generation"], fields["state"], fields["owner_pid"]
    assert _segment.encode_header(h) == data


def test_golden_metadata_is_what_execnet_writes() -> None:
    if os.environ.get("PIXGATE_TEST_STRICT"):
        import execnet  # `make test`: the cross-check must run
    else:
        execnet = pytest.importorskip("execnet")
    fields, _ = _golden("f32_meta5d")
    assert execnet.dumps(fields["meta"]).hex() == fields["meta_hex"]


# ---------------------------------------------------------------------------------------
# Property tests of the codec

small_text = st.text(max_size=8)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | small_text
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def layouts(draw: Callable[..., Any]) -> tuple[str, tuple[int, ...], dict[str, Any]]:
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=6)))
    ndim = len(shape)
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["dims"] = draw(st.lists(small_text, min_size=ndim, max_size=ndim))
    if draw(st.booleans()):
        meta["scale"] = draw(st.lists(st.floats(allow_nan=False), min_size=ndim, max_size=ndim))
    if draw(st.booleans()):
        meta["units"] = draw(st.lists(small_text, min_size=ndim, max_size=ndim))
    if draw(st.booleans()):
        meta["channel_names"] = draw(st.lists(small_text, max_size=4))
    if draw(st.booleans()):
        meta["name"] = draw(small_text)
    if draw(st.booleans()):
        meta["attrs"] = draw(st.dictionaries(small_text, plain_values, max_size=4))
    return dtype, shape, meta


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_headers_round_trip(layout: tuple[str, tuple[int, ...], dict[str, Any]]) -> None:
    dtype, shape, meta = layout
    h = _segment.build_header(dtype, shape, None, meta)
    data = _segment.encode_header(h)
    assert len(data) == h.header_len
    parsed = _segment.parse_header(data, h.header_len + h.data_len)
    assert parsed == h
    assert list(parsed.meta) == list(h.meta)
    assert _segment.encode_header(parsed) == data
    # Naive oracle for the size fields.
    assert h.nbytes == DTYPES[dtype] * math.prod(shape)
    assert h.data_len == h.nbytes


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from([b"", b"PXGSEG\0\0\x01\0\0\0\0\x10\0\0"]),
    st.binary(max_size=1200),
    st.integers(0, 5000),
    st.integers(0, 2**20),
)
def test_parser_raises_only_header_errors_on_random_bytes(
    prefix: bytes, data: bytes, pad: int, size: int
) -> None:
    try:
        _segment.parse_header(prefix + data + bytes(pad), size)
    except HeaderError:
        pass


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=6))
def test_parser_raises_only_header_errors_on_damaged_headers(
    layout: tuple[str, tuple[int, ...], dict[str, Any]], damage: list[tuple[int, int]]
) -> None:
    dtype, shape, meta = layout
    h = _segment.build_header(dtype, shape, None, meta)
    data = bytearray(_segment.encode_header(h))
    for offset, value in damage:
        data[offset] = value
    try:
        parsed = _segment.parse_header(data, h.header_len + h.data_len)
    except HeaderError:
        return
    # Whatever got through describes an array inside the data area.
    assert parsed.dtype in DTYPES and parsed.ndim <= 32
    assert parsed.nbytes == parsed.itemsize * math.prod(parsed.shape)
    if 0 not in parsed.shape:
        last = sum((n - 1) * s for n, s in zip(parsed.shape, parsed.strides))
        assert last + parsed.itemsize <= parsed.data_len
    assert parsed.header_len + parsed.data_len <= h.header_len + h.data_len


# ---------------------------------------------------------------------------------------
# Creating and opening segments


def test_create_writes_a_validated_header_and_reserves_memory() -> None:
    seg = _segment.create("<f4", (2, 3), meta={"dims": ["y", "x"], "name": "a"})
    try:
        assert seg.owned and seg.writable
        st_ = os.stat(shm_path(seg))
        assert stat.S_IMODE(st_.st_mode) == 0o600
        assert st_.st_size == 8192
        assert st_.st_blocks * 512 >= 8192  # reserved, not sparse
        assert seg.name.startswith(f"/pxg-{os.getpid():x}-") and len(seg.name) <= 31
        assert (seg.dtype, seg.shape, seg.strides, seg.nbytes) == ("<f4", (2, 3), (12, 4), 24)
        assert (seg.header_len, seg.data_len, seg.flags) == (4096, 24, 1)
        assert seg.meta == {"dims": ["y", "x"], "name": "a"}
        assert (seg.generation, seg.state, seg.owner_pid) == (0, 0, os.getpid())
        assert seg.creator_pid == os.getpid() and seg.creator_start > 0
        other = _segment.open(seg.name)
        assert other.header == seg.header and not other.owned and not other.writable
        other.close()
        assert other.closed
    finally:
        seg.unlink()
    assert not seg.owned
    assert not os.path.exists(shm_path(seg))


def test_names_are_unique_and_well_formed() -> None:
    segs = [_segment.create("|u1", (1,)) for _ in range(20)]
    names = {s.name for s in segs}
    assert len(names) == 20
    for s in segs:
        assert _segment.check_name(s.name) == s.name
        s.unlink()


def test_live_fields_are_read_from_the_mapping() -> None:
    seg = _segment.create("<u8", (4,))
    reader = _segment.open(seg.name)
    try:
        seg.set_state(_segment.STATE_SHARED, owner_pid=12345)
        assert seg.bump_generation() == 1
        assert (reader.generation, reader.state, reader.owner_pid) == (1, 1, 12345)
        with pytest.raises(SegmentError) as info:
            reader.set_state(_segment.STATE_MOVED)
        assert info.value.problem == "read-only"
    finally:
        reader.close()
        seg.unlink()


def test_writable_open_shares_the_memory() -> None:
    seg = _segment.create("|u1", (8,))
    lent = _segment.open(seg.name, writable=True)
    try:
        lent.mapping[4096:4104] = b"abcdefgh"
        assert seg.mapping[4096:4104] == b"abcdefgh"
        readonly = _segment.open(seg.name)
        with pytest.raises(TypeError):
            readonly.mapping[4096] = 0
        readonly.close()
    finally:
        lent.close()
        seg.unlink()


def test_version_is_stamped_after_the_rest_of_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = _segment.encode_header

    def spy(h: Header) -> bytes:
        seen.append(h.version)
        return real(h)

    monkeypatch.setattr(_segment, "encode_header", spy)
    seg = _segment.create("|u1", (1,))
    assert seen == [0]
    assert struct.unpack_from("<I", seg.mapping, 8) == (1,)
    seg.unlink()


@pytest.mark.parametrize(
    "name",
    [
        "pxg-1-0123456789abcdef",
        "/pxg-1-0123456789abcde",
        "/pxg-1-0123456789abcdef0",
        "/pxg-1-0123456789ABCDEF",
        "/pxg--0123456789abcdef",
        "/pxg-123456789-0123456789abcdef",
        "/pxg-1-0123456789abcdef-",
        "/pxg-1-01234567/9abcdef",
        "/psm_1234",
        "/pxg-1-../../etc/passwd",
        "",
        None,
        b"/pxg-1-0123456789abcdef",
    ],
)
def test_open_refuses_bad_names(name: Any) -> None:
    with pytest.raises(SegmentError) as info:
        _segment.open(name)
    assert info.value.problem == "name"


_NAME_SHAPE = re.compile(r"/pxg-[0-9a-f]{1,8}-[0-9a-f]{16}")


def _near_names() -> st.SearchStrategy[str]:
    """Names of the segment shape, and near misses: one character changed, inserted or
    dropped."""

    def edit(name: str, where: int, how: int, char: str) -> str:
        i = where % (len(name) + 1)
        if how == 0:
            return name
        if how == 1:
            return name[:i] + char + name[i + 1 :]
        if how == 2:
            return name[:i] + char + name[i:]
        return name[:i] + name[i + 1 :]

    return st.builds(
        edit,
        st.from_regex(_NAME_SHAPE, fullmatch=True),
        st.integers(0, 40),
        st.integers(0, 3),
        st.sampled_from("0aAfFg-/ \u0660\uff10x"),
    )


@settings(max_examples=500, deadline=None)
@given(st.one_of(_near_names(), st.text(max_size=40)))
def test_a_name_passes_exactly_when_it_has_the_segment_name_shape(name: str) -> None:
    """check_name against the shape spelled as a regular expression."""
    if _NAME_SHAPE.fullmatch(name):
        assert _segment.check_name(name) == name
    else:
        with pytest.raises(SegmentError) as info:
            _segment.check_name(name)
        assert info.value.problem == "name"


def test_open_reports_a_missing_segment() -> None:
    name = f"/pxg-{os.getpid():x}-0000000000000000"
    with pytest.raises(SegmentError) as info:
        _segment.open(name)
    assert info.value.problem == "not found" and info.value.errno == errno.ENOENT
    assert name in str(info.value)
    with pytest.raises(SegmentError):
        _segment.unlink(name)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_open_refuses_group_or_other_access(mode: int) -> None:
    seg = _segment.create("|u1", (1,))
    os.chmod(shm_path(seg), mode)
    try:
        if mode & 0o077:
            with pytest.raises(SegmentError) as info:
                _segment.open(seg.name)
            assert info.value.problem == "mode" and oct(mode) in str(info.value)
        else:
            _segment.open(seg.name).close()
    finally:
        seg.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_open_refuses_a_segment_of_another_user() -> None:
    seg = _segment.create("|u1", (1,))
    os.chown(shm_path(seg), 65534, -1)
    try:
        with pytest.raises(SegmentError) as info:
            _segment.open(seg.name)
        assert info.value.problem == "owner" and "65534" in str(info.value)
    finally:
        seg.unlink()


@pytest.mark.parametrize(("size", "problem"), [(0, "size"), (100, "size"), (4096, "data_len")])
def test_open_refuses_a_truncated_segment(size: int, problem: str) -> None:
    seg = _segment.create("<u2", (3, 4))
    seg.close()
    os.truncate(shm_path(seg), size)
    try:
        with pytest.raises(SegmentError) as info:
            _segment.open(seg.name)
        assert info.value.problem == problem
    finally:
        seg.unlink()


def _set(offset: int, fmt: str, *values: Any) -> Callable[[RawMapping, Any], None]:
    def mutate(raw: RawMapping, seg: Any) -> None:
        struct.pack_into(fmt, raw.mm, offset, *values)

    return mutate


def _both(*mutations: Callable[[RawMapping, Any], None]) -> Callable[[RawMapping, Any], None]:
    def mutate(raw: RawMapping, seg: Any) -> None:
        for m in mutations:
            m(raw, seg)

    return mutate


def _set_meta(value: Any, raw_bytes: bytes | None = None) -> Callable[[RawMapping, Any], None]:
    def mutate(raw: RawMapping, seg: Any) -> None:
        encoded = raw_bytes if raw_bytes is not None else _wire.dumps(value)
        raw.mm[608 : 608 + len(encoded)] = encoded
        struct.pack_into("<I", raw.mm, 88, len(encoded))

    return mutate


# The segment under test: <u2, shape (3, 4), C order, data_len 24, segment size 8192.
CORRUPTIONS = [
    ("magic", _set(0, "8s", b"PXGSEG\0\1"), "magic"),
    ("version 0", _set(8, "<I", 0), "uninitialised"),
    ("version 2", _set(8, "<I", 2), "version"),
    ("header_len odd", _set(12, "<I", 4097), "header_len"),
    ("header_len 0", _set(12, "<I", 0), "header_len"),
    ("header_len beyond the file", _set(12, "<I", 12288), "header_len"),
    ("meta_len past the header", _set(88, "<I", 4096 - 607), "meta_len"),
    ("reserved word", _set(92, "<I", 1), "reserved"),
    ("flags not C-contiguous", _set(56, "<I", 0), "flags"),
    ("flags with an unknown bit", _set(56, "<I", 1 | 8), "flags"),
    ("flags of a pool slot, not C-contiguous", _set(56, "<I", 4), "flags"),
    ("flags after a stride change", _set(352, "<q", 6), "flags"),
    ("data_len beyond the file", _set(16, "<Q", 4097), "data_len"),
    ("data_len huge", _set(16, "<Q", 2**64 - 1), "data_len"),
    ("dtype unknown", _set(32, "16s", b"<u3"), "dtype"),
    ("dtype big-endian", _set(32, "16s", b">u2"), "dtype"),
    ("dtype without padding", _set(32, "16s", b"<u2" + b" " * 13), "dtype"),
    ("dtype not ascii", _set(32, "16s", b"<\xfc2"), "dtype"),
    ("dtype empty", _set(32, "16s", b""), "dtype"),
    ("itemsize mismatch", _set(48, "<I", 4), "itemsize"),
    ("ndim 33", _set(52, "<I", 33), "ndim"),
    ("shape entry beyond ndim", _set(96 + 8 * 2, "<Q", 1), "shape"),
    ("last shape entry", _set(96 + 8 * 31, "<Q", 1), "shape"),
    ("stride entry beyond ndim", _set(352 + 8 * 2, "<q", 2), "strides"),
    ("negative stride", _set(352, "<q", -8), "stride"),
    ("nbytes mismatch", _set(24, "<Q", 25), "nbytes"),
    ("nbytes overflow", _set(96, "<QQ", 2**40, 2**40), "nbytes"),
    ("stride past the data", _set(352, "<q", 100), "extent"),
    ("shape past the data", _set(96, "<Q", 4), "nbytes"),
    ("shape and nbytes past the data", _both(_set(96, "<Q", 4), _set(24, "<Q", 32)), "extent"),
    ("data_len too small", _set(16, "<Q", 23), "extent"),
    ("meta undecodable", _set(608, "B", 3), "meta"),
    ("meta truncated", _set(88, "<I", 10), "meta"),
    ("meta empty", _set(88, "<I", 0), "meta"),
    ("meta not a dict", _set_meta([1, 2]), "meta_types"),
    ("meta dims too short", _set_meta({"dims": ["y"]}), "meta_types"),
    ("meta dims a str", _set_meta({"dims": "yx"}), "meta_types"),
    ("meta scale of str", _set_meta({"scale": ["1", "2"]}), "meta_types"),
    ("meta scale of bools", _set_meta({"scale": [True, 2.0]}), "meta_types"),
    ("meta units of bytes", _set_meta({"units": [b"a", b"b"]}), "meta_types"),
    ("meta channel_names a str", _set_meta({"channel_names": "a"}), "meta_types"),
    ("meta name an int", _set_meta({"name": 3}), "meta_types"),
    ("meta with an int key", _set_meta({1: 2}), "meta_types"),
    (
        "meta holding an array reference",
        _set_meta({"attrs": {"a": _wire.ArrayRef("/pxg-1-0123456789abcdef", 0, 0)}}),
        "meta",
    ),
    (
        "meta holding an array reference under another key",
        _set_meta({"other": [_wire.ArrayRef("/pxg-1-0123456789abcdef", 0, 2)]}),
        "meta",
    ),
    ("meta with an unknown opcode", _set_meta(None, b"\x02J" + b"V" + b"Q"), "meta"),
    (
        "meta repeating a key",
        _set_meta(None, bytes.fromhex("024a53000000016e5300000001615053000000016e5300000001625051")),
        "meta_types",
    ),
    (
        "meta attrs repeating a key",
        _set_meta(
            None,
            bytes.fromhex("024a530000000561747472734a53000000016b4600000001505300000001")
            + bytes.fromhex("6b4600000002505051"),
        ),
        "meta_types",
    ),
    ("meta attrs a list", _set_meta({"attrs": []}), "meta_types"),
    ("meta attrs with int keys", _set_meta({"attrs": {1: 2}}), "meta_types"),
]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [(m, p) for _, m, p in CORRUPTIONS],
    ids=[i for i, _, _ in CORRUPTIONS],
)
def test_open_refuses_a_corrupt_header(
    mutate: Callable[[RawMapping, Any], None], problem: str
) -> None:
    seg = _segment.create("<u2", (3, 4), meta={"dims": ["y", "x"], "scale": [1.0, 0.5]})
    raw = RawMapping(seg.name)
    try:
        mutate(raw, seg)
        with pytest.raises(HeaderError) as info:
            _segment.open(seg.name)
        exc = info.value
        assert exc.problem == problem, str(exc)
        assert exc.segment == seg.name and str(exc).startswith(f"segment {seg.name}: ")
        assert isinstance(exc, (Error, SegmentError, ValueError, OSError))
        # The same bytes fail the same way when parsed directly.
        with pytest.raises(HeaderError) as direct:
            _segment.parse_header(raw.mm[:4096], 8192, seg.name)
        assert direct.value.problem == problem
    finally:
        raw.close()
        seg.unlink()


def test_every_check_has_its_own_problem() -> None:
    problems = {p for _, _, p in CORRUPTIONS}
    assert problems >= {
        "magic", "uninitialised", "version", "header_len", "meta_len", "data_len", "dtype",
        "itemsize", "ndim", "shape", "strides", "stride", "nbytes", "extent", "meta",
        "meta_types", "reserved", "flags",
    }  # fmt: skip


def test_open_checks_stat_before_the_header() -> None:
    seg = _segment.create("<u2", (3, 4))
    raw = RawMapping(seg.name)
    raw.mm[0:8] = b"garbage!"
    os.chmod(shm_path(seg), 0o644)
    try:
        with pytest.raises(SegmentError) as info:
            _segment.open(seg.name)
        assert info.value.problem == "mode"
    finally:
        raw.close()
        seg.unlink()


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ({"future": 1, "name": "x"}, {"name": "x"}),
        ({"name": None, "dims": None, "attrs": None}, {}),
        ({"scale": [1, 2.5], "dims": ("a", "b")}, {"dims": ["a", "b"], "scale": [1.0, 2.5]}),
        ({"channel_names": ("c0",), "attrs": {}}, {"channel_names": ["c0"], "attrs": {}}),
    ],
)
def test_metadata_reader_is_tolerant(written: dict[str, Any], read: dict[str, Any]) -> None:
    seg = _segment.create("|u1", (2, 2))
    raw = RawMapping(seg.name)
    _set_meta(written)(raw, seg)
    try:
        reopened = _segment.open(seg.name)
        assert reopened.meta == read and list(reopened.meta) == list(read)
        reopened.close()
    finally:
        raw.close()
        seg.unlink()


def test_metadata_array_references_are_never_decoded() -> None:
    calls = []

    def import_(ref: Any) -> object:
        calls.append(ref)
        return ref

    seg = _segment.create("|u1", (2,))
    raw = RawMapping(seg.name)
    _set_meta({"attrs": {"a": _wire.ArrayRef(seg.name, 0, _wire.MOVED)}})(raw, seg)
    saved = (_wire._array_export, _wire._array_import)
    _wire.set_array_hooks(None, import_)
    try:
        with pytest.raises(HeaderError) as info:
            _segment.open(seg.name)
        assert info.value.problem == "meta" and "array reference" in str(info.value)
        assert calls == []
    finally:
        _wire.set_array_hooks(*saved)
        raw.close()
        seg.unlink()


def test_segments_in_a_directory() -> None:
    with tempfile.TemporaryDirectory() as directory:
        seg = _segment.create("<i4", (5,), directory=directory)
        path = os.path.join(directory, seg.name[1:])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        other = _segment.open(seg.name, directory=directory)
        assert other.header == seg.header
        other.close()
        os.mkdir(os.path.join(directory, "pxg-1-0123456789abcdef"), 0o700)
        with pytest.raises(SegmentError) as info:
            _segment.open("/pxg-1-0123456789abcdef", directory=directory)
        assert info.value.problem == "not a file"
        del other
        seg_name = seg.name
        del seg
        collect()
        assert not os.path.exists(os.path.join(directory, seg_name[1:]))


def test_no_space_is_reported_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(SegmentError) as info:
        _segment.create("<u2", (10,))
    assert info.value.problem == "no space" and info.value.errno == errno.ENOSPC
    assert _segment.owned_names() == []


@pytest.fixture
def small_tmpfs() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    directory = tempfile.mkdtemp()
    result = subprocess.run(  # noqa: PLW1510 - a failure skips the test
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "pxgtest", directory],
        capture_output=True,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        os.rmdir(directory)
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        collect()
        if subprocess.run(["umount", directory], check=False, timeout=TIMEOUT).returncode:
            subprocess.run(["umount", "-l", directory], check=True, timeout=TIMEOUT)
        os.rmdir(directory)


def test_a_full_tmpfs_is_an_error_at_creation_not_a_sigbus(small_tmpfs: str) -> None:
    keep = _segment.create("|u1", (512 * 1024,), directory=small_tmpfs)
    with pytest.raises(SegmentError) as info:
        _segment.create("|u1", (1024 * 1024,), directory=small_tmpfs)
    assert info.value.problem == "no space"
    assert os.listdir(small_tmpfs) == [keep.name[1:]]
    keep.unlink()
    keep.close()


# ---------------------------------------------------------------------------------------
# Ownership


def test_an_owned_segment_is_unlinked_when_its_object_is_freed() -> None:
    seg = _segment.create("|u1", (1,))
    path = shm_path(seg)
    assert seg.name in _segment.owned_names()
    del seg
    collect()
    assert not os.path.exists(path)


def test_a_disowned_segment_is_kept() -> None:
    seg = _segment.create("|u1", (1,))
    name = seg.name
    seg.disown()
    assert not seg.owned and name not in _segment.owned_names()
    del seg
    collect()
    assert os.path.exists(shm_path(name))
    adopted = _segment.open(name)
    adopted.adopt()
    assert adopted.owned
    del adopted
    collect()
    assert not os.path.exists(shm_path(name))


def test_adopting_a_writable_segment_records_this_process_as_owner() -> None:
    seg = _segment.create("|u1", (1,))
    seg.set_state(_segment.STATE_MOVED, owner_pid=12345)
    seg.disown()
    reader = _segment.open(seg.name)
    reader.adopt()  # read-only: the header cannot be written
    assert (reader.state, reader.owner_pid) == (_segment.STATE_MOVED, 12345)
    reader.disown()
    adopted = _segment.open(seg.name, writable=True)
    adopted.adopt()
    assert (adopted.state, adopted.owner_pid) == (_segment.STATE_OWNED, os.getpid())
    adopted.unlink()


def test_opened_segments_are_not_owned() -> None:
    seg = _segment.create("|u1", (1,))
    other = _segment.open(seg.name)
    del other
    collect()
    assert os.path.exists(shm_path(seg))
    seg.unlink()
    with pytest.raises(SegmentError) as info:
        seg.unlink()
    assert info.value.problem == "not found"


EXIT_SCRIPT = """
import gc, os, sys
from pixgate import _segment
kept = _segment.create("<u2", (4,))
given = _segment.create("<u2", (4,))
given.disown()
print(kept.name, given.name, flush=True)
{ending}
"""


@pytest.mark.parametrize(
    "ending",
    ["pass", "sys.exit(3)", "raise SystemExit('bye')", "raise KeyError('boom')"],
)
def test_a_process_unlinks_what_it_owns_when_it_exits(ending: str) -> None:
    result = run_python(EXIT_SCRIPT.format(ending=ending))
    kept, given = result.stdout.split()
    try:
        assert not os.path.exists(shm_path(kept)), result.stderr
        assert os.path.exists(shm_path(given))
    finally:
        os.unlink(shm_path(given))


def test_a_worker_unlinks_what_it_owns_in_its_cleanup_hooks() -> None:
    # The worker ends with os._exit, so atexit never runs: the gateway's hooks must.
    script = """
import os
from pixgate import _segment, _worker
class FakeGateway:
    hooks = []
    def on_exit(self, hook):
        self.hooks.append(hook)
_worker._gateway = gw = FakeGateway()
seg = _segment.create("|u1", (1,))
print(seg.name, flush=True)
for hook in reversed(gw.hooks):
    hook()
os._exit(0)
"""
    result = run_python(script)
    name = result.stdout.strip()
    assert result.returncode == 0, result.stderr
    assert name.startswith("/pxg-") and not os.path.exists(shm_path(name))


def test_a_forked_child_does_not_unlink_its_parents_segments() -> None:
    script = """
import gc, os, sys
from pixgate import _segment
seg = _segment.create("|u1", (1,))
pid = os.fork()
if pid == 0:
    del seg
    collect()
    sys.exit(0)
os.waitpid(pid, 0)
print(os.path.exists("/dev/shm" + seg.name), flush=True)
"""
    result = run_python(script)
    assert result.stdout.strip() == "True", result.stderr


def test_pixgate_exports_the_segment_errors() -> None:
    assert pixgate.SegmentError is SegmentError and pixgate.HeaderError is HeaderError
    assert issubclass(HeaderError, SegmentError) and issubclass(HeaderError, ValueError)
    assert issubclass(SegmentError, OSError) and issubclass(SegmentError, Error)
    assert issubclass(DTypeError, TypeError) and issubclass(LayoutError, ValueError)


def test_a_fifo_under_a_pixgate_name_is_refused_without_hanging() -> None:
    name = f"/pxg-{os.getpid():x}-{0xF1F0:016x}"
    path = "/dev/shm" + name
    os.mkfifo(path, 0o600)
    try:
        with pytest.raises(_segment.SegmentError):
            _segment.open(name)
    finally:
        os.unlink(path)


def test_reread_follows_a_pool_slot_through_its_uses() -> None:
    seg = _segment.create("<u2", (4, 4))
    try:
        mm = seg.mapping
        struct.pack_into("<I", mm, 56, seg.flags | _segment.FLAG_POOL_SLOT)
        first = _segment.open(seg.name, writable=True)
        assert first.pool_slot
        # A full re-read the first time, then the fast path while only the generation moves.
        second = first.reread()
        assert second is not first and second.shape == (4, 4)
        seg.bump_generation()
        third = second.reread()
        assert third is second and third.header.generation == seg.generation
        # A new layout: a new Segment over the same mapping.
        header = _segment.build_header("<f4", (2, 3), meta={"name": "next"})
        body = _segment.encode_header(header)
        # As the owner rewrites a slot: the layout fields and the metadata; data_len,
        # the creator and the atomic words stay.
        for start, end in ((24, 60), (88, 4096)):
            mm[start:end] = body[start:end]
        struct.pack_into("<I", mm, 56, 1 | _segment.FLAG_POOL_SLOT)
        seg.bump_generation()
        fourth = third.reread()
        assert fourth is not third and fourth.mapping is third.mapping
        assert (fourth.dtype, fourth.shape, fourth.meta["name"]) == ("<f4", (2, 3), "next")
        # A header that no longer validates is refused.
        struct.pack_into("<I", mm, 52, 40)  # ndim 40
        with pytest.raises(HeaderError):
            fourth.reread()
    finally:
        seg.unlink()


def _mapped(name: str) -> bool:
    """Whether this process maps the segment ``name``."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith("/dev/shm" + name) for line in f)


def test_closing_one_segment_object_leaves_the_others_over_its_mapping_open() -> None:
    # Closing must not depend on mmap.close() refusing while buffers exist (PyPy's does
    # not refuse): the mapping goes when its last user does.
    seg = _segment.create("<u2", (4, 4))
    try:
        struct.pack_into("<I", seg.mapping, 56, seg.flags | _segment.FLAG_POOL_SLOT)
        first = _segment.open(seg.name, writable=True)
        second = first.reread()  # a second object over the same mapping
        assert second is not first and second.mapping is first.mapping
        data = second.data
        first.close()
        assert first.closed and not second.closed
        with pytest.raises(SegmentError) as info:
            _ = first.generation
        assert info.value.problem == "closed"
        second.bump_generation()
        assert second.generation == seg.generation == 1
        assert bytes(data[:2]) == b"\0\0"
        del data
        seg.close()  # the creator's own mapping goes at once: nothing else uses it
        assert _mapped(seg.name)  # the reader's mapping is still there
        second.close()
        assert second.closed and not _mapped(seg.name)
        second.close()  # again: nothing happens
    finally:
        _segment.unlink(seg.name)


def test_dropped_segment_objects_end_their_use_of_the_mapping() -> None:
    seg = _segment.create("<u2", (4, 4))
    try:
        mm = seg.mapping
        struct.pack_into("<I", mm, 56, seg.flags | _segment.FLAG_POOL_SLOT)
        reader = _segment.open(seg.name, writable=True)
        mapping = reader._mapping
        # A slot rewritten for one layout after another, re-read each time as the
        # worker does, the old object dropped: the count of uses stays put.
        layouts = [("<f4", (2, 3)), ("<u2", (4, 4)), ("|u1", (5,))]
        for i in range(30):
            dtype, shape = layouts[i % 3]
            header = _segment.build_header(dtype, shape)
            body = _segment.encode_header(header)
            for start, end in ((24, 60), (88, 4096)):
                mm[start:end] = body[start:end]
            struct.pack_into("<I", mm, 56, header.flags | _segment.FLAG_POOL_SLOT)
            seg.bump_generation()
            reader = reader.reread()
            collect()
            assert (reader.dtype, reader.shape) == (dtype, shape)
            assert mapping.uses == 1
        del reader
        collect()
        assert mapping.uses == 0 and mapping.mm is None  # the last object went: unmapped
    finally:
        seg.unlink()


# ---------------------------------------------------------------------------------------
# Anonymous segments (docs/SEGMENT_FORMAT.md 3.2, 3.3, 8 step 0)

F_GET_SEALS = 1034
SEALS = 0x7  # F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW


def memfd_links(name: str) -> int:
    """How many descriptors of this process lead to the anonymous object ``name``."""
    want = f"/memfd:{name[1:]} (deleted)"
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{entry}") == want
        except OSError:
            pass
    return count


def _descriptors_per_mapping() -> int:
    """1 where Python's mmap objects keep a duplicate of their descriptor (before 3.13,
    which added trackfd=False), else 0."""
    fd = os.memfd_create("probe", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4096)
        before = len(os.listdir("/proc/self/fd"))
        mm = _segment._map(fd, 4096, False, "probe", False)
        after = len(os.listdir("/proc/self/fd"))
        mm.close()
    finally:
        os.close(fd)
    return after - before


PER_MAPPING = _descriptors_per_mapping()


def mapped(name: str) -> list[str]:
    """The permissions of this process's mappings of the anonymous object ``name``."""
    label = f"/memfd:{name[1:]}"
    with open("/proc/self/maps") as f:
        return [line.split()[1] for line in f if label in line]


def test_an_anonymous_segment_is_a_sealed_memfd_with_no_name_in_dev_shm() -> None:
    seg = _segment.create_anonymous("<u2", (3, 4, 5), meta={"dims": ["z", "y", "x"]})
    name = seg.name
    try:
        assert seg.anonymous and seg.owned and seg.base == 0 and seg.key == name
        _segment.check_name(name)
        assert name.startswith(f"/pxg-{os.getpid():x}-")
        assert not os.path.exists(shm_path(name))
        assert name not in _segment.owned_names(), "nothing to unlink"
        fd = seg.descriptor
        assert fd is not None
        assert os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{name[1:]} (deleted)"
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_size == 8192
        import fcntl

        assert fcntl.fcntl(fd, F_GET_SEALS) & SEALS == SEALS
        for size in (0, 4096, 1 << 20):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size)
        # The header is as the named ones are, and validates through a descriptor.
        mapping, size = _segment.map_descriptor(fd, name, 0, False)
        other = _segment.at_offset(mapping, size, name, 0, False)
        assert (other.shape, other.meta, other.owner_pid) == ((3, 4, 5), seg.meta, os.getpid())
        assert other.header == seg.header
        other.close()
    finally:
        seg.close()
    del seg
    collect()
    assert memfd_links(name) == 0 and mapped(name) == [], "it goes with its last holder"


def test_an_anonymous_segment_moves_out_with_its_descriptor_or_stays() -> None:
    seg = _segment.create_anonymous("|u1", (16,))
    fd = seg.descriptor
    ref = seg.move_out()
    assert (ref.name, ref.token, ref.offset, ref.access) == (seg.name, None, 0, _wire.MOVED)
    assert ref.outgoing.fd == fd
    assert not seg.owned and seg.descriptor is None
    assert seg.state == _segment.STATE_MOVED
    # Abandoned (nothing was sent): this process's again, descriptor and all.
    ref.outgoing.abandon()
    assert seg.owned and seg.descriptor == fd and seg.state == _segment.STATE_OWNED
    ref.outgoing.abandon()  # once only
    ref = seg.move_out()
    with pytest.raises(SegmentError) as info:
        seg.move_out()
    assert info.value.problem == "descriptor"
    ref.outgoing.sent()
    assert memfd_links(seg.name) == PER_MAPPING, "sent: this process's copy is closed"
    assert seg.descriptor is None and not seg.owned
    seg.close()


def test_an_adopted_anonymous_segment_keeps_the_descriptor_it_came_with() -> None:
    made = _segment.create_anonymous("<f4", (8,))
    name = made.name
    mapping, size = _segment.map_descriptor(made.descriptor, name, 0, True)
    fd = os.dup(made.descriptor)
    made.close()
    del made
    collect()
    seg = _segment.at_offset(mapping, size, name, 0, True)
    assert not seg.owned and seg.descriptor is None
    seg.adopt(fd)
    assert seg.owned and seg.descriptor == fd
    assert (seg.owner_pid, seg.state) == (os.getpid(), _segment.STATE_OWNED)
    seg.close()
    del seg
    collect()
    assert memfd_links(name) == 0 and mapped(name) == []


def _arena(slots: int, data: int, seal: bool = True, mode: int = 0o400) -> tuple[int, str, int]:
    """A memfd holding ``slots`` pool-slot segments of ``data`` bytes each (the layout
    of a pool arena), its name and the slot size."""
    import fcntl

    name = _segment._new_name()
    fd = os.memfd_create(name[1:], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.fchmod(fd, mode)
    header = _segment.build_header("|u1", (data,))
    header.flags |= 4
    slot = header.header_len + -(-data // 4096) * 4096
    os.ftruncate(fd, slot * slots)
    with mmap.mmap(fd, slot * slots) as mm:
        for k in range(slots):
            header.generation = k
            mm[k * slot : k * slot + header.header_len] = _segment.encode_header(header)
            mm[k * slot + header.header_len] = k + 1
    if seal:
        fcntl.fcntl(fd, 1033, SEALS)
    return fd, name, slot


def test_the_slots_of_an_arena_are_segments_at_their_offsets_of_one_mapping() -> None:
    fd, name, slot = _arena(3, 5000)
    try:
        mapping, size = _segment.map_descriptor(fd, name, 2 * slot, True)
        assert size == 3 * slot
        slots = [_segment.at_offset(mapping, size, name, k * slot, True) for k in range(3)]
        assert [s.generation for s in slots] == [0, 1, 2]
        assert [s.base for s in slots] == [0, slot, 2 * slot]
        assert [s.key for s in slots] == [name, f"{name}@{slot:x}", f"{name}@{2 * slot:x}"]
        assert [bytes(s.data[:1]) for s in slots] == [b"\x01", b"\x02", b"\x03"]
        assert all(s.pool_slot and s.data_len == 5000 for s in slots)
        assert mapping.uses == 3
        assert mapped(name) == ["rw-s"], "one mapping for every slot"
        # The live words are the slot's own.
        slots[1].bump_generation()
        slots[1].set_state(_segment.STATE_LENT, owner_pid=7)
        assert [s.generation for s in slots] == [0, 2, 2]
        assert (slots[0].state, slots[0].owner_pid) == (0, os.getpid())
        assert (slots[1].state, slots[1].owner_pid) == (_segment.STATE_LENT, 7)
        # Re-read at a new generation over the same mapping; populated in its range.
        again = slots[1].reread()
        assert again.header.generation == 2 and again.base == slot
        slots[1].bump_generation()
        assert again.reread() is again and again.header.generation == 3
        slots[2].populate()
        for s in [*slots, again]:
            s.close()
        assert mapping.uses == 0 and mapping.mm is None
        assert mapped(name) == []
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("unsealed", "not sealed"),
        ("group readable", "mode"),
        ("read-only for a writable reference", "access"),
        ("offset not a page", "offset"),
        ("offset past the end", "offset"),
        ("a pipe", "not a file"),
        ("bad name", "name"),
    ],
)
def test_a_received_descriptor_is_validated_before_it_is_mapped(case: str, problem: str) -> None:
    mode = 0o440 if "group" in case else 0o400
    fd, name, slot = _arena(2, 100, seal=case != "unsealed", mode=mode)
    closing = [fd]
    offset, writable = 0, False
    try:
        if case.startswith("read-only"):
            fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            closing.append(fd)
            writable = True
        elif case == "offset not a page":
            offset = 100
        elif case == "offset past the end":
            offset = 2 * slot
        elif case == "a pipe":
            fd, w = os.pipe()
            closing += [fd, w]
        elif case == "bad name":
            name = "/pxg-../../x"
        with pytest.raises(SegmentError) as info:
            _segment.map_descriptor(fd, name, offset, writable)
        assert info.value.problem == problem, info.value
        assert mapped(name) == []
    finally:
        for f in closing:
            os.close(f)


def test_a_slot_header_is_validated_at_its_offset_against_the_rest_of_the_object() -> None:
    fd, name, slot = _arena(2, 100)
    try:
        mapping, size = _segment.map_descriptor(fd, name, 0, False)
        mapping.acquire()
        try:
            # The last slot's data may not reach past the object: a header claiming more
            # than the bytes after its offset is refused.
            with mmap.mmap(fd, size) as raw:
                raw[slot + 16 : slot + 24] = (slot).to_bytes(8, "little")
            with pytest.raises(HeaderError) as info:
                _segment.at_offset(mapping, size, name, slot, False)
            assert info.value.problem == "data_len" and f"size {slot}" in str(info.value)
            assert _segment.at_offset(mapping, size, name, 0, False).data_len == 100
        finally:
            mapping.release()
    finally:
        os.close(fd)


def test_no_memory_for_an_anonymous_segment_is_an_error_at_creation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for error in (errno.ENOSPC, errno.ENOMEM):

        def full(fd: int, offset: int, length: int, error: int = error) -> None:
            raise OSError(error, os.strerror(error))

        monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(SegmentError) as info:
            _segment.create_anonymous("<u2", (10,))
        assert info.value.problem == "no space" and info.value.errno == error
        assert sorted(os.listdir("/proc/self/fd")) == before, "the half-made object is gone"


def test_a_mapping_holds_no_descriptor_where_the_interpreter_allows() -> None:
    fd, name, _ = _arena(1, 10)
    try:
        mapping, _ = _segment.map_descriptor(fd, name, 0, False)
        assert memfd_links(name) == 1 + PER_MAPPING
        if sys.version_info >= (3, 13) and sys.implementation.name == "cpython":
            assert PER_MAPPING == 0, "mapped with trackfd=False"
        mapping.acquire()
        mapping.release()
        assert memfd_links(name) == 1
    finally:
        os.close(fd)
    assert memfd_links(name) == 0


def test_metadata_descriptor_references_are_never_decoded() -> None:
    seg = _segment.create("|u1", (2,))
    raw = RawMapping(seg.name)
    _set_meta({"attrs": {"a": _wire.DescriptorRef(seg.name, 1, 0, 0, _wire.MOVED)}})(raw, seg)
    try:
        with pytest.raises(HeaderError) as info:
            _segment.open(seg.name)
        assert info.value.problem == "meta" and "array reference" in str(info.value)
    finally:
        raw.close()
        seg.unlink()
