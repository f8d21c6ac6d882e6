//! `pixgate exec`: run Python source in a worker and print what it sends, arrays as
//! their dtype, shape and a preview of their elements.

use std::process::ExitCode;
use std::time::Duration;

use pixgate::{Element, ErrorKind, Gateway, SharedArray, Value};

/// Runs `source` in a worker of `spec` (with `python` as its interpreter when given)
/// and prints every value it sends until the channel closes. Each value is awaited at
/// most `timeout` seconds (0: as long as the worker lives). On a terminal a spinner on
/// stderr says what it waits for.
pub(crate) fn run(
    spec: &str,
    python: Option<&str>,
    timeout: f64,
    source: &str,
) -> pixgate::Result<ExitCode> {
    let progress = crate::progress::spinner("starting the worker");
    let mut builder = Gateway::builder(spec).output(crate::progress::worker_output(&progress));
    if let Some(p) = python {
        builder = builder.python(p);
    }
    let gw = builder.spawn()?;
    let ch = gw.remote_exec(source)?;
    let waiting = if timeout > 0.0 {
        format!("waiting for a value from the worker (at most {timeout} s each, --timeout)")
    } else {
        "waiting for a value from the worker (as long as it lives, --timeout 0)".to_string()
    };
    loop {
        progress.set_message(waiting.clone());
        progress.reset_elapsed();
        let item = if timeout > 0.0 {
            ch.receive_timeout(Duration::from_secs_f64(timeout))
        } else {
            ch.receive()
        };
        match item {
            Ok(v) => {
                let text = render(v);
                progress.suspend(|| println!("{text}"));
            }
            Err(e) if matches!(e.kind(), ErrorKind::ChannelClosed { .. }) => break,
            Err(e) => {
                progress.finish_and_clear();
                if matches!(e.kind(), ErrorKind::Timeout { .. }) {
                    eprintln!(
                        "pixgate: no value within {timeout} s (--timeout; 0 waits as long \
                         as the worker lives)"
                    );
                } else {
                    eprintln!("pixgate: {e}");
                }
                let _ = gw.kill();
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    progress.set_message("waiting for the worker to exit");
    gw.exit(Duration::from_secs(5))?;
    progress.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

/// A value as text: arrays anywhere in it as `array(uint16, shape=(3, 4))` followed by
/// a preview of their elements (ndarray's, which elides long axes), everything else as
/// [`Value`]'s `Display`.
fn render(v: Value) -> String {
    if !has_array(&v) {
        return v.to_string();
    }
    let mut arrays = Vec::new();
    let text = outline(v, &mut arrays);
    let mut out = text;
    for (i, a) in arrays.iter().enumerate() {
        out.push_str(&format!("\n  #{i}: {a}"));
    }
    out
}

fn has_array(v: &Value) -> bool {
    match v {
        Value::Array(_) => true,
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
            xs.iter().any(has_array)
        }
        Value::Dict(kv) => kv.iter().any(|(k, v)| has_array(k) || has_array(v)),
        _ => false,
    }
}

/// The value with each array replaced by `<array #i>`, and the arrays' descriptions.
fn outline(v: Value, arrays: &mut Vec<String>) -> String {
    let join = |xs: Vec<Value>, arrays: &mut Vec<String>| {
        xs.into_iter()
            .map(|x| outline(x, arrays))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match v {
        Value::Array(_) => {
            arrays.push(describe(v));
            format!("<array #{}>", arrays.len() - 1)
        }
        Value::List(_) => format!("[{}]", join(v.into_items().unwrap_or_default(), arrays)),
        Value::Tuple(_) => {
            let items = v.into_items().unwrap_or_default();
            let one = items.len() == 1;
            let inner = join(items, arrays);
            if one {
                format!("({inner},)")
            } else {
                format!("({inner})")
            }
        }
        Value::Dict(_) => {
            let entries = v.into_entries().unwrap_or_default();
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(k, x)| format!("{}: {}", outline(k, arrays), outline(x, arrays)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// `array(uint16, shape=(3, 4))` and its elements, for an array a worker moved here;
/// the reference itself for anything that cannot be adopted.
fn describe(v: Value) -> String {
    fn try_as<T: Element + std::fmt::Display>(v: &Value) -> Option<String> {
        let a = SharedArray::<T>::from_value(v.clone()).ok()?;
        let view = a.view().ok()?;
        let shape: Vec<String> = a.shape().iter().map(usize::to_string).collect();
        let shape = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.join(", ")),
        };
        let preview = format!("{view:.6}").replace('\n', "\n      ");
        Some(format!(
            "array({}, shape={shape})\n      {preview}",
            numpy_name(T::DTYPE.typestr())
        ))
    }
    try_as::<u8>(&v)
        .or_else(|| try_as::<u16>(&v))
        .or_else(|| try_as::<u32>(&v))
        .or_else(|| try_as::<u64>(&v))
        .or_else(|| try_as::<i8>(&v))
        .or_else(|| try_as::<i16>(&v))
        .or_else(|| try_as::<i32>(&v))
        .or_else(|| try_as::<i64>(&v))
        .or_else(|| try_as::<f32>(&v))
        .or_else(|| try_as::<f64>(&v))
        .or_else(|| try_as::<half::f16>(&v))
        .or_else(|| try_as::<bool>(&v))
        .or_else(|| try_as::<num_complex::Complex<f32>>(&v))
        .or_else(|| try_as::<num_complex::Complex<f64>>(&v))
        .unwrap_or_else(|| v.to_string())
}

/// numpy's name of a dtype given by its typestr.
fn numpy_name(typestr: &str) -> &'static str {
    match typestr {
        "|b1" => "bool",
        "|u1" => "uint8",
        "<u2" => "uint16",
        "<u4" => "uint32",
        "<u8" => "uint64",
        "|i1" => "int8",
        "<i2" => "int16",
        "<i4" => "int32",
        "<i8" => "int64",
        "<f2" => "float16",
        "<f4" => "float32",
        "<f8" => "float64",
        "<c8" => "complex64",
        "<c16" => "complex128",
        _ => "unknown",
    }
}
