//! [`Meta`]: an array's metadata and its block in the header.

use std::collections::HashSet;

use super::NEW;
use crate::codec::{dumps, loads};
use crate::error::Result;
use crate::segment::SegmentProblem;
use crate::value::Value;

/// An array's metadata, stored in the header's metadata block.
///
/// Every field is optional. `dims`, `scale` and `units` have one entry per axis;
/// `attrs` holds free key–value pairs of plain Python values (no array references).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// Axis names, such as `["t", "z", "c", "y", "x"]`.
    pub dims: Option<Vec<String>>,
    /// Physical size of one step along each axis.
    pub scale: Option<Vec<f64>>,
    /// Unit of each axis's scale (`"um"`, `"s"`, `""`).
    pub units: Option<Vec<String>>,
    /// Names of the channels (any number).
    pub channel_names: Option<Vec<String>>,
    /// A name for the array.
    pub name: Option<String>,
    /// Free attributes, in order; keys are unique.
    pub attrs: Vec<(String, Value)>,
}

impl Meta {
    /// The metadata as a dict holding only the present keys, in the order `dims`,
    /// `scale`, `units`, `channel_names`, `name`, `attrs` (`attrs` only if non-empty).
    pub fn to_value(&self) -> Value {
        let strs = |v: &[String]| Value::List(v.iter().map(|s| Value::Str(s.clone())).collect());
        let mut d = Vec::new();
        let mut put = |k: &str, v: Value| d.push((Value::Str(k.to_string()), v));
        if let Some(dims) = &self.dims {
            put("dims", strs(dims));
        }
        if let Some(scale) = &self.scale {
            put(
                "scale",
                Value::List(scale.iter().map(|&x| Value::Float(x)).collect()),
            );
        }
        if let Some(units) = &self.units {
            put("units", strs(units));
        }
        if let Some(names) = &self.channel_names {
            put("channel_names", strs(names));
        }
        if let Some(name) = &self.name {
            put("name", Value::Str(name.clone()));
        }
        if !self.attrs.is_empty() {
            let attrs = self
                .attrs
                .iter()
                .map(|(k, v)| (Value::Str(k.clone()), v.clone()));
            put("attrs", Value::Dict(attrs.collect()));
        }
        Value::Dict(d)
    }

    /// Reads metadata for an array of `ndim` axes from a dict value.
    ///
    /// Readers are tolerant where it costs nothing: a known key whose value is `None`
    /// counts as absent, lists may be tuples, `scale` entries may be ints, and unknown
    /// keys are ignored.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with
    /// [`SegmentProblem::Meta`] when the value holds an array reference anywhere (in
    /// `attrs` or under an unknown key alike), is not a dict with str keys, a known key
    /// has the wrong type or length, or a key repeats.
    pub fn from_value(value: &Value, ndim: usize) -> Result<Meta> {
        Meta::parse(value, ndim).map_err(|p| p.at(NEW))
    }

    pub(crate) fn parse(value: &Value, ndim: usize) -> std::result::Result<Meta, SegmentProblem> {
        let bad = |reason: String| SegmentProblem::Meta { reason };
        // Anywhere, as the Python readers refuse it before they decode (SECURITY.md): a
        // reference under a key this version ignores is refused as well.
        if !is_plain(value) {
            return Err(bad("holds an array reference".into()));
        }
        let Value::Dict(entries) = value else {
            return Err(bad(format!("is a {}, expected a dict", value.type_name())));
        };
        let mut meta = Meta::default();
        let mut seen = HashSet::new();
        for (k, v) in entries {
            let Value::Str(key) = k else {
                return Err(bad(format!("has a {} key, expected str", k.type_name())));
            };
            if !seen.insert(key.as_str()) {
                return Err(bad(format!("repeats the key {key:?}")));
            }
            if v.is_none() {
                continue;
            }
            match key.as_str() {
                "dims" => meta.dims = Some(str_list(key, v, Some(ndim))?),
                "units" => meta.units = Some(str_list(key, v, Some(ndim))?),
                "channel_names" => meta.channel_names = Some(str_list(key, v, None)?),
                "scale" => meta.scale = Some(float_list(key, v, ndim)?),
                "name" => match v {
                    Value::Str(s) => meta.name = Some(s.clone()),
                    _ => return Err(bad(format!("name is a {}, expected str", v.type_name()))),
                },
                "attrs" => meta.attrs = attrs(v)?,
                _ => {}
            }
        }
        Ok(meta)
    }

    /// The metadata block: `dumps` of [`Meta::to_value`], checked by the reader's rules
    /// so that whatever is written can be read back.
    pub(crate) fn encode(&self, ndim: usize) -> std::result::Result<Vec<u8>, SegmentProblem> {
        let bad = |reason: String| SegmentProblem::Meta { reason };
        let bytes = dumps(&self.to_value()).map_err(|e| bad(e.to_string()))?;
        let value = loads(&bytes).map_err(|e| bad(e.to_string()))?;
        Meta::parse(&value, ndim)?;
        Ok(bytes)
    }
}

fn items<'a>(key: &str, v: &'a Value) -> std::result::Result<&'a [Value], SegmentProblem> {
    match v {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        _ => Err(SegmentProblem::Meta {
            reason: format!("{key} is a {}, expected a list", v.type_name()),
        }),
    }
}

fn check_len(
    key: &str,
    found: usize,
    ndim: Option<usize>,
) -> std::result::Result<(), SegmentProblem> {
    match ndim {
        Some(ndim) if found != ndim => Err(SegmentProblem::Meta {
            reason: format!("{key} has {found} entries, expected ndim {ndim}"),
        }),
        _ => Ok(()),
    }
}

fn str_list(
    key: &str,
    v: &Value,
    ndim: Option<usize>,
) -> std::result::Result<Vec<String>, SegmentProblem> {
    let items = items(key, v)?;
    check_len(key, items.len(), ndim)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(SegmentProblem::Meta {
                reason: format!("{key}[{i}] is a {}, expected str", item.type_name()),
            }),
        })
        .collect()
}

fn float_list(key: &str, v: &Value, ndim: usize) -> std::result::Result<Vec<f64>, SegmentProblem> {
    let items = items(key, v)?;
    check_len(key, items.len(), Some(ndim))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Float(x) => Ok(*x),
            Value::Int(n) => Ok(*n as f64),
            _ => Err(SegmentProblem::Meta {
                reason: format!("{key}[{i}] is a {}, expected float", item.type_name()),
            }),
        })
        .collect()
}

fn attrs(v: &Value) -> std::result::Result<Vec<(String, Value)>, SegmentProblem> {
    let bad = |reason: String| SegmentProblem::Meta { reason };
    let Value::Dict(entries) = v else {
        return Err(bad(format!(
            "attrs is a {}, expected a dict",
            v.type_name()
        )));
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (k, val) in entries {
        let Value::Str(key) = k else {
            return Err(bad(format!(
                "attrs has a {} key, expected str",
                k.type_name()
            )));
        };
        if !seen.insert(key.as_str()) {
            return Err(bad(format!("attrs repeats the key {key:?}")));
        }
        out.push((key.clone(), val.clone()));
    }
    Ok(out)
}

/// True when `v` holds no array reference at any depth (iteratively: no recursion on
/// input).
fn is_plain(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(_) => return false,
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                stack.extend(xs)
            }
            Value::Dict(kv) => stack.extend(kv.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
    }
    true
}
