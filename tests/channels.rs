//! Channels against real workers: values, iteration, concurrency, errors, cancel, output.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{T, gateway, spec};
use pixgate::{ErrorKind, ExecOptions, Gateway, OutputLine, OutputMode, Stream, Value};

const ECHO: &str = "for x in channel:\n    channel.send(x)";

fn plain_values() -> Vec<Value> {
    use num_bigint::BigInt;
    vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-1),
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

#[test]
fn every_plain_value_round_trips_through_python() {
    let gw = gateway();
    let ch = gw.remote_exec(ECHO).unwrap();
    for v in plain_values() {
        ch.send(v.clone()).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap(), v);
    }
    let nan = {
        ch.send(f64::NAN).unwrap();
        ch.receive_timeout(T).unwrap()
    };
    assert!(nan.as_f64().unwrap().is_nan());
    ch.close().unwrap();
    ch.wait_close(Some(T)).unwrap();
}

#[test]
fn iteration_yields_items_until_the_remote_closes() {
    let gw = gateway();
    let ch = gw
        .remote_exec("for i in range(5):\n    channel.send(i)")
        .unwrap();
    let got: Vec<i64> = ch.iter().map(|v| v.unwrap().as_i64().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert!(ch.is_closed());
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ChannelClosed { .. }),
        "{err:?}"
    );
}

#[test]
fn many_channels_run_concurrently_on_one_gateway() {
    let gw = Arc::new(gateway());
    // Each remote execution blocks until all have started, so they must run at once.
    let n = 24;
    let setup = gw
        .remote_exec("import threading\nimport pixgate\npixgate._barrier = threading.Barrier(24)\nchannel.send(1)")
        .unwrap();
    setup.receive_timeout(T).unwrap();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let gw = Arc::clone(&gw);
            std::thread::spawn(move || {
                let ch = gw
                    .remote_exec(
                        "import pixgate\npixgate._barrier.wait(20)\nfor x in channel:\n    channel.send((x, threading_name))"
                            .replace("threading_name", "__import__('threading').current_thread().name")
                            .as_str(),
                    )
                    .unwrap();
                let mut names = Vec::new();
                // Different lengths, so executions end while others still wait: a
                // baton handed to a channel that has stopped waiting must not be lost.
                for k in 0..(10 + i * 4) {
                    ch.send(i * 1000 + k).unwrap();
                    let v = ch.receive_timeout(T).unwrap();
                    let t = v.as_seq().unwrap();
                    assert_eq!(t[0].as_i64(), Some(i * 1000 + k));
                    names.push(t[1].as_str().unwrap().to_string());
                }
                ch.close().unwrap();
                ch.wait_close(Some(T)).unwrap();
                names.dedup();
                assert_eq!(names.len(), 1);
                names.pop().unwrap()
            })
        })
        .collect();
    let mut names: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n as usize, "each channel on its own thread");
}

#[test]
fn remote_exception_carries_type_message_and_traceback() {
    let gw = gateway();
    let ch = gw
        .remote_exec("def f(x):\n    return 1 / x\nchannel.send('before')\nf(0)")
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("before"));
    let err = ch.receive_timeout(T).unwrap_err();
    let r = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(r.type_name, "ZeroDivisionError");
    assert_eq!(r.message, "division by zero");
    assert!(r.traceback.contains("return 1 / x"), "{}", r.traceback);
    assert!(r.traceback.contains("in f"), "{}", r.traceback);
    // wait_close reports the same error; the gateway lives on.
    assert_eq!(ch.wait_close(Some(T)).unwrap_err().remote(), Some(r));
    let ok = gw.remote_exec("channel.send(7)").unwrap();
    assert_eq!(ok.receive_timeout(T).unwrap().as_i64(), Some(7));
}

#[test]
fn syntax_error_is_a_remote_error() {
    let gw = gateway();
    let ch = gw.remote_exec("def (:\n").unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(err.remote().unwrap().type_name, "SyntaxError");
}

#[test]
fn receive_timeout_leaves_the_channel_usable() {
    let gw = gateway();
    let ch = gw.remote_exec(ECHO).unwrap();
    let t = Instant::now();
    let err = ch.receive_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout { after, .. } if *after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(t.elapsed() < Duration::from_secs(5));
    ch.send("late").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("late"));
}

#[test]
fn close_ends_remote_iteration_and_close_with_error_raises_there() {
    let gw = gateway();
    let ch = gw
        .remote_exec("n = 0\nfor x in channel:\n    n += x\nchannel.send(n)")
        .unwrap();
    for i in 1..=4 {
        ch.send(i).unwrap();
    }
    ch.close().unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(10));
    let err = ch.send(1).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ChannelClosed { .. }),
        "{err:?}"
    );

    let ch = gw
        .remote_exec(
            "import pixgate\ntry:\n    channel.receive(timeout=10)\nexcept pixgate.RemoteError as e:\n    channel.send(('remote error', str(e)))",
        )
        .unwrap();
    ch.close_with_error("host gave up").unwrap();
    let v = ch.receive_timeout(T).unwrap();
    assert_eq!(
        v,
        Value::Tuple(vec![
            Value::from("remote error"),
            Value::from("host gave up")
        ])
    );
}

#[test]
fn cancel_is_seen_at_the_next_channel_operation() {
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "import pixgate, time\nchannel.send('started')\ntry:\n    while True:\n        channel.receive(timeout=10)\nexcept pixgate.Cancelled:\n    channel.send('cancelled')",
        )
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("started"));
    ch.cancel().unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("cancelled"));
    ch.wait_close(Some(T)).unwrap();

    // A busy loop that sends: cancel arrives between sends.
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
    assert!(matches!(end.kind(), ErrorKind::Cancelled { .. }), "{end:?}");
    // The gateway is unharmed.
    let ok = gw.remote_exec("channel.send('alive')").unwrap();
    assert_eq!(ok.receive_timeout(T).unwrap().as_str(), Some("alive"));
}

#[test]
fn main_thread_option_runs_on_the_main_thread() {
    let gw = gateway();
    let probe =
        "import threading\nchannel.send(threading.current_thread() is threading.main_thread())";
    let ch = gw
        .remote_exec_with(probe, ExecOptions::default().main_thread())
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_bool(), Some(true));
    let ch = gw.remote_exec(probe).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_bool(), Some(false));
}

#[test]
fn call_name_calls_a_function_with_kwargs() {
    let gw = gateway();
    let ch = gw
        .remote_exec_with(
            "def scale(channel, factor, offset=0):\n    for x in channel:\n        channel.send(x * factor + offset)",
            ExecOptions::default()
                .call("scale", vec![("factor".into(), Value::Int(3)), ("offset".into(), Value::Int(1))])
                .file_name("scale.py"),
        )
        .unwrap();
    ch.send(5).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(16));
}

#[test]
fn serde_types_cross_both_ways() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Job {
        name: String,
        planes: Vec<u32>,
        scale: Option<f64>,
        tags: HashMap<String, i64>,
    }
    let gw = gateway();
    let ch = gw
        .remote_exec("job = channel.receive(10)\njob['planes'] = [p * 2 for p in job['planes']]\njob['scale'] = 0.5\nchannel.send(job)")
        .unwrap();
    let job = Job {
        name: "stack".into(),
        planes: vec![1, 2, 3],
        scale: None,
        tags: HashMap::from([("t".to_string(), 4)]),
    };
    ch.send_serde(&job).unwrap();
    let back: Job = ch.receive_as(Some(T)).unwrap();
    assert_eq!(
        back,
        Job {
            planes: vec![2, 4, 6],
            scale: Some(0.5),
            ..job
        }
    );
}

#[test]
fn prints_are_attributed_to_their_channel() {
    let gw = gateway();
    let a = gw
        .remote_exec("print('from a')\nprint('partial', end='')\nprint(' line')\nchannel.send(1)")
        .unwrap();
    let b = gw
        .remote_exec("import sys, os\nprint('to stderr', file=sys.stderr)\nos.write(1, b'fd level\\n')\nchannel.send(2)")
        .unwrap();
    a.receive_timeout(T).unwrap();
    b.receive_timeout(T).unwrap();
    a.wait_close(Some(T)).unwrap();
    b.wait_close(Some(T)).unwrap();
    gw.exit(T).unwrap();
    let lines = gw.take_output();
    let find = |text: &str| {
        lines
            .iter()
            .find(|l| l.text == text)
            .unwrap_or_else(|| panic!("{text:?} not in {lines:?}"))
            .clone()
    };
    let l = find("from a");
    assert_eq!((l.channel, l.stream), (Some(a.id()), Stream::Stdout));
    let l = find("partial line");
    assert_eq!(l.channel, Some(a.id()));
    let l = find("to stderr");
    assert_eq!((l.channel, l.stream), (Some(b.id()), Stream::Stderr));
    let l = find("fd level");
    // Over ssh the remote's descriptor 1 is its stderr: ssh's stdout carries the frames.
    let fd_stream = if common::over_ssh() {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    assert_eq!((l.channel, l.stream), (None, fd_stream));
    assert!(lines.iter().all(|l| l.gateway == gw.id()));
}

#[test]
fn output_callback_sees_every_line() {
    let seen: Arc<Mutex<Vec<OutputLine>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let gw = Gateway::builder(&spec("id=cb"))
        .output(OutputMode::Callback(Arc::new(move |l: &OutputLine| {
            sink.lock().unwrap().push(l.clone())
        })))
        .spawn()
        .unwrap();
    let ch = gw
        .remote_exec("for i in range(3):\n    print('line', i)\nchannel.send(0)")
        .unwrap();
    ch.receive_timeout(T).unwrap();
    ch.wait_close(Some(T)).unwrap();
    let texts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(texts, ["line 0", "line 1", "line 2"]);
}

#[test]
fn oversized_frames_are_refused_in_both_directions() {
    let gw = Gateway::builder(&spec(""))
        .max_frame_len(1024)
        .output(OutputMode::Capture)
        .spawn()
        .unwrap();
    let ch = gw.remote_exec(ECHO).unwrap();
    let err = ch.send(Value::bytes(vec![0u8; 2000])).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::FrameTooLarge { len, limit: 1024, .. } if *len > 2000),
        "{err:?}"
    );
    // A close whose message is over the limit changes nothing either.
    let err = ch.close_with_error(&"e".repeat(2000)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::FrameTooLarge { .. }),
        "{err:?}"
    );
    assert!(!ch.is_closed());
    // Nothing was sent; the channel still works.
    ch.send(1).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(1));

    // The worker knows the limit and refuses at the source.
    let big = gw
        .remote_exec("import pixgate\ntry:\n    channel.send(b'x' * 5000)\nexcept pixgate.DumpError as e:\n    channel.send(str(e))")
        .unwrap();
    let msg = big.receive_timeout(T).unwrap();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("exceeds the frame limit of 1024"),
        "{msg}"
    );
}

#[test]
fn unsupported_value_in_remote_send_is_a_remote_error() {
    let gw = gateway();
    let ch = gw.remote_exec("channel.send(object())").unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(err.remote().unwrap().type_name, "DumpError", "{err:?}");
}

#[test]
fn dropping_a_channel_closes_its_sending_side() {
    let gw = gateway();
    let ch = gw
        .remote_exec("import pixgate\nfor x in channel:\n    pass\npixgate._done = True")
        .unwrap();
    ch.send(1).unwrap();
    drop(ch);
    let probe = gw
        .remote_exec("import pixgate, time\nt = time.time()\nwhile not getattr(pixgate, '_done', False) and time.time() - t < 10:\n    time.sleep(0.01)\nchannel.send(getattr(pixgate, '_done', False))")
        .unwrap();
    assert_eq!(probe.receive_timeout(T).unwrap().as_bool(), Some(true));
}
