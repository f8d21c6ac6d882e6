"""The worker driven from a Python host over the raw protocol.

These tests start ``python -c "import pixgate._worker; pixgate._worker.serve(3, 4)"``
with the protocol pipes on descriptors 3 and 4 (and, for the anonymous transport, the
descriptor socket on 5), exactly as the Rust host does in installed mode, and speak the
wire with ``pixgate._wire`` only.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from pixgate import _wire
from pixgate._worker import (
    CANCEL,
    CHANNEL_CLOSE,
    CHANNEL_CLOSE_ERROR,
    CHANNEL_DATA,
    CHANNEL_EXEC,
    CHANNEL_LAST_MESSAGE,
    EXEC_MAIN,
    FORGET,
    GATEWAY_TERMINATE,
    HANDSHAKE,
    OUTPUT,
    PROTOCOL_VERSION,
    RECONFIGURE,
    STATUS,
)

TIMEOUT = 20.0
HELPER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Host:
    """A minimal host: spawn, frame I/O with deadlines, terminate; with
    ``descriptors``, the host's end of a descriptor socket (docs/PROTOCOL.md 2.7) on
    which it passes descriptors under its own tokens and takes the worker's."""

    def __init__(
        self,
        max_frame: int | None = None,
        descriptors: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        extra, env = env or {}, dict(os.environ)
        env["PYTHONPATH"] = HELPER_DIR + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("PIXGATE_BOOTSTRAP", None)
        env.pop("PIXGATE_DESCRIPTORS", None)
        if max_frame is not None:
            env["PIXGATE_MAX_FRAME"] = str(max_frame)
        pass_fds = [to_r, from_w]
        socket_boot = ""
        self.sock: socket.socket | None = None
        self.next_token = 1
        self.filed: dict[int, int] = {}
        self.expected = 1
        if descriptors:
            self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pass_fds.append(child.fileno())
            env["PIXGATE_DESCRIPTORS"] = "5"
            socket_boot = (
                f"c = fcntl.fcntl({child.fileno()}, fcntl.F_DUPFD, 10); "
                f"os.close({child.fileno()}); os.dup2(c, 5); os.close(c); "
            )
        env.update(extra)

        # Move the child's ends to 3 and 4 (and 5) as the Rust host does (subprocess
        # closes descriptors not in pass_fds after preexec_fn, so do it in the child
        # itself). Through descriptors >= 10 first, so that no end clobbers another.
        boot = (
            "import os, fcntl; "
            f"a = fcntl.fcntl({to_r}, fcntl.F_DUPFD, 10); "
            f"b = fcntl.fcntl({from_w}, fcntl.F_DUPFD, 10); "
            f"os.close({to_r}); os.close({from_w}); "
            + socket_boot
            + "os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b); "
            "import pixgate._worker as w; w.serve(3, 4)"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", boot],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            env=env,
        )
        os.close(to_r)
        os.close(from_w)
        if descriptors:
            child.close()
        self.buf = b""

    # -- the descriptor socket ------------------------------------------------

    def send_fds(self, fds: list[int]) -> int:
        """Pass ``fds`` in one message under the next tokens; the first token."""
        first = self.next_token
        self.send_message(len(fds), first, fds)
        self.next_token += len(fds)
        return first

    def send_message(self, count: int, first: int, fds: list[int]) -> None:
        """One message as the wire has it: 12 bytes (count, first token) with ``fds``
        attached, whatever they say."""
        assert self.sock is not None
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        self.sock.sendmsg([struct.pack("!IQ", count, first)], rights if fds else [])

    def take_fd(self, token: int, timeout: float = TIMEOUT) -> int:
        """The descriptor the worker passed under ``token`` (the caller closes it)."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while token not in self.filed:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError(f"descriptor {token} did not arrive in time")
            data, anc, flags, _ = self.sock.recvmsg(12, socket.CMSG_SPACE(253 * 4))
            fds: list[int] = []
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) // 4 * 4]))
            assert len(data) == 12 and not flags & socket.MSG_CTRUNC, (data, flags)
            count, first = struct.unpack("!IQ", data)
            assert (count, first) == (len(fds), self.expected), (count, first, fds)
            for i, fd in enumerate(fds):
                self.filed[first + i] = fd
            self.expected += count
        return self.filed.pop(token)

    def send(self, msgtype: int, channel: int, payload: bytes = b"") -> None:
        os.write(self.to_w, _wire.pack_frame(msgtype, channel, payload))

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_r], [], [], left)[0]:
                raise TimeoutError("no frame from the worker in time")
            chunk = os.read(self.from_r, 65536)
            if not chunk:
                raise EOFError("worker closed its pipe")
            self.buf += chunk

    def frame(self, timeout: float = TIMEOUT) -> tuple[int, int, bytes]:
        deadline = time.monotonic() + timeout
        self._fill(9, deadline)
        t, ch, n = _wire.unpack_header(self.buf[:9])
        self._fill(9 + n, deadline)
        payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
        return t, ch, payload

    def next_on(self, channel: int, skip_output: bool = True) -> tuple[int, Any]:
        while True:
            t, ch, payload = self.frame()
            if skip_output and t == OUTPUT:
                continue
            assert ch == channel, (t, ch)
            return t, (_wire.loads_payload(payload) if payload else None)

    def next_on_each(self, channels: list[int]) -> dict[int, tuple[int, Any]]:
        """The next frame (output skipped) on each of ``channels``, in whatever order
        their threads answer: remote code on two channels runs concurrently."""
        got: dict[int, tuple[int, Any]] = {}
        while len(got) < len(channels):
            t, ch, payload = self.frame()
            if t == OUTPUT:
                continue
            assert ch in channels and ch not in got, (t, ch, got)
            got[ch] = (t, _wire.loads_payload(payload) if payload else None)
        return got

    def exec(self, channel: int, source: str, main: bool = False) -> None:
        task = _wire.dumps_payload((source, None, None, {}))
        self.send(EXEC_MAIN if main else CHANNEL_EXEC, channel, task)

    def close(self) -> int:
        try:
            self.send(GATEWAY_TERMINATE, 0)
        except OSError:
            pass
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
            self.stdout_text = self.proc.stdout.read().decode() if self.proc.stdout else ""
            self.stderr_text = self.proc.stderr.read().decode() if self.proc.stderr else ""
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
            os.close(self.to_w)
            os.close(self.from_r)
            if self.sock is not None:
                self.sock.close()
            for fd in self.filed.values():
                os.close(fd)
            self.filed.clear()


@pytest.fixture
def host() -> Any:
    h = Host()
    t, ch, payload = h.frame()
    assert (t, ch) == (HANDSHAKE, 0)
    h.info = _wire.loads_payload(payload)
    yield h
    h.close()


def test_handshake_reports_versions(host: Host) -> None:
    info = host.info
    assert info["protocol"] == PROTOCOL_VERSION
    assert info["pid"] == host.proc.pid
    assert info["helper_source"] == "installed"
    assert info["python"] == sys.version.split()[0]
    assert info["descriptors"] is False
    assert list(info) == [
        "protocol", "helper", "helper_source", "python", "numpy", "pid", "executable",
        "implementation", "descriptors", "by_value",
    ]  # fmt: skip
    try:
        import numpy
    except ImportError:
        assert info["numpy"] is None
    else:
        assert info["numpy"] == numpy.__version__


def test_large_items_cross_both_ways(host: Host) -> None:
    # Payloads past 256 KiB are read straight into one buffer (os.readv, or a file
    # object's readinto where the interpreter has no readv: PyPy).
    host.exec(1, "for x in channel:\n    channel.send(x[::-1])")
    for n in (300_000, 3 << 20):
        item = bytes(range(256)) * (n // 256) + b"end"
        host.send(CHANNEL_DATA, 1, _wire.dumps_payload(item))
        assert host.next_on(1) == (CHANNEL_DATA, item[::-1])
    host.send(CHANNEL_CLOSE, 1)
    assert host.next_on(1) == (CHANNEL_CLOSE, None)


def test_the_worker_imports_no_heavy_module_at_start_up() -> None:
    # Every gateway pays for what the worker imports before its handshake; the
    # pure-Python queue is a fallback for interpreters without the C core _queue.
    # What the standard modules the worker needs import themselves is not counted
    # (PyPy's threading imports traceback).
    code = (
        "import os, select, sys, threading, time\n"
        "before = set(sys.modules)\n"
        "import pixgate._worker\n"
        "new = set(sys.modules) - before\n"
        "heavy = ['queue', 'traceback', 'linecache', 'typing', 're', 'tokenize', 'numpy']\n"
        "print(' '.join(m for m in heavy if m in new))\n"
        "try:\n"
        "    import _queue\n"
        "except ImportError:\n"
        "    print('no _queue')\n"
    )
    env = dict(os.environ, PYTHONPATH=HELPER_DIR)
    done = subprocess.run(  # noqa: PLW1510 - checked below
        [sys.executable, "-S", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    allowed = ["queue"] if lines[1:] == ["no _queue"] else []
    assert lines[0].split() == allowed, done.stdout


def test_exec_data_and_close(host: Host) -> None:
    host.exec(1, "for x in channel:\n    channel.send(x * 2)")
    for v in (1, "ab", [1, 2]):
        host.send(CHANNEL_DATA, 1, _wire.dumps_payload(v))
        assert host.next_on(1) == (CHANNEL_DATA, v * 2)
    host.send(CHANNEL_CLOSE, 1)
    assert host.next_on(1) == (CHANNEL_CLOSE, None)


def test_remote_exception_is_a_typed_tuple(host: Host) -> None:
    host.exec(3, "raise KeyError('missing')")
    t, err = host.next_on(3)
    assert t == CHANNEL_CLOSE_ERROR
    type_name, message, tb = err
    assert (type_name, message) == ("KeyError", "'missing'")
    assert "Traceback" in tb and "<remote exec 3>" in tb


def test_host_close_error_raises_remote_error(host: Host) -> None:
    host.exec(
        5,
        "import pixgate\ntry:\n    channel.receive(10)\n"
        "except pixgate.RemoteError as e:\n    channel.send(str(e))",
    )
    host.send(CHANNEL_CLOSE_ERROR, 5, _wire.dumps_payload("stop now"))
    assert host.next_on(5) == (CHANNEL_DATA, "stop now")


def test_cancel_raises_once_at_the_next_operation(host: Host) -> None:
    host.exec(
        7,
        "import pixgate\nchannel.send('ready')\ntry:\n    channel.receive(10)\n"
        "except pixgate.Cancelled:\n    channel.send('cancelled')\nchannel.send('again')",
    )
    assert host.next_on(7) == (CHANNEL_DATA, "ready")
    host.send(CANCEL, 7)
    assert host.next_on(7) == (CHANNEL_DATA, "cancelled")
    assert host.next_on(7) == (CHANNEL_DATA, "again")
    assert host.next_on(7) == (CHANNEL_CLOSE, None)


def test_output_is_attributed_and_ordered(host: Host) -> None:
    host.exec(9, "print('one')\nprint('two', end='')\nchannel.send(1)")
    t, payload = host.next_on(9, skip_output=False)
    assert (t, payload) == (OUTPUT, (1, "one\n"))
    t, payload = host.next_on(9, skip_output=False)
    assert (t, payload) == (OUTPUT, (1, "two"))
    assert host.next_on(9, skip_output=False) == (CHANNEL_DATA, 1)


def test_main_thread_exec(host: Host) -> None:
    src = "import threading\nchannel.send(threading.current_thread() is threading.main_thread())"
    host.exec(11, src, main=True)
    assert host.next_on(11) == (CHANNEL_DATA, True)
    assert host.next_on(11) == (CHANNEL_CLOSE, None)
    host.exec(13, src)
    assert host.next_on(13) == (CHANNEL_DATA, False)


def test_status_reply(host: Host) -> None:
    host.send(STATUS, 15)
    t, status = host.next_on(15)
    assert t == CHANNEL_DATA and status["execmodel"] == "thread"
    assert host.next_on(15) == (CHANNEL_CLOSE, None)


def test_bad_exec_payload_closes_that_channel_only(host: Host) -> None:
    host.send(CHANNEL_EXEC, 17, b"\x00garbage")
    t, err = host.next_on(17)
    assert t == CHANNEL_CLOSE_ERROR and err[0] == "LoadError"
    host.exec(19, "channel.send('fine')")
    assert host.next_on(19) == (CHANNEL_DATA, "fine")


def test_undecodable_item_raises_in_remote_code_and_later_items_arrive(host: Host) -> None:
    host.exec(
        21,
        "import pixgate\ntry:\n    channel.receive(10)\nexcept pixgate.LoadError:\n"
        "    channel.send('bad item')\nchannel.send(channel.receive(10))",
    )
    host.send(CHANNEL_DATA, 21, b"Z")
    host.send(CHANNEL_DATA, 21, _wire.dumps_payload(5))
    assert host.next_on(21) == (CHANNEL_DATA, "bad item")
    assert host.next_on(21) == (CHANNEL_DATA, 5)


def test_terminate_exits_cleanly() -> None:
    h = Host()
    h.frame()
    assert h.close() == 0


def test_worker_exits_when_the_host_goes_away() -> None:
    h = Host()
    h.frame()
    os.close(h.to_w)
    t = time.monotonic()
    code = h.proc.wait(TIMEOUT)
    elapsed = time.monotonic() - t
    assert code == 0
    assert elapsed < 1.0, elapsed
    h.to_w = os.open(os.devnull, os.O_WRONLY)  # let close() close something
    h.close()


def test_worker_exits_when_the_host_dies_inside_a_frame_and_stderr_is_broken() -> None:
    # A host killed while writing a frame leaves half of it in the pipe, and its
    # output pipes closed: reporting the truncated frame fails, the worker must still
    # end (it used to keep running with no reader).
    h = Host()
    h.frame()
    h.proc.stderr.close()
    h.proc.stdout.close()
    h.proc.stdout = h.proc.stderr = None
    frame = _wire.pack_frame(CHANNEL_DATA, 1, _wire.dumps_payload(5))
    os.write(h.to_w, frame[:12])
    os.close(h.to_w)
    try:
        assert h.proc.wait(TIMEOUT) == 70
    finally:
        h.to_w = os.open(os.devnull, os.O_WRONLY)  # let close() close something
        h.close()


def test_oversized_item_is_refused_in_the_worker() -> None:
    h = Host(max_frame=300)
    h.frame()
    h.exec(1, "import pixgate\ntry:\n    channel.send(b'x' * 500)\nexcept pixgate.DumpError as e:\n    channel.send(str(e)[:20])")
    assert h.next_on(1) == (CHANNEL_DATA, "item of 506 bytes ex")
    assert h.next_on(1) == (CHANNEL_CLOSE, None)
    # An oversized frame from the host is skipped; the stream stays in sync.
    h.exec(3, "import pixgate\ntry:\n    channel.receive(10)\nexcept pixgate.LoadError:\n    channel.send(channel.receive(10))")
    h.send(CHANNEL_DATA, 3, _wire.dumps_payload(b"y" * 500))
    h.send(CHANNEL_DATA, 3, _wire.dumps_payload("after"))
    assert h.next_on(3) == (CHANNEL_DATA, "after")
    assert h.close() == 0


def test_unencodable_error_text_still_closes_the_channel(host: Host) -> None:
    host.exec(23, "raise ValueError('bad \\udc80 surrogate')")
    t, err = host.next_on(23)
    assert t == CHANNEL_CLOSE_ERROR
    assert err[0] == "ValueError" and "\\udc80" in err[1]


def test_last_message_ends_remote_iteration(host: Host) -> None:
    host.exec(25, "n = 0\nfor x in channel:\n    n += x\nchannel.send(n)")
    host.send(CHANNEL_DATA, 25, _wire.dumps_payload(4))
    host.send(CHANNEL_LAST_MESSAGE, 25)
    assert host.next_on(25) == (CHANNEL_DATA, 4)


def test_exec_on_a_channel_in_use_is_ignored(host: Host) -> None:
    host.exec(27, "channel.send(channel.receive(10))")
    host.exec(27, "channel.send('second')")
    host.send(CHANNEL_DATA, 27, _wire.dumps_payload("first"))
    assert host.next_on(27) == (CHANNEL_DATA, "first")
    assert host.next_on(27) == (CHANNEL_CLOSE, None)


def test_error_after_the_code_closed_its_channel_goes_to_stderr() -> None:
    h = Host()
    h.frame()
    h.exec(1, "channel.close()\nprint('late', end='')\nraise RuntimeError('after close')")
    assert h.next_on(1) == (CHANNEL_CLOSE, None)
    # Wait (via STATUS) until the execution has finished, then terminate the worker.
    deadline = time.monotonic() + TIMEOUT
    while True:
        h.send(STATUS, 3)
        status = h.next_on(3)[1]
        assert h.next_on(3) == (CHANNEL_CLOSE, None)
        if status["numexecuting"] <= 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert h.close() == 0
    assert "RuntimeError: after close" in h.stderr_text
    assert "late" in h.stdout_text


def test_forget_drops_a_kept_mapping_and_a_malformed_one_is_reported() -> None:
    h = Host()
    h.frame()
    # The worker keeps a mapping under a name; FORGET drops it, whatever else arrives.
    h.exec(
        1,
        "from pixgate import _transfer\n"
        "_transfer._resident[('/pxg-1-kept', False)] = object()\n"
        "channel.send(len(_transfer._resident))\n"
        "channel.receive(10)\n"
        "channel.send(len(_transfer._resident))",
    )
    assert h.next_on(1) == (CHANNEL_DATA, 1)
    h.send(FORGET, 0, _wire.dumps_payload(7))
    h.send(FORGET, 0, _wire.dumps_payload("/pxg-1-unknown"))
    h.send(FORGET, 0, _wire.dumps_payload("/pxg-1-kept"))
    h.send(CHANNEL_DATA, 1, _wire.dumps_payload(None))
    assert h.next_on(1) == (CHANNEL_DATA, 0)
    assert h.next_on(1) == (CHANNEL_CLOSE, None)
    assert h.close() == 0
    assert "pixgate worker: malformed forget message: expected a str, got int" in h.stderr_text


# A tuple of each string kind as a channel payload: (py2 str b"\xe9", py3 str "é",
# unicode "é", bytes b"\xe9").
STRINGS = (
    b"M\x00\x00\x00\x01\xe9N\x00\x00\x00\x02\xc3\xa9S\x00\x00\x00\x02\xc3\xa9"
    b"A\x00\x00\x00\x01\xe9@\x00\x00\x00\x04Q"
)
# What the remote code receives under (py2str_as_py3str, py3str_as_py2str).
STRINGS_AS = {
    (True, False): ("é", "é", "é", b"\xe9"),
    (False, False): (b"\xe9", "é", "é", b"\xe9"),
    (False, True): (b"\xe9", "é".encode(), "é", b"\xe9"),
    (True, True): ("é", "é".encode(), "é", b"\xe9"),
}
ECHO_REPR = "for x in channel:\n    channel.send(repr(x))"


def test_channel_payloads_load_py2_strings_as_text_by_default(host: Host) -> None:
    host.exec(41, ECHO_REPR)
    host.send(CHANNEL_DATA, 41, STRINGS)
    assert host.next_on(41) == (CHANNEL_DATA, repr(STRINGS_AS[True, False]))


@pytest.mark.parametrize("config", sorted(STRINGS_AS))
def test_reconfigure_of_a_channel_applies_to_the_items_after_it(
    host: Host, config: tuple[bool, bool]
) -> None:
    host.exec(43, ECHO_REPR)
    host.send(CHANNEL_DATA, 43, STRINGS)
    host.send(RECONFIGURE, 43, _wire.dumps_payload(config))
    host.send(CHANNEL_DATA, 43, STRINGS)
    assert host.next_on(43) == (CHANNEL_DATA, repr(STRINGS_AS[True, False]))
    assert host.next_on(43) == (CHANNEL_DATA, repr(STRINGS_AS[config]))


def test_reconfigure_of_the_gateway_applies_to_channels_created_after_it(host: Host) -> None:
    host.exec(45, ECHO_REPR)
    host.send(RECONFIGURE, 0, _wire.dumps_payload((False, True)))
    host.exec(47, ECHO_REPR)
    for chid in (45, 47):
        host.send(CHANNEL_DATA, chid, STRINGS)
    # The channel that existed keeps the default, as in execnet; the new one has it.
    assert host.next_on_each([45, 47]) == {
        45: (CHANNEL_DATA, repr(STRINGS_AS[True, False])),
        47: (CHANNEL_DATA, repr(STRINGS_AS[False, True])),
    }
    # Exec requests load with execnet's fixed defaults: the source (an N) stayed a str,
    # or channel 47 would have ended with a bad exec request.


def test_remote_code_reconfigures_its_channel_and_tells_the_host(host: Host) -> None:
    host.exec(
        51,
        "channel.reconfigure(py2str_as_py3str=False, py3str_as_py2str=True)\n"
        "channel.send(repr(channel.receive()))",
    )
    t, payload = host.next_on(51)
    assert (t, payload) == (RECONFIGURE, (False, True))
    host.send(CHANNEL_DATA, 51, STRINGS)
    assert host.next_on(51) == (CHANNEL_DATA, repr(STRINGS_AS[False, True]))


def test_malformed_reconfigure_is_reported_and_changes_nothing() -> None:
    h = Host()
    h.frame()
    h.exec(1, ECHO_REPR)
    h.send(RECONFIGURE, 1, _wire.dumps_payload((1, 0)))
    h.send(RECONFIGURE, 0, b"garbage")
    h.send(RECONFIGURE, 99, _wire.dumps_payload((False, False)))  # no such channel
    h.send(CHANNEL_DATA, 1, STRINGS)
    assert h.next_on(1) == (CHANNEL_DATA, repr(STRINGS_AS[True, False]))
    assert h.close() == 0
    assert (
        "pixgate worker: malformed reconfigure message on channel 1: "
        "expected two bools, got (int, int)" in h.stderr_text
    )
    assert "malformed reconfigure message on channel 0" in h.stderr_text


def test_a_callback_run_as_the_frame_lock_is_taken_waits_until_it_is_let_go() -> None:
    # PyPy's collector may run a finalizer right after the lock is taken, before
    # __enter__ has done anything else; the release that finalizer sends must wait
    # until the lock is let go instead of waiting for its own thread (a deadlock).
    from pixgate import _worker

    lock = _worker._FrameLock()
    order: list[str] = []

    def callback() -> None:
        with lock:
            order.append("callback")

    class CollectedAfterTaking:
        """A lock whose acquire runs a callback right after taking it, as a collection
        at that point would."""

        def __init__(self) -> None:
            self.real = threading.Lock()

        def acquire(self) -> bool:
            got = self.real.acquire()
            if not order:
                lock.soon(callback)
            return got

        def release(self) -> None:
            self.real.release()

    lock._lock = CollectedAfterTaking()  # type: ignore[assignment]

    def write() -> None:
        with lock:
            order.append("frame")

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), "the thread deadlocked on its own frame lock"
    assert order == ["frame", "callback"]
    # And outside the lock a callback runs at once.
    lock.soon(lambda: order.append("now"))
    assert order[-1] == "now"
