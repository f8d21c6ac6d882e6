//! The Rust codec against the real execnet releases of both format versions: execnet
//! 2.x (format 2, in `.venv`), execnet 1.9 on Python 3 (format 1, `.venv-execnet19`) and
//! execnet 1.9 on Python 2.7 (format 1, with Python 2's `str`, `unicode` and `long`);
//! `make execnet-peers` installs them.
//!
//! For each peer, the values of `tests/fixtures/execnet_table.py` dumped by execnet load
//! here to the values written out below, under each of the four [`LoadOptions`]; those
//! expectations are checked against execnet's own `loads` (its `repr` against the
//! value's Python-style display) where execnet defines them; and pixgate's output in the
//! peer's format version loads in execnet to the peer's own value.
//!
//! A peer that cannot be found is reported on stderr (past the test harness's output
//! capture, so that a run never skips one silently); under `PIXGATE_TEST_STRICT`
//! (`make test`) it fails the test instead.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use num_bigint::BigInt;
use pixgate::{FormatVersion, LoadOptions, Value, dumps_with, loads_with};

const TABLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/execnet_table.py"
);

/// One interpreter with one execnet.
struct Peer {
    label: &'static str,
    python: PathBuf,
    pythonpath: Option<PathBuf>,
    version: FormatVersion,
    python2: bool,
}

impl Peer {
    fn run(&self, mode: &str, input: &str) -> String {
        let mut cmd = Command::new(&self.python);
        cmd.args([TABLE, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        let mut child = cmd.spawn().expect("peer starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("peer runs");
        writer.join().expect("writer").expect("write to peer");
        assert!(
            out.status.success(),
            "{}: {mode} failed: {}",
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `(name, bytes)` of execnet's dumps of the table.
    fn dumped(&self) -> Vec<(String, Vec<u8>)> {
        self.run("dump", "")
            .lines()
            .map(|l| {
                let (name, data) = l.split_once(' ').expect("name hex");
                (name.to_string(), hex(data))
            })
            .collect()
    }
}

fn strict() -> bool {
    std::env::var_os("PIXGATE_TEST_STRICT").is_some()
}

/// A peer that is not there: reported, and under strict mode a failure.
fn missing(label: &str, why: &str) {
    let text = format!("execnet cross-check with {label} not run: {why} (make execnet-peers)");
    assert!(!strict(), "{text}");
    // Straight to the process's stderr: the harness captures only `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Finds a peer and checks that it runs the execnet release it should.
fn peer(
    label: &'static str,
    python: Option<PathBuf>,
    pythonpath: Option<PathBuf>,
    version: FormatVersion,
    python2: bool,
) -> Option<Peer> {
    let Some(python) = python else {
        missing(label, "no interpreter found");
        return None;
    };
    let p = Peer {
        label,
        python,
        pythonpath,
        version,
        python2,
    };
    let mut cmd = Command::new(&p.python);
    cmd.args([TABLE, "info"]);
    if let Some(path) = &p.pythonpath {
        cmd.env("PYTHONPATH", path);
    }
    let info = match cmd.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            let why = format!(
                "{} cannot import execnet: {}",
                p.python.display(),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            missing(label, &why);
            return None;
        }
        Err(e) => {
            missing(label, &format!("{}: {e}", p.python.display()));
            return None;
        }
    };
    let (release, byte) = info.split_once(' ').expect("release and version byte");
    let want_release = match version {
        FormatVersion::V1 => "1.9.",
        _ => "2.",
    };
    assert!(
        release.starts_with(want_release),
        "{label}: {} runs execnet {release}",
        p.python.display()
    );
    assert_eq!(hex(byte), [version.byte()], "{label}: version byte");
    eprintln!(
        "execnet cross-check with {label}: execnet {release} at {}",
        p.python.display()
    );
    Some(p)
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

fn from_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn execnet2() -> Option<Peer> {
    let python = Some(PathBuf::from(common::python()));
    peer(
        "execnet 2.x on Python 3",
        python,
        None,
        FormatVersion::V2,
        false,
    )
}

fn execnet19() -> Option<Peer> {
    let python = from_env("PIXGATE_EXECNET19_PYTHON")
        .or_else(|| Some(root().join(".venv-execnet19/bin/python")))
        .and_then(existing);
    peer(
        "execnet 1.9 on Python 3",
        python,
        None,
        FormatVersion::V1,
        false,
    )
}

/// A Python 2.7: `$PIXGATE_PYTHON2`, else pyenv's 2.7 builds, else `python2.7` on PATH.
fn python2() -> Option<PathBuf> {
    if let Some(p) = from_env("PIXGATE_PYTHON2") {
        return existing(p);
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("2.7"))
                })
                .map(|p| p.join("bin/python2.7"))
                .collect();
            found.sort();
            candidates.extend(found);
        }
    }
    candidates.push(PathBuf::from("python2.7"));
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import sys; sys.exit(sys.version_info[0] != 2)"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn execnet19_python2() -> Option<Peer> {
    let path = from_env("PIXGATE_PYTHON2_PATH").unwrap_or_else(|| root().join(".py27-execnet19"));
    let python = python2();
    if python.is_none() {
        missing("execnet 1.9 on Python 2.7", "no Python 2.7 found");
        return None;
    }
    peer(
        "execnet 1.9 on Python 2.7",
        python,
        Some(path),
        FormatVersion::V1,
        true,
    )
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

const OPTIONS: [LoadOptions; 4] = [
    LoadOptions::new(false, false),
    LoadOptions::new(false, true),
    LoadOptions::new(true, false),
    LoadOptions::new(true, true),
];

/// How a string of the table travels: as Python 3 writes text (`N`) and bytes (`A`),
/// or as Python 2 writes unicode (`S`) and str (`M`).
#[derive(Clone, Copy)]
struct Loads {
    options: LoadOptions,
    python2: bool,
}

impl Loads {
    /// Text of the table (`u""`).
    fn text(self, s: &str) -> Value {
        if !self.python2 && self.options.py3str_as_py2str {
            Value::bytes(s.as_bytes().to_vec())
        } else {
            Value::from(s)
        }
    }

    /// Bytes of the table (`b""`; a `str` on Python 2).
    fn bytes(self, b: &[u8]) -> Value {
        if self.python2 && self.options.py2str_as_py3str {
            Value::Str(b.iter().map(|&c| char::from(c)).collect())
        } else {
            Value::bytes(b.to_vec())
        }
    }
}

/// The value of table entry `name` as it loads here, written out by hand.
fn expected(name: &str, l: Loads) -> Value {
    let big = |e: u32| Value::from(BigInt::from(2).pow(e));
    match name {
        "none" => Value::None,
        "true" => true.into(),
        "false" => false.into(),
        "int" => 5.into(),
        "int_min" => i32::MIN.into(),
        "int_max" => i32::MAX.into(),
        "int_big" => (1i64 << 31).into(),
        "int_huge" => big(100),
        "float" => 1.5.into(),
        "complex" => num_complex::Complex64::new(1.0, -2.5).into(),
        "text" => l.text("été"),
        "text_empty" => l.text(""),
        "bytes" => l.bytes(b"\x00\xe9"),
        "list" => Value::List(vec![1.into(), l.text("a"), l.bytes(b"b"), Value::None]),
        "tuple" => Value::Tuple(vec![
            1.into(),
            Value::Tuple(vec![l.text("x")]),
            l.bytes(b"y"),
        ]),
        // Python 2 and 3 order this dict's keys alike (insertion order, or the hash
        // order of u"k" and 3, which Python 2.7 gives the same way).
        "dict" => Value::Dict(vec![
            (l.text("k"), Value::List(vec![l.bytes(b"v"), 2.5.into()])),
            (3.into(), Value::Tuple(vec![l.text("t")])),
        ]),
        "set" => Value::Set(vec![3.into()]),
        "frozenset" => Value::FrozenSet(vec![l.text("f")]),
        // Python 2's own types.
        "py2_str" => l.bytes(b"ab\xe9"),
        "py2_long" => 5.into(),
        "py2_long_negative" => (-5).into(),
        "py2_long_big" => big(64),
        "py2_int_big" => (1i64 << 40).into(),
        "py2_mixed" => Value::Dict(vec![(
            l.bytes(b"k"),
            Value::List(vec![1.into(), l.bytes(b"v"), Value::from("w")]),
        )]),
        other => panic!("table entry {other} has no expected value here"),
    }
}

/// Execnet's bytes load here as written out, under every option.
fn check_loads(peer: &Peer) -> Vec<(String, Vec<u8>)> {
    let dumped = peer.dumped();
    assert!(
        dumped.len() >= 18,
        "{}: {} entries",
        peer.label,
        dumped.len()
    );
    for (name, bytes) in &dumped {
        assert_eq!(bytes[0], peer.version.byte(), "{}: {name}", peer.label);
        for options in OPTIONS {
            let want = expected(
                name,
                Loads {
                    options,
                    python2: peer.python2,
                },
            );
            let got = loads_with(bytes, options)
                .unwrap_or_else(|e| panic!("{}: {name} {options:?}: {e}", peer.label));
            assert_eq!(got, want, "{}: {name} {options:?}", peer.label);
        }
        // A Python 3 execnet writes exactly what pixgate writes for the same value.
        if !peer.python2 {
            let value = loads_with(bytes, LoadOptions::LOADS).expect("decodes");
            let ours = dumps_with(&value, peer.version).expect("encodes");
            assert_eq!(to_hex(&ours), to_hex(bytes), "{}: {name}", peer.label);
        }
    }
    dumped
}

/// The expectations agree with execnet's own `loads` under each option (compared as
/// Python reprs). execnet 1.9 on Python 3 ignores `py3str_as_py2str` (its loader tests
/// for Python 2 first); there it must give the same as without it.
fn check_against_execnets_loads(peer: &Peer, dumped: &[(String, Vec<u8>)]) {
    let input: String = dumped.iter().map(|(_, b)| to_hex(b) + "\n").collect();
    let out = peer.run("options", &input);
    for ((name, _), line) in dumped.iter().zip(out.lines()) {
        let theirs: Vec<&str> = line.split(" | ").collect();
        assert_eq!(theirs.len(), 4, "{line}");
        for (options, repr) in OPTIONS.iter().zip(&theirs) {
            let effective = match peer.version {
                FormatVersion::V1 => LoadOptions::new(options.py2str_as_py3str, false),
                _ => *options,
            };
            let want = expected(
                name,
                Loads {
                    options: effective,
                    python2: false,
                },
            );
            assert_eq!(
                *repr,
                want.to_string(),
                "{}: {name} {options:?}",
                peer.label
            );
        }
    }
    assert_eq!(out.lines().count(), dumped.len());
}

/// pixgate's output in the peer's format version loads in execnet to the table's value.
fn check_execnet_loads_ours(peer: &Peer, dumped: &[(String, Vec<u8>)]) {
    let mut input = String::new();
    for (name, _) in dumped.iter().filter(|(n, _)| !n.starts_with("py2_")) {
        // What the entry means as Python 3 values: text is str, bytes are bytes.
        let value = expected(
            name,
            Loads {
                options: LoadOptions::LOADS,
                python2: false,
            },
        );
        let bytes = dumps_with(&value, peer.version).expect("encodes");
        input += &format!("{name} {}\n", to_hex(&bytes));
    }
    let out = peer.run("load", &input);
    let results: Vec<&str> = out.lines().collect();
    assert_eq!(
        results.len(),
        input.lines().count(),
        "{}: {out}",
        peer.label
    );
    for line in results {
        assert!(line.ends_with(" ok"), "{}: {line}", peer.label);
    }
}

#[test]
fn execnet_2_bytes_load_under_every_option_and_ours_load_in_execnet_2() {
    let Some(peer) = execnet2() else { return };
    let dumped = check_loads(&peer);
    check_against_execnets_loads(&peer, &dumped);
    check_execnet_loads_ours(&peer, &dumped);
}

#[test]
fn execnet_1_9_bytes_load_under_every_option_and_our_version_1_loads_in_execnet_1_9() {
    let Some(peer) = execnet19() else { return };
    let dumped = check_loads(&peer);
    check_against_execnets_loads(&peer, &dumped);
    check_execnet_loads_ours(&peer, &dumped);
}

#[test]
fn python_2_execnet_bytes_load_under_every_option_and_ours_load_on_python_2() {
    let Some(peer) = execnet19_python2() else {
        return;
    };
    let dumped = check_loads(&peer);
    let kinds: Vec<u8> = dumped.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    for op in [b'M', b'S', b'G', b'I'] {
        assert!(
            kinds.contains(&op),
            "Python 2's execnet wrote no {}",
            op as char
        );
    }
    check_execnet_loads_ours(&peer, &dumped);
}
