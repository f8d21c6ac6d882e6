"""pixgate's Python helper.

The worker side of a pixgate gateway: a Rust host starts a CPython process, sends this
package's source over a pipe (or uses the installed package) and runs code here with a
``channel`` to talk back. The same source serves both ways.

Remote code can ``import pixgate`` for the codec (:func:`dumps`, :func:`loads`,
byte-compatible with ``execnet.dumps``/``execnet.loads``) and the error classes, such as
:class:`Cancelled`, raised at the next channel operation after the host cancels.

Arrays in shared memory (numpy needed, imported on first use): :func:`empty`,
:func:`zeros`, :func:`full` and :func:`asarray` make arrays the host can map without a
copy; :func:`meta` and :func:`to_xarray` give the metadata stored with them;
:func:`is_shared` tells them apart from plain arrays.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._errors import (
    Cancelled,
    ChannelClosed,
    DataFormatError,
    DTypeError,
    DumpError,
    Error,
    HeaderError,
    LayoutError,
    LoadError,
    ProtocolError,
    RemoteError,
    SegmentError,
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
    "DTypeError",
    "DataFormatError",
    "DumpError",
    "Error",
    "HeaderError",
    "LayoutError",
    "LoadError",
    "ProtocolError",
    "RemoteError",
    "SegmentError",
    "TimeoutError",
    "asarray",
    "dumps",
    "empty",
    "full",
    "is_shared",
    "loads",
    "meta",
    "to_xarray",
    "zeros",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._array import asarray, empty, full, is_shared, meta, to_xarray, zeros

# The array functions live in ._array, imported on first use: a bootstrapped worker
# compiles every module it imports from source, and most workers never share an array.
_ARRAY_NAMES = frozenset({"asarray", "empty", "full", "is_shared", "meta", "to_xarray", "zeros"})


def __getattr__(name: str) -> object:
    if name in _ARRAY_NAMES:
        from . import _array

        value = getattr(_array, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
