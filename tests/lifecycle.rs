//! Bounded lifecycles: every blocking write honours its deadline even when the pipe to
//! the worker is full, drops never wait for the pipe, and the processes that remote code
//! starts end with the worker.
//!
//! A worker stopped with `SIGSTOP` reads nothing, so a large send fills the pipe and
//! stays blocked in it. Every operation under test runs under a watchdog: if it has not
//! returned in [`WATCHDOG`], the watchdog kills the worker (which unblocks everything)
//! and the test fails instead of hanging the suite.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, gateway, process_alive, serial, spec, wait_gone};
use pixgate::{Channel, ErrorKind, Gateway, OutputMode, SharedArray, Value};

/// How long an operation may take before the watchdog ends the test.
const WATCHDOG: Duration = Duration::from_secs(20);

/// How long an operation that must not wait for the pipe may take (generous: the
/// machine may be loaded).
const PROMPT: Duration = Duration::from_secs(2);

/// Bytes of the send that fills the pipe: more than any pipe holds (at most 1 MiB by
/// default on Linux), far below the frame limit.
const BIG: usize = 8 << 20;

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
}

/// Runs `f` on a thread and returns its result with the time it took. If it has not
/// returned within [`WATCHDOG`], kills `worker` so that the blocked call can end, and
/// fails the test.
fn watchdog<R: Send + 'static>(
    what: &str,
    worker: u32,
    f: impl FnOnce() -> R + Send + 'static,
) -> (R, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let r = f();
        let _ = tx.send((r, start.elapsed()));
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(out) => out,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(worker as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what} did not return within {WATCHDOG:?}: it waits for a full pipe");
        }
    }
}

/// A thread sending [`BIG`] bytes on `ch`; with the worker stopped it blocks once the
/// pipe is full. The result arrives on the receiver.
fn big_sender(ch: Channel) -> (mpsc::Receiver<pixgate::Result<()>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = ch.send(Value::Bytes(vec![7u8; BIG]));
        let _ = tx.send(r);
    });
    // The send cannot complete while the worker is stopped.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a send of {BIG} bytes completed although the worker is stopped"
    );
    (rx, h)
}

/// Joins the sender thread, which must have ended by now (its send failed or finished).
fn join_sender(rx: mpsc::Receiver<pixgate::Result<()>>, h: JoinHandle<()>) -> pixgate::Result<()> {
    let r = rx
        .recv_timeout(T)
        .expect("the blocked send ended with the worker");
    h.join().expect("sender thread");
    r
}

#[test]
fn exit_with_a_full_pipe_and_a_stopped_worker_returns_in_time() {
    let gw = gateway();
    let pid = gw.pid();
    let ch = gw.remote_exec("for x in channel:\n    pass").unwrap();
    common::stop_process(pid);
    let (rx, h) = big_sender(ch);
    let (exit, took) = watchdog("exit(500ms)", pid, move || {
        gw.exit(Duration::from_millis(500))
    });
    eprintln!("exit(500ms) with a full pipe returned after {took:?}: {exit:?}");
    let exit = exit.expect("exit");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!process_alive(pid));
    // The blocked send ended with the worker.
    let err = join_sender(rx, h).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::GatewayClosed { .. } | ErrorKind::WorkerDied(_)
        ),
        "{err:?}"
    );
}

#[test]
fn dropping_a_gateway_with_a_full_pipe_returns_in_time() {
    let gw = Gateway::builder(&spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .exit_timeout(Duration::from_millis(500))
        .spawn()
        .unwrap();
    let pid = gw.pid();
    let ch = gw.remote_exec("for x in channel:\n    pass").unwrap();
    common::stop_process(pid);
    let (rx, h) = big_sender(ch);
    let ((), took) = watchdog("dropping the gateway", pid, move || drop(gw));
    eprintln!("drop with a full pipe returned after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(wait_gone(pid, T).is_some());
    assert!(join_sender(rx, h).is_err());
}

/// A worker holding: a loop on a channel that sets `pxg_ended` when its channel closes,
/// a kept mapping of a shared array, and a channel that swallows a big send. Returns
/// the gateway, the loop's channel, the array and the big channel.
fn worker_with_a_loop_and_a_kept_mapping() -> (Gateway, Channel, SharedArray<u8>, Channel) {
    let gw = gateway();
    let setup = gw
        .remote_exec(
            "import builtins, threading\nbuiltins.pxg_ended = threading.Event()\nchannel.send(1)",
        )
        .unwrap();
    setup.receive_timeout(T).unwrap();
    let looping = gw
        .remote_exec(
            "import builtins\nchannel.send('ready')\nfor x in channel:\n    pass\nbuiltins.pxg_ended.set()",
        )
        .unwrap();
    assert_eq!(looping.receive_timeout(T).unwrap().as_str(), Some("ready"));
    let arr = SharedArray::<u8>::zeros(&[4096]).unwrap();
    let summer = gw
        .remote_exec("a = channel.receive()\nchannel.send(int(a.sum()))")
        .unwrap();
    summer.send_value(&arr.share().unwrap()).unwrap();
    assert_eq!(summer.receive_timeout(T).unwrap().as_i64(), Some(0));
    summer.wait_close(Some(T)).unwrap();
    let big = gw.remote_exec("for x in channel:\n    pass").unwrap();
    (gw, looping, arr, big)
}

#[test]
fn dropping_a_channel_or_an_array_with_a_full_pipe_returns_at_once() {
    let _s = serial();
    let (gw, looping, arr, big) = worker_with_a_loop_and_a_kept_mapping();
    let pid = gw.pid();
    common::stop_process(pid);
    let (rx, h) = big_sender(big);
    let ((), took) = watchdog("dropping a channel", pid, move || drop(looping));
    eprintln!("channel drop with a full pipe took {took:?}");
    assert!(took < PROMPT, "{took:?}");
    let ((), took) = watchdog("dropping a shared array", pid, move || drop(arr));
    eprintln!("array drop with a full pipe took {took:?}");
    assert!(took < PROMPT, "{took:?}");
    let (exit, _) = watchdog("exit(500ms)", pid, move || {
        gw.exit(Duration::from_millis(500))
    });
    assert_eq!(exit.unwrap().signal, Some(9));
    assert!(join_sender(rx, h).is_err());
    assert_no_segments();
}

#[test]
fn a_close_and_a_forget_deferred_by_a_full_pipe_arrive_once_it_drains() {
    let _s = serial();
    let (gw, looping, arr, big) = worker_with_a_loop_and_a_kept_mapping();
    let pid = gw.pid();
    let name = arr.name().to_string();
    assert!(
        common::maps_segment(pid, &name),
        "the worker keeps {name} mapped"
    );
    common::stop_process(pid);
    let (rx, h) = big_sender(big);
    let ((), took) = watchdog("dropping a channel", pid, move || drop(looping));
    assert!(took < PROMPT, "{took:?}");
    let ((), took) = watchdog("dropping a shared array", pid, move || drop(arr));
    assert!(took < PROMPT, "{took:?}");
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    // The big send completes, then the close and the forget held back behind it.
    join_sender(rx, h).expect("the big send completes once the worker reads again");
    let ended = gw
        .remote_exec("import builtins\nchannel.send(builtins.pxg_ended.wait(20))")
        .unwrap();
    assert_eq!(
        ended.receive_timeout(T).unwrap().as_bool(),
        Some(true),
        "the remote loop saw the close of its dropped channel"
    );
    common::wait_until(
        || !common::maps_segment(pid, &name),
        "the worker dropped its mapping of the forgotten segment",
    );
    assert_eq!(gw.exit(T).unwrap().code, Some(0));
    assert_no_segments();
}

/// Remote code that starts `sleep 1000` and a Python child that ignores SIGTERM, and
/// sends their pids once both run.
const CHILDREN: &str = r#"
import subprocess, sys
plain = subprocess.Popen(["sleep", "1000"])
stubborn = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, sys, time\n"
     "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
     "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
     "time.sleep(1000)\n"],
    stdout=subprocess.PIPE)
assert stubborn.stdout.readline() == b"ready\n"
channel.send([plain.pid, stubborn.pid])
"#;

fn children_of(gw: &Gateway) -> Vec<u32> {
    let ch = gw.remote_exec(CHILDREN).unwrap();
    let pids: Vec<u32> = ch
        .receive_timeout(T)
        .unwrap()
        .as_seq()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as u32)
        .collect();
    for &p in &pids {
        assert!(process_alive(p), "child {p} runs");
    }
    pids
}

/// Asserts that every pid ends within 5 s; kills survivors first so that a failing test
/// leaves nothing behind.
fn assert_all_gone(pids: &[u32], after: &str) {
    let survivors: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| wait_gone(p, Duration::from_secs(5)).is_none())
        .collect();
    for &p in &survivors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        survivors.is_empty(),
        "processes started by remote code outlived {after}: {survivors:?}"
    );
}

#[test]
fn processes_started_by_remote_code_end_with_exit() {
    let gw = gateway();
    let pids = children_of(&gw);
    let exit = gw.exit(T).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_all_gone(&pids, "exit()");
}

#[test]
fn processes_started_by_remote_code_end_with_kill() {
    let gw = gateway();
    let pids = children_of(&gw);
    let exit = gw.kill().unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert_all_gone(&pids, "kill()");
}

#[test]
fn the_worker_has_a_process_group_of_its_own() {
    let gw = gateway();
    let pid = nix::unistd::Pid::from_raw(gw.pid() as i32);
    assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
    assert_ne!(nix::unistd::getpgrp(), pid);
}

/// `target/<profile>/examples/NAME`, next to the directory of this test binary.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --all-targets`",
        bin.display()
    );
    bin
}

/// Lines of a child's stdout, read on a thread so that every wait has a deadline.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn field(rx: &mpsc::Receiver<String>, key: &str) -> String {
    let line = rx
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("no {key:?} line within {T:?}"));
    line.strip_prefix(&format!("{key} "))
        .unwrap_or_else(|| panic!("expected {key:?}, got {line:?}"))
        .to_string()
}

/// POSIX sends SIGHUP and SIGCONT to every member of a process group that becomes
/// orphaned while one of its members is stopped. A worker in its host's group, stopped
/// at the moment the host's parent exits, therefore got the host killed.
#[test]
fn a_host_whose_parent_exits_while_its_worker_is_stopped_survives() {
    // The launcher starts a new session, starts the host in a process group of its
    // own inside it, prints the host's pid and waits to be killed.
    let mut launcher = Command::new(example("pgroup_host"))
        .args(["launch", &spec("")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pgroup_host");
    let mut to_host = launcher.stdin.take().unwrap();
    let lines = lines_of(launcher.stdout.take().unwrap());
    let host: u32 = field(&lines, "host").parse().unwrap();
    let worker: u32 = field(&lines, "worker").parse().unwrap();
    let cleanup = |why: &str| -> ! {
        for p in [host, worker] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        panic!("{why}");
    };
    common::stop_process(worker);
    // The launcher's exit orphans the host's process group.
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    if !process_alive(host) {
        cleanup("the host died when its parent exited while its worker was stopped");
    }
    writeln!(to_host, "exit").unwrap();
    let t = Instant::now();
    let exited = match lines.recv_timeout(T) {
        Ok(l) => l,
        Err(_) => cleanup("the host's exit(500ms) did not complete"),
    };
    eprintln!("host: {exited} ({:?})", t.elapsed());
    assert!(exited.contains("signal 9 (SIGKILL)"), "{exited}");
    assert!(wait_gone(host, T).is_some(), "the host ended");
    assert!(!process_alive(worker));
}
