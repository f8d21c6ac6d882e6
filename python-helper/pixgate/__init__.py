"""pixgate's Python helper.

The worker side of a pixgate gateway: a Rust host starts a CPython process, sends this
package's source over a pipe (or uses the installed package) and runs code here with a
``channel`` to talk back. The same source serves both ways.

Remote code can ``import pixgate`` for the codec (:func:`dumps`, :func:`loads`,
byte-compatible with ``execnet.dumps``/``execnet.loads`` of execnet 2.x, and with
execnet 1.9's through ``dumps(obj, version=1)``; ``loads`` reads both and takes
execnet's ``py2str_as_py3str`` and ``py3str_as_py2str``) and the error classes, such as
:class:`Cancelled`, raised at the next channel operation after the host cancels. Its
``channel`` has execnet's ``reconfigure`` too.

Arrays in shared memory (numpy needed, imported on first use): :func:`empty`,
:func:`zeros`, :func:`full` and :func:`asarray` make arrays the host can map without a
copy; :func:`meta` and :func:`to_xarray` give the metadata stored with them;
:func:`is_shared` tells them apart from plain arrays; :func:`reuse_limit` bounds the
memory of freed arrays a worker keeps for new ones. :func:`frames` iterates over a
host's frame stream, releasing each frame when the loop moves on; :func:`release` gives
one array back at once.
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
    ReleaseError,
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
    "ReleaseError",
    "RemoteError",
    "SegmentError",
    "TimeoutError",
    "asarray",
    "dumps",
    "empty",
    "frames",
    "full",
    "is_shared",
    "loads",
    "meta",
    "release",
    "reuse_limit",
    "to_xarray",
    "zeros",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._array import asarray, empty, full, is_shared, meta, reuse_limit, to_xarray, zeros
    from ._transfer import frames, release

# The array functions live in ._array, imported on first use: a bootstrapped worker
# compiles every module it imports from source, and most workers never share an array.
_ARRAY_NAMES = frozenset(
    {"asarray", "empty", "full", "is_shared", "meta", "reuse_limit", "to_xarray", "zeros"}
)
_TRANSFER_NAMES = frozenset({"frames", "release"})


def __dir__() -> list[str]:
    # The public API, lazy names included, so that dir() and help() show the array API.
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})


def __getattr__(name: str) -> object:
    if name in _ARRAY_NAMES or name in _TRANSFER_NAMES:
        import importlib

        module = importlib.import_module(
            "._array" if name in _ARRAY_NAMES else "._transfer", __name__
        )
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
