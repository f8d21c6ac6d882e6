//! The value codec alone, no process on the other side: encode and decode of the values
//! a channel carries most (a small int, a short message tuple, a 100-item list of
//! strs, a dict of floats), through the public `dumps` and `loads`. Channel payloads
//! take the same code path without the version byte.
//!
//! Each case is measured as one encode plus one decode (`roundtrip/…`), the unit the
//! channel hot path pays per item.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pixgate::{Value, dumps, loads};

fn cases() -> Vec<(&'static str, Value)> {
    vec![
        ("int", Value::from(21)),
        (
            "tuple3",
            Value::Tuple(vec!["frame".into(), 42.into(), 1.5.into()]),
        ),
        (
            "list100_str",
            Value::List((0..100).map(|i| Value::from(format!("item {i}"))).collect()),
        ),
        (
            "dict16_float",
            Value::dict((0..16).map(|i| (format!("k{i}"), Value::from(f64::from(i) * 0.5)))),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.measurement_time(Duration::from_secs(3));
    for (name, value) in cases() {
        g.bench_function(format!("roundtrip/{name}"), |b| {
            b.iter(|| {
                let bytes = dumps(black_box(&value)).expect("encodes");
                loads(black_box(&bytes)).expect("decodes")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
