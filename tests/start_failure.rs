//! A start that fails after the fork kills and reaps its child and reports the real
//! cause.
//!
//! Each test re-runs this test binary as a child process limited in file descriptors
//! or in tasks (threads and processes), so that the limits reach no other test. The
//! child (`PIXGATE_START_FAILURE=<scenario>`) runs the scenario and fails on a wrong
//! error, a missing cause or a child process left behind; the parent checks that it
//! passed.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{T, spec};
use pixgate::{ErrorKind, Gateway, OutputMode};

const SCENARIO: &str = "PIXGATE_START_FAILURE";

/// Runs `scenario` in a fresh copy of this test binary (only the test `name`).
fn in_child(name: &str, scenario: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-run the test binary");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            child.wait().ok();
            panic!("scenario {scenario} ran past 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "scenario {scenario} failed: {status}");
}

/// The pids of this process's children, zombies included.
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Waits until this process has no children (a killed child takes a moment to be
/// reaped by the thread that waits for it).
fn assert_no_children(after: &str) {
    let start = Instant::now();
    while !children().is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = children();
    assert!(left.is_empty(), "children left after {after}: {left:?}");
}

fn builder() -> pixgate::GatewayBuilder {
    Gateway::builder(&spec(""))
        .output(OutputMode::Discard)
        .handshake_timeout(T)
}

/// A first start, so that the threads pixgate starts once per process (the spawner,
/// the sweep) exist before any limit is set.
fn warm_up() {
    let gw = builder().spawn().expect("a start without limits");
    gw.exit(T).unwrap();
    assert_no_children("the warm-up gateway's exit");
}

/// The errno of an `Io` error's source.
fn os_error(e: &pixgate::Error) -> Option<i32> {
    let source = std::error::Error::source(e)?;
    source.downcast_ref::<std::io::Error>()?.raw_os_error()
}

/// The soft and hard `RLIMIT_NOFILE`.
fn nofile() -> (libc::rlim_t, libc::rlim_t) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives on this stack.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    (r.rlim_cur, r.rlim_max)
}

fn set_nofile(soft: libc::rlim_t) {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile().1,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Descriptor limits from tight to enough: each start that fails must say why, with
/// the operating system's error as its source, and leave no child behind.
fn descriptors_run_out() {
    warm_up();
    let (soft, _) = nofile();
    let mut contexts = Vec::new();
    let mut started = false;
    for limit in 11..=256 {
        set_nofile(limit);
        let r = builder().spawn();
        set_nofile(soft);
        match r {
            Ok(gw) => {
                gw.exit(T).unwrap();
                started = true;
                eprintln!("started with RLIMIT_NOFILE {limit}");
                break;
            }
            Err(e) => {
                eprintln!("RLIMIT_NOFILE {limit}: {e}");
                match e.kind() {
                    ErrorKind::Io { context, .. } => {
                        assert_eq!(
                            os_error(&e),
                            Some(libc::EMFILE),
                            "limit {limit}: the source is the OS error: {e:?}"
                        );
                        if !contexts.contains(context) {
                            contexts.push(context.clone());
                        }
                    }
                    // The worker itself ran out of descriptors: it started, and died.
                    ErrorKind::Handshake { .. } => contexts.push("handshake".into()),
                    other => panic!("limit {limit}: expected an Io error, got {other:?}"),
                }
                assert_no_children(&format!("a start that failed at RLIMIT_NOFILE {limit}"));
            }
        }
    }
    assert!(started, "no start succeeded up to 256 descriptors");
    eprintln!("failures seen: {contexts:?}");
    // The interpreter's start itself ran out (the pipes for its stdout and stderr),
    // which is not a missing interpreter.
    assert!(
        contexts
            .iter()
            .any(|c| c.starts_with("starting python interpreter")),
        "{contexts:?}"
    );
}

/// A pids cgroup (v1) for this process, removed on drop after moving the process back.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn enter() -> Result<PidsCgroup, String> {
        let root = std::path::Path::new("/sys/fs/cgroup/pids");
        if !root.join("cgroup.procs").exists() {
            return Err("no cgroup v1 pids controller at /sys/fs/cgroup/pids".into());
        }
        let dir = root.join(format!("pixgate-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let g = PidsCgroup(dir);
        std::fs::write(g.0.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("joining the cgroup: {e}"))?;
        Ok(g)
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.0.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.0.join("pids.max"), max).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("pids.max"), "max");
        let _ = std::fs::write(
            "/sys/fs/cgroup/pids/cgroup.procs",
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Room for the fork and nothing more: the first thread the start needs cannot start.
fn threads_run_out() {
    warm_up();
    let cg = match PidsCgroup::enter() {
        Ok(cg) => cg,
        Err(why) => {
            eprintln!("skipped: a task limit needs a writable pids cgroup: {why}");
            return;
        }
    };
    // The warm-up gateway's threads end shortly after its exit.
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    };
    common::wait_until(
        || cg.current() == threads(),
        "only this process's threads count",
    );
    cg.set_max(&(cg.current() + 1).to_string());
    let r = builder().spawn();
    cg.set_max("max");
    let e = r.expect_err("a start with room for the fork only");
    eprintln!("with room for one more task: {e}");
    match e.kind() {
        ErrorKind::Io { context, .. } => assert_eq!(context, "starting a gateway thread"),
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert_eq!(os_error(&e), Some(libc::EAGAIN), "{e:?}");
    assert_no_children("a start whose thread could not start");
    // The limit lifted, a start works again.
    let gw = builder().spawn().expect("a start without the limit");
    gw.exit(T).unwrap();
    drop(cg);
}

#[test]
fn a_start_that_runs_out_of_descriptors_reports_why_and_leaves_no_child() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("descriptors") => descriptors_run_out(),
        Ok(_) => {}
        Err(_) => in_child(
            "a_start_that_runs_out_of_descriptors_reports_why_and_leaves_no_child",
            "descriptors",
        ),
    }
}

#[test]
fn a_start_whose_thread_cannot_start_reports_why_and_leaves_no_child() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("threads") => threads_run_out(),
        Ok(_) => {}
        Err(_) => in_child(
            "a_start_whose_thread_cannot_start_reports_why_and_leaves_no_child",
            "threads",
        ),
    }
}
