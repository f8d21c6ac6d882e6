"""pixgate's Python codec against the real execnet releases of both format versions.

The peers: execnet 2.x (format 2, imported here), execnet 1.9 on Python 3 (format 1,
``.venv-execnet19``) and execnet 1.9 on Python 2.7 (format 1, with Python 2's ``str``,
``unicode`` and ``long``); ``make execnet-peers`` installs them. Each dumps the table of
``tests/fixtures/execnet_table.py``; pixgate must load those bytes as execnet does under
the four string options, and pixgate's output in the peer's version must load in the
peer to the table's values. A missing peer is reported as a skip with its reason; under
``PIXGATE_TEST_STRICT`` (``make test``) it is a failure.
"""

from __future__ import annotations

import binascii
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pixgate import _wire

REPO = Path(__file__).resolve().parents[2]
TABLE_SCRIPT = REPO / "tests" / "fixtures" / "execnet_table.py"
OPTIONS = [(False, False), (False, True), (True, False), (True, True)]

if os.environ.get("PIXGATE_TEST_STRICT"):
    import execnet
else:
    execnet = pytest.importorskip("execnet")


def _table() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("execnet_table", TABLE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.TABLE)


def _missing(why: str) -> None:
    message = f"{why} (make execnet-peers)"
    if os.environ.get("PIXGATE_TEST_STRICT"):
        pytest.fail(message)
    pytest.skip(message)


class Peer:
    def __init__(self, label: str, python: str, pythonpath: str | None, version: int) -> None:
        self.label, self.python, self.version = label, python, version
        self.env = dict(os.environ)
        if pythonpath is not None:
            self.env["PYTHONPATH"] = pythonpath
        else:
            self.env.pop("PYTHONPATH", None)

    def run(self, mode: str, text: str = "") -> str:
        out = subprocess.run(
            [self.python, str(TABLE_SCRIPT), mode],
            input=text.encode(),
            capture_output=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, f"{self.label} {mode}: {out.stderr.decode()}"
        return out.stdout.decode()

    def dumped(self) -> list[tuple[str, bytes]]:
        return [
            (name, binascii.unhexlify(data))
            for name, data in (line.split() for line in self.run("dump").splitlines())
        ]


def _peer(label: str, python: str | None, pythonpath: str | None, version: int) -> Peer:
    if python is None or not (os.path.exists(python) or "/" not in python):
        _missing(f"{label}: no interpreter found")
    assert python is not None
    peer = Peer(label, python, pythonpath, version)
    try:
        info = peer.run("info").split()
    except (OSError, AssertionError) as exc:
        _missing(f"{label}: {python} cannot run execnet: {exc}")
    release, byte = info
    assert release.startswith("1.9." if version == 1 else "2."), (label, release)
    assert int(byte, 16) == version
    return peer


def _python2() -> str | None:
    env = os.environ.get("PIXGATE_PYTHON2")
    if env:
        return env
    versions = Path.home() / ".pyenv" / "versions"
    candidates = sorted(str(p / "bin" / "python2.7") for p in versions.glob("2.7*"))
    for candidate in [*candidates, "python2.7"]:
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; sys.exit(sys.version_info[0] != 2)"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def execnet19() -> Peer:
    python = os.environ.get("PIXGATE_EXECNET19_PYTHON") or str(
        REPO / ".venv-execnet19" / "bin" / "python"
    )
    return _peer("execnet 1.9 on Python 3", python, None, 1)


@pytest.fixture(scope="module")
def execnet19_python2() -> Peer:
    path = os.environ.get("PIXGATE_PYTHON2_PATH") or str(REPO / ".py27-execnet19")
    python = _python2()
    if python is None:
        _missing("execnet 1.9 on Python 2.7: no Python 2.7 found")
    return _peer("execnet 1.9 on Python 2.7", python, path, 1)


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types, recursively (dicts in order)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return bool(a == b)


def _check_loads(peer_dumped: list[tuple[str, bytes]], version: int) -> None:
    """pixgate loads each dump as execnet 2.x's loader does (on the same opcodes after
    version byte 2), under every option, in both forms."""
    for name, data in peer_dumped:
        assert data[0] == version, name
        for py2, py3 in OPTIONS:
            ours = _wire.loads(data, py2, py3)
            theirs = execnet.loads(b"\x02" + data[1:], py2, py3)
            assert same(ours, theirs), (name, py2, py3, ours, theirs)
            assert same(_wire.loads_payload_with(data[1:], py2, py3), ours), name


def _check_peer_loads_ours(peer: Peer, names: list[str]) -> None:
    table = _table()
    lines = [
        f"{name} {binascii.hexlify(_wire.dumps(table[name], version=peer.version)).decode()}"
        for name in names
    ]
    results = peer.run("load", "\n".join(lines) + "\n").splitlines()
    assert len(results) == len(names)
    bad = [r for r in results if not r.endswith(" ok")]
    assert not bad, (peer.label, bad)


def test_execnet_2_dumps_load_as_execnet_2_loads_them() -> None:
    table = _table()
    dumped = [(name, execnet.dumps(value)) for name, value in table.items()]
    _check_loads(dumped, 2)
    for name, data in dumped:
        assert _wire.dumps(table[name]) == data, name
        assert same(_wire.loads(data), table[name]), name


def test_execnet_1_9_dumps_load_under_every_option(execnet19: Peer) -> None:
    dumped = execnet19.dumped()
    _check_loads(dumped, 1)
    # And as execnet 1.9 itself loads them (compared by repr), except that on Python 3
    # execnet 1.9 ignores py3str_as_py2str, which pixgate applies as execnet 2.x does.
    hexes = "".join(binascii.hexlify(data).decode() + "\n" for _, data in dumped)
    for (name, data), line in zip(dumped, execnet19.run("options", hexes).splitlines()):
        theirs = dict(zip(OPTIONS, line.split(" | ")))
        for py2, py3 in OPTIONS:
            assert repr(_wire.loads(data, py2, False)) == theirs[py2, py3], (name, py2, py3)
    # A Python 3 execnet 1.9 writes exactly pixgate's version 1.
    table = _table()
    for name, data in dumped:
        assert _wire.dumps(table[name], version=1) == data, name


def test_our_version_1_loads_in_execnet_1_9(execnet19: Peer) -> None:
    _check_peer_loads_ours(execnet19, list(_table()))


def test_python_2_dumps_load_under_every_option(execnet19_python2: Peer) -> None:
    dumped = dict(execnet19_python2.dumped())
    ops = b"".join(dumped.values())
    for op in b"MSGI":
        assert bytes([op]) in ops, f"Python 2's execnet wrote no {chr(op)}"
    _check_loads(list(dumped.items()), 1)
    # Written out: str is bytes or latin-1 text, unicode is text, long is int.
    assert _wire.loads(dumped["py2_str"]) == b"ab\xe9"
    assert _wire.loads(dumped["py2_str"], py2str_as_py3str=True) == "ab\xe9"
    assert _wire.loads_payload(dumped["py2_str"][1:]) == "ab\xe9"
    assert _wire.loads(dumped["text"], py3str_as_py2str=True) == "\xe9t\xe9"
    assert _wire.loads(dumped["bytes"]) == b"\x00\xe9"
    for name, value in [("py2_long", 5), ("py2_long_negative", -5), ("py2_long_big", 2**64)]:
        loaded = _wire.loads(dumped[name])
        assert loaded == value and type(loaded) is int, name
    assert same(
        _wire.loads_payload(dumped["py2_mixed"][1:]), {"k": [1, "v", "w"]}
    )


def test_our_version_1_loads_on_python_2(execnet19_python2: Peer) -> None:
    _check_peer_loads_ours(execnet19_python2, list(_table()))


def test_the_table_script_runs_here_with_the_current_interpreter() -> None:
    out = subprocess.run(
        [sys.executable, str(TABLE_SCRIPT), "info"], capture_output=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
