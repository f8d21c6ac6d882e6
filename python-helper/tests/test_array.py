"""Tests of pixgate._array: numpy views of segments, across processes, their lifetime
and ownership, metadata, and the public functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import collect, our_segments
from hypothesis import given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")

import pixgate
from pixgate import _array, _segment, _wire
from pixgate._errors import DTypeError, LayoutError, SegmentError

HELPER_DIR = Path(__file__).resolve().parents[1]
TIMEOUT = 60

DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip




def run_python(code: str, *args: str, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; ``isolated`` ignores PYTHONPATH and
    site-packages (numpy and the installed pixgate)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HELPER_DIR)
    flags = ["-I", "-S"] if isolated else []
    return subprocess.run(  # noqa: PLW1510 - callers check returncode
        [sys.executable, *flags, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def sample(dtype: Any, shape: tuple[int, ...]) -> Any:
    """Distinct, deterministic values of ``dtype`` (negative ones where possible)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    i = np.arange(n, dtype=np.int64)
    if dt.kind == "b":
        values = i % 3 == 1
    elif dt.kind == "c":
        values = (i - 1.5) + 1j * (n - i * 0.25)
    elif dt.kind == "f":
        values = (i - n / 2) * 0.75
    else:
        values = i * 37 - n
    return values.astype(dt).reshape(shape)


# ---------------------------------------------------------------------------------------
# Every dtype and layout, read back in another process

CHILD = r"""
import json, sys
import numpy as np
from pixgate import _array, _segment
out = []
for name in json.loads(sys.argv[1]):
    seg = _segment.open(name)
    arr = _array.map_array(seg)
    seg.close()
    del seg
    row = {"dtype": arr.dtype.str, "shape": list(arr.shape), "strides": list(arr.strides),
           "writeable": arr.flags.writeable, "bytes": arr.tobytes().hex(),
           "meta": _array.meta(arr)}
    try:
        arr[...] = 1
        row["write"] = "allowed"
    except ValueError:
        row["write"] = "refused"
    try:
        arr.flags.writeable = True
        row["set_writeable"] = "allowed"
    except ValueError:
        row["set_writeable"] = "refused"
    out.append(row)
print(json.dumps(out))
"""

LAYOUTS = [
    ("matrix", (3, 4), None),
    ("0-d", (), None),
    ("zero-size axis", (2, 0, 3), None),
    ("32-d", (2, 1, 1, 2) + (1,) * 26 + (3, 1), None),
    ("1-d", (7,), None),
]


def _strided(dtype: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    itemsize = np.dtype(dtype).itemsize
    # Every other element of every other row of a (6, 8) array: non-contiguous.
    return ("strided", (3, 4), (itemsize * 16, itemsize * 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_layout_reads_back_in_another_process(dtype: str) -> None:
    segs = []
    arrays = []
    expected = []
    for label, shape, strides in [*LAYOUTS, _strided(dtype)]:
        typestr = np.dtype(dtype).str
        seg = _segment.create(typestr, shape, strides, meta={"name": label})
        arr = _array.map_array(seg)
        values = sample(dtype, shape)
        arr[...] = values
        if strides is not None:
            assert not arr.flags.c_contiguous and arr.strides == strides
        segs.append(seg)
        arrays.append(arr)
        expected.append((label, shape, arr.strides, values))
    result = run_python(CHILD, json.dumps([s.name for s in segs]))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for row, (label, shape, strides, values) in zip(rows, expected):
        assert row["dtype"] == np.dtype(dtype).str, label
        assert tuple(row["shape"]) == shape and tuple(row["strides"]) == strides, label
        assert bytes.fromhex(row["bytes"]) == values.tobytes(), label
        assert row["writeable"] is False, label
        assert row["write"] == "refused" and row["set_writeable"] == "refused", label
        assert row["meta"] == {"name": label}
    for arr, (_, _, _, values) in zip(arrays, expected):
        np.testing.assert_array_equal(arr, values)  # the reader changed nothing
    del segs, arrays
    collect()


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_constructors_make_every_dtype(dtype: str) -> None:
    values = sample(dtype, (2, 3))
    for arr in (
        pixgate.empty((2, 3), dtype),
        pixgate.zeros((2, 3), dtype),
        pixgate.full((2, 3), values[0, 1], dtype),
        pixgate.asarray(values),
    ):
        assert arr.dtype == np.dtype(dtype) and arr.shape == (2, 3) and arr.flags.c_contiguous
        assert arr.flags.writeable and pixgate.is_shared(arr)
    assert not pixgate.zeros((2, 3), dtype).any()
    np.testing.assert_array_equal(pixgate.asarray(values), values)
    np.testing.assert_array_equal(pixgate.full((2, 3), values[0, 1], dtype), values[0, 1])


@pytest.mark.parametrize(
    "dtype",
    [
        "U3",
        "S2",
        "O",
        "datetime64[s]",
        "timedelta64[s]",
        ">u2",
        ">f8",
        "<u2,<u2",
        "(2,)u1",
        "longdouble",
        "clongdouble",
        "V4",
    ],
)
def test_unsupported_dtypes_raise_type_error(dtype: Any) -> None:
    with pytest.raises(TypeError) as info:
        pixgate.empty(3, dtype)
    assert isinstance(info.value, DTypeError)
    assert str(np.dtype(dtype)) in str(info.value) or np.dtype(dtype).str in str(info.value)


def test_not_a_dtype_raises_type_error() -> None:
    with pytest.raises(DTypeError):
        pixgate.zeros(3, "no such dtype")


@pytest.mark.parametrize("shape", [-1, (2, -3), (1,) * 33, "ab", 2.5, (2.0,)])
def test_bad_shapes_raise_value_error(shape: Any) -> None:
    with pytest.raises(ValueError) as info:
        pixgate.zeros(shape, "u1")
    assert isinstance(info.value, LayoutError)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(DTYPES),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 40)), max_size=4),
)
def test_views_match_a_naive_byte_offset_oracle(dtype: str, axes: list[tuple[int, int]]) -> None:
    typestr = np.dtype(dtype).str
    shape = tuple(n for n, _ in axes)
    strides = tuple(s for _, s in axes)
    seg = _segment.create(typestr, shape, strides)
    arr = _array.map_array(seg)
    data = np.frombuffer(seg.mapping, np.uint8, seg.data_len, seg.header_len)
    data[...] = np.arange(seg.data_len) % (2 if dtype == "bool" else 251)
    itemsize = np.dtype(dtype).itemsize
    for index in np.ndindex(*shape):
        offset = sum(i * s for i, s in zip(index, strides))
        raw = data[offset : offset + itemsize].tobytes()
        assert arr[index].tobytes() == raw
    assert arr.shape == shape and arr.strides == strides
    del arr, data, seg
    collect()


# ---------------------------------------------------------------------------------------
# Read-only shares and lifetime


def test_a_read_only_share_cannot_be_written() -> None:
    owner = pixgate.full((4, 5), 3, "int16")
    before = owner.tobytes()
    reader_seg = _segment.open(_array.segment_of(owner)[0].name)
    shared = _array.map_array(reader_seg)
    with pytest.raises(ValueError):
        shared[...] = 1
    with pytest.raises(ValueError):
        shared[0, 0] = 1
    with pytest.raises(ValueError):
        shared.flags.writeable = True
    with pytest.raises(ValueError):
        np.add(shared, 1, out=shared)
    with pytest.raises(ValueError):
        shared.view(np.uint8).flags.writeable = True
    with pytest.raises(TypeError):
        reader_seg.mapping[reader_seg.header_len] = 0
    assert owner.tobytes() == before and shared.tobytes() == before


def test_a_lent_share_writes_through() -> None:
    owner = pixgate.zeros((3,), "float32")
    lent = _array.map_array(_segment.open(_array.segment_of(owner)[0].name, writable=True))
    lent[1] = 2.5
    assert owner[1] == 2.5 and lent.flags.writeable


def test_the_array_keeps_its_mapping_alive() -> None:
    seg = _segment.create("<f8", (100,))
    arr = _array.map_array(seg)
    arr[...] = np.arange(100)
    reader = _segment.open(seg.name)
    view = _array.map_array(reader)[10:20]
    reader.close()
    seg.close()
    assert seg.closed and reader.closed
    assert mapped(seg.name)  # the arrays still use the mapping
    del seg, reader
    collect()
    # The owner's segment object is alive through its array, so nothing was unlinked.
    assert len(our_segments()) == 1
    np.testing.assert_array_equal(view, np.arange(10, 20))
    arr[15] = -1
    assert view[5] == -1
    del arr
    collect()
    # The segment is unlinked; the reader's mapping of it stays valid.
    assert our_segments() == []
    np.testing.assert_array_equal(view[:5], np.arange(10, 15))
    del view
    collect()


def mapped(name: str) -> bool:
    """Whether this process maps the segment ``name``."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith("/dev/shm" + name) for line in f)


def test_a_closed_segment_is_unmapped_when_its_last_array_goes() -> None:
    seg = _segment.create("<i4", (1000,))
    arr = _array.map_array(seg)
    view = arr[500:]
    del arr
    seg.close()
    # The object is closed; the mapping stays while an array over it exists.
    assert seg.closed
    with pytest.raises(SegmentError) as info:
        _ = seg.generation
    assert info.value.problem == "closed"
    del info  # its traceback holds the mmap (a local of Segment.mapping)
    with pytest.raises(SegmentError):
        _array.map_array(seg)
    assert mapped(seg.name)
    view[...] = 7
    assert int(view.sum()) == 3500
    del view
    collect()
    # No array is left: the mapping is gone (the segment itself stays until its owner,
    # the segment object, goes).
    assert not mapped(seg.name)
    assert our_segments() == [seg.name[1:]]
    seg.close()  # again: nothing happens
    del seg
    collect()


def test_closing_an_unused_segment_unmaps_it() -> None:
    seg = _segment.create("|u1", (3,))
    seg.close()
    assert seg.closed and not mapped(seg.name)
    with pytest.raises(SegmentError) as info:
        _ = seg.generation
    assert info.value.problem == "closed"
    seg.unlink()


# ---------------------------------------------------------------------------------------
# Finding an array's segment


def test_segment_of_tells_the_whole_array_from_views() -> None:
    arr = pixgate.zeros((4, 6), "uint16", dims=["y", "x"])
    seg, whole = _array.segment_of(arr)
    assert whole and seg.shape == (4, 6)
    for view in (arr[...], arr[:], arr.view(), arr.reshape(4, 6), np.asarray(arr)):
        assert _array.segment_of(view) == (seg, True)
    for view in (
        arr[1:],
        arr[:, ::2],
        arr.T,
        arr[0],
        arr.reshape(24),
        arr.view(np.int16),
        arr.view(np.uint8),
        arr[1:][1:],
        arr.view(arr.dtype.newbyteorder()),
    ):
        assert _array.segment_of(view) == (seg, False)
    assert _array.segment_of(np.zeros((4, 6), "uint16")) is None
    assert _array.segment_of(arr.copy()) is None
    assert _array.segment_of([1, 2]) is None
    assert _array.segment_of(None) is None
    assert not pixgate.is_shared(arr.copy()) and pixgate.is_shared(arr[1:])


def test_a_view_keeps_the_segment_and_its_ownership() -> None:
    arr = pixgate.zeros((10,), "int32")
    arr[...] = np.arange(10)
    view = arr[2:5]
    del arr
    collect()
    assert len(our_segments()) == 1
    seg, whole = _array.segment_of(view)
    assert seg.owned and not whole
    np.testing.assert_array_equal(view, [2, 3, 4])
    del view, seg
    collect()
    assert our_segments() == []
    assert _array._anchors == {}


# ---------------------------------------------------------------------------------------
# Ownership


def test_an_owned_array_is_unlinked_when_collected() -> None:
    arr = pixgate.empty((3, 3), "float32")
    name = _array.segment_of(arr)[0].name
    assert os.path.exists("/dev/shm" + name)
    del arr
    collect()
    assert not os.path.exists("/dev/shm" + name)


def test_a_disowned_array_is_kept() -> None:
    arr = pixgate.full((2,), 7, "uint8")
    seg = _array.disown(arr)
    name = seg.name
    assert not seg.owned and name not in _segment.owned_names()
    del arr, seg
    collect()
    assert os.path.exists("/dev/shm" + name)
    received = _array.map_array(_segment.open(name))
    np.testing.assert_array_equal(received, [7, 7])
    del received
    _segment.unlink(name)
    with pytest.raises(TypeError):
        _array.disown(np.zeros(2))


def test_a_process_unlinks_its_arrays_at_exit() -> None:
    script = """
import pixgate
from pixgate import _array
a = pixgate.zeros((5,), "u2")
b = pixgate.asarray([1, 2, 3])
kept = pixgate.full((2,), 1.5)
_array.disown(kept)
names = [_array.segment_of(x)[0].name for x in (a, b, kept)]
print(" ".join(names), flush=True)
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    a, b, kept = result.stdout.split()
    try:
        assert not os.path.exists("/dev/shm" + a) and not os.path.exists("/dev/shm" + b)
        assert os.path.exists("/dev/shm" + kept)
    finally:
        os.unlink("/dev/shm" + kept)


# ---------------------------------------------------------------------------------------
# The public functions


def test_asarray_copies_plain_arrays_and_returns_shared_ones() -> None:
    plain = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    shared = pixgate.asarray(plain, dims=["y", "x"])
    assert shared.dtype == np.dtype("<i4") and shared.flags.c_contiguous
    np.testing.assert_array_equal(shared, plain)
    assert pixgate.asarray(shared) is shared
    assert pixgate.meta(shared) == {"dims": ["y", "x"]}
    again = pixgate.asarray(shared, meta={"name": "copy"})
    assert again is not shared and pixgate.meta(again) == {"name": "copy"}
    part = pixgate.asarray(shared[1:])
    assert part is not shared and pixgate.meta(part) == {}
    np.testing.assert_array_equal(part, plain[1:])
    nested = pixgate.asarray([[1.5, 2], [3, 4]])
    assert nested.dtype == np.float64 and nested.shape == (2, 2)
    assert pixgate.asarray(np.float32(2)).shape == ()
    with pytest.raises(TypeError):
        pixgate.asarray(["a", "b"])


def test_full_takes_the_dtype_of_the_fill_value() -> None:
    assert pixgate.full(3, 2).dtype == np.int64
    assert pixgate.full(3, 2.5).dtype == np.float64
    assert pixgate.full(3, True).dtype == np.bool_
    assert pixgate.full(3, 1j).dtype == np.complex128
    arr = pixgate.full((2, 3), [1, 2, 3], "u1")
    np.testing.assert_array_equal(arr, [[1, 2, 3], [1, 2, 3]])


def test_dtype_spellings() -> None:
    for spelling in (np.uint16, "uint16", "u2", "<u2", "=u2", np.dtype("uint16"), "H"):
        assert pixgate.empty(2, spelling).dtype == np.uint16
    assert pixgate.empty(2, bool).dtype == np.bool_
    assert pixgate.empty(2, float).dtype == np.float64
    assert pixgate.empty(2).dtype == np.float64


def test_meta_of_shared_and_plain_arrays() -> None:
    m = {
        "scale": [2.0, 0.5, 0.5],
        "units": ["um", "um", "um"],
        "channel_names": ["dapi"],
        "name": "stack",
        "attrs": {"objective": "60x", "na": 1.4, "tags": [1, "x"]},
    }
    arr = pixgate.zeros((2, 3, 4), "uint16", dims=["z", "y", "x"], meta=m)
    got = pixgate.meta(arr)
    assert got == {"dims": ["z", "y", "x"], **m}
    assert list(got) == ["dims", "scale", "units", "channel_names", "name", "attrs"]
    got["attrs"]["objective"] = "changed"
    got["dims"].append("q")
    assert pixgate.meta(arr)["attrs"]["objective"] == "60x"
    assert pixgate.meta(arr)["dims"] == ["z", "y", "x"]
    assert pixgate.meta(arr[...]) == pixgate.meta(arr)
    assert pixgate.meta(arr[0]) == {}
    assert pixgate.meta(np.zeros(3)) == {}
    assert pixgate.meta("not an array") == {}
    assert pixgate.meta(pixgate.zeros(3)) == {}
    with pytest.raises(LayoutError):
        pixgate.zeros((2, 3), dims=["y"])
    with pytest.raises(LayoutError):
        pixgate.zeros((2, 3), dims="yx")
    with pytest.raises(LayoutError):
        pixgate.zeros((2, 3), dims=["y", "x"], meta={"dims": ["a", "b"]})
    with pytest.raises(LayoutError):
        pixgate.zeros((2, 3), meta={"color": "red"})
    assert pixgate.meta(pixgate.zeros((2, 3), dims=["y", "x"], meta={"dims": ["y", "x"]}))


def test_metadata_reaches_another_process() -> None:
    arr = pixgate.zeros((2, 3), "float32", dims=["y", "x"], meta={"attrs": {"k": [1, 2.5]}})
    script = """
import json, sys
from pixgate import _array, _segment
print(json.dumps(_array.meta(_array.map_array(_segment.open(sys.argv[1])))))
"""
    result = run_python(script, _array.segment_of(arr)[0].name)
    assert json.loads(result.stdout) == {"dims": ["y", "x"], "attrs": {"k": [1, 2.5]}}


def test_to_xarray_needs_xarray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match="needs xarray"):
        pixgate.to_xarray(pixgate.zeros(3))


def test_to_xarray() -> None:
    xr = pytest.importorskip("xarray", reason="xarray is optional and not installed")
    arr = pixgate.zeros(
        (2, 3, 4),
        "uint16",
        dims=["c", "y", "x"],
        meta={
            "scale": [1.0, 0.5, 0.25],
            "units": ["", "um", "um"],
            "channel_names": ["dapi", "gfp"],
            "name": "cells",
            "attrs": {"objective": "60x"},
        },
    )
    da = pixgate.to_xarray(arr)
    assert isinstance(da, xr.DataArray)
    assert da.dims == ("c", "y", "x") and da.name == "cells"
    assert list(da.coords["c"].values) == ["dapi", "gfp"]
    np.testing.assert_allclose(da.coords["y"].values, [0, 0.5, 1.0])
    np.testing.assert_allclose(da.coords["x"].values, [0, 0.25, 0.5, 0.75])
    assert da.coords["x"].attrs == {"units": "um"}
    assert da.attrs["objective"] == "60x" and da.attrs["units"] == ["", "um", "um"]
    assert da.attrs["channel_names"] == ["dapi", "gfp"] and da.attrs["name"] == "cells"
    arr[1, 2, 3] = 9
    assert int(da[1, 2, 3]) == 9  # the same memory
    plain = pixgate.to_xarray(np.zeros((2, 2)))
    assert plain.dims == ("dim_0", "dim_1") and plain.attrs == {}
    del da, arr
    collect()


# ---------------------------------------------------------------------------------------
# Without numpy


def test_pixgate_imports_without_numpy() -> None:
    script = f"""
import sys
sys.path.insert(0, {str(HELPER_DIR)!r})
import pixgate
assert "numpy" not in sys.modules
assert "pixgate._array" not in sys.modules  # loaded on first use
try:
    import numpy
except ImportError:
    pass
else:
    raise SystemExit("numpy is importable: the test would prove nothing")
assert pixgate.is_shared([1]) is False and pixgate.meta(object()) == {{}}
for call in (lambda: pixgate.zeros(3), lambda: pixgate.asarray([1])):
    try:
        call()
    except ImportError as exc:
        print(exc)
    else:
        raise SystemExit("no ImportError")
"""
    result = run_python(script, isolated=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("numpy" in line for line in lines)


def test_the_array_api_works_when_bootstrapped(tmp_path: Path) -> None:
    # The host can send the package's source over a pipe instead of using the installed
    # package: modules then come from a meta-path finder, with no __file__ and no files.
    sources = {
        "pixgate" + ("" if p.stem == "__init__" else "." + p.stem): p.read_text()
        for p in (HELPER_DIR / "pixgate").glob("*.py")
    }
    script = f"""
import sys
from importlib.machinery import ModuleSpec
src = {sources!r}
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name in src:
            return ModuleSpec(name, self, origin="<pixgate>", is_package=name == "pixgate")
    def create_module(self, spec):
        return None
    def exec_module(self, mod):
        fn = "<pixgate>/" + mod.__name__.replace(".", "/") + ".py"
        exec(compile(src[mod.__name__], fn, "exec"), mod.__dict__)
sys.meta_path.insert(0, Finder())
import pixgate
assert getattr(pixgate, "__file__", None) is None
from pixgate import _array, _segment
arr = pixgate.full((2, 3), 7, "u2", dims=["y", "x"])
seg = _segment.open(_array.segment_of(arr)[0].name)
view = _array.map_array(seg)
print(int(view.sum()), pixgate.meta(view)["dims"], pixgate.is_shared(view))
"""
    (tmp_path / "boot.py").write_text(script)
    result = subprocess.run(  # noqa: PLW1510 - the return code is checked
        [sys.executable, "-I", str(tmp_path / "boot.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "['y',", "'x']", "True"]


@pytest.mark.parametrize("generation", [0, 1, 255, 2**31 - 1, 2**31, 2**40, 2**63, 2**64 - 1])
@pytest.mark.parametrize("access", [0, 1])
def test_release_payloads_are_what_the_codec_writes(generation: int, access: int) -> None:
    from pixgate import _transfer

    held = _transfer._Held("/pxg-1a-0123456789abcdef", generation, access)
    payload = _transfer._release_payload(held)
    assert payload == _wire.dumps_payload((held.name, generation, access))
    assert _wire.loads_payload(payload) == (held.name, generation, access)


# ---------------------------------------------------------------------------------------
# Shapes crossing the wire: what the worker's codec hooks send and map

SENT_SHAPES = [
    (),
    (1,),
    (0,),
    (0, 3),
    (3, 0),
    (3, 0, 2),
    (2, 3),
    (1,) * 32,
    (2,) + (1,) * 30 + (3,),
]


def _sent(arr: Any) -> tuple[tuple[int, ...], list[int]]:
    """What the host would receive for ``arr``: shape and values of the segment its
    reference names (the segment is then removed: the host would own it)."""
    from pixgate import _transfer

    ref = _transfer.export_array(arr)
    assert ref is not None and ref.access == _wire.MOVED
    seg = _segment.open(ref.name)
    try:
        got = _array.map_array(seg)
        return got.shape, [int(x) for x in got.reshape(-1)]
    finally:
        _segment.unlink(ref.name)


@pytest.mark.parametrize("shape", SENT_SHAPES, ids=str)
def test_every_shape_is_sent_as_it_is(shape: tuple[int, ...]) -> None:
    values = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint16).reshape(shape)
    expected = (shape, [int(x) for x in values.reshape(-1)])
    made = pixgate.asarray(values)
    cases = {
        "plain": values,
        "plain, Fortran order": np.array(values, order="F"),
        "shared, whole": made,  # moves
        "shared, again": made,  # copied: it was handed to the host already
        "shared, a view of all of it": made[...],  # whole: copied, as the segment moved
    }
    for label, arr in cases.items():
        assert arr.shape == shape
        assert _sent(arr) == expected, label


def test_0d_arrays_and_views_are_sent_0d() -> None:
    base = np.arange(1, 7, dtype=np.uint16)
    shared = pixgate.asarray(base)
    made = pixgate.empty((), "uint16")
    made[...] = 9
    cases = [
        (np.array(5, dtype=np.uint16), 5),
        (base[4, ...], 5),
        (base.reshape(2, 3)[1, 2, ...], 6),
        (shared[2, ...], 3),
        (np.array(2.5, dtype=np.float32), 2),
        (made, 9),
        (pixgate.full((), 4, "uint16"), 4),
        (pixgate.asarray(np.float32(3)), 3),
    ]
    for arr, value in cases:
        assert arr.ndim == 0
        assert _sent(arr) == ((), [value])


def test_asarray_and_the_constructors_keep_every_shape() -> None:
    for shape in SENT_SHAPES:
        for arr in (
            pixgate.empty(shape, "uint8"),
            pixgate.zeros(shape, "uint8"),
            pixgate.full(shape, 3, "uint8"),
            pixgate.asarray(np.ones(shape, np.uint8)),
            pixgate.asarray(np.ones(shape[::-1], np.uint8).T),
        ):
            assert arr.shape == shape and pixgate.is_shared(arr)
            seg = _array.segment_of(arr)[0]
            assert seg.shape == shape and seg.ndim == len(shape)
            assert seg.header.nbytes == int(np.prod(shape))
    # A 0-d segment holds one element; reopened, its array is 0-d again.
    arr = pixgate.full((), 7, "int32")
    reader = _array.map_array(_segment.open(_array.segment_of(arr)[0].name))
    assert reader.shape == () and reader.strides == () and int(reader) == 7


def test_every_shape_received_is_mapped_as_it_is() -> None:
    from pixgate import _transfer

    for shape in SENT_SHAPES:
        owner = pixgate.asarray(np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape))
        seg = _array.segment_of(owner)[0]
        for access in (_wire.SHARED, _wire.LENT):
            got = _transfer.import_reference(_wire.ArrayRef(seg.name, seg.generation, access))
            assert got.shape == shape and got.strides == owner.strides
            np.testing.assert_array_equal(got, owner)
            del got
        _transfer.forget(seg.name)
    collect()


def test_dir_and_help_list_the_array_api() -> None:
    import pydoc

    import pixgate

    names = dir(pixgate)
    for name in ["zeros", "empty", "full", "asarray", "meta", "frames", "release", "Error"]:
        assert name in names, name
    assert "TYPE_CHECKING" not in names and "annotations" not in names
    text = pydoc.render_doc(pixgate, renderer=pydoc.plaintext)
    for call in ["zeros(", "empty(", "frames(", "release("]:
        assert call in text, call
