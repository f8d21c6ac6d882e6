//! String handling per gateway and per channel (execnet's `reconfigure`) against real
//! workers: the defaults, both directions of a channel, gateway-wide changes that reach
//! only later channels, and a worker that reconfigures its own channel.

mod common;

use common::{T, gateway};
use pixgate::{ErrorKind, LoadOptions, Value};

/// Remote code that writes one raw channel payload holding every string opcode:
/// `(py2 str b"\xe9", py3 str "é", unicode "é", bytes b"\xe9")` (the host's values cannot
/// produce `M` or `S`, execnet on Python 2 does) when it receives 1 (twice for 2),
/// and answers anything else with its type name.
const STRINGS_THEN_TYPES: &str = r#"
raw = (b"M\x00\x00\x00\x01\xe9N\x00\x00\x00\x02\xc3\xa9S\x00\x00\x00\x02\xc3\xa9"
       b"A\x00\x00\x00\x01\xe9@\x00\x00\x00\x04Q")
for x in channel:
    if x == 1 or x == 2:
        for _ in range(x):
            channel._gateway.conn.send(4, channel.id, raw)
    else:
        channel.send(type(x).__name__)
"#;

fn text() -> Value {
    Value::from("é")
}

fn latin1() -> Value {
    Value::bytes(*b"\xe9")
}

fn utf8() -> Value {
    utf8_of("é")
}

fn utf8_of(s: &str) -> Value {
    Value::bytes(s.as_bytes().to_vec())
}

/// What the raw payload loads as under `options` (as execnet 2.x on Python 3).
fn strings_as(options: LoadOptions) -> Value {
    Value::Tuple(vec![
        if options.py2str_as_py3str {
            text()
        } else {
            latin1()
        },
        if options.py3str_as_py2str {
            utf8()
        } else {
            text()
        },
        text(),
        latin1(),
    ])
}

/// A type name the worker sent, as the host loads it under `options`.
fn name(options: LoadOptions, name: &str) -> Value {
    if options.py3str_as_py2str {
        utf8_of(name)
    } else {
        Value::from(name)
    }
}

fn all_options() -> [LoadOptions; 4] {
    [
        LoadOptions::new(false, false),
        LoadOptions::new(true, false),
        LoadOptions::new(false, true),
        LoadOptions::new(true, true),
    ]
}

#[test]
fn channels_load_py2_strings_as_text_by_default() {
    let gw = gateway();
    assert_eq!(gw.load_options(), LoadOptions::CHANNEL);
    let ch = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
    assert_eq!(ch.load_options(), LoadOptions::CHANNEL);
    ch.send(1).unwrap();
    assert_eq!(
        ch.receive_timeout(T).unwrap(),
        strings_as(LoadOptions::CHANNEL)
    );
    // The worker's side: a str stays a str.
    ch.send("é").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from("str"));
}

#[test]
fn channel_reconfigure_applies_to_both_directions_of_that_channel() {
    let gw = gateway();
    for options in all_options() {
        let ch = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
        ch.reconfigure(options).unwrap();
        assert_eq!(ch.load_options(), options);
        ch.send(1).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap(), strings_as(options));
        // The RECONFIGURE reached the worker before this item: a str arrives as bytes
        // exactly when py3str_as_py2str is set.
        ch.send("é").unwrap();
        let want = if options.py3str_as_py2str {
            "bytes"
        } else {
            "str"
        };
        assert_eq!(
            ch.receive_timeout(T).unwrap(),
            name(options, want),
            "{options:?}"
        );
        ch.close().unwrap();
        ch.wait_close(Some(T)).unwrap();
    }
    assert_eq!(gw.load_options(), LoadOptions::CHANNEL);
}

#[test]
fn gateway_reconfigure_applies_to_channels_created_after_it() {
    let gw = gateway();
    let before = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
    let options = LoadOptions::new(false, true);
    gw.reconfigure(options).unwrap();
    assert_eq!(gw.load_options(), options);
    let after = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
    assert_eq!(before.load_options(), LoadOptions::CHANNEL);
    assert_eq!(after.load_options(), options);
    for (ch, want, worker_sees) in [
        (&before, LoadOptions::CHANNEL, "str"),
        (&after, options, "bytes"),
    ] {
        ch.send(1).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap(), strings_as(want));
        ch.send("é").unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap(), name(want, worker_sees));
    }
    // A channel's own setting outlives later gateway changes.
    after.reconfigure(LoadOptions::LOADS).unwrap();
    gw.reconfigure(LoadOptions::CHANNEL).unwrap();
    assert_eq!(after.load_options(), LoadOptions::LOADS);
    assert_eq!(before.load_options(), LoadOptions::CHANNEL);
    after.send(1).unwrap();
    assert_eq!(
        after.receive_timeout(T).unwrap(),
        strings_as(LoadOptions::LOADS)
    );
}

#[test]
fn items_that_arrived_before_a_reconfigure_keep_their_decoding() {
    let gw = gateway();
    let ch = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
    ch.send(2).unwrap();
    let first = ch.receive_timeout(T).unwrap();
    // The second item is decoded when it arrives (likely already), so only what
    // arrives after the call is sure to use the new options.
    ch.reconfigure(LoadOptions::LOADS).unwrap();
    let second = ch.receive_timeout(T).unwrap();
    assert_eq!(first, strings_as(LoadOptions::CHANNEL));
    assert!(
        second == strings_as(LoadOptions::CHANNEL) || second == strings_as(LoadOptions::LOADS),
        "{second}"
    );
    ch.send(1).unwrap();
    assert_eq!(
        ch.receive_timeout(T).unwrap(),
        strings_as(LoadOptions::LOADS)
    );
}

#[test]
fn remote_code_reconfigures_its_channel_on_both_sides() {
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "channel.reconfigure(py2str_as_py3str=False, py3str_as_py2str=True)\n\
             channel.send('é')\n\
             channel.send(type(channel.receive()).__name__)",
        )
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), utf8());
    assert_eq!(ch.load_options(), LoadOptions::new(false, true));
    ch.send("é").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), utf8_of("bytes"));
    ch.wait_close(Some(T)).unwrap();
}

#[test]
fn malformed_reconfigure_from_the_worker_is_reported_and_changes_nothing() {
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "channel._gateway.conn.send(1, channel.id, b'F\\x00\\x00\\x00\\x01Q')\n\
             channel.send('é')",
        )
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), text());
    assert_eq!(ch.load_options(), LoadOptions::CHANNEL);
    ch.wait_close(Some(T)).unwrap();
    let lines = gw.take_output();
    assert!(
        lines.iter().any(|l| l.channel == Some(ch.id())
            && l.text
                == "pixgate: malformed reconfigure message from worker: \
                    expected (bool, bool), got int"),
        "{lines:?}"
    );
}

#[test]
fn reconfigure_after_the_worker_is_gone_fails() {
    let gw = gateway();
    let ch = gw.remote_exec(STRINGS_THEN_TYPES).unwrap();
    gw.kill().unwrap();
    let e = gw.reconfigure(LoadOptions::LOADS).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::GatewayClosed { .. } | ErrorKind::WorkerDied(_)
        ),
        "{e}"
    );
    assert_eq!(gw.load_options(), LoadOptions::CHANNEL);
    let e = ch.reconfigure(LoadOptions::LOADS).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::GatewayClosed { .. } | ErrorKind::WorkerDied(_)
        ),
        "{e}"
    );
}
