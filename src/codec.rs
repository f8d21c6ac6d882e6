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

use std::fmt;
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

/// A value could not be encoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("value encode error: {kind}")]
pub struct EncodeError {
    kind: EncodeErrorKind,
}

impl EncodeError {
    fn new(kind: EncodeErrorKind) -> EncodeError {
        EncodeError { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> &EncodeErrorKind {
        &self.kind
    }
}

/// The ways encoding can fail.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeErrorKind {
    /// A str, bytes or container is longer than the format's 32-bit lengths allow.
    #[error("{what} of length {len} exceeds the limit of 2147483647")]
    TooLong {
        /// The Python type: `"str"`, `"bytes"`, `"list"`, ….
        what: &'static str,
        /// Its length (UTF-8 bytes for a str).
        len: usize,
    },
    /// An int has more decimal digits than [`MAX_INT_DIGITS`].
    #[error("int of {digits} decimal digits exceeds the limit of {MAX_INT_DIGITS}")]
    IntTooLarge {
        /// How many digits it has (for very large ints, a lower bound).
        digits: usize,
    },
    /// Containers nest deeper than the limit.
    #[error("containers nest deeper than the limit of {limit}")]
    TooDeep {
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
    /// A dict key or set member is a list, dict or set (or a tuple holding one), which a
    /// Python peer cannot hash.
    #[error("unhashable {found} as a {place}")]
    Unhashable {
        /// The Python type found.
        found: &'static str,
        /// `"dict key"` or `"set member"`.
        place: &'static str,
    },
}

/// Bytes did not decode as a value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("value decode error at byte {offset}: {kind}")]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: usize,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, offset: usize) -> DecodeError {
        DecodeError { kind, offset }
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// Where it went wrong: the offset in the input of the opcode whose item is bad, of
    /// the first invalid byte of a str, or of the first byte after STOP.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// The ways decoding can fail.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input has no bytes at all.
    #[error("input is empty")]
    Empty,
    /// The version byte names no [`FormatVersion`].
    #[error("dump format version {found}, expected 1 or 2")]
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// The input ended before the STOP opcode.
    #[error("input ended without a stop opcode")]
    MissingStop,
    /// Bytes follow the STOP opcode.
    #[error("{count} bytes after the stop opcode, expected none")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A byte that is no opcode of the format.
    #[error("unknown opcode {}", OpName(*.opcode))]
    UnknownOpcode {
        /// The byte.
        opcode: u8,
    },
    /// The opcode reserved for array references, which this decoder does not accept.
    /// An array reference is malformed.
    #[error("bad array reference: {reason}")]
    BadArrayRef {
        /// What is wrong with it.
        reason: String,
    },
    /// A reference to an execnet channel, which pixgate does not support.
    #[error("channel references are not supported (channel {0})")]
    ChannelRef(i32),
    /// The input ends inside an opcode's operand.
    #[error("opcode {} needs {needed} more bytes, {remaining} remain", OpName(*.opcode))]
    Truncated {
        /// The opcode.
        opcode: u8,
        /// How many bytes its operand needs.
        needed: usize,
        /// How many bytes remain.
        remaining: usize,
    },
    /// A length or count is negative.
    #[error("opcode {} has negative length {len}", OpName(*.opcode))]
    NegativeLength {
        /// The opcode.
        opcode: u8,
        /// The length read.
        len: i32,
    },
    /// A list claims more items than the remaining bytes can hold.
    #[error(
        "list of {count} items cannot fit in the {remaining} bytes that remain \
         (an item takes at least {MIN_LIST_ITEM_BYTES})"
    )]
    ListTooLong {
        /// The item count read.
        count: usize,
        /// How many bytes remain.
        remaining: usize,
    },
    /// A decimal int has more digits than [`MAX_INT_DIGITS`].
    #[error("int of {digits} decimal digits exceeds the limit of {limit}")]
    IntTooLong {
        /// How many digits it has.
        digits: usize,
        /// The limit, [`MAX_INT_DIGITS`].
        limit: usize,
    },
    /// A decimal int is not an optional sign followed by ASCII digits.
    #[error("int literal {text:?} is not a decimal number")]
    InvalidInt {
        /// The literal (its first bytes, when it is long).
        text: String,
    },
    /// A str is not valid UTF-8.
    #[error("str is not valid utf-8")]
    InvalidUtf8,
    /// An opcode needs more values than the stack holds.
    #[error("opcode {} needs {needed} values on the stack, {available} there", OpName(*.opcode))]
    StackUnderflow {
        /// The opcode.
        opcode: u8,
        /// How many values it needs.
        needed: usize,
        /// How many the stack holds.
        available: usize,
    },
    /// SETITEM's target is not a list or dict.
    #[error("setitem target is a {found}, expected list or dict")]
    NotAContainer {
        /// The target's Python type.
        found: &'static str,
    },
    /// A list item's index is not the next one in order.
    #[error("list item index {found}, expected {expected}")]
    ListIndex {
        /// The next index.
        expected: usize,
        /// The index found (an int, or the type of a non-int).
        found: String,
    },
    /// A list receives more items than it announced.
    #[error("list of {len} items receives another")]
    ListFull {
        /// The announced length.
        len: usize,
    },
    /// A list is used before all its items arrived.
    #[error("list of {len} items used with {filled} filled")]
    ListIncomplete {
        /// The announced length.
        len: usize,
        /// How many items arrived.
        filled: usize,
    },
    /// STOP found other than exactly one value on the stack.
    #[error("stop with {len} values on the stack, expected 1")]
    StopStack {
        /// How many values the stack holds.
        len: usize,
    },
    /// Containers nest deeper than the limit.
    #[error("containers nest deeper than the limit of {limit}")]
    TooDeep {
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
    /// A dict key or set member is unhashable in Python (a list, dict or set, or a
    /// tuple holding one).
    #[error("unhashable {found} as a {place}")]
    Unhashable {
        /// The Python type found.
        found: &'static str,
        /// `"dict key"` or `"set member"`.
        place: &'static str,
    },
}

/// Shows an opcode as `'A'` or, when it is not printable ASCII, as `0x05`.
struct OpName(u8);

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

fn encode_value(value: &Value, depth: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match value {
        Value::None => out.push(OP_NONE),
        Value::Bool(true) => out.push(OP_TRUE),
        Value::Bool(false) => out.push(OP_FALSE),
        Value::Int(i) => encode_int(*i, out),
        Value::BigInt(b) => encode_bigint(b, out)?,
        Value::Float(x) => {
            out.push(OP_FLOAT);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Complex(c) => {
            out.push(OP_COMPLEX);
            out.extend_from_slice(&c.re.to_be_bytes());
            out.extend_from_slice(&c.im.to_be_bytes());
        }
        Value::Str(s) => {
            let len = encode_len("str", s.len())?;
            out.push(OP_PY3STRING);
            out.extend_from_slice(&len);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            let len = encode_len("bytes", b.len())?;
            out.push(OP_BYTES);
            out.extend_from_slice(&len);
            out.extend_from_slice(b);
        }
        Value::List(items) => {
            let depth = enter(depth)?;
            let len = encode_len("list", items.len())?;
            out.push(OP_NEWLIST);
            out.extend_from_slice(&len);
            for (i, item) in items.iter().enumerate() {
                // `i` < `i32::MAX`, checked by `encode_len` above.
                encode_int(i as i64, out);
                encode_value(item, depth, out)?;
                out.push(OP_SETITEM);
            }
        }
        Value::Dict(entries) => {
            let depth = enter(depth)?;
            out.push(OP_NEWDICT);
            for (key, item) in entries {
                check_hashable(key, "dict key")?;
                encode_value(key, depth, out)?;
                encode_value(item, depth, out)?;
                out.push(OP_SETITEM);
            }
        }
        Value::Tuple(items) => encode_collection(OP_BUILDTUPLE, "tuple", items, depth, out)?,
        Value::Array(a) => {
            let name = a.name();
            if name.is_empty() || name.len() > MAX_ARRAY_NAME {
                return Err(EncodeError::new(EncodeErrorKind::TooLong {
                    what: "array name",
                    len: name.len(),
                }));
            }
            let anonymous = a.transport() == crate::segment::Transport::Anonymous;
            out.push(if anonymous { OP_DESC_ARRAY } else { OP_ARRAY });
            out.extend_from_slice(&encode_len("array name", name.len())?);
            out.extend_from_slice(name.as_bytes());
            if anonymous {
                out.extend_from_slice(&a.token().to_be_bytes());
                out.extend_from_slice(&a.offset().to_be_bytes());
            }
            out.extend_from_slice(&a.generation().to_be_bytes());
            out.push(a.access() as u8);
        }
        Value::Set(items) | Value::FrozenSet(items) => {
            for item in items {
                check_hashable(item, "set member")?;
            }
            match value {
                Value::Set(_) => encode_collection(OP_SET, "set", items, depth, out)?,
                _ => encode_collection(OP_FROZENSET, "frozenset", items, depth, out)?,
            }
        }
    }
    Ok(())
}

/// Python can hash scalars, frozensets and tuples of hashable items. Iterative, so a
/// deeply nested tuple cannot exhaust the stack.
fn check_hashable(value: &Value, place: &'static str) -> Result<(), EncodeError> {
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        match v {
            Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::Array(_) => {
                return Err(EncodeError::new(EncodeErrorKind::Unhashable {
                    found: v.type_name(),
                    place,
                }));
            }
            Value::Tuple(items) => todo.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// The nesting depth of a container's items, when the container is at `depth`.
fn enter(depth: usize) -> Result<usize, EncodeError> {
    if depth >= MAX_DEPTH {
        return Err(EncodeError::new(EncodeErrorKind::TooDeep {
            limit: MAX_DEPTH,
        }));
    }
    Ok(depth + 1)
}

fn encode_len(what: &'static str, len: usize) -> Result<[u8; 4], EncodeError> {
    match i32::try_from(len) {
        Ok(n) => Ok(n.to_be_bytes()),
        Err(_) => Err(EncodeError::new(EncodeErrorKind::TooLong { what, len })),
    }
}

fn encode_collection(
    op: u8,
    what: &'static str,
    items: &[Value],
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let depth = enter(depth)?;
    let len = encode_len(what, items.len())?;
    for item in items {
        encode_value(item, depth, out)?;
    }
    out.push(op);
    out.extend_from_slice(&len);
    Ok(())
}

/// Writes an int as execnet does: `F` and 4 bytes when it fits in `i32`, else `H` and
/// decimal digits. (execnet itself cannot write ints below `i32::MIN`; its loader reads
/// them as written here.)
fn encode_int(i: i64, out: &mut Vec<u8>) {
    match i32::try_from(i) {
        Ok(small) => {
            out.push(OP_INT);
            out.extend_from_slice(&small.to_be_bytes());
        }
        Err(_) => write_decimal(out, |out| write!(out, "{i}")),
    }
}

fn encode_bigint(b: &BigInt, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if let Some(i) = b.to_i64() {
        encode_int(i, out);
        return Ok(());
    }
    // A number of `bits` bits has at least floor((bits - 1) * log10(2)) + 1 digits;
    // refuse huge ints before paying for their quadratic conversion to decimal.
    let bits = b.bits();
    let min_digits = ((bits - 1) as f64 * std::f64::consts::LOG10_2) as usize + 1;
    if min_digits > MAX_INT_DIGITS {
        return Err(EncodeError::new(EncodeErrorKind::IntTooLarge {
            digits: min_digits,
        }));
    }
    let start = out.len();
    write_decimal(out, |out| write!(out, "{b}"));
    let digits = out.len() - start - 5 - usize::from(b.sign() == num_bigint::Sign::Minus);
    if digits > MAX_INT_DIGITS {
        out.truncate(start);
        return Err(EncodeError::new(EncodeErrorKind::IntTooLarge { digits }));
    }
    Ok(())
}

/// Writes `H`, a length placeholder, the decimal text `write` produces, then patches the
/// length in. The text is at most a few thousand bytes, so the length fits.
fn write_decimal(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
    out.push(OP_LONGINT);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out).expect("writing to a Vec cannot fail");
    let len = (out.len() - len_at - 4) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Decodes `input` from `pos` on, loading strings as `options` say.
fn decode(input: &[u8], pos: usize, options: LoadOptions) -> Result<Value, DecodeError> {
    Decoder::new(input, pos, options).run()
}

/// A value on the decoder's stack.
struct Entry {
    value: Value,
    /// Nesting depth of `value` (0 for scalars).
    depth: u32,
    /// For a list, how many announced items have not arrived yet; else 0.
    missing: u32,
    /// Whether Python could hash the value (a dict key or set member must be hashable).
    hashable: bool,
}

impl Entry {
    fn scalar(value: Value) -> Entry {
        Entry {
            value,
            depth: 0,
            missing: 0,
            hashable: true,
        }
    }
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    options: LoadOptions,
    stack: Vec<Entry>,
    /// Lists on the stack still waiting for items. Each must end up holding every one
    /// opened after it, so more than `MAX_DEPTH` of them can only build a value that is
    /// too deep.
    open_lists: usize,
}

type Step<T> = Result<T, DecodeError>;

impl<'a> Decoder<'a> {
    fn new(input: &'a [u8], pos: usize, options: LoadOptions) -> Decoder<'a> {
        Decoder {
            input,
            pos,
            options,
            stack: Vec::with_capacity(16),
            open_lists: 0,
        }
    }

    fn run(mut self) -> Step<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.input.get(at) else {
                return Err(DecodeError::new(DecodeErrorKind::MissingStop, at));
            };
            self.pos += 1;
            let fail = |kind| DecodeError::new(kind, at);
            match op {
                OP_NONE => self.stack.push(Entry::scalar(Value::None)),
                OP_TRUE => self.stack.push(Entry::scalar(Value::Bool(true))),
                OP_FALSE => self.stack.push(Entry::scalar(Value::Bool(false))),
                OP_INT | OP_LONG => {
                    let i = self.read_i32(op, at)?;
                    self.stack.push(Entry::scalar(Value::Int(i64::from(i))));
                }
                OP_LONGINT | OP_LONGLONG => {
                    let text = self.read_sized(op, at)?;
                    let value = parse_int(text).map_err(fail)?;
                    self.stack.push(Entry::scalar(value));
                }
                OP_FLOAT => {
                    let b = self.read_array::<8>(op, at)?;
                    self.stack
                        .push(Entry::scalar(Value::Float(f64::from_be_bytes(b))));
                }
                OP_COMPLEX => {
                    let b = self.read_array::<16>(op, at)?;
                    let (re, im) = b.split_at(8);
                    let c = num_complex::Complex64::new(
                        f64::from_be_bytes(re.try_into().expect("8 bytes")),
                        f64::from_be_bytes(im.try_into().expect("8 bytes")),
                    );
                    self.stack.push(Entry::scalar(Value::Complex(c)));
                }
                OP_PY3STRING | OP_UNICODE => {
                    let start = self.pos + 4;
                    let raw = self.read_sized(op, at)?;
                    if op == OP_PY3STRING && self.options.py3str_as_py2str {
                        // execnet (2.0 on) keeps the raw bytes, valid UTF-8 or not.
                        self.stack.push(Entry::scalar(Value::Bytes(raw.to_vec())));
                        continue;
                    }
                    let text = std::str::from_utf8(raw).map_err(|e| {
                        DecodeError::new(DecodeErrorKind::InvalidUtf8, start + e.valid_up_to())
                    })?;
                    self.stack.push(Entry::scalar(Value::Str(text.to_owned())));
                }
                OP_PY2STRING => {
                    let raw = self.read_sized(op, at)?;
                    let value = if self.options.py2str_as_py3str {
                        Value::Str(raw.iter().map(|&b| char::from(b)).collect())
                    } else {
                        Value::Bytes(raw.to_vec())
                    };
                    self.stack.push(Entry::scalar(value));
                }
                OP_BYTES => {
                    let raw = self.read_sized(op, at)?;
                    self.stack.push(Entry::scalar(Value::Bytes(raw.to_vec())));
                }
                OP_NEWLIST => self.new_list(at)?,
                OP_NEWDICT => self.stack.push(Entry {
                    value: Value::Dict(Vec::new()),
                    depth: 1,
                    missing: 0,
                    hashable: false,
                }),
                OP_SETITEM => self.set_item(at)?,
                OP_BUILDTUPLE | OP_SET | OP_FROZENSET => self.build(op, at)?,
                OP_STOP => return self.stop(at),
                OP_CHANNEL => {
                    let id = self.read_i32(op, at)?;
                    return Err(fail(DecodeErrorKind::ChannelRef(id)));
                }
                OP_ARRAY | OP_DESC_ARRAY => {
                    let value = self.array_ref(op, at)?;
                    self.stack.push(Entry {
                        value,
                        depth: 0,
                        missing: 0,
                        hashable: false,
                    });
                }
                _ => return Err(fail(DecodeErrorKind::UnknownOpcode { opcode: op })),
            }
        }
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn array_ref(&mut self, op: u8, at: usize) -> Step<Value> {
        let bad = |reason: String| DecodeError::new(DecodeErrorKind::BadArrayRef { reason }, at);
        let raw = self.read_sized(op, at)?;
        if raw.is_empty() || raw.len() > MAX_ARRAY_NAME {
            return Err(bad(format!(
                "name of {} bytes, expected 1 to {MAX_ARRAY_NAME}",
                raw.len()
            )));
        }
        let name = std::str::from_utf8(raw)
            .map_err(|_| bad("name is not UTF-8".into()))?
            .to_owned();
        let (place, token) = if op == OP_DESC_ARRAY {
            let token = u64::from_be_bytes(self.read_array::<8>(op, at)?);
            let offset = u64::from_be_bytes(self.read_array::<8>(op, at)?);
            if offset % 4096 != 0 {
                return Err(bad(format!("offset {offset} is not a multiple of 4096")));
            }
            (Place::Anonymous { offset }, token)
        } else {
            (Place::Named, 0)
        };
        let generation = u64::from_be_bytes(self.read_array::<8>(op, at)?);
        let [access] = self.read_array::<1>(op, at)?;
        let access = Access::from_u8(access)
            .ok_or_else(|| bad(format!("access byte {access}, expected 0, 1 or 2")))?;
        Ok(Value::Array(ArrayRef::described(
            name, generation, access, place, token,
        )))
    }

    fn read_array<const N: usize>(&mut self, opcode: u8, at: usize) -> Step<[u8; N]> {
        match self.input.get(self.pos..self.pos + N) {
            Some(b) => {
                self.pos += N;
                Ok(b.try_into().expect("slice of length N"))
            }
            None => Err(DecodeError::new(
                DecodeErrorKind::Truncated {
                    opcode,
                    needed: N,
                    remaining: self.remaining(),
                },
                at,
            )),
        }
    }

    fn read_i32(&mut self, opcode: u8, at: usize) -> Step<i32> {
        self.read_array::<4>(opcode, at).map(i32::from_be_bytes)
    }

    /// Reads a non-negative 32-bit length or count.
    fn read_count(&mut self, opcode: u8, at: usize) -> Step<usize> {
        let n = self.read_i32(opcode, at)?;
        usize::try_from(n)
            .map_err(|_| DecodeError::new(DecodeErrorKind::NegativeLength { opcode, len: n }, at))
    }

    /// Reads a length and that many bytes, borrowed from the input.
    fn read_sized(&mut self, opcode: u8, at: usize) -> Step<&'a [u8]> {
        let len = self.read_count(opcode, at)?;
        if len > self.remaining() {
            return Err(DecodeError::new(
                DecodeErrorKind::Truncated {
                    opcode,
                    needed: len,
                    remaining: self.remaining(),
                },
                at,
            ));
        }
        let input: &'a [u8] = self.input;
        let raw = &input[self.pos..self.pos + len];
        self.pos += len;
        Ok(raw)
    }

    fn new_list(&mut self, at: usize) -> Step<()> {
        let count = self.read_count(OP_NEWLIST, at)?;
        let remaining = self.remaining();
        if count > remaining / MIN_LIST_ITEM_BYTES {
            return Err(DecodeError::new(
                DecodeErrorKind::ListTooLong { count, remaining },
                at,
            ));
        }
        if count > 0 {
            self.open_lists += 1;
            if self.open_lists > MAX_DEPTH {
                return Err(too_deep(at));
            }
        }
        self.stack.push(Entry {
            value: Value::List(Vec::new()),
            depth: 1,
            // `count` came from an `i32`.
            missing: count as u32,
            hashable: false,
        });
        Ok(())
    }

    /// Pops a value that is about to become part of another; a list must be complete.
    fn take(&mut self, at: usize) -> Step<Entry> {
        let entry = self.stack.pop().expect("caller checked the stack depth");
        check_complete(&entry, at)?;
        Ok(entry)
    }

    fn set_item(&mut self, at: usize) -> Step<()> {
        if self.stack.len() < 3 {
            return Err(DecodeError::new(
                DecodeErrorKind::StackUnderflow {
                    opcode: OP_SETITEM,
                    needed: 3,
                    available: self.stack.len(),
                },
                at,
            ));
        }
        let item = self.take(at)?;
        let key = self.take(at)?;
        let target = self.stack.last_mut().expect("stack held three entries");
        let depth = match &mut target.value {
            Value::List(items) => {
                if target.missing == 0 {
                    return Err(DecodeError::new(
                        DecodeErrorKind::ListFull { len: items.len() },
                        at,
                    ));
                }
                let expected = items.len();
                if key.value != Value::Int(expected as i64) {
                    return Err(DecodeError::new(
                        DecodeErrorKind::ListIndex {
                            expected,
                            found: describe_index(&key.value),
                        },
                        at,
                    ));
                }
                items.push(item.value);
                target.missing -= 1;
                if target.missing == 0 {
                    self.open_lists -= 1;
                }
                item.depth
            }
            Value::Dict(entries) => {
                if !key.hashable {
                    return Err(DecodeError::new(
                        DecodeErrorKind::Unhashable {
                            found: key.value.type_name(),
                            place: "dict key",
                        },
                        at,
                    ));
                }
                entries.push((key.value, item.value));
                key.depth.max(item.depth)
            }
            other => {
                return Err(DecodeError::new(
                    DecodeErrorKind::NotAContainer {
                        found: other.type_name(),
                    },
                    at,
                ));
            }
        };
        target.depth = target.depth.max(depth + 1);
        if target.depth as usize > MAX_DEPTH {
            return Err(too_deep(at));
        }
        Ok(())
    }

    fn build(&mut self, op: u8, at: usize) -> Step<()> {
        let count = self.read_count(op, at)?;
        if count > self.stack.len() {
            return Err(DecodeError::new(
                DecodeErrorKind::StackUnderflow {
                    opcode: op,
                    needed: count,
                    available: self.stack.len(),
                },
                at,
            ));
        }
        let start = self.stack.len() - count;
        let mut depth = 0;
        let mut hashable = true;
        for entry in &self.stack[start..] {
            check_complete(entry, at)?;
            depth = depth.max(entry.depth);
            if !entry.hashable && op != OP_BUILDTUPLE {
                return Err(DecodeError::new(
                    DecodeErrorKind::Unhashable {
                        found: entry.value.type_name(),
                        place: "set member",
                    },
                    at,
                ));
            }
            hashable &= entry.hashable;
        }
        let depth = depth + 1;
        if depth as usize > MAX_DEPTH {
            return Err(too_deep(at));
        }
        let items: Vec<Value> = self.stack.drain(start..).map(|e| e.value).collect();
        let value = match op {
            OP_BUILDTUPLE => Value::Tuple(items),
            OP_SET => Value::Set(items),
            _ => Value::FrozenSet(items),
        };
        let hashable = match op {
            OP_BUILDTUPLE => hashable,
            OP_SET => false,
            _ => true,
        };
        self.stack.push(Entry {
            value,
            depth,
            missing: 0,
            hashable,
        });
        Ok(())
    }

    fn stop(mut self, at: usize) -> Step<Value> {
        if self.stack.len() != 1 {
            return Err(DecodeError::new(
                DecodeErrorKind::StopStack {
                    len: self.stack.len(),
                },
                at,
            ));
        }
        let entry = self.take(at)?;
        if self.pos != self.input.len() {
            return Err(DecodeError::new(
                DecodeErrorKind::TrailingBytes {
                    count: self.remaining(),
                },
                self.pos,
            ));
        }
        Ok(entry.value)
    }
}

fn too_deep(at: usize) -> DecodeError {
    DecodeError::new(DecodeErrorKind::TooDeep { limit: MAX_DEPTH }, at)
}

fn check_complete(entry: &Entry, at: usize) -> Step<()> {
    match &entry.value {
        Value::List(items) if entry.missing > 0 => Err(DecodeError::new(
            DecodeErrorKind::ListIncomplete {
                len: items.len() + entry.missing as usize,
                filled: items.len(),
            },
            at,
        )),
        _ => Ok(()),
    }
}

/// A short description of a bad list index for an error message.
fn describe_index(key: &Value) -> String {
    match key {
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => {
            let text = b.to_string();
            match text.get(..40) {
                Some(head) if text.len() > 40 => format!("{head}… ({} digits)", text.len()),
                _ => text,
            }
        }
        other => format!("of type {}", other.type_name()),
    }
}

/// Parses execnet's decimal int: an optional sign and 1 to [`MAX_INT_DIGITS`] ASCII
/// digits.
fn parse_int(text: &[u8]) -> Result<Value, DecodeErrorKind> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.len() > MAX_INT_DIGITS {
        return Err(DecodeErrorKind::IntTooLong {
            digits: digits.len(),
            limit: MAX_INT_DIGITS,
        });
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        let shown = &text[..text.len().min(40)];
        return Err(DecodeErrorKind::InvalidInt {
            text: String::from_utf8_lossy(shown).into_owned(),
        });
    }
    if digits.len() <= 18 {
        // At most 18 digits cannot overflow `i64`.
        let magnitude = digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        return Ok(Value::Int(if negative { -magnitude } else { magnitude }));
    }
    let magnitude = num_bigint::BigUint::parse_bytes(digits, 10).expect("checked ascii digits");
    let sign = if negative {
        num_bigint::Sign::Minus
    } else {
        num_bigint::Sign::Plus
    };
    Ok(Value::from(BigInt::from_biguint(sign, magnitude)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_complex::Complex64;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Equality that compares floats by their bits, so NaN equals itself.
    fn same(a: &Value, b: &Value) -> bool {
        fn all(a: &[Value], b: &[Value]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Complex(x), Value::Complex(y)) => {
                x.re.to_bits() == y.re.to_bits() && x.im.to_bits() == y.im.to_bits()
            }
            (Value::List(x), Value::List(y))
            | (Value::Tuple(x), Value::Tuple(y))
            | (Value::Set(x), Value::Set(y))
            | (Value::FrozenSet(x), Value::FrozenSet(y)) => all(x, y),
            (Value::Dict(x), Value::Dict(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
            }
            _ => a == b,
        }
    }

    fn decode_err(bytes: &[u8]) -> DecodeError {
        match loads(bytes) {
            Ok(v) => panic!("decoded {v:?} from {}", to_hex(bytes)),
            Err(e) => e,
        }
    }

    fn pow2(n: u32) -> BigInt {
        BigInt::from(1) << n
    }

    /// Values with the bytes `execnet.dumps` writes for them (the last two execnet
    /// cannot write, but loads as shown).
    fn edge_cases() -> Vec<(Value, &'static str)> {
        vec![
            (Value::None, "024c51"),
            (true.into(), "025251"),
            (false.into(), "024351"),
            (0.into(), "02460000000051"),
            ((-1).into(), "0246ffffffff51"),
            (i32::MAX.into(), "02467fffffff51"),
            ((1i64 << 31).into(), "02480000000a3231343734383336343851"),
            (i32::MIN.into(), "02468000000051"),
            (
                pow2(100).into(),
                "02480000001f3132363736353036303032323832323934303134393637303332303533373651",
            ),
            (0.0.into(), "0244000000000000000051"),
            ((-0.0).into(), "0244800000000000000051"),
            (f64::NAN.into(), "02447ff800000000000051"),
            (f64::INFINITY.into(), "02447ff000000000000051"),
            (
                Complex64::new(1.0, 2.0).into(),
                "02543ff0000000000000400000000000000051",
            ),
            ("".into(), "024e0000000051"),
            ("ä€😀".into(), "024e00000009c3a4e282acf09f988051"),
            (Value::bytes(*b""), "02410000000051"),
            (Value::bytes(*b"\x00\xff"), "02410000000200ff51"),
            (Value::List(vec![]), "024b0000000051"),
            (
                Value::List(vec![1.into(), vec![2].into()]),
                "024b00000002460000000046000000015046000000014b00000001460000000046000000025050\
                 51",
            ),
            (().into(), "02400000000051"),
            (Value::Tuple(vec![1.into()]), "024600000001400000000151"),
            (Value::Dict(vec![]), "024a51"),
            (
                Value::dict([(
                    "a",
                    Value::List(vec![1.into(), Value::Tuple(vec![2.into()])]),
                )]),
                "024a4e00000001614b0000000246000000004600000001504600000001460000000240000000\
                 01505051",
            ),
            (Value::Set(vec![]), "024f0000000051"),
            (Value::FrozenSet(vec![1.into()]), "024600000001450000000151"),
            // Below i32::MIN: execnet's dumper fails, its loader reads these.
            (
                (-(1i64 << 31) - 1).into(),
                "02480000000b2d3231343734383336343951",
            ),
            (
                (-pow2(100)).into(),
                "0248000000202d3132363736353036303032323832323934303134393637303332303533373651",
            ),
        ]
    }

    #[test]
    fn dumps_writes_execnets_bytes() {
        for (value, want) in edge_cases() {
            let got = dumps(&value).expect("encodes");
            assert_eq!(to_hex(&got), want, "dumps({value})");
        }
    }

    #[test]
    fn loads_reads_execnets_bytes() {
        for (want, bytes) in edge_cases() {
            let got = loads(&hex(bytes)).expect("decodes");
            assert!(same(&got, &want), "loads({bytes}) = {got}, expected {want}");
        }
    }

    #[test]
    fn payloads_have_no_version_byte() {
        for (value, bytes) in edge_cases() {
            let mut out = vec![0xaa];
            encode_payload(&value, &mut out).expect("encodes");
            assert_eq!(to_hex(&out[1..]), bytes[2..], "payload of {value}");
            assert_eq!(out[0], 0xaa, "encode_payload appends");
            assert!(same(&decode_payload(&out[1..]).expect("decodes"), &value));
        }
    }

    #[test]
    fn legacy_opcodes_decode() {
        let cases: Vec<(&str, Value)> = vec![
            ("470000000551", 5.into()),        // LONG
            ("4900000003 2b303551", 5.into()), // LONGLONG "+05"
            ("480000000130 51", 0.into()),     // "0"
            ("48000000022d30 51", 0.into()),   // "-0"
            ("53000000 02c3a951", "é".into()), // UNICODE
            (
                "480000001339323233333732303336383534373735383037 51",
                i64::MAX.into(),
            ),
        ];
        for (bytes, want) in cases {
            let bytes = hex(&bytes.replace(' ', ""));
            assert_eq!(decode_payload(&bytes), Ok(want));
        }
    }

    #[test]
    fn py2string_loads_as_bytes_or_latin1() {
        let bytes = hex("4d00000002e96151");
        assert_eq!(decode_payload(&bytes), Ok(Value::Str("éa".into())));
        let mut versioned = vec![DUMPFORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        assert_eq!(loads(&versioned), Ok(Value::bytes(*b"\xe9a")));
    }

    /// `(py2 str "\xe9", py3 str "é", unicode "é", bytes "\xe9")` after `version`.
    fn strings_of_every_kind(version: u8) -> Vec<u8> {
        let mut v = vec![version];
        v.extend_from_slice(&hex(
            "4d00000001e9 4e00000002c3a9 5300000002c3a9 4100000001e9"
                .replace(' ', "")
                .as_str(),
        ));
        v.extend_from_slice(&hex("4000000004 51".replace(' ', "").as_str()));
        v
    }

    #[test]
    fn load_options_choose_how_each_string_opcode_loads() {
        let text = || Value::from("é");
        let latin1 = || Value::bytes(*b"\xe9");
        let utf8 = || Value::bytes("é".as_bytes().to_vec());
        // (py2str_as_py3str, py3str_as_py2str) -> (M, N, S, A), as execnet 2.x on Python 3.
        let table = [
            ((false, false), [latin1(), text(), text(), latin1()]),
            ((true, false), [text(), text(), text(), latin1()]),
            ((false, true), [latin1(), utf8(), text(), latin1()]),
            ((true, true), [text(), utf8(), text(), latin1()]),
        ];
        for version in [1, 2] {
            let input = strings_of_every_kind(version);
            for ((py2, py3), want) in &table {
                let options = LoadOptions::new(*py2, *py3);
                let got = loads_with(&input, options).expect("decodes");
                assert_eq!(got, Value::Tuple(want.to_vec()), "v{version} {options:?}");
                let payload = decode_payload_with(&input[1..], options).expect("decodes");
                assert_eq!(payload, got, "payload {options:?}");
            }
        }
        assert_eq!(LoadOptions::default(), LoadOptions::LOADS);
        assert_eq!(
            loads(&strings_of_every_kind(1)),
            loads_with(&strings_of_every_kind(1), LoadOptions::LOADS)
        );
        assert_eq!(
            decode_payload(&strings_of_every_kind(2)[1..]),
            decode_payload_with(&strings_of_every_kind(2)[1..], LoadOptions::CHANNEL)
        );
    }

    #[test]
    fn py3str_as_py2str_keeps_bytes_that_are_not_utf8() {
        // execnet 2.x appends the raw bytes without decoding them.
        let input = hex("024e00000002ff0051");
        assert_eq!(
            loads_with(&input, LoadOptions::new(false, true)),
            Ok(Value::bytes(*b"\xff\x00"))
        );
        assert_eq!(
            loads(&input).unwrap_err().kind(),
            &DecodeErrorKind::InvalidUtf8
        );
        // `S` is always text, so it is always checked.
        let input = hex("025300000001ff51");
        assert_eq!(
            loads_with(&input, LoadOptions::new(true, true))
                .unwrap_err()
                .kind(),
            &DecodeErrorKind::InvalidUtf8
        );
    }

    #[test]
    fn version_one_differs_from_two_only_in_its_first_byte() {
        for (value, bytes) in edge_cases() {
            let v1 = dumps_with(&value, FormatVersion::V1).expect("encodes");
            let v2 = dumps_with(&value, FormatVersion::V2).expect("encodes");
            assert_eq!(v2, dumps(&value).expect("encodes"));
            assert_eq!(to_hex(&v2), bytes);
            assert_eq!((v1[0], &v1[1..]), (1, &v2[1..]), "{value}");
            assert!(same(&loads(&v1).expect("decodes"), &value));
        }
        assert_eq!(FormatVersion::default(), FormatVersion::V2);
        for version in [FormatVersion::V1, FormatVersion::V2] {
            assert_eq!(FormatVersion::from_byte(version.byte()), Some(version));
        }
        assert_eq!(FormatVersion::from_byte(0), None);
        assert_eq!(FormatVersion::from_byte(3), None);
    }

    /// Bytes execnet 1.9 writes under Python 2.7, and what they load as.
    #[test]
    fn python2_values_load() {
        let cases: Vec<(&str, LoadOptions, Value)> = vec![
            // str "ab": PY2STRING.
            (
                "014d000000026162 51",
                LoadOptions::LOADS,
                Value::bytes(*b"ab"),
            ),
            ("014d000000026162 51", LoadOptions::CHANNEL, "ab".into()),
            // unicode u"\xe9": UNICODE.
            ("015300000002c3a9 51", LoadOptions::LOADS, "é".into()),
            // long 5L: LONG; long 2**64: LONGLONG; int 2**40: LONGINT.
            ("014700000005 51", LoadOptions::LOADS, 5.into()),
            (
                "0149000000143138343436373434303733373039353531363136 51",
                LoadOptions::LOADS,
                Value::from(1u128 << 64),
            ),
            (
                "01480000000d31303939353131363237373736 51",
                LoadOptions::LOADS,
                (1i64 << 40).into(),
            ),
        ];
        for (bytes, options, want) in cases {
            let input = hex(&bytes.replace(' ', ""));
            assert_eq!(loads_with(&input, options), Ok(want), "{bytes}");
        }
    }

    #[test]
    fn bigint_built_by_hand_encodes_like_python() {
        assert_eq!(
            dumps(&Value::BigInt(BigInt::from(5))),
            dumps(&Value::Int(5))
        );
        assert_eq!(
            dumps(&Value::BigInt(BigInt::from(1i64 << 40))),
            dumps(&Value::Int(1 << 40))
        );
    }

    #[test]
    fn decimal_ints_normalise_to_int() {
        let cases: Vec<(String, Value)> = vec![
            (i64::MAX.to_string(), Value::Int(i64::MAX)),
            (i64::MIN.to_string(), Value::Int(i64::MIN)),
            (
                (i128::from(i64::MAX) + 1).to_string(),
                Value::from(i128::from(i64::MAX) + 1),
            ),
            (
                (i128::from(i64::MIN) - 1).to_string(),
                Value::from(i128::from(i64::MIN) - 1),
            ),
            ("000000000000000000000000001".into(), Value::Int(1)),
        ];
        for (text, want) in cases {
            let got = parse_int(text.as_bytes()).expect("parses");
            assert_eq!(got, want, "{text}");
            assert!(matches!(got, Value::Int(_)) == matches!(want, Value::Int(_)));
        }
    }

    #[test]
    fn int_digit_limit_is_cpythons() {
        let max = BigInt::parse_bytes(&[b'9'; MAX_INT_DIGITS], 10).expect("digits");
        let bytes = dumps(&Value::from(max.clone())).expect("4300 digits encode");
        assert_eq!(loads(&bytes), Ok(Value::BigInt(max.clone())));
        let neg = Value::from(-max.clone());
        assert_eq!(loads(&dumps(&neg).expect("encodes")), Ok(neg));

        let over = Value::from(max + 1);
        let err = dumps(&over).expect_err("4301 digits");
        assert_eq!(err.kind(), &EncodeErrorKind::IntTooLarge { digits: 4301 });
        let huge = Value::from(pow2(1_000_000));
        assert!(matches!(
            dumps(&huge).expect_err("huge").kind(),
            EncodeErrorKind::IntTooLarge { digits } if *digits >= 301_029
        ));
    }

    fn nested_lists(depth: usize) -> Value {
        let mut v = Value::List(vec![]);
        for _ in 1..depth {
            v = Value::List(vec![v]);
        }
        v
    }

    fn nested_tuples(depth: usize) -> Value {
        let mut v = Value::None;
        for _ in 0..depth {
            v = Value::Tuple(vec![v]);
        }
        v
    }

    #[test]
    fn nesting_limit_is_the_same_both_ways() {
        for make in [nested_lists, nested_tuples] {
            let ok = make(MAX_DEPTH);
            let bytes = dumps(&ok).expect("at the limit");
            assert_eq!(loads(&bytes).as_ref(), Ok(&ok));

            let deep = make(MAX_DEPTH + 1);
            let err = dumps(&deep).expect_err("past the limit");
            assert_eq!(err.kind(), &EncodeErrorKind::TooDeep { limit: MAX_DEPTH });

            // Wrap the last good encoding by hand to get one past the limit.
            let mut payload = bytes[1..bytes.len() - 1].to_vec();
            match ok {
                Value::List(_) => {
                    let mut v = hex("024b000000014600000000");
                    v.append(&mut payload);
                    v.extend_from_slice(b"PQ");
                    payload = v;
                }
                _ => {
                    let mut v = vec![DUMPFORMAT_VERSION];
                    v.append(&mut payload);
                    v.extend_from_slice(&hex("400000000151"));
                    payload = v;
                }
            }
            let err = decode_err(&payload);
            assert_eq!(err.kind(), &DecodeErrorKind::TooDeep { limit: MAX_DEPTH });
        }
    }

    #[test]
    fn errors_leave_the_output_as_it_was() {
        let mut out = b"keep".to_vec();
        let deep = nested_lists(MAX_DEPTH + 1);
        assert!(encode_payload(&deep, &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn too_long_lengths_are_refused() {
        let len = i32::MAX as usize + 1;
        assert_eq!(
            encode_len("bytes", len).expect_err("too long").kind(),
            &EncodeErrorKind::TooLong { what: "bytes", len }
        );
        assert_eq!(
            encode_len("list", i32::MAX as usize),
            Ok(i32::MAX.to_be_bytes())
        );
    }

    // Hostile input, one test per way of being wrong.

    #[test]
    fn truncation_at_every_offset_fails() {
        let value = Value::dict([
            (
                "a",
                Value::List(vec![1.into(), pow2(80).into(), 2.5.into()]),
            ),
            (
                "b",
                Value::Tuple(vec![
                    Value::bytes(*b"xyz"),
                    Complex64::new(1.0, -1.0).into(),
                ]),
            ),
            ("c", Value::FrozenSet(vec![Value::None, true.into()])),
        ]);
        let bytes = dumps(&value).expect("encodes");
        assert_eq!(loads(&bytes), Ok(value));
        for cut in 0..bytes.len() {
            let err = decode_err(&bytes[..cut]);
            assert!(err.offset() <= cut, "cut {cut}: {err}");
        }
    }

    #[test]
    fn empty_input_fails() {
        assert_eq!(decode_err(b"").kind(), &DecodeErrorKind::Empty);
        assert_eq!(
            decode_payload(b"").unwrap_err().kind(),
            &DecodeErrorKind::Empty
        );
    }

    #[test]
    fn reconfigure_payloads_are_execnets_bool_pairs() {
        for (py2, py3, bytes) in [
            (true, false, "5243400000000251"),
            (false, true, "4352400000000251"),
            (false, false, "4343400000000251"),
            (true, true, "5252400000000251"),
        ] {
            let options = LoadOptions::new(py2, py3);
            let mut out = Vec::new();
            encode_load_options(options, &mut out);
            assert_eq!(to_hex(&out), bytes);
            let mut same_bytes = Vec::new();
            encode_payload(&Value::Tuple(vec![py2.into(), py3.into()]), &mut same_bytes)
                .expect("encodes");
            assert_eq!(out, same_bytes);
            assert_eq!(decode_load_options(&out), Ok(options));
        }
        for bad in [
            "4600000001400000000251",
            "525251",
            "52400000000151",
            "4c51",
            "",
        ] {
            assert!(decode_load_options(&hex(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_version_fails() {
        for found in [0u8, 3, 0x4c, 0xff] {
            let err = decode_err(&[found, b'L', b'Q']);
            assert_eq!(err.kind(), &DecodeErrorKind::BadVersion { found });
            assert_eq!(err.offset(), 0);
        }
        assert_eq!(
            decode_err(&hex("034c51")).to_string(),
            "value decode error at byte 0: dump format version 3, expected 1 or 2"
        );
    }

    #[test]
    fn missing_stop_fails() {
        let err = decode_err(&hex("024c"));
        assert_eq!(err.kind(), &DecodeErrorKind::MissingStop);
        assert_eq!(err.offset(), 2);
        assert_eq!(decode_err(&hex("02")).kind(), &DecodeErrorKind::MissingStop);
    }

    #[test]
    fn trailing_bytes_fail() {
        let err = decode_err(&hex("024c514c"));
        assert_eq!(err.kind(), &DecodeErrorKind::TrailingBytes { count: 1 });
        assert_eq!(err.offset(), 3);
    }

    #[test]
    fn unknown_opcode_fails() {
        let err = decode_err(&hex("024c00"));
        assert_eq!(err.kind(), &DecodeErrorKind::UnknownOpcode { opcode: 0 });
        assert_eq!(err.offset(), 2);
        assert!(err.to_string().ends_with("unknown opcode 0x00"), "{err}");
        let err = decode_err(b"\x02Z");
        assert!(err.to_string().ends_with("unknown opcode 'Z'"), "{err}");
    }

    #[test]
    fn array_references_round_trip_and_bad_ones_fail() {
        let r = Value::Array(ArrayRef::new(
            "/pxg-1a2b-0123456789abcdef".into(),
            7,
            Access::Lent,
        ));
        let v = Value::List(vec![r.clone(), Value::Tuple(vec![r.clone()])]);
        let bytes = dumps(&v).unwrap();
        assert_eq!(loads(&bytes).unwrap(), v);
        let mut one = Vec::new();
        encode_payload(&r, &mut one).unwrap();
        assert_eq!(
            to_hex(&one),
            format!(
                "55{:08x}{}{:016x}0151",
                26,
                to_hex(b"/pxg-1a2b-0123456789abcdef"),
                7
            )
        );
        // Truncated at every byte, bad access byte, empty and overlong names.
        for cut in 1..one.len() - 1 {
            assert!(decode_payload(&one[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = one.clone();
        let n = bad.len();
        bad[n - 2] = 3;
        assert!(matches!(
            decode_payload(&bad).unwrap_err().kind(),
            DecodeErrorKind::BadArrayRef { .. }
        ));
        for name_len in [0usize, MAX_ARRAY_NAME + 1] {
            let mut b = vec![OP_ARRAY];
            b.extend_from_slice(&(name_len as i32).to_be_bytes());
            b.extend(std::iter::repeat_n(b'a', name_len));
            b.extend_from_slice(&[0; 9]);
            b.push(OP_STOP);
            assert!(matches!(
                decode_payload(&b).unwrap_err().kind(),
                DecodeErrorKind::BadArrayRef { .. }
            ));
        }
        // Arrays are not hashable: no dict key, no set member.
        assert!(dumps(&Value::Set(vec![r])).is_err());
    }

    #[test]
    fn channel_reference_fails() {
        let err = decode_err(&hex("0242000000075051"));
        assert_eq!(err.kind(), &DecodeErrorKind::ChannelRef(7));
    }

    #[test]
    fn huge_list_count_fails_before_allocating() {
        let err = decode_err(&hex("024b7fffffff"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListTooLong {
                count: i32::MAX as usize,
                remaining: 0
            }
        );
        // Seven bytes per item is the least a list item takes: one item fits in 8 bytes
        // (7 and STOP), two do not.
        assert_eq!(
            loads(&hex("024b0000000146000000004c5051")),
            Ok(vec![Value::None].into())
        );
        assert!(matches!(
            decode_err(&hex("024b0000000246000000004c5051")).kind(),
            DecodeErrorKind::ListTooLong {
                count: 2,
                remaining: 8
            }
        ));
    }

    #[test]
    fn huge_lengths_fail_before_allocating() {
        for op in [OP_BYTES, OP_PY3STRING, OP_PY2STRING, OP_LONGINT, OP_UNICODE] {
            let err = decode_err(&[DUMPFORMAT_VERSION, op, 0x7f, 0xff, 0xff, 0xff, b'Q']);
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::Truncated {
                    opcode: op,
                    needed: i32::MAX as usize,
                    remaining: 1
                }
            );
        }
    }

    #[test]
    fn negative_lengths_fail() {
        for op in [
            OP_BYTES,
            OP_PY3STRING,
            OP_PY2STRING,
            OP_LONGINT,
            OP_NEWLIST,
            OP_BUILDTUPLE,
            OP_SET,
            OP_FROZENSET,
        ] {
            let err = decode_err(&[DUMPFORMAT_VERSION, b'L', op, 0xff, 0xff, 0xff, 0xfe, b'Q']);
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::NegativeLength {
                    opcode: op,
                    len: -2
                }
            );
            assert_eq!(err.offset(), 2);
        }
    }

    #[test]
    fn tuple_count_beyond_the_stack_fails() {
        for op in [OP_BUILDTUPLE, OP_SET, OP_FROZENSET] {
            let err = decode_err(&[DUMPFORMAT_VERSION, b'L', b'L', op, 0, 0, 0, 3, b'Q']);
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::StackUnderflow {
                    opcode: op,
                    needed: 3,
                    available: 2
                }
            );
        }
    }

    #[test]
    fn setitem_on_a_non_container_fails() {
        let err = decode_err(&hex("024c4c4c5051"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::NotAContainer { found: "NoneType" }
        );
        assert_eq!(err.offset(), 4);
        let err = decode_err(&hex("02400000000046000000004c5051"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::NotAContainer { found: "tuple" }
        );
    }

    #[test]
    fn setitem_needs_three_values() {
        let err = decode_err(&hex("024a4c5051"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::StackUnderflow {
                opcode: OP_SETITEM,
                needed: 3,
                available: 2
            }
        );
    }

    #[test]
    fn list_index_out_of_order_fails() {
        // [None, None] written with indices 1, 0.
        let err = decode_err(&hex("024b0000000246000000014c5046000000004c5051"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListIndex {
                expected: 0,
                found: "1".into()
            }
        );
        let err = decode_err(&hex("024b000000014c4c5051515151"));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListIndex {
                expected: 0,
                found: "of type NoneType".into()
            }
        );
    }

    #[test]
    fn list_overfilled_fails() {
        let err = decode_err(&hex(
            "024b0000000146000000004c5046000000014c50 515151515151"
                .replace(' ', "")
                .as_str(),
        ));
        assert_eq!(err.kind(), &DecodeErrorKind::ListFull { len: 1 });
    }

    #[test]
    fn list_underfilled_fails() {
        // At STOP.
        let err = decode_err(&hex("024b0000000246000000004c50 51515151515151"
            .replace(' ', "")
            .as_str()));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListIncomplete { len: 2, filled: 1 }
        );
        // In a tuple.
        let err = decode_err(&hex("024b00000001 400000000151 5151"
            .replace(' ', "")
            .as_str()));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListIncomplete { len: 1, filled: 0 }
        );
        // As a dict value.
        let err = decode_err(&hex("024a4c4b00000001 50 51515151515151"
            .replace(' ', "")
            .as_str()));
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::ListIncomplete { len: 1, filled: 0 }
        );
    }

    #[test]
    fn stop_needs_exactly_one_value() {
        assert_eq!(
            decode_err(&hex("024c4c51")).kind(),
            &DecodeErrorKind::StopStack { len: 2 }
        );
        assert_eq!(
            decode_err(&hex("0251")).kind(),
            &DecodeErrorKind::StopStack { len: 0 }
        );
    }

    const DEEP: usize = 1_000_000;

    #[test]
    fn million_deep_lists_fail_as_too_deep() {
        let mut input = vec![DUMPFORMAT_VERSION];
        for _ in 0..DEEP {
            input.extend_from_slice(&hex("4b000000014600000000"));
        }
        input.push(b'L');
        input.extend(std::iter::repeat_n(b'P', DEEP));
        input.push(b'Q');
        let err = decode_err(&input);
        assert_eq!(err.kind(), &DecodeErrorKind::TooDeep { limit: MAX_DEPTH });
    }

    #[test]
    fn million_deep_tuples_fail_as_too_deep() {
        let mut input = vec![DUMPFORMAT_VERSION, b'L'];
        for _ in 0..DEEP {
            input.extend_from_slice(&hex("4000000001"));
        }
        input.push(b'Q');
        let err = decode_err(&input);
        assert_eq!(err.kind(), &DecodeErrorKind::TooDeep { limit: MAX_DEPTH });
        assert_eq!(err.offset(), 2 + 5 * MAX_DEPTH);
    }

    #[test]
    fn deep_dicts_fail_as_too_deep() {
        let n = 100_000;
        let mut input = vec![DUMPFORMAT_VERSION];
        for _ in 0..n {
            input.extend_from_slice(&hex("4a4c"));
        }
        input.push(b'J');
        input.extend(std::iter::repeat_n(b'P', n));
        input.push(b'Q');
        let err = decode_err(&input);
        assert_eq!(err.kind(), &DecodeErrorKind::TooDeep { limit: MAX_DEPTH });
    }

    #[test]
    fn long_decimal_int_fails() {
        let mut input = vec![DUMPFORMAT_VERSION, OP_LONGINT];
        input.extend_from_slice(&5000i32.to_be_bytes());
        input.extend(std::iter::repeat_n(b'7', 5000));
        input.push(b'Q');
        let err = decode_err(&input);
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::IntTooLong {
                digits: 5000,
                limit: MAX_INT_DIGITS
            }
        );
        assert_eq!(err.offset(), 1);
    }

    #[test]
    fn malformed_decimal_int_fails() {
        for text in ["", "-", "+", "1_000", " 5", "5 ", "0x10", "1.5", "--1", "٣"] {
            let mut input = vec![DUMPFORMAT_VERSION, OP_LONGINT];
            input.extend_from_slice(&(text.len() as i32).to_be_bytes());
            input.extend_from_slice(text.as_bytes());
            input.push(b'Q');
            let err = decode_err(&input);
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::InvalidInt { text: text.into() },
                "{text:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_bad_byte() {
        for op in [OP_PY3STRING, OP_UNICODE] {
            let input = [DUMPFORMAT_VERSION, op, 0, 0, 0, 3, b'a', 0xff, b'b', b'Q'];
            let err = decode_err(&input);
            assert_eq!(err.kind(), &DecodeErrorKind::InvalidUtf8);
            assert_eq!(err.offset(), 7);
        }
        // A UTF-8-encoded surrogate, which Python's decoder also refuses.
        let err = decode_err(&[DUMPFORMAT_VERSION, b'N', 0, 0, 0, 3, 0xed, 0xa0, 0x80, b'Q']);
        assert_eq!(err.kind(), &DecodeErrorKind::InvalidUtf8);
    }

    #[test]
    fn error_messages_show_expected_and_found() {
        let err = decode_err(&hex("024400"));
        assert_eq!(
            err.to_string(),
            "value decode error at byte 1: opcode 'D' needs 8 more bytes, 1 remain"
        );
        let err = dumps(&nested_lists(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value encode error: containers nest deeper than the limit of 512"
        );
    }

    // Cross-check with the real execnet, when its interpreter is at hand.

    /// Python that answers each `v HEX` (versioned) or `p HEX` (payload) line with what
    /// execnet loads and dumps again, then prints `c HEX` lines of its own dumps.
    const EXECNET_ECHO: &str = r#"
import random, sys
import execnet
from execnet import gateway_base as gb
for line in sys.stdin:
    kind, data = line.split()
    raw = bytes.fromhex(data)
    if kind == "v":
        print(execnet.dumps(execnet.loads(raw)).hex())
    else:
        print(gb.dumps_internal(gb.loads_internal(raw)).hex())
rng = random.Random(20261123)
def gen(depth):
    kinds = ["none", "bool", "int", "big", "float", "complex", "str", "bytes"]
    if depth < 4:
        kinds += ["list", "tuple", "dict", "set", "frozenset"]
    k = rng.choice(kinds)
    n = rng.randrange(5)
    if k == "none": return None
    if k == "bool": return rng.random() < 0.5
    if k == "int": return rng.randrange(-2**31, 2**31)
    if k == "big": return rng.randrange(2**31, 2**rng.randrange(32, 400))
    if k == "float": return rng.choice([0.0, -0.0, float("inf"), float("nan"), rng.uniform(-1e300, 1e300), rng.random()])
    if k == "complex": return complex(rng.random(), -rng.random())
    if k == "str": return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(128, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(n))
    if k == "bytes": return bytes(rng.randrange(256) for _ in range(n))
    if k == "list": return [gen(depth + 1) for _ in range(n)]
    if k == "tuple": return tuple(gen(depth + 1) for _ in range(n))
    if k == "dict": return {rng.choice([str(i), i]): gen(depth + 1) for i in range(n)}
    if k == "set": return {rng.randrange(-5, 1000) for _ in range(n)}
    return frozenset(str(rng.randrange(1000)) for _ in range(n))
for _ in range(500):
    print("c", execnet.dumps(gen(0)).hex())
"#;

    /// Values that execnet can dump in an order it keeps: no ints below `i32::MIN`, sets
    /// of at most one item, dicts with distinct str keys.
    fn arb_execnet_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            (i64::from(i32::MIN)..=i64::MAX).prop_map(Value::Int),
            any::<u128>().prop_map(Value::from),
            any::<f64>().prop_map(Value::Float),
            (any::<f64>(), any::<f64>()).prop_map(|(re, im)| Complex64::new(re, im).into()),
            any::<String>().prop_map(Value::Str),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let items = prop::collection::vec(inner.clone(), 0..6);
            prop_oneof![
                items.clone().prop_map(Value::List),
                items.prop_map(Value::Tuple),
                any::<i32>().prop_map(|i| Value::Set(vec![i.into()])),
                any::<String>().prop_map(|s| Value::FrozenSet(vec![s.into()])),
                prop::collection::btree_map(any::<String>(), inner, 0..6).prop_map(Value::dict),
            ]
        })
    }

    #[test]
    fn execnet_agrees_byte_for_byte() {
        use proptest::strategy::ValueTree;
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        // Under PIXGATE_TEST_STRICT (`make test`), a missing execnet fails the test.
        let skip = |why: String| {
            assert!(std::env::var_os("PIXGATE_TEST_STRICT").is_none(), "{why}");
            let _ = writeln!(std::io::stderr(), "skipping execnet cross-check: {why}");
        };
        if !std::path::Path::new(python).exists() {
            return skip(format!("{python} not found"));
        }
        let probe = Command::new(python).args(["-c", "import execnet"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return skip(format!("{python} cannot import execnet"));
        }

        let mut values: Vec<Value> = edge_cases().into_iter().map(|(v, _)| v).collect();
        values.truncate(values.len() - 2); // execnet cannot dump ints below i32::MIN
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = arb_execnet_value();
        for _ in 0..300 {
            values.push(strategy.new_tree(&mut runner).expect("value").current());
        }
        let mut sent = Vec::new();
        let mut input = String::new();
        for v in &values {
            let versioned = to_hex(&dumps(v).expect("encodes"));
            let mut payload = Vec::new();
            encode_payload(v, &mut payload).expect("encodes");
            input += &format!("v {versioned}\np {}\n", to_hex(&payload));
            sent.push(versioned);
            sent.push(to_hex(&payload));
        }

        let mut child = Command::new(python)
            .args(["-c", EXECNET_ECHO])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("python runs");
        writer.join().expect("writer").expect("write to python");
        assert!(out.status.success(), "python failed: {:?}", out.status);
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = text.lines();

        for (mine, value) in sent.iter().zip(values.iter().flat_map(|v| [v, v])) {
            assert_eq!(
                lines.next(),
                Some(mine.as_str()),
                "execnet re-dumps {value:?}"
            );
        }
        let mut corpus = 0;
        for line in lines {
            let theirs = hex(line.strip_prefix("c ").expect("corpus line"));
            let value = loads(&theirs).expect("loads execnet's dumps");
            assert_eq!(dumps(&value).expect("encodes"), theirs, "value {value}");
            corpus += 1;
        }
        assert_eq!(corpus, 500);
    }

    // Property tests.

    fn arb_value() -> impl Strategy<Value = Value> {
        let big =
            (any::<bool>(), prop::collection::vec(any::<u32>(), 0..6)).prop_map(|(neg, d)| {
                let sign = if neg {
                    num_bigint::Sign::Minus
                } else {
                    num_bigint::Sign::Plus
                };
                Value::from(BigInt::from_slice(sign, &d))
            });
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<i32>().prop_map(Value::from),
            any::<i128>().prop_map(Value::from),
            big,
            any::<f64>().prop_map(Value::Float),
            (any::<f64>(), any::<f64>()).prop_map(|(re, im)| Complex64::new(re, im).into()),
            any::<String>().prop_map(Value::Str),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        ];
        let leaf = leaf.boxed();
        // Dict keys and set members must be hashable in Python: scalars and tuples.
        let key = prop_oneof![
            leaf.clone(),
            prop::collection::vec(leaf.clone(), 0..3).prop_map(Value::Tuple)
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            let items = prop::collection::vec(inner.clone(), 0..6);
            let members = prop::collection::vec(key.clone(), 0..6);
            prop_oneof![
                items.clone().prop_map(Value::List),
                items.prop_map(Value::Tuple),
                members.clone().prop_map(Value::Set),
                members.prop_map(Value::FrozenSet),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn dumps_then_loads_is_identity(value in arb_value()) {
            let bytes = dumps(&value).expect("encodes");
            let back = loads(&bytes).expect("decodes");
            prop_assert!(same(&back, &value), "{back:?} != {value:?}");
        }

        #[test]
        fn payload_round_trip_is_identity(value in arb_value()) {
            let mut bytes = Vec::new();
            encode_payload(&value, &mut bytes).expect("encodes");
            let back = decode_payload(&bytes).expect("decodes");
            prop_assert!(same(&back, &value), "{back:?} != {value:?}");
        }

        #[test]
        fn loads_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = loads(&bytes);
            let _ = decode_payload(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(
            value in arb_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = dumps(&value).expect("encodes");
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Err(e) = loads(&bytes) {
                prop_assert!(e.offset() <= bytes.len());
            }
        }
    }

    /// A leaf as a Python 2 or 3 execnet writes it: `(opcode, operand)`.
    fn arb_legacy_leaf() -> impl Strategy<Value = (u8, Vec<u8>)> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| (OP_PY2STRING, b)),
            ".{0,6}".prop_map(|s: String| (OP_PY3STRING, s.into_bytes())),
            ".{0,6}".prop_map(|s: String| (OP_UNICODE, s.into_bytes())),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| (OP_BYTES, b)),
            any::<i32>().prop_map(|i| (OP_LONG, i.to_be_bytes().to_vec())),
            any::<i128>().prop_map(|i| (OP_LONGLONG, i.to_string().into_bytes())),
        ]
    }

    /// What a leaf loads as under `options`: the naive reading of the table on
    /// [`LoadOptions`].
    fn expected_leaf(op: u8, operand: &[u8], options: LoadOptions) -> Value {
        let text = || Value::Str(String::from_utf8(operand.to_vec()).expect("utf-8"));
        match op {
            OP_PY2STRING if options.py2str_as_py3str => {
                Value::Str(operand.iter().map(|&b| b as char).collect())
            }
            OP_PY3STRING if options.py3str_as_py2str => Value::Bytes(operand.to_vec()),
            OP_PY3STRING | OP_UNICODE => text(),
            OP_PY2STRING | OP_BYTES => Value::Bytes(operand.to_vec()),
            OP_LONG => Value::Int(i32::from_be_bytes(operand.try_into().expect("4")).into()),
            _ => Value::from(
                std::str::from_utf8(operand)
                    .expect("ascii")
                    .parse::<i128>()
                    .expect("decimal"),
            ),
        }
    }

    proptest! {
        #[test]
        fn version_one_output_round_trips(value in arb_value()) {
            let bytes = dumps_with(&value, FormatVersion::V1).expect("encodes");
            prop_assert_eq!(bytes[0], 1);
            let back = loads(&bytes).expect("decodes");
            prop_assert!(same(&back, &value), "{back:?} != {value:?}");
        }

        #[test]
        fn legacy_opcodes_load_as_the_options_say(
            leaves in prop::collection::vec(arb_legacy_leaf(), 0..8),
            version in 1u8..=2,
            py2 in any::<bool>(),
            py3 in any::<bool>(),
        ) {
            let options = LoadOptions::new(py2, py3);
            let mut input = vec![version];
            for (op, operand) in &leaves {
                input.push(*op);
                if *op != OP_LONG {
                    input.extend_from_slice(&(operand.len() as i32).to_be_bytes());
                }
                input.extend_from_slice(operand);
            }
            input.push(OP_BUILDTUPLE);
            input.extend_from_slice(&(leaves.len() as i32).to_be_bytes());
            input.push(OP_STOP);
            let want = Value::Tuple(
                leaves.iter().map(|(op, b)| expected_leaf(*op, b, options)).collect(),
            );
            prop_assert_eq!(loads_with(&input, options), Ok(want.clone()));
            prop_assert_eq!(decode_payload_with(&input[1..], options), Ok(want));
        }

        #[test]
        fn loads_with_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            py2 in any::<bool>(),
            py3 in any::<bool>(),
        ) {
            let options = LoadOptions::new(py2, py3);
            if let Err(e) = loads_with(&bytes, options) {
                prop_assert!(e.offset() <= bytes.len());
            }
            if let Err(e) = decode_payload_with(&bytes, options) {
                prop_assert!(e.offset() <= bytes.len());
            }
        }
    }

    #[test]
    fn unhashable_keys_and_members_are_refused_both_ways() {
        let list = Value::List(vec![]);
        for v in [
            Value::Dict(vec![(list.clone(), Value::None)]),
            Value::Set(vec![Value::Tuple(vec![Value::Int(1), list.clone()])]),
            Value::FrozenSet(vec![Value::Set(vec![])]),
        ] {
            let e = dumps(&v).unwrap_err();
            assert!(
                matches!(e.kind(), EncodeErrorKind::Unhashable { .. }),
                "{v}: {e}"
            );
        }
        // Hashable containers are fine: tuples of scalars, frozensets.
        let ok = Value::Dict(vec![(
            Value::Tuple(vec![Value::Int(1), Value::FrozenSet(vec![Value::Int(2)])]),
            list.clone(),
        )]);
        assert_eq!(loads(&dumps(&ok).unwrap()).unwrap(), ok);
        // Hand-built encodings: {[]: None}, {([],)}, frozenset({{}}).
        for bytes in [
            &b"\x02JK\x00\x00\x00\x00LPQ"[..],
            &b"\x02K\x00\x00\x00\x00@\x00\x00\x00\x01O\x00\x00\x00\x01Q"[..],
            &b"\x02JE\x00\x00\x00\x01Q"[..],
        ] {
            let e = loads(bytes).unwrap_err();
            assert!(
                matches!(e.kind(), DecodeErrorKind::Unhashable { .. }),
                "{bytes:?}: {e}"
            );
        }
    }
}
