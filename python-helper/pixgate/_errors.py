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
