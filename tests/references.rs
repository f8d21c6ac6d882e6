//! References are single-use capabilities, and nothing the host refuses or drops stays
//! (in /dev/shm, or held anywhere with the anonymous transport): every send claims one
//! reference made by `share`, `lend` or `into_value`; a second send, a forged reference
//! or a reference from elsewhere fails before anything is written; the array's state
//! follows what was really sent; and a moved segment the host does not adopt is
//! unlinked (named) or let go of (anonymous) at once.

mod common;

use common::{T, assert_no_segments, gateway, segment_exists, serial, wait_until};
use pixgate::segment::Transport;
use pixgate::{Access, Channel, ErrorKind, Gateway, SharedArray, Value};

/// Counts the arrays it receives (dropping them at once); answers "count" with the
/// count, "make" with a moved `pixgate.zeros` array of the given shape, "hold" items
/// are kept until "drop".
const COUNTER: &str = r#"
import gc, sys, pixgate, numpy as np
n = 0
held = []
for item in channel:
    if isinstance(item, tuple) and item and item[0] == "make":
        channel.send(pixgate.zeros(item[1], dtype=item[2]))
    elif isinstance(item, tuple) and item and item[0] == "hold":
        held.append(item[1])
        n += 1
        channel.send("held")
    elif isinstance(item, str) and item == "drop":
        held.clear()
        channel.send("dropped")
    elif isinstance(item, str) and item == "count":
        # Everything handled so far is settled: without reference counting (PyPy)
        # what was dropped goes when the collector runs, so run it first.
        for _ in range(0 if sys.implementation.name == "cpython" else 4):
            gc.collect()
        channel.send(n)
    else:
        n += 1
    del item
"#;

fn count(ch: &Channel) -> i64 {
    ch.send("count").unwrap();
    ch.receive_timeout(T).unwrap().as_i64().unwrap()
}

/// True while the segment exists, named or anonymous.
fn exists(name: &str) -> bool {
    segment_exists(name)
}

/// The host let go of `name` at once; with the anonymous transport its memory goes when
/// the worker, which may be finishing the send that moved it here, lets go too.
fn gone(name: &str) -> bool {
    let here = format!("/memfd:{}", name.trim_start_matches('/'));
    assert!(
        !common::anonymous_objects_of("self")
            .iter()
            .any(|l| l.starts_with(&here)),
        "{name} is still held by the host"
    );
    wait_until(|| !segment_exists(name), "the segment is gone");
    true
}

fn reference_kind(err: &pixgate::Error) -> &str {
    match err.kind() {
        ErrorKind::Reference(m) => m,
        other => panic!("expected a reference error, got {other:?}"),
    }
}

/// Waits until the array is back from the worker.
fn settled<T: pixgate::Element>(a: &SharedArray<T>) {
    wait_until(
        || !a.is_lent() && a.peer_shares() == 0,
        "references given back",
    );
}

#[test]
fn a_reference_sent_twice_is_refused_before_anything_is_written() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let r = a.share().unwrap();
    assert!(matches!(&r, Value::Array(x) if x.is_sendable()));
    let clone = r.clone();
    ch.send_value(&r).unwrap();
    assert!(matches!(&r, Value::Array(x) if !x.is_sendable()), "used up");
    let err = ch.send_value(&r).unwrap_err();
    assert!(reference_kind(&err).contains("sent already"), "{err}");
    let err = ch.send_value(&clone).unwrap_err();
    assert!(reference_kind(&err).contains("sent already"), "{err}");
    // Inside another value, and on another gateway, the same.
    let err = ch
        .send_value(&Value::Tuple(vec![1.into(), clone.clone()]))
        .unwrap_err();
    reference_kind(&err);
    let other = gateway();
    let och = other.remote_exec(COUNTER).unwrap();
    reference_kind(&och.send_value(&clone).unwrap_err());
    assert_eq!(count(&ch), 1, "only the first send was written");
    assert_eq!(count(&och), 0);
    settled(&a);
    drop((r, clone, a));
    ch.close().unwrap();
    och.close().unwrap();
    gw.exit(T).unwrap();
    other.exit(T).unwrap();
    assert_no_segments();
}

/// The attack the rules close: a lend cloned and sent twice would let the first
/// release give Rust a writable view while the second mapping keeps writing.
#[test]
fn a_cloned_lend_cannot_reach_a_second_mapping() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let mut a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let lent = a.lend().unwrap();
    let twin = lent.clone();
    ch.send(Value::Tuple(vec!["hold".into(), lent])).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("held"));
    let second = gw.remote_exec(COUNTER).unwrap();
    let err = second
        .send(Value::Tuple(vec!["hold".into(), twin]))
        .unwrap_err();
    reference_kind(&err);
    assert_eq!(count(&second), 0, "the second worker got nothing");
    assert!(a.view_mut().is_err(), "still lent to the first");
    ch.send("drop").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("dropped"));
    settled(&a);
    a.view_mut().unwrap().fill(3);
    ch.close().unwrap();
    second.close().unwrap();
    gw.exit(T).unwrap();
    drop(a);
    assert_no_segments();
}

#[test]
fn the_same_reference_twice_in_one_value_is_refused() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let mut a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let r = a.share().unwrap();
    let both = Value::List(vec![r.clone(), r]);
    let err = ch.send_value(&both).unwrap_err();
    assert!(reference_kind(&err).contains("twice"), "{err}");
    assert_eq!(count(&ch), 0);
    // Nothing was sent, so once the value is gone the array is as before.
    assert_eq!(a.peer_shares(), 1, "the unsent reference still counts");
    drop(both);
    a.view_mut().unwrap().fill(1);
    // Two shares made separately are two references: both go.
    let pair = Value::List(vec![a.share().unwrap(), a.share().unwrap()]);
    ch.send_value(&pair).unwrap();
    assert_eq!(count(&ch), 1);
    drop(pair);
    settled(&a);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    drop(a);
    assert_no_segments();
}

#[test]
fn references_decoded_from_bytes_cannot_be_sent() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let mut a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let share = a.share().unwrap();
    let copy = pixgate::loads(&pixgate::dumps(&share).unwrap()).unwrap();
    assert_eq!(copy, share, "the same description");
    drop(share);
    let err = ch.send_value(&copy).unwrap_err();
    assert!(reference_kind(&err).contains("not made by"), "{err}");
    // A writable reference forged from bytes changes nothing either.
    let mut bytes = pixgate::dumps(&copy).unwrap();
    let at = bytes.len() - 2;
    bytes[at] = Access::Lent as u8;
    let forged = pixgate::loads(&bytes).unwrap();
    assert!(matches!(&forged, Value::Array(r) if r.access() == Access::Lent));
    reference_kind(&ch.send_value(&forged).unwrap_err());
    assert_eq!(count(&ch), 0, "nothing reached the worker");
    assert!(!a.is_lent() && a.peer_shares() == 0);
    a.view_mut().unwrap().fill(9);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    drop(a);
    assert_no_segments();
}

#[test]
fn a_reference_received_from_a_worker_cannot_be_sent_on() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    ch.send(Value::Tuple(vec![
        "make".into(),
        vec![4i64].into(),
        "<u2".into(),
    ]))
    .unwrap();
    let moved = ch.receive_timeout(T).unwrap();
    let other = gw.remote_exec(COUNTER).unwrap();
    let err = other.send_value(&moved).unwrap_err();
    assert!(reference_kind(&err).contains("adopt it"), "{err}");
    assert_eq!(count(&other), 0);
    // Adopted, it is an array of this process like any other.
    let mut a = SharedArray::<u16>::from_value(moved).unwrap();
    other.send(a.lend().unwrap()).unwrap();
    assert_eq!(count(&other), 1);
    settled(&a);
    a.view_mut().unwrap().fill(2);
    ch.close().unwrap();
    other.close().unwrap();
    gw.exit(T).unwrap();
    drop(a);
    assert_no_segments();
}

#[test]
fn an_unsent_reference_is_taken_back_when_dropped() {
    let _serial = serial();
    let mut a = SharedArray::<f32>::zeros(&[2, 3]).unwrap();
    let lent = a.lend().unwrap();
    assert!(a.view().is_err() && a.is_lent());
    drop(lent);
    assert!(!a.is_lent());
    let s1 = a.share().unwrap();
    let s2 = s1.clone();
    assert_eq!(a.peer_shares(), 1, "a clone is the same reference");
    assert!(a.view_mut().is_err());
    drop(s1);
    assert!(a.view_mut().is_err(), "the clone still holds it");
    drop(s2);
    a.view_mut().unwrap().fill(1.0);
    drop(a);
    assert_no_segments();
}

#[test]
fn a_failed_send_leaves_the_reference_pending() {
    let _serial = serial();
    let gw = gateway();
    let closed = gw.remote_exec(COUNTER).unwrap();
    closed.close().unwrap();
    let mut a = SharedArray::<u8>::zeros(&[16]).unwrap();
    let lent = a.lend().unwrap();
    let err = closed.send_value(&lent).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ChannelClosed { .. }),
        "{err}"
    );
    assert!(
        matches!(&lent, Value::Array(r) if r.is_sendable()),
        "not used up"
    );
    assert!(a.view().is_err(), "still lent to whoever gets it");
    let ch = gw.remote_exec(COUNTER).unwrap();
    ch.send_value(&lent).unwrap();
    assert_eq!(count(&ch), 1);
    settled(&a);
    drop(lent);
    a.view_mut().unwrap().fill(4);
    // A send to a dead worker takes the reference back too.
    let doomed = pixgate::Gateway::builder(&common::spec(""))
        .output(pixgate::OutputMode::Capture)
        .spawn()
        .unwrap();
    let dch = doomed.remote_exec(COUNTER).unwrap();
    doomed.kill().unwrap();
    let r = a.lend().unwrap();
    assert!(dch.send_value(&r).is_err());
    drop(r);
    assert!(!a.is_lent());
    ch.close().unwrap();
    gw.exit(T).unwrap();
    drop(a);
    assert_no_segments();
}

#[test]
fn a_reference_of_a_dropped_array_cannot_be_sent() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let name = a.name().to_string();
    let r = a.share().unwrap();
    drop(a);
    assert!(!exists(&name), "the array's segment went with it");
    let err = ch.send_value(&r).unwrap_err();
    assert!(reference_kind(&err).contains("dropped"), "{err}");
    assert_eq!(count(&ch), 0);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    // The unsent reference holds an anonymous segment's memory until it goes.
    drop(r);
    assert_no_segments();
}

#[test]
fn an_unsent_move_unlinks_its_segment_when_dropped() {
    let _serial = serial();
    let a = SharedArray::<u16>::zeros(&[8]).unwrap();
    let name = a.name().to_string();
    let moved = a.into_value().unwrap();
    assert!(exists(&name), "this process's until it is sent");
    drop(moved);
    assert!(!exists(&name), "dropped unsent: unlinked");
    assert_no_segments();
}

#[test]
fn a_move_is_sent_once() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let mut a = SharedArray::<u16>::zeros(&[8]).unwrap();
    a.view_mut().unwrap().fill(5);
    let name = a.name().to_string();
    let moved = a.into_value().unwrap();
    let twin = moved.clone();
    ch.send_value(&moved).unwrap();
    reference_kind(&ch.send_value(&twin).unwrap_err());
    assert_eq!(count(&ch), 1);
    drop((moved, twin));
    // The worker owned it and dropped it: gone.
    wait_until(|| !exists(&name), "the worker unlinked what it received");
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

// --- what the host refuses or drops is unlinked at once ------------------------------

fn made_by_worker(ch: &Channel, dtype: &str) -> (Value, String) {
    ch.send(Value::Tuple(vec![
        "make".into(),
        vec![3i64, 4].into(),
        dtype.into(),
    ]))
    .unwrap();
    let v = ch.receive_timeout(T).unwrap();
    let name = match &v {
        Value::Array(r) => {
            assert_eq!(r.access(), Access::Moved);
            r.name().to_string()
        }
        other => panic!("expected a moved array, got {other:?}"),
    };
    assert!(exists(&name));
    (v, name)
}

#[test]
fn a_moved_array_dropped_unadopted_is_unlinked_at_once() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let (v, name) = made_by_worker(&ch, "<u2");
    let clone = v.clone();
    drop(v);
    assert!(exists(&name), "a clone still holds it");
    drop(clone);
    assert!(gone(&name), "unlinked when the last clone went");
    // Inside a bigger value, the same.
    let (v, name) = made_by_worker(&ch, "<f4");
    drop(Value::List(vec![Value::from(1), v]));
    assert!(gone(&name));
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments_of(&gw);
}

#[test]
fn a_moved_array_of_the_wrong_dtype_is_unlinked_when_refused() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let (v, name) = made_by_worker(&ch, "<u2");
    let err = SharedArray::<f32>::from_value(v).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Convert(_)), "{err}");
    assert!(gone(&name), "refused: unlinked at once");
    // Adopted with the right type, it lives until the array is dropped.
    let (v, name) = made_by_worker(&ch, "<u2");
    let a = SharedArray::<u16>::from_value(v).unwrap();
    assert!(exists(&name));
    drop(a);
    assert!(gone(&name));
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments_of(&gw);
}

#[test]
fn moved_arrays_nobody_receives_are_unlinked() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(COUNTER).unwrap();
    let (v, first) = made_by_worker(&ch, "<u1");
    drop(v);
    assert!(gone(&first));
    // Queued on a channel the host drops, or arriving after it dropped it.
    let sender = gw
        .remote_exec(
            "import pixgate\nnames = []\nfor i in range(4):\n    a = pixgate.zeros((64,))\n    \
             names.append(pixgate._array.segment_of(a)[0].name)\n    channel.send(a)\n    \
             del a\nchannel.send(names)",
        )
        .unwrap();
    let names = loop {
        match sender.receive_timeout(T).unwrap() {
            Value::List(ref items) => {
                break items
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect::<Vec<_>>();
            }
            Value::Array(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(names.len(), 4);
    wait_until(
        || names.iter().all(|n| !exists(n)),
        "received and dropped: gone",
    );
    let late = gw
        .remote_exec("import pixgate, time\ntime.sleep(0.2)\nfor i in range(3):\n    channel.send(pixgate.zeros((32,)))")
        .unwrap();
    drop(late);
    // Whatever the worker's segments were, none is left once its frames were read.
    wait_until(
        || worker_segments(&gw).is_empty(),
        "the late arrays were unlinked",
    );
    assert_eq!(
        count(&ch),
        0,
        "the gateway and the first channel still work"
    );
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments_of(&gw);
}

/// The segments the worker made that still exist: in /dev/shm under its pid, or
/// anonymous ones of its that the host or the worker holds.
fn worker_segments(gw: &Gateway) -> Vec<String> {
    let prefix = format!("/pxg-{:x}-", gw.pid());
    common::segments_of(&[std::process::id(), gw.pid()])
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn assert_no_segments_of(gw: &Gateway) {
    assert_no_segments();
    let left = worker_segments(gw);
    assert!(left.is_empty(), "the worker's segments left: {left:?}");
}

#[test]
fn a_moved_reference_to_a_segment_the_worker_does_not_own_is_left_alone() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "from pixgate import _wire\nfor name in channel:\n    \
             channel.send(_wire.ArrayRef(name, 0, _wire.MOVED))",
        )
        .unwrap();
    // An array of this process, and a segment no array holds. Named: the worker names
    // them in `U` references, which a worker can only make for a named segment.
    let mine = SharedArray::<u16>::zeros_in(Transport::Named, &[4]).unwrap();
    let loose = pixgate::segment::Segment::create(
        &pixgate::Layout::c_order(pixgate::DType::U8, &[4]).unwrap(),
        &pixgate::Meta::default(),
    )
    .unwrap();
    for name in [mine.name(), loose.name()] {
        ch.send(name).unwrap();
        let v = ch.receive_timeout(T).unwrap();
        drop(v);
        assert!(exists(name), "{name}: not the worker's to give away");
    }
    // Nor is it adopted: the worker gives away only what it owns.
    ch.send(loose.name()).unwrap();
    let err = SharedArray::<u8>::from_value(ch.receive_timeout(T).unwrap()).unwrap_err();
    assert!(reference_kind(&err).contains("owned by pid"), "{err}");
    assert!(exists(loose.name()));
    assert!(loose.unlinks_on_drop(), "still this process's");
    ch.close().unwrap();
    gw.exit(T).unwrap();
    drop((mine, loose));
    assert_no_segments();
}

// --- any sequence of operations leaves nothing behind ------------------------------

mod sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Create,
        Share(usize),
        Lend(usize),
        Move(usize),
        Send(usize),
        SendTwice(usize),
        DropRef(usize),
        DropArray(usize),
        WorkerMakes,
        Adopt(usize, bool),
        Write(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Create),
            2 => any::<usize>().prop_map(Op::Share),
            2 => any::<usize>().prop_map(Op::Lend),
            1 => any::<usize>().prop_map(Op::Move),
            3 => any::<usize>().prop_map(Op::Send),
            1 => any::<usize>().prop_map(Op::SendTwice),
            2 => any::<usize>().prop_map(Op::DropRef),
            1 => any::<usize>().prop_map(Op::DropArray),
            2 => Just(Op::WorkerMakes),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Op::Adopt(i, b)),
            1 => any::<usize>().prop_map(Op::Write),
        ]
    }

    /// What the host and the worker hold, of either transport.
    fn segments_of(pids: &[u32]) -> Vec<String> {
        common::segments_of(pids)
    }

    fn name_of(v: &Value) -> String {
        match v {
            Value::Array(r) => r.name().to_string(),
            other => panic!("not a reference: {other:?}"),
        }
    }

    fn run(ops: &[Op]) {
        let gw = gateway();
        let ch = gw.remote_exec(COUNTER).unwrap();
        let pids = [std::process::id(), gw.pid()];
        let mut arrays: Vec<SharedArray<u16>> = Vec::new();
        let mut refs: Vec<Value> = Vec::new();
        for op in ops {
            let pick = |i: usize, n: usize| (n > 0).then(|| i % n);
            match *op {
                Op::Create => arrays.push(SharedArray::zeros(&[16]).unwrap()),
                Op::Share(i) => {
                    if let Some(i) = pick(i, arrays.len()) {
                        if let Ok(r) = arrays[i].share() {
                            refs.push(r);
                        }
                    }
                }
                Op::Lend(i) => {
                    if let Some(i) = pick(i, arrays.len()) {
                        if let Ok(r) = arrays[i].lend() {
                            refs.push(r);
                        }
                    }
                }
                Op::Move(i) => {
                    if let Some(i) = pick(i, arrays.len()) {
                        let a = arrays.remove(i);
                        // Refused while references are out: the array goes back.
                        if let Ok(r) = a.into_value() {
                            refs.push(r);
                        }
                    }
                }
                Op::Send(j) | Op::SendTwice(j) => {
                    if let Some(j) = pick(j, refs.len()) {
                        let first = ch.send_value(&refs[j]);
                        if matches!(op, Op::SendTwice(_)) && first.is_ok() {
                            assert!(matches!(
                                ch.send_value(&refs[j]).unwrap_err().kind(),
                                ErrorKind::Reference(_)
                            ));
                        }
                    }
                }
                Op::DropRef(j) => {
                    if let Some(j) = pick(j, refs.len()) {
                        refs.remove(j);
                    }
                }
                Op::DropArray(i) => {
                    if let Some(i) = pick(i, arrays.len()) {
                        arrays.remove(i);
                    }
                }
                Op::WorkerMakes => {
                    ch.send(Value::Tuple(vec![
                        "make".into(),
                        vec![16i64].into(),
                        "<u2".into(),
                    ]))
                    .unwrap();
                    refs.push(ch.receive_timeout(T).unwrap());
                }
                Op::Adopt(j, right) => {
                    if let Some(j) = pick(j, refs.len()) {
                        let v = refs.remove(j);
                        if right {
                            if let Ok(a) = SharedArray::<u16>::from_value(v) {
                                arrays.push(a);
                            }
                        } else {
                            assert!(SharedArray::<f64>::from_value(v).is_err());
                        }
                    }
                }
                Op::Write(i) => {
                    if let Some(i) = pick(i, arrays.len()) {
                        if let Ok(mut view) = arrays[i].view_mut() {
                            view.fill(7);
                        }
                    }
                }
            }
            // The worker has handled everything sent so far (and given back what it
            // dropped): the segments that exist are only what a live handle here needs.
            count(&ch);
            let mut live: Vec<String> = arrays.iter().map(|a| a.name().to_string()).collect();
            live.extend(refs.iter().map(name_of));
            for seg in segments_of(&pids) {
                assert!(
                    live.contains(&seg),
                    "{seg} exists but nothing live holds it, after {op:?} in {ops:?}"
                );
            }
        }
        drop(refs);
        drop(arrays);
        count(&ch);
        assert_eq!(segments_of(&pids), Vec::<String>::new(), "after {ops:?}");
        ch.close().unwrap();
        gw.exit(T).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn any_sequence_of_sends_drops_and_errors_leaves_nothing_behind(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let _serial = serial();
            run(&ops);
            assert_no_segments();
        }
    }
}
