"""The worker side of a gateway: read frames, run remote code, serve channels.

The host starts the interpreter with the protocol pipes on file descriptors 3 (host to
worker) and 4 (worker to host), and with the anonymous transport a Unix socket for
descriptors (``PIXGATE_DESCRIPTORS``, fd 5), and calls :func:`serve`. The wire is
specified in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

__all__ = ["Channel", "serve", "PROTOCOL_VERSION"]

# Start-up time matters (every gateway pays it), so heavy pure-Python modules are
# avoided: the C cores of queue and collections are used directly, `traceback` and
# `linecache` (which pulls in tokenize and re) are imported when an error is reported,
# and `typing` only by type checkers. Interpreters without those cores (PyPy has no
# `_queue`) get the pure-Python modules; CPython never imports them.
import _signal
import os
import select
import struct
import sys
import threading
import time

try:
    from _collections import deque
except ImportError:  # pragma: no cover - CPython always has it
    from collections import deque
try:
    from _queue import Empty, SimpleQueue
except ImportError:  # PyPy
    from queue import Empty, SimpleQueue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Callable

from . import _wire
from ._errors import (
    Cancelled,
    ChannelClosed,
    DataFormatError,
    DumpError,
    Error,
    LoadError,
    ProtocolError,
    RemoteError,
    TimeoutError,
)

PROTOCOL_VERSION = 1

# Message types: execnet's 0-7, pixgate's own from 32.
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
FORGET = 37
OBJECT = 38
CHUNK = 39
WRITE_BACK = 40

_DEFAULT_MAX_FRAME = 256 * 1024 * 1024
# execnet's gateway and channel default: py2str_as_py3str, not py3str_as_py2str.
_DEFAULT_STRCONFIG = (True, False)
# How long the reading baton stays free before the background reader takes it.
_BG_IDLE = 0.001
_CHUNK = 65536

_tls = threading.local()

# A descriptor message (docs/PROTOCOL.md 2.7): count, first token; and one descriptor
# of SCM_RIGHTS data.
_MESSAGE = struct.Struct("!IQ")
_FD = struct.Struct("=i")

# Queue sentinels; never values a peer can send.
_CLOSED = object()
_WAKE = object()


class _Failed:
    """A queued item that raises instead of returning (undecodable payload)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class DescriptorTable:
    """The worker's end of the descriptor socket (docs/PROTOCOL.md 2.7).

    Receiving: messages are read on demand, when a reference names a token not filed
    yet, exactly one 12-byte message (count, first token; ``SCM_RIGHTS`` attached) per
    read, and their descriptors filed under their tokens until a reference takes each,
    once. A message that breaks the rules (a count other than the descriptors that came,
    a token that does not continue the sequence, cut ancillary data) closes what came
    and everything filed, and every later take fails with the reason.

    Sending: :meth:`send` passes descriptors under this side's own tokens, from 1 up,
    at most 253 per message; the caller holds the lock that keeps frames whole, and
    writes the frame that names the tokens right after.
    """

    #: Marks the transport for the array layer: references map the host's memory.
    by_value = False
    #: Descriptors one message carries at most (Linux's ``SCM_MAX_FD``).
    MAX_PER_MESSAGE = 253
    #: Descriptors kept filed at most without a reference taking them.
    MAX_FILED = 1024
    #: Seconds a take waits for the message of its token.
    TAKE_TIMEOUT = 5.0

    def __init__(self, sock: Any) -> None:
        import _socket

        self.sock = sock
        self._fd = sock.fileno()
        self._socket = _socket
        # Linux's MSG_CMSG_CLOEXEC, which PyPy does not name.
        self._recv_flags = getattr(
            _socket, "MSG_CMSG_CLOEXEC", 0x40000000 if sys.platform.startswith("linux") else 0
        )
        self._nowait = self._recv_flags | _socket.MSG_DONTWAIT
        self._ancillary = _socket.CMSG_SPACE(self.MAX_PER_MESSAGE * 4)
        self._cut = _socket.MSG_CTRUNC
        self._level = _socket.SOL_SOCKET
        self._rights = _socket.SCM_RIGHTS
        self._lock = threading.Lock()
        self._expected = 1
        self._filed: dict[int, int] = {}
        self._broken: str | None = None
        #: The token of the next descriptor sent; the frame lock guards it.
        self.next_send = 1

    # -- receiving ----------------------------------------------------------

    def take(self, token: int, timeout: float | None = None) -> int:
        """The descriptor filed under ``token``, reading messages until it arrives.

        The caller owns the descriptor returned (and closes it).

        Raises
        ------
        LoadError
            The token is 0, unknown or taken already; the message did not arrive within
            ``timeout`` seconds (:attr:`TAKE_TIMEOUT` by default); or the stream of
            messages is broken.
        """
        # The common case inline (a handoff runs cold, where every call costs): the lock
        # free and ``token`` the next one expected. Its message was sent before the frame
        # that names it, so it is normally waiting, whole, with this one descriptor. Any
        # other message read is filed (or the socket marked broken) for the general path
        # to report; one not begun yet, it waits for.
        if self._lock.acquire(False):
            try:
                if token == self._expected and self._broken is None:
                    # ``_receive(wait=False)``, inline.
                    try:
                        data, ancillary, flags, _ = self.sock.recvmsg(
                            12, self._ancillary, self._nowait
                        )
                    except BlockingIOError:
                        data = None
                    except OSError as exc:
                        self._break(f"reading it failed: {exc}")
                        data = None
                    if data is not None:
                        if len(data) == 12 and len(ancillary) == 1 and not flags & self._cut:
                            level, kind, raw = ancillary[0]
                            if (
                                kind == self._rights
                                and level == self._level
                                and len(raw) == 4
                                and _MESSAGE.unpack(data) == (1, token)
                            ):
                                self._expected = token + 1
                                return _FD.unpack(raw)[0]
                        limit = self.TAKE_TIMEOUT if timeout is None else timeout
                        try:
                            self._file(data, ancillary, flags, time.monotonic() + limit)
                        except _Broken as exc:
                            self._break(str(exc))
            finally:
                self._lock.release()
        return self._take_waiting(token, timeout)

    def _take_waiting(self, token: int, timeout: float | None) -> int:
        """:meth:`take` in general: any token, waiting for its message if need be."""
        limit = self.TAKE_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not self._lock.acquire(timeout=limit):
            raise LoadError(f"descriptor {token} did not arrive within {limit:g} s")
        try:
            while True:
                fd = self._filed.pop(token, None)
                if fd is not None:
                    return fd
                if self._broken is not None:
                    raise LoadError(f"the descriptor socket is broken: {self._broken}")
                if token <= 0 or token < self._expected:
                    raise LoadError(f"descriptor token {token} is unknown or used already")
                # The message was sent before the frame that names it, so it is
                # normally waiting: read it without a select first.
                try:
                    if self._read_message(deadline, wait=False):
                        continue
                except _Broken as exc:
                    self._break(str(exc))
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                    raise LoadError(f"descriptor {token} did not arrive within {limit:g} s")
                try:
                    self._read_message(deadline)
                except _Broken as exc:
                    self._break(str(exc))
        finally:
            self._lock.release()

    def _read_message(self, deadline: float, wait: bool = True) -> bool:
        """Read one message and file its descriptors: the socket is readable, or
        (``wait`` false) returns False at once when no message has begun."""
        got = self._receive(wait)
        if got is None:
            return False
        self._file(*got, deadline)
        return True

    def _receive(self, wait: bool) -> tuple[bytes, list[Any], int] | None:
        """The first read of a message: its data, ancillary data and flags; None when
        (``wait`` false) no message has begun."""
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(
                12, self._ancillary, self._recv_flags if wait else self._nowait
            )
        except BlockingIOError:
            if wait:
                raise _Broken("reading it failed: no message although readable") from None
            return None
        except OSError as exc:
            raise _Broken(f"reading it failed: {exc}") from None
        return data, ancillary, flags

    def _file(self, data: bytes, ancillary: list[Any], flags: int, deadline: float) -> None:
        """File the descriptors of a message whose first read gave ``data``,
        ``ancillary`` and ``flags``, reading the rest of it if it came short."""
        _socket = self._socket
        fds = _rights(ancillary)
        try:
            if not data:
                raise _Broken("the host closed it")
            cut = flags & _socket.MSG_CTRUNC
            # A short read ends with plain reads: no descriptors may come with them.
            while len(data) < 12:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                    raise _Broken(f"a message ended after {len(data)} of its 12 bytes")
                try:
                    more, extra, more_flags, _ = self.sock.recvmsg(
                        12 - len(data), self._ancillary, self._recv_flags
                    )
                except OSError as exc:
                    raise _Broken(f"reading it failed: {exc}") from None
                late = _rights(extra)
                fds.extend(late)
                if not more:
                    raise _Broken(f"it ended inside a message ({len(data)} of 12 bytes)")
                if late or more_flags & _socket.MSG_CTRUNC:
                    raise _Broken("descriptors came with the rest of a message")
                data += more
            count = int.from_bytes(data[:4], "big")
            first = int.from_bytes(data[4:], "big")
            if cut or not 0 < count <= self.MAX_PER_MESSAGE or count != len(fds):
                raise _Broken(
                    f"a message announces {count} descriptors, {len(fds)} arrived"
                    + (" (cut)" if cut else "")
                )
            if len(self._filed) + count > self.MAX_FILED:
                raise _Broken(
                    f"the host sent more than {self.MAX_FILED} descriptors that no "
                    "reference took"
                )
            if first != self._expected:
                raise _Broken(
                    f"a message starts at token {first}, expected {self._expected}"
                )
        except BaseException:
            for fd in fds:
                _close_quietly(fd)
            raise
        for i, fd in enumerate(fds):
            self._filed[first + i] = fd
        self._expected = first + count

    def _break(self, why: str) -> None:
        self._broken = why
        filed, self._filed = self._filed, {}
        for fd in filed.values():
            _close_quietly(fd)

    @property
    def filed(self) -> int:
        """How many received descriptors no reference has taken yet."""
        return len(self._filed)

    # -- sending --------------------------------------------------------------

    def send(self, fds: list[int]) -> int:
        """Send ``fds`` (in messages of at most :attr:`MAX_PER_MESSAGE`) and return the
        token of the first. The caller holds the frame lock.

        Raises
        ------
        OSError
            The socket failed (the host is gone).
        """
        _socket = self._socket
        first = self.next_send
        flags = getattr(_socket, "MSG_NOSIGNAL", 0)
        for start in range(0, len(fds), self.MAX_PER_MESSAGE):
            chunk = fds[start : start + self.MAX_PER_MESSAGE]
            message = len(chunk).to_bytes(4, "big") + self.next_send.to_bytes(8, "big")
            rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in chunk)
            sent = self.sock.sendmsg(
                [message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)], flags
            )
            # The descriptors went with the first byte; the rest goes plainly.
            while sent < 12:
                sent += self.sock.send(message[sent:], flags)
            self.next_send += len(chunk)
        return first


class ByValueTable:
    """The by-value transport (docs/PROTOCOL.md 4.14): the worker's stand-in for the
    descriptor socket on a gateway that shares no memory with the host (ssh).

    Receiving: OBJECT and CHUNK frames, handled in arrival order by :meth:`object` and
    :meth:`chunk`, fill a new anonymous object of this process; the last chunk seals it
    and files its descriptor under the token, which :meth:`take` hands to the
    reference naming it, once. A malformed frame files an error instead, which that
    reference raises.

    Sending: :meth:`send` copies each object as OBJECT and CHUNK frames; the caller
    holds the frame lock and writes the frame naming the tokens right after.
    """

    #: Marks the transport for the array layer (no kept mappings of host objects; a
    #: lend's pixels go back before its release).
    by_value = True
    CHUNK = 1 << 20
    MAX_OBJECT = 1 << 40
    MAX_BUILDING = 64
    MAX_FILED = 1024

    def __init__(self, conn: _Conn | None = None) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._building: dict[int, list[int]] = {}  # token -> [fd, size, next, writable]
        self._filed: dict[int, int | str] = {}
        #: The token of the next object sent; the frame lock guards it.
        self.next_send = 1

    def _file_error(self, token: int, why: str) -> None:
        if token and len(self._filed) < self.MAX_FILED:
            old = self._filed.get(token)
            if isinstance(old, int):
                _close_quietly(old)
            self._filed[token] = why
        _warn(why)

    def object(self, payload: bytes | bytearray) -> None:
        """An OBJECT frame: ``token, size, start`` (u64 each), ``access``, name length
        (u8 each), the sender's name of the object."""
        if len(payload) < 26 or len(payload) != 26 + payload[25]:
            _warn(f"object message of {len(payload)} bytes, expected 26 and a name")
            return
        token, size, start = struct.unpack_from("!QQQ", payload)
        writable = payload[24] != 0
        try:
            name = bytes(payload[26:]).decode()
        except UnicodeDecodeError:
            name = ""
        with self._lock:
            if not token or token in self._building or token in self._filed:
                _warn(f"object token {token} is 0 or in use")
                return
            if size > self.MAX_OBJECT:
                return self._file_error(token, f"object of {size} bytes is too large")
            if start % 4096 or start + 4096 > size:
                return self._file_error(
                    token, f"object of {size} bytes cannot start its segment at {start}"
                )
            if len(self._building) >= self.MAX_BUILDING or len(self._filed) >= self.MAX_FILED:
                return self._file_error(token, "too many objects on their way or not taken")
            from . import _segment

            try:
                _segment.check_name(name)
                fd = _segment.anonymous_object(name)
                os.fchmod(fd, 0o400)
                os.ftruncate(fd, size)
            except (OSError, Error) as exc:
                return self._file_error(token, f"object {token} of {size} bytes: {exc}")
            self._building[token] = [fd, size, start, writable]

    def chunk(self, payload: bytes | bytearray) -> None:
        """A CHUNK frame: ``token, offset`` (u64 each), then the bytes at ``offset``."""
        if len(payload) < 16:
            _warn(f"chunk message of {len(payload)} bytes")
            return
        token, offset = struct.unpack_from("!QQ", payload)
        with self._lock:
            b = self._building.get(token)
            if b is None:
                _warn(f"chunk for object {token}, which is not on its way")
                return
            fd, size, expected, _writable = b
            n = len(payload) - 16
            why = None
            if offset != expected:
                why = f"chunk of object {token} at offset {offset}, expected {expected}"
            elif n == 0 or offset + n > size:
                why = f"chunk of {n} bytes at {offset} does not fit object {token} of {size}"
            else:
                view = memoryview(payload)[16:]
                try:
                    while view:
                        done = os.pwrite(fd, view, offset)
                        view, offset = view[done:], offset + done
                except OSError as exc:
                    why = f"writing object {token}: {exc}"
                finally:
                    view.release()
            if why is not None:
                del self._building[token]
                _close_quietly(fd)
                return self._file_error(token, why)
            b[2] = offset
            if offset == size:
                del self._building[token]
                from . import _segment

                try:
                    _segment.seal(fd)
                except OSError as exc:
                    _close_quietly(fd)
                    return self._file_error(token, f"sealing object {token}: {exc}")
                self._filed[token] = fd

    def take(self, token: int, timeout: float | None = None) -> int:
        """The descriptor of the object received under ``token`` (the caller closes it).

        Raises
        ------
        LoadError
            Nothing arrived under the token, it came incomplete or was refused.
        """
        with self._lock:
            got = self._filed.pop(token, None)
            if isinstance(got, int):
                return got
            if got is not None:
                raise LoadError(f"object {token} was refused: {got}")
            b = self._building.pop(token, None)
            if b is not None:
                _close_quietly(b[0])
                raise LoadError(f"object {token} is incomplete: its reference came first")
            raise LoadError(f"no object arrived under token {token}")

    @property
    def filed(self) -> int:
        """How many received objects no reference has taken yet."""
        return len(self._filed)

    def send(self, fds: list[int], names: list[str] | None = None) -> int:
        """Copy the objects of ``fds`` (named ``names``) to the host and return the
        first token. The caller holds the frame lock.

        Raises
        ------
        OSError
            The pipe failed (the host is gone).
        """
        conn = self.conn
        if conn is None:  # pragma: no cover - set by serve
            raise OSError("no connection")
        first = self.next_send
        step = max(1, min(self.CHUNK, conn.max_frame - 16))
        pack = _wire.HEADER.pack
        for i, fd in enumerate(fds):
            token = self.next_send
            self.next_send += 1
            size = os.fstat(fd).st_size
            raw = names[i].encode() if names is not None else b""
            conn._write_all(
                pack(OBJECT, 0, 26 + len(raw)),
                struct.pack("!QQQBB", token, size, 0, 1, len(raw)),
                raw,
            )
            pos = 0
            while pos < size:
                data = os.pread(fd, min(step, size - pos), pos)
                if not data:
                    raise OSError(f"object {token} ended at {pos} of {size} bytes")
                conn._write_all(pack(CHUNK, 0, 16 + len(data)) + struct.pack("!QQ", token, pos), data)
                pos += len(data)
        return first

    def write_back(self, key: str, generation: int, data: memoryview) -> None:
        """Send the pixels of a lent array back (WRITE_BACK frames), before its release."""
        conn = self.conn
        if conn is None:  # pragma: no cover - set by serve
            return
        raw = key.encode()
        prefix_len = 18 + len(raw)
        step = max(1, min(self.CHUNK, conn.max_frame - prefix_len))
        pack = _wire.HEADER.pack
        data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        with conn._wlock:
            pos = 0
            total = len(data)
            while pos < total:
                piece = data[pos : pos + step]
                head = pack(WRITE_BACK, 0, prefix_len + len(piece)) + struct.pack(
                    "!QQH", generation, pos, len(raw)
                )
                conn._write_all(head + raw, piece)
                pos += len(piece)


class _Broken(Exception):
    """The descriptor socket's message stream cannot be trusted any more."""


def _rights(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in ``SCM_RIGHTS`` ancillary data (any whole ones, also cut)."""
    import _socket

    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(memoryview(data)[:usable].cast("i").tolist())
    return fds


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _descriptor_table(value: str | None) -> DescriptorTable | None:
    """The descriptor socket the host gave (``PIXGATE_DESCRIPTORS``), or None when there
    is none or this interpreter cannot pass descriptors (it is closed then)."""
    if value is None:
        return None
    try:
        fd = int(value)
        import stat

        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None  # not the socket: nothing of ours to close
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return None
    try:
        import _socket

        capable = (
            hasattr(_socket.socket, "sendmsg")
            and hasattr(_socket.socket, "recvmsg")
            and hasattr(_socket, "CMSG_SPACE")
            and hasattr(_socket, "SCM_RIGHTS")
            and (hasattr(os, "memfd_create") or not sys.platform.startswith("linux"))
        )
        if capable:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            sock.setblocking(True)
            return DescriptorTable(sock)
    except (ImportError, OSError):
        pass
    _close_quietly(fd)
    return None


class _FrameLock:
    """The lock of the frame stream, knowing which threads hold it.

    A weakref callback or a finalizer runs inside whatever allocation set it off (PyPy's
    collector runs at any, CPython's cyclic collector too), also in a thread writing a
    frame. What such a callback sends must neither wait for the lock its own thread
    holds (a deadlock) nor write into the frame being written: :meth:`soon` runs it
    right after the lock is let go, in the same thread.

    A thread counts as holding the lock from just before it takes it until just after
    it lets go (a flag of its own), so that a callback run between taking the lock and
    noting it taken (PyPy collected there: in 1 run of 30 a worker deadlocked on it)
    is deferred too.
    """

    __slots__ = ("_lock", "_mine")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per thread: ``held``, and the callbacks ``deferred`` until it lets go.
        self._mine = threading.local()

    def __enter__(self) -> _FrameLock:
        mine = self._mine
        mine.held = True
        try:
            self._lock.acquire()
        except BaseException:
            self._let_go()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self._let_go()

    def _let_go(self) -> None:
        mine = self._mine
        mine.held = False
        todo = getattr(mine, "deferred", None)
        if todo:
            mine.deferred = []
            for fn in todo:
                fn()

    def soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` now, or when this thread lets go of the lock if it holds it."""
        mine = self._mine
        if getattr(mine, "held", False):
            todo = getattr(mine, "deferred", None)
            if todo is None:
                mine.deferred = [fn]
            else:
                todo.append(fn)
        else:
            fn()


class _Conn:
    """The two protocol pipes: framed writes under a lock, buffered framed reads; and
    the descriptor socket, when the gateway has one."""

    def __init__(
        self,
        rfd: int,
        wfd: int,
        max_frame: int,
        descriptors: DescriptorTable | ByValueTable | None = None,
    ) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.max_frame = max_frame
        self.descriptors = descriptors
        self._wlock = _FrameLock()
        self._buf = bytearray()
        self._pos = 0

    @property
    def frame_lock(self) -> _FrameLock:
        """The lock a frame is written under (callbacks send through its ``soon``)."""
        return self._wlock

    def send_item(
        self,
        channel: int,
        payload: bytes | bytearray,
        outgoing: list[tuple[int, _wire.DescriptorRef]],
    ) -> None:
        """Send a CHANNEL_DATA frame, and first, in one message under the same lock, the
        descriptors its references pass (``outgoing``, from
        :func:`pixgate._wire.dumps_payload_fds`): each gets the next token, written
        into ``payload``. A reference whose descriptor went out is told so (``sent``);
        if sending the descriptors fails, every one is abandoned (``abandon``)."""
        if not outgoing:
            self.send(CHANNEL_DATA, channel, payload)
            return
        table = self.descriptors
        with self._wlock:
            try:
                if table is None:
                    raise DumpError("this gateway has no descriptor socket")
                first = table.next_send
                # dumps_payload_fds makes a bytearray whenever references go out.
                assert isinstance(payload, bytearray)
                for i, (offset, ref) in enumerate(outgoing):
                    ref.token = first + i
                    payload[offset : offset + 8] = ref.token.to_bytes(8, "big")
                if isinstance(table, ByValueTable):
                    table.send(
                        [ref.outgoing.fd for _, ref in outgoing], [ref.name for _, ref in outgoing]
                    )
                else:
                    table.send([ref.outgoing.fd for _, ref in outgoing])
            except BaseException:
                for _, ref in outgoing:
                    ref.token = None
                    ref.outgoing.abandon()
                raise
            for _, ref in outgoing:
                ref.outgoing.sent()
            self._write_frame(CHANNEL_DATA, channel, payload)

    def _write_all(self, *parts: bytes | bytearray | memoryview) -> None:
        """Write the parts of one frame; the caller holds the frame lock."""
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(self.wfd, view)
                view = view[n:]

    def send_small(self, frames: list[tuple[int, int, bytes]]) -> None:
        """Send small frames with one write (one wake-up of the host, not one each)."""
        pack = _wire.HEADER.pack
        data = b"".join(pack(t, c, len(p)) + p for t, c, p in frames)
        with self._wlock:
            view = memoryview(data)
            while view:
                n = os.write(self.wfd, view)
                view = view[n:]

    def send(self, msgtype: int, channel: int, payload: bytes | bytearray = b"") -> None:
        with self._wlock:
            self._write_frame(msgtype, channel, payload)

    def _write_frame(self, msgtype: int, channel: int, payload: bytes | bytearray) -> None:
        """Write one frame; the caller holds the frame lock."""
        head = _wire.HEADER.pack(msgtype, channel, len(payload))
        chunks: list[bytes | bytearray]
        if len(payload) < 65536:
            chunks = [head + payload]
        else:
            chunks = [head, payload]
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(self.wfd, view)
                view = view[n:]

    def _fill(self, need: int) -> bool:
        """Read until ``need`` bytes are buffered; False on EOF before any byte."""
        buf = self._buf
        if self._pos and self._pos * 2 > len(buf):
            del buf[: self._pos]
            self._pos = 0
        while len(buf) - self._pos < need:
            chunk = os.read(self.rfd, max(_CHUNK, min(need, 1 << 24)))
            if not chunk:
                if len(buf) == self._pos:
                    return False
                raise ProtocolError(
                    f"protocol pipe ended inside a frame ({len(buf) - self._pos} bytes of it received)"
                )
            buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        start = self._pos
        self._pos += n
        out = bytes(self._buf[start : self._pos])
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return out

    def readable(self) -> bool:
        """Whether a frame is buffered, or bytes wait in the pipe (reading will not block)."""
        return self.has_frame() or bool(select.select([self.rfd], [], [], 0)[0])

    def has_frame(self) -> bool:
        """True when a whole frame is buffered (reading it will not block)."""
        avail = len(self._buf) - self._pos
        if avail < 9:
            return False
        length = _wire.HEADER.unpack_from(self._buf, self._pos)[2]
        return avail >= 9 + length

    def read_frame(self) -> tuple[int, int, bytes | bytearray | None, int] | None:
        """Return ``(type, channel, payload, length)``; payload None if oversized."""
        if self._pos == len(self._buf):
            # Nothing buffered: one read usually brings exactly one frame.
            chunk = os.read(self.rfd, _CHUNK)
            if not chunk:
                return None
            if len(chunk) >= 9:
                msgtype, channel, length = _wire.HEADER.unpack_from(chunk)
                if len(chunk) == 9 + length and 0 <= length <= self.max_frame:
                    return msgtype, channel, chunk[9:], length
            self._buf = bytearray(chunk)
            self._pos = 0
        if not self._fill(9):
            return None
        msgtype, channel, length = _wire.unpack_header(self._take(9))
        if length > self.max_frame:
            left = length
            while left:
                if self._pos < len(self._buf):
                    n = min(left, len(self._buf) - self._pos)
                    self._take(n)
                    left -= n
                    continue
                if not self._fill(1):
                    raise ProtocolError("protocol pipe ended inside an oversized frame")
            return msgtype, channel, None, length
        if length > 4 * _CHUNK:
            return msgtype, channel, self._read_large(length), length
        if length and not self._fill(length):
            raise ProtocolError("protocol pipe ended inside a frame")
        return msgtype, channel, self._take(length), length

    def _read_large(self, length: int) -> bytearray:
        """A large payload, read straight into one buffer (chunked reads into a growing
        buffer cost an allocation per pipe-sized read)."""
        payload = bytearray(length)
        have = min(length, len(self._buf) - self._pos)
        payload[:have] = self._buf[self._pos : self._pos + have]
        self._take(have)
        view = memoryview(payload)
        try:
            while have < length:
                n = _readinto(self.rfd, view[have:])
                if not n:
                    raise ProtocolError(
                        f"protocol pipe ended inside a frame ({have} of {length} bytes received)"
                    )
                have += n
        finally:
            view.release()
        return payload


if hasattr(os, "readv"):

    def _readinto(fd: int, view: memoryview) -> int:
        """Read from ``fd`` straight into ``view``; the count of bytes read."""
        return os.readv(fd, [view])

else:  # PyPy has no os.readv

    def _readinto(fd: int, view: memoryview) -> int:
        """Read from ``fd`` straight into ``view``; the count of bytes read."""
        import io

        with io.FileIO(fd, "rb", closefd=False) as f:
            return f.readinto(view) or 0


class Channel:
    """The worker's end of a channel, available to remote code as ``channel``.

    The interface follows execnet's channels: :meth:`send`, :meth:`receive`,
    iteration, :meth:`close`, :meth:`isclosed`, :meth:`waitclose`.
    """

    def __init__(self, gateway: _WorkerGateway, id: int) -> None:
        self.id = id
        self._gateway = gateway
        self._items: SimpleQueue[Any] = SimpleQueue()
        self._remote_closed = threading.Event()
        self._remote_error: RemoteError | None = None
        self._receive_done = False
        self._local_closed = False
        self._finished = False
        self._cancelled = False
        self._pending: dict[int, list[str]] = {1: [], 2: []}
        self._has_pending = False
        # How items arriving on this channel load strings (execnet's py2str_as_py3str,
        # py3str_as_py2str): the gateway's setting when the channel was created, until
        # a RECONFIGURE for this channel.
        self._strconfig: tuple[bool, bool] = gateway.strconfig
        # Decodes an item's payload with that setting.
        self._load: Callable[[bytes | bytearray], Any] = gateway.load
        # Called (it must not raise) when a receive on this channel is about to block:
        # a frame loop sends the releases it holds back (see pixgate.frames).
        self._before_wait: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._local_closed else "open"
        return f"<pixgate Channel id={self.id} {state}>"

    # -- remote-code API -------------------------------------------------

    def send(self, item: object) -> None:
        """Send ``item`` to the host.

        Raises
        ------
        Cancelled
            The host asked to cancel this execution (raised once per request).
        ChannelClosed
            This side already closed the channel.
        DumpError
            ``item`` holds a value the wire cannot carry.
        """
        if self._cancelled:
            self._check_cancel()
        if self._local_closed:
            raise ChannelClosed(f"channel {self.id} is closed for sending")
        conn = self._gateway.conn
        if conn.descriptors is None:
            payload: bytes | bytearray = _wire.dumps_payload(item)
            outgoing: list[tuple[int, _wire.DescriptorRef]] = []
        else:
            # Arrays of this process move with their descriptors.
            payload, outgoing = _wire.dumps_payload_fds(item)
        try:
            if len(payload) > conn.max_frame:
                raise DumpError(
                    f"item of {len(payload)} bytes exceeds the frame limit of "
                    f"{conn.max_frame} bytes"
                )
            self._flush_output()
        except BaseException:
            for _, ref in outgoing:
                ref.outgoing.abandon()
            raise
        conn.send_item(self.id, payload, outgoing)

    def receive(self, timeout: float | None = None) -> Any:
        """Return the next item the host sent, waiting up to ``timeout`` seconds.

        Raises
        ------
        Cancelled
            The host asked to cancel this execution.
        ChannelClosed
            The host closed the channel and every item was received (an ``EOFError``).
        RemoteError
            The host closed the channel with an error.
        TimeoutError
            Nothing arrived within ``timeout`` seconds.
        LoadError
            The item's bytes did not decode.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        gw = self._gateway
        items = self._items
        waited = False
        try:
            while True:
                if self._cancelled:
                    self._check_cancel()
                if self._receive_done:
                    self._raise_closed()
                try:
                    if items.empty():  # cheaper than the exception get_nowait raises
                        raise Empty
                    item = items.get_nowait()
                except Empty:
                    if gw.take_baton(self):
                        gw.lead_until(self, deadline)
                        continue
                    if self._before_wait is not None:
                        self._before_wait()
                    waited = True
                    left = None if deadline is None else deadline - time.monotonic()
                    try:
                        if left is not None and left <= 0:
                            raise Empty
                        item = items.get(timeout=left)
                    except Empty:
                        raise TimeoutError(
                            f"no item on channel {self.id} within {timeout} s"
                        ) from None
                if item is _WAKE:
                    continue
                if item is _CLOSED:
                    self._receive_done = True
                    self._raise_closed()
                if type(item) is _Failed:
                    raise item.error
                return item
        finally:
            if waited:
                # However this receive ends, it must not stay registered: a baton
                # handed to a channel that no longer waits would be lost.
                gw.leave(self)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self.receive()
        except ChannelClosed:
            raise StopIteration from None

    def close(self, error: object = None) -> None:
        """Close the sending side; with ``error``, close with that error text."""
        if self._local_closed:
            return
        self._flush_output()
        if error is None:
            msgtype, payload = CHANNEL_CLOSE, b""
        else:
            text = _fit(_safe_text(str(error)), self._gateway.conn.max_frame - 64)
            msgtype, payload = CHANNEL_CLOSE_ERROR, _wire.dumps_payload(text)
        self._local_closed = True
        self._gateway.conn.send(msgtype, self.id, payload)
        self._gateway.forget_if_done(self)

    def reconfigure(self, py2str_as_py3str: bool = True, py3str_as_py2str: bool = False) -> None:
        """Set how strings load on this channel, on both sides, as execnet's
        ``channel.reconfigure``.

        Items this side receives from now on load as the options say, and a RECONFIGURE
        message tells the host to load the items it receives on this channel the same
        way (see :func:`pixgate.loads` for what the options do).
        """
        config = (bool(py2str_as_py3str), bool(py3str_as_py2str))
        self._strconfig, self._load = config, _loader(config)
        self._gateway.conn.send(RECONFIGURE, self.id, _wire.dumps_payload(config))

    def isclosed(self) -> bool:
        """True when either side closed the channel."""
        return self._local_closed or self._remote_closed.is_set()

    def waitclose(self, timeout: float | None = None) -> None:
        """Wait until the host closes the channel.

        Raises
        ------
        RemoteError
            The host closed it with an error.
        TimeoutError
            It was not closed within ``timeout`` seconds.
        """
        if not self._remote_closed.wait(timeout):
            raise TimeoutError(f"channel {self.id} not closed within {timeout} s")
        if self._remote_error is not None:
            raise self._remote_error

    def is_cancelled(self) -> bool:
        """True when the host asked to cancel and :class:`Cancelled` was not raised yet."""
        return self._cancelled

    # -- gateway side ----------------------------------------------------

    def _check_cancel(self) -> None:
        if self._cancelled:
            self._cancelled = False
            raise Cancelled(f"channel {self.id} was cancelled by the host")

    def _raise_closed(self) -> None:
        if self._remote_error is not None:
            raise self._remote_error
        raise ChannelClosed(f"channel {self.id} was closed by the host")

    def _deliver(self, item: Any) -> None:
        self._items.put(item)
        if self._finished:
            self._drain()

    def _finish(self) -> None:
        """The remote code has ended: nothing will take items any more. Dropping them
        lets the host's arrays in them be released."""
        self._finished = True
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._items.get_nowait()
        except Empty:
            pass

    def _remote_close(self, error: RemoteError | None) -> None:
        self._remote_error = error
        self._remote_closed.set()
        self._items.put(_CLOSED)
        self._gateway.forget_if_done(self)

    def _cancel(self) -> None:
        self._cancelled = True
        self._items.put(_WAKE)

    def _output(self, stream: int, text: str) -> None:
        pending = self._pending[stream]
        self._has_pending = True
        if "\n" not in text:
            pending.append(text)
            return
        pending.append(text)
        whole = "".join(pending)
        head, _, tail = whole.rpartition("\n")
        pending.clear()
        if tail:
            pending.append(tail)
        self._send_output(stream, head + "\n")

    def _flush_output(self) -> None:
        if not self._has_pending:
            return
        self._has_pending = False
        for stream, pending in self._pending.items():
            if pending:
                text = "".join(pending)
                pending.clear()
                self._send_output(stream, text)

    def _send_output(self, stream: int, text: str) -> None:
        if self._local_closed:
            _fallback(stream).write(text)
            return
        text = _safe_text(text)
        # Chunks of characters whose UTF-8 form stays within the frame limit.
        step = max(1, (self._gateway.conn.max_frame - 64) // 4)
        for start in range(0, len(text), step):
            payload = _wire.dumps_payload((stream, text[start : start + step]))
            self._gateway.conn.send(OUTPUT, self.id, payload)


_ORIGINAL_STREAMS: dict[int, Any] = {}


def _fallback(stream: int) -> Any:
    return _ORIGINAL_STREAMS.get(stream) or (sys.__stdout__ if stream == 1 else sys.__stderr__)


class _ChannelWriter:
    """``sys.stdout``/``sys.stderr`` replacement that attributes text to the channel
    whose remote code runs on the current thread; other threads write to the fd."""

    def __init__(self, stream: int, fallback: Any) -> None:
        self._stream = stream
        self._fallback = fallback

    def write(self, text: str) -> int:
        channel = getattr(_tls, "channel", None)
        if channel is None:
            return self._fallback.write(text)
        channel._output(self._stream, text)
        return len(text)

    def flush(self) -> None:
        channel = getattr(_tls, "channel", None)
        if channel is not None:
            channel._flush_output()
        self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class _MainTasks:
    """Executions for the main thread, which waits for them in ``os.read`` on a pipe.

    The pipe's write end is also the interpreter's signal wake-up descriptor
    (``signal.set_wakeup_fd``, installed by :func:`serve`): Python runs signal handlers
    in the main thread only, and a SIGTERM the kernel delivers to another thread would
    otherwise leave the main thread asleep, its handler never run, until a task came.
    The byte it writes wakes the main thread, which runs the handler before it reads
    again. Bytes are wake-ups only: a task is looked for before every read.
    """

    def __init__(self) -> None:
        self._tasks: deque[Callable[[], None] | None] = deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)

    @property
    def wakeup_fd(self) -> int:
        """The write end, for ``signal.set_wakeup_fd`` (non-blocking, as it requires)."""
        return self._w

    def put(self, task: Callable[[], None] | None) -> None:
        self._tasks.append(task)
        try:
            os.write(self._w, b"t")
        except BlockingIOError:
            pass  # full: the main thread has bytes to read, and finds the task after

    def get(self) -> Callable[[], None] | None:
        while True:
            try:
                return self._tasks.popleft()
            except IndexError:
                pass
            os.read(self._r, 4096)


class _WorkerGateway:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self._channels: dict[int, Channel] = {}
        self._lock = threading.Lock()
        self._main_tasks = _MainTasks()
        self._cleanup: list[Callable[[], None]] = []
        # Reentrant: a signal handler that re-enters shutdown on the thread already in it
        # must not wait for itself (see shutdown).
        self._exit_lock = threading.RLock()
        self._exit_done = threading.Event()
        self._exit_running = False
        # Leader/follower reading (see docs/ARCHITECTURE.md): the baton is the right to
        # read the pipe. A thread that waits on a channel takes it when free and reads
        # itself, so a reply wakes the thread that wants it with no hand-off.
        self._baton = threading.Lock()
        self._baton_free = True
        self._free_since = time.monotonic()
        self._waiters: deque[Channel] = deque()
        self._bg_reading = False
        self._bg_parked = False
        self._bg_wake = threading.Event()
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        self._kicked = False
        # Seconds a channel waiting for an item polls the pipe before it sleeps (the
        # host's spin setting): a message that comes within it costs no wake-up.
        self.spin = 0.0
        # String handling copied into each new channel (execnet's gateway default;
        # changed by a RECONFIGURE on channel 0).
        self.strconfig: tuple[bool, bool] = _DEFAULT_STRCONFIG
        self.load: Callable[[bytes | bytearray], Any] = _wire.loads_payload

    def channel(self, id: int) -> Channel | None:
        # A single dict lookup is atomic; writers hold the lock.
        return self._channels.get(id)

    def forget_if_done(self, ch: Channel) -> None:
        if ch._local_closed and ch._remote_closed.is_set():
            with self._lock:
                if self._channels.get(ch.id) is ch:
                    del self._channels[ch.id]

    # -- lifecycle ---------------------------------------------------------

    def on_exit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the worker ends, before it flushes its output and exits.

        The worker ends with ``os._exit`` (at the host's GATEWAY_TERMINATE, at the end
        of its pipe, at the parent-death signal), so ``atexit`` hooks do not run there;
        these do, the most recently added first, each once. An exception in a hook is
        printed to stderr and the next hook runs. A hook may run in a signal handler:
        it must not wait for locks that the interrupted code may hold.
        """
        self._cleanup.append(hook)

    def shutdown(self, code: int) -> None:
        """Run cleanup hooks and end the process at once.

        Several paths can get here at the same moment (EOF on the pipe in a reader, the
        parent-death SIGTERM in the main thread): the first runs the cleanup; a later
        one on another thread waits for it (bounded: it may itself have interrupted a
        thread holding a lock the cleanup needs) and only then ends the process; a
        signal that re-enters on the cleanup's own thread returns and lets it finish.

        The parent-death signal can come several times: Linux sends it again each time
        the worker is handed to another thread of the dying host. The lock is reentrant
        and taken in C, so a re-entry can never mistake its own thread for another: one
        that lands before ``_exit_running`` is set runs the whole cleanup itself (the
        outer call had not begun it and never resumes); one that lands after returns.
        """
        if not self._exit_lock.acquire(blocking=False):
            self._exit_done.wait(2.0)
            os._exit(code)
        if self._exit_running:
            # A signal re-entered the cleanup on its own thread: let it go on.
            return
        self._exit_running = True
        for hook in reversed(self._cleanup):
            try:
                hook()
            except BaseException:  # noqa: BLE001 - exiting; report and go on
                _print_exc()
        try:
            # No lock: this may run in a signal handler that interrupted its holder.
            channels = list(self._channels.values())
        except RuntimeError:
            channels = []
        try:
            for ch in channels:
                for stream, pending in ch._pending.items():
                    if pending:
                        _fallback(stream).write("".join(pending))
                        pending.clear()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - exiting; output is best effort
            pass
        self._exit_done.set()
        os._exit(code)

    # -- the reading baton ------------------------------------------------

    def take_baton(self, ch: Channel) -> bool:
        """Take the baton, or register ``ch`` to be woken when it comes free."""
        with self._baton:
            if self._baton_free:
                self._baton_free = False
                return True
            if ch not in self._waiters:
                self._waiters.append(ch)
            if self._bg_reading and not self._kicked:
                self._kicked = True
                os.write(self._kick_w, b"k")
            return False

    def leave(self, ch: Channel) -> None:
        """``ch`` stops waiting: deregister it, and if the baton lies free, hand it to
        the next waiter or let the background reader know."""
        with self._baton:
            if ch in self._waiters:
                self._waiters.remove(ch)
            if self._baton_free:
                if self._waiters:
                    self._waiters.popleft()._items.put(_WAKE)
                elif self._bg_parked:
                    self._bg_wake.set()

    def _release_baton(self) -> None:
        with self._baton:
            self._baton_free = True
            # Restart the idle clock even when handing to a waiter: that waiter may
            # already hold its item and not take the baton.
            self._free_since = time.monotonic()
            if self._waiters:
                self._waiters.popleft()._items.put(_WAKE)
                return
            if self._bg_parked:
                self._bg_wake.set()

    def _read_and_dispatch(self) -> None:
        frame = self.conn.read_frame()
        if frame is None or self.dispatch(*frame):
            self.shutdown(0)

    def lead_until(self, ch: Channel, deadline: float | None) -> None:
        """Holding the baton, read and dispatch frames until ``ch`` has an item queued or
        ``deadline`` passes; then release the baton."""
        try:
            items = ch._items
            rfd = self.conn.rfd
            spin = self.spin
            before = ch._before_wait
            while items.empty():
                if before is not None and not self.conn.readable():
                    before()
                if spin and not self.conn.has_frame():
                    end = time.monotonic() + spin
                    if deadline is not None and deadline < end:
                        end = deadline
                    while not select.select([rfd], [], [], 0)[0] and time.monotonic() < end:
                        pass
                if deadline is not None and not self.conn.has_frame():
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([rfd], [], [], left)[0]:
                        items.put(_WAKE)
                        return
                self._read_and_dispatch()
        except BaseException:  # noqa: BLE001 - the host must learn why we stop
            _print_exc()
            self.shutdown(70)
        finally:
            self._release_baton()

    def reader_loop(self) -> None:
        """The background reader: holds the baton while no channel waits for it."""
        try:
            self._background()
        except BaseException:  # noqa: BLE001 - the host must learn why we stop
            _print_exc()
            self.shutdown(70)

    def _background(self) -> None:
        rfd, kick = self.conn.rfd, self._kick_r
        while True:
            with self._baton:
                # Cleared before every wait: a set() left over from an earlier wake-up
                # would otherwise turn the timed wait into a busy loop.
                self._bg_wake.clear()
                wait: float | None = None
                if not self._baton_free or self._waiters:
                    self._bg_parked = True
                else:
                    idle = time.monotonic() - self._free_since
                    if idle < _BG_IDLE:
                        wait = _BG_IDLE - idle
                    else:
                        self._baton_free = False
                        self._bg_reading = True
                if self._bg_parked or wait is not None:
                    took = False
                else:
                    took = True
            if not took:
                self._bg_wake.wait(wait)
                self._bg_parked = False
                continue
            try:
                while True:
                    if not self.conn.has_frame():
                        ready = select.select([rfd, kick], [], [])[0]
                        if kick in ready:
                            break
                    self._read_and_dispatch()
                    if self._waiters:
                        break
            finally:
                with self._baton:
                    self._bg_reading = False
                    if self._kicked:
                        self._kicked = False
                        try:
                            os.read(kick, 64)
                        except BlockingIOError:
                            pass
                self._release_baton()

    def main_loop(self) -> None:
        while True:
            task = self._main_tasks.get()
            if task is None:
                return
            task()

    def dispatch(
        self, msgtype: int, chid: int, payload: bytes | bytearray | None, length: int
    ) -> bool:
        """Handle one frame; True means stop serving."""
        if payload is None:
            ch = self.channel(chid)
            err = LoadError(
                f"frame of {length} bytes on channel {chid} exceeds the limit of "
                f"{self.conn.max_frame} bytes"
            )
            if ch is not None:
                ch._deliver(_Failed(err))
            else:
                _warn(str(err))
            return False
        if msgtype == CHANNEL_DATA:
            ch = self.channel(chid)
            if ch is None:
                if b"U" in payload or b"V" in payload:
                    # Possibly arrays of the host: mapped and dropped, they are released.
                    try:
                        _wire.loads_payload(payload)
                    except DataFormatError:
                        pass
                return False
            try:
                item: Any = ch._load(payload)
            except DataFormatError as exc:
                item = _Failed(exc)
            ch._deliver(item)
        elif msgtype == CHANNEL_EXEC or msgtype == EXEC_MAIN:
            self.start_exec(chid, payload, main=msgtype == EXEC_MAIN)
        elif msgtype == CHANNEL_CLOSE or msgtype == CHANNEL_LAST_MESSAGE:
            # LAST_MESSAGE is execnet's "the peer will send nothing more" (no payload).
            ch = self.channel(chid)
            if ch is not None:
                ch._remote_close(None)
        elif msgtype == CHANNEL_CLOSE_ERROR:
            ch = self.channel(chid)
            if ch is not None:
                try:
                    text = str(_wire.loads_payload(payload))
                except DataFormatError as exc:
                    text = f"undecodable error text: {exc}"
                ch._remote_close(RemoteError(text))
        elif msgtype == CANCEL:
            ch = self.channel(chid)
            if ch is not None:
                ch._cancel()
        elif msgtype == FORGET:
            try:
                name = _wire.loads_payload(payload)
                if not isinstance(name, str):
                    raise LoadError(f"expected a str, got {type(name).__name__}")
            except DataFormatError as exc:
                _warn(f"malformed forget message: {exc}")
            else:
                _transfer = sys.modules.get(__package__ + "._transfer")
                if _transfer is not None:  # else nothing is kept mapped
                    _transfer.forget(name)
        elif msgtype == OBJECT or msgtype == CHUNK:
            table = self.conn.descriptors
            if isinstance(table, ByValueTable):
                (table.object if msgtype == OBJECT else table.chunk)(payload)
            else:
                _warn(f"by-value message type {msgtype} on a gateway that shares memory ignored")
        elif msgtype == GATEWAY_TERMINATE:
            return True
        elif msgtype == STATUS:
            with self._lock:
                n = len(self._channels)
            status = {
                "numchannels": n,
                "numexecuting": threading.active_count() - 2,
                "execmodel": "thread",
            }
            self.conn.send(CHANNEL_DATA, chid, _wire.dumps_payload(status))
            self.conn.send(CHANNEL_CLOSE, chid)
        elif msgtype == RECONFIGURE:
            self.reconfigure(chid, payload)
        else:
            _warn(f"unknown message type {msgtype} on channel {chid} ignored")
        return False

    def reconfigure(self, chid: int, payload: bytes | bytearray) -> None:
        """Apply a RECONFIGURE: ``(py2str_as_py3str, py3str_as_py2str)`` for the channels
        created from now on (channel 0) or for one channel held now."""
        try:
            config = _wire.loads_payload(payload)
            if type(config) is not tuple or len(config) != 2:
                raise LoadError(f"expected a 2-tuple, got {type(config).__name__}")
            if not all(type(flag) is bool for flag in config):
                kinds = ", ".join(type(flag).__name__ for flag in config)
                raise LoadError(f"expected two bools, got ({kinds})")
        except DataFormatError as exc:
            _warn(f"malformed reconfigure message on channel {chid}: {exc}")
            return
        if chid == 0:
            self.strconfig, self.load = config, _loader(config)
        else:
            ch = self.channel(chid)
            if ch is not None:
                ch._strconfig, ch._load = config, _loader(config)

    def start_exec(self, chid: int, payload: bytes | bytearray, main: bool) -> None:
        with self._lock:
            if chid in self._channels:
                _warn(f"execution request for channel {chid}, which is in use, ignored")
                return
            ch = self._channels[chid] = Channel(self, chid)
        try:
            task = _wire.loads_payload(payload)
            source, file_name, call_name, kwargs = task
            if not isinstance(source, str):
                raise LoadError(f"exec source must be str, got {type(source).__name__}")
            if not isinstance(kwargs, dict):
                raise LoadError(f"exec kwargs must be dict, got {type(kwargs).__name__}")
        except (DataFormatError, ValueError, TypeError) as exc:
            _report_error(ch, type(exc).__name__, f"bad exec request: {exc}", "")
            ch._finish()
            return

        def run() -> None:
            _execute(ch, source, file_name, call_name, kwargs)

        if main:
            self._main_tasks.put(run)
        else:
            threading.Thread(target=run, name=f"pixgate-exec-{chid}", daemon=True).start()


def _loader(config: tuple[bool, bool]) -> Callable[[bytes | bytearray], Any]:
    """A function that decodes a channel payload with the string handling ``config``;
    for the default, the codec's own function (no extra call on the hot path)."""
    if config == _DEFAULT_STRCONFIG:
        return _wire.loads_payload
    py2str_as_py3str, py3str_as_py2str = config
    loads = _wire.loads_payload_with
    return lambda payload: loads(payload, py2str_as_py3str, py3str_as_py2str)


def _execute(
    ch: Channel,
    source: str,
    file_name: str | None,
    call_name: str | None,
    kwargs: dict[str, Any],
) -> None:
    filename = file_name or f"<remote exec {ch.id}>"
    _register_source(filename, source)
    _tls.channel = ch
    namespace: dict[str, Any] | None = None
    try:
        namespace = {"channel": ch, "__name__": "__channelexec__"}
        code = compile(source + "\n", filename, "exec")
        exec(code, namespace)
        if call_name:
            namespace[call_name](ch, **kwargs)
    except EOFError:
        pass
    except BaseException as exc:  # noqa: BLE001 - reported to the host
        # Reported while the traceback still holds what the remote code held: its
        # arrays go back after the error, which says it ended holding them.
        _tls.channel = None
        tb = _format_exception(exc)
        _report_error(ch, type(exc).__name__, str(exc), tb)
        ch._finish()
        return
    finally:
        _tls.channel = None
        _forget_source(filename)
        ch._flush_output()
    # What the remote code left goes before its channel closes: on CPython at once;
    # without reference counting (PyPy) the array layer runs the collector, so that the
    # releases of arrays it held come before the close there too.
    del namespace
    _transfer = sys.modules.get(__package__ + "._transfer")
    if _transfer is not None:
        _transfer.settle()
    try:
        ch.close()
    except OSError:
        pass
    ch._finish()


def _safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) escaped."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fit(text: str, limit: int) -> str:
    """``text`` cut from the front to at most ``limit`` UTF-8 bytes (tails of
    tracebacks say the most)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    keep = max(0, limit - 40)
    return "[... earlier text cut ...]\n" + data[len(data) - keep :].decode("utf-8", "ignore")


def _report_error(ch: Channel, type_name: str, message: str, tb: str) -> None:
    """Close ``ch`` with an error the host can always read; if the channel is already
    closed, write the report to stderr instead."""
    ch._flush_output()
    if ch._local_closed:
        _fallback(2).write(tb or f"{type_name}: {message}\n")
        return
    budget = ch._gateway.conn.max_frame - 256
    message = _fit(_safe_text(message), budget // 4)
    tb = _fit(_safe_text(tb), budget - len(message.encode("utf-8")) - len(type_name))
    ch._local_closed = True
    try:
        ch._gateway.conn.send(
            CHANNEL_CLOSE_ERROR, ch.id, _wire.dumps_payload((_safe_text(type_name), message, tb))
        )
    except OSError:
        pass
    ch._gateway.forget_if_done(ch)


def _warn(text: str) -> None:
    try:
        _fallback(2).write(f"pixgate worker: {text}\n")
    except BaseException:  # noqa: BLE001
        pass


def _version_from(text: str) -> str | None:
    """The value of a ``version = "X"`` (or ``version: str = "X"``) line."""
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        name = name.split(":")[0].strip()
        if sep and name in ("version", "full_version"):
            value = value.strip()
            if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
                return value[1:-1]
    return None


def _print_exc() -> None:
    """Print the current exception to stderr, best effort: it never raises.

    Callers print and then shut the worker down; when the host has died, stderr is a
    broken pipe, and an error raised here would skip the shutdown and leave the worker
    running with no reader.
    """
    try:
        import traceback

        _sync_linecache()
        traceback.print_exc()
    except BaseException:  # noqa: BLE001 - nowhere left to report it
        pass


# Sources of running remote executions, for tracebacks. Put into linecache only when
# one is formatted (or at once, if something else already imported linecache).
_SOURCES: dict[str, str] = {}


def _register_source(filename: str, source: str) -> None:
    _SOURCES[filename] = source
    if "linecache" in sys.modules:
        _sync_linecache()


def _forget_source(filename: str) -> None:
    _SOURCES.pop(filename, None)
    cache = getattr(sys.modules.get("linecache"), "cache", None)
    if cache is not None:
        cache.pop(filename, None)


def _sync_linecache() -> None:
    import linecache

    for name, text in list(_SOURCES.items()):
        linecache.cache[name] = (len(text), None, (text + "\n").splitlines(True), name)


def _format_exception(exc: BaseException) -> str:
    import traceback

    _sync_linecache()
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _numpy_version() -> str | None:
    """numpy's version without importing numpy (which costs tens of milliseconds)."""
    mod = sys.modules.get("numpy")
    if mod is not None:
        return str(getattr(mod, "__version__", "unknown"))
    try:
        import importlib.util

        spec = importlib.util.find_spec("numpy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as f:
                found = _version_from(f.read())
            if found:
                return found
        except OSError:
            continue
    try:
        from importlib.metadata import version

        return version("numpy")
    except Exception:  # noqa: BLE001 - any failure means unknown
        return "unknown"


def _helper_source() -> str:
    pkg = sys.modules.get(__package__ or "pixgate")
    return "installed" if getattr(pkg, "__file__", None) else "bootstrap"


_gateway: _WorkerGateway | None = None


def current_gateway() -> _WorkerGateway | None:
    """The worker gateway of this process, when it is a pixgate worker."""
    return _gateway


def set_before_wait(
    channel: Channel, hook: Callable[[], None] | None
) -> Callable[[], None] | None:
    """Make ``hook`` what ``channel`` calls whenever a receive on it is about to block
    (None: nothing), and return the hook it replaces, for the caller to put back.

    ``pixgate.frames`` sends its batched releases there: the host may be waiting for
    exactly those before it sends the next item.
    """
    previous = channel._before_wait
    channel._before_wait = hook
    return previous


# The array layer (pixgate._transfer, ._array, ._segment: compiled from source when the
# helper is bootstrapped) loads with the first array that crosses, not at start-up.
def _first_import(ref: _wire.ArrayRef | _wire.DescriptorRef) -> Any:
    from . import _transfer

    _transfer.install()
    return _transfer.import_reference(ref)


def _first_export(obj: object) -> _wire.ArrayRef | _wire.DescriptorRef | None:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    from . import _transfer

    _transfer.install()
    return _transfer.export_array(obj)


def serve(rfd: int = 3, wfd: int = 4) -> None:
    """Serve the host on the given pipe descriptors until it terminates or goes away."""
    global _gateway
    for fd in (rfd, wfd):
        os.set_inheritable(fd, False)
    max_frame = int(os.environ.pop("PIXGATE_MAX_FRAME", _DEFAULT_MAX_FRAME))
    descriptors: DescriptorTable | ByValueTable | None = _descriptor_table(
        os.environ.pop("PIXGATE_DESCRIPTORS", None)
    )
    by_value = os.environ.pop("PIXGATE_BY_VALUE", "") == "1"
    if by_value:
        descriptors = ByValueTable()
    conn = _Conn(rfd, wfd, max_frame, descriptors)
    if isinstance(descriptors, ByValueTable):
        descriptors.conn = conn
    gw = _gateway = _WorkerGateway(conn)
    gw.spin = min(int(os.environ.pop("PIXGATE_SPIN_US", "0") or 0), 10_000) / 1e6

    def on_term(signum: int, frame: object) -> None:
        # Later SIGTERMs (one per thread of a dying host) are ignored from here on, so
        # handlers cannot pile up inside the cleanup; one already pending may still run.
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
        gw.shutdown(128 + signum)

    # Before the handshake: once the host has it, a SIGTERM must find the cleanup.
    _signal.signal(_signal.SIGTERM, on_term)
    # Delivered to another thread, it wakes the main thread to run the handler.
    try:
        _signal.set_wakeup_fd(gw._main_tasks.wakeup_fd, warn_on_full_buffer=False)
    except TypeError:  # an interpreter without the keyword
        _signal.set_wakeup_fd(gw._main_tasks.wakeup_fd)
    from . import __version__

    info = {
        "protocol": PROTOCOL_VERSION,
        "helper": __version__,
        "helper_source": _helper_source(),
        "python": sys.version.split()[0],
        "numpy": _numpy_version(),
        "pid": os.getpid(),
        "executable": sys.executable,
        "implementation": sys.implementation.name,
        "descriptors": descriptors is not None and not by_value,
        "by_value": by_value,
    }
    conn.send(HANDSHAKE, 0, _wire.dumps_payload(info))
    _wire.set_array_hooks(_first_export, _first_import)

    for stream, name in ((1, "stdout"), (2, "stderr")):
        original = getattr(sys, name)
        _ORIGINAL_STREAMS[stream] = original
        setattr(sys, name, _ChannelWriter(stream, original))

    threading.Thread(target=gw.reader_loop, name="pixgate-reader", daemon=True).start()
    gw.main_loop()
