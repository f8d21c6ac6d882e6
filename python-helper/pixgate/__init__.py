"""pixgate's Python helper.

The worker side of a pixgate gateway: a Rust host starts a CPython process, sends this
package's source over a pipe (or uses the installed package) and runs code here with a
``channel`` to talk back. The same source serves both ways.

Remote code can ``import pixgate`` for the codec (:func:`dumps`, :func:`loads`,
byte-compatible with ``execnet.dumps``/``execnet.loads``) and the error classes, such as
:class:`Cancelled`, raised at the next channel operation after the host cancels.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
from ._wire import dumps, loads
from ._worker import PROTOCOL_VERSION, Channel

__all__ = [
    "__version__",
    "PROTOCOL_VERSION",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "DataFormatError",
    "DumpError",
    "Error",
    "LoadError",
    "ProtocolError",
    "RemoteError",
    "TimeoutError",
    "dumps",
    "loads",
]
