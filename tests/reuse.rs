//! A worker reuses the anonymous segments of arrays it made once nobody uses them: its
//! own arrays' when they are gone, a moved result's once the host let go of it
//! (docs/SEGMENT_FORMAT.md §10, docs/ARCHITECTURE.md "Result memory"). Never one that
//! anybody still maps for an array.
#![cfg(target_os = "linux")]

mod common;

use common::{T, anonymous_objects_of, assert_no_segments, gateway, serial, wait_until};
use pixgate::{Channel, Gateway, SharedArray, Value};

const MIB: i64 = 1 << 20;

/// Answers `(command, argument)`; see each branch.
const MAKER: &str = r#"
import pixgate
from pixgate import _array, _segment

held = {}
for cmd, arg in channel:
    if cmd == "make":
        # A new uint8 array of `nbytes`, filled with `value` (kept alive if `keep`):
        # (segment name, generation, the largest byte it held before the fill).
        nbytes, value, keep = arg
        a = pixgate.empty(nbytes, "uint8")
        seg = _array.segment_of(a)[0]
        before = int(a.max()) if a.size else 0
        a[...] = value
        channel.send((seg.name, seg.generation, before))
        if keep:
            held[seg.name] = a
        del a, seg
    elif cmd == "zeros":
        a = pixgate.zeros(arg, "uint8")
        channel.send((_array.segment_of(a)[0].name, int(a.max())))
        del a
    elif cmd == "send":
        nbytes, value = arg
        a = pixgate.empty(nbytes, "uint8")
        a[...] = value
        channel.send(a)
        del a
    elif cmd == "drop":
        held.clear()
        channel.send(None)
    elif cmd == "kept":
        # (name, size, moved out, state word) of every kept object.
        out = []
        for name, size, moved in _segment.kept():
            rec = [r for r in _segment._kept if r.name == name][0]
            out.append((name, size, moved, _segment._U32.unpack_from(rec.mm, 80)[0]))
        channel.send(out)
    elif cmd == "limit":
        try:
            channel.send(pixgate.reuse_limit(arg))
        except ValueError as e:
            channel.send("ValueError: " + str(e))
"#;

fn ask(ch: &Channel, cmd: &str, arg: Value) -> Value {
    ch.send(Value::Tuple(vec![cmd.into(), arg])).unwrap();
    ch.receive_timeout(T).unwrap()
}

/// (name, generation, the largest byte the new array held before it was filled).
fn make(ch: &Channel, nbytes: i64, value: i64, keep: bool) -> (String, i64, i64) {
    let arg = Value::Tuple(vec![nbytes.into(), value.into(), keep.into()]);
    let r = ask(ch, "make", arg);
    let t = r.as_seq().unwrap();
    (
        t[0].as_str().unwrap().to_string(),
        t[1].as_i64().unwrap(),
        t[2].as_i64().unwrap(),
    )
}

/// (name, size, moved out, state word) of what the worker keeps.
fn kept(ch: &Channel) -> Vec<(String, i64, bool, i64)> {
    let r = ask(ch, "kept", Value::None);
    r.as_seq()
        .unwrap()
        .iter()
        .map(|e| {
            let t = e.as_seq().unwrap();
            (
                t[0].as_str().unwrap().to_string(),
                t[1].as_i64().unwrap(),
                t[2].as_bool().unwrap(),
                t[3].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Drops what the worker holds, closes the channel, ends the worker, and checks that
/// nothing is left.
fn finish(ch: &Channel, gw: &Gateway) {
    assert!(ask(ch, "drop", Value::None).is_none());
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

fn receive_moved(ch: &Channel, nbytes: i64, value: i64) -> SharedArray<u8> {
    let arg = Value::Tuple(vec![nbytes.into(), value.into()]);
    ch.send(Value::Tuple(vec!["send".into(), arg])).unwrap();
    SharedArray::<u8>::from_value(ch.receive_timeout(T).unwrap()).unwrap()
}

#[test]
fn an_array_dropped_in_the_worker_gives_its_segment_to_the_next_of_its_size() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(MAKER).unwrap();
    let (first, generation, before) = make(&ch, 2 * MIB, 7, false);
    assert_eq!((generation, before), (0, 0), "a new segment reads as zeros");
    let (again, generation, before) = make(&ch, 2 * MIB, 9, false);
    assert_eq!(again, first, "the dropped array's segment is reused");
    assert!(generation > 0, "a reused header has a new generation");
    assert_eq!(
        before, 7,
        "empty() holds what the array before left, as numpy's does"
    );
    let z = ask(&ch, "zeros", (2 * MIB).into());
    let z = z.as_seq().unwrap();
    assert_eq!(z[0].as_str(), Some(first.as_str()), "zeros() reuses it too");
    assert_eq!(z[1].as_i64(), Some(0), "and clears it");

    // A live array's segment is never handed out again.
    let (alive, ..) = make(&ch, 2 * MIB, 1, true);
    assert_eq!(alive, first);
    let (other, _, before) = make(&ch, 2 * MIB, 2, true);
    assert_ne!(other, alive, "the segment of a live array is not reused");
    assert_eq!(before, 0);
    // Reuse is by size: another size gets a new segment; below 1 MiB nothing is kept.
    let (bigger, ..) = make(&ch, 3 * MIB, 3, false);
    assert!(bigger != first && bigger != other);
    let (small, ..) = make(&ch, MIB / 2, 3, false);
    let (small2, ..) = make(&ch, MIB / 2, 3, false);
    assert_ne!(small, small2, "small arrays are not kept");
    assert!(kept(&ch).iter().all(|k| k.0 != small && k.0 != small2));
    assert!(ask(&ch, "drop", Value::None).is_none());
    let names: Vec<String> = kept(&ch).into_iter().map(|k| k.0).collect();
    assert!(names.contains(&alive) && names.contains(&other) && names.contains(&bigger));
    assert!(
        kept(&ch).iter().all(|k| !k.2 && k.3 == 4),
        "kept ones read as free (state 4): {:?}",
        kept(&ch)
    );
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_moved_result_is_reused_only_after_the_host_lets_go_of_it() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(MAKER).unwrap();
    let mut x = receive_moved(&ch, 2 * MIB, 5);
    let moved = x.name().to_string();
    assert!(x.view().unwrap().iter().all(|&v| v == 5));
    // While the host holds it, new arrays of its size get other segments, and what they
    // write never reaches the host's array.
    for value in [6, 7, 8] {
        let (name, ..) = make(&ch, 2 * MIB, value, true);
        assert_ne!(name, moved, "the host's array is not reused under it");
    }
    assert!(ask(&ch, "drop", Value::None).is_none());
    for value in [9, 10] {
        let (name, ..) = make(&ch, 2 * MIB, value, false);
        assert_ne!(name, moved);
    }
    assert!(
        x.view().unwrap().iter().all(|&v| v == 5),
        "the host's bytes stay"
    );
    let out: Vec<_> = kept(&ch).into_iter().filter(|k| k.0 == moved).collect();
    assert_eq!(out.len(), 1, "the worker keeps the moved one, out: {out:?}");
    assert!(
        out[0].2 && out[0].3 != 4,
        "not free while the host holds it: {out:?}"
    );

    x.view_mut().unwrap().fill(11);
    drop(x);
    let out: Vec<_> = kept(&ch).into_iter().filter(|k| k.0 == moved).collect();
    assert_eq!(out[0].3, 4, "the host wrote free as it let go");
    // Held alive, so that each takes a different kept segment: one of them is the
    // moved one, holding the host's last bytes.
    let made: Vec<_> = (0..3).map(|_| make(&ch, 2 * MIB, 1, true)).collect();
    let back = made.iter().find(|m| m.0 == moved);
    assert_eq!(
        back.map(|m| m.2),
        Some(11),
        "reused after the host let go: {made:?}"
    );
    finish(&ch, &gw);
}

#[test]
fn a_moved_result_the_host_drops_while_a_peer_maps_it_is_reused_once_the_peer_lets_go() {
    let _serial = serial();
    let (maker, peer) = (gateway(), gateway());
    let ch = maker.remote_exec(MAKER).unwrap();
    let holder = peer
        .remote_exec(
            "held = channel.receive()\nchannel.send(int(held.min()))\nchannel.receive()\n\
             channel.send(int(held.min()))\ndel held\nchannel.send('dropped')",
        )
        .unwrap();
    let x = receive_moved(&ch, 2 * MIB, 5);
    let moved = x.name().to_string();
    holder.send(x.share().unwrap()).unwrap();
    assert_eq!(holder.receive_timeout(T).unwrap().as_i64(), Some(5));
    // Dropped by the host while the peer reads it: the bytes stay the peer's to read
    // until it lets go, and only then does the worker get the object back.
    drop(x);
    for value in [6, 7, 8] {
        let (name, ..) = make(&ch, 2 * MIB, value, true);
        assert_ne!(name, moved, "reused while a peer maps it");
    }
    assert!(ask(&ch, "drop", Value::None).is_none());
    for value in [9, 10, 11] {
        let (name, ..) = make(&ch, 2 * MIB, value, false);
        assert_ne!(name, moved, "reused while a peer maps it");
    }
    let out: Vec<_> = kept(&ch).into_iter().filter(|k| k.0 == moved).collect();
    assert!(out.len() == 1 && out[0].3 != 4, "not free yet: {out:?}");
    holder.send(Value::None).unwrap();
    assert_eq!(
        holder.receive_timeout(T).unwrap().as_i64(),
        Some(5),
        "unchanged"
    );
    assert_eq!(holder.receive_timeout(T).unwrap().as_str(), Some("dropped"));
    wait_until(
        || kept(&ch).iter().any(|k| k.0 == moved && k.3 == 4),
        "the host to write it free once the peer released it",
    );
    let made: Vec<_> = (0..4).map(|_| make(&ch, 2 * MIB, 1, true)).collect();
    assert!(
        made.iter().any(|m| m.0 == moved),
        "reused at last: {made:?}"
    );
    assert!(ask(&ch, "drop", Value::None).is_none());
    ch.close().unwrap();
    holder.close().unwrap();
    maker.exit(T).unwrap();
    peer.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_moved_result_the_host_drops_while_a_lend_is_unsent_is_reused_once_it_goes() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(MAKER).unwrap();
    let mut x = receive_moved(&ch, 2 * MIB, 5);
    let moved = x.name().to_string();
    let pending = x.lend().unwrap(); // made, never sent
    drop(x);
    let (name, ..) = make(&ch, 2 * MIB, 6, true);
    assert_ne!(name, moved, "reused while a reference to it is pending");
    let err = ch.send(pending.clone()).unwrap_err();
    assert!(err.to_string().contains("dropped"), "{err}");
    drop(pending);
    let made: Vec<_> = (0..3).map(|_| make(&ch, 2 * MIB, 1, true)).collect();
    assert!(
        made.iter().any(|m| m.0 == moved),
        "reused once it went: {made:?}"
    );
    finish(&ch, &gw);
}

#[test]
fn reuse_limit_bounds_what_a_worker_keeps_and_zero_keeps_nothing() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(MAKER).unwrap();
    assert_eq!(ask(&ch, "limit", Value::None).as_i64(), Some(256 * MIB));
    for bad in [Value::from(-1i64), Value::from("1 GiB")] {
        let r = ask(&ch, "limit", bad);
        assert!(r.as_str().unwrap().starts_with("ValueError"), "{r}");
    }
    // At most eight objects, whatever their sizes.
    for i in 0..10 {
        make(&ch, MIB + i * 4096, 1, true);
    }
    assert!(ask(&ch, "drop", Value::None).is_none());
    assert_eq!(kept(&ch).len(), 8);
    // At most the limit's bytes, the oldest given up first.
    assert_eq!(ask(&ch, "limit", (5 * MIB).into()).as_i64(), Some(5 * MIB));
    let total: i64 = kept(&ch).iter().map(|k| k.1).sum();
    assert!(total <= 5 * MIB, "{total}");
    for _ in 0..3 {
        make(&ch, 2 * MIB, 1, true);
    }
    assert!(ask(&ch, "drop", Value::None).is_none());
    let total: i64 = kept(&ch).iter().map(|k| k.1).sum();
    assert!(total <= 5 * MIB, "{total}");
    // Zero lets go of everything: the worker then holds no object at all.
    assert_eq!(ask(&ch, "limit", 0i64.into()).as_i64(), Some(0));
    assert!(kept(&ch).is_empty());
    let (a, ..) = make(&ch, 2 * MIB, 1, false);
    let (b, ..) = make(&ch, 2 * MIB, 1, false);
    assert_ne!(a, b, "nothing is reused with a limit of 0");
    // (A round trip first: the worker answers a make before it drops the array.)
    assert!(kept(&ch).is_empty());
    let pid = gw.pid().to_string();
    assert_eq!(anonymous_objects_of(&pid), Vec::<String>::new());
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}
