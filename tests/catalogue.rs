//! The bad-input catalogue of TESTING.md ("Bad input"): one test per row, named after
//! the row. Each test provokes the bad input for real (a real or a protocol-breaking
//! worker, a damaged segment in /dev/shm, a full tmpfs), asserts the exact typed error,
//! and then checks that nothing else was lost:
//!
//! - an array the host holds still reads back its values (and is writable again when
//!   no reference to it is out);
//! - another channel on the same gateway still answers, or a fresh gateway does when
//!   the row ends the worker;
//! - no segment of this process, nor of the workers involved, is left in /dev/shm.
//!
//! The tests run one at a time (`common::serial`): each ends by checking /dev/shm.

mod common;

use std::fs::{File, Permissions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, process_alive, python, serial, spec};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use pixgate::segment::{Segment, Transport};
use pixgate::{
    Access, Channel, DType, DecodeErrorKind, Error, ErrorKind, Gateway, GatewayBuilder, Layout,
    Meta, OutputLine, OutputMode, Pool, SegmentProblem, SharedArray, Stream, Value,
};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_worker.py");

// Header offsets from docs/SEGMENT_FORMAT.md §4, written out independently of the crate.
const VERSION: u64 = 8;
const DTYPE: u64 = 32;
const META_LEN: u64 = 88;
const STRIDES: u64 = 352;
const META: u64 = 608;

// --- what must survive every row ---------------------------------------------------

/// The array the host holds through every row: `<u2` [3, 4] holding 0 … 11.
fn held() -> SharedArray<u16> {
    held_in(Transport::from_env())
}

/// [`held`] with the given transport.
fn held_in(transport: Transport) -> SharedArray<u16> {
    let mut a = SharedArray::<u16>::zeros_in(transport, &[3, 4]).expect("held array");
    for (i, x) in a.view_mut().expect("fresh array").iter_mut().enumerate() {
        *x = i as u16;
    }
    a
}

/// The held array still reads 0 … 11 and, with no reference out, can be written.
fn assert_intact(a: &mut SharedArray<u16>) {
    let values: Vec<u16> = a.view().expect("readable").iter().copied().collect();
    assert_eq!(values, (0..12).collect::<Vec<u16>>(), "held array changed");
    assert_eq!((a.peer_shares(), a.is_lent()), (0, false), "{a:?}");
    let mut w = a.view_mut().expect("writable again");
    w[[0, 0]] = 0;
}

/// A new channel on `gw` (a real worker) runs code and answers.
fn assert_answers(gw: &Gateway) {
    let ch = gw.remote_exec("channel.send(6 * 7)").expect("remote_exec");
    assert_eq!(ch.receive_timeout(T).expect("answer").as_i64(), Some(42));
}

/// A fresh gateway on the test interpreter answers and exits with code 0.
fn assert_fresh_gateway_answers() {
    let gw = common::gateway();
    assert_answers(&gw);
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
}

/// Ends `gw` politely (exit code 0) and checks that it is gone.
fn exit_cleanly(gw: Gateway) {
    let pid = gw.pid();
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(!process_alive(pid), "worker {pid} still runs");
}

/// No segment named after `pid` is left in /dev/shm.
fn assert_no_segments_of(pid: u32) {
    let prefix = format!("pxg-{pid:x}-");
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "segments of pid {pid} left: {left:?}");
}

// --- error helpers -------------------------------------------------------------------

fn segment_problem(e: &Error) -> &SegmentProblem {
    match e.kind() {
        ErrorKind::Segment { problem, .. } => problem,
        other => panic!("expected a segment error, got {other:?}"),
    }
}

fn decode_kind(e: &Error) -> &DecodeErrorKind {
    match e.kind() {
        ErrorKind::Decode(d) => d.kind(),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

fn protocol_message(e: &Error) -> &str {
    match e.kind() {
        ErrorKind::Protocol(m) => m,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn busy_message(e: &Error) -> &str {
    match e.kind() {
        ErrorKind::Busy(m) => m,
        other => panic!("expected a busy error, got {other:?}"),
    }
}

fn reference_message(e: &Error) -> &str {
    match e.kind() {
        ErrorKind::Reference(m) => m,
        other => panic!("expected a reference error, got {other:?}"),
    }
}

fn convert_message(e: &Error) -> &str {
    match e.kind() {
        ErrorKind::Convert(m) => m,
        other => panic!("expected a conversion error, got {other:?}"),
    }
}

// --- the protocol-breaking worker ----------------------------------------------------

/// A gateway whose "interpreter" is tests/fixtures/fake_worker.py in `mode`.
fn fake(mode: &str) -> GatewayBuilder {
    Gateway::builder(&format!(
        "popen//python={} {FAKE}//env:FAKE_MODE={mode}//id=fake-{mode}",
        python()
    ))
    .output(OutputMode::Capture)
    .handshake_timeout(T)
}

/// The fake's first channel, which it answers with the mode's script.
fn scripted_channel(gw: &Gateway) -> Channel {
    gw.remote_exec("answered by the script")
        .expect("remote_exec")
}

/// A row played by the fake worker: the scripted channel's first item fails, `check`
/// gets the error and how long the receive took; then the channel and a second one
/// still serve, the worker exits cleanly, and the held array and /dev/shm are intact.
fn fake_row(builder: GatewayBuilder, check: impl FnOnce(&pixgate::Error, Duration)) {
    let _serial = serial();
    let mut keep = held();
    let gw = builder.spawn().unwrap();
    let ch = scripted_channel(&gw);
    let t = Instant::now();
    let err = ch.receive_timeout(T).unwrap_err();
    check(&err, t.elapsed());
    assert_fake_serves_on(&gw, &ch);
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

/// After the bad item the scripted channel delivers 42 and its close, and a second
/// channel on the same gateway answers 42 (the fake answers every later exec so).
fn assert_fake_serves_on(gw: &Gateway, ch: &Channel) {
    assert_eq!(
        ch.receive_timeout(T).expect("item after").as_i64(),
        Some(42)
    );
    let end = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(end.kind(), ErrorKind::ChannelClosed { .. }),
        "{end:?}"
    );
    let other = gw.remote_exec("a second channel").expect("remote_exec");
    assert_eq!(other.receive_timeout(T).expect("answer").as_i64(), Some(42));
}

// --- segments damaged in /dev/shm ----------------------------------------------------

/// A second read-write handle on a segment, as another process of this user has.
fn raw(name: &str) -> File {
    nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty())
        .map(File::from)
        .expect("shm_open")
}

fn poke(name: &str, offset: u64, bytes: &[u8]) {
    raw(name).write_all_at(bytes, offset).expect("pwrite");
}

/// A `<u2` [3, 4, 5] segment of this process (unlinked when dropped): header 4096
/// bytes, data 120 bytes, object 8192 bytes.
fn victim() -> Segment {
    Segment::create(
        &Layout::c_order(DType::U16, &[3, 4, 5]).unwrap(),
        &Meta::default(),
    )
    .expect("create")
}

/// Remote code that sends back a reference for every (name, generation, access) it
/// receives: a worker naming a segment of its choice.
const FORGER: &str = r#"
from pixgate import _wire
for name, generation, access, *by_descriptor in channel:
    if by_descriptor:  # an anonymous object's, as if the host mapped it already
        channel.send(_wire.DescriptorRef(name, 0, 0, generation, access))
    else:
        channel.send(_wire.ArrayRef(name, generation, access))
"#;

/// A reference that only describes an array (decoded from bytes, as any reader of the
/// format can make one): it can be encoded, never sent.
fn described_ref(name: &str, generation: u64, access: Access) -> Value {
    let mut bytes = vec![pixgate::codec::DUMPFORMAT_VERSION, b'U'];
    bytes.extend_from_slice(&(name.len() as i32).to_be_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.push(access as u8);
    bytes.push(b'Q');
    let v = pixgate::loads(&bytes).expect("a reference");
    let Value::Array(r) = &v else {
        panic!("expected a reference, got {v:?}");
    };
    assert!(!r.is_sendable());
    v
}

/// Asks a real worker to send a reference to `name` and adopts what arrives.
fn adopt_from_worker(
    ch: &Channel,
    name: &str,
    generation: u64,
    access: Access,
) -> pixgate::Result<SharedArray<u16>> {
    adopt_from_worker_as(ch, Transport::Named, name, generation, access)
}

/// [`adopt_from_worker`] with a reference of the given transport: by name (`U`), or
/// (`V`) by token 0, naming an object the worker claims the host maps already.
fn adopt_from_worker_as(
    ch: &Channel,
    transport: Transport,
    name: &str,
    generation: u64,
    access: Access,
) -> pixgate::Result<SharedArray<u16>> {
    let mut request = vec![
        name.into(),
        Value::from(generation as i64),
        Value::from(access as u8 as i64),
    ];
    if transport == Transport::Anonymous {
        request.push(Value::from(0));
    }
    ch.send(Value::Tuple(request)).expect("send");
    let v = ch.receive_timeout(T).expect("the reference");
    let Value::Array(r) = &v else {
        panic!("expected an array reference, got {v:?}");
    };
    assert_eq!(
        (r.name(), r.generation(), r.access()),
        (name, generation, access)
    );
    assert!(
        !r.is_sendable(),
        "a reference from a worker cannot be sent on"
    );
    SharedArray::<u16>::from_value(v)
}

/// Damages a fresh segment with `damage`, has a real worker send a moved reference to
/// it, and returns the host's refusal. Checks that the host array, the channel and the
/// gateway are unharmed and that nothing is left in /dev/shm.
fn refused_segment(damage: impl FnOnce(&str)) -> Error {
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(FORGER).expect("remote_exec");
    let seg = victim();
    damage(seg.name());
    let err = adopt_from_worker(&ch, seg.name(), 0, Access::Moved).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("segment {}: ", seg.name())),
        "{err}"
    );
    // The refusal adopted nothing: the segment is still its creator's, who removes it.
    assert!(seg.unlinks_on_drop());
    drop(seg);
    // The channel that carried the reference still carries good ones, and another
    // channel answers.
    let good = victim();
    let shared = adopt_from_worker(&ch, good.name(), 0, Access::Shared).expect("a good one");
    assert_eq!(shared.shape(), &[3, 4, 5]);
    assert!(shared.view().unwrap().iter().all(|&x| x == 0));
    drop((shared, good));
    assert_answers(&gw);
    assert_intact(&mut keep);
    let worker = gw.pid();
    ch.close().unwrap();
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
    assert_no_segments_of(worker);
    err
}

/// An executable shell script in the temporary directory.
fn script(name: &str, body: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("pixgate-catalogue-{}-{name}", std::process::id()));
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, Permissions::from_mode(0o755)).unwrap();
    path
}

// =====================================================================================
// Starting a worker
// =====================================================================================

#[test]
fn interpreter_missing() {
    let _serial = serial();
    let mut keep = held();
    let err = Gateway::builder("popen//python=/nonexistent/python3.99//id=missing")
        .handshake_timeout(T)
        .spawn()
        .unwrap_err();
    match err.kind() {
        ErrorKind::InterpreterNotFound { path, .. } => {
            assert_eq!(path, "/nonexistent/python3.99")
        }
        other => panic!("expected InterpreterNotFound, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("python interpreter \"/nonexistent/python3.99\" could not be started: "),
        "{err}"
    );
    assert_fresh_gateway_answers();
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

#[test]
fn interpreter_without_numpy() {
    let _serial = serial();
    let mut keep = held();
    // -S: no site-packages, so numpy cannot be imported; the helper still arrives over
    // the pipe, so the worker starts and serves plain values.
    let gw = Gateway::builder(&format!("popen//python={} -S//id=no-numpy", python()))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("a worker without numpy still starts");
    assert_eq!(gw.info().numpy_version, None, "{:?}", gw.info());
    let ch = gw
        .remote_exec("import sys\nchannel.send('numpy' in sys.modules)\narr = channel.receive()")
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_bool(), Some(false));
    ch.send(keep.share().unwrap()).unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.type_name, "LoadError", "{remote:?}");
    assert!(
        remote.message.contains(keep.name()) && remote.message.contains("numpy"),
        "{remote:?}"
    );
    // Plain values still flow on another channel.
    assert_answers(&gw);
    // The worker never mapped the array, so it never releases it; it is the host's
    // again (readable throughout) once the worker is gone.
    assert_eq!(keep.view().unwrap()[[2, 3]], 11);
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

#[test]
fn handshake_never_answered() {
    let _serial = serial();
    let mut keep = held();
    let hang = script("hang.sh", "#!/bin/sh\nexec sleep 30\n");
    let t = Instant::now();
    let err = Gateway::builder(&format!("popen//python={}", hang.display()))
        .handshake_timeout(Duration::from_millis(500))
        .output(OutputMode::Discard)
        .spawn()
        .unwrap_err();
    std::fs::remove_file(&hang).ok();
    match err.kind() {
        ErrorKind::Timeout { operation, after } => {
            assert_eq!(*after, Duration::from_millis(500));
            assert!(operation.contains("handshake"), "{operation}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out after 500ms"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_fresh_gateway_answers();
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

// =====================================================================================
// Remote code
// =====================================================================================

#[test]
fn syntax_error_in_remote_code() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec("def (:\n").unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.type_name, "SyntaxError");
    assert!(err.to_string().starts_with("remote SyntaxError: "), "{err}");
    assert!(ch.is_closed());
    assert_answers(&gw);
    assert_intact(&mut keep);
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn exception_in_remote_code() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec("arr = channel.receive()\nchannel.send(int(arr.sum()))\n1 / 0")
        .unwrap();
    ch.send(keep.share().unwrap()).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(66));
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(
        (remote.type_name.as_str(), remote.message.as_str()),
        ("ZeroDivisionError", "division by zero")
    );
    assert!(remote.traceback.contains("1 / 0"), "{}", remote.traceback);
    // The exception dropped the remote code's array: the share comes back.
    common::wait_until(|| keep.peer_shares() == 0, "the share released");
    assert_answers(&gw);
    assert_intact(&mut keep);
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn worker_exits_mid_receive() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec(
            "import os\narr = channel.receive()\nos.write(2, b'leaving now\\n')\nos._exit(3)",
        )
        .unwrap();
    ch.send(keep.lend().unwrap()).unwrap();
    assert!(keep.view().is_err(), "lent");
    let err = ch.receive_timeout(T).unwrap_err();
    let exit = err.worker_exit().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!((exit.code, exit.signal), (Some(3), None));
    assert_eq!(exit.stderr_tail, ["leaving now"]);
    assert!(err.to_string().contains("died: exit code 3"), "{err}");
    // The lend ends with the worker; later operations fail the same way.
    assert!(matches!(
        gw.remote_exec("pass").unwrap_err().kind(),
        ErrorKind::WorkerDied(_)
    ));
    assert_intact(&mut keep);
    let worker = gw.pid();
    drop(gw);
    assert_fresh_gateway_answers();
    drop(keep);
    assert_no_segments();
    assert_no_segments_of(worker);
}

#[test]
fn worker_killed_by_a_signal() {
    let _serial = serial();
    for transport in [Transport::Named, Transport::Anonymous] {
        killed_worker_leaves_nothing(transport);
    }
}

/// A worker holding a lent array and an array of its own is killed: named, its array
/// is an orphan that the sweeper removes; anonymous, the kernel freed it with the
/// worker, and there is nothing to sweep.
fn killed_worker_leaves_nothing(transport: Transport) {
    let mut keep = held_in(transport);
    let gw = Gateway::builder(&spec(""))
        .transport(transport)
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("spawn gateway");
    assert_eq!(gw.transport(), transport);
    let ch = gw
        .remote_exec(
            "import os, pixgate\narr = channel.receive()\nmine = pixgate.zeros((1024,), 'uint8')\nchannel.send((os.getpid(), pixgate._array.segment_of(mine)[0].name))\nchannel.receive()",
        )
        .unwrap();
    ch.send(keep.lend().unwrap()).unwrap();
    let answer = ch.receive_timeout(T).unwrap();
    let pid = answer.as_seq().unwrap()[0].as_i64().unwrap() as u32;
    let mine = answer.as_seq().unwrap()[1].as_str().unwrap().to_string();
    assert_eq!(pid, gw.pid());
    assert!(common::segment_exists(&mine));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    let exit = err.worker_exit().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!((exit.signal, exit.pid), (Some(9), pid));
    assert!(err.to_string().contains("signal 9 (SIGKILL)"), "{err}");
    assert_intact(&mut keep);
    drop(gw);
    match transport {
        // The killed worker could not remove its own array; the sweeper does.
        Transport::Named => {
            let report = pixgate::segment::sweep(false).expect("sweep");
            assert!(report.swept.iter().any(|s| s.name == mine), "{report:?}");
        }
        // Its memory went with the last process that held it: the worker.
        Transport::Anonymous | Transport::ByValue => {
            assert!(!common::segment_exists(&mine), "{mine} outlived its worker")
        }
    }
    assert_fresh_gateway_answers();
    drop(keep);
    assert_no_segments();
    assert_no_segments_of(pid);
}

#[test]
fn receive_timeout() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec("for x in channel:\n    channel.send(x)")
        .unwrap();
    let t = Instant::now();
    let err = ch.receive_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(100));
    match err.kind() {
        ErrorKind::Timeout { after, .. } => assert_eq!(*after, Duration::from_millis(100)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out after 100ms"), "{err}");
    // The same channel still answers, arrays included.
    ch.send(keep.share().unwrap()).unwrap();
    let back = ch.receive_timeout(T).unwrap();
    assert!(matches!(back, Value::Array(_)), "{back:?}");
    assert_answers(&gw);
    assert_intact(&mut keep);
    ch.close().unwrap();
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn send_on_a_closed_channel() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec("total = 0\nfor x in channel:\n    total += x\nchannel.send(total)")
        .unwrap();
    ch.send(40).unwrap();
    ch.send(2).unwrap();
    ch.close().unwrap();
    let err = ch.send(1).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ChannelClosed { id } if *id == ch.id()),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("channel {} is closed", ch.id()));
    // Nothing was sent: the half-close still lets the remote side answer 40 + 2.
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(42));
    assert_answers(&gw);
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

// =====================================================================================
// Frames and values from a protocol-breaking worker
// =====================================================================================

#[test]
fn truncated_frame() {
    let _serial = serial();
    let mut keep = held();
    let gw = fake("truncated_frame_then_exit").spawn().unwrap();
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let msg = protocol_message(&err);
    assert!(
        msg.ends_with("is corrupt: stream ended inside a frame (6 bytes of it received)"),
        "{msg}"
    );
    // The stream cannot be resynchronised: every later operation fails alike.
    assert_eq!(
        gw.remote_exec("x").unwrap_err().to_string(),
        err.to_string()
    );
    exit_cleanly(gw);
    assert_fresh_gateway_answers();
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

#[test]
fn oversized_frame() {
    fake_row(fake("oversized").max_frame_len(1024), |err, _took| {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::FrameTooLarge {
                    channel: 1,
                    len: 2006,
                    limit: 1024
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame of 2006 bytes on channel 1 exceeds the limit of 1024 bytes"
        );
    });
}

#[test]
fn unknown_message_type() {
    fake_row(fake("unknown_type"), |err, _took| {
        assert_eq!(protocol_message(err), "unknown message type 99 from worker");
        assert_eq!(
            err.to_string(),
            "protocol error: unknown message type 99 from worker"
        );
    });
}

#[test]
fn unknown_opcode() {
    fake_row(fake("bad_value"), |err, _took| {
        assert_eq!(
            decode_kind(err),
            &DecodeErrorKind::UnknownOpcode { opcode: b'Z' }
        );
        assert_eq!(
            err.to_string(),
            "value decode error at byte 0: unknown opcode 'Z'"
        );
    });
}

#[test]
fn hostile_list_count() {
    fake_row(fake("hostile_list_count"), |err, took| {
        assert_eq!(
            decode_kind(err),
            &DecodeErrorKind::ListTooLong {
                count: i32::MAX as usize,
                remaining: 0
            }
        );
        assert!(err.to_string().contains("2147483647 items"), "{err}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

// =====================================================================================
// Segments: headers, files and names
// =====================================================================================

#[test]
fn bad_magic() {
    let _serial = serial();
    let err = refused_segment(|name| poke(name, 0, b"PXGSEH\0\0"));
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::BadMagic {
            found: *b"PXGSEH\0\0"
        }
    );
}

#[test]
fn unsupported_header_version() {
    let _serial = serial();
    let err = refused_segment(|name| poke(name, VERSION, &2u32.to_le_bytes()));
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::Version {
            found: 2,
            expected: 1
        }
    );
    assert!(
        err.to_string().ends_with("header version 2, expected 1"),
        "{err}"
    );
}

#[test]
fn header_of_another_uid() {
    let _serial = serial();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving a segment to another uid needs root");
        return;
    }
    let err = refused_segment(|name| {
        std::os::unix::fs::fchown(raw(name), Some(65534), None).expect("fchown");
    });
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::Owner {
            uid: 65534,
            expected: nix::unistd::geteuid().as_raw()
        }
    );
}

#[test]
fn group_or_other_readable_mode() {
    let _serial = serial();
    let err = refused_segment(|name| {
        raw(name)
            .set_permissions(Permissions::from_mode(0o640))
            .expect("fchmod");
    });
    assert!(
        matches!(segment_problem(&err), SegmentProblem::Mode { mode } if mode & 0o777 == 0o640),
        "{err}"
    );
}

#[test]
fn segment_smaller_than_its_header_claims() {
    let _serial = serial();
    // The creator's mapping is never touched past the new end (that would fault).
    let err = refused_segment(|name| raw(name).set_len(4096).expect("ftruncate"));
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::DataBeyondEnd {
            header_len: 4096,
            data_len: 120,
            file_size: 4096
        }
    );
}

#[test]
fn shape_times_strides_beyond_the_data() {
    let _serial = serial();
    // Axis 0 stride 41 instead of 40: the last element ends at 2·41 + 3·10 + 4·2 + 2.
    let err = refused_segment(|name| poke(name, STRIDES, &41u64.to_le_bytes()));
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::Extent {
            needs: 122,
            data_len: 120
        }
    );
}

#[test]
fn unknown_dtype() {
    let _serial = serial();
    let err = refused_segment(|name| poke(name, DTYPE, b"<V8"));
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::DType {
            found: "<V8".into()
        }
    );
}

#[test]
fn metadata_holding_an_array_reference() {
    let _serial = serial();
    let block = pixgate::dumps(&Value::dict([(
        "attrs",
        Value::dict([(
            "sneaky",
            described_ref(
                &format!("/pxg-{:x}-{:016x}", std::process::id(), 7u64),
                0,
                Access::Moved,
            ),
        )]),
    )]))
    .expect("dumps");
    let err = refused_segment(|name| {
        poke(name, META, &block);
        poke(name, META_LEN, &(block.len() as u32).to_le_bytes());
    });
    match segment_problem(&err) {
        SegmentProblem::Meta { reason } => {
            assert!(reason.contains("array reference"), "{reason}")
        }
        other => panic!("expected a metadata problem, got {other:?}"),
    }
}

#[test]
fn fifo_under_a_pixgate_name() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(FORGER).unwrap();
    let name = format!("/pxg-{:x}-{:016x}", std::process::id(), 0xf1f0u64);
    let path = format!("/dev/shm{name}");
    nix::unistd::mkfifo(path.as_str(), Mode::from_bits_truncate(0o600)).unwrap();
    // Opening a FIFO without O_NONBLOCK would hang: adopt on a thread with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.clone();
    std::thread::spawn(move || {
        let adopted = adopt_from_worker(&ch, &n, 0, Access::Moved).map(drop);
        let _ = tx.send((adopted, ch));
    });
    let got = rx.recv_timeout(T);
    std::fs::remove_file(&path).unwrap();
    let (adopted, ch) = got.expect("adopting a FIFO hung");
    let err = adopted.unwrap_err();
    assert!(
        matches!(segment_problem(&err), SegmentProblem::Mode { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("regular file"), "{err}");
    assert_answers(&gw);
    assert_intact(&mut keep);
    ch.close().unwrap();
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn name_too_long() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(FORGER).unwrap();
    // 40 bytes: a valid reference on the wire (names up to 255 bytes), refused at open.
    let name = format!("/pxg-{:x}-{}", std::process::id(), "a".repeat(32));
    let long = name[..40.min(name.len())].to_string();
    let err = adopt_from_worker(&ch, &long, 0, Access::Moved).unwrap_err();
    match segment_problem(&err) {
        SegmentProblem::NameInvalid { reason } => {
            assert_eq!(
                reason,
                &format!("{} bytes, expected at most 31", long.len())
            )
        }
        other => panic!("expected NameInvalid, got {other:?}"),
    }
    // A name that would leave /dev/shm is refused the same way, before any system call.
    let err = adopt_from_worker(&ch, "/pxg-1-../../etc/passwd", 0, Access::Moved).unwrap_err();
    assert!(
        matches!(segment_problem(&err), SegmentProblem::NameInvalid { .. }),
        "{err}"
    );
    assert_answers(&gw);
    assert_intact(&mut keep);
    ch.close().unwrap();
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn enospc_on_creation() {
    let _serial = serial();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut keep = held();
    let fs =
        common::Tmpfs::mount("pxg-catalogue", "size=1m,mode=0700").expect("mount a 1 MiB tmpfs");
    // 4 MiB does not fit in 1 MiB: refused while reserving, before any page is touched.
    let big = Layout::c_order(DType::U16, &[1024, 2048]).unwrap();
    let err = Segment::create_in(&fs.0, &big, &Meta::default()).unwrap_err();
    assert_eq!(
        segment_problem(&err),
        &SegmentProblem::NoSpace {
            needed: 4096 + 4 * 1024 * 1024
        }
    );
    assert!(
        err.to_string().contains("no space left to reserve"),
        "{err}"
    );
    assert_eq!(fs.entries(), Vec::<String>::new(), "half-made segment left");
    // The file system is still usable, and so is /dev/shm.
    let small = Segment::create_in(
        &fs.0,
        &Layout::c_order(DType::U8, &[4096]).unwrap(),
        &Meta::default(),
    )
    .unwrap();
    drop(small);
    assert_eq!(fs.entries(), Vec::<String>::new());
    drop(fs);
    assert_fresh_gateway_answers();
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

// =====================================================================================
// References, releases and generations
// =====================================================================================

#[test]
fn a_release_under_way_when_the_host_drops_the_array_is_quiet() {
    let _serial = serial();
    let lines: Arc<Mutex<Vec<OutputLine>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let gw = Gateway::builder(&spec("id=late-release"))
        .output(OutputMode::Callback(Arc::new(move |l: &OutputLine| {
            sink.lock().unwrap().push(l.clone())
        })))
        .handshake_timeout(T)
        .spawn()
        .unwrap();
    // The worker keeps each array until told, then lets it go (RELEASE) and answers.
    let ch = gw
        .remote_exec(
            "import gc\nfor a in channel:\n    channel.receive()\n    del a\n    gc.collect()\n    channel.send('done')",
        )
        .unwrap();
    for _ in 0..20 {
        let a = SharedArray::<u8>::zeros(&[4096]).unwrap();
        ch.send(a.share().unwrap()).unwrap();
        // Dropped while the worker holds it: FORGET goes out, and the worker's RELEASE
        // of it is already on its way or follows.
        drop(a);
        ch.send(Value::from("go")).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("done"));
    }
    // Anything the host prints comes before the answer that follows it.
    let ping = gw.remote_exec("channel.send(1)").unwrap();
    assert_eq!(ping.receive_timeout(T).unwrap().as_i64(), Some(1));
    let got = lines.lock().unwrap().clone();
    assert!(got.is_empty(), "{got:?}");
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn release_of_an_unknown_slot() {
    let _serial = serial();
    let keep = held();
    let lines: Arc<Mutex<Vec<OutputLine>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let gw = Gateway::builder(&spec("id=forged-release"))
        .output(OutputMode::Callback(Arc::new(move |l: &OutputLine| {
            sink.lock().unwrap().push(l.clone())
        })))
        .handshake_timeout(T)
        .spawn()
        .unwrap();
    // The remote code sends RELEASE (type 36) frames by hand: one for a name the host
    // never shared, one for the host's array, which was never shared either.
    let ch = gw
        .remote_exec(
            r#"
from pixgate import _wire, _worker
conn = _worker.current_gateway().conn
for name, generation, access in channel:
    conn.send(36, 0, _wire.dumps_payload((name, generation, access)))
    channel.send("sent")
"#,
        )
        .unwrap();
    let unknown = format!("/pxg-{:x}-{:016x}", std::process::id(), 0xdead_u64);
    for (name, generation, access) in [(unknown.as_str(), 3, 0), (keep.name(), 0, 1)] {
        ch.send(Value::Tuple(vec![
            name.into(),
            Value::from(generation),
            Value::from(access),
        ]))
        .unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("sent"));
    }
    let want = [
        format!(
            "pixgate: release of {unknown} (generation 3, Shared) matches nothing held; ignored"
        ),
        format!(
            "pixgate: release of {} (generation 0, Lent) matches nothing held; ignored",
            keep.name()
        ),
    ];
    common::wait_until(|| lines.lock().unwrap().len() >= 2, "two output lines");
    let got = lines.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    for (line, want) in got.iter().zip(&want) {
        assert_eq!(&line.text, want);
        assert_eq!((line.stream, line.channel), (Stream::Stderr, None));
        assert_eq!(line.gateway, "forged-release");
    }
    // A share that is out stays out when a forged release names the wrong generation.
    let r = keep.share().unwrap();
    ch.send(Value::Tuple(vec![
        keep.name().into(),
        Value::from(keep.generation() as i64 + 1),
        Value::from(0),
    ]))
    .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("sent"));
    common::wait_until(|| lines.lock().unwrap().len() >= 3, "a third line");
    assert_eq!(keep.peer_shares(), 1, "a stale release released a share");
    drop(r);
    assert_answers(&gw);
    ch.close().unwrap();
    exit_cleanly(gw);
    // The reference was made but never sent: it is counted until this process lets go
    // of the array; reading is allowed meanwhile.
    assert_eq!(keep.view().unwrap()[[2, 3]], 11);
    drop(keep);
    assert_no_segments();
}

#[test]
fn stale_generation() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec(
            r#"
import pixgate
for kind, arr in channel:
    channel.send(int(arr.sum()))
    if kind == "give back":
        pixgate.release(arr)
    del arr
"#,
        )
        .unwrap();
    let pool = Pool::builder().class(4096).slots(1).build().unwrap();
    let mut a = pool.take::<u16>(&[4]).unwrap();
    a.view_mut().unwrap().fill(2);
    let first = a.lend().unwrap();
    ch.send(Value::Tuple(vec!["give back".into(), first.clone()]))
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(8));
    common::wait_until(|| !a.is_lent(), "the lend released");
    drop(a);
    // The slot's next use: a new generation, other contents.
    let mut b = pool.take::<u16>(&[4]).unwrap();
    b.view_mut().unwrap().fill(5);
    let Value::Array(old) = &first else {
        unreachable!()
    };
    let (old_name, old_generation) = (old.name().to_string(), old.generation());
    assert_eq!(b.name(), old_name, "the same slot");
    assert!(b.generation() > old_generation);
    // The first use's reference was used up: sending it again is refused before
    // anything is written.
    let err = ch
        .send(Value::Tuple(vec!["keep".into(), first.clone()]))
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Reference(_)), "{err:?}");
    assert!(err.to_string().contains("sent already"), "{err}");
    // A worker that names the first use's generation anyway is refused by its helper
    // (the reference by name, or by token 0 and the slot's offset in its arena).
    let reference = match old.transport() {
        Transport::Named => format!("_wire.ArrayRef({old_name:?}, {old_generation}, 1)"),
        Transport::Anonymous | Transport::ByValue => format!(
            "_wire.DescriptorRef({old_name:?}, 0, {}, {old_generation}, 1)",
            old.offset()
        ),
    };
    let stale = gw
        .remote_exec(&format!(
            r#"
from pixgate import _transfer, _wire
_transfer.install()
try:
    _transfer.import_reference({reference})
except Exception as exc:
    channel.send((type(exc).__name__, str(exc)))
"#
        ))
        .unwrap();
    let answer = stale.receive_timeout(T).unwrap();
    let (kind, message) = (
        answer.as_seq().unwrap()[0].as_str().unwrap().to_string(),
        answer.as_seq().unwrap()[1].as_str().unwrap().to_string(),
    );
    assert_eq!(kind, "LoadError");
    assert!(
        message.contains(&format!(
            "reference of generation {}, segment at generation {} (stale reference)",
            old_generation,
            b.generation()
        )),
        "{message}"
    );
    // ... and by the host: a named slot is opened and found stale; an anonymous one
    // cannot be opened at all, and the reference names a slot this process holds.
    let transport = old.transport();
    let err = SharedArray::<u16>::from_value(first).unwrap_err();
    match transport {
        Transport::Named => assert_eq!(
            convert_message(&err),
            format!(
                "array {} is at generation {}, the reference names {}",
                old_name,
                b.generation(),
                old_generation
            )
        ),
        Transport::Anonymous | Transport::ByValue => {
            assert!(busy_message(&err).contains("already held"), "{err}")
        }
    }
    // The slot's current contents are untouched, and it is still usable.
    assert!(b.view().unwrap().iter().all(|&x| x == 5));
    let again = b.lend().unwrap();
    let ch2 = gw
        .remote_exec("arr = channel.receive()\narr += 1\nchannel.send(arr)")
        .unwrap();
    ch2.send(again).unwrap();
    ch2.receive_timeout(T).unwrap();
    assert!(b.view().unwrap().iter().all(|&x| x == 6));
    assert_answers(&gw);
    assert_intact(&mut keep);
    drop(b);
    drop(pool);
    exit_cleanly(gw);
    drop(keep);
    assert_no_segments();
}

#[test]
fn reference_to_a_segment_the_worker_does_not_own() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(FORGER).unwrap();
    let transport = keep.transport();
    // The worker claims to move the host's own array to the host: adopting it would
    // make a second writable array over the same bytes.
    let forged = |name: &str, generation: u64, access: Access| {
        adopt_from_worker_as(&ch, transport, name, generation, access)
    };
    let err = forged(keep.name(), keep.generation(), Access::Moved).unwrap_err();
    assert_eq!(
        busy_message(&err),
        format!(
            "array {} is already held by this process; an array is adopted once",
            keep.name()
        )
    );
    // A shared reference to it is refused alike. Its arrival would count as the worker
    // giving back a share (docs/PROTOCOL.md §4.12) only if a share had been sent to
    // this worker; with none out it changes nothing.
    let err = forged(keep.name(), keep.generation(), Access::Shared).unwrap_err();
    assert!(busy_message(&err).contains("already held"), "{err}");
    assert_eq!((keep.peer_shares(), keep.is_lent()), (0, false));
    // A segment of nobody's: no such segment (named), no descriptor for it
    // (anonymous).
    let nobody = format!("/pxg-{:x}-{:016x}", std::process::id(), 0xabcd_u64);
    let err = forged(&nobody, 0, Access::Moved).unwrap_err();
    match transport {
        Transport::Named => assert_eq!(segment_problem(&err), &SegmentProblem::NotFound),
        Transport::Anonymous | Transport::ByValue => assert!(
            reference_message(&err).contains("came without a descriptor"),
            "{err}"
        ),
    }
    assert_answers(&gw);
    ch.close().unwrap();
    exit_cleanly(gw);
    assert_intact(&mut keep);
    // The host still owns and removes it.
    let name = keep.name().to_string();
    drop(keep);
    assert!(!common::segment_exists(&name));
    assert_no_segments();
}

#[test]
fn moved_reference_adopted_twice() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec("import pixgate\nchannel.send(pixgate.full((4,), 9, 'uint16'))")
        .unwrap();
    let v = ch.receive_timeout(T).unwrap();
    let mut first = SharedArray::<u16>::from_value(v.clone()).expect("first adoption");
    // A clone of the same value would be a second owner of the same writable memory.
    let err = SharedArray::<u16>::from_value(v).unwrap_err();
    assert!(busy_message(&err).contains("already held"), "{err}");
    assert!(first.view_mut().unwrap().iter().all(|&x| x == 9));
    let worker = gw.pid();
    exit_cleanly(gw);
    let name = first.name().to_string();
    drop(first);
    assert!(!common::segment_exists(&name));
    assert_intact(&mut keep);
    assert_fresh_gateway_answers();
    drop(keep);
    assert_no_segments();
    assert_no_segments_of(worker);
}

// --- references that cannot be sent, moves the host refuses --------------------------

/// Remote code that counts the items it receives (dropping them) and answers "count".
const COUNTING: &str = r#"
n = 0
for item in channel:
    if isinstance(item, str) and item == "count":
        channel.send(n)
    else:
        n += 1
    del item
"#;

fn items_received(ch: &Channel) -> i64 {
    ch.send("count").unwrap();
    ch.receive_timeout(T).unwrap().as_i64().unwrap()
}

#[test]
fn reference_sent_twice() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(COUNTING).unwrap();
    let r = keep.share().unwrap();
    ch.send_value(&r).unwrap();
    let err = ch.send_value(&r.clone()).unwrap_err();
    assert_eq!(
        reference_message(&err),
        format!(
            "reference to array {} cannot be sent: it was sent already (each share, lend or \
             move sends once)",
            keep.name()
        )
    );
    assert_eq!(items_received(&ch), 1, "the second send wrote nothing");
    common::wait_until(|| keep.peer_shares() == 0, "the one share given back");
    drop(r);
    assert_answers(&gw);
    ch.close().unwrap();
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

#[test]
fn forged_reference() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(COUNTING).unwrap();
    // A writable reference to the held array, made from bytes as anyone can write them.
    let mut bytes = vec![pixgate::codec::DUMPFORMAT_VERSION, b'U'];
    bytes.extend_from_slice(&(keep.name().len() as i32).to_be_bytes());
    bytes.extend_from_slice(keep.name().as_bytes());
    bytes.extend_from_slice(&keep.generation().to_be_bytes());
    bytes.extend_from_slice(&[Access::Lent as u8, b'Q']);
    let forged = pixgate::loads(&bytes).unwrap();
    let err = ch.send_value(&forged).unwrap_err();
    assert_eq!(
        reference_message(&err),
        format!(
            "reference to array {} cannot be sent: it was not made by share, lend or \
             into_value in this process (decoded from bytes, or given back by a worker)",
            keep.name()
        )
    );
    assert_eq!(items_received(&ch), 0, "nothing was written");
    assert_eq!((keep.peer_shares(), keep.is_lent()), (0, false), "not lent");
    assert_answers(&gw);
    ch.close().unwrap();
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}

#[test]
fn moved_array_of_the_wrong_dtype() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw
        .remote_exec("import pixgate\nchannel.send(pixgate.zeros((3, 4), dtype='uint16'))")
        .unwrap();
    let v = ch.receive_timeout(T).unwrap();
    let name = match &v {
        Value::Array(r) => r.name().to_string(),
        other => panic!("expected an array, got {other:?}"),
    };
    let err = SharedArray::<f32>::from_value(v).unwrap_err();
    assert_eq!(
        convert_message(&err),
        format!("array {name} holds <u2, expected <f4")
    );
    // Refused, so removed at once: the worker gave it up and the host did not take it
    // (anonymous: the host closed its descriptor; the memory goes once the worker, which
    // may still be finishing the send, lets go too).
    assert!(!std::path::Path::new(&format!("/dev/shm{name}")).exists());
    common::wait_until(
        || !common::segment_exists(&name),
        "the refused array is gone",
    );
    assert_answers(&gw);
    let worker = gw.pid();
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
    assert_no_segments_of(worker);
}

#[test]
fn moved_reference_to_a_segment_of_another_process() {
    let _serial = serial();
    let mut keep = held();
    let gw = common::gateway();
    let ch = gw.remote_exec(FORGER).unwrap();
    let other = victim();
    let err = adopt_from_worker(&ch, other.name(), 0, Access::Moved).unwrap_err();
    assert_eq!(
        reference_message(&err),
        format!(
            "moved reference to array {} names a segment owned by pid {}, not by the worker \
             (pid {}) that moved it",
            other.name(),
            std::process::id(),
            gw.pid()
        )
    );
    // Neither adopted nor removed: still its creator's.
    assert!(other.unlinks_on_drop());
    assert!(std::path::Path::new(&format!("/dev/shm{}", other.name())).exists());
    drop(other);
    assert_answers(&gw);
    ch.close().unwrap();
    exit_cleanly(gw);
    assert_intact(&mut keep);
    drop(keep);
    assert_no_segments();
}
