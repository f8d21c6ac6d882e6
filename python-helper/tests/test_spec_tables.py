"""The shared tables under spec/ against the Python helpers and the documents.

``spec/message_types.tsv`` lists every frame message type, ``spec/header_rejections.tsv``
every check that rejects a segment header; tests/spec_tables.rs checks the same rows
against the Rust side. Here: the constants of ``_worker`` and ``_transfer`` (and of the
legacy helper), the types the worker's dispatch handles, PROTOCOL.md's message table and
headings, and, for each rejection, a header built to fail exactly that check, which
``_segment.parse_header`` (and the legacy helper's) must refuse with the row's code.
"""

from __future__ import annotations

import inspect
import re
import struct
from pathlib import Path

import pytest

import pixgate_legacy as legacy
from pixgate import _segment, _transfer, _worker
from pixgate._errors import HeaderError

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec"
GOLDEN = ROOT / "tests" / "golden" / "u16_c.hdr"
# The segment size the golden header is parsed against unless a row says otherwise.
FILE_SIZE = 8192


def read_table(name: str) -> list[dict[str, str]]:
    """The rows of a TSV under spec/: '#' lines are comments, the first other line
    names the columns."""
    lines = [
        line
        for line in (SPEC / name).read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    columns = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == len(columns), f"{name}: {line!r}"
        rows.append(dict(zip(columns, cells)))
    return rows


MESSAGE_TYPES = read_table("message_types.tsv")
REJECTIONS = read_table("header_rejections.tsv")


def constant_block(path: Path, marker: str) -> dict[str, int]:
    """The ``NAME = number`` lines after the line ``marker`` (and any blank lines) up to
    the next blank line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(marker) + 1
    while not lines[start].strip():
        start += 1
    block: dict[str, int] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        m = re.fullmatch(r"([A-Z_]+) = (\d+)", line)
        assert m, f"{path.name}: {line!r} in the block after {marker!r}"
        block[m.group(1)] = int(m.group(2))
    return block


def table_types() -> dict[str, int]:
    return {row["name"]: int(row["number"]) for row in MESSAGE_TYPES}


# -- message types ------------------------------------------------------------------


def test_the_message_type_table_is_well_formed() -> None:
    numbers = [int(row["number"]) for row in MESSAGE_TYPES]
    assert len(set(numbers)) == len(numbers)
    assert len(table_types()) == len(MESSAGE_TYPES)
    for row in MESSAGE_TYPES:
        origin = "execnet" if int(row["number"]) < 32 else "pixgate"
        assert row["origin"] == origin, row
        assert row["direction"] in ("to_worker", "to_host", "both"), row


def test_the_worker_names_every_message_type_and_no_other() -> None:
    marker = "# Message types: execnet's 0-7, pixgate's own from 32."
    names = constant_block(Path(_worker.__file__), marker)
    # RELEASE is the array layer's (it loads with the first array); so is a second FORGET.
    assert "RELEASE" not in names
    names["RELEASE"] = _transfer.RELEASE
    assert _transfer.FORGET == names["FORGET"]
    assert names == table_types()
    for name, number in names.items():
        module = _transfer if name == "RELEASE" else _worker
        assert getattr(module, name) == number


def test_the_worker_dispatches_what_the_host_sends_it() -> None:
    source = inspect.getsource(_worker._WorkerGateway.dispatch)
    handled = set(re.findall(r"msgtype == ([A-Z_]+)", source))
    sent_to_worker = {r["name"] for r in MESSAGE_TYPES if r["direction"] != "to_host"}
    assert handled == sent_to_worker


def test_the_legacy_helper_numbers_message_types_as_the_table() -> None:
    names = constant_block(Path(legacy.__file__), "# The pipes")
    expected = table_types()
    assert names, "no message types found in pixgate_legacy.py"
    for name, number in names.items():
        assert expected.get(name) == number, name


def _section(document: str, heading: str, next_heading: str) -> str:
    start = document.index(heading)
    return document[start : document.index(next_heading, start)]


def test_protocol_md_has_every_message_type_in_its_table_and_headings() -> None:
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = _section(protocol, "\n## 4. Message types", "\n## 5. ")
    table = {
        int(m.group(1)): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| (\d+) \| ([A-Z_]+) \| (\w+) \|", section, re.M)
    }
    assert table == {int(r["number"]): (r["name"], r["origin"]) for r in MESSAGE_TYPES}
    headings = re.findall(r"^### (4\.\d+) (.*)$", section, re.M)
    for row in MESSAGE_TYPES:
        found = [s for s, title in headings if f"{row['name']} ({row['number']})" in title]
        assert found == [row["section"]], row


# -- header rejections --------------------------------------------------------------


def build(mutation: str) -> tuple[bytes, int]:
    """The golden header with the row's edits applied, and the segment size."""
    data = bytearray(GOLDEN.read_bytes())
    size = FILE_SIZE
    for edit in mutation.split():
        what, _, value = edit.partition("=")
        if what == "file_size":
            size = int(value)
        elif what == "meta":
            block = bytes.fromhex(value)
            data[608 : 608 + len(block)] = block
            struct.pack_into("<I", data, 88, len(block))
        else:
            kind, _, offset = what.partition("@")
            if kind == "bytes":
                raw = bytes.fromhex(value)
            else:
                raw = struct.pack({"u32": "<I", "u64": "<Q", "i64": "<q"}[kind], int(value))
            data[int(offset) : int(offset) + len(raw)] = raw
    return bytes(data), size


BUILDABLE = [r for r in REJECTIONS if r["mutation"] != "-"]
IDS = [f"{r['code']}-{r['rust']}-{i}" for i, r in enumerate(BUILDABLE)]


def test_the_golden_header_itself_is_accepted() -> None:
    data, size = build("")
    assert _segment.parse_header(data, size).shape == (3, 4, 5)
    assert legacy.parse_header(data, size).shape == (3, 4, 5)


@pytest.mark.parametrize("row", BUILDABLE, ids=IDS)
def test_the_helper_refuses_each_header_of_the_table(row: dict[str, str]) -> None:
    data, size = build(row["mutation"])
    if row["code"] == "-":
        _segment.parse_header(data, size)  # a check Python has no need of
        return
    with pytest.raises(HeaderError) as info:
        _segment.parse_header(data, size, "/pxg-1-0123456789abcdef")
    assert info.value.problem == row["code"], str(info.value)


@pytest.mark.parametrize("row", BUILDABLE, ids=IDS)
def test_the_legacy_helper_refuses_each_header_of_the_table(row: dict[str, str]) -> None:
    data, size = build(row["mutation"])
    if row["code"] == "-":
        legacy.parse_header(data, size)
        return
    with pytest.raises(legacy.HeaderError) as info:
        legacy.parse_header(data, size, "/pxg-1-0123456789abcdef")
    assert info.value.problem == row["code"], str(info.value)


# The problems of _segment's docstring table that are not about a header's contents:
# the name, the file's stat, a received descriptor (docs/SEGMENT_FORMAT.md §8, steps 0
# and 1 but the size).
NOT_HEADER = {"name", "not found", "permission", "open", "not a file", "owner", "mode"}
NOT_HEADER |= {"not sealed", "access", "offset"}


def test_every_header_problem_of_the_helper_is_in_the_table() -> None:
    codes = {r["code"] for r in REJECTIONS} - {"-"}
    doc = _segment.__doc__ or ""
    documented = set(re.findall(r"^``([a-z_ ]+)``", doc, re.M))
    assert documented - NOT_HEADER == codes
    source = Path(_segment.__file__).read_text(encoding="utf-8")
    raised = set(re.findall(r'_bad\(\s*\w+,\s*"([a-z_ ]+)"', source))
    raised |= set(re.findall(r'\(\("(\w+)", shape\), \("(\w+)", strides\)\)', source)[0])
    assert raised <= codes, raised - codes
    assert codes - raised <= {"meta_types"}  # raised by _read_meta's own helper


def test_segment_format_md_lists_each_rejection_with_both_codes() -> None:
    spec = (ROOT / "docs" / "SEGMENT_FORMAT.md").read_text(encoding="utf-8")
    section = _section(spec, "\n## 8. Validation on open", "\n## 9. ")
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    for row in REJECTIONS:
        code = "—" if row["code"] == "-" else f'`"{row["code"]}"`'
        hits = [
            line
            for line in lines
            if line.startswith(f"| {row['step']} |")
            and re.search(rf"`{row['rust']}\b", line)
            and code in line
        ]
        assert hits, row
