//! [`Value`]: a Python value as execnet's codec carries it.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use num_bigint::BigInt;
use num_complex::Complex64;
use num_traits::ToPrimitive;

use crate::lease::Ticket;

/// A Python value of one of the builtin types that execnet's codec can carry.
///
/// Integers that fit in `i64` are always [`Value::Int`]; [`Value::BigInt`] holds only
/// integers outside that range. Every constructor in this crate (the `From` impls, the
/// decoder, [`to_value`](crate::to_value)) keeps that invariant, so two equal Python ints
/// compare equal here. A `Value::BigInt` built by hand with a small number still encodes
/// as Python would encode that number, but does not compare equal to the `Value::Int`
/// of the same number.
///
/// Dicts, sets and frozensets keep their entries in a `Vec`, in the order in which they
/// were built or decoded; no hashing or deduplication takes place.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// Python's `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` that fits in `i64`.
    Int(i64),
    /// An `int` outside the range of `i64`.
    BigInt(BigInt),
    /// A `float`.
    Float(f64),
    /// A `complex`.
    Complex(Complex64),
    /// A `str`.
    Str(String),
    /// A `bytes` object.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, entries in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A `set`.
    Set(Vec<Value>),
    /// A `frozenset`.
    FrozenSet(Vec<Value>),
    /// A reference to an array in a shared-memory segment (see `docs/PROTOCOL.md` and
    /// `docs/SEGMENT_FORMAT.md`). Python peers see a numpy array.
    Array(ArrayRef),
}

impl Value {
    /// Calls `f` on every array reference in the value, at any depth; one step per node
    /// (nothing to scan for a scalar or a big bytes item).
    pub(crate) fn for_each_array<'a>(&'a self, mut f: impl FnMut(&'a ArrayRef)) {
        let mut todo = vec![self];
        while let Some(v) = todo.pop() {
            match v {
                Value::Array(r) => f(r),
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => todo.extend(items),
                Value::Dict(entries) => {
                    for (k, v) in entries {
                        todo.push(k);
                        todo.push(v);
                    }
                }
                _ => {}
            }
        }
    }

    /// Calls `f` on every array reference in the value, at any depth, with the right to
    /// change it.
    pub(crate) fn for_each_array_mut(&mut self, mut f: impl FnMut(&mut ArrayRef)) {
        let mut todo = vec![self];
        while let Some(v) = todo.pop() {
            match v {
                Value::Array(r) => f(r),
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => todo.extend(items.iter_mut()),
                Value::Dict(entries) => {
                    for (k, v) in entries.iter_mut() {
                        todo.push(k);
                        todo.push(v);
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes the value out, leaving `None` in its place.
    pub fn take(&mut self) -> Value {
        std::mem::replace(self, Value::None)
    }

    /// The items, if this is a `list`, `tuple`, `set` or `frozenset`; the value is
    /// consumed. (`Value` implements `Drop`, so its fields cannot be moved out by a
    /// pattern; these methods take them out instead.)
    pub fn into_items(mut self) -> Option<Vec<Value>> {
        match &mut self {
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => Some(std::mem::take(items)),
            _ => None,
        }
    }

    /// The entries, if this is a `dict`; the value is consumed.
    pub fn into_entries(mut self) -> Option<Vec<(Value, Value)>> {
        match &mut self {
            Value::Dict(entries) => Some(std::mem::take(entries)),
            _ => None,
        }
    }

    /// The text, if this is a `str`; the value is consumed.
    pub fn into_string(mut self) -> Option<String> {
        match &mut self {
            Value::Str(s) => Some(std::mem::take(s)),
            _ => None,
        }
    }

    /// The bytes, if this is a `bytes` object; the value is consumed.
    pub fn into_bytes(mut self) -> Option<Vec<u8>> {
        match &mut self {
            Value::Bytes(b) => Some(std::mem::take(b)),
            _ => None,
        }
    }

    /// The array reference, if this is one; the value is consumed.
    pub fn into_array_ref(self) -> Option<ArrayRef> {
        match self.into_owned() {
            Owned::Array(r) => Some(r),
            _ => None,
        }
    }

    /// Builds a [`Value::Bytes`].
    pub fn bytes(data: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(data.into())
    }

    /// Builds a [`Value::Dict`] from key–value pairs, keeping their order.
    pub fn dict<K, V, I>(entries: I) -> Value
    where
        K: Into<Value>,
        V: Into<Value>,
        I: IntoIterator<Item = (K, V)>,
    {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Whether this is `None`.
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// The boolean, if this is a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is an `int` that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The integer as a [`BigInt`], if this is an `int` of any size.
    pub fn as_bigint(&self) -> Option<BigInt> {
        match self {
            Value::Int(i) => Some(BigInt::from(*i)),
            Value::BigInt(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a `float` or an `int` that fits in `i64`.
    ///
    /// Integers beyond 2⁵³ in magnitude are rounded, as Python's `float(i)` rounds them.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The text, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a `bytes` object.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if this is a `list` or a `tuple`.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) | Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The entries, if this is a `dict`.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value stored under the `str` key `key`, if this is a `dict` that has one.
    ///
    /// When the key occurs more than once, the last entry wins, as it would in a Python
    /// dict built from the same entries.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Python's name for the type of this value: `"int"`, `"str"`, `"NoneType"`, ….
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Complex(_) => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Array(_) => "ndarray",
        }
    }
}

/// A [`Value`] taken apart: the same variants, without `Value`'s `Drop`, so that a
/// pattern can move the fields out (`match v.into_owned() { Owned::Str(s) => … }`).
pub(crate) enum Owned {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    Complex(Complex64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    Array(ArrayRef),
}

impl Owned {
    /// Python's name for the type, as [`Value::type_name`].
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Owned::None => "NoneType",
            Owned::Bool(_) => "bool",
            Owned::Int(_) | Owned::BigInt(_) => "int",
            Owned::Float(_) => "float",
            Owned::Complex(_) => "complex",
            Owned::Str(_) => "str",
            Owned::Bytes(_) => "bytes",
            Owned::List(_) => "list",
            Owned::Tuple(_) => "tuple",
            Owned::Dict(_) => "dict",
            Owned::Set(_) => "set",
            Owned::FrozenSet(_) => "frozenset",
            Owned::Array(_) => "ndarray",
        }
    }
}

impl From<Owned> for Value {
    fn from(o: Owned) -> Value {
        match o {
            Owned::None => Value::None,
            Owned::Bool(b) => Value::Bool(b),
            Owned::Int(i) => Value::Int(i),
            Owned::BigInt(b) => Value::BigInt(b),
            Owned::Float(f) => Value::Float(f),
            Owned::Complex(c) => Value::Complex(c),
            Owned::Str(s) => Value::Str(s),
            Owned::Bytes(b) => Value::Bytes(b),
            Owned::List(items) => Value::List(items),
            Owned::Tuple(items) => Value::Tuple(items),
            Owned::Dict(entries) => Value::Dict(entries),
            Owned::Set(items) => Value::Set(items),
            Owned::FrozenSet(items) => Value::FrozenSet(items),
            Owned::Array(r) => Value::Array(r),
        }
    }
}

impl Value {
    /// The value taken apart; see [`Owned`].
    pub(crate) fn into_owned(mut self) -> Owned {
        use std::mem::take;
        match &mut self {
            Value::None => Owned::None,
            Value::Bool(b) => Owned::Bool(*b),
            Value::Int(i) => Owned::Int(*i),
            Value::BigInt(b) => Owned::BigInt(take(b)),
            Value::Float(f) => Owned::Float(*f),
            Value::Complex(c) => Owned::Complex(*c),
            Value::Str(s) => Owned::Str(take(s)),
            Value::Bytes(b) => Owned::Bytes(take(b)),
            Value::List(items) => Owned::List(take(items)),
            Value::Tuple(items) => Owned::Tuple(take(items)),
            Value::Dict(entries) => Owned::Dict(take(entries)),
            Value::Set(items) => Owned::Set(take(items)),
            Value::FrozenSet(items) => Owned::FrozenSet(take(items)),
            Value::Array(r) => Owned::Array(std::mem::replace(
                r,
                ArrayRef::new(String::new(), 0, Access::Shared),
            )),
        }
    }
}

/// Values are dropped without recursion: a value nested millions of levels deep (which
/// only the host can build; decoded values nest at most
/// [`MAX_DEPTH`](crate::codec::MAX_DEPTH) levels) is taken apart on the heap instead of
/// exhausting the stack.
impl Drop for Value {
    fn drop(&mut self) {
        fn is_container(v: &Value) -> bool {
            matches!(
                v,
                Value::List(_)
                    | Value::Tuple(_)
                    | Value::Set(_)
                    | Value::FrozenSet(_)
                    | Value::Dict(_)
            )
        }
        fn take_children(v: &mut Value, into: &mut Vec<Value>) {
            match v {
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => into.append(items),
                Value::Dict(entries) => {
                    for (k, x) in entries.drain(..) {
                        into.push(k);
                        into.push(x);
                    }
                }
                _ => {}
            }
        }
        // The common case, a container of scalars (or a scalar), drops as it would.
        let nested = match self {
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => items.iter().any(is_container),
            Value::Dict(entries) => entries
                .iter()
                .any(|(k, v)| is_container(k) || is_container(v)),
            _ => false,
        };
        if !nested {
            return;
        }
        let mut todo = Vec::new();
        take_children(self, &mut todo);
        while let Some(mut v) = todo.pop() {
            take_children(&mut v, &mut todo);
            // `v` has no children left, so dropping it recurses no further.
        }
    }
}

/// How the receiver of an [`ArrayRef`] may use the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Access {
    /// Read-only share: the receiver maps it read-only; the sender keeps ownership and
    /// may keep reading. The receiver releases it when done.
    Shared = 0,
    /// Writable lend: the receiver may write; the sender neither reads nor writes until
    /// the receiver releases it.
    Lent = 1,
    /// Move: ownership passes to the receiver, who unlinks the segment when done.
    Moved = 2,
}

impl Access {
    /// The wire byte's meaning, if it has one.
    pub fn from_u8(b: u8) -> Option<Access> {
        match b {
            0 => Some(Access::Shared),
            1 => Some(Access::Lent),
            2 => Some(Access::Moved),
            _ => None,
        }
    }
}

/// A reference to an array in a shared-memory segment, as it travels in a value.
///
/// A reference is a single-use *capability*, not a plain description: only
/// [`SharedArray::share`](crate::SharedArray::share),
/// [`SharedArray::lend`](crate::SharedArray::lend) and
/// [`SharedArray::into_value`](crate::SharedArray::into_value) make one that can be
/// sent, each send uses it up, and its fields cannot be set from outside the crate.
/// Clones are the same reference: whichever is sent first uses it, and sending any of
/// them again fails with [`ErrorKind::Reference`](crate::ErrorKind::Reference). A
/// reference decoded from bytes ([`loads`](crate::loads)) or received from a worker
/// describes an array but cannot be sent on. The rules are set out on
/// [`SharedArray`](crate::SharedArray#references-are-single-use).
///
/// Equality and hashing compare what the reference names (segment, generation,
/// access), not whether it can still be sent.
pub struct ArrayRef {
    name: String,
    generation: u64,
    access: Access,
    /// Where the array's memory is.
    place: Place,
    /// For an anonymous segment, the descriptor token it travels with (0: the receiver
    /// maps the object already; docs/PROTOCOL.md §5.7). Set by the send path just
    /// before the value is encoded, and by the decoder.
    token: AtomicU64,
    /// What sending or dropping this reference does: None for a reference that only
    /// describes an array (decoded from bytes).
    ticket: Option<Arc<Ticket>>,
}

/// Where a referenced array's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Place {
    /// A named segment (opcode `U`).
    Named,
    /// A segment at `offset` of an anonymous object (opcode `V`).
    Anonymous { offset: u64 },
}

impl Clone for ArrayRef {
    fn clone(&self) -> ArrayRef {
        ArrayRef {
            name: self.name.clone(),
            generation: self.generation,
            access: self.access,
            place: self.place,
            token: AtomicU64::new(self.token.load(Ordering::Relaxed)),
            ticket: self.ticket.clone(),
        }
    }
}

impl ArrayRef {
    /// A reference that only describes an array: it cannot be sent.
    pub(crate) fn new(name: String, generation: u64, access: Access) -> ArrayRef {
        ArrayRef::described(name, generation, access, Place::Named, 0)
    }

    /// A reference that only describes an array, anywhere.
    pub(crate) fn described(
        name: String,
        generation: u64,
        access: Access,
        place: Place,
        token: u64,
    ) -> ArrayRef {
        ArrayRef {
            name,
            generation,
            access,
            place,
            token: AtomicU64::new(token),
            ticket: None,
        }
    }

    /// A reference backed by `ticket` (see `crate::lease`).
    pub(crate) fn with_ticket(
        name: String,
        generation: u64,
        access: Access,
        place: Place,
        ticket: Arc<Ticket>,
    ) -> ArrayRef {
        ArrayRef {
            name,
            generation,
            access,
            place,
            token: AtomicU64::new(0),
            ticket: Some(ticket),
        }
    }

    /// How the array's memory reaches the receiver: a named segment, or an anonymous
    /// one whose descriptor travels beside the frame.
    pub fn transport(&self) -> crate::segment::Transport {
        match self.place {
            Place::Named => crate::segment::Transport::Named,
            Place::Anonymous { .. } => crate::segment::Transport::Anonymous,
        }
    }

    /// Where the segment's header starts in its object: 0, or a pool slot's offset in an
    /// anonymous arena.
    pub fn offset(&self) -> u64 {
        match self.place {
            Place::Named => 0,
            Place::Anonymous { offset } => offset,
        }
    }

    /// The segment's key, as RELEASE names it and the ledger files it: the name, with
    /// `@` and the offset in hex for a slot of an arena (docs/PROTOCOL.md §5.7).
    pub fn key(&self) -> String {
        match self.place {
            Place::Anonymous { offset } if offset != 0 => format!("{}@{offset:x}", self.name),
            _ => self.name.clone(),
        }
    }

    pub(crate) fn place(&self) -> Place {
        self.place
    }

    pub(crate) fn token(&self) -> u64 {
        self.token.load(Ordering::Relaxed)
    }

    pub(crate) fn set_token(&self, token: u64) {
        self.token.store(token, Ordering::Relaxed);
    }

    /// The segment's name, with its leading slash (`/pxg-…`), or the file's absolute
    /// path for a segment in a backing directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The segment's generation when the reference was made; a stale one is refused.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the receiver may do with the array.
    pub fn access(&self) -> Access {
        self.access
    }

    /// True while this reference can be sent: it was made by `share`, `lend` or
    /// `into_value` in this process, and neither it nor a clone of it was sent yet.
    pub fn is_sendable(&self) -> bool {
        self.ticket.as_ref().is_some_and(|t| t.is_sendable())
    }

    pub(crate) fn ticket(&self) -> Option<&Arc<Ticket>> {
        self.ticket.as_ref()
    }

    pub(crate) fn set_ticket(&mut self, ticket: Arc<Ticket>) {
        self.ticket = Some(ticket);
    }
}

impl PartialEq for ArrayRef {
    fn eq(&self, other: &ArrayRef) -> bool {
        (&self.name, self.generation, self.access, self.place)
            == (&other.name, other.generation, other.access, other.place)
    }
}

impl Eq for ArrayRef {}

impl std::hash::Hash for ArrayRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.name, self.generation, self.access, self.place).hash(state);
    }
}

impl fmt::Debug for ArrayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayRef")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .field("access", &self.access)
            .field("place", &self.place)
            .field("sendable", &self.is_sendable())
            .finish()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

macro_rules! from_small_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(i: $t) -> Value {
                Value::Int(i64::from(i))
            }
        }
    )*};
}

from_small_int!(i8, i16, i32, i64, u8, u16, u32);

macro_rules! from_wide_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(i: $t) -> Value {
                match i64::try_from(i) {
                    Ok(small) => Value::Int(small),
                    Err(_) => Value::BigInt(BigInt::from(i)),
                }
            }
        }
    )*};
}

from_wide_int!(isize, usize, u64, i128, u128);

impl From<BigInt> for Value {
    fn from(b: BigInt) -> Value {
        match b.to_i64() {
            Some(small) => Value::Int(small),
            None => Value::BigInt(b),
        }
    }
}

impl From<f32> for Value {
    fn from(f: f32) -> Value {
        Value::Float(f64::from(f))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<Complex64> for Value {
    fn from(c: Complex64) -> Value {
        Value::Complex(c)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map_or(Value::None, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

impl From<()> for Value {
    fn from((): ()) -> Value {
        Value::Tuple(Vec::new())
    }
}

impl<A: Into<Value>, B: Into<Value>> From<(A, B)> for Value {
    fn from((a, b): (A, B)) -> Value {
        Value::Tuple(vec![a.into(), b.into()])
    }
}

impl<A: Into<Value>, B: Into<Value>, C: Into<Value>> From<(A, B, C)> for Value {
    fn from((a, b, c): (A, B, C)) -> Value {
        Value::Tuple(vec![a.into(), b.into(), c.into()])
    }
}

/// Prints the value the way Python's `repr` would, close enough for messages and logs.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(b) => write!(f, "{b}"),
            Value::Float(x) => write_float(f, *x, true),
            Value::Complex(c) => write_complex(f, *c),
            Value::Str(s) => write_str_repr(f, s),
            Value::Array(a) => write!(
                f,
                "<array {} generation {} {:?}>",
                a.name, a.generation, a.access
            ),
            Value::Bytes(b) => write_bytes_repr(f, b),
            Value::List(items) => write_items(f, "[", items, "]"),
            Value::Tuple(items) if items.len() == 1 => write!(f, "({},)", items[0]),
            Value::Tuple(items) => write_items(f, "(", items, ")"),
            Value::Dict(entries) => {
                f.write_char('{')?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_char('}')
            }
            Value::Set(items) if items.is_empty() => f.write_str("set()"),
            Value::Set(items) => write_items(f, "{", items, "}"),
            Value::FrozenSet(items) if items.is_empty() => f.write_str("frozenset()"),
            Value::FrozenSet(items) => write_items(f, "frozenset({", items, "})"),
        }
    }
}

fn write_items(
    f: &mut fmt::Formatter<'_>,
    open: &str,
    items: &[Value],
    close: &str,
) -> fmt::Result {
    f.write_str(open)?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str(close)
}

/// Writes `x` as Python's `repr(float)` does: shortest round-trip digits, positional
/// notation for exponents from -4 to 15, scientific otherwise. `add_dot_zero` appends
/// `.0` to integral values (`repr(1.0)`), which `repr(complex)` leaves out.
fn write_float(f: &mut fmt::Formatter<'_>, x: f64, add_dot_zero: bool) -> fmt::Result {
    if x.is_nan() {
        return f.write_str("nan");
    }
    if x.is_infinite() {
        return f.write_str(if x > 0.0 { "inf" } else { "-inf" });
    }
    if x == 0.0 {
        let sign = if x.is_sign_negative() { "-" } else { "" };
        let dot = if add_dot_zero { ".0" } else { "" };
        return write!(f, "{sign}0{dot}");
    }
    // `{:e}` gives the shortest digits that round-trip, as `d.ddde-N`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if x.is_sign_negative() {
        f.write_char('-')?;
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            f.write_str("0.")?;
            for _ in 0..(-exp - 1) {
                f.write_char('0')?;
            }
            f.write_str(&digits)
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                f.write_str(&digits)?;
                for _ in digits.len()..int_len {
                    f.write_char('0')?;
                }
                if add_dot_zero {
                    f.write_str(".0")?;
                }
                Ok(())
            } else {
                write!(f, "{}.{}", &digits[..int_len], &digits[int_len..])
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        f.write_str(first)?;
        if !rest.is_empty() {
            write!(f, ".{rest}")?;
        }
        let sign = if exp < 0 { '-' } else { '+' };
        write!(f, "e{sign}{:02}", exp.unsigned_abs())
    }
}

/// Writes `c` as Python's `repr(complex)` does: `(1+2j)`, or just `2j` when the real
/// part is a positive zero.
fn write_complex(f: &mut fmt::Formatter<'_>, c: Complex64) -> fmt::Result {
    let imag_only = c.re == 0.0 && c.re.is_sign_positive();
    if !imag_only {
        f.write_char('(')?;
        write_float(f, c.re, false)?;
        if c.im.is_nan() || c.im.is_sign_positive() {
            f.write_char('+')?;
        }
    }
    write_float(f, c.im, false)?;
    f.write_char('j')?;
    if !imag_only {
        f.write_char(')')?;
    }
    Ok(())
}

/// Picks the quote Python's `repr` picks: `'` unless the text holds `'` and no `"`.
fn pick_quote(has_single: bool, has_double: bool) -> char {
    if has_single && !has_double { '"' } else { '\'' }
}

fn write_str_repr(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = pick_quote(s.contains('\''), s.contains('"'));
    f.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if is_printable(c) => f.write_char(c)?,
            c if (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32)?,
            c if (c as u32) < 0x10000 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "\\U{:08x}", c as u32)?,
        }
    }
    f.write_char(quote)
}

/// An approximation of Python's `str.isprintable` for one character: control
/// characters, the Latin-1 no-break space, the line and paragraph separators and other
/// format characters that Rust can spot are escaped.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || c == '\u{a0}'
        || c == '\u{ad}'
        || ('\u{2000}'..='\u{200f}').contains(&c)
        || ('\u{2028}'..='\u{202f}').contains(&c)
        || c == '\u{feff}'
        || ('\u{e000}'..='\u{f8ff}').contains(&c))
}

fn write_bytes_repr(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    let quote = pick_quote(b.contains(&b'\''), b.contains(&b'"'));
    f.write_char('b')?;
    f.write_char(quote)?;
    for &byte in b {
        match byte {
            b'\\' => f.write_str("\\\\")?,
            b'\n' => f.write_str("\\n")?,
            b'\r' => f.write_str("\\r")?,
            b'\t' => f.write_str("\\t")?,
            byte if byte == quote as u8 => write!(f, "\\{quote}")?,
            0x20..=0x7e => f.write_char(byte as char)?,
            byte => write!(f, "\\x{byte:02x}")?,
        }
    }
    f.write_char(quote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_python_repr() {
        let c = |re, im| Value::Complex(Complex64::new(re, im));
        let cases: Vec<(Value, &str)> = vec![
            (Value::None, "None"),
            (true.into(), "True"),
            (false.into(), "False"),
            (1.into(), "1"),
            ((-7i64).into(), "-7"),
            (u128::MAX.into(), "340282366920938463463374607431768211455"),
            (1.5.into(), "1.5"),
            (1.0.into(), "1.0"),
            ((-0.0).into(), "-0.0"),
            (f64::NAN.into(), "nan"),
            (f64::INFINITY.into(), "inf"),
            (f64::NEG_INFINITY.into(), "-inf"),
            (1e16.into(), "1e+16"),
            (1e15.into(), "1000000000000000.0"),
            (1e-4.into(), "0.0001"),
            (1e-5.into(), "1e-05"),
            (123456789.123.into(), "123456789.123"),
            (5e-324.into(), "5e-324"),
            (f64::MAX.into(), "1.7976931348623157e+308"),
            (c(1.0, 2.0), "(1+2j)"),
            (c(1.0, f64::NAN), "(1+nanj)"),
            (c(-0.0, 2.0), "(-0+2j)"),
            (c(0.0, 2.0), "2j"),
            (c(0.0, -0.0), "-0j"),
            (c(1e16, 1e-5), "(1e+16+1e-05j)"),
            (c(f64::NAN, 1.0), "(nan+1j)"),
            ("abc".into(), "'abc'"),
            ("a'b".into(), "\"a'b\""),
            ("a'\"b".into(), "'a\\'\"b'"),
            (
                "\0\x7f\u{80}\u{a0}\u{2028} é".into(),
                "'\\x00\\x7f\\x80\\xa0\\u2028 é'",
            ),
            ("tab\tnl\n\\".into(), "'tab\\tnl\\n\\\\'"),
            (Value::bytes(*b"\x00a"), "b'\\x00a'"),
            (Value::bytes(*b"'\"\x7f\t"), "b'\\'\"\\x7f\\t'"),
            (Value::bytes(*b"it's"), "b\"it's\""),
            (vec![1, 2].into(), "[1, 2]"),
            (Value::List(vec![]), "[]"),
            (Value::Tuple(vec![1.into()]), "(1,)"),
            (().into(), "()"),
            ((1, "a").into(), "(1, 'a')"),
            (Value::dict([("a", 1)]), "{'a': 1}"),
            (Value::Dict(vec![]), "{}"),
            (Value::Set(vec![1.into(), 2.into()]), "{1, 2}"),
            (Value::Set(vec![]), "set()"),
            (Value::FrozenSet(vec![1.into()]), "frozenset({1})"),
            (Value::FrozenSet(vec![]), "frozenset()"),
        ];
        for (value, want) in cases {
            assert_eq!(value.to_string(), want, "{value:?}");
        }
    }

    #[test]
    fn ints_normalise_to_int_or_bigint() {
        assert_eq!(Value::from(i64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(i64::MAX as u64), Value::Int(i64::MAX));
        assert_eq!(
            Value::from(i64::MAX as u64 + 1),
            Value::BigInt(BigInt::from(i64::MAX as u64 + 1))
        );
        assert_eq!(Value::from(i128::from(i64::MIN)), Value::Int(i64::MIN));
        assert_eq!(
            Value::from(i128::from(i64::MIN) - 1),
            Value::BigInt(BigInt::from(i128::from(i64::MIN) - 1))
        );
        assert_eq!(Value::from(BigInt::from(5)), Value::Int(5));
        assert_eq!(Value::from(usize::MAX).type_name(), "int");
        assert_eq!(Value::from(u8::MAX), Value::Int(255));
        assert_eq!(Value::from(-1isize), Value::Int(-1));
    }

    #[test]
    fn conversions_build_the_python_types() {
        assert_eq!(Value::from(Option::<i32>::None), Value::None);
        assert_eq!(Value::from(Some("x")), Value::Str("x".into()));
        assert_eq!(Value::from(2.5f32), Value::Float(2.5));
        assert_eq!(Value::from(String::from("s")).type_name(), "str");
        assert_eq!(
            Value::from((1, 2.0, "c")),
            Value::Tuple(vec![
                Value::Int(1),
                Value::Float(2.0),
                Value::Str("c".into())
            ])
        );
        assert_eq!(Value::from(vec![vec![1u8]]).to_string(), "[[1]]");
        assert_eq!(Value::bytes(vec![1u8]).type_name(), "bytes");
        assert_eq!(Value::from(Complex64::new(1.0, 0.0)).type_name(), "complex");
    }

    #[test]
    fn accessors_return_only_their_type() {
        let d = Value::dict([("a", Value::from(1)), ("b", Value::from("x"))]);
        assert_eq!(d.get("a"), Some(&Value::Int(1)));
        assert_eq!(d.get("b").and_then(Value::as_str), Some("x"));
        assert_eq!(d.get("c"), None);
        assert_eq!(Value::Int(1).get("a"), None);
        let dup = Value::dict([("k", 1), ("k", 2)]);
        assert_eq!(dup.get("k"), Some(&Value::Int(2)));

        assert!(Value::None.is_none());
        assert!(!Value::Int(0).is_none());
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::Int(1).as_bool(), None);
        assert_eq!(Value::Int(3).as_i64(), Some(3));
        assert_eq!(Value::from(u64::MAX).as_i64(), None);
        assert_eq!(
            Value::from(u64::MAX).as_bigint(),
            Some(BigInt::from(u64::MAX))
        );
        assert_eq!(Value::Int(3).as_bigint(), Some(BigInt::from(3)));
        assert_eq!(Value::Int(3).as_f64(), Some(3.0));
        assert_eq!(Value::Float(0.5).as_f64(), Some(0.5));
        assert_eq!(Value::Str("1".into()).as_f64(), None);
        assert_eq!(Value::bytes(*b"ab").as_bytes(), Some(&b"ab"[..]));
        assert_eq!(Value::Str("ab".into()).as_bytes(), None);
        assert_eq!(Value::from(vec![1]).as_seq(), Some(&[Value::Int(1)][..]));
        assert_eq!(Value::from((1, 2)).as_seq().map(<[Value]>::len), Some(2));
        assert_eq!(Value::Set(vec![]).as_seq(), None);
        assert_eq!(d.as_dict().map(<[_]>::len), Some(2));
    }

    #[test]
    fn dropping_a_deeply_nested_value_does_not_overflow_the_stack() {
        // On a small stack, so that a recursive drop would fail for sure.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut v = Value::None;
                for i in 0..2_000_000u32 {
                    v = match i % 4 {
                        0 => Value::List(vec![v, Value::Int(1)]),
                        1 => Value::Tuple(vec![v]),
                        2 => Value::Dict(vec![(Value::from("k"), v)]),
                        _ => Value::List(vec![Value::FrozenSet(vec![]), v]),
                    };
                }
                drop(v);
                // A wide value of small containers takes the same path.
                let wide = Value::List((0..100_000).map(|i| Value::List(vec![i.into()])).collect());
                drop(wide);
            })
            .unwrap();
        handle
            .join()
            .expect("dropped without overflowing the stack");
    }

    #[test]
    fn values_can_be_taken_apart() {
        assert_eq!(
            Value::from(vec![1, 2]).into_items(),
            Some(vec![1.into(), 2.into()])
        );
        assert_eq!(Value::from("a").into_items(), None);
        assert_eq!(
            Value::dict([("a", 1)]).into_entries(),
            Some(vec![("a".into(), 1.into())])
        );
        assert_eq!(Value::from("s").into_string(), Some("s".to_string()));
        assert_eq!(Value::bytes(*b"b").into_bytes(), Some(b"b".to_vec()));
        assert_eq!(Value::Int(1).into_array_ref(), None);
        let mut v = Value::from(3);
        assert_eq!(v.take(), Value::Int(3));
        assert!(v.is_none());
    }

    #[test]
    fn type_names_are_pythons() {
        let cases: Vec<(Value, &str)> = vec![
            (Value::None, "NoneType"),
            (Value::Bool(true), "bool"),
            (Value::Int(1), "int"),
            (Value::from(u128::MAX), "int"),
            (Value::Float(1.0), "float"),
            (Value::Complex(Complex64::new(0.0, 1.0)), "complex"),
            (Value::Str(String::new()), "str"),
            (Value::bytes(Vec::new()), "bytes"),
            (Value::List(vec![]), "list"),
            (Value::Tuple(vec![]), "tuple"),
            (Value::Dict(vec![]), "dict"),
            (Value::Set(vec![]), "set"),
            (Value::FrozenSet(vec![]), "frozenset"),
        ];
        for (value, name) in cases {
            assert_eq!(value.type_name(), name);
        }
    }
}
