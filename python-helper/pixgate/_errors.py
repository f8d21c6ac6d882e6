"""Exception classes of the pixgate helper.

Every error derives from :class:`Error` and, where one fits, from the matching builtin,
so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "DataFormatError",
    "DumpError",
    "LoadError",
    "ProtocolError",
    "RemoteError",
    "TimeoutError",
    "Cancelled",
    "ChannelClosed",
    "ReleaseError",
    "SegmentError",
    "HeaderError",
    "DTypeError",
    "LayoutError",
]

import builtins


class Error(Exception):
    """Base class of every pixgate error."""


class DataFormatError(Error, ValueError):
    """A value could not be converted to or from the wire format."""


class DumpError(DataFormatError):
    """A value could not be serialized."""


class LoadError(DataFormatError):
    """Bytes could not be deserialized into a value."""


class ProtocolError(Error, OSError):
    """The peer broke the wire protocol."""


class RemoteError(Error):
    """The other side closed the channel with an error.

    Parameters
    ----------
    formatted : str
        The error text the other side sent (a formatted traceback or a message).
    """

    def __init__(self, formatted: str) -> None:
        super().__init__(formatted)
        self.formatted = formatted

    def __str__(self) -> str:
        return self.formatted


class TimeoutError(Error, builtins.TimeoutError):
    """A blocking channel operation did not complete in time."""


class Cancelled(Error):
    """The host cancelled the remote execution running on this channel.

    Raised at the next channel operation after the host's cancel request arrives.
    """


class ChannelClosed(Error, EOFError):
    """The channel is closed: no more items will arrive, or it can no longer send."""


class ReleaseError(Error, ValueError):
    """An array cannot be released: it is not one the host shared or lent to this
    process, or it was released or sent back already."""


class SegmentError(Error, OSError):
    """A shared-memory segment could not be created, opened or used.

    Parameters
    ----------
    message : str
        What went wrong, naming the segment and the expected and actual values.
    problem : str
        A short, stable identifier of the failed check (``"not found"``, ``"mode"``,
        ``"no space"``, ...), for code that handles particular failures.
    segment : str, optional
        The segment's name, with its leading slash.
    errno : int, optional
        The operating system's error number, when a system call failed.

    Attributes
    ----------
    problem : str
        As given.
    segment : str or None
        As given.
    """

    def __init__(
        self,
        message: str,
        problem: str,
        segment: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.segment = segment
        self.errno = errno


class HeaderError(SegmentError, ValueError):
    """A segment's header failed validation; :attr:`problem` names the failed check."""


class DTypeError(Error, TypeError):
    """A dtype that pixgate's shared arrays cannot hold."""


class LayoutError(Error, ValueError):
    """A shape, strides or metadata that no segment can describe."""
