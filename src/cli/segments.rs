//! `pixgate ls`, `pixgate inspect` and `pixgate gc`: what the segment layer finds and
//! sweeps, as tables, reports and JSON.

use std::process::ExitCode;

use pixgate::Value;
use pixgate::segment::{self, SegmentInfo, SweepReport};
use serde::Serialize;

/// `pixgate ls`: one line, or one JSON object, per pixgate segment of this user: the
/// named ones in /dev/shm and the anonymous ones its processes hold or map, by key.
pub(crate) fn ls(json: bool) -> pixgate::Result<ExitCode> {
    let progress =
        crate::progress::spinner("listing segments: /dev/shm, then the processes in /proc");
    let mut segments = segment::list();
    progress.finish_and_clear();
    segments.sort_by(|a, b| a.key.cmp(&b.key));
    if json {
        let rows: Vec<SegmentJson<'_>> = segments.iter().map(SegmentJson::of).collect();
        emit(&format!("{}\n", segments_json(&rows)))?;
    } else if segments.is_empty() {
        emit("no pixgate segments\n")?;
    } else {
        emit(&segments_table(&segments))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout. A reader that stopped reading (`pixgate ls | head -1`) ends
/// the output, quietly: what it did not read is not an error, and not a panic as
/// `println!` would make it.
fn emit(text: &str) -> pixgate::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(pixgate::Error::new(pixgate::ErrorKind::Io {
                context: "writing to stdout".to_string(),
                kind: e.kind(),
                message: e.to_string(),
                source: std::sync::Arc::new(e),
            }))
        }
        _ => Ok(()),
    }
}

const LS_COLUMNS: [&str; 11] = [
    "NAME",
    "TRANSPORT",
    "CREATOR",
    "OWNER",
    "HOLDERS",
    "MAPPED-BY",
    "DTYPE",
    "SHAPE",
    "SIZE",
    "STATE",
    "PROBLEM",
];

/// The `ls` table: a header line, then one aligned line per segment, named by its key.
fn segments_table(segments: &[SegmentInfo]) -> String {
    let rows: Vec<[String; 11]> = std::iter::once(LS_COLUMNS.map(str::to_string))
        .chain(segments.iter().map(|s| {
            [
                s.key.clone(),
                s.transport.to_string(),
                creator_cell(s),
                or_dash(s.owner_pid),
                list_cell(&s.holders),
                list_cell(&s.mapped_by),
                or_dash(s.dtype),
                s.shape
                    .as_deref()
                    .map_or_else(|| "-".to_string(), shape_text),
                human_size(s.size),
                s.state.map_or_else(|| "-".to_string(), state_name),
                s.problem.as_deref().map(one_line).unwrap_or_default(),
            ]
        }))
        .collect();
    aligned(&rows)
}

/// Items for a table cell without spaces: `1234:5,1240:7`; the first four and `+N`
/// for the others when there are more; `-` for none.
fn list_cell<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 4;
    if items.is_empty() {
        return "-".to_string();
    }
    let mut cell = items
        .iter()
        .take(SHOWN)
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > SHOWN {
        cell.push_str(&format!(",+{}", items.len() - SHOWN));
    }
    cell
}

/// Rows of cells as text: each column padded to its widest cell, two spaces apart.
pub(crate) fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `1234 alive`, `1234 dead`, or `-` when the header gave no creator.
fn creator_cell(s: &SegmentInfo) -> String {
    match (s.creator_pid, s.creator_alive) {
        (Some(pid), Some(true)) => format!("{pid} alive"),
        (Some(pid), Some(false)) => format!("{pid} dead"),
        (Some(pid), None) => pid.to_string(),
        (None, _) => "-".to_string(),
    }
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A shape as `5×3×2×512×512`; `()` for a 0-d array.
fn shape_text(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "()".to_string();
    }
    let axes: Vec<String> = shape.iter().map(usize::to_string).collect();
    axes.join("×")
}

/// The advisory state word's name (docs/SEGMENT_FORMAT.md §5).
fn state_name(state: u32) -> String {
    match state {
        segment::STATE_OWNED => "owned".to_string(),
        segment::STATE_SHARED => "shared".to_string(),
        segment::STATE_LENT => "lent".to_string(),
        segment::STATE_MOVED => "moved".to_string(),
        segment::STATE_FREE => "free".to_string(),
        other => format!("unknown ({other})"),
    }
}

/// Bytes in binary units: `512 B`, `8.0 KiB`, `7.5 MiB`, `2.0 GiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Text for a one-line cell: control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `ls --json`: an array of objects, one per segment and one a line; unknown fields are
/// `null`.
fn segments_json(segments: &[SegmentJson<'_>]) -> String {
    crate::json::to_string(segments, 1)
}

/// One segment in `ls --json`.
#[derive(Debug, Serialize)]
struct SegmentJson<'a> {
    name: &'a str,
    key: &'a str,
    transport: &'static str,
    offset: u64,
    holders: Vec<HolderJson>,
    mapped_by: &'a [u32],
    creator_pid: Option<u32>,
    creator_alive: Option<bool>,
    owner_pid: Option<u32>,
    dtype: Option<&'static str>,
    shape: Option<&'a [usize]>,
    size: u64,
    state: Option<String>,
    generation: Option<u64>,
    dims: Option<&'a [String]>,
    problem: Option<&'a str>,
}

/// A process holding a descriptor: `{"pid": 1234, "fd": 5}`.
#[derive(Debug, Serialize)]
struct HolderJson {
    pid: u32,
    fd: i32,
}

impl<'a> SegmentJson<'a> {
    fn of(s: &'a SegmentInfo) -> SegmentJson<'a> {
        SegmentJson {
            name: &s.name,
            key: &s.key,
            transport: s.transport.as_str(),
            offset: s.offset,
            holders: s
                .holders
                .iter()
                .map(|h| HolderJson {
                    pid: h.pid,
                    fd: h.fd,
                })
                .collect(),
            mapped_by: &s.mapped_by,
            creator_pid: s.creator_pid,
            creator_alive: s.creator_alive,
            owner_pid: s.owner_pid,
            dtype: s.dtype.map(|d| d.typestr()),
            shape: s.shape.as_deref(),
            size: s.size,
            state: s.state.map(state_name),
            generation: s.generation,
            dims: s.meta.as_ref().and_then(|m| m.dims.as_deref()),
            problem: s.problem.as_deref(),
        }
    }
}

/// `pixgate gc`: sweeps /dev/shm and prints each segment removed (or, with `dry_run`,
/// that would be removed) with its reason, then the count.
pub(crate) fn gc(dry_run: bool, json: bool) -> pixgate::Result<ExitCode> {
    let progress = crate::progress::spinner("sweeping /dev/shm");
    let report = segment::sweep(dry_run);
    progress.finish_and_clear();
    let report = report?;
    if json {
        emit(&format!("{}\n", sweep_json(&report, dry_run)))?;
    } else {
        emit(&sweep_table(&report, dry_run))?;
    }
    for e in &report.failed {
        eprintln!("pixgate: {e}");
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const GC_COLUMNS: [&str; 3] = ["NAME", "SIZE", "REASON"];

/// The `gc` table (omitted when nothing was swept) and a count line.
fn sweep_table(report: &SweepReport, dry_run: bool) -> String {
    let mut out = String::new();
    if !report.swept.is_empty() {
        let rows: Vec<[String; 3]> = std::iter::once(GC_COLUMNS.map(str::to_string))
            .chain(report.swept.iter().map(|s| {
                [
                    s.name.clone(),
                    human_size(s.size),
                    one_line(&s.reason.to_string()),
                ]
            }))
            .collect();
        out.push_str(&aligned(&rows));
    }
    let count = report.swept.len();
    let bytes: u64 = report.swept.iter().map(|s| s.size).sum();
    out.push_str(&format!(
        "{} {count} segment{} ({})\n",
        if dry_run { "would remove" } else { "removed" },
        if count == 1 { "" } else { "s" },
        human_size(bytes)
    ));
    out
}

/// `gc --json`: `dry_run`, `count`, `bytes`, one object per segment (`name`, `size`,
/// `reason` as a code, `message`) a line, and the messages of segments that failed.
fn sweep_json(report: &SweepReport, dry_run: bool) -> String {
    let json = SweepJson {
        dry_run,
        count: report.swept.len(),
        bytes: report.swept.iter().map(|s| s.size).sum(),
        segments: report
            .swept
            .iter()
            .map(|s| SweptJson {
                name: &s.name,
                size: s.size,
                reason: s.reason.code(),
                message: s.reason.to_string(),
            })
            .collect(),
        failed: report.failed.iter().map(ToString::to_string).collect(),
    };
    crate::json::to_string(&json, 2)
}

/// `gc --json`.
#[derive(Debug, Serialize)]
struct SweepJson<'a> {
    dry_run: bool,
    count: usize,
    bytes: u64,
    segments: Vec<SweptJson<'a>>,
    failed: Vec<String>,
}

/// One segment in `gc --json`.
#[derive(Debug, Serialize)]
struct SweptJson<'a> {
    name: &'a str,
    size: u64,
    reason: &'static str,
    message: String,
}

/// `pixgate inspect NAME`: the whole header and the metadata of one segment. Exits 1
/// when the segment fails validation, after printing what could be read.
pub(crate) fn inspect(name: &str) -> pixgate::Result<ExitCode> {
    let name = segment_name(name);
    let progress = crate::progress::spinner(format!("looking for {name}"));
    // Validates the name before any system call, and reports a missing segment.
    let info = segment::inspect(&name);
    progress.finish_and_clear();
    let info = info?;
    emit(&inspect_report(&info))?;
    match &info.problem {
        None => Ok(ExitCode::SUCCESS),
        Some(problem) => {
            eprintln!("pixgate: segment {}: {problem}", info.key);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The segment name, key or prefix for a command-line argument: `pxg-…`, `/pxg-…` and
/// `/dev/shm/pxg-…` all stand for `/pxg-…`. Anything else is passed on for the segment
/// layer to refuse.
fn segment_name(arg: &str) -> String {
    let bare = arg.strip_prefix("/dev/shm/").unwrap_or(arg);
    if bare.starts_with('/') {
        bare.to_string()
    } else {
        format!("/{bare}")
    }
}

/// Appends `label value` as one aligned line.
fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{label:<17}{value}\n"));
}

fn or_unknown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// The `inspect` report: identity and validity, every header field, the metadata.
fn inspect_report(info: &SegmentInfo) -> String {
    let mut out = String::new();
    field(&mut out, "segment", &info.key);
    field(&mut out, "transport", info.transport);
    match info.offset {
        0 => field(&mut out, "offset", 0),
        offset => field(
            &mut out,
            "offset",
            format!("{offset:#x} ({offset}) in {}", info.name),
        ),
    }
    field(
        &mut out,
        "size",
        format!("{} ({} bytes)", human_size(info.size), info.size),
    );
    let or_none = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    field(
        &mut out,
        "held by",
        or_none(info.holders.iter().map(|h| h.to_string()).collect()),
    );
    field(
        &mut out,
        "mapped by",
        or_none(info.mapped_by.iter().map(|p| p.to_string()).collect()),
    );
    match &info.problem {
        None => field(&mut out, "valid", "yes"),
        Some(problem) => field(&mut out, "valid", format!("no: {problem}")),
    }
    out.push_str("header\n");
    match &info.header {
        Some(h) => header_fields(&mut out, h),
        None => {
            field(&mut out, "  raw bytes", "unreadable");
            field(&mut out, "  dtype", or_unknown(info.dtype));
            field(
                &mut out,
                "  creator_pid",
                or_unknown(info.creator_pid.map(|pid| match info.creator_alive {
                    Some(true) => format!("{pid} (alive)"),
                    Some(false) => format!("{pid} (dead)"),
                    None => pid.to_string(),
                })),
            );
            field(&mut out, "  generation", or_unknown(info.generation));
            field(
                &mut out,
                "  state",
                or_unknown(info.state.map(|s| format!("{s} ({})", state_name(s)))),
            );
            field(&mut out, "  owner_pid", or_unknown(info.owner_pid));
            field(
                &mut out,
                "  shape",
                or_unknown(info.shape.as_ref().map(|s| format!("{s:?}"))),
            );
        }
    }
    out.push_str("metadata\n");
    match &info.meta {
        Some(meta) => meta_fields(&mut out, meta),
        None => field(
            &mut out,
            "  (none)",
            "unreadable: the header did not validate",
        ),
    }
    out
}

/// Every fixed header field, as stored (docs/SEGMENT_FORMAT.md §4).
fn header_fields(out: &mut String, h: &pixgate::RawHeader) {
    let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let magic = if h.magic_ok() {
        "ok".to_string()
    } else {
        format!("bad: {}, expected {}", hex(&h.magic), hex(b"PXGSEG\0\0"))
    };
    field(out, "  magic", magic);
    field(out, "  version", h.version);
    field(out, "  header_len", h.header_len);
    field(out, "  data_len", h.data_len);
    field(out, "  nbytes", h.nbytes);
    field(out, "  dtype", dtype_text(&h.dtype));
    field(out, "  itemsize", h.itemsize);
    field(out, "  ndim", h.ndim);
    field(out, "  flags", flags_text(h.flags));
    let pid = h.creator_pid;
    field(
        out,
        "  creator_pid",
        if h.magic_ok() {
            format!("{pid} ({})", liveness(pid, h.creator_start))
        } else {
            pid.to_string()
        },
    );
    field(
        out,
        "  creator_start",
        match h.creator_start {
            0 => "0 (unknown)".to_string(),
            t => format!("{t} clock ticks after boot"),
        },
    );
    field(out, "  generation", h.generation);
    field(
        out,
        "  state",
        format!("{} ({})", h.state, state_name(h.state)),
    );
    field(out, "  owner_pid", h.owner_pid);
    field(out, "  meta_len", h.meta_len);
    field(out, "  reserved", h.reserved);
    if h.ndim as usize <= pixgate::MAX_NDIM {
        field(out, "  shape", format!("{:?}", h.shape));
        field(out, "  strides", format!("{:?}", h.strides));
    } else {
        field(out, "  shape", "? (ndim out of range)");
        field(out, "  strides", "? (ndim out of range)");
    }
}

/// The dtype field without its NUL padding, escaped where it is not printable ASCII.
fn dtype_text(field: &[u8]) -> String {
    let end = field.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = field[..end].escape_ascii().to_string();
    if pixgate::DType::from_typestr(&text).is_some() {
        text
    } else {
        format!("{text:?} (not a layout version 1 typestr)")
    }
}

/// The flags word with its meaning: `0x1 (C-contiguous)`.
fn flags_text(flags: u32) -> String {
    let mut parts = Vec::new();
    if flags & pixgate::FLAG_C_CONTIGUOUS != 0 {
        parts.push("C-contiguous");
    }
    if flags & pixgate::FLAG_F_CONTIGUOUS != 0 {
        parts.push("F-contiguous");
    }
    let contiguity = pixgate::FLAG_C_CONTIGUOUS | pixgate::FLAG_F_CONTIGUOUS;
    if flags & contiguity == 0 {
        parts.push("not contiguous");
    }
    if flags & pixgate::FLAG_POOL_SLOT != 0 {
        parts.push("pool slot");
    }
    if flags & !(contiguity | pixgate::FLAG_POOL_SLOT) != 0 {
        parts.push("unknown bits set");
    }
    format!("{flags:#x} ({})", parts.join(", "))
}

/// Whether the creator runs, by pid and start time; says so when the pid was reused.
fn liveness(pid: u32, start: u64) -> String {
    if segment::creator_alive(pid, start) {
        return "alive".to_string();
    }
    match segment::process_start_time(pid) {
        Some(now) if start != 0 && now != start => {
            format!("dead; pid {pid} is now a process started at {now}")
        }
        _ => "dead".to_string(),
    }
}

/// Every metadata key of docs/SEGMENT_FORMAT.md §6, `-` when absent; values as Python
/// literals.
fn meta_fields(out: &mut String, meta: &pixgate::Meta) {
    let strings = |v: &Vec<String>| Value::List(v.iter().cloned().map(Value::Str).collect());
    let show = |v: Option<Value>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    field(out, "  dims", show(meta.dims.as_ref().map(strings)));
    field(
        out,
        "  scale",
        show(
            meta.scale
                .as_ref()
                .map(|v| Value::List(v.iter().copied().map(Value::Float).collect())),
        ),
    );
    field(out, "  units", show(meta.units.as_ref().map(strings)));
    field(
        out,
        "  channel_names",
        show(meta.channel_names.as_ref().map(strings)),
    );
    field(out, "  name", show(meta.name.clone().map(Value::Str)));
    let attrs = (!meta.attrs.is_empty()).then(|| {
        Value::Dict(
            meta.attrs
                .iter()
                .map(|(k, v)| (Value::Str(k.clone()), v.clone()))
                .collect(),
        )
    });
    field(out, "  attrs", show(attrs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_json_keeps_any_name_intact_and_unknown_fields_null() {
        let odd = "say \"hi\" \\ back\\slash\nline\tbreak\r\u{0}\u{1f}\u{7f} µm ×";
        let dims = [odd.to_string(), "y".to_string()];
        let row = |key: &'static str, known: bool| SegmentJson {
            name: odd,
            key,
            transport: "anonymous",
            offset: 0,
            holders: vec![HolderJson { pid: 7, fd: 5 }],
            mapped_by: &[7, 9],
            creator_pid: known.then_some(7),
            creator_alive: known.then_some(true),
            owner_pid: known.then_some(7),
            dtype: known.then_some("<u2"),
            shape: known.then_some(&[3, 4][..]),
            size: 8192,
            state: known.then(|| state_name(segment::STATE_LENT)),
            generation: known.then_some(2),
            dims: known.then_some(&dims[..]),
            problem: (!known).then_some(odd),
        };
        let text = segments_json(&[row("/pxg-7-00@0", true), row("/pxg-7-00@1000", false)]);
        // One object a line, between the brackets.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!((lines[0], lines[3]), ("[", "]"));
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let expected = serde_json::json!([
            {
                "name": odd, "key": "/pxg-7-00@0", "transport": "anonymous", "offset": 0,
                "holders": [{"pid": 7, "fd": 5}], "mapped_by": [7, 9],
                "creator_pid": 7, "creator_alive": true, "owner_pid": 7, "dtype": "<u2",
                "shape": [3, 4], "size": 8192, "state": "lent", "generation": 2,
                "dims": [odd, "y"], "problem": null
            },
            {
                "name": odd, "key": "/pxg-7-00@1000", "transport": "anonymous", "offset": 0,
                "holders": [{"pid": 7, "fd": 5}], "mapped_by": [7, 9],
                "creator_pid": null, "creator_alive": null, "owner_pid": null, "dtype": null,
                "shape": null, "size": 8192, "state": null, "generation": null,
                "dims": null, "problem": odd
            }
        ]);
        assert_eq!(parsed, expected);
        assert_eq!(segments_json(&[]), "[]");
    }

    #[test]
    fn sizes_use_binary_units() {
        for (bytes, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (8192, "8.0 KiB"),
            (5 * 3 * 2 * 512 * 512 * 2 + 4096, "15.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (u64::MAX, "16384.0 PiB"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn segment_names_are_accepted_with_or_without_the_slash() {
        for (arg, name) in [
            ("pxg-1a-0123456789abcdef", "/pxg-1a-0123456789abcdef"),
            ("/pxg-1a-0123456789abcdef", "/pxg-1a-0123456789abcdef"),
            (
                "/dev/shm/pxg-1a-0123456789abcdef",
                "/pxg-1a-0123456789abcdef",
            ),
            ("../etc/passwd", "/../etc/passwd"),
        ] {
            assert_eq!(segment_name(arg), name);
        }
    }

    #[test]
    fn shapes_and_flags_read_naturally() {
        assert_eq!(shape_text(&[5, 3, 2, 512, 512]), "5×3×2×512×512");
        assert_eq!(shape_text(&[]), "()");
        assert_eq!(flags_text(3), "0x3 (C-contiguous, F-contiguous)");
        assert_eq!(flags_text(0), "0x0 (not contiguous)");
        assert_eq!(flags_text(5), "0x5 (C-contiguous, pool slot)");
        assert_eq!(flags_text(4), "0x4 (not contiguous, pool slot)");
        assert_eq!(flags_text(9), "0x9 (C-contiguous, unknown bits set)");
        assert_eq!(dtype_text(b"<u2\0\0\0\0\0\0\0\0\0\0\0\0\0"), "<u2");
        assert_eq!(
            dtype_text(b">u2\xff"),
            "\">u2\\\\xff\" (not a layout version 1 typestr)"
        );
    }
}
