//! Encoding a [`Value`] as execnet's opcodes.

use super::*;

// ---------------------------------------------------------------------------------------
// Encoding

pub(super) fn encode_value(
    value: &Value,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
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
pub(super) fn check_hashable(value: &Value, place: &'static str) -> Result<(), EncodeError> {
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
pub(super) fn enter(depth: usize) -> Result<usize, EncodeError> {
    if depth >= MAX_DEPTH {
        return Err(EncodeError::new(EncodeErrorKind::TooDeep {
            limit: MAX_DEPTH,
        }));
    }
    Ok(depth + 1)
}

pub(super) fn encode_len(what: &'static str, len: usize) -> Result<[u8; 4], EncodeError> {
    match i32::try_from(len) {
        Ok(n) => Ok(n.to_be_bytes()),
        Err(_) => Err(EncodeError::new(EncodeErrorKind::TooLong { what, len })),
    }
}

pub(super) fn encode_collection(
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
pub(super) fn encode_int(i: i64, out: &mut Vec<u8>) {
    match i32::try_from(i) {
        Ok(small) => {
            out.push(OP_INT);
            out.extend_from_slice(&small.to_be_bytes());
        }
        Err(_) => write_decimal(out, |out| write!(out, "{i}")),
    }
}

pub(super) fn encode_bigint(b: &BigInt, out: &mut Vec<u8>) -> Result<(), EncodeError> {
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
pub(super) fn write_decimal(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) {
    out.push(OP_LONGINT);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out).expect("writing to a Vec cannot fail");
    let len = (out.len() - len_at - 4) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

// ---------------------------------------------------------------------------------------
// Decoding
