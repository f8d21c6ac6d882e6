//! Chaos: `kill -9` of a host, of its worker, or of both at once, at a random moment
//! while arrays and a frame stream are in flight; then checks that the processes end
//! and that nothing of theirs is left. With the anonymous transport nothing may be left
//! anywhere without any sweep (the sweeper is turned off, `PIXGATE_SWEEP=0`): no
//! segment in /dev/shm, no anonymous object held or mapped by any process. With the
//! named transport, a sweep must remove what killed processes left in /dev/shm.
//!
//! The host is `examples/chaos_host.rs`, a separate process (it is built with the other
//! targets by `cargo build --all-targets` or `cargo test --all-targets`; alone:
//! `cargo build --example chaos_host`). Each iteration starts it, reads its worker's pid,
//! waits a random 20–400 ms and kills the host, the worker or (anonymous transport) both
//! with `SIGKILL`, in turn from a random first victim. Then:
//!
//! - the survivor must end by itself within [`BOUND`]: a worker whose host died exits on
//!   the parent-death signal or on EOF of its pipe; a host whose worker died fails its
//!   next call and exits with status 1. A survivor still running at the bound is killed
//!   (so nothing is left behind) and fails the test: it would be a hung process;
//! - anonymous transport: no process may hold a descriptor of, or map, an anonymous
//!   object named after either process, and /dev/shm holds none of their segments;
//! - named transport: `/dev/shm` may hold segments created by the two processes (those
//!   of a killed process, or ones that were moving between them); a sweep (the same
//!   code as `pixgate gc`) must remove every one.
//!
//! Only segments whose name carries the pid of one of the iteration's two processes are
//! counted or checked; segments of other processes are none of this test's business.
//!
//! `PIXGATE_CHAOS_ITERATIONS` sets the number of iterations (default 12; `make chaos`
//! runs 100) and `PIXGATE_CHAOS_SEED` the seed (default: from the clock; printed either
//! way, so a failing run can be repeated).
#![cfg(target_os = "linux")]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{process_alive, serial, spec, wait_gone};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the survivor of a kill may take to end by itself.
const BOUND: Duration = Duration::from_secs(10);

/// splitmix64: small, seedable, good enough to pick delays and victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `target/<profile>/examples/chaos_host`, next to the directory of this test binary.
fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join("chaos_host");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example chaos_host` (or \
         `cargo test --all-targets`, `make chaos`)",
        bin.display()
    );
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chaos_host.rs");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    assert!(
        modified(&bin) >= modified(std::path::Path::new(source)),
        "{} is older than its source: rebuild it with `cargo build --example chaos_host`",
        bin.display()
    );
    bin
}

/// The names of segments in /dev/shm whose creator (the pid in the name) is in `pids`.
fn segments_of(pids: &[u32]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix("pxg-")
                        .and_then(|rest| rest.split('-').next())
                        .and_then(|p| u32::from_str_radix(p, 16).ok())
                        .is_some_and(|pid| pids.contains(&pid))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Anonymous objects named after a process in `pids` that some process still holds a
/// descriptor of, or maps: `pid N holds|maps /memfd:pxg-…`.
fn anonymous_of(pids: &[u32]) -> Vec<String> {
    let marks: Vec<String> = pids.iter().map(|p| format!("/memfd:pxg-{p:x}-")).collect();
    let named = |text: &str| marks.iter().any(|m| text.contains(m.as_str()));
    let mut found = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        for fd in std::fs::read_dir(proc_entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if named(&target) {
                    found.push(format!("pid {pid} holds {target}"));
                }
            }
        }
        let maps = std::fs::read_to_string(proc_entry.path().join("maps")).unwrap_or_default();
        for line in maps.lines().filter(|l| named(l)) {
            found.push(format!("pid {pid} maps {line}"));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The state and wait channel of each thread of `pid`, for the report on a process that
/// did not end.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".to_string();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // "tid (comm) S ...": the name and the state letter.
        let (comm, state) = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => (&stat[a + 1..b], stat[b + 1..].trim_start()),
            _ => ("?", ""),
        };
        let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
        out.push(format!(
            "{comm} {} {wchan}",
            state.chars().next().unwrap_or('?')
        ));
    }
    out.join(", ")
}

/// Waits up to `limit` for our child to exit.
fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the host") {
            return Some(status);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts the host and reads its worker's pid (within [`T`]).
fn start_host(bin: &PathBuf, transport: &str) -> (Child, u32) {
    let mut host = Command::new(bin)
        .arg(spec(&format!("transport={transport}")))
        .env("PIXGATE_TRANSPORT", transport)
        .env("PIXGATE_SWEEP", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chaos_host");
    let line = common::first_line(&mut host, "chaos_host printed no worker pid");
    let Ok(worker) = line.trim().parse::<u32>() else {
        host.kill().ok();
        let status = host.wait().expect("wait for the host");
        panic!(
            "chaos_host did not start ({status}): {}",
            stderr_of(&mut host)
        );
    };
    (host, worker)
}

fn stderr_of(host: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = host.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.trim().to_string()
}

#[derive(Default)]
struct Counts {
    host_killed: u32,
    worker_killed: u32,
    both_killed: u32,
    /// Segments of the two processes present after both ended, before the sweep, by
    /// victim.
    left_host_killed: usize,
    left_worker_killed: usize,
    swept: usize,
    survivor_exited: u32,
    survivor_killed: u32,
    host_exit_failure: u32,
    host_exit_other: u32,
}

/// Who is killed in an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Host,
    Worker,
    Both,
}

#[test]
fn killing_host_worker_or_both_with_anonymous_segments_leaves_nothing_anywhere() {
    run("anonymous", &[Victim::Host, Victim::Worker, Victim::Both]);
}

#[test]
fn killing_host_or_worker_with_named_segments_leaves_nothing_after_a_sweep() {
    run("named", &[Victim::Host, Victim::Worker]);
}

fn run(transport: &str, victims: &[Victim]) {
    let _serial = serial();
    let anonymous = transport == "anonymous";
    let bin = host_binary();
    let iterations = env_u64("PIXGATE_CHAOS_ITERATIONS").unwrap_or(12);
    let seed = env_u64("PIXGATE_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("chaos ({transport}): {iterations} iterations, PIXGATE_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let first = rng.next() as usize % victims.len();
    let mut counts = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();

    for i in 0..iterations {
        let (mut host, worker) = start_host(&bin, transport);
        let host_pid = host.id();
        let who = victims[(first + i as usize) % victims.len()];
        let kill_host = who != Victim::Worker;
        let delay = Duration::from_millis(rng.between(20, 400));
        std::thread::sleep(delay);

        if let Some(status) = host.try_wait().expect("wait for the host") {
            panic!(
                "iteration {i}: chaos_host ended before the kill ({status}): {}",
                stderr_of(&mut host)
            );
        }
        assert!(
            process_alive(worker),
            "iteration {i}: worker {worker} died before the kill"
        );

        let (victim, victim_pid, survivor_pid) = match who {
            Victim::Host => {
                counts.host_killed += 1;
                ("host", host_pid, worker)
            }
            Victim::Worker => {
                counts.worker_killed += 1;
                ("worker", worker, host_pid)
            }
            Victim::Both => {
                counts.both_killed += 1;
                ("both", host_pid, worker)
            }
        };
        kill(Pid::from_raw(victim_pid as i32), Signal::SIGKILL).expect("kill -9");
        if who == Victim::Both {
            // The worker, at once too: both die together.
            let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
        }

        // The survivor must end by itself within the bound.
        let t = Instant::now();
        let (ended, status) = if kill_host {
            let status = host.wait().expect("reap the host");
            (wait_gone(worker, BOUND).is_some(), Some(status))
        } else {
            let status = wait_child(&mut host, BOUND);
            // The host reaps its worker; a zombie counts as gone.
            let gone = wait_gone(worker, BOUND).is_some();
            (status.is_some() && gone, status)
        };
        let took = t.elapsed();
        if ended {
            counts.survivor_exited += 1;
        } else {
            counts.survivor_killed += 1;
            let states = thread_states(survivor_pid);
            let _ = kill(Pid::from_raw(survivor_pid as i32), Signal::SIGKILL);
            failures.push(format!(
                "iteration {i}: {victim} killed after {delay:?}, the {} (pid {survivor_pid}) \
                 was still running after {BOUND:?} (threads: {states})",
                if kill_host { "worker" } else { "host" }
            ));
        }
        let status = match status {
            Some(s) => s,
            None => host.wait().expect("reap the host"),
        };
        // The first line: the error; the lines after it are the worker's last words.
        let host_err = stderr_of(&mut host)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if !kill_host {
            if status.code() == Some(1) {
                counts.host_exit_failure += 1;
            } else {
                counts.host_exit_other += 1;
            }
        }
        assert!(
            wait_gone(survivor_pid, BOUND).is_some() && wait_gone(victim_pid, BOUND).is_some(),
            "iteration {i}: a process outlived even SIGKILL"
        );

        let pids = [host_pid, worker];
        let before = segments_of(&pids);
        if kill_host {
            counts.left_host_killed += before.len();
        } else {
            counts.left_worker_killed += before.len();
        }
        if anonymous {
            // Nothing to sweep, and nothing may be left: the kernel freed it all.
            let held = anonymous_of(&pids);
            println!(
                "iteration {i:>3}: killed {victim:<6} after {:>3} ms; survivor ended in {:>4} \
                 ms ({}); host {status}; in /dev/shm {}, anonymous objects still held {}",
                delay.as_millis(),
                took.as_millis(),
                if ended { "by itself" } else { "killed" },
                before.len(),
                held.len(),
            );
            if !before.is_empty() || !held.is_empty() {
                failures.push(format!(
                    "iteration {i}: {victim} killed after {delay:?}; left: {before:?} {held:?}"
                ));
            }
            continue;
        }
        let report = pixgate::segment::sweep(false).expect("sweep /dev/shm");
        let swept = report
            .swept
            .iter()
            .filter(|s| before.iter().any(|b| s.name.trim_start_matches('/') == b))
            .count();
        counts.swept += swept;
        let after = segments_of(&pids);
        println!(
            "iteration {i:>3}: killed {victim:<6} after {:>3} ms; survivor ended in {:>4} ms \
             ({}); host {status}; segments left {}, swept {swept}, remaining {}{}",
            delay.as_millis(),
            took.as_millis(),
            if ended { "by itself" } else { "killed" },
            before.len(),
            after.len(),
            if host_err.is_empty() {
                String::new()
            } else {
                format!("; host said: {host_err}")
            }
        );
        if !after.is_empty() {
            let problems: Vec<String> = report
                .failed
                .iter()
                .map(|p| format!("{p}"))
                .collect::<Vec<_>>();
            failures.push(format!(
                "iteration {i}: {victim} killed after {delay:?}; after the sweep /dev/shm \
                 still holds {after:?} (sweep problems: {problems:?})"
            ));
        }
    }

    let c = &counts;
    eprintln!(
        "chaos summary ({transport}): seed {seed}, {iterations} iterations in {:.1} s; host \
         killed {}, worker killed {}, both killed {}; segments left before the sweep: {} \
         (host killed) + {} (worker killed), removed by the sweep {}; survivors that exited \
         by themselves {}, had to be killed {}; hosts of killed workers exiting with status \
         1: {}, otherwise: {}",
        started.elapsed().as_secs_f64(),
        c.host_killed,
        c.worker_killed,
        c.both_killed,
        c.left_host_killed,
        c.left_worker_killed,
        c.swept,
        c.survivor_exited,
        c.survivor_killed,
        c.host_exit_failure,
        c.host_exit_other,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
