//! A worker that breaks the protocol (tests/fixtures/fake_worker.py). Every violation is
//! reported as a typed error with the numbers involved. A bad item costs nothing else:
//! the channel delivers the next item, other channels keep working, `exit` reaps the
//! worker. A stream that cannot be resynchronised fails every channel at once, and
//! `exit` still reaps the worker.

mod common;

use common::{T, process_alive, python};
use pixgate::{
    Channel, DecodeErrorKind, Error, ErrorKind, Gateway, GatewayBuilder, OutputMode, Stream,
};
use std::time::Duration;

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_worker.py");

/// A gateway whose "interpreter" is the fake worker in `mode`.
fn fake(mode: &str, extra: &str) -> GatewayBuilder {
    Gateway::builder(&format!(
        "popen//python={} {FAKE}//env:FAKE_MODE={mode}//id=fake-{mode}{extra}",
        python()
    ))
    .output(OutputMode::Capture)
    .handshake_timeout(T)
}

fn spawn(mode: &str) -> Gateway {
    fake(mode, "")
        .spawn()
        .unwrap_or_else(|e| panic!("fake worker in mode {mode}: {e}"))
}

/// Spawns a fake whose handshake is bad; checks the error is a handshake error naming a
/// worker that is already reaped, and returns its reason.
fn handshake_failure(mode: &str) -> String {
    let err = fake(mode, "").spawn().expect_err(mode);
    let ErrorKind::Handshake { pid, reason } = err.kind() else {
        panic!("{mode}: expected a handshake error, got {err:?}");
    };
    assert!(!process_alive(*pid), "{mode}: worker {pid} still runs");
    let text = err.to_string();
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    reason.clone()
}

/// The channel of the first exec, which the fake answers with its script.
fn scripted_channel(gw: &Gateway) -> Channel {
    let ch = gw.remote_exec("ignored by the fake").expect("remote_exec");
    assert_eq!(ch.id(), 1);
    ch
}

fn decode_kind(err: &Error) -> &DecodeErrorKind {
    match err.kind() {
        ErrorKind::Decode(e) => e.kind(),
        _ => panic!("expected a decode error, got {err:?}"),
    }
}

/// A later channel works and the worker exits politely with code 0.
fn assert_gateway_still_serves(gw: &Gateway) {
    let later = gw.remote_exec("ignored by the fake").expect("remote_exec");
    assert_eq!(
        later.receive_timeout(T).expect("later item").as_i64(),
        Some(42)
    );
    let pid = gw.pid();
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(!process_alive(pid));
}

/// After the bad items: 42, then the close, then a working gateway.
fn assert_nothing_else_lost(gw: &Gateway, ch: &Channel) {
    assert_eq!(
        ch.receive_timeout(T).expect("item after").as_i64(),
        Some(42)
    );
    let end = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(end.kind(), ErrorKind::ChannelClosed { id: 1 }),
        "{end:?}"
    );
    assert_gateway_still_serves(gw);
}

// Handshake.

#[test]
fn first_frame_other_than_a_handshake_is_refused() {
    let reason = handshake_failure("bad_handshake_type");
    assert_eq!(
        reason,
        "expected a handshake on channel 0, got message type 4 on channel 0"
    );
}

#[test]
fn undecodable_handshake_is_refused() {
    let reason = handshake_failure("garbage_handshake");
    assert_eq!(reason, "value decode error at byte 0: unknown opcode 0x00");
}

#[test]
fn handshake_without_pid_is_refused() {
    let reason = handshake_failure("handshake_missing_keys");
    assert_eq!(reason, "handshake lacks a valid \"pid\"");
}

#[test]
fn handshake_with_another_protocol_is_refused() {
    let reason = handshake_failure("wrong_protocol");
    assert!(reason.contains("worker speaks protocol 99"), "{reason}");
    assert!(reason.contains("this host speaks protocol 1 "), "{reason}");
}

#[test]
fn installed_helper_of_another_version_is_refused() {
    let reason = handshake_failure("installed_version_mismatch");
    assert!(reason.contains("with helper 9.9.9"), "{reason}");
    assert!(
        reason.ends_with(&format!("with helper {}", pixgate::HELPER_VERSION)),
        "{reason}"
    );
}

#[test]
fn worker_that_exits_before_the_handshake_reports_code_and_stderr() {
    let reason = handshake_failure("silent_then_exit");
    assert!(reason.contains("worker ended before answering"), "{reason}");
    assert!(reason.contains("exit code 5"), "{reason}");
    assert!(reason.contains("fake worker bailing out"), "{reason}");
}

#[test]
fn broken_handshake_frames_are_handshake_errors() {
    let cases = [
        (
            "oversized_handshake",
            "//env:FAKE_BIG=2000",
            ["exceeds", "1024"],
        ),
        (
            "negative_length_handshake",
            "",
            ["negative length -1", "type 32"],
        ),
    ];
    for (mode, extra, words) in cases {
        let err = fake(mode, extra)
            .max_frame_len(1024)
            .spawn()
            .expect_err(mode);
        let ErrorKind::Handshake { pid, reason } = err.kind() else {
            panic!("{mode}: expected a handshake error, got {err:?}");
        };
        assert!(!process_alive(*pid), "{mode}: worker {pid} still runs");
        for w in words {
            assert!(reason.contains(w), "{mode}: {reason:?} lacks {w:?}");
        }
    }
}

// Bad items: each fails alone.

#[test]
fn undecodable_item_fails_alone() {
    let gw = spawn("bad_value");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(
        decode_kind(&err),
        &DecodeErrorKind::UnknownOpcode { opcode: b'Z' }
    );
    assert_eq!(
        err.to_string(),
        "value decode error at byte 0: unknown opcode 'Z'"
    );
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn truncated_item_fails_alone() {
    let gw = spawn("truncated_value");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(
        decode_kind(&err),
        &DecodeErrorKind::Truncated {
            opcode: b'F',
            needed: 4,
            remaining: 2
        }
    );
    assert!(
        err.to_string().contains("needs 4 more bytes, 2 remain"),
        "{err}"
    );
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn item_with_trailing_bytes_fails_alone() {
    let gw = spawn("trailing_bytes");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(
        decode_kind(&err),
        &DecodeErrorKind::TrailingBytes { count: 2 }
    );
    assert_eq!(
        err.to_string(),
        "value decode error at byte 6: 2 bytes after the stop opcode, expected none"
    );
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn list_count_beyond_the_payload_fails_alone() {
    let gw = spawn("hostile_list_count");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    assert_eq!(
        decode_kind(&err),
        &DecodeErrorKind::ListTooLong {
            count: i32::MAX as usize,
            remaining: 0
        }
    );
    assert!(err.to_string().contains("2147483647 items"), "{err}");
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn items_nested_past_the_limit_fail_alone() {
    let gw = spawn("deep_nesting");
    let ch = scripted_channel(&gw);
    for what in ["lists", "dicts", "tuples"] {
        let err = ch.receive_timeout(T).unwrap_err();
        assert_eq!(
            decode_kind(&err),
            &DecodeErrorKind::TooDeep {
                limit: pixgate::codec::MAX_DEPTH
            },
            "{what}"
        );
        assert!(err.to_string().contains("limit of 512"), "{what}: {err}");
    }
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn unknown_message_type_fails_one_item() {
    let gw = spawn("unknown_type");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let ErrorKind::Protocol(msg) = err.kind() else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert_eq!(msg, "unknown message type 99 from worker");
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn message_type_the_worker_may_not_send_fails_one_item() {
    let gw = spawn("unexpected_type");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let ErrorKind::Protocol(msg) = err.kind() else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert!(msg.contains("unexpected message type Handshake"), "{msg}");
    assert_nothing_else_lost(&gw, &ch);
}

#[test]
fn frame_over_the_limit_fails_one_item_and_the_stream_stays_in_sync() {
    let gw = fake("oversized", "").max_frame_len(1024).spawn().unwrap();
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    // 'A', a 4-byte length, 2000 bytes, 'Q'.
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
    assert_nothing_else_lost(&gw, &ch);
}

// Frames for nobody, closes with errors, output.

#[test]
fn data_for_an_unknown_channel_is_dropped_quietly() {
    let gw = spawn("data_for_unknown_channel");
    let ch = scripted_channel(&gw);
    assert_nothing_else_lost(&gw, &ch);
    assert_eq!(gw.take_output(), []);
}

#[test]
fn malformed_output_message_is_reported_on_its_channel_and_skipped() {
    let gw = spawn("output_garbage");
    let ch = scripted_channel(&gw);
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(42));
    let out = gw.take_output();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].channel, Some(1));
    assert_eq!(out[0].stream, Stream::Stderr);
    assert!(
        out[0]
            .text
            .starts_with("pixgate: malformed output message from worker: value decode error"),
        "{:?}",
        out[0].text
    );
    let end = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(end.kind(), ErrorKind::ChannelClosed { id: 1 }),
        "{end:?}"
    );
    assert_gateway_still_serves(&gw);
}

#[test]
fn close_error_with_an_execnet_traceback_is_a_remote_error() {
    let gw = spawn("close_error_str");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.type_name, "ValueError");
    assert_eq!(remote.message, "bad thing");
    assert!(
        remote
            .traceback
            .starts_with("Traceback (most recent call last):\n")
    );
    assert!(
        err.to_string()
            .starts_with("remote ValueError: bad thing\n"),
        "{err}"
    );
    // The close is sticky: every later receive and wait_close reports it.
    assert_eq!(ch.receive_timeout(T).unwrap_err().remote(), Some(remote));
    assert_eq!(ch.wait_close(Some(T)).unwrap_err().remote(), Some(remote));
    assert_gateway_still_serves(&gw);
}

#[test]
fn close_error_with_a_payload_that_is_no_traceback_says_what_it_got() {
    let gw = spawn("close_error_weird");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let ErrorKind::Protocol(msg) = err.kind() else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert_eq!(
        msg,
        "close-error payload must be a str or a (str, str, str) tuple, got int"
    );
    // The channel is closed all the same.
    assert!(ch.is_closed());
    assert_gateway_still_serves(&gw);
}

#[test]
fn oversized_close_error_still_closes_the_channel() {
    let gw = fake("oversized_close_error", "")
        .max_frame_len(1024)
        .spawn()
        .unwrap();
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::FrameTooLarge {
                channel: 1,
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(ch.is_closed());
    assert_eq!(
        ch.wait_close(Some(T)).unwrap_err().to_string(),
        err.to_string()
    );
    assert_gateway_still_serves(&gw);
}

#[test]
fn oversized_output_is_dropped_with_a_note_and_data_flows_on() {
    let gw = fake("oversized_output", "")
        .max_frame_len(1024)
        .spawn()
        .unwrap();
    let ch = scripted_channel(&gw);
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(42));
    let out = gw.take_output();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0]
            .text
            .contains("exceeds the limit of 1024 bytes; output dropped"),
        "{out:?}"
    );
    assert_gateway_still_serves(&gw);
}

#[test]
fn last_message_ends_the_items_as_execnet_means_it() {
    let gw = spawn("last_message");
    let ch = scripted_channel(&gw);
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(42));
    let end = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(end.kind(), ErrorKind::ChannelClosed { id: 1 }),
        "{end:?}"
    );
    assert_gateway_still_serves(&gw);
}

// Streams that cannot be resynchronised.

#[test]
fn negative_frame_length_breaks_the_stream_but_exit_still_reaps() {
    let gw = spawn("negative_length");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let ErrorKind::Protocol(msg) = err.kind() else {
        panic!("expected a protocol error, got {err:?}");
    };
    let want = format!(
        "stream from worker fake-negative_length (pid {}) is corrupt: frame of type 4 on \
         channel 1 has negative length -1",
        gw.pid()
    );
    assert_eq!(msg, &want);
    // Every channel, old or new, now fails at once with the same error.
    assert_eq!(
        ch.receive_timeout(T).unwrap_err().to_string(),
        err.to_string()
    );
    assert_eq!(
        gw.remote_exec("ignored by the fake")
            .unwrap_err()
            .to_string(),
        err.to_string()
    );
    // The worker itself is fine and leaves when asked.
    let pid = gw.pid();
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(!process_alive(pid));
}

#[test]
fn stream_ending_inside_a_frame_is_a_corrupt_stream_and_exit_still_reaps() {
    let gw = spawn("truncated_frame_then_exit");
    let ch = scripted_channel(&gw);
    let err = ch.receive_timeout(T).unwrap_err();
    let ErrorKind::Protocol(msg) = err.kind() else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert!(
        msg.ends_with("is corrupt: stream ended inside a frame (6 bytes of it received)"),
        "{msg}"
    );
    let pid = gw.pid();
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(!process_alive(pid));
}

/// The end of the stream and the worker's exit arrive together, often while the
/// background reader holds the pipe (it takes it after a millisecond without a taker). A
/// receive that sees the exit first still reports what the pipe said: the truncated
/// frame, not the death. The receive starts at a different moment each round so that
/// some rounds meet the race; on a loaded machine several in a hundred did before the
/// receive waited for the reader's report.
#[test]
fn a_stream_ending_as_the_worker_exits_is_reported_before_the_exit() {
    let mut wrong = Vec::new();
    for round in 0..100u64 {
        let gw = spawn("truncated_frame_then_exit");
        std::thread::sleep(Duration::from_millis(3));
        let ch = scripted_channel(&gw);
        std::thread::sleep(Duration::from_micros(round * 150));
        let err = ch.receive_timeout(T).unwrap_err();
        match err.kind() {
            ErrorKind::Protocol(msg)
                if msg.ends_with("stream ended inside a frame (6 bytes of it received)") => {}
            _ => wrong.push(format!("round {round}: {err:?}")),
        }
        let exit = gw.exit(T).expect("exit");
        assert_eq!(exit.code, Some(0), "{exit:?}");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
