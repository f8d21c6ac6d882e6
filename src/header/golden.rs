//! Golden files: `tests/golden/*.hdr` and `expected.json`, shared with the Python tests.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::tests::{fields, file_size, five_d_meta, stamped};
use super::*;
use crate::value::Value;

pub(super) struct Golden {
    pub(super) file: &'static str,
    pub(super) fields: HeaderFields,
}

pub(super) fn goldens() -> Vec<Golden> {
    let c = |dtype, shape: &[usize], meta| {
        let layout = Layout::c_order(dtype, shape).unwrap();
        let n = layout.nbytes() as u64;
        fields(layout, meta, n)
    };
    vec![
        Golden {
            file: "u16_c.hdr",
            fields: c(DType::U16, &[3, 4, 5], Meta::default()),
        },
        Golden {
            file: "f32_meta5d.hdr",
            fields: c(DType::F32, &[2, 3, 1, 4, 5], five_d_meta()),
        },
        Golden {
            file: "bool_0d.hdr",
            fields: c(DType::Bool, &[], Meta::default()),
        },
        Golden {
            file: "c16_strided.hdr",
            fields: fields(
                Layout::strided(DType::C128, &[2, 3], &[96, 16]).unwrap(),
                Meta::default(),
                192,
            ),
        },
        Golden {
            file: "u8_empty.hdr",
            fields: fields(
                Layout::strided(DType::U8, &[0, 5], &[5, 1]).unwrap(),
                Meta::default(),
                0,
            ),
        },
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A JSON rendering of the plain values metadata holds (floats as Python's `repr`).
fn json(v: &Value, out: &mut String) {
    match v {
        Value::None => out.push_str("null"),
        Value::Bool(b) => write!(out, "{b}").unwrap(),
        Value::Int(n) => write!(out, "{n}").unwrap(),
        Value::Float(x) => write!(out, "{x:?}").unwrap(),
        Value::Str(s) => write!(out, "{s:?}").unwrap(),
        Value::List(xs) | Value::Tuple(xs) => {
            out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json(x, out);
            }
            out.push(']');
        }
        Value::Dict(kv) => {
            out.push('{');
            for (i, (k, x)) in kv.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json(k, out);
                out.push_str(": ");
                json(x, out);
            }
            out.push('}');
        }
        other => panic!("no JSON for {other}"),
    }
}

fn expected_json(goldens: &[Golden]) -> String {
    let list = |v: &[usize]| format!("{v:?}");
    let mut out = String::from("{\n");
    for (i, g) in goldens.iter().enumerate() {
        let f = &g.fields;
        let meta = f.meta.encode(f.layout.ndim()).unwrap();
        let mut meta_json = String::new();
        json(&f.meta.to_value(), &mut meta_json);
        let hex: String = meta.iter().map(|b| format!("{b:02x}")).collect();
        let entries = [
            ("magic", "\"5058475345470000\"".to_string()),
            ("version", VERSION.to_string()),
            ("header_len", f.header_len.to_string()),
            ("data_len", f.data_len.to_string()),
            ("nbytes", f.layout.nbytes().to_string()),
            ("dtype", format!("{:?}", f.layout.dtype.typestr())),
            ("itemsize", f.layout.dtype.itemsize().to_string()),
            ("ndim", f.layout.ndim().to_string()),
            ("flags", f.layout.flags().to_string()),
            ("creator_pid", f.creator_pid.to_string()),
            ("creator_start", f.creator_start.to_string()),
            ("generation", f.generation.to_string()),
            ("state", f.state.to_string()),
            ("owner_pid", f.owner_pid.to_string()),
            ("meta_len", meta.len().to_string()),
            ("shape", list(&f.layout.shape)),
            ("strides", list(&f.layout.strides)),
            ("file_size", file_size(f).to_string()),
            ("meta", meta_json),
            ("meta_hex", format!("{hex:?}")),
        ];
        writeln!(out, "  {:?}: {{", g.file).unwrap();
        for (j, (k, v)) in entries.iter().enumerate() {
            let comma = if j + 1 < entries.len() { "," } else { "" };
            writeln!(out, "    {k:?}: {v}{comma}").unwrap();
        }
        let comma = if i + 1 < goldens.len() { "," } else { "" };
        writeln!(out, "  }}{comma}").unwrap();
    }
    out.push_str("}\n");
    out
}

/// Rebuilds every golden header with `encode_header` and the version stamp and compares
/// byte for byte; with `PIXGATE_WRITE_GOLDEN=1` it writes them instead.
#[test]
fn golden_files_are_reproduced() {
    let goldens = goldens();
    let dir = golden_dir();
    let write = std::env::var_os("PIXGATE_WRITE_GOLDEN").is_some_and(|v| v == "1");
    let mut files: Vec<(String, Vec<u8>)> = goldens
        .iter()
        .map(|g| (g.file.to_string(), stamped(&g.fields)))
        .collect();
    files.push(("expected.json".into(), expected_json(&goldens).into_bytes()));
    for (file, bytes) in &files {
        let path = dir.join(file);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (PIXGATE_WRITE_GOLDEN=1 writes it)", path.display())
            });
            assert!(
                on_disk == *bytes,
                "{} differs from what the encoder writes",
                path.display()
            );
        }
    }
}

#[test]
fn golden_files_parse_to_their_fields() {
    for g in goldens() {
        let bytes = std::fs::read(golden_dir().join(g.file)).unwrap();
        assert_eq!(bytes.len(), PAGE, "{}", g.file);
        let parsed = parse_header(&bytes, file_size(&g.fields)).unwrap();
        assert_eq!(parsed, g.fields, "{}", g.file);
    }
    let c16 = &goldens()[3].fields;
    assert_eq!(
        (c16.layout.nbytes(), c16.layout.extent(), c16.layout.flags()),
        (96, 144, 0)
    );
}
