//! The shared tables under `spec/` against the Rust side and the documents.
//!
//! `spec/message_types.tsv` lists every frame message type and
//! `spec/header_rejections.tsv` every check that rejects a segment header;
//! `python-helper/tests/test_spec_tables.py` holds the Python helpers to the same rows.
//! Here: the message types `src/frame.rs` declares and decodes, PROTOCOL.md's message
//! table and headings; for each rejection, a header built to fail exactly that check,
//! which the header validation must refuse with the row's `SegmentProblem` variant;
//! every variant of `SegmentProblem` is either a row or named below as no header check;
//! and SEGMENT_FORMAT.md §8 lists each row.

use std::collections::{BTreeMap, BTreeSet};

use pixgate::tables;

const MESSAGE_TYPES: &str = include_str!("../spec/message_types.tsv");
const REJECTIONS: &str = include_str!("../spec/header_rejections.tsv");
const PROTOCOL: &str = include_str!("../docs/PROTOCOL.md");
const SEGMENT_FORMAT: &str = include_str!("../docs/SEGMENT_FORMAT.md");
const FRAME_RS: &str = include_str!("../src/frame.rs");
const PROBLEM_RS: &str = include_str!("../src/problem.rs");
const HEADER_RS: &str = include_str!("../src/header.rs");
const META_RS: &str = include_str!("../src/header/meta.rs");
/// `<u2`, shape [3, 4, 5], strides [40, 10, 2], data_len 120: the header every
/// rejection row edits.
const GOLDEN: &[u8] = include_bytes!("golden/u16_c.hdr");
/// The segment size the golden header is parsed against unless a row says otherwise.
const FILE_SIZE: u64 = 8192;

/// `SegmentProblem` variants that no header's contents can cause: what the name, the
/// file's `stat`, a received descriptor or an operation on an open segment report
/// (docs/SEGMENT_FORMAT.md §8 steps 0 and 1, but the size, which is a row).
const NOT_HEADER: &[&str] = &[
    "NotFound",
    "Exists",
    "NameInvalid",
    "NoSpace",
    "Descriptors",
    "NotSealed",
    "ReadOnlyDescriptor",
    "Offset",
    "Os",
    "Owner",
    "Mode",
    // Layout::strided's argument check: a header has exactly ndim strides.
    "StrideCount",
    "ReadOnly",
    "Ambiguous",
];

type Row<'a> = BTreeMap<&'a str, &'a str>;

/// The rows of a TSV: `#` lines are comments, the first other line names the columns.
fn rows(text: &str) -> Vec<Row<'_>> {
    let mut lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let columns: Vec<&str> = lines.next().expect("a header line").split('\t').collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), columns.len(), "{line:?}");
            columns.iter().copied().zip(cells).collect()
        })
        .collect()
}

/// `ChannelCloseError` as PROTOCOL.md spells it: `CHANNEL_CLOSE_ERROR`.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The text from `start` to the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let rest = &text[from..];
    &rest[..rest[start.len()..].find(end).expect("end marker") + start.len()]
}

fn table_types() -> BTreeMap<i8, String> {
    rows(MESSAGE_TYPES)
        .iter()
        .map(|r| (r["number"].parse().unwrap(), r["name"].to_string()))
        .collect()
}

#[test]
fn the_message_type_table_is_what_the_frame_layer_declares_and_decodes() {
    let table = table_types();
    assert_eq!(table.len(), rows(MESSAGE_TYPES).len(), "a number repeats");
    let decoded: BTreeMap<i8, String> = tables::message_types()
        .into_iter()
        .map(|(n, name)| (n, screaming(&name)))
        .collect();
    assert_eq!(decoded, table);
    // The enum itself, so that a variant from_i8 does not decode is seen too.
    let body = between(FRAME_RS, "pub(crate) enum MsgType {", "\n}");
    let declared: BTreeMap<i8, String> = body
        .lines()
        .filter_map(|l| {
            let (name, number) = l.trim().strip_suffix(',')?.split_once(" = ")?;
            Some((number.parse().unwrap(), screaming(name)))
        })
        .collect();
    assert_eq!(declared, table);
    for r in rows(MESSAGE_TYPES) {
        let n: i8 = r["number"].parse().unwrap();
        assert_eq!(
            r["origin"],
            if n < 32 { "execnet" } else { "pixgate" },
            "{r:?}"
        );
        assert!(
            ["to_worker", "to_host", "both"].contains(&r["direction"]),
            "{r:?}"
        );
    }
}

#[test]
fn protocol_md_has_every_message_type_in_its_table_and_headings() {
    let section = between(PROTOCOL, "\n## 4. Message types", "\n## 5. ");
    let mut documented = BTreeMap::new();
    let mut headings = Vec::new();
    for line in section.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            headings.push(heading.split_once(' ').unwrap());
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // The message table's rows; §4's other tables are byte layouts.
        let [_, number, name, origin, ..] = cells[..] else {
            continue;
        };
        if let Ok(n) = number.parse::<i8>() {
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                documented.insert(n, (name.to_string(), origin.to_string()));
            }
        }
    }
    let expected: BTreeMap<i8, (String, String)> = rows(MESSAGE_TYPES)
        .iter()
        .map(|r| {
            let n = r["number"].parse().unwrap();
            (n, (r["name"].to_string(), r["origin"].to_string()))
        })
        .collect();
    assert_eq!(documented, expected);
    for r in rows(MESSAGE_TYPES) {
        let title = format!("{} ({})", r["name"], r["number"]);
        let found: Vec<&str> = headings
            .iter()
            .filter(|(_, t)| t.contains(&title))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(found, [r["section"]], "{r:?}");
    }
}

/// The golden header with a row's edits applied, and the segment size.
fn build(mutation: &str) -> (Vec<u8>, u64) {
    let mut data = GOLDEN.to_vec();
    let mut size = FILE_SIZE;
    let put = |data: &mut Vec<u8>, offset: usize, bytes: &[u8]| {
        data[offset..offset + bytes.len()].copy_from_slice(bytes)
    };
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    for edit in mutation.split_whitespace() {
        let (what, value) = edit.split_once('=').expect("an edit is WHAT=VALUE");
        match what {
            "file_size" => size = value.parse().unwrap(),
            "meta" => {
                let block = hex(value);
                put(&mut data, 608, &block);
                put(&mut data, 88, &(block.len() as u32).to_le_bytes());
            }
            _ => {
                let (kind, offset) = what.split_once('@').expect("KIND@OFFSET");
                let offset: usize = offset.parse().unwrap();
                let bytes = match kind {
                    "bytes" => hex(value),
                    "u32" => value.parse::<u32>().unwrap().to_le_bytes().to_vec(),
                    "u64" => value.parse::<u64>().unwrap().to_le_bytes().to_vec(),
                    "i64" => value.parse::<i64>().unwrap().to_le_bytes().to_vec(),
                    _ => panic!("unknown edit {edit:?}"),
                };
                put(&mut data, offset, &bytes);
            }
        }
    }
    (data, size)
}

/// `BadMagic` for `BadMagic { found: … }`.
fn variant(problem: &pixgate::SegmentProblem) -> String {
    format!("{problem:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

#[test]
fn each_header_of_the_rejection_table_is_refused_with_its_variant() {
    assert_eq!(tables::parse_header(GOLDEN, FILE_SIZE), Ok(()));
    let mut built = 0;
    for r in rows(REJECTIONS) {
        if r["mutation"] == "-" {
            continue;
        }
        let (data, size) = build(r["mutation"]);
        match tables::parse_header(&data, size) {
            Err(p) => assert_eq!(variant(&p), r["rust"], "{r:?}: {p}"),
            Ok(()) => panic!("accepted: {r:?}"),
        }
        built += 1;
    }
    assert!(built >= 25, "{built} rows built");
}

#[test]
fn every_variant_is_a_rejection_row_or_no_header_check() {
    let body = between(PROBLEM_RS, "pub enum SegmentProblem {", "\n}");
    let variants: BTreeSet<String> = body
        .lines()
        .filter_map(|l| {
            let name = l.strip_prefix("    ")?;
            let name = name.strip_suffix(" {").or_else(|| name.strip_suffix(','))?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric())
                .then(|| name.to_string())
        })
        .collect();
    assert!(variants.contains("BadMagic") && variants.contains("Ambiguous"));
    let in_table: BTreeSet<String> = rows(REJECTIONS)
        .iter()
        .map(|r| r["rust"].to_string())
        .collect();
    let not_header: BTreeSet<String> = NOT_HEADER.iter().map(|s| s.to_string()).collect();
    assert!(in_table.is_disjoint(&not_header));
    assert_eq!(
        &in_table | &not_header,
        variants,
        "each SegmentProblem variant is a row of spec/header_rejections.tsv or in NOT_HEADER"
    );
    // And what the header validation can return is in the table.
    let validation = [
        between(HEADER_RS, "fn check_header_len(", "#[cfg(test)]"),
        between(META_RS, "pub(crate) fn parse(", "\n}\n"),
    ];
    for text in validation {
        for piece in text
            .split("P::")
            .chain(text.split("SegmentProblem::"))
            .skip(1)
        {
            let name: String = piece
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                assert!(in_table.contains(&name), "{name} is not in the table");
            }
        }
    }
}

#[test]
fn segment_format_md_lists_each_rejection_with_both_codes() {
    let section = between(SEGMENT_FORMAT, "\n## 8. Validation on open", "\n## 9. ");
    for r in rows(REJECTIONS) {
        let code = match r["code"] {
            "-" => "—".to_string(),
            code => format!("`\"{code}\"`"),
        };
        let rust = format!("`{}", r["rust"]);
        let step = format!("| {} |", r["step"]);
        let hit = section.lines().any(|l| {
            l.starts_with(&step)
                && l.contains(&code)
                && l.match_indices(&rust).any(|(i, _)| {
                    !l[i + rust.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
                })
        });
        assert!(hit, "no line of SEGMENT_FORMAT.md §8 lists {r:?}");
    }
}
