//! The channel battery on every interpreter the helper supports: the test interpreter
//! (CPython) and PyPy (`pypy3`, or `$PIXGATE_TEST_PYPY`).
//!
//! Plain values only: PyPy runs without numpy here, and the battery checks that such a
//! worker says so in its handshake and refuses an array reference with a typed error.
//! A missing PyPy fails the test under `PIXGATE_TEST_STRICT=1` (set by `make test`,
//! which installs it); elsewhere the test says loudly that PyPy was not run.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, serial};
use num_bigint::BigInt;
use pixgate::{ErrorKind, Gateway, OutputMode, SharedArray, Stream, Value};

const ECHO: &str = "for x in channel:\n    channel.send(x)";

/// The PyPy to test: `$PIXGATE_TEST_PYPY`, else `pypy3` on PATH, if it answers
/// `--version` within 20 s.
fn pypy() -> Option<String> {
    let exe = std::env::var("PIXGATE_TEST_PYPY")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "pypy3".to_string());
    let mut child = Command::new(&exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success().then_some(exe),
            Ok(None) if t.elapsed() < T => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                child.kill().ok();
                child.wait().ok();
                return None;
            }
        }
    }
}

fn gateway_on(python: &str) -> Gateway {
    Gateway::builder(&format!("popen//python={python}"))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .unwrap_or_else(|e| panic!("a gateway on {python}: {e}"))
}

fn ask(gw: &Gateway, source: &str) -> Value {
    let ch = gw.remote_exec(source).expect("remote_exec");
    ch.receive_timeout(T).expect("receive")
}

fn plain_values() -> Vec<Value> {
    vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-1),
        Value::Int(i64::from(i32::MAX) + 1),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::from(BigInt::from(2).pow(200)),
        Value::from(-BigInt::from(2).pow(70)),
        Value::Float(1.5),
        Value::Float(f64::INFINITY),
        Value::Float(-0.0),
        Value::Complex(num_complex::Complex64::new(1.0, -2.5)),
        Value::from(""),
        Value::from("ä€😀 \n\0"),
        Value::bytes(vec![0u8, 255, 10]),
        // Larger than the worker's chunked reads: a payload read straight into one
        // buffer (os.readv on CPython; PyPy has no readv).
        Value::bytes(
            (0..700_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        Value::from("x".repeat(300_000)),
        Value::List(vec![]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Dict(vec![(Value::from("k"), Value::List(vec![Value::Int(1)]))]),
        Value::Set(vec![Value::Int(3)]),
        Value::FrozenSet(vec![Value::from("x")]),
        Value::List(vec![Value::Tuple(vec![Value::Dict(vec![(
            Value::Int(1),
            Value::bytes(b"deep".to_vec()),
        )])])]),
    ]
}

/// Runs the battery on one interpreter; returns what the worker calls itself.
fn battery(python: &str) -> String {
    let gw = gateway_on(python);
    let info = gw.info().clone();
    let implementation = ask(
        &gw,
        "import sys\nchannel.send((sys.implementation.name, sys.version.split()[0]))",
    );
    let implementation = implementation.as_seq().unwrap();
    let name = implementation[0].as_str().unwrap().to_string();
    assert_eq!(
        implementation[1].as_str(),
        Some(info.python_version.as_str())
    );
    assert_eq!(info.pid, gw.pid());

    // Every plain value, there and back.
    let ch = gw.remote_exec(ECHO).unwrap();
    for v in plain_values() {
        ch.send(v.clone()).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap(), v, "{name}: echo");
    }
    ch.send(f64::NAN).unwrap();
    assert!(ch.receive_timeout(T).unwrap().as_f64().unwrap().is_nan());
    // Values made in Python.
    let made = ask(
        &gw,
        "channel.send([None, True, 2**100, -2**40, 1.5, 2j, 'ä', b'\\x00', (1, [2]), {'k': {1}}, frozenset(['a'])])",
    );
    assert_eq!(made.as_seq().unwrap().len(), 11, "{name}: {made}");
    ch.close().unwrap();
    ch.wait_close(Some(T)).unwrap();

    // A remote exception: type, message, traceback with the remote source line.
    let ch = gw
        .remote_exec("def f(x):\n    return 1 / x\nchannel.send('before')\nf(0)")
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("before"));
    let err = ch.receive_timeout(T).unwrap_err();
    let r = err.remote().unwrap_or_else(|| panic!("{name}: {err:?}"));
    assert_eq!(r.type_name, "ZeroDivisionError", "{name}");
    assert!(
        r.traceback.contains("return 1 / x"),
        "{name}: {}",
        r.traceback
    );
    let err = gw
        .remote_exec("def (:\n")
        .unwrap()
        .receive_timeout(T)
        .unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.type_name.as_str()),
        Some("SyntaxError")
    );

    // Output: prints attributed to their channel, fd-level lines to none.
    let ch = gw
        .remote_exec("import os, sys\nprint('printed on', sys.implementation.name)\nprint('to stderr', file=sys.stderr)\nos.write(1, b'fd level\\n')\nchannel.send(1)")
        .unwrap();
    ch.receive_timeout(T).unwrap();
    ch.wait_close(Some(T)).unwrap();
    let printing = ch.id();

    // Cancel: seen at the next channel operation, and between sends of a busy loop.
    let ch = gw
        .remote_exec("import pixgate\nchannel.send('started')\ntry:\n    while True:\n        channel.receive(timeout=10)\nexcept pixgate.Cancelled:\n    channel.send('cancelled')")
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("started"));
    ch.cancel().unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("cancelled"));
    ch.wait_close(Some(T)).unwrap();
    let ch = gw
        .remote_exec("i = 0\nwhile True:\n    channel.send(i)\n    i += 1")
        .unwrap();
    ch.receive_timeout(T).unwrap();
    ch.cancel().unwrap();
    let end = loop {
        match ch.receive_timeout(T) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(end.kind(), ErrorKind::Cancelled { .. }),
        "{name}: {end:?}"
    );

    // Close ends the remote iteration; close with an error raises there.
    let ch = gw
        .remote_exec("n = 0\nfor x in channel:\n    n += x\nchannel.send(n)")
        .unwrap();
    for i in 1..=4 {
        ch.send(i).unwrap();
    }
    ch.close().unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(10));
    let ch = gw
        .remote_exec("import pixgate\ntry:\n    channel.receive(timeout=10)\nexcept pixgate.RemoteError as e:\n    channel.send(str(e))")
        .unwrap();
    ch.close_with_error("host gave up").unwrap();
    assert_eq!(
        ch.receive_timeout(T).unwrap().as_str(),
        Some("host gave up")
    );
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ChannelClosed { .. }),
        "{name}: {err:?}"
    );

    // Many channels at once, each on its own worker thread.
    let gw = Arc::new(gw);
    let threads: Vec<_> = (0..16i64)
        .map(|i| {
            let gw = Arc::clone(&gw);
            std::thread::spawn(move || {
                let ch = gw.remote_exec(ECHO).unwrap();
                for k in 0..(20 + i * 3) {
                    ch.send(i * 1000 + k).unwrap();
                    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(i * 1000 + k));
                }
                ch.close().unwrap();
                ch.wait_close(Some(T)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let gw = Arc::into_inner(gw).unwrap();
    let exit = gw.exit(T).unwrap();
    assert_eq!(exit.code, Some(0), "{name}: {exit:?}");
    let lines = gw.take_output();
    let find = |text: &str| {
        lines
            .iter()
            .find(|l| l.text == text)
            .unwrap_or_else(|| panic!("{name}: {text:?} not in {lines:?}"))
    };
    let l = find(&format!("printed on {name}"));
    assert_eq!((l.channel, l.stream), (Some(printing), Stream::Stdout));
    let l = find("to stderr");
    assert_eq!((l.channel, l.stream), (Some(printing), Stream::Stderr));
    assert_eq!(find("fd level").channel, None);
    name
}

#[test]
fn the_channel_battery_passes_on_the_test_interpreter() {
    let python = common::python();
    let name = battery(&python);
    eprintln!("interpreters: channel battery passed on {python} ({name})");
}

#[test]
fn the_channel_battery_passes_on_pypy() {
    let Some(pypy) = pypy() else {
        assert!(
            std::env::var_os("PIXGATE_TEST_STRICT").is_none(),
            "pypy3 not found (set PIXGATE_TEST_PYPY, or run `make pypy`)"
        );
        eprintln!(
            "interpreters: NOT RUN on PyPy: pypy3 not found (set PIXGATE_TEST_PYPY, or run `make pypy`)"
        );
        return;
    };
    // Twice: the first start may compile the helper into the code cache, the second
    // runs what the first compiled.
    for _ in 0..2 {
        let name = battery(&pypy);
        assert_eq!(name, "pypy", "{pypy} is not PyPy");
    }
    let gw = gateway_on(&pypy);
    eprintln!(
        "interpreters: channel battery passed on {pypy} ({}, Python {}, numpy {:?})",
        gw.info().executable,
        gw.info().python_version,
        gw.info().numpy_version
    );
    gw.exit(T).unwrap();
}

#[test]
fn a_worker_without_numpy_refuses_arrays_with_a_typed_error() {
    let _serial = serial();
    let Some(pypy) = pypy() else {
        assert!(
            std::env::var_os("PIXGATE_TEST_STRICT").is_none(),
            "pypy3 not found (set PIXGATE_TEST_PYPY, or run `make pypy`)"
        );
        eprintln!("interpreters: NOT RUN on PyPy: pypy3 not found");
        return;
    };
    let gw = gateway_on(&pypy);
    let numpy = ask(
        &gw,
        "import importlib.util\nchannel.send(importlib.util.find_spec('numpy') is not None)",
    );
    if numpy.as_bool() == Some(true) {
        // This PyPy has numpy: nothing to refuse (the array tests cover it).
        eprintln!("interpreters: {pypy} has numpy; the refusal of arrays was not run");
        gw.exit(T).unwrap();
        return;
    }
    assert_eq!(
        gw.info().numpy_version,
        None,
        "the handshake reports numpy absent"
    );
    let mut a = SharedArray::<u16>::zeros(&[3, 4]).unwrap();
    a.view_mut().unwrap().fill(7);
    let ch = gw
        .remote_exec("try:\n    channel.receive(10)\nexcept Exception as e:\n    channel.send((type(e).__name__, str(e)))\n    raise")
        .unwrap();
    ch.send(a.share().unwrap()).unwrap();
    let reply = ch.receive_timeout(T).unwrap();
    let reply = reply.as_seq().unwrap();
    assert_eq!(reply[0].as_str(), Some("LoadError"), "{reply:?}");
    let message = reply[1].as_str().unwrap();
    assert!(
        message.contains(a.name()) && message.contains("numpy"),
        "{message}"
    );
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.type_name.as_str()),
        Some("LoadError")
    );
    // The host's array is readable meanwhile, the worker carries on, and once it is
    // gone the array is the host's alone again.
    assert_eq!(a.view().unwrap().sum(), 84);
    assert_eq!(ask(&gw, "channel.send('alive')").as_str(), Some("alive"));
    gw.exit(T).unwrap();
    let t = Instant::now();
    while a.peer_shares() > 0 && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    a.view_mut().unwrap().fill(1);
    drop(a);
    assert_no_segments();
}
