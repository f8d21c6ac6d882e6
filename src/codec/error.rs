//! The codec's errors: what could not be encoded, and where and why decoding failed.

use std::fmt;

use super::{MAX_INT_DIGITS, MIN_LIST_ITEM_BYTES};

/// A value could not be encoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("value encode error: {kind}")]
pub struct EncodeError {
    kind: EncodeErrorKind,
}

impl EncodeError {
    pub(super) fn new(kind: EncodeErrorKind) -> EncodeError {
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
        /// The limit, [`MAX_DEPTH`](super::MAX_DEPTH).
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
    pub(super) fn new(kind: DecodeErrorKind, offset: usize) -> DecodeError {
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
    /// The version byte names no [`FormatVersion`](super::FormatVersion).
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
        /// The limit, [`MAX_DEPTH`](super::MAX_DEPTH).
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
pub(super) struct OpName(u8);

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}
