//! ssh gateways against a server of the tests' own (tests/common: `Sshd`): the channel
//! and array batteries run over ssh (the modules below are tests/channels.rs and
//! tests/arrays.rs, whose gateways come from `common::spec`, which points at the test
//! sshd in this binary), and what is particular to ssh.

// The batteries are whole test files, each with its own `mod common;`: so the module is
// loaded more than once in this binary, on purpose (tests/common holds across copies).
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "channels.rs"]
mod channels;

#[path = "arrays.rs"]
mod arrays;

use std::time::{Duration, Instant};

use common::{T, assert_no_segments, process_alive, serial, sshd, sshd_available, wait_gone};
use pixgate::{ErrorKind, Gateway, OutputMode, SharedArray, Value};

fn gw(extra: &str) -> Gateway {
    Gateway::builder(&sshd().spec(extra))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("ssh gateway")
}

#[test]
fn a_round_trip_over_ssh() {
    if !sshd_available() {
        return;
    }
    let g = gw("");
    assert_eq!(g.transport(), pixgate::segment::Transport::ByValue);
    let ch = g
        .remote_exec("channel.send(channel.receive() * 2)")
        .unwrap();
    ch.send(21).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from(42));
}

#[test]
fn the_remote_worker_exits_at_once_when_the_ssh_process_dies() {
    if !sshd_available() {
        return;
    }
    let g = gw("");
    let remote = g.info().pid;
    assert_ne!(
        remote,
        g.pid(),
        "the handshake names the remote python, not ssh"
    );
    assert!(process_alive(remote));
    // ssh killed (the host's side of the connection gone): the remote sees EOF.
    g.kill().unwrap();
    let took = wait_gone(remote, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("remote worker {remote} outlived its ssh process"));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn start_up_has_a_deadline_against_a_server_that_never_answers() {
    // A listener that accepts and says nothing: ssh waits for the server's banner.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let spec = format!(
        "ssh=-p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o ConnectTimeout=60 nobody@127.0.0.1"
    );
    let t = Instant::now();
    let e = Gateway::builder(&spec)
        .output(OutputMode::Capture)
        .handshake_timeout(Duration::from_secs(2))
        .spawn()
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e.kind(), ErrorKind::Timeout { .. }), "{e:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // No ssh left behind, running or unreaped.
    let me = std::process::id();
    let ours: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(") ")?;
            let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
            (ppid == me && comm.ends_with("(ssh")).then(|| stat.clone())
        })
        .collect();
    assert!(ours.is_empty(), "ssh processes left: {ours:?}");
    drop(held);
}

#[test]
fn chdir_env_and_nice_reach_the_remote_worker() {
    if !sshd_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pixgate ssh chdir {}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = gw(&format!(
        "chdir={}//env:PXG_A=it's \"quoted\" $HOME `x` é//env:PXG_B=x=y//nice=3",
        dir.display()
    ));
    let ch = g
        .remote_exec(
            "import os; channel.send((os.getcwd(), os.environ['PXG_A'], os.environ['PXG_B'], \
             os.nice(0) - os.getpriority(os.PRIO_PROCESS, os.getppid()), \
             'PIXGATE_BY_VALUE' in os.environ, os.environ.get('PIXGATE_DESCRIPTORS')))",
        )
        .unwrap();
    let v = ch.receive_timeout(T).unwrap();
    let items = v.as_seq().unwrap();
    assert_eq!(items[0].as_str(), Some(dir.to_str().unwrap()));
    assert_eq!(items[1].as_str(), Some("it's \"quoted\" $HOME `x` é"));
    assert_eq!(items[2].as_str(), Some("x=y"));
    assert_eq!(
        items[3].as_i64(),
        Some(3),
        "niceness relative to the sshd session's"
    );
    assert_eq!(
        items[4].as_bool(),
        Some(false),
        "read by the worker and removed"
    );
    assert!(items[5].is_none());
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prints_to_the_remote_stdout_cannot_corrupt_the_stream() {
    if !sshd_available() {
        return;
    }
    let g = gw("");
    let ch = g
        .remote_exec(
            "import os, sys, subprocess\n\
             os.write(1, bytes(range(256)) * 64)\n\
             sys.__stdout__.write('plain text on the real stdout\\n'); sys.__stdout__.flush()\n\
             subprocess.run(['echo', 'from a child'])\n\
             print('attributed')\n\
             channel.send(channel.receive() + 1)",
        )
        .unwrap();
    ch.send(41).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from(42));
    ch.wait_close(Some(T)).unwrap();
    let ch = g.remote_exec("channel.send('still in sync')").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from("still in sync"));
    g.exit(T).unwrap();
    let lines = g.take_output();
    assert!(
        lines
            .iter()
            .any(|l| l.text == "attributed" && l.channel.is_some())
    );
    assert!(lines.iter().any(|l| l.text == "from a child"), "{lines:?}");
}

#[test]
fn arrays_above_the_frame_limit_cross_in_chunks_both_ways() {
    if !sshd_available() {
        return;
    }
    let _s = serial();
    // 64 KiB frames, 1 MiB arrays: every transfer is many chunks, none above the limit.
    let g = Gateway::builder(&sshd().spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .max_frame_len(64 * 1024)
        .spawn()
        .unwrap();
    let n = 512 * 1024;
    let mut a = SharedArray::<u16>::zeros(&[n]).unwrap();
    for (i, x) in a.view_mut().unwrap().iter_mut().enumerate() {
        *x = (i % 1000) as u16;
    }
    let ch = g
        .remote_exec(
            "import numpy as np, pixgate\n\
             s = channel.receive()\n\
             channel.send(int(s.sum())); del s\n\
             l = channel.receive(); l *= 2; pixgate.release(l); del l\n\
             channel.send('doubled')\n\
             m = channel.receive(); channel.send(int(m[-1])); del m\n\
             channel.send(np.arange(300000, dtype=np.uint32))",
        )
        .unwrap();
    let expected: u64 = (0..n as u64).map(|i| i % 1000).sum();
    ch.send_value(&a.share().unwrap()).unwrap();
    assert_eq!(
        ch.receive_timeout(T).unwrap().as_i64(),
        Some(expected as i64)
    );
    let until = Instant::now() + T;
    while a.peer_shares() > 0 {
        assert!(Instant::now() < until, "the share never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
    let lend = a.lend().unwrap();
    // The reference rules hold over ssh: a lent array has no view until it is back,
    // and a reference is sent once.
    ch.send_value(&lend).unwrap();
    assert!(matches!(
        ch.send_value(&lend).unwrap_err().kind(),
        ErrorKind::Reference(_)
    ));
    assert!(a.view_mut().is_err());
    drop(lend);
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("doubled"));
    let until = Instant::now() + T;
    while a.is_lent() {
        assert!(Instant::now() < until, "the lend never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
    let v = a.view().unwrap();
    assert!(
        v.iter()
            .enumerate()
            .all(|(i, &x)| x == 2 * (i % 1000) as u16)
    );
    drop(v);
    ch.send_value(&a.into_value().unwrap()).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(2 * 287));
    let back = SharedArray::<u32>::from_value(ch.receive_timeout(T).unwrap()).unwrap();
    let bv = back.view().unwrap();
    assert_eq!(bv.len(), 300000);
    assert!(bv.iter().enumerate().all(|(i, &x)| x == i as u32));
    drop(bv);
    drop(back);
    drop(g);
    assert_no_segments();
}

#[test]
fn malformed_by_value_messages_are_refused_and_the_gateway_goes_on() {
    if !sshd_available() {
        return;
    }
    let _s = serial();
    let g = gw("");
    let a = SharedArray::<u8>::zeros(&[4096]).unwrap();
    let ch = g
        .remote_exec(
            "import struct, pixgate._worker as w\n\
             c = w.current_gateway().conn\n\
             c.send(39, 0, b'short')\n\
             c.send(39, 0, struct.pack('!QQ', 77, 0) + b'x')\n\
             c.send(38, 0, struct.pack('!QQQBB', 5, 1 << 50, 0, 1, 0))\n\
             c.send(38, 0, b'')\n\
             c.send(40, 0, struct.pack('!QQH', 0, 0, 4) + b'/pxg' + b'x' * 10)\n\
             c.send(40, 0, b'')\n\
             channel.send(channel.receive().sum())",
        )
        .unwrap();
    ch.send_value(&a.share().unwrap()).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(0));
    let ch = g.remote_exec("channel.send(1)").unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from(1));
    assert!(a.view().is_ok());
    g.exit(T).unwrap();
    let lines: Vec<String> = g.take_output().into_iter().map(|l| l.text).collect();
    assert!(
        lines.iter().any(|l| l.contains("not on its way")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("write-back")), "{lines:?}");
    drop(a);
    assert_no_segments();
}

#[test]
fn local_workers_can_take_arrays_by_value_too() {
    let _s = serial();
    let g = Gateway::builder(&common::spec("transport=by-value"))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .unwrap();
    assert_eq!(g.transport(), pixgate::segment::Transport::ByValue);
    let mut a = SharedArray::<f32>::zeros(&[3, 5]).unwrap();
    let ch = g
        .remote_exec("a = channel.receive(); a += 1.5; channel.send(a)")
        .unwrap();
    ch.send_value(&a.lend().unwrap()).unwrap();
    let _ = ch.receive_timeout(T).unwrap();
    assert!(a.view().unwrap().iter().all(|&x| x == 1.5));
    drop(g);
    drop(a);
    assert_no_segments();
}

/// Start-up, round trip and bytes throughput against execnet over the same sshd, in the
/// same run (BENCHMARKS.md, P9). `cargo test --release --test ssh -- --ignored
/// --nocapture bench`.
#[test]
#[ignore = "a benchmark: run it by name"]
fn bench_against_execnet_over_the_same_sshd() {
    assert!(sshd_available());
    let s = sshd();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // pixgate: start-up to the first answer.
    let starts: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let g = gw("");
            let ch = g.remote_exec("channel.send(1)").unwrap();
            ch.receive_timeout(T).unwrap();
            let e = t.elapsed().as_secs_f64();
            drop(g);
            e
        })
        .collect();
    let g = gw("");
    let ch = g
        .remote_exec("import numpy as np\nfor x in channel:\n    channel.send(x if type(x) is int else int(x[::4096].sum()))")
        .unwrap();
    for _ in 0..200 {
        ch.send(1).unwrap();
        ch.receive_timeout(T).unwrap();
    }
    let rts: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            ch.send(1).unwrap();
            ch.receive_timeout(T).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let mut mbs = Vec::new();
    for (mib, reps) in [(8usize, 10), (1024, 3)] {
        let mut a = SharedArray::<u16>::zeros(&[mib << 19]).unwrap();
        a.view_mut().unwrap().fill(1);
        let times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                ch.send_value(&a.share().unwrap()).unwrap();
                ch.receive_timeout(Duration::from_secs(600)).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        mbs.push((mib, (mib << 20) as f64 / median(times) / 1e6));
    }
    drop(ch);
    drop(g);
    let script = format!(
        r#"
import execnet, time, statistics as st
spec = "ssh={opts} {user}@127.0.0.1//python={py}"
starts = []
for _ in range(5):
    t = time.perf_counter(); g = execnet.makegateway(spec)
    c = g.remote_exec("channel.send(1)"); c.receive(); starts.append(time.perf_counter() - t); g.exit()
g = execnet.makegateway(spec)
c = g.remote_exec("for x in channel:\n    channel.send(x if type(x) is int else len(x))")
for _ in range(200): c.send(1); c.receive()
rts = []
for _ in range(2000):
    t = time.perf_counter(); c.send(1); c.receive(); rts.append(time.perf_counter() - t)
out = [st.median(starts), st.median(rts)]
for mib, reps in ((8, 10), (1024, 3)):
    b = bytes(mib << 20); ts = []
    for _ in range(reps):
        t = time.perf_counter(); c.send(b); c.receive(); ts.append(time.perf_counter() - t)
    out.append((mib << 20) / st.median(ts) / 1e6)
print(*out)
g.exit()
"#,
        opts = s.ssh_options(),
        user = s.user,
        py = common::python()
    );
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let ex: Vec<f64> = common::text(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    println!("| measure | pixgate | execnet | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| start-up to first answer | {:.1} ms | {:.1} ms | {:.2}× |",
        median(starts.clone()) * 1e3,
        ex[0] * 1e3,
        ex[0] / median(starts)
    );
    println!(
        "| small round trip | {:.1} µs | {:.1} µs | {:.2}× |",
        median(rts.clone()) * 1e6,
        ex[1] * 1e6,
        ex[1] / median(rts)
    );
    for (i, (mib, m)) in mbs.iter().enumerate() {
        println!(
            "| {mib} MiB one way | {m:.0} MB/s | {:.0} MB/s | {:.2}× |",
            ex[2 + i],
            m / ex[2 + i]
        );
    }
}
