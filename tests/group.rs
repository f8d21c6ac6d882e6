//! Groups of real CPython workers mapping a function over the planes of a shared stack.

mod common;

use std::time::{Duration, Instant};

use common::{T, assert_no_segments, process_alive, serial, spec, wait_until};
use ndarray::{ArrayD, Axis, IxDyn};
use pixgate::{ErrorKind, Gateway, Group, OutputMode, SharedArray, Value};

/// Per plane: a checksum-like transform that depends on every pixel and its position.
const PLANE_FN: &str = r#"
import numpy as np

def f(plane):
    p = plane.astype(np.uint32)
    return (p * 3 + p.sum() % 1000).astype(np.uint32)
"#;

fn group(n: usize) -> Group {
    let b = Gateway::builder(&spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T);
    Group::with_builder(&b, n).expect("start group")
}

/// A deterministic, random-looking uint16 stack.
fn stack(shape: &[usize]) -> SharedArray<u16> {
    let len: usize = shape.iter().product();
    let mut x: u32 = 0x1234_5678;
    let data: Vec<u16> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u16
        })
        .collect();
    SharedArray::from_ndarray(&ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()).unwrap()
}

/// `PLANE_FN` in plain Rust, along `axis`.
fn expected(input: &SharedArray<u16>, axis: usize) -> ArrayD<u32> {
    let v = input.view().unwrap();
    let mut out = ArrayD::<u32>::zeros(v.raw_dim());
    for (i, plane) in v.axis_iter(Axis(axis)).enumerate() {
        let sum: u64 = plane.iter().map(|&p| u64::from(p)).sum();
        let add = (sum % 1000) as u32;
        out.index_axis_mut(Axis(axis), i)
            .assign(&plane.mapv(|p| u32::from(p) * 3 + add));
    }
    out
}

fn map(g: &Group, input: &SharedArray<u16>, output: &mut SharedArray<u32>, axis: usize) {
    g.map_planes(PLANE_FN, "f", input, output, axis, Some(T))
        .unwrap();
    assert!(!output.is_lent());
    assert_eq!(input.peer_shares(), 0);
}

#[test]
fn group_map_equals_one_worker_and_rust() {
    let _serial = serial();
    let input = stack(&[12, 40, 30]);
    let want = expected(&input, 0);

    let two = group(2);
    assert_eq!(two.len(), 2);
    let ids: Vec<&str> = two.gateways().iter().map(Gateway::id).collect();
    assert_eq!(ids, ["group-0", "group-1"]);
    let mut out2 = SharedArray::<u32>::zeros(&[12, 40, 30]).unwrap();
    map(&two, &input, &mut out2, 0);
    assert_eq!(out2.view().unwrap(), want.view());

    let one = group(1);
    let mut out1 = SharedArray::<u32>::zeros(&[12, 40, 30]).unwrap();
    map(&one, &input, &mut out1, 0);
    assert_eq!(out1.view().unwrap(), out2.view().unwrap());

    // Again on the same workers (kept mappings, a new map), and along another axis.
    let mut out3 = SharedArray::<u32>::zeros(&[12, 40, 30]).unwrap();
    map(&two, &input, &mut out3, 2);
    assert_eq!(out3.view().unwrap(), expected(&input, 2).view());

    let exits = two.terminate(T).unwrap();
    assert_eq!(exits.len(), 2);
    one.terminate(T).unwrap();
    drop((input, out1, out2, out3));
    assert_no_segments();
}

#[test]
fn uneven_splits_cover_every_plane() {
    let _serial = serial();
    let g3 = group(3);
    let input = stack(&[10, 8, 8]);
    let mut out = SharedArray::<u32>::zeros(&[10, 8, 8]).unwrap();
    map(&g3, &input, &mut out, 0);
    assert_eq!(out.view().unwrap(), expected(&input, 0).view());

    // More workers than planes: two of them idle.
    let g4 = group(4);
    let small = stack(&[2, 5, 3]);
    let mut small_out = SharedArray::<u32>::zeros(&[2, 5, 3]).unwrap();
    map(&g4, &small, &mut small_out, 0);
    assert_eq!(small_out.view().unwrap(), expected(&small, 0).view());

    // No planes at all: nothing to do.
    let empty = SharedArray::<u16>::zeros(&[0, 4]).unwrap();
    let mut none = SharedArray::<u32>::zeros(&[0, 4]).unwrap();
    map(&g4, &empty, &mut none, 0);

    // A plane may map to a smaller result: one value per plane.
    let mut sums = SharedArray::<f64>::zeros(&[10]).unwrap();
    g3.map_planes(
        "def total(p):\n    return p.sum()\n",
        "total",
        &input,
        &mut sums,
        0,
        Some(T),
    )
    .unwrap();
    let v = input.view().unwrap();
    for (i, plane) in v.axis_iter(Axis(0)).enumerate() {
        let s: u64 = plane.iter().map(|&p| u64::from(p)).sum();
        assert_eq!(sums.view().unwrap()[[i]], s as f64);
    }
    drop(v);
    g3.terminate(T).unwrap();
    g4.terminate(T).unwrap();
    drop((input, out, small, small_out, empty, none, sums));
    assert_no_segments();
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let _serial = serial();
    assert!(matches!(
        Group::new(&spec(""), 0).unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
    let g = group(2);
    let input = stack(&[4, 3]);
    let mut out = SharedArray::<u32>::zeros(&[4, 3]).unwrap();
    let invalid = |r: pixgate::Result<()>| match r.unwrap_err().kind() {
        ErrorKind::InvalidArgument(m) => m.clone(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let m = invalid(g.map_planes(PLANE_FN, "f", &input, &mut out, 2, Some(T)));
    assert!(m.contains("axis 2"), "{m}");
    let mut short = SharedArray::<u32>::zeros(&[4]).unwrap();
    let m = invalid(g.map_planes(PLANE_FN, "f", &input, &mut short, 1, Some(T)));
    assert!(m.contains("output of 1 axes"), "{m}");
    let mut other = SharedArray::<u32>::zeros(&[5, 3]).unwrap();
    let m = invalid(g.map_planes(PLANE_FN, "f", &input, &mut other, 0, Some(T)));
    assert!(m.contains("[4, 3]") && m.contains("[5, 3]"), "{m}");

    // An output the peer holds, or an input lent out, is busy.
    let r = out.share().unwrap();
    let e = g
        .map_planes(PLANE_FN, "f", &input, &mut out, 0, Some(T))
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Busy(_)), "{e}");
    let gw = &g.gateways()[0];
    let ch = gw
        .remote_exec("for x in channel:\n    channel.send(x)\n    del x")
        .unwrap();
    ch.send_value(&r).unwrap();
    ch.receive_timeout(T).unwrap();
    wait_until(|| out.peer_shares() == 0, "share released");
    let mut lent_in = stack(&[4, 3]);
    let l = lent_in.lend().unwrap();
    let e = g
        .map_planes(PLANE_FN, "f", &lent_in, &mut out, 0, Some(T))
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Busy(_)), "{e}");
    let l2 = out.lend().unwrap();
    let e = g
        .map_planes(PLANE_FN, "f", &input, &mut out, 0, Some(T))
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Busy(_)), "{e}");
    // Give both back; nothing was sent by the refused maps.
    ch.send_value(&l).unwrap();
    ch.receive_timeout(T).unwrap();
    ch.send_value(&l2).unwrap();
    ch.receive_timeout(T).unwrap();
    assert!(!lent_in.is_lent() && !out.is_lent());
    assert_eq!(input.peer_shares(), 0);
    map(&g, &input, &mut out, 0);
    ch.close().unwrap();
    g.terminate(T).unwrap();
    drop((input, out, short, other, lent_in));
    assert_no_segments();
}

#[test]
fn an_exception_in_one_plane_names_the_worker_and_stops_the_others() {
    let _serial = serial();
    let g = group(3);
    // Planes 0..4 go to worker 0, 4..8 to worker 1 (plane 5 raises), 8..12 to worker 2.
    let source = r#"
import time
def f(plane):
    time.sleep(0.1)
    if plane.flat[0] == 5:
        raise ValueError("bad plane")
    return plane
"#;
    let mut input = SharedArray::<u16>::zeros(&[12, 4, 4]).unwrap();
    for (i, mut p) in input.view_mut().unwrap().axis_iter_mut(Axis(0)).enumerate() {
        p.fill(i as u16);
    }
    let mut out = SharedArray::<u16>::zeros(&[12, 4, 4]).unwrap();
    // numpy is imported by the first map: let that not race with the one under test.
    map_identity(&g, &input, &mut out);
    out.view_mut().unwrap().fill(0);
    let t = Instant::now();
    let e = g
        .map_planes(source, "f", &input, &mut out, 0, Some(T))
        .unwrap_err();
    match e.kind() {
        ErrorKind::GroupWorker {
            index,
            gateway,
            pid,
            killed,
            ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(gateway, "group-1");
            assert_eq!(*pid, Some(g.gateways()[1].pid()));
            assert!(killed.is_empty(), "{e}");
        }
        other => panic!("expected GroupWorker, got {other:?}"),
    }
    let remote = e.remote().expect("a remote error");
    assert_eq!(remote.type_name, "ValueError");
    assert!(
        remote.traceback.contains("in plane 5"),
        "{}",
        remote.traceback
    );
    let text = e.to_string();
    assert!(
        text.contains("group worker 1 (gateway group-1, pid "),
        "{text}"
    );
    // The others were cancelled between planes, long before their 4 planes were done.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Everything is back: the output is usable, every worker alive and usable.
    assert!(!out.is_lent());
    assert_eq!(input.peer_shares(), 0);
    let v = out.view().unwrap();
    assert_eq!(v.index_axis(Axis(0), 4)[[0, 0]], 4, "plane 4 was written");
    assert_eq!(
        v.index_axis(Axis(0), 11)[[0, 0]],
        0,
        "worker 2 stopped early"
    );
    drop(v);
    assert!(g.gateways().iter().all(Gateway::is_alive));
    map_identity(&g, &input, &mut out);
    g.terminate(T).unwrap();
    drop((input, out));
    assert_no_segments();
}

fn map_identity(g: &Group, input: &SharedArray<u16>, out: &mut SharedArray<u16>) {
    g.map_planes("def f(p):\n    return p\n", "f", input, out, 0, Some(T))
        .unwrap();
    assert_eq!(out.view().unwrap(), input.view().unwrap());
}

#[test]
fn a_worker_killed_mid_map_is_named_and_terminate_reaps_everyone() {
    let _serial = serial();
    let g = group(3);
    let pids: Vec<u32> = g.gateways().iter().map(Gateway::pid).collect();
    let source = "import time\ndef f(p):\n    time.sleep(0.05)\n    return p + 1\n";
    let input = stack(&[30, 16, 16]);
    let mut out = SharedArray::<u16>::zeros(&[30, 16, 16]).unwrap();
    let victim = pids[2];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
    let e = g
        .map_planes(source, "f", &input, &mut out, 0, Some(T))
        .unwrap_err();
    killer.join().unwrap();
    match e.kind() {
        ErrorKind::GroupWorker {
            index,
            gateway,
            pid,
            ..
        } => {
            assert_eq!(
                (*index, gateway.as_str(), *pid),
                (2, "group-2", Some(victim))
            );
        }
        other => panic!("expected GroupWorker, got {other:?}"),
    }
    let exit = e.worker_exit().expect("the worker's death");
    assert_eq!(exit.signal, Some(9));
    assert!(e.to_string().contains("SIGKILL"), "{e}");
    // Every part came back, the dead worker's by its death.
    assert!(!out.is_lent());
    assert_eq!(input.peer_shares(), 0);
    out.view_mut().unwrap().fill(7);
    assert!(!g.gateways()[2].is_alive());
    assert!(g.gateways()[0].is_alive() && g.gateways()[1].is_alive());
    // A later map names the dead worker at once.
    let e = g
        .map_planes(source, "f", &input, &mut out, 0, Some(T))
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::GroupWorker { index: 2, .. }),
        "{e}"
    );
    assert!(!out.is_lent());
    assert_eq!(input.peer_shares(), 0);

    let t = Instant::now();
    let exits = g.terminate(Duration::from_secs(2)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(exits.len(), 3);
    assert_eq!(exits[2].signal, Some(9));
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} still runs");
    }
    drop((input, out));
    assert_no_segments();
}

#[test]
fn terminate_is_bounded_with_stuck_workers() {
    let _serial = serial();
    let g = group(2);
    let chans = g.remote_exec("channel.send(1)").unwrap();
    for ch in &chans {
        assert_eq!(ch.receive_timeout(T).unwrap(), Value::from(1i64));
    }
    // Stopped processes answer nothing but SIGKILL.
    for gw in g.gateways() {
        common::stop_process(gw.pid());
    }
    let t = Instant::now();
    let exits = g.terminate(Duration::from_millis(300)).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(exits.len(), 2);
    for (gw, exit) in g.gateways().iter().zip(&exits) {
        assert!(!process_alive(gw.pid()));
        assert_eq!(exit.gateway, gw.id());
        assert_eq!(exit.signal, Some(9), "killed at the deadline: {exit:?}");
    }
    // Again: the same statuses.
    assert_eq!(g.terminate(T).unwrap(), exits);
}

#[test]
fn a_map_past_its_timeout_names_a_worker_and_kills_the_stuck_ones() {
    let _serial = serial();
    let g = group(2);
    // Worker 1's first plane never finishes: it cannot be cancelled between planes.
    let source =
        "import time\ndef f(p):\n    time.sleep(3600 if p.flat[0] else 0.01)\n    return p\n";
    let mut input = SharedArray::<u16>::zeros(&[4, 2]).unwrap();
    input.view_mut().unwrap().index_axis_mut(Axis(0), 2).fill(1);
    let mut out = SharedArray::<u16>::zeros(&[4, 2]).unwrap();
    map_identity(&g, &input, &mut out);
    let t = Instant::now();
    let e = g
        .map_planes(
            source,
            "f",
            &input,
            &mut out,
            0,
            Some(Duration::from_millis(500)),
        )
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    match e.kind() {
        ErrorKind::GroupWorker {
            index,
            cause,
            killed,
            ..
        } => {
            assert_eq!(*index, 1);
            assert!(matches!(cause.kind(), ErrorKind::Timeout { .. }), "{e}");
            assert_eq!(killed, &[1]);
        }
        other => panic!("expected GroupWorker, got {other:?}"),
    }
    assert!(e.to_string().contains("killed"), "{e}");
    assert!(!out.is_lent());
    assert_eq!(input.peer_shares(), 0);
    assert!(g.gateways()[0].is_alive());
    assert!(!g.gateways()[1].is_alive());
    g.terminate(T).unwrap();
    drop((input, out));
    assert_no_segments();
}

#[test]
fn a_group_that_cannot_start_names_the_worker() {
    let _serial = serial();
    let e = Group::new("popen//python=/nonexistent/python3//id=bad", 2).unwrap_err();
    match e.kind() {
        ErrorKind::GroupWorker {
            index,
            gateway,
            cause,
            ..
        } => {
            assert_eq!(*index, 0);
            assert_eq!(gateway, "bad-0");
            assert!(
                matches!(cause.kind(), ErrorKind::InterpreterNotFound { .. }),
                "{e}"
            );
        }
        other => panic!("expected GroupWorker, got {other:?}"),
    }
}
