//! `pixgate ls` and `pixgate inspect` on anonymous segments, which have no name in any
//! directory and are found through the descriptors and mappings of the user's
//! processes in /proc (docs/ARCHITECTURE.md): pool arenas slot by slot, keys and
//! prefixes, the state word, other processes' segments, and processes that end while
//! `ls` runs. Other processes are `examples/anon_holder.rs`.
//!
//! Every test takes [`serial`]: a `pixgate ls` opens and maps the segments it lists, so
//! one test's listing would show up as a holder and mapper of another test's segments.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, memfd_fds, pixgate_ok, run_pixgate, serial, text};
use pixgate::segment::{STATE_MOVED, STATE_SHARED, Segment, Transport};
use pixgate::{DType, Gateway, Layout, Meta, OutputMode, Pool, SharedArray};

/// The raw JSON text of member `key` of the one-line object `object`: a number, a
/// string with its quotes, an array or an object.
fn member(object: &str, key: &str) -> String {
    let start = object
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("no {key:?} in {object}"))
        + key.len()
        + 4;
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    for (i, c) in object[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string && depth > 0 => depth -= 1,
            ',' | '}' if !in_string && depth == 0 => return object[start..start + i].to_string(),
            _ => {}
        }
    }
    panic!("unterminated {key:?} in {object}")
}

/// The objects of `ls --json` whose `name` is `name`, in the listing's order.
fn listed(json: &str, name: &str) -> Vec<String> {
    json.lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| l.starts_with('{') && member(l, "name") == format!("\"{name}\""))
        .map(str::to_string)
        .collect()
}

/// `[{"pid": P, "fd": F}, …]` for this process's descriptors of the object `name`.
fn own_holders(name: &str) -> String {
    let pid = std::process::id();
    let fds: Vec<String> = memfd_fds(name)
        .iter()
        .map(|fd| format!("{{\"pid\": {pid}, \"fd\": {fd}}}"))
        .collect();
    assert!(
        !fds.is_empty(),
        "this process holds no descriptor of {name}"
    );
    format!("[{}]", fds.join(", "))
}

fn pool(slots: usize, prefill: bool) -> Pool {
    Pool::builder()
        .class(4096)
        .slots(slots)
        .prefill(prefill)
        .transport(Transport::Anonymous)
        .build()
        .expect("pool")
}

/// The name of the one arena `ls --json` shows this process holding, besides `others`.
fn arena_name(json: &str, others: &[&str]) -> String {
    let pid = std::process::id();
    let mut names: Vec<String> = json
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| l.starts_with('{') && member(l, "creator_pid") == pid.to_string())
        .map(|l| member(l, "name").trim_matches('"').to_string())
        .filter(|n| !others.contains(&n.as_str()))
        .collect();
    names.dedup();
    assert_eq!(
        names.len(),
        1,
        "expected one arena of this process:\n{json}"
    );
    names.remove(0)
}

#[test]
fn ls_lists_each_slot_of_a_pool_arena_under_its_key() {
    let _serial = serial();
    let pool = pool(3, true);
    let mut taken = pool.take::<f32>(&[4, 4]).expect("take");
    taken.set_dims(&["y", "x"]).expect("dims");
    let json = pixgate_ok(&["ls", "--json"]);
    let name = arena_name(&json, &[]);
    let slots = listed(&json, &name);
    let pid = std::process::id();
    // A slot is the header page and one page of data: 8 KiB apart.
    let keys: Vec<String> = slots.iter().map(|s| member(s, "key")).collect();
    assert_eq!(
        keys,
        [
            format!("\"{name}\""),
            format!("\"{name}@2000\""),
            format!("\"{name}@4000\"")
        ],
        "{json}"
    );
    let holders = own_holders(&name);
    for (k, slot) in slots.iter().enumerate() {
        assert_eq!(member(slot, "offset"), (k * 8192).to_string(), "{slot}");
        assert_eq!(member(slot, "transport"), "\"anonymous\"");
        assert_eq!(member(slot, "size"), "8192");
        assert_eq!(member(slot, "holders"), holders);
        assert_eq!(member(slot, "mapped_by"), format!("[{pid}]"));
        assert_eq!(member(slot, "owner_pid"), pid.to_string());
        assert_eq!(member(slot, "problem"), "null", "{slot}");
    }
    // The taken slot shows its array; the others their first layout, bytes.
    let layouts: Vec<(String, String, String)> = slots
        .iter()
        .map(|s| (member(s, "dtype"), member(s, "shape"), member(s, "dims")))
        .collect();
    let array = ("\"<f4\"".into(), "[4, 4]".into(), "[\"y\", \"x\"]".into());
    let bytes = ("\"|u1\"".into(), "[4096]".into(), "null".into());
    assert_eq!(
        layouts.iter().filter(|l| **l == array).count(),
        1,
        "{layouts:?}"
    );
    assert_eq!(
        layouts.iter().filter(|l| **l == bytes).count(),
        2,
        "{layouts:?}"
    );

    // The table names each slot by its key.
    let table = pixgate_ok(&["ls"]);
    for k in ["", "@2000", "@4000"] {
        let key = format!("{name}{k}");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(key.as_str())),
            "{key} missing:\n{table}"
        );
    }
    drop((taken, pool));
    let json = pixgate_ok(&["ls", "--json"]);
    assert!(listed(&json, &name).is_empty(), "{json}");
    assert_no_segments();
}

#[test]
fn slots_never_made_are_not_listed() {
    let _serial = serial();
    // Not prefilled: the arena has room for 4 slots, and only the taken one exists.
    let pool = pool(4, false);
    let a = pool.take::<u16>(&[10]).expect("take");
    let json = pixgate_ok(&["ls", "--json"]);
    let name = arena_name(&json, &[]);
    let slots = listed(&json, &name);
    assert_eq!(slots.len(), 1, "{json}");
    assert_eq!(member(&slots[0], "key"), format!("\"{name}\""));
    assert_eq!(member(&slots[0], "shape"), "[10]");
    drop((a, pool));
    assert_no_segments();
}

#[test]
fn inspect_finds_a_segment_by_name_key_or_unique_prefix() {
    let _serial = serial();
    let pool = pool(3, true);
    let single = SharedArray::<u8>::zeros_in(Transport::Anonymous, &[7]).expect("array");
    let json = pixgate_ok(&["ls", "--json"]);
    let arena = arena_name(&json, &[single.name()]);
    let segment = |report: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix("segment"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no segment line:\n{report}"))
    };

    // The object's name is its first slot; a key names any slot.
    let report = pixgate_ok(&["inspect", &arena]);
    assert_eq!(segment(&report), arena);
    let key = format!("{arena}@4000");
    let report = pixgate_ok(&["inspect", &key]);
    assert_eq!(segment(&report), key);
    assert!(
        report.contains(&format!("offset           0x4000 (16384) in {arena}\n")),
        "{report}"
    );
    assert!(
        report.contains("  flags          0x7 (C-contiguous, F-contiguous, pool slot)\n"),
        "{report}"
    );
    let held_by = format!("{}:{}", std::process::id(), memfd_fds(&arena)[0]);
    assert!(report.contains(&held_by), "{report}");

    // A prefix that only one key starts with, with or without the slash.
    let name = single.name();
    for prefix in [&name[..name.len() - 3], &name[1..name.len() - 3]] {
        let report = pixgate_ok(&["inspect", prefix]);
        assert_eq!(segment(&report), name, "{prefix}");
        assert!(report.contains("transport        anonymous\n"), "{report}");
    }

    // `name@` starts the keys of the arena's other slots: ambiguous.
    let out = run_pixgate(&["inspect", &format!("{arena}@")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        stderr.contains(&format!(
            "segment {arena}@: prefix matches 2 segments: {arena}@2000, {arena}@4000"
        )),
        "{stderr}"
    );
    // So does this process's pid: both objects' keys start with it.
    let mine = format!("/pxg-{:x}-", std::process::id());
    let out = run_pixgate(&["inspect", &mine]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for candidate in [arena.clone(), key.clone(), name.to_string()] {
        assert!(stderr.contains(&candidate), "{candidate} missing: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");

    drop((single, pool));
    let out = run_pixgate(&["inspect", &key]);
    assert!(
        text(&out.stderr).contains(&format!("segment {key}: no such segment")),
        "{}",
        text(&out.stderr)
    );
    assert_no_segments();
}

#[test]
fn ls_shows_the_state_word_of_an_anonymous_segment() {
    let _serial = serial();
    let seg = Segment::create_anonymous(
        &Layout::c_order(DType::I32, &[2, 3]).expect("layout"),
        &Meta::default(),
    )
    .expect("segment");
    for (state, text) in [(STATE_SHARED, "shared"), (STATE_MOVED, "moved")] {
        seg.set_state(state).expect("set state");
        let table = pixgate_ok(&["ls"]);
        let line = table
            .lines()
            .find(|l| l.starts_with(seg.name()))
            .unwrap_or_else(|| panic!("{} not listed:\n{table}", seg.name()));
        assert!(line.contains(" <i4 "), "{line}");
        assert!(line.trim_end().ends_with(text), "{line}");
    }
    drop(seg);
    assert_no_segments();
}

#[test]
fn ls_shows_a_named_array_lent_to_a_worker_and_the_worker_mapping_it() {
    let _serial = serial();
    let gw = Gateway::builder(&common::spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .transport(Transport::Named)
        .spawn()
        .expect("gateway");
    let ch = gw
        .remote_exec("a = channel.receive()\nchannel.send('holding')\nchannel.receive()\ndel a")
        .expect("remote exec");
    let mut a = SharedArray::<u16>::zeros_in(Transport::Named, &[3, 4, 5]).expect("array");
    ch.send(a.lend().expect("lend")).expect("send");
    assert_eq!(
        ch.receive_timeout(T).expect("answer").as_str(),
        Some("holding")
    );
    let json = pixgate_ok(&["ls", "--json"]);
    let entry = listed(&json, a.name());
    assert_eq!(entry.len(), 1, "{json}");
    assert_eq!(member(&entry[0], "state"), "\"lent\"");
    assert_eq!(member(&entry[0], "transport"), "\"named\"");
    let mapped_by = member(&entry[0], "mapped_by");
    for pid in [std::process::id(), gw.pid()] {
        assert!(
            mapped_by.contains(&pid.to_string()),
            "{pid} not in {mapped_by}"
        );
    }

    ch.send(0).expect("let go");
    common::wait_until(|| !a.is_lent(), "the lend given back");
    let json = pixgate_ok(&["ls", "--json"]);
    assert_eq!(member(&listed(&json, a.name())[0], "state"), "\"owned\"");
    gw.exit(T).expect("exit");
    drop(a);
    assert_no_segments();
}

/// `target/<profile>/examples/anon_holder`, next to the directory of this test binary.
fn holder_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join("anon_holder");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example anon_holder` (or \
         `cargo test --all-targets`)",
        bin.display()
    );
    bin
}

/// A process holding `arrays` anonymous arrays and a pool of `slots` slots (none for
/// 0), once it said it is ready (within [`T`]).
fn holder(arrays: usize, slots: usize) -> (Child, u32) {
    let mut args = vec![arrays.to_string()];
    if slots > 0 {
        args.push(slots.to_string());
    }
    let mut child = Command::new(holder_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start anon_holder");
    let line = common::first_line(&mut child, "anon_holder said nothing");
    let pid = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("anon_holder said {line:?}"));
    (child, pid)
}

/// Kills `child` and reaps it (SIGKILL cannot be ignored, so the wait ends).
fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn ls_finds_the_anonymous_segments_of_other_processes() {
    let _serial = serial();
    let (child, pid) = holder(3, 2);
    let json = pixgate_ok(&["ls", "--json"]);
    let theirs: Vec<&str> = json
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| l.starts_with('{') && member(l, "creator_pid") == pid.to_string())
        .collect();
    // Three arrays and two slots of one arena.
    assert_eq!(theirs.len(), 5, "{json}");
    for entry in &theirs {
        assert_eq!(member(entry, "transport"), "\"anonymous\"");
        assert_eq!(member(entry, "mapped_by"), format!("[{pid}]"));
        assert!(
            member(entry, "holders").starts_with(&format!("[{{\"pid\": {pid}, \"fd\": ")),
            "{entry}"
        );
        assert_eq!(member(entry, "problem"), "null", "{entry}");
    }
    let arrays = theirs
        .iter()
        .filter(|e| member(e, "shape") == "[3, 4, 5]" && member(e, "dtype") == "\"<u2\"")
        .count();
    assert_eq!(arrays, 3, "{json}");
    let slots = theirs
        .iter()
        .filter(|e| member(e, "offset") == "8192")
        .count();
    assert_eq!(slots, 1, "{json}");
    kill(child);
    let json = pixgate_ok(&["ls", "--json"]);
    assert!(
        !json.contains(&format!("\"creator_pid\": {pid},")),
        "segments of a dead process listed:\n{json}"
    );
}

#[test]
fn ls_is_not_broken_by_processes_that_end_while_it_lists() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut ended = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let holders: Vec<(Child, u32)> = (0..4).map(|_| holder(20, 4)).collect();
                // Some die at once, some a moment later: while ls reads their fds,
                // opens them, or maps them.
                std::thread::sleep(Duration::from_millis((ended % 7) as u64));
                for (child, _) in holders {
                    kill(child);
                    ended += 1;
                }
            }
            ended
        })
    };
    let start = Instant::now();
    let (mut listings, mut caught) = (0, 0);
    while listings < 10 || start.elapsed() < Duration::from_secs(3) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "listing too slow"
        );
        let out = run_pixgate(&["ls", "--json"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
        let json = stdout.trim();
        assert!(json.starts_with('[') && json.ends_with(']'), "{json}");
        listings += 1;
        // The holders' arrays: 3 × 4 × 5 u16 of another process.
        let me = format!("\"creator_pid\": {},", std::process::id());
        caught += usize::from(
            json.lines()
                .any(|l| l.contains("\"shape\": [3, 4, 5]") && !l.contains(&me)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let ended = churn.join().expect("churn thread");
    assert!(ended >= 8, "only {ended} holders came and went");
    assert!(
        caught > 0,
        "no listing of {listings} saw a holder's segments"
    );
}

#[test]
fn ls_whose_reader_stops_reading_ends_quietly() {
    let _serial = serial();
    // Far more than a pipe holds, so that ls writes into a pipe nobody reads.
    let (holder, _) = holder(1000, 0);
    for args in [["ls", "--json"], ["ls", ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let mut ls = Command::new(env!("CARGO_BIN_EXE_pixgate"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pixgate ls");
        let mut first = String::new();
        BufReader::new(ls.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("first line");
        // The reader is gone now (`pixgate ls | head -1`).
        let start = Instant::now();
        let status = loop {
            if let Some(status) = ls.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > T {
                let _ = ls.kill();
                panic!("pixgate {args:?} did not end within {T:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut ls.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert!(status.success(), "{args:?}: {status}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    kill(holder);
}
