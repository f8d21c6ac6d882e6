//! Workers on old interpreters: CPython 2.7 and Jython 2.7 run the legacy helper
//! (python-helper/pixgate_legacy.py), which the loader installs on them.
//!
//! Each test prints the interpreters it ran with. Jython missing is a failure under
//! `PIXGATE_TEST_STRICT=1` (`make test` installs it); Python 2.7 missing is reported as
//! "python2.7 not present, not run". Jython starts in seconds, so the tests share one
//! gateway across many checks and wait generously for the handshake.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_no_segments, serial};
use num_bigint::BigInt;
use num_complex::Complex64;
use pixgate::segment::Transport;
use pixgate::{Element, ErrorKind, ExecOptions, Gateway, OutputMode, SharedArray, Stream, Value};

/// Every wait on a legacy worker; Jython is slow to start and to warm up.
const T: Duration = Duration::from_secs(90);

/// Where Python 2.7 is looked for when `python2.7` on PATH does not run.
const PY27_FALLBACK: &str = "/root/.pyenv/versions/2.7.18/bin/python2.7";

/// A line on the test's stderr that the harness does not capture, so that which
/// interpreters ran (and which did not) shows in every run.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn strict() -> bool {
    std::env::var("PIXGATE_TEST_STRICT").is_ok_and(|v| v == "1")
}

fn runs(cmd: &str) -> bool {
    let mut child = match Command::new(cmd)
        .args(["-c", "pass"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if t.elapsed() < T => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// The Python 2.7 interpreter: `python2.7` from PATH when it runs, else the fallback.
fn python27() -> Option<String> {
    if runs("python2.7") {
        return Some("python2.7".into());
    }
    if Path::new(PY27_FALLBACK).exists() && runs(PY27_FALLBACK) {
        return Some(PY27_FALLBACK.into());
    }
    say("python2.7 not present, not run");
    None
}

/// The Jython interpreter (`jython` on PATH); missing is a failure under strict mode.
fn jython() -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("jython").is_file()))
        .unwrap_or(false);
    if found {
        return Some("jython".into());
    }
    assert!(
        !strict(),
        "jython not present (PIXGATE_TEST_STRICT=1; `make jython` installs it)"
    );
    say("jython not present, not run");
    None
}

fn start(python: &str) -> Gateway {
    let gw = Gateway::builder(&format!("popen//python={python}"))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    say(&format!(
        "ran with {python}: {} ({}, pid {})",
        gw.info().interpreter(),
        gw.info().executable,
        gw.pid()
    ));
    gw
}

fn exec(gw: &Gateway, src: &str) -> pixgate::Channel {
    gw.remote_exec(src).expect("remote_exec")
}

fn recv(ch: &pixgate::Channel) -> Value {
    ch.receive_timeout(T).expect("receive")
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn tuple(items: Vec<Value>) -> Value {
    Value::Tuple(items)
}

// ---------------------------------------------------------------------------------------
// Plain values

/// Host → worker: the type the worker sees; worker → host: the value it sends back.
/// Python 2 reads `str` from the host as `unicode` and `bytes` as `str`, and sends its
/// `str` as execnet 1.9 does (PY2STRING), which the host reads as latin-1 text.
fn values_cross_both_ways(gw: &Gateway) {
    let big = BigInt::from(2).pow(100);
    let cases: Vec<(Value, &str, Value)> = vec![
        (Value::None, "NoneType", Value::None),
        (Value::Bool(true), "bool", Value::Bool(true)),
        (Value::Bool(false), "bool", Value::Bool(false)),
        (Value::Int(0), "int", Value::Int(0)),
        (
            Value::Int(-2_147_483_648),
            "int",
            Value::Int(-2_147_483_648),
        ),
        (Value::Int(1 << 40), "int|long", Value::Int(1 << 40)),
        (Value::Int(-(1 << 40)), "int|long", Value::Int(-(1 << 40))),
        (Value::from(big.clone()), "long", Value::from(big.clone())),
        (Value::from(-big.clone()), "long", Value::from(-big.clone())),
        (Value::Float(1.5), "float", Value::Float(1.5)),
        (
            Value::Float(f64::INFINITY),
            "float",
            Value::Float(f64::INFINITY),
        ),
        (
            Value::Complex(Complex64::new(2.0, -3.0)),
            "complex",
            Value::Complex(Complex64::new(2.0, -3.0)),
        ),
        (s(""), "unicode", s("")),
        (s("é€ 😀 \u{0}"), "unicode", s("é€ 😀 \u{0}")),
        (Value::bytes(&b"\x00\xffab"[..]), "str", s("\u{0}\u{ff}ab")),
        (
            Value::List(vec![Value::Int(1), s("a"), Value::List(vec![])]),
            "list",
            Value::List(vec![Value::Int(1), s("a"), Value::List(vec![])]),
        ),
        (
            tuple(vec![Value::Int(1), tuple(vec![Value::None])]),
            "tuple",
            tuple(vec![Value::Int(1), tuple(vec![Value::None])]),
        ),
        (
            Value::dict([(s("k"), Value::List(vec![Value::Float(0.5)]))]),
            "dict",
            Value::dict([(s("k"), Value::List(vec![Value::Float(0.5)]))]),
        ),
        (
            Value::Set(vec![Value::Int(3)]),
            "set",
            Value::Set(vec![Value::Int(3)]),
        ),
        (
            Value::FrozenSet(vec![s("f")]),
            "frozenset",
            Value::FrozenSet(vec![s("f")]),
        ),
    ];
    let ch = exec(
        gw,
        "for x in channel:\n    channel.send((type(x).__name__, x))",
    );
    for (sent, type_name, back) in &cases {
        ch.send_value(sent).unwrap();
        let reply = recv(&ch).into_items().expect("a tuple");
        let got_type = reply[0].as_str().unwrap();
        assert!(
            type_name.split('|').any(|t| t == got_type),
            "{sent:?}: worker saw {got_type}, expected {type_name}"
        );
        assert_eq!(&reply[1], back, "{sent:?} came back as {:?}", reply[1]);
    }
    ch.close().unwrap();
    ch.wait_close(Some(T)).unwrap();

    // Worker → host, from values Python 2 makes itself.
    let ch = exec(
        gw,
        r#"
channel.send([None, True, False, 0, -1, 2**31 - 1, 2**31, -2**31 - 1, 2**64, 10**50,
              -10**50, long(5), 1.5, float("-inf"), 2 - 3j, u"\xe9\u20ac", "abc",
              bytearray(b"\x00\xff"), buffer(b"xy"), (1,), (), {u"a": 1}, {"b": (2,)},
              set([1]), frozenset([u"z"]), [[[]]]])
"#,
    );
    let got = recv(&ch).into_items().expect("a list");
    let want = vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-1),
        Value::Int(i32::MAX as i64),
        Value::Int(1 << 31),
        Value::Int(-(1 << 31) - 1),
        Value::from(BigInt::from(2).pow(64)),
        Value::from(BigInt::from(10).pow(50)),
        Value::from(-BigInt::from(10).pow(50)),
        Value::Int(5),
        Value::Float(1.5),
        Value::Float(f64::NEG_INFINITY),
        Value::Complex(Complex64::new(2.0, -3.0)),
        s("é€"),
        s("abc"),
        Value::bytes(&b"\x00\xff"[..]),
        Value::bytes(&b"xy"[..]),
        tuple(vec![Value::Int(1)]),
        tuple(vec![]),
        Value::dict([(s("a"), Value::Int(1))]),
        Value::dict([(s("b"), tuple(vec![Value::Int(2)]))]),
        Value::Set(vec![Value::Int(1)]),
        Value::FrozenSet(vec![s("z")]),
        Value::List(vec![Value::List(vec![Value::List(vec![])])]),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    ch.wait_close(Some(T)).unwrap();

    // Deep nesting: 512 levels pass, 513 are refused by the worker's decoder.
    let mut deep = Value::List(vec![]);
    for _ in 1..512 {
        deep = Value::List(vec![deep]);
    }
    let ch = exec(
        gw,
        "x = channel.receive()\nn = 0\nwhile x:\n    x = x[0]\n    n += 1\nchannel.send(n)",
    );
    ch.send_value(&deep).unwrap();
    assert_eq!(recv(&ch), Value::Int(511));
    ch.wait_close(Some(T)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Errors, output, cancel, channels

fn wait_output(gw: &Gateway, seen: &mut Vec<pixgate::OutputLine>, want: &str) {
    let t = Instant::now();
    while !seen.iter().any(|l| l.text == want) {
        assert!(t.elapsed() < T, "no output line {want:?} in {seen:?}");
        seen.extend(gw.take_output());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn errors_output_cancel_and_channels(gw: &Gateway, fd_level: &str) {
    // A remote error: type, message, traceback naming the line.
    let ch = exec(gw, "def f():\n    return 1 // 0\nf()");
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.type_name, "ZeroDivisionError");
    assert!(remote.message.contains("by zero"), "{remote:?}");
    assert!(remote.traceback.contains("return 1 // 0"), "{remote:?}");
    assert!(remote.traceback.contains("line 2"), "{remote:?}");

    // A syntax error is a remote error too.
    let ch = exec(gw, "def (:\n");
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(err.remote().unwrap().type_name, "SyntaxError", "{err:?}");

    // Output: print and sys.stderr go to the channel, fd-level output has none.
    let _ = gw.take_output();
    let ch = exec(
        gw,
        &format!(
            "import sys\nprint(\"hello \" + u\"\\xe9\")\nsys.stderr.write(\"warn\\n\")\n\
             sys.stdout.write(\"part\")\nchannel.send(1)\n{fd_level}\nchannel.send(2)"
        ),
    );
    assert_eq!(recv(&ch), Value::Int(1));
    let mut lines = gw.take_output();
    let find =
        |lines: &[pixgate::OutputLine], text: &str| lines.iter().find(|l| l.text == text).cloned();
    let hello = find(&lines, "hello é").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(
        (hello.channel, hello.stream),
        (Some(ch.id()), Stream::Stdout)
    );
    let warn = find(&lines, "warn").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((warn.channel, warn.stream), (Some(ch.id()), Stream::Stderr));
    let part = find(&lines, "part").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(part.channel, Some(ch.id()), "flushed before the send");
    assert_eq!(recv(&ch), Value::Int(2));
    wait_output(gw, &mut lines, "fd level");
    assert_eq!(find(&lines, "fd level").unwrap().channel, None);

    // Cancel: once caught, once uncaught.
    let ch = exec(
        gw,
        "import pixgate\ntry:\n    channel.receive()\nexcept pixgate.Cancelled:\n    \
         channel.send(u'caught')\nchannel.receive()",
    );
    std::thread::sleep(Duration::from_millis(100));
    ch.cancel().unwrap();
    assert_eq!(recv(&ch), s("caught"));
    ch.cancel().unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Cancelled { .. }), "{err:?}");

    // The host closes with an error; the worker sees a RemoteError.
    let ch = exec(
        gw,
        "import pixgate\ntry:\n    channel.receive()\nexcept pixgate.RemoteError as e:\n    \
         channel.send(u'got ' + unicode(e))",
    );
    ch.close_with_error("stop it").unwrap();
    assert_eq!(recv(&ch), s("got stop it"));

    // Half-close: the worker still sends after the host closed; receive timeouts.
    let ch = exec(
        gw,
        "import pixgate\ntry:\n    channel.receive(0.2)\nexcept pixgate.TimeoutError:\n    \
         channel.send(u'timeout')\ntotal = 0\nfor x in channel:\n    total += x\n\
         channel.send(total)\nchannel.send(channel.isclosed())",
    );
    assert_eq!(recv(&ch), s("timeout"));
    for i in 1..=4 {
        ch.send(Value::Int(i)).unwrap();
    }
    ch.close().unwrap();
    assert_eq!(recv(&ch), Value::Int(10));
    assert_eq!(recv(&ch), Value::Bool(true));

    // The main thread, on request.
    let ch = gw
        .remote_exec_with(
            "import threading\nchannel.send(threading.current_thread().name)",
            ExecOptions::default().main_thread(),
        )
        .unwrap();
    assert_eq!(recv(&ch), s("MainThread"));
    let ch = exec(
        gw,
        "import threading\nchannel.send(threading.current_thread().name)",
    );
    assert_eq!(recv(&ch), s(&format!("pixgate-exec-{}", ch.id())));

    // Many channels at once, each on its own thread.
    let chans: Vec<_> = (0..24)
        .map(|_| exec(gw, "x = channel.receive()\nchannel.send(x * 2)"))
        .collect();
    for (i, ch) in chans.iter().enumerate().rev() {
        ch.send(Value::Int(i as i64)).unwrap();
    }
    for (i, ch) in chans.iter().enumerate() {
        assert_eq!(recv(ch), Value::Int(2 * i as i64));
        ch.wait_close(Some(T)).unwrap();
    }
}

fn exit_kill_and_sigterm(python: &str) {
    // With dont_write_bytecode: -B reaches the interpreter, the cache variable is gone.
    let gw = Gateway::builder(&format!("popen//python={python}//dont_write_bytecode"))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let ch = exec(
        &gw,
        "import os, sys\nchannel.send((sys.dont_write_bytecode, \
         os.environ.get('PIXGATE_NO_CODE_CACHE'), os.environ.get('PIXGATE_BOOTSTRAP')))",
    );
    assert_eq!(
        recv(&ch),
        tuple(vec![Value::Bool(true), Value::None, Value::None])
    );
    let pid = gw.pid();
    let exit = gw.exit(T).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(!common::process_alive(pid));

    let gw = start(python);
    let ch = exec(&gw, "channel.receive()");
    let exit = gw.kill().unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::GatewayClosed { .. } | ErrorKind::WorkerDied { .. }
        ),
        "{err:?}"
    );

    let gw = start(python);
    // SIGTERM, as the parent-death signal delivers it: cleanup, then exit code 143.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ch = gw.remote_exec("channel.send(1)");
    if let Ok(ch) = ch {
        let _ = ch.receive_timeout(T);
    }
    let t = Instant::now();
    while gw.is_alive() && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    let exit = gw.exit(T).unwrap();
    assert_eq!(exit.code, Some(143), "{exit:?}");

    // Delivered to a thread other than the main one, where no handler runs: its
    // wake-up byte gets the main thread to run it.
    #[cfg(target_os = "linux")]
    {
        let gw = start(python);
        let ch = exec(&gw, "import time\nchannel.send(1)\ntime.sleep(60)");
        assert_eq!(recv(&ch), Value::Int(1));
        common::sigterm_another_thread(gw.pid()).expect("a thread besides the main one");
        common::wait_until(|| !gw.is_alive(), "the worker to end on SIGTERM");
        let exit = gw.exit(T).unwrap();
        assert_eq!(exit.code, Some(143), "{exit:?}");
    }
}

#[test]
fn python27_values_cross_both_ways() {
    let Some(py) = python27() else { return };
    let gw = start(&py);
    assert_eq!(gw.info().implementation, "cpython");
    assert!(gw.info().python_version.starts_with("2.7."));
    assert_eq!(gw.info().numpy_version, None);
    values_cross_both_ways(&gw);
    gw.exit(T).unwrap();
}

#[test]
fn python27_errors_output_cancel_and_many_channels() {
    let Some(py) = python27() else { return };
    let gw = start(&py);
    errors_output_cancel_and_channels(&gw, "import os\nos.write(1, b'fd level\\n')");
    gw.exit(T).unwrap();
}

#[test]
fn python27_exits_is_killed_and_ends_on_sigterm() {
    let Some(py) = python27() else { return };
    exit_kill_and_sigterm(&py);
}

#[test]
fn jython_values_cross_both_ways() {
    let Some(jy) = jython() else { return };
    let gw = start(&jy);
    assert_eq!(gw.info().implementation, "jython");
    assert!(gw.info().interpreter().starts_with("jython 2.7."));
    values_cross_both_ways(&gw);
    gw.exit(T).unwrap();
}

#[test]
fn jython_errors_output_cancel_and_many_channels() {
    let Some(jy) = jython() else { return };
    let gw = start(&jy);
    errors_output_cancel_and_channels(
        &gw,
        "from java.lang import System\nSystem.out.println('fd level')\nSystem.out.flush()",
    );
    // Java classes from remote code, and a Java exception as a remote error.
    let ch = exec(
        &gw,
        "from java.util import Vector\nv = Vector()\nv.add(1)\nchannel.send(v.size())",
    );
    assert_eq!(recv(&ch), Value::Int(1));
    let ch = exec(&gw, "from java.lang import Integer\nInteger.parseInt('x')");
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.type_name, "NumberFormatException", "{remote:?}");
    assert!(remote.message.contains("\"x\""), "{remote:?}");
    gw.exit(T).unwrap();
}

#[test]
fn jython_exits_is_killed_and_ends_on_sigterm() {
    let Some(jy) = jython() else { return };
    exit_kill_and_sigterm(&jy);
}

// ---------------------------------------------------------------------------------------
// Arrays

fn wait_released<E: Element>(a: &SharedArray<E>) {
    let t = Instant::now();
    while (a.is_lent() || a.peer_shares() > 0) && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!a.is_lent() && a.peer_shares() == 0, "not released: {a:?}");
}

#[test]
fn python27_refuses_array_references_and_gives_them_back() {
    let _serial = serial();
    let Some(py) = python27() else { return };
    let gw = start(&py);
    let mut a = SharedArray::<u16>::zeros_in(Transport::Named, &[3, 4]).unwrap();
    for access in ["shared", "lent"] {
        let v = if access == "shared" {
            a.share().unwrap()
        } else {
            a.lend().unwrap()
        };
        let ch = exec(&gw, "channel.receive()");
        ch.send_value(&v).unwrap();
        drop(v);
        let err = ch.receive_timeout(T).unwrap_err();
        let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(remote.type_name, "LoadError", "{remote:?}");
        assert!(remote.message.contains(a.name()), "{remote:?}");
        assert!(remote.message.contains("cannot be mapped"), "{remote:?}");
        assert!(remote.message.contains(access), "{remote:?}");
        wait_released(&a);
    }
    a.view_mut().unwrap().fill(3);
    // A moved reference: the worker owns it now and removes it.
    let ch = exec(&gw, "channel.receive()");
    ch.send_value(&a.into_value().unwrap()).unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(err.remote().unwrap().message.contains("moved"), "{err:?}");
    // The gateway goes on serving.
    let ch = exec(&gw, "channel.send(7)");
    assert_eq!(recv(&ch), Value::Int(7));
    gw.exit(T).unwrap();
    assert_no_segments();
}

/// Remote code for the array battery: reads and writes through the Java buffers.
const JAVA_ARRAYS: &str = r#"
import pixgate
from java.nio import ByteOrder, ByteBuffer, ShortBuffer, IntBuffer, FloatBuffer, DoubleBuffer
KINDS = {"|u1": ByteBuffer, "<u2": ShortBuffer, "<i4": IntBuffer, "<f4": FloatBuffer,
         "<f8": DoubleBuffer}
for op, a in channel:
    buf = a.buffer
    info = (a.dtype, a.shape, a.strides, a.access, a.writable, isinstance(buf, KINDS[a.dtype]),
            buf.order() == ByteOrder.LITTLE_ENDIAN, buf.capacity(), a.meta.get("dims"))
    if op == "read":
        channel.send((info, [a[i] for i in range(a.size)]))
        try:
            a[0] = 1
        except ValueError:
            pass
        pixgate.release(a)
    elif op == "double":
        # Through the typed Java buffer, element by element.
        for i in range(buf.capacity()):
            buf.put(i, buf.get(i) * 2)
        channel.send((info, None))
        pixgate.release(a)
    elif op == "double-send-back":
        for i in range(buf.capacity()):
            buf.put(i, buf.get(i) * 2)
        channel.send((info, a))
    elif op == "own":
        a[0] = 99
        channel.send((info, a))
    del a, buf
"#;

fn array_battery<E>(gw: &Gateway, values: Vec<E>, typestr: &str)
where
    E: Element + PartialEq + std::fmt::Debug + Into<f64>,
{
    let ch = exec(gw, JAVA_ARRAYS);
    let n = values.len();
    let src = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, n / 2]), values.clone()).unwrap();
    let ask = |op: &str, v: Value| -> (Vec<Value>, Value) {
        ch.send(tuple(vec![s(op), v])).unwrap();
        let mut r = recv(&ch).into_items().unwrap();
        let second = r.pop().unwrap();
        (r.pop().unwrap().into_items().unwrap(), second)
    };
    let check_info = |info: &[Value], access: &str, writable: bool| {
        assert_eq!(info[0], s(typestr));
        assert_eq!(
            info[1],
            tuple(vec![Value::Int(2), Value::Int(n as i64 / 2)])
        );
        assert_eq!(info[3], s(access));
        assert_eq!(info[4], Value::Bool(writable));
        assert_eq!(info[5], Value::Bool(true), "typed buffer of {typestr}");
        assert_eq!(info[6], Value::Bool(true), "little-endian");
        assert_eq!(info[7], Value::Int(n as i64));
    };

    // Shared: read-only, read element by element; released explicitly.
    // Old interpreters cannot receive descriptors: their gateways use named segments.
    let mut a = SharedArray::<E>::zeros_in(Transport::Named, src.shape()).unwrap();
    a.view_mut().unwrap().assign(&src.view().into_dyn());
    a.set_dims(&["y", "x"]).unwrap();
    let (info, seen) = ask("read", a.share().unwrap());
    check_info(&info, "shared", false);
    assert_eq!(info[8], Value::List(vec![s("y"), s("x")]));
    let seen: Vec<f64> = seen
        .into_items()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = values.iter().map(|&v| v.into()).collect();
    assert_eq!(seen, want);
    wait_released(&a);
    assert_eq!(
        a.view().unwrap().iter().copied().collect::<Vec<_>>(),
        values
    );

    // Lent: Jython doubles in place through the Java buffer, then releases.
    let (info, _) = ask("double", a.lend().unwrap());
    check_info(&info, "lent", true);
    wait_released(&a);
    let doubled: Vec<f64> = a.view().unwrap().iter().map(|&v| v.into()).collect();
    assert_eq!(doubled, want.iter().map(|v| v * 2.0).collect::<Vec<_>>());

    // Lent and sent back: the arrival is the release.
    let (_, back) = ask("double-send-back", a.lend().unwrap());
    assert!(matches!(back, Value::Array(_)));
    assert!(!a.is_lent());
    let quadrupled: Vec<f64> = a.view().unwrap().iter().map(|&v| v.into()).collect();
    assert_eq!(quadrupled, want.iter().map(|v| v * 4.0).collect::<Vec<_>>());

    // Moved: Jython owns it, writes, moves it back; the host adopts it.
    let name = a.name().to_string();
    let (info, back) = ask("own", a.into_value().unwrap());
    check_info(&info, "moved", true);
    let b = SharedArray::<E>::from_value(back).unwrap();
    assert_eq!(b.name(), name);
    let first: f64 = b.view().unwrap().iter().next().copied().unwrap().into();
    assert_eq!(first, 99.0);
    drop(b);
    ch.close().unwrap();
    ch.wait_close(Some(T)).unwrap();
}

#[test]
fn jython_reads_and_writes_host_arrays_through_java_buffers() {
    let _serial = serial();
    let Some(jy) = jython() else { return };
    let gw = start(&jy);
    array_battery(&gw, vec![0u8, 1, 2, 30, 40, 63], "|u1");
    array_battery(&gw, vec![0u16, 7, 300, 8000], "<u2");
    array_battery(&gw, vec![-3i32, 1 << 20, 5, -(1 << 20)], "<i4");
    array_battery(&gw, vec![1.25f32, -0.5, 3.0, 1e-3], "<f4");
    array_battery(&gw, vec![1.25f64, -1e300, 0.1, 7.0], "<f8");
    // A FORGET arrives for each array that was shared or lent; the worker still serves.
    let ch = exec(&gw, "channel.send(1)");
    assert_eq!(recv(&ch), Value::Int(1));
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn jython_creates_arrays_and_moves_them_to_the_host() {
    let _serial = serial();
    let Some(jy) = jython() else { return };
    let gw = start(&jy);
    let ch = exec(
        &gw,
        r#"
import pixgate
a = pixgate.zeros((3, 4), "uint16", meta={"dims": ["y", "x"], "name": u"made in java"})
a.buffer.put(5, 7)
a[2, 3] = 65535
info = (a.name, a.dtype, a.access, a.name in pixgate.owned_names())
channel.send((info, a))
b = pixgate.zeros((2,), "<f8")
b[1] = 0.25
kept = b
channel.send(b.name)
channel.receive()
"#,
    );
    let mut r = recv(&ch).into_items().unwrap();
    let arr = r.pop().unwrap();
    let info = r.pop().unwrap().into_items().unwrap();
    assert_eq!(info[1], s("<u2"));
    assert_eq!(info[2], s("owned"));
    assert_eq!(info[3], Value::Bool(true));
    let a = SharedArray::<u16>::from_value(arr).unwrap();
    assert_eq!(Value::from(a.name()), info[0]);
    let v = a.view().unwrap();
    assert_eq!(v[[1, 1]], 7);
    assert_eq!(v[[2, 3]], 65535);
    assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), 65542);
    assert_eq!(
        a.dims().unwrap(),
        ["y".to_string(), "x".to_string()].as_slice()
    );
    assert_eq!(a.meta().name.as_deref(), Some("made in java"));
    // The segment is mode 0600.
    let path = format!("/dev/shm{}", a.name());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(v);
    drop(a);
    // The array Jython keeps is removed when it exits.
    let kept = recv(&ch).into_string().unwrap();
    assert!(Path::new(&format!("/dev/shm{kept}")).exists());
    gw.exit(T).unwrap();
    assert!(!Path::new(&format!("/dev/shm{kept}")).exists());
    assert_no_segments();
}

#[test]
fn jython_maps_arrays_over_2_gib_as_windows() {
    let _serial = serial();
    let Some(jy) = jython() else { return };
    let gw = start(&jy);
    // 2 GiB + 8 KiB of u16: three windows of 1 GiB; only a few pages are touched.
    let n = (1usize << 30) + 4096;
    let t = Instant::now();
    let mut a = SharedArray::<u16>::zeros_in(Transport::Named, &[n]).unwrap();
    say(&format!("created {} bytes in {:?}", 2 * n, t.elapsed()));
    let ch = exec(
        &gw,
        r#"
import pixgate
a = channel.receive()
try:
    a.buffer
    single = True
except ValueError:
    single = False
idx = [0, (1 << 29) - 1, 1 << 29, (1 << 29) + 1, 1 << 30, a.size - 1]
for i in idx:
    a[i] = (i % 60000) + 1
sizes = [w.capacity() for w in a.windows]
bufs = a.buffers
bufs[2].put(2, 4242)
channel.send((single, sizes, [a[i] for i in idx], a.window_size, len(bufs)))
pixgate.release(a)
"#,
    );
    ch.send_value(&a.lend().unwrap()).unwrap();
    let r = recv(&ch).into_items().unwrap();
    assert_eq!(r[0], Value::Bool(false));
    let gib = 1i64 << 30;
    assert_eq!(
        r[1],
        Value::List(vec![
            Value::Int(gib),
            Value::Int(gib),
            Value::Int(2 * n as i64 - 2 * gib)
        ])
    );
    assert_eq!(r[3], Value::Int(gib));
    assert_eq!(r[4], Value::Int(3));
    wait_released(&a);
    let v = a.view().unwrap();
    for i in [0, (1 << 29) - 1, 1 << 29, (1 << 29) + 1, 1 << 30, n - 1] {
        assert_eq!(v[[i]] as usize, (i % 60000) + 1, "element {i}");
    }
    assert_eq!(
        v[[(1 << 30) + 2]],
        4242,
        "through the third window's buffer"
    );
    drop(v);
    drop(a);
    ch.wait_close(Some(T)).unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

// ---------------------------------------------------------------------------------------
// The legacy helper's unit tests, run by the old interpreters themselves

fn run_unit_tests(python: &str) {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python-helper/tests/test_legacy.py"
    );
    let mut child = Command::new(python)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the unit tests");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            panic!("{python} {file} ran past 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    say(&format!(
        "ran with {python}: unit tests, {}",
        python_tests_line(&text)
    ));
    assert!(out.status.success(), "{python} {file} failed:\n{text}");
    assert!(text.contains("\nOK"), "{text}");
}

fn python_tests_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("the")
}

#[test]
fn legacy_unit_tests_pass_on_python27() {
    let Some(py) = python27() else { return };
    run_unit_tests(&py);
}

#[test]
fn legacy_unit_tests_pass_on_jython() {
    let Some(jy) = jython() else { return };
    run_unit_tests(&jy);
}
