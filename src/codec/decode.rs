//! Decoding execnet's opcodes without recursion, trusting no byte (module docs of
//! [`crate::codec`], "Hardening").

use super::*;

/// Decodes `input` from `pos` on, loading strings as `options` say.
pub(super) fn decode(input: &[u8], pos: usize, options: LoadOptions) -> Result<Value, DecodeError> {
    Decoder::new(input, pos, options).run()
}

/// A value on the decoder's stack.
pub(super) struct Entry {
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

pub(super) struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    options: LoadOptions,
    stack: Vec<Entry>,
    /// Lists on the stack still waiting for items. Each must end up holding every one
    /// opened after it, so more than `MAX_DEPTH` of them can only build a value that is
    /// too deep.
    open_lists: usize,
}

pub(super) type Step<T> = Result<T, DecodeError>;

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

pub(super) fn too_deep(at: usize) -> DecodeError {
    DecodeError::new(DecodeErrorKind::TooDeep { limit: MAX_DEPTH }, at)
}

pub(super) fn check_complete(entry: &Entry, at: usize) -> Step<()> {
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
pub(super) fn describe_index(key: &Value) -> String {
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
pub(super) fn parse_int(text: &[u8]) -> Result<Value, DecodeErrorKind> {
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
