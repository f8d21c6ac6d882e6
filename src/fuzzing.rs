//! Bodies of the fuzz targets in `fuzz/`, one function per decoder that reads bytes from
//! another process. Not part of the API: hidden from the docs and exempt from semver.
//!
//! # Rationale
//!
//! The decoders are crate-private, and the fuzz targets are a separate crate. Rather
//! than widen the visibility of the decoders themselves, this module exposes one
//! function per target that takes the fuzzer's bytes, runs the decoder and checks its
//! properties, panicking when one fails. The `cargo fuzz` targets call these functions,
//! and so does `tests/fuzz_corpus.rs`, which replays the committed corpus on every
//! `cargo test` without a nightly toolchain: both run the same checks.
//!
//! Each function accepts any input; a panic means a bug in a decoder (or in the
//! property it checks), never a malformed input.

use crate::codec::{self, DecodeError, EncodeError, FormatVersion, LoadOptions};
use crate::frame::{Event, FrameBuffer, HEADER_LEN, ReadError};
use crate::header::{self, HeaderFields, RawHeader};
use crate::value::Value;

/// The frame reader on arbitrary bytes: `data[0]` chooses the payload limit (mostly
/// small, so the oversized path is reached), `data[1]` seeds how the stream is split
/// into reads, the rest is the stream.
///
/// Checks that the events equal those of a naive reader that sees the whole stream at
/// once, whether the stream arrives in one read or in many small ones, and that the
/// buffer never grows by what a header announces rather than by what arrived.
pub fn frame_decoder(data: &[u8]) {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max_len = match *limit {
        0..=0xef => u32::from(*limit),
        0xf0..=0xfe => 1 << (*limit - 0xf0 + 8),
        0xff => crate::DEFAULT_MAX_FRAME_LEN,
    };
    let expected = naive_frames(stream, max_len);
    let whole = drive_frames(stream, max_len, || usize::MAX);
    assert_eq!(whole, expected, "one read");
    let mut rng = u32::from(*seed) | 0x100;
    let split = drive_frames(stream, max_len, || {
        // xorshift32: read sizes of 1 to 64 bytes, mostly small.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        1 + ((rng % 64) >> ((rng >> 28) % 6)) as usize
    });
    assert_eq!(split, expected, "split reads");
}

/// How a frame stream ended, comparable across readers.
#[derive(Debug, PartialEq, Eq)]
enum FrameEnd {
    Eof,
    NegativeLength { msgtype: i8, channel: i32, len: i32 },
    Truncated { have: usize },
}

type FrameRun = (Vec<Event>, FrameEnd);

/// Feeds `stream` to a [`FrameBuffer`] in reads of `next_size()` bytes.
fn drive_frames(stream: &[u8], max_len: u32, mut next_size: impl FnMut() -> usize) -> FrameRun {
    let mut frames = FrameBuffer::new(max_len);
    let mut events = Vec::new();
    let mut rest = stream;
    // What the buffer may hold: the unread stream, one read's spare area (a chunk plus
    // 1 MiB at most), and room for the vector to double.
    let bound = 2 * (2 * stream.len() + 2 * 64 * 1024 + (1 << 20));
    loop {
        match frames.next_buffered() {
            Ok(Some(ev)) => {
                events.push(ev);
                continue;
            }
            Ok(None) => {}
            Err(e) => return (events, frame_end(e)),
        }
        let n = frames
            .fill(|spare| {
                let n = next_size().min(spare.len()).min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                Ok(n)
            })
            .expect("reading from a slice does not fail");
        assert!(
            frames.capacity() <= bound,
            "buffer of {} bytes for a stream of {}",
            frames.capacity(),
            stream.len()
        );
        if n == 0 {
            let end = match frames.at_eof() {
                Ok(Event::Eof) => FrameEnd::Eof,
                Ok(ev) => panic!("end of stream gave {ev:?}"),
                Err(e) => frame_end(e),
            };
            return (events, end);
        }
    }
}

fn frame_end(e: ReadError) -> FrameEnd {
    match e {
        ReadError::NegativeLength {
            msgtype,
            channel,
            len,
        } => FrameEnd::NegativeLength {
            msgtype,
            channel,
            len,
        },
        ReadError::TruncatedAtEof { have } => FrameEnd::Truncated { have },
        ReadError::Io(e) => panic!("no I/O takes place, yet: {e}"),
    }
}

/// The frame format read the obvious way, with the whole stream in hand.
fn naive_frames(stream: &[u8], max_len: u32) -> FrameRun {
    let mut events = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (events, FrameEnd::Eof);
        }
        if rest.len() < HEADER_LEN {
            return (events, FrameEnd::Truncated { have: rest.len() });
        }
        let msgtype = rest[0] as i8;
        let channel = i32::from_be_bytes(rest[1..5].try_into().expect("4 bytes"));
        let len = i32::from_be_bytes(rest[5..9].try_into().expect("4 bytes"));
        let Ok(n) = usize::try_from(len) else {
            return (
                events,
                FrameEnd::NegativeLength {
                    msgtype,
                    channel,
                    len,
                },
            );
        };
        let body = &rest[HEADER_LEN..];
        if n > body.len() {
            // An oversized payload is consumed as it arrives; a normal one is kept.
            let have = if len as u32 > max_len {
                0
            } else {
                HEADER_LEN + body.len()
            };
            return (events, FrameEnd::Truncated { have });
        }
        events.push(if len as u32 > max_len {
            Event::Oversized {
                msgtype,
                channel,
                len: len as u32,
            }
        } else {
            Event::Frame(crate::frame::Frame {
                msgtype,
                channel,
                payload: body[..n].to_vec(),
            })
        });
        rest = &body[n..];
    }
}

/// The value codec on arbitrary bytes, both as `loads` input (version byte first, so
/// both format versions are reached) and as a channel payload, under each of the four
/// [`LoadOptions`].
///
/// Checks that every error points inside the input, and that whatever decodes encodes
/// again, decodes to the same value (floats compared by their bits), and re-encodes to
/// the same bytes. The second decode uses the options that read an encoding back as it
/// was written (`N` as str, `A` as bytes), and version 1 output reads back as version 2.
pub fn value_decoder(data: &[u8]) {
    let options = [
        LoadOptions::LOADS,
        LoadOptions::CHANNEL,
        LoadOptions::new(false, true),
        LoadOptions::new(true, true),
    ];
    round_trip(data, codec::loads, codec::dumps);
    round_trip(data, codec::decode_payload, |v| {
        let mut out = Vec::new();
        codec::encode_payload(v, &mut out).map(|()| out)
    });
    for o in options {
        let Ok(value) = check_error(data, codec::loads_with(data, o)) else {
            continue;
        };
        check_int_invariant(&value);
        let v1 = codec::dumps_with(&value, FormatVersion::V1)
            .unwrap_or_else(|e| panic!("decoded {value:?} with {o:?}, encoding: {e}"));
        let back = codec::loads(&v1).unwrap_or_else(|e| panic!("version 1 of {value:?}: {e}"));
        assert!(same(&value, &back), "{value:?} came back as {back:?}");
        assert_eq!(v1[1..], codec::dumps(&value).expect("encodes")[1..]);
    }
    for o in options {
        if let Ok(value) = check_error(data, codec::decode_payload_with(data, o)) {
            check_int_invariant(&value);
        }
    }
}

/// Checks that an error points inside the input.
fn check_error(data: &[u8], r: Result<Value, DecodeError>) -> Result<Value, ()> {
    r.map_err(|e| assert!(e.offset() <= data.len(), "{e} in {} bytes", data.len()))
}

fn round_trip(
    data: &[u8],
    decode: fn(&[u8]) -> Result<Value, DecodeError>,
    encode: impl Fn(&Value) -> Result<Vec<u8>, EncodeError>,
) {
    let value = match decode(data) {
        Ok(v) => v,
        Err(e) => {
            assert!(e.offset() <= data.len(), "{e} in {} bytes", data.len());
            return;
        }
    };
    check_int_invariant(&value);
    let bytes = encode(&value).unwrap_or_else(|e| panic!("decoded {value:?}, encoding: {e}"));
    let back = decode(&bytes).unwrap_or_else(|e| panic!("re-encoded {value:?}, decoding: {e}"));
    assert!(same(&value, &back), "{value:?} came back as {back:?}");
    let again = encode(&back).expect("encodes");
    assert_eq!(bytes, again, "re-encoding is not stable");
}

/// A decoded int that fits in `i64` is a [`Value::Int`], as [`Value`] documents.
fn check_int_invariant(value: &Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::BigInt(b) => {
                assert!(i64::try_from(b).is_err(), "BigInt({b}) fits in i64");
            }
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                stack.extend(xs)
            }
            Value::Dict(kv) => stack.extend(kv.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
    }
}

/// Equality that compares floats by their bits, so a NaN equals itself; iterative, so
/// the deepest value the decoder accepts needs no deep stack.
fn same(a: &Value, b: &Value) -> bool {
    let mut stack = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => {
                if x.to_bits() != y.to_bits() {
                    return false;
                }
            }
            (Value::Complex(x), Value::Complex(y)) => {
                if x.re.to_bits() != y.re.to_bits() || x.im.to_bits() != y.im.to_bits() {
                    return false;
                }
            }
            (Value::List(x), Value::List(y))
            | (Value::Tuple(x), Value::Tuple(y))
            | (Value::Set(x), Value::Set(y))
            | (Value::FrozenSet(x), Value::FrozenSet(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                stack.extend(x.iter().zip(y));
            }
            (Value::Dict(x), Value::Dict(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                for ((k1, v1), (k2, v2)) in x.iter().zip(y) {
                    stack.push((k1, k2));
                    stack.push((v1, v2));
                }
            }
            (
                Value::List(_)
                | Value::Tuple(_)
                | Value::Set(_)
                | Value::FrozenSet(_)
                | Value::Dict(_),
                _,
            ) => return false,
            _ => {
                if a != b {
                    return false;
                }
            }
        }
    }
    true
}

/// The segment header parser on arbitrary bytes of any length: as the raw view that
/// `pixgate inspect` shows, and validated against two file sizes (the input's length,
/// and the size the header itself announces, so that a consistent header gets past the
/// size checks). An input shorter than a page is also parsed padded with zeros to one,
/// so that short inputs reach the field checks and the metadata block.
///
/// Checks that a header that parses re-encodes to the same fixed fields, parses back to
/// the same fields, and re-encodes to the same bytes again.
pub fn header_parser(data: &[u8]) {
    let _ = RawHeader::decode(data);
    check_header(data, data.len() as u64);
    check_header(data, announced_size(data));
    if data.len() < header::PAGE {
        let mut padded = data.to_vec();
        padded.resize(header::PAGE, 0);
        check_header(&padded, announced_size(&padded));
    }
}

/// `header_len + data_len` as the header states them, or 0 when it is too short.
fn announced_size(bytes: &[u8]) -> u64 {
    RawHeader::decode(bytes).map_or(0, |raw| {
        u64::from(raw.header_len).saturating_add(raw.data_len)
    })
}

fn check_header(bytes: &[u8], file_size: u64) {
    let Ok(fields) = header::parse_header(bytes, file_size) else {
        return;
    };
    let first = stamped(&fields);
    assert_eq!(first.len(), fields.header_len as usize);
    // Every fixed field but meta_len is validated to one value, so the encoder writes
    // the very bytes it read; the metadata block may be written another way.
    let meta_len = header::OFF_META_LEN..header::OFF_META_LEN + 4;
    assert_eq!(first[..meta_len.start], bytes[..meta_len.start]);
    assert_eq!(
        first[meta_len.end..header::FIXED_LEN],
        bytes[meta_len.end..header::FIXED_LEN]
    );
    let back = header::parse_header(&first, file_size)
        .unwrap_or_else(|p| panic!("{fields:?} re-encoded does not parse: {p:?}"));
    assert!(
        same_fields(&fields, &back),
        "{fields:?} came back as {back:?}"
    );
    assert_eq!(stamped(&back), first, "re-encoding is not stable");
}

/// The encoding of `fields` with the version stamped, as a creator publishes it.
fn stamped(fields: &HeaderFields) -> Vec<u8> {
    let mut b = header::encode_header(fields)
        .unwrap_or_else(|p| panic!("parsed {fields:?}, encoding: {p:?}"));
    b[header::OFF_VERSION..header::OFF_VERSION + 4].copy_from_slice(&header::VERSION.to_le_bytes());
    b
}

fn same_fields(a: &HeaderFields, b: &HeaderFields) -> bool {
    a.layout == b.layout
        && a.header_len == b.header_len
        && a.data_len == b.data_len
        && a.creator_pid == b.creator_pid
        && a.creator_start == b.creator_start
        && a.generation == b.generation
        && a.state == b.state
        && a.owner_pid == b.owner_pid
        && same(&a.meta.to_value(), &b.meta.to_value())
}
