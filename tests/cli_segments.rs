//! `pixgate ls` and `pixgate inspect`, run as a user would run them, against real
//! segments of both transports: named ones in /dev/shm and anonymous ones found through
//! /proc (Linux: other platforms have neither to list). Arenas, prefixes, state words
//! and processes that come and go are in `cli_anonymous.rs`.
#![cfg(target_os = "linux")]

mod common;

use common::{memfd_fds, pixgate_ok, run_pixgate, text};

use std::fs::File;
use std::os::unix::fs::FileExt;

use common::{assert_no_segments, serial};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use pixgate::SharedArray;
use pixgate::segment::Transport;

const BOTH: [Transport; 2] = [Transport::Named, Transport::Anonymous];

/// A 3 × 4 × 5 `u16` array with axes z, y, x.
fn zyx_array(transport: Transport) -> SharedArray<u16> {
    let mut a = SharedArray::<u16>::zeros_in(transport, &[3, 4, 5]).expect("create array");
    a.set_dims(&["z", "y", "x"]).expect("set dims");
    a
}

/// The `ls` HOLDERS cell for this process's array `a`: `pid:fd` of each descriptor of
/// an anonymous one; a named one is held by nobody once it is mapped.
fn holders_cell(a: &SharedArray<u16>) -> String {
    let pid = std::process::id();
    match a.transport() {
        Transport::Named => "-".to_string(),
        Transport::Anonymous | Transport::ByValue => {
            let fds: Vec<String> = memfd_fds(a.name())
                .iter()
                .map(|fd| format!("{pid}:{fd}"))
                .collect();
            assert!(!fds.is_empty(), "no descriptor of {}", a.name());
            fds.join(",")
        }
    }
}

/// The value printed after `label` on the first line that starts with it, ignoring
/// indentation.
fn value_of<'a>(report: &'a str, label: &str) -> &'a str {
    let label = label.trim();
    report
        .lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(label)
                .filter(|rest| rest.starts_with(' '))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
}

#[test]
fn ls_lists_a_live_array_until_it_is_dropped() {
    let _serial = serial();
    for transport in BOTH {
        let a = zyx_array(transport);
        let name = a.name().to_string();

        let stdout = pixgate_ok(&["ls"]);
        let header = stdout.lines().next().unwrap_or_default();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
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
                "PROBLEM"
            ],
            "{stdout}"
        );
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        let pid = std::process::id().to_string();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                name.as_str(),
                transport.as_str(),
                &pid,
                "alive",
                &pid,
                &holders_cell(&a),
                &pid,
                "<u2",
                "3×4×5",
                "8.0",
                "KiB",
                "owned"
            ],
            "{line}"
        );

        drop(a);
        let stdout = pixgate_ok(&["ls"]);
        assert!(!stdout.contains(&name), "{name} still listed:\n{stdout}");
        assert_no_segments();
    }
}

#[test]
fn ls_json_describes_the_array() {
    let _serial = serial();
    for transport in BOTH {
        let a = zyx_array(transport);
        let stdout = pixgate_ok(&["ls", "--json"]);
        let json = stdout.trim();
        assert!(json.starts_with('[') && json.ends_with(']'), "{json}");
        let object = json
            .lines()
            .find(|l| l.contains(&format!("\"name\": \"{}\"", a.name())))
            .unwrap_or_else(|| panic!("{} missing:\n{json}", a.name()));
        let pid = std::process::id();
        let holders: Vec<String> = match transport {
            Transport::Named => Vec::new(),
            Transport::Anonymous | Transport::ByValue => memfd_fds(a.name())
                .iter()
                .map(|fd| format!("{{\"pid\": {pid}, \"fd\": {fd}}}"))
                .collect(),
        };
        for member in [
            format!("\"key\": \"{}\"", a.name()),
            format!("\"transport\": \"{transport}\""),
            "\"offset\": 0".to_string(),
            format!("\"holders\": [{}]", holders.join(", ")),
            format!("\"mapped_by\": [{pid}]"),
            "\"dtype\": \"<u2\"".to_string(),
            "\"shape\": [3, 4, 5]".to_string(),
            "\"size\": 8192".to_string(),
            format!("\"creator_pid\": {pid}"),
            "\"creator_alive\": true".to_string(),
            "\"state\": \"owned\"".to_string(),
            "\"dims\": [\"z\", \"y\", \"x\"]".to_string(),
            "\"problem\": null".to_string(),
        ] {
            assert!(object.contains(&member), "{member} missing:\n{object}");
        }
        drop(a);
        assert_no_segments();
    }
}

#[test]
fn inspect_prints_every_header_field_and_the_metadata() {
    let _serial = serial();
    for transport in BOTH {
        let a = zyx_array(transport);
        let pid = std::process::id();
        let bare = a.name().trim_start_matches('/').to_string();
        let with_slash = pixgate_ok(&["inspect", a.name()]);
        let without_slash = pixgate_ok(&["inspect", &bare]);
        assert_eq!(with_slash, without_slash);

        let report = with_slash;
        let held_by = match transport {
            Transport::Named => "none".to_string(),
            Transport::Anonymous | Transport::ByValue => holders_cell(&a).replace(',', ", "),
        };
        for (label, value) in [
            ("segment", a.name().to_string()),
            ("transport", transport.to_string()),
            ("offset", "0".to_string()),
            ("size", "8.0 KiB (8192 bytes)".to_string()),
            ("held by", held_by),
            ("mapped by", pid.to_string()),
            ("valid", "yes".to_string()),
            ("magic", "ok".to_string()),
            ("version", "1".to_string()),
            ("header_len", "4096".to_string()),
            ("data_len", "120".to_string()),
            ("nbytes", "120".to_string()),
            ("dtype", "<u2".to_string()),
            ("itemsize", "2".to_string()),
            ("ndim", "3".to_string()),
            ("flags", "0x1 (C-contiguous)".to_string()),
            ("creator_pid", format!("{pid} (alive)")),
            ("generation", "1".to_string()), // set_dims bumped it
            ("state", "0 (owned)".to_string()),
            ("owner_pid", pid.to_string()),
            ("reserved", "0".to_string()),
            ("shape", "[3, 4, 5]".to_string()),
            ("strides", "[40, 10, 2]".to_string()),
            ("dims", "['z', 'y', 'x']".to_string()),
            ("scale", "-".to_string()),
            ("attrs", "-".to_string()),
        ] {
            assert_eq!(value_of(&report, label), value, "{label}:\n{report}");
        }
        let start = pixgate::segment::process_start_time(pid).expect("own start time");
        assert_eq!(
            value_of(&report, "creator_start"),
            format!("{start} clock ticks after boot")
        );
        drop(a);
        assert_no_segments();
    }
}

#[test]
fn inspect_labels_are_indented_under_their_section() {
    let _serial = serial();
    for transport in BOTH {
        let a = zyx_array(transport);
        let report = pixgate_ok(&["inspect", a.name()]);
        let sections: Vec<&str> = report
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split_whitespace().next().unwrap_or_default())
            .collect();
        assert_eq!(
            sections,
            [
                "segment",
                "transport",
                "offset",
                "size",
                "held",
                "mapped",
                "valid",
                "header",
                "metadata"
            ],
            "{report}"
        );
        drop(a);
        assert_no_segments();
    }
}

#[test]
fn inspect_of_a_damaged_segment_prints_what_it_can_and_fails() {
    let _serial = serial();
    // Damaged through its name, as another process of the user could.
    let a = zyx_array(Transport::Named);
    // The reserved word (offset 92) must be 0.
    let file = nix::sys::mman::shm_open(a.name(), OFlag::O_RDWR, Mode::empty())
        .map(File::from)
        .expect("shm_open");
    file.write_all_at(&7u32.to_le_bytes(), 92).expect("pwrite");

    let out = run_pixgate(&["inspect", a.name()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let problem = "reserved word 0x7, expected 0";
    assert!(
        stderr.contains(&format!("segment {}: {problem}", a.name())),
        "{stderr}"
    );
    assert_eq!(value_of(&stdout, "valid"), format!("no: {problem}"));
    assert_eq!(value_of(&stdout, "reserved"), "7");
    assert_eq!(value_of(&stdout, "dtype"), "<u2");
    assert_eq!(value_of(&stdout, "strides"), "[40, 10, 2]");
    assert_eq!(
        value_of(&stdout, "creator_pid"),
        format!("{} (alive)", std::process::id())
    );

    let listed = pixgate_ok(&["ls"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(a.name()))
        .unwrap_or_else(|| panic!("{} not listed:\n{listed}", a.name()));
    assert!(line.ends_with(problem), "{line}");
    drop(file);
    drop(a);
    assert_no_segments();
}

#[test]
fn ls_says_so_when_there_are_no_segments() {
    let _serial = serial();
    // Other users of this machine may hold segments; the message is only checked when
    // the listing is empty.
    if pixgate_ok(&["ls", "--json"]).trim() == "[]" {
        assert_eq!(pixgate_ok(&["ls"]), "no pixgate segments\n");
    }
}

#[test]
fn inspect_of_a_missing_segment_fails_naming_it() {
    let out = run_pixgate(&["inspect", "/pxg-0-0000000000000000"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        stderr.contains("segment /pxg-0-0000000000000000: no such segment"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn inspect_of_a_bad_name_fails_with_a_name_error() {
    for name in [
        "../etc/passwd",
        "/pxg-1-short",
        "pxg-ABC-0000000000000000",
        "",
    ] {
        let out = run_pixgate(&["inspect", name]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name:?}: {stderr}");
        assert!(stderr.contains("invalid name"), "{name:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name:?}: {stderr}");
    }
}
