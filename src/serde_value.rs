//! Conversion between [`Value`] and any type that implements serde's traits, in the
//! manner of `serde_json::to_value` and `serde_json::from_value`.
//!
//! | Rust (serde data model) | Python value |
//! |---|---|
//! | `bool` | `bool` |
//! | integers | `int` |
//! | `f32`, `f64` | `float` |
//! | `char`, `str` | `str` |
//! | bytes (`serialize_bytes`) | `bytes` |
//! | `None`, `()`, unit struct | `None` |
//! | `Some(x)`, newtype struct | `x` |
//! | sequence | `list` |
//! | tuple, tuple struct | `tuple` |
//! | map | `dict` |
//! | struct | `dict` with `str` keys |
//! | unit variant | `str`: the variant's name |
//! | newtype, tuple and struct variants | `{name: x}`, `{name: (…)}`, `{name: {…}}` |
//!
//! Deserializing accepts more than serializing produces: sequences come from lists,
//! tuples, sets, frozensets and bytes; bytes from `bytes` and `str`; floats from ints;
//! a `complex` reads as the pair `(re, im)`.

use std::fmt;

use num_bigint::BigInt;
use num_traits::ToPrimitive;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

use crate::value::Owned;
use crate::value::Value;

/// Converts `v` into a [`Value`].
///
/// # Errors
///
/// Fails when `v`'s `Serialize` impl reports an error.
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, crate::Error> {
    v.serialize(ValueSerializer).map_err(Into::into)
}

/// Converts a [`Value`] into a `T`.
///
/// # Errors
///
/// Fails when the value's shape does not match what `T` expects; the message names the
/// expected and the found Python type.
pub fn from_value<T: de::DeserializeOwned>(v: Value) -> Result<T, crate::Error> {
    T::deserialize(Des(v)).map_err(Into::into)
}

/// The error serde's traits need; it becomes [`crate::ErrorKind::Convert`].
#[derive(Debug)]
struct ConvertError(String);

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConvertError {}

impl ser::Error for ConvertError {
    fn custom<T: fmt::Display>(msg: T) -> ConvertError {
        ConvertError(msg.to_string())
    }
}

impl de::Error for ConvertError {
    fn custom<T: fmt::Display>(msg: T) -> ConvertError {
        ConvertError(msg.to_string())
    }
}

impl From<ConvertError> for crate::Error {
    fn from(e: ConvertError) -> crate::Error {
        crate::Error::new(crate::ErrorKind::Convert(e.0))
    }
}

fn type_error(expected: &str, found: &impl TypeNamed) -> ConvertError {
    ConvertError(format!(
        "invalid type: expected {expected}, found {}",
        found.python_type()
    ))
}

/// What [`type_error`] names: a value, whole or taken apart.
trait TypeNamed {
    fn python_type(&self) -> &'static str;
}

impl TypeNamed for Value {
    fn python_type(&self) -> &'static str {
        self.type_name()
    }
}

impl TypeNamed for Owned {
    fn python_type(&self) -> &'static str {
        self.type_name()
    }
}

// ---------------------------------------------------------------------------------------
// Serializing

struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ConvertError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = MapBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, ConvertError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_char(self, v: char) -> Result<Value, ConvertError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ConvertError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ConvertError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, ConvertError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ConvertError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ConvertError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ConvertError> {
        Ok(variant.into())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<Value, ConvertError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ConvertError> {
        Ok(Value::Dict(vec![(variant.into(), v.serialize(self)?)]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, ConvertError> {
        Ok(SeqBuilder::new(Shape::List, len))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, ConvertError> {
        Ok(SeqBuilder::new(Shape::Tuple, Some(len)))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ConvertError> {
        Ok(SeqBuilder::new(Shape::Tuple, Some(len)))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ConvertError> {
        Ok(SeqBuilder::new(Shape::Variant(variant), Some(len)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, ConvertError> {
        Ok(MapBuilder::new(None, len))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, ConvertError> {
        Ok(MapBuilder::new(None, Some(len)))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapBuilder, ConvertError> {
        Ok(MapBuilder::new(Some(variant), Some(len)))
    }
}

/// What a [`SeqBuilder`] builds.
enum Shape {
    List,
    Tuple,
    /// `{variant: (…)}`.
    Variant(&'static str),
}

struct SeqBuilder {
    shape: Shape,
    items: Vec<Value>,
}

impl SeqBuilder {
    fn new(shape: Shape, len: Option<usize>) -> SeqBuilder {
        // A length hint comes from the caller's own data; cap it anyway.
        let capacity = len.unwrap_or(0).min(4096);
        SeqBuilder {
            shape,
            items: Vec::with_capacity(capacity),
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.items.push(v.serialize(ValueSerializer)?);
        Ok(())
    }

    fn finish(self) -> Value {
        match self.shape {
            Shape::List => Value::List(self.items),
            Shape::Tuple => Value::Tuple(self.items),
            Shape::Variant(name) => Value::Dict(vec![(name.into(), Value::Tuple(self.items))]),
        }
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

struct MapBuilder {
    /// The variant name, for a struct variant.
    variant: Option<&'static str>,
    entries: Vec<(Value, Value)>,
    pending_key: Option<Value>,
}

impl MapBuilder {
    fn new(variant: Option<&'static str>, len: Option<usize>) -> MapBuilder {
        MapBuilder {
            variant,
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            pending_key: None,
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), ConvertError> {
        let v = v.serialize(ValueSerializer)?;
        self.entries.push((key.into(), v));
        Ok(())
    }

    fn finish(self) -> Value {
        let dict = Value::Dict(self.entries);
        match self.variant {
            Some(name) => Value::Dict(vec![(name.into(), dict)]),
            None => dict,
        }
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ConvertError> {
        self.pending_key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| ConvertError("map value serialized before its key".into()))?;
        self.entries.push((key, v.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ConvertError> {
        self.field(key, v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for MapBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ConvertError> {
        self.field(key, v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

// ---------------------------------------------------------------------------------------
// Deserializing

/// Hands an int to the visitor through the narrowest `visit_*` that holds it.
fn visit_int<'de, V: Visitor<'de>>(v: Value, visitor: V) -> Result<V::Value, ConvertError> {
    match v.into_owned() {
        Owned::Int(i) => visitor.visit_i64(i),
        Owned::BigInt(b) => visit_bigint(&b, visitor),
        other => Err(type_error("int", &other)),
    }
}

fn visit_bigint<'de, V: Visitor<'de>>(b: &BigInt, visitor: V) -> Result<V::Value, ConvertError> {
    if let Some(i) = b.to_i64() {
        visitor.visit_i64(i)
    } else if let Some(u) = b.to_u64() {
        visitor.visit_u64(u)
    } else if let Some(i) = b.to_i128() {
        visitor.visit_i128(i)
    } else if let Some(u) = b.to_u128() {
        visitor.visit_u128(u)
    } else {
        Err(ConvertError(format!(
            "int out of range: {} bits, at most 128 supported",
            b.bits()
        )))
    }
}

/// A [`Value`] as a serde `Deserializer`.
struct Des(Value);

impl<'de> de::Deserializer<'de> for Des {
    type Error = ConvertError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::None => visitor.visit_unit(),
            Owned::Bool(b) => visitor.visit_bool(b),
            v @ (Owned::Int(_) | Owned::BigInt(_)) => visit_int(v.into(), visitor),
            Owned::Float(x) => visitor.visit_f64(x),
            Owned::Complex(c) => visit_seq(vec![Value::Float(c.re), Value::Float(c.im)], visitor),
            Owned::Str(s) => visitor.visit_string(s),
            Owned::Bytes(b) => visitor.visit_byte_buf(b),
            Owned::List(items)
            | Owned::Tuple(items)
            | Owned::Set(items)
            | Owned::FrozenSet(items) => visit_seq(items, visitor),
            Owned::Dict(entries) => visit_map(entries, visitor),
            Owned::Array(a) => Err(de::Error::custom(format!(
                "the array {} cannot become a plain Rust value; take it as a shared array",
                a.name()
            ))),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Bool(b) => visitor.visit_bool(b),
            other => Err(type_error("bool", &other)),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visit_int(self.0, visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Float(x) => visitor.visit_f64(x),
            Owned::Int(i) => visitor.visit_f64(i as f64),
            Owned::BigInt(b) => visitor.visit_f64(b.to_f64().unwrap_or(f64::NAN)),
            other => Err(type_error("float", &other)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Str(s) => visitor.visit_string(s),
            other => Err(type_error("str", &other)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Bytes(b) => visitor.visit_byte_buf(b),
            Owned::Str(s) => visitor.visit_byte_buf(s.into_bytes()),
            v @ (Owned::List(_) | Owned::Tuple(_)) => Des(v.into()).deserialize_seq(visitor),
            other => Err(type_error("bytes", &other)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::None => visitor.visit_none(),
            other => visitor.visit_some(Des(other.into())),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::None => visitor.visit_unit(),
            other => Err(type_error("NoneType", &other)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        if name == ARRAY_MARKER {
            if let Value::Array(_) = self.0 {
                // Handed over beside serde: the array's visitor takes it back at once.
                ARRAY_SLOT.with(|slot| *slot.borrow_mut() = Some(self.0));
                return visitor.visit_unit();
            }
            return self.deserialize_any(visitor);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::List(items)
            | Owned::Tuple(items)
            | Owned::Set(items)
            | Owned::FrozenSet(items) => visit_seq(items, visitor),
            Owned::Complex(c) => visit_seq(vec![Value::Float(c.re), Value::Float(c.im)], visitor),
            Owned::Bytes(b) => {
                let mut seq = de::value::SeqDeserializer::new(b.into_iter());
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            other => Err(type_error("list", &other)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match &self.0 {
            Value::List(_)
            | Value::Tuple(_)
            | Value::Set(_)
            | Value::FrozenSet(_)
            | Value::Complex(_) => self.deserialize_seq(visitor),
            other => Err(type_error("tuple", other)),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Dict(entries) => visit_map(entries, visitor),
            other => Err(type_error("dict", &other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Dict(entries) => visit_map(entries, visitor),
            Owned::List(items) | Owned::Tuple(items) => visit_seq(items, visitor),
            other => Err(type_error("dict", &other)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.0.into_owned() {
            Owned::Str(name) => visitor.visit_enum(EnumAccess { name, value: None }),
            Owned::Dict(entries) if entries.len() == 1 => {
                let (key, value) = entries.into_iter().next().expect("one entry");
                match key.into_owned() {
                    Owned::Str(name) => visitor.visit_enum(EnumAccess {
                        name,
                        value: Some(value),
                    }),
                    other => Err(type_error("str variant name", &other)),
                }
            }
            Owned::Dict(entries) => Err(ConvertError(format!(
                "invalid type: expected str or dict of one entry for an enum, found dict of {} \
                 entries",
                entries.len()
            ))),
            other => Err(type_error("str or dict of one entry for an enum", &other)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        drop(self);
        visitor.visit_unit()
    }
}

impl IntoDeserializer<'_, ConvertError> for Des {
    type Deserializer = Des;
    fn into_deserializer(self) -> Des {
        self
    }
}

fn visit_seq<'de, V: Visitor<'de>>(
    items: Vec<Value>,
    visitor: V,
) -> Result<V::Value, ConvertError> {
    let len = items.len();
    let mut seq = Items {
        items: items.into_iter(),
        index: 0,
    };
    let out = visitor.visit_seq(&mut seq)?;
    if seq.items.len() > 0 {
        return Err(de::Error::invalid_length(len, &"fewer elements"));
    }
    Ok(out)
}

fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, ConvertError> {
    let mut map = Entries {
        entries: entries.into_iter(),
        value: None,
    };
    visitor.visit_map(&mut map)
}

/// The items of a sequence; an item that fails names its index (`[2]: …`).
struct Items {
    items: std::vec::IntoIter<Value>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Items {
    type Error = ConvertError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, ConvertError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let at = self.index;
        self.index += 1;
        seed.deserialize(Des(item))
            .map(Some)
            .map_err(|e| ConvertError(format!("[{at}]: {e}")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a dict; a value that fails names its key (`field "frames": …`).
struct Entries {
    entries: std::vec::IntoIter<(Value, Value)>,
    value: Option<(Value, Value)>,
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = ConvertError;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, ConvertError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(Des(k.clone()))?;
        self.value = Some((k, v));
        Ok(Some(key))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, ConvertError> {
        let (k, v) = self
            .value
            .take()
            .ok_or_else(|| ConvertError("a dict value was asked for before its key".into()))?;
        seed.deserialize(Des(v)).map_err(|e| {
            let key = match &k {
                Value::Str(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            ConvertError(format!("field {key}: {e}"))
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The newtype name under which [`SharedArray`](crate::SharedArray) asks this
/// deserializer for an array; no other deserializer knows it.
pub(crate) const ARRAY_MARKER: &str = "$pixgate::SharedArray";

thread_local! {
    /// The array reference being deserialized, between the deserializer that met it and
    /// the array's visitor, which takes it at once.
    static ARRAY_SLOT: std::cell::RefCell<Option<Value>> = const { std::cell::RefCell::new(None) };
}

/// Takes the array reference the deserializer just handed over.
pub(crate) fn take_array() -> Option<Value> {
    ARRAY_SLOT.with(|slot| slot.borrow_mut().take())
}

struct EnumAccess {
    name: String,
    value: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for EnumAccess {
    type Error = ConvertError;
    type Variant = VariantAccess;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantAccess), ConvertError> {
        let name = seed.deserialize(Des(Value::Str(self.name)))?;
        Ok((name, VariantAccess(self.value)))
    }
}

/// The content of an enum variant: nothing for a unit variant.
struct VariantAccess(Option<Value>);

impl<'de> de::VariantAccess<'de> for VariantAccess {
    type Error = ConvertError;

    fn unit_variant(self) -> Result<(), ConvertError> {
        match self.0 {
            None | Some(Value::None) => Ok(()),
            Some(other) => Err(type_error("NoneType for a unit variant", &other)),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, ConvertError> {
        match self.0 {
            Some(v) => seed.deserialize(Des(v)),
            None => Err(ConvertError(
                "invalid type: expected dict of one entry for a newtype variant, found str".into(),
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.0 {
            Some(v) => de::Deserializer::deserialize_tuple(Des(v), len, visitor),
            None => Err(ConvertError(
                "invalid type: expected dict of one entry for a tuple variant, found str".into(),
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.0 {
            Some(v) => de::Deserializer::deserialize_struct(Des(v), "", fields, visitor),
            None => Err(ConvertError(
                "invalid type: expected dict of one entry for a struct variant, found str".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use num_complex::Complex64;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::*;
    use crate::codec::{dumps, loads};
    use crate::error::ErrorKind;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Segment(i32, i32),
        Rect { w: u32, h: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Marker;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        xs: Vec<f64>,
        label: Option<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Outer {
        id: u64,
        big: u64,
        wide: i128,
        huge: u128,
        small: i8,
        nested: Vec<Vec<i32>>,
        inner: Option<Inner>,
        missing: Option<i32>,
        counts: HashMap<String, i32>,
        shapes: Vec<Shape>,
        pair: (i32, String),
        raw: Vec<u8>,
        unit: (),
        flag: bool,
        letter: char,
        length: Meters,
        marker: Marker,
    }

    fn sample() -> Outer {
        Outer {
            id: 7,
            big: u64::MAX,
            wide: i128::MIN,
            huge: u128::MAX,
            small: -5,
            nested: vec![vec![1, 2], vec![], vec![3]],
            inner: Some(Inner {
                xs: vec![0.5, -1.0],
                label: None,
            }),
            missing: None,
            counts: HashMap::from([("a".to_string(), 1), ("b".to_string(), -2)]),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(1.5),
                Shape::Segment(-1, 1),
                Shape::Rect { w: 3, h: 4 },
            ],
            pair: (9, "nine".into()),
            raw: vec![0, 255],
            unit: (),
            flag: true,
            letter: 'ß',
            length: Meters(2.5),
            marker: Marker,
        }
    }

    fn ok<T>(r: Result<T, crate::Error>) -> T {
        r.unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    fn convert_message(err: crate::Error) -> String {
        match err.into_kind() {
            ErrorKind::Convert(message) => message,
            other => panic!("expected a conversion error, got {other:?}"),
        }
    }

    #[test]
    fn struct_round_trips_through_value_and_bytes() {
        let value = to_value(&sample()).expect("serializes");
        assert_eq!(
            from_value::<Outer>(value.clone()).expect("deserializes"),
            sample()
        );
        let bytes = dumps(&value).expect("encodes");
        let back = loads(&bytes).expect("decodes");
        assert_eq!(from_value::<Outer>(back).expect("deserializes"), sample());
    }

    #[test]
    fn struct_maps_to_python_shapes() {
        let value = to_value(&sample()).expect("serializes");
        let keys: Vec<&str> = value
            .as_dict()
            .expect("dict")
            .iter()
            .map(|(k, _)| k.as_str().expect("str key"))
            .collect();
        assert_eq!(keys[..3], ["id", "big", "wide"]);
        assert_eq!(value.get("big"), Some(&Value::from(u64::MAX)));
        assert!(matches!(value.get("big"), Some(Value::BigInt(_))));
        assert_eq!(value.get("missing"), Some(&Value::None));
        assert_eq!(value.get("unit"), Some(&Value::None));
        assert_eq!(value.get("marker"), Some(&Value::None));
        assert_eq!(value.get("length"), Some(&Value::Float(2.5)));
        assert_eq!(value.get("letter"), Some(&Value::from("ß")));
        assert_eq!(value.get("raw"), Some(&Value::from(vec![0, 255])));
        assert_eq!(value.get("pair").map(Value::type_name), Some("tuple"));
        assert_eq!(
            value.get("inner").and_then(|i| i.get("xs")),
            Some(&Value::from(vec![0.5, -1.0]))
        );
        assert_eq!(
            value.get("shapes").map(ToString::to_string).as_deref(),
            Some("['Empty', {'Circle': 1.5}, {'Segment': (-1, 1)}, {'Rect': {'w': 3, 'h': 4}}]")
        );
    }

    #[test]
    fn scalars_map_as_documented() {
        let cases: Vec<(Value, Value)> = vec![
            (to_value(&true).unwrap(), Value::Bool(true)),
            (to_value(&u64::MAX).unwrap(), Value::from(u64::MAX)),
            (to_value(&i128::MAX).unwrap(), Value::from(i128::MAX)),
            (to_value(&(i64::MAX as u64)).unwrap(), Value::Int(i64::MAX)),
            (to_value(&1.5f32).unwrap(), Value::Float(1.5)),
            (to_value(&'x').unwrap(), Value::from("x")),
            (to_value("s").unwrap(), Value::from("s")),
            (to_value(&Some(3)).unwrap(), Value::Int(3)),
            (to_value(&None::<i32>).unwrap(), Value::None),
            (to_value(&()).unwrap(), Value::None),
            (to_value(&(1,)).unwrap(), Value::Tuple(vec![1.into()])),
            (
                to_value(&[1, 2]).unwrap(),
                Value::Tuple(vec![1.into(), 2.into()]),
            ),
            (to_value(&vec![1, 2]).unwrap(), Value::from(vec![1, 2])),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    /// Serializes through `serialize_bytes`, as `serde_bytes` would.
    struct Blob<'a>(&'a [u8]);

    impl Serialize for Blob<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Deserializes through `deserialize_byte_buf`, as `serde_bytes::ByteBuf` would.
    #[derive(Debug, PartialEq)]
    struct BlobBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for BlobBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BlobBuf, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = BlobBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<BlobBuf, E> {
                    Ok(BlobBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    #[test]
    fn bytes_map_to_python_bytes() {
        let value = to_value(&Blob(b"\x00\xffab")).expect("serializes");
        assert_eq!(value, Value::bytes(*b"\x00\xffab"));
        assert_eq!(
            ok(from_value::<BlobBuf>(value.clone())),
            BlobBuf(b"\x00\xffab".to_vec())
        );
        assert_eq!(
            ok(from_value::<BlobBuf>(Value::from("ab"))),
            BlobBuf(b"ab".to_vec())
        );
        // A Vec<u8> is a sequence: it reads from bytes as well as from a list of ints.
        assert_eq!(ok(from_value::<Vec<u8>>(value)), b"\x00\xffab".to_vec());
        assert_eq!(
            ok(from_value::<Vec<u8>>(Value::from(vec![1, 2]))),
            vec![1, 2]
        );
        let err = from_value::<BlobBuf>(Value::Int(1)).unwrap_err();
        assert_eq!(
            convert_message(err),
            "invalid type: expected bytes, found int"
        );
    }

    #[test]
    fn sequences_read_from_any_python_sequence() {
        let items = vec![Value::Int(1), Value::Int(2)];
        for v in [
            Value::List(items.clone()),
            Value::Tuple(items.clone()),
            Value::Set(items.clone()),
            Value::FrozenSet(items.clone()),
        ] {
            assert_eq!(ok(from_value::<Vec<i64>>(v.clone())), vec![1, 2]);
            assert_eq!(
                ok(from_value::<BTreeSet<i64>>(v.clone())),
                BTreeSet::from([1, 2])
            );
            assert_eq!(ok(from_value::<(u8, u8)>(v)), (1, 2));
        }
        assert!(from_value::<(u8, u8, u8)>(Value::from(vec![1, 2])).is_err());
        assert!(from_value::<(u8,)>(Value::from(vec![1, 2])).is_err());
    }

    #[test]
    fn ints_convert_when_they_fit() {
        assert_eq!(ok(from_value::<u64>(Value::from(u64::MAX))), u64::MAX);
        assert_eq!(ok(from_value::<i128>(Value::from(i128::MIN))), i128::MIN);
        assert_eq!(ok(from_value::<u128>(Value::from(u128::MAX))), u128::MAX);
        assert_eq!(ok(from_value::<u8>(Value::Int(255))), 255);
        assert_eq!(ok(from_value::<f64>(Value::Int(3))), 3.0);
        assert!(from_value::<u8>(Value::Int(256)).is_err());
        assert!(from_value::<u64>(Value::Int(-1)).is_err());
        assert!(from_value::<i64>(Value::from(u64::MAX)).is_err());
        let too_big = Value::from(BigInt::from(1) << 200);
        let err = from_value::<u128>(too_big).unwrap_err();
        assert_eq!(
            convert_message(err),
            "int out of range: 201 bits, at most 128 supported"
        );
    }

    #[test]
    fn complex_reads_as_a_pair() {
        let v = Value::Complex(Complex64::new(1.0, -2.0));
        assert_eq!(ok(from_value::<(f64, f64)>(v.clone())), (1.0, -2.0));
        assert_eq!(ok(from_value::<Vec<f64>>(v)), vec![1.0, -2.0]);
    }

    #[test]
    fn maps_take_any_key_type() {
        let v = Value::dict([(1, "one"), (2, "two")]);
        let m: HashMap<i32, String> = from_value(v).expect("deserializes");
        assert_eq!(m[&2], "two");
    }

    #[test]
    fn errors_name_python_types() {
        let cases: Vec<(crate::Error, &str)> = vec![
            (
                from_value::<i32>(Value::from("5")).unwrap_err(),
                "invalid type: expected int, found str",
            ),
            (
                from_value::<String>(Value::Int(5)).unwrap_err(),
                "invalid type: expected str, found int",
            ),
            (
                from_value::<bool>(Value::None).unwrap_err(),
                "invalid type: expected bool, found NoneType",
            ),
            (
                from_value::<Vec<i32>>(Value::Dict(vec![])).unwrap_err(),
                "invalid type: expected list, found dict",
            ),
            (
                from_value::<Inner>(Value::Int(1)).unwrap_err(),
                "invalid type: expected dict, found int",
            ),
            (
                from_value::<HashMap<String, i32>>(Value::from(vec![1])).unwrap_err(),
                "invalid type: expected dict, found list",
            ),
            (
                from_value::<()>(Value::Int(0)).unwrap_err(),
                "invalid type: expected NoneType, found int",
            ),
            (
                from_value::<f64>(Value::from("1.0")).unwrap_err(),
                "invalid type: expected float, found str",
            ),
            (
                from_value::<Shape>(Value::Int(1)).unwrap_err(),
                "invalid type: expected str or dict of one entry for an enum, found int",
            ),
            (
                from_value::<Shape>(Value::dict([("Rect", 1), ("Circle", 2)])).unwrap_err(),
                "invalid type: expected str or dict of one entry for an enum, found dict of 2 \
                 entries",
            ),
            (
                from_value::<Shape>(Value::from("Circle")).unwrap_err(),
                "invalid type: expected dict of one entry for a newtype variant, found str",
            ),
            (
                from_value::<Inner>(Value::dict([("label", Value::None)])).unwrap_err(),
                "missing field `xs`",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(convert_message(err), want);
        }
        let err = from_value::<i32>(Value::from("5")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value conversion: invalid type: expected int, found str"
        );
    }

    #[test]
    fn enums_read_from_str_or_one_entry_dict() {
        assert_eq!(ok(from_value::<Shape>(Value::from("Empty"))), Shape::Empty);
        assert_eq!(
            ok(from_value::<Shape>(Value::dict([("Empty", Value::None)]))),
            Shape::Empty
        );
        assert_eq!(
            ok(from_value::<Shape>(Value::dict([("Segment", vec![1, 2])]))),
            Shape::Segment(1, 2)
        );
        assert!(from_value::<Shape>(Value::from("Nope")).is_err());
    }
}
