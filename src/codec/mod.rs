//! execnet's value codec: [`dumps`] and [`loads`], byte for byte as in execnet.
//!
//! # The format
//!
//! A value is a program for a stack machine, one ASCII opcode per step; counts and
//! lengths are signed 32-bit big-endian. [`dumps`] writes a version byte, the value and
//! the STOP opcode `Q`; channel payloads carry the same without the version byte.
//!
//! | opcode | operand | effect |
//! |---|---|---|
//! | `L` `R` `C` | — | push `None`, `True`, `False` |
//! | `F` (`G`) | i32 | push an int |
//! | `H` (`I`) | i32 length, ASCII decimal | push an int |
//! | `D` | f64 | push a float |
//! | `T` | two f64 | push a complex |
//! | `N` | i32 length, UTF-8 | push a str (bytes with [`LoadOptions::py3str_as_py2str`]) |
//! | `S` | i32 length, UTF-8 | push a str |
//! | `M` | i32 length, bytes | push bytes (latin-1 text with [`LoadOptions::py2str_as_py3str`]) |
//! | `A` | i32 length, bytes | push bytes |
//! | `K` | i32 count | push a list of `count` slots |
//! | `J` | — | push an empty dict |
//! | `P` | — | pop value, pop key, store into the list or dict on top |
//! | `@` `O` `E` | i32 count | pop `count` values, push a tuple, set, frozenset |
//! | `B` | i32 id | a channel reference: not supported, always an error here |
//! | `Q` | — | stop: exactly one value is left |
//!
//! A list `[a, b]` is written `K 2, F 0, a, P, F 1, b, P`; a dict `J, k, v, P, …`;
//! a tuple `(a, b)` is `a, b, @ 2`.
//!
//! # Format versions
//!
//! The version byte is `2` for execnet 2.0 and later ([`FormatVersion::V2`], what
//! [`dumps`] writes) and `1` for execnet up to 1.9, on Python 2, 3 and Jython alike
//! ([`FormatVersion::V1`], [`dumps_with`]). The opcodes are the same in both; a
//! Python 3 execnet writes the same bytes after either version byte, and a Python 2
//! one writes its `str` as `M`, its `unicode` as `S` and its `long` as `G` or `I`.
//! [`loads`] and [`loads_with`] read both versions. What the versions changed is how
//! execnet's loader treats [`LoadOptions::py3str_as_py2str`]: from 2.0 on it turns `N`
//! into bytes on Python 3 as well, which this decoder does for both versions.
//!
//! # Hardening
//!
//! The decoder reads bytes from another process, so it trusts none of them:
//!
//! * It does not recurse. Every length and count is checked against the bytes that
//!   remain before it is used, and nothing is allocated in proportion to a count: a
//!   list grows as its items arrive. Memory stays within a small multiple of the input
//!   length.
//! * A list must be filled in order (indices 0, 1, 2, …, as execnet writes them) and
//!   completely before it is used.
//! * Values nest at most [`MAX_DEPTH`] containers deep, so dropping, printing or
//!   re-encoding a decoded value never exhausts the stack.
//! * Decimal ints are limited to [`MAX_INT_DIGITS`] digits, as in CPython.
//! * Every error reports the byte offset at which it was found.
//!
//! It is also stricter than execnet where execnet is lenient by accident: bytes after
//! STOP, a decimal int with spaces or underscores, and a list index other than the next
//! one are errors. Dict entries and set items are kept as they arrive, duplicates
//! included.

use std::io::Write as _;

use num_bigint::BigInt;
use num_traits::ToPrimitive;

use crate::value::{Access, ArrayRef, Place, Value};

/// The version byte that starts the output of [`dumps`]: that of
/// [`FormatVersion::V2`].
pub const DUMPFORMAT_VERSION: u8 = 2;

/// A version of the value format, named by the byte that starts [`dumps_with`]'s
/// output.
///
/// Both versions have the same opcodes and layouts; see the [module
/// documentation](self#format-versions) and docs/PROTOCOL.md §5.3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FormatVersion {
    /// Version byte `1`: execnet 1.9 and earlier (Python 2, Python 3, Jython).
    V1,
    /// Version byte `2`: execnet 2.0 and later, the only one execnet supports today.
    #[default]
    V2,
}

impl FormatVersion {
    /// The version byte.
    pub const fn byte(self) -> u8 {
        match self {
            FormatVersion::V1 => 1,
            FormatVersion::V2 => 2,
        }
    }

    /// The version a version byte names, if it names one.
    pub const fn from_byte(byte: u8) -> Option<FormatVersion> {
        match byte {
            1 => Some(FormatVersion::V1),
            2 => Some(FormatVersion::V2),
            _ => None,
        }
    }
}

/// How strings load: execnet's `py2str_as_py3str` and `py3str_as_py2str`.
///
/// | option | opcode | `false` | `true` |
/// |---|---|---|---|
/// | `py2str_as_py3str` | `M` (a Python 2 `str`) | [`Value::Bytes`] | [`Value::Str`], decoded as latin-1 |
/// | `py3str_as_py2str` | `N` (a Python 3 `str`) | [`Value::Str`] (UTF-8 checked) | [`Value::Bytes`], the raw UTF-8 bytes |
///
/// `S` (a Python 2 `unicode`) always loads as [`Value::Str`], `A` as [`Value::Bytes`].
/// The default, [`LoadOptions::LOADS`], is what `execnet.loads` uses;
/// [`LoadOptions::CHANNEL`] is what execnet's gateways and channels use until
/// [`Gateway::reconfigure`](crate::Gateway::reconfigure) or
/// [`Channel::reconfigure`](crate::Channel::reconfigure) change it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoadOptions {
    /// Load `M` (a Python 2 `str`) as text decoded from latin-1 instead of bytes.
    pub py2str_as_py3str: bool,
    /// Load `N` (a Python 3 `str`) as its UTF-8 bytes instead of text.
    pub py3str_as_py2str: bool,
}

impl LoadOptions {
    /// `execnet.loads`'s defaults: `M` loads as bytes, `N` as text.
    pub const LOADS: LoadOptions = LoadOptions::new(false, false);

    /// The defaults of execnet's gateways and channels: `M` loads as latin-1 text, `N`
    /// as text. Channel payloads decode with these until a reconfigure.
    pub const CHANNEL: LoadOptions = LoadOptions::new(true, false);

    /// Options with the two settings, in execnet's order.
    pub const fn new(py2str_as_py3str: bool, py3str_as_py2str: bool) -> LoadOptions {
        LoadOptions {
            py2str_as_py3str,
            py3str_as_py2str,
        }
    }
}

/// The most decimal digits an int may have, as CPython's default `int_max_str_digits`.
pub const MAX_INT_DIGITS: usize = 4300;

/// The deepest nesting of containers that [`dumps`] and [`loads`] accept.
///
/// A scalar has depth 0 and a container one more than its deepest item, so `[[]]` has
/// depth 2.
pub const MAX_DEPTH: usize = 512;

const OP_BUILDTUPLE: u8 = b'@';
const OP_BYTES: u8 = b'A';
const OP_CHANNEL: u8 = b'B';
const OP_FALSE: u8 = b'C';
const OP_FLOAT: u8 = b'D';
const OP_FROZENSET: u8 = b'E';
const OP_INT: u8 = b'F';
const OP_LONG: u8 = b'G';
const OP_LONGINT: u8 = b'H';
const OP_LONGLONG: u8 = b'I';
const OP_NEWDICT: u8 = b'J';
const OP_NEWLIST: u8 = b'K';
const OP_NONE: u8 = b'L';
const OP_PY2STRING: u8 = b'M';
const OP_PY3STRING: u8 = b'N';
const OP_SET: u8 = b'O';
const OP_SETITEM: u8 = b'P';
const OP_STOP: u8 = b'Q';
const OP_TRUE: u8 = b'R';
const OP_UNICODE: u8 = b'S';
const OP_COMPLEX: u8 = b'T';
/// A reference to an array in a shared-memory segment: `U`, the segment name as an
/// `i32`-length-prefixed UTF-8 string, the generation as a big-endian `u64`, the access
/// as one byte (0 shared, 1 lent, 2 moved).
pub(crate) const OP_ARRAY: u8 = b'U';

/// A reference to an array in an anonymous segment: as `U`'s name block, then the
/// descriptor token, the offset of the segment in its object and the generation, each a
/// big-endian `u64`, and the access byte (docs/PROTOCOL.md §5.7).
pub(crate) const OP_DESC_ARRAY: u8 = b'V';

/// The longest segment name an array reference may carry.
pub const MAX_ARRAY_NAME: usize = 255;

/// The fewest bytes one list item takes: index (`F` + 4), value (1), `P` (1).
const MIN_LIST_ITEM_BYTES: usize = 7;

/// Encodes `value` as execnet's `dumps` does: version byte `2`, value, STOP.
///
/// # Errors
///
/// Fails when a str, bytes or container is longer than `i32::MAX`, an int has more than
/// [`MAX_INT_DIGITS`] decimal digits, or containers nest deeper than [`MAX_DEPTH`].
pub fn dumps(value: &Value) -> Result<Vec<u8>, EncodeError> {
    dumps_after(DUMPFORMAT_VERSION, value)
}

/// Encodes `value` in the given format version: its version byte, the value, STOP.
///
/// [`FormatVersion::V1`] gives the bytes of execnet 1.9's `dumps` on Python 3, which
/// execnet 1.9 and earlier load (on Python 2 too); [`FormatVersion::V2`] gives those of
/// [`dumps`].
///
/// # Errors
///
/// As [`dumps`].
pub fn dumps_with(value: &Value, version: FormatVersion) -> Result<Vec<u8>, EncodeError> {
    dumps_after(version.byte(), value)
}

/// The version byte `first`, then the encoding of `value` and STOP. Inlined, so that
/// [`dumps`] writes a constant.
#[inline(always)]
fn dumps_after(first: u8, value: &Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(first);
    encode_payload(value, &mut out)?;
    Ok(out)
}

/// Decodes the output of execnet's `dumps`, as `execnet.loads` does with its defaults
/// ([`LoadOptions::LOADS`]): a Python 2 string (`M`) loads as [`Value::Bytes`]. Both
/// format versions are read.
///
/// # Errors
///
/// Fails on a version byte other than 1 or 2 and on any input that is not exactly one
/// well-formed value followed by STOP; see [`DecodeErrorKind`].
pub fn loads(bytes: &[u8]) -> Result<Value, DecodeError> {
    loads_with(bytes, LoadOptions::LOADS)
}

/// Decodes the output of execnet's `dumps` of either format version, loading strings as
/// `options` say (execnet's `loads(data, py2str_as_py3str, py3str_as_py2str)`).
///
/// # Errors
///
/// As [`loads`].
pub fn loads_with(bytes: &[u8], options: LoadOptions) -> Result<Value, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::new(DecodeErrorKind::Empty, 0)),
        Some(&found) if FormatVersion::from_byte(found).is_some() => decode(bytes, 1, options),
        Some(&found) => Err(DecodeError::new(DecodeErrorKind::BadVersion { found }, 0)),
    }
}

/// Appends the encoding of `value` and STOP to `out`, without a version byte, as
/// execnet's `dumps_internal` does for channel payloads. On error `out` is left as it
/// was.
pub(crate) fn encode_payload(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    match encode_value(value, 0, out) {
        Ok(()) => {
            out.push(OP_STOP);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Decodes a channel payload (no version byte) with the channel defaults
/// ([`LoadOptions::CHANNEL`]), as execnet's `loads_internal` does on a channel that
/// was never reconfigured: a Python 2 string (`M`) loads as text decoded from latin-1.
pub(crate) fn decode_payload(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode_payload_with(bytes, LoadOptions::CHANNEL)
}

/// Decodes a channel payload (no version byte), loading strings as `options` say.
pub(crate) fn decode_payload_with(
    bytes: &[u8],
    options: LoadOptions,
) -> Result<Value, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::new(DecodeErrorKind::Empty, 0));
    }
    decode(bytes, 0, options)
}

/// The payload of a RECONFIGURE message: the tuple `(py2str_as_py3str,
/// py3str_as_py2str)` as a channel payload, as execnet sends it.
pub(crate) fn encode_load_options(options: LoadOptions, out: &mut Vec<u8>) {
    let flag = |b: bool| if b { OP_TRUE } else { OP_FALSE };
    out.extend_from_slice(&[
        flag(options.py2str_as_py3str),
        flag(options.py3str_as_py2str),
        OP_BUILDTUPLE,
        0,
        0,
        0,
        2,
        OP_STOP,
    ]);
}

/// Reads the payload of a RECONFIGURE message; the error says what is wrong with it.
pub(crate) fn decode_load_options(payload: &[u8]) -> Result<LoadOptions, String> {
    match &decode_payload(payload) {
        Ok(Value::Tuple(t)) => match t.as_slice() {
            [Value::Bool(py2), Value::Bool(py3)] => Ok(LoadOptions::new(*py2, *py3)),
            _ => Err(format!(
                "expected (bool, bool), got a tuple of {} items ({})",
                t.len(),
                t.iter()
                    .map(Value::type_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        Ok(other) => Err(format!("expected (bool, bool), got {}", other.type_name())),
        Err(e) => Err(e.to_string()),
    }
}

mod decode;
mod encode;
mod error;
#[cfg(test)]
mod tests;

use decode::*;
use encode::*;
pub use error::{DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind};
