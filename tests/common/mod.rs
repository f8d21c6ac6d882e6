//! Shared helpers for the integration tests: the interpreter, timeouts, leak checks.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use pixgate::{Gateway, OutputMode};

/// Every blocking call in the tests waits at most this long.
pub const T: Duration = Duration::from_secs(20);

/// The interpreter under test: `$PIXGATE_PYTHON`, else the project's venv, else python3.
pub fn python() -> String {
    if let Ok(p) = std::env::var("PIXGATE_PYTHON") {
        if !p.is_empty() {
            return p;
        }
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if Path::new(venv).exists() {
        return venv.to_string();
    }
    "python3".to_string()
}

/// A spec for the test interpreter with extra keys appended: a local worker, or one
/// through the test sshd when the batteries run over ssh ([`over_ssh`]).
pub fn spec(extra: &str) -> String {
    if over_ssh() {
        return sshd().spec(extra);
    }
    let mut s = format!("popen//python={}", python());
    if !extra.is_empty() {
        s.push_str("//");
        s.push_str(extra);
    }
    s
}

/// A gateway on the test interpreter whose output is captured.
pub fn gateway() -> Gateway {
    Gateway::builder(&spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("spawn gateway")
}

/// True while a process with this pid exists (and is not a zombie we could reap).
pub fn process_alive(pid: u32) -> bool {
    state_in(format!("/proc/{pid}/stat")).is_some_and(|s| s != 'Z')
}

/// The state letter (`R`, `S`, `T`, `Z`, …) of a `/proc/…/stat` file; None when it
/// cannot be read (the process or thread is gone).
fn state_in(stat_path: impl AsRef<Path>) -> Option<char> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Waits until `pid` is gone; returns how long that took, or None after `limit`.
pub fn wait_gone(pid: u32, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if !process_alive(pid) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Fails if /dev/shm holds a pixgate segment created by this process, or if this
/// process still holds a descriptor or a mapping of an anonymous pixgate object (its
/// own, or one a worker moved here).
pub fn assert_no_segments() {
    let prefix = format!("pxg-{:x}-", std::process::id());
    let leaked: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(leaked.is_empty(), "leaked segments: {leaked:?}");
    let held = anonymous_objects_of("self");
    assert!(held.is_empty(), "anonymous segments still held: {held:?}");
}

/// The anonymous pixgate objects process `pid` (or `"self"`) holds a descriptor or a
/// mapping of, by their `/memfd:pxg-…` labels.
pub fn anonymous_objects_of(pid: &str) -> Vec<String> {
    let mut held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .filter(|t| t.starts_with("/memfd:pxg-"))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        held.extend(
            maps.lines()
                .filter_map(|l| l.find("/memfd:pxg-").map(|at| l[at..].to_string())),
        );
    }
    held.sort();
    held.dedup();
    held
}

/// The segments of either transport that the processes `pids` hold: the files in
/// /dev/shm named after them, and the anonymous objects (whoever made them) they hold a
/// descriptor or a mapping of; as `/pxg-…` names.
pub fn segments_of(pids: &[u32]) -> Vec<String> {
    let prefixes: Vec<String> = pids.iter().map(|p| format!("pxg-{p:x}-")).collect();
    let mut out: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
                .map(|n| format!("/{n}"))
                .collect()
        })
        .unwrap_or_default();
    for pid in pids {
        for label in anonymous_objects_of(&pid.to_string()) {
            let name = label
                .trim_start_matches("/memfd:")
                .trim_end_matches(" (deleted)");
            out.push(format!("/{name}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `/proc/PID/maps` lists a mapping of the segment `name` (`/pxg-…`): a
/// named one by its path in /dev/shm, an anonymous one as `/memfd:pxg-…`.
pub fn maps_segment(pid: u32, name: &str) -> bool {
    let anonymous = format!("/memfd:{} ", name.trim_start_matches('/'));
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.contains(&format!("/dev/shm{name}")) || m.contains(&anonymous))
        .unwrap_or(false)
}

/// True while the segment `name` (`/pxg-…`) exists in either transport: a file in
/// /dev/shm (named), or an anonymous object that a process of this user still holds a
/// descriptor (`/proc/PID/fd` → `/memfd:pxg-… (deleted)`) or a mapping of.
pub fn segment_exists(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let label = name.trim_start_matches('/');
    if Path::new("/dev/shm").join(label).exists() {
        return true;
    }
    let link = format!("/memfd:{label} (deleted)");
    let uid = nix::unistd::geteuid().as_raw();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.filter_map(|e| e.ok()) {
        let pid = p.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if p.metadata().map_or(true, |m| m.uid() != uid) {
            continue;
        }
        let held = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == link.as_str()))
        });
        let mapped = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .is_ok_and(|m| m.lines().any(|l| l.ends_with(&link)));
        if held || mapped {
            return true;
        }
    }
    false
}

/// The descriptors of this process that lead to the anonymous object `name` (`/pxg-…`).
pub fn memfd_fds(name: &str) -> Vec<i32> {
    let want = format!("/memfd:{} (deleted)", name.trim_start_matches('/'));
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                (link.to_string_lossy() == want)
                    .then(|| e.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// Serialises tests that create segments: each one checks at its end that this
/// process's segments are gone, which other tests running at the same time would break.
///
/// Process-wide also when a binary holds several copies of this module (tests/ssh.rs
/// includes other test files): besides the mutex, an `flock` on a file of this process,
/// which two descriptors of it contend for like two processes.
pub fn serial() -> Serial {
    use std::os::fd::AsRawFd;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join(format!("pixgate-serial-{}.lock", std::process::id()));
    let file = std::fs::File::create(path).expect("serial lock file");
    // SAFETY: flock on a descriptor this function owns.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {}
    Serial {
        _guard: guard,
        _file: file,
    }
}

/// Held while a test runs alone among those that create segments ([`serial`]).
pub struct Serial {
    _guard: std::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

/// Fails if /dev/shm holds any pixgate segment whose creator is gone or is a child of
/// this test (for tests whose segments are made by other processes, such as the CLI).
pub fn assert_no_segments_anywhere() {
    let leaked: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("pxg-"))
                .filter(|n| {
                    // pxg-<pid hex>-...: only segments whose creator no longer runs.
                    n.split('-')
                        .nth(1)
                        .and_then(|p| u32::from_str_radix(p, 16).ok())
                        .is_some_and(|pid| !process_alive(pid))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(leaked.is_empty(), "leaked segments: {leaked:?}");
}

/// Runs the `pixgate` binary with a deadline (60 s; killed if it overruns).
pub fn run_pixgate(args: &[&str]) -> std::process::Output {
    run_pixgate_env(args, &[])
}

/// As [`run_pixgate`], with these environment variables set.
pub fn run_pixgate_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixgate"))
        .args(args)
        .env("PIXGATE_PYTHON", python())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pixgate");
    // Read both pipes while it runs: output larger than a pipe holds would otherwise
    // block it in a write until the deadline.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if t.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            let _ = child.wait();
            panic!("pixgate {args:?} ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes end with the process (it starts no children that keep them).
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Stdout of a `pixgate` run that must succeed.
pub fn pixgate_ok(args: &[&str]) -> String {
    let out = run_pixgate(args);
    assert!(
        out.status.success(),
        "pixgate {args:?} failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Lossy UTF-8 text of captured output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A host process (`pixgate exec`) running `source` in its worker, and the first line
/// the remote code sent (printed by the host). Kill it to play a crashed host.
pub fn host_running(id: &str, source: &str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut host = Command::new(env!("CARGO_BIN_EXE_pixgate"))
        .args(["exec", "--spec", &spec(&format!("id={id}")), source])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pixgate exec");
    let mut line = String::new();
    BufReader::new(host.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line from the host");
    (host, line.trim().to_string())
}

/// Waits up to [`T`] for `cond` to hold, then asserts it.
pub fn wait_until(cond: impl Fn() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !cond() && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(cond(), "timed out waiting: {what}");
}

/// Stops `pid` with `SIGSTOP` and waits until every thread of it has stopped.
///
/// `kill` returning does not mean that: the kernel wakes one thread to begin the group
/// stop, and a thread that is already running goes on until that one is scheduled
/// (measured: a worker's reader thread read GATEWAY_TERMINATE and ended the process
/// with code 0 after the `SIGSTOP` was sent, its main thread never having run).
pub fn stop_process(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    wait_until(
        || all_threads_stopped(pid),
        "every thread of the worker stopped",
    );
}

/// True when `pid` has threads and `/proc/PID/task/*/stat` says each is stopped.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        if state_in(task.path().join("stat")) != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

/// A tmpfs mounted for a test (root only), unmounted and removed on drop.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=1m,mode=0700`) on a new directory
    /// named after `tag` and this process.
    pub fn mount(tag: &str, options: &str) -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, tag])
            .arg(&dir)
            .status();
        match status {
            Ok(s) if s.success() => Ok(Tmpfs(dir)),
            other => {
                let _ = std::fs::remove_dir(&dir);
                Err(format!("mount failed: {other:?}"))
            }
        }
    }

    /// The names of the files in it.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// True when the batteries run over ssh: in the `ssh` test binary (which includes the
/// channel and array batteries as modules), or with `PIXGATE_TEST_SSH=1`.
pub fn over_ssh() -> bool {
    std::env::var("PIXGATE_TEST_SSH").is_ok_and(|v| v == "1")
        || std::env::current_exe().is_ok_and(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh-"))
        })
}

/// Where the OpenSSH server is expected (`make sshd` installs it).
pub const SSHD: &str = "/usr/sbin/sshd";

/// True when tests that would skip for a missing piece of the environment must fail.
pub fn strict() -> bool {
    std::env::var("PIXGATE_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// An OpenSSH server of the tests' own on 127.0.0.1: generated host and user keys, no
/// passwords, its files in a temporary directory. Killed when dropped; the one shared
/// by a test binary ([`sshd`]) ends with the binary (parent-death signal).
pub struct Sshd {
    child: std::process::Child,
    /// The server's directory: keys, configuration, pid file.
    pub dir: std::path::PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// The user's private key.
    pub key: std::path::PathBuf,
    /// The user to log in as (the one running the tests).
    pub user: String,
}

impl Sshd {
    /// Starts a server, or returns None (after a loud note) when sshd is not installed
    /// outside strict mode; panics naming `make sshd` in strict mode.
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            let msg = format!(
                "{SSHD} is missing: the ssh gateway tests need OpenSSH's server \
                 (`make sshd` installs it)"
            );
            if strict() {
                panic!("{msg}");
            }
            eprintln!("\n*** NOT RUN: {msg} ***\n");
            return None;
        }
        // Unique also across the copies of this module that one test binary may hold
        // (tests/ssh.rs includes other test files, each with its own `common`).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pixgate-sshd-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT_SSHD.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("sshd directory");
        let keygen = |name: &str| {
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .output()
                .expect("ssh-keygen runs");
            assert!(
                out.status.success(),
                "ssh-keygen {name}: {} {}",
                text(&out.stdout),
                text(&out.stderr)
            );
        };
        keygen("host_key");
        keygen("user_key");
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let d = dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n\
             UsePAM no\nPidFile {d}/sshd.pid\nLogLevel ERROR\nMaxStartups 200:30:400\n\
             MaxSessions 200\nPrintMotd no\nAcceptEnv no\n"
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // The privilege separation directory, which a fresh installation may lack.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = {
            #[cfg(target_os = "linux")]
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new(SSHD);
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .stdin(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("sshd.log")).expect("sshd log"));
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
            #[cfg(target_os = "linux")]
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                    Ok(())
                });
            }
            cmd.spawn().expect("sshd starts")
        };
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| text(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "root".into());
        let key = dir.join("user_key");
        let mut sshd = Sshd {
            child,
            dir,
            port,
            key,
            user,
        };
        let until = Instant::now() + T;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited at start: {status}");
            }
            assert!(
                Instant::now() < until,
                "sshd does not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(sshd)
    }

    /// The ssh options that reach this server: the key, the port, no host key checks.
    pub fn ssh_options(&self) -> String {
        format!(
            "-p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR -o BatchMode=yes",
            self.port,
            self.key.display()
        )
    }

    /// `ssh=OPTIONS user@127.0.0.1//python=TEST PYTHON`, with extra keys appended.
    pub fn spec(&self, extra: &str) -> String {
        let mut s = format!(
            "ssh={} {}@127.0.0.1//python={}",
            self.ssh_options(),
            self.user,
            python()
        );
        if !extra.is_empty() {
            s.push_str("//");
            s.push_str(extra);
        }
        s
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_SSHD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The server shared by the tests of one binary, started on a thread that lives as
/// long as the binary (its parent-death signal fires when the forking thread ends).
/// Panics when there is none: callers check [`sshd_available`] first.
pub fn sshd() -> &'static Sshd {
    static SHARED: std::sync::OnceLock<Option<Sshd>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Sshd::start());
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("sshd thread")
        })
        .as_ref()
        .expect("sshd is not installed (`make sshd`)")
}

/// Whether the shared sshd can run; false (after a loud note) outside strict mode
/// when it is not installed.
pub fn sshd_available() -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    if strict() {
        panic!("{SSHD} is missing: the ssh gateway tests need it (`make sshd` installs it)");
    }
    eprintln!("\n*** NOT RUN: {SSHD} is missing (`make sshd` installs it) ***\n");
    false
}

/// The first line `child` writes on its (piped) stdout, waiting at most [`T`]; past
/// that, the child is killed and reaped and the test fails, naming `what` it waited for.
#[allow(dead_code)]
pub fn first_line(child: &mut std::process::Child, what: &str) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(T) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} within {T:?}");
        }
    }
}

/// Sends SIGTERM to one thread of `pid` other than its main one (`tgkill`), as the
/// kernel may deliver a process's SIGTERM to any thread that does not block it; the
/// threads are found in `/proc/PID/task`. Returns the thread's id, or None when the
/// process has no other thread.
#[cfg(target_os = "linux")]
pub fn sigterm_another_thread(pid: u32) -> Option<u32> {
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != pid)?;
    // SAFETY: tgkill with plain integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::c_long::from(pid as i32),
            libc::c_long::from(tid as i32),
            libc::c_long::from(libc::SIGTERM),
        )
    };
    (rc == 0).then_some(tid)
}
