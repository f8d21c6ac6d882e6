//! Gateways: a worker process running the helper, and the host's handle on it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::bootstrap;
use crate::channel::{Channel, ExecOptions};
use crate::codec::{decode_payload, encode_payload};
use crate::error::{Error, ErrorKind, Result, WorkerExit};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader, MsgType, build_frame};
use crate::inbox::Shared;
use crate::output::{OutputLine, OutputMode, OutputSink, Stream};
use crate::spec::{HelperSource, Spec};
use crate::value::Value;

/// The protocol version this host speaks (see `docs/PROTOCOL.md`).
pub const PROTOCOL_VERSION: i64 = 1;

/// The helper version this crate embeds; an installed helper must match it.
pub const HELPER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default deadline for the worker's handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default deadline for a polite exit when a [`Gateway`] is dropped.
pub const DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_GATEWAY: AtomicUsize = AtomicUsize::new(0);

/// What the worker reported in its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Protocol version.
    pub protocol: i64,
    /// Helper package version.
    pub helper_version: String,
    /// Where the helper came from.
    pub helper_source: HelperSource,
    /// Python version, such as `3.11.7`.
    pub python_version: String,
    /// The Python implementation, lower case: `cpython`, `jython`, `pypy` (`cpython`
    /// when the worker does not say).
    pub implementation: String,
    /// numpy version, when numpy is importable.
    pub numpy_version: Option<String>,
    /// Process id.
    pub pid: u32,
    /// `sys.executable` of the worker.
    pub executable: String,
}

impl WorkerInfo {
    /// Implementation and version, as `cpython 3.11.7` or `jython 2.7.3`.
    pub fn interpreter(&self) -> String {
        format!("{} {}", self.implementation, self.python_version)
    }
}

/// Configures and spawns a [`Gateway`].
#[derive(Clone, Debug)]
pub struct GatewayBuilder {
    pub(crate) spec: String,
    handshake_timeout: Duration,
    exit_timeout: Duration,
    output: OutputMode,
    max_frame_len: u32,
    spin: Duration,
}

impl GatewayBuilder {
    /// How long to wait for the worker's handshake (default 30 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// How long dropping the gateway waits for a polite exit before killing (default 2 s).
    pub fn exit_timeout(mut self, t: Duration) -> Self {
        self.exit_timeout = t;
        self
    }

    /// Where the worker's output goes (default: the host's stderr, prefixed).
    pub fn output(mut self, mode: OutputMode) -> Self {
        self.output = mode;
        self
    }

    /// The largest frame payload accepted in either direction (default 256 MiB; at most
    /// `i32::MAX`, the wire's limit).
    pub fn max_frame_len(mut self, len: u32) -> Self {
        self.max_frame_len = len.min(i32::MAX as u32);
        self
    }

    /// How long a thread waiting for the worker, and the worker waiting for the host,
    /// poll the pipe before they sleep (default 0: they sleep at once; at most 10 ms).
    ///
    /// A reply that arrives within that time then costs no wake-up, which on a virtual
    /// machine is most of a small round trip (BENCHMARKS.md, P1). The price is a core
    /// kept busy for up to `spin` after each message while waiting; the poll yields the
    /// CPU between attempts.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin.min(Duration::from_millis(10));
        self
    }

    /// Starts the worker and completes the handshake.
    ///
    /// The first start in a process also sweeps `/dev/shm` of segments left by killed
    /// processes ([`segment::sweep`](crate::segment::sweep)), on a background thread;
    /// the sweep's outcome never affects the start.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Spec`] for a bad spec, [`ErrorKind::InterpreterNotFound`] when the
    /// interpreter cannot be started, [`ErrorKind::Timeout`] when the handshake does not
    /// arrive in time, [`ErrorKind::Handshake`] when the worker dies or answers wrongly.
    pub fn spawn(self) -> Result<Gateway> {
        Gateway::start(self)
    }
}

/// A worker process running the helper, and the host's handle on it.
///
/// Dropping the gateway ends the worker: politely first, then by `SIGKILL` after the
/// exit timeout. Channels of a dropped gateway report [`ErrorKind::GatewayClosed`].
pub struct Gateway {
    shared: Arc<Shared>,
    info: WorkerInfo,
    exit_timeout: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("id", &self.shared.id)
            .field("pid", &self.shared.pid)
            .finish()
    }
}

impl Gateway {
    /// Spawns a worker from an execnet-style spec with default options.
    ///
    /// # Errors
    ///
    /// As [`GatewayBuilder::spawn`].
    pub fn spawn(spec: &str) -> Result<Gateway> {
        Gateway::builder(spec).spawn()
    }

    /// A builder for a gateway with non-default options.
    pub fn builder(spec: &str) -> GatewayBuilder {
        GatewayBuilder {
            spec: spec.to_string(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            exit_timeout: DEFAULT_EXIT_TIMEOUT,
            output: OutputMode::default(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            spin: Duration::ZERO,
        }
    }

    fn start(b: GatewayBuilder) -> Result<Gateway> {
        let spec = Spec::parse(&b.spec)?;
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| format!("gw{}", NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed)));
        if let Some(dir) = &spec.chdir {
            if !dir.is_dir() {
                return Err(Error::new(ErrorKind::Spec {
                    spec: b.spec.clone(),
                    reason: format!("chdir {} is not a directory", dir.display()),
                }));
            }
        }
        let python = interpreter(&spec);
        // Segments left by killed processes: removed on a thread of its own, once per
        // process; the outcome never affects the start (docs/ARCHITECTURE.md).
        crate::segment::sweep_once_in_background();

        // Protocol pipes. The child's ends are moved to descriptors 3 and 4 in the child;
        // copies at 10 and above keep dup2 from clobbering one with the other.
        let (to_worker_r, to_worker_w) = cloexec_pipe()?;
        let (from_worker_r, from_worker_w) = cloexec_pipe()?;
        let child_r = high_dup(&to_worker_r)?;
        let child_w = high_dup(&from_worker_w)?;
        drop((to_worker_r, from_worker_w));

        let mut cmd = Command::new(&python[0]);
        cmd.args(&python[1..]);
        if spec.dont_write_bytecode {
            // No .pyc next to sources, and no compiled helper in the code cache either.
            cmd.arg("-B").env("PIXGATE_NO_CODE_CACHE", "1");
        }
        cmd.args(["-u", "-c", bootstrap::LOADER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The spec's variables first: pixgate's own must not be overridden by them.
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.env("PIXGATE_GATEWAY_ID", &id)
            .env("PIXGATE_MAX_FRAME", b.max_frame_len.to_string())
            .env("PIXGATE_SPIN_US", b.spin.as_micros().to_string());
        match spec.helper {
            HelperSource::Bootstrap => cmd.env("PIXGATE_BOOTSTRAP", "1"),
            HelperSource::Installed => cmd.env_remove("PIXGATE_BOOTSTRAP"),
        };
        if let Some(dir) = &spec.chdir {
            cmd.current_dir(dir);
        }
        let (rfd, wfd) = (child_r.as_raw_fd(), child_w.as_raw_fd());
        let nice = spec.nice;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (dup2, nice, prctl, getppid, _exit); it allocates
        // nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || child_setup(rfd, wfd, nice, parent));
        }
        let mut child = spawn_child(cmd).map_err(|e| {
            Error::new(ErrorKind::InterpreterNotFound {
                path: python[0].clone(),
                reason: e.to_string(),
            })
        })?;
        drop((child_r, child_w));
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        drop(child); // reaped by the reaper thread below, by pid

        let sink = OutputSink::new(id.clone(), b.output.clone());
        let reader = FrameReader::new(from_worker_r, b.max_frame_len);
        let shared = Arc::new(
            Shared::new(
                id.clone(),
                pid,
                reader,
                to_worker_w,
                b.max_frame_len,
                sink,
                b.spin,
            )
            .map_err(|e| Error::io("creating wake-up pipes", e))?,
        );

        let s = Arc::clone(&shared);
        spawn_thread(format!("pixgate-{id}-stdout"), move || {
            s.sink.pump(stdout, Stream::Stdout)
        })?;
        let (stderr_done_tx, stderr_done) = mpsc::channel::<()>();
        let s = Arc::clone(&shared);
        spawn_thread(format!("pixgate-{id}-stderr"), move || {
            s.sink.pump(stderr, Stream::Stderr);
            drop(stderr_done_tx);
        })?;
        let s = Arc::clone(&shared);
        spawn_thread(format!("pixgate-{id}-reaper"), move || {
            reap(&s, stderr_done)
        })?;

        if spec.helper == HelperSource::Bootstrap {
            // A writer thread, so that a worker that never reads cannot block the host
            // past the handshake deadline; it ends when the pipe breaks.
            let s = Arc::clone(&shared);
            spawn_thread(format!("pixgate-{id}-bootstrap"), move || {
                let _ = s.write_frame(&bootstrap::bundle());
            })?;
        }

        let gw = Gateway {
            info: handshake(&shared, b.handshake_timeout).inspect_err(|_| {
                kill_and_wait(&shared);
            })?,
            shared,
            exit_timeout: b.exit_timeout,
        };
        if gw.info.protocol != PROTOCOL_VERSION
            || (gw.info.helper_source == HelperSource::Installed
                && gw.info.helper_version != HELPER_VERSION)
        {
            let reason = format!(
                "worker speaks protocol {} with helper {}; this host speaks protocol {} with helper {}",
                gw.info.protocol, gw.info.helper_version, PROTOCOL_VERSION, HELPER_VERSION
            );
            kill_and_wait(&gw.shared);
            return Err(Error::new(ErrorKind::Handshake { pid, reason }));
        }
        let s = Arc::clone(&gw.shared);
        spawn_thread(format!("pixgate-{id}-reader"), move || s.background())?;
        Ok(gw)
    }

    /// The state this gateway's channels share, for arrays made for its worker.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The gateway id (`id=` in the spec, else `gwN`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// What the worker reported at start-up.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// True until the worker has exited.
    pub fn is_alive(&self) -> bool {
        !self.shared.lock().child_gone
    }

    /// Runs `source` in the worker on a thread of its own, with a `channel` global
    /// connected to the returned [`Channel`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone.
    pub fn remote_exec(&self, source: &str) -> Result<Channel> {
        self.remote_exec_with(source, ExecOptions::default())
    }

    /// Runs `source` in the worker with options: the main thread, a file name for
    /// tracebacks, a function to call with keyword arguments.
    ///
    /// # Errors
    ///
    /// As [`Gateway::remote_exec`]; [`ErrorKind::Encode`] when a keyword argument cannot be
    /// encoded; [`ErrorKind::FrameTooLarge`] for a source over the frame limit.
    pub fn remote_exec_with(&self, source: &str, opts: ExecOptions) -> Result<Channel> {
        let task = Value::Tuple(vec![
            Value::from(source),
            opts.file_name.map(Value::Str).unwrap_or(Value::None),
            opts.call_name.map(Value::Str).unwrap_or(Value::None),
            Value::Dict(
                opts.kwargs
                    .into_iter()
                    .map(|(k, v)| (Value::Str(k), v))
                    .collect(),
            ),
        ]);
        let msg = if opts.main_thread {
            MsgType::ExecMain
        } else {
            MsgType::ChannelExec
        };
        let id = {
            let mut st = self.shared.lock();
            if st.closed_by_host || st.child_gone || st.is_broken() {
                return Err(self.shared.gone_error(st));
            }
            let id = st.next_id;
            st.next_id = st
                .next_id
                .checked_add(2)
                .ok_or_else(|| Error::protocol("channel ids exhausted on this gateway"))?;
            st.channels.insert(id, crate::inbox::ChanState::new());
            id
        };
        let channel = Channel::new(Arc::clone(&self.shared), id);
        let frame = build_frame(msg, id, |out| encode_payload(&task, out))?;
        let sending = crate::lease::send(&task, &self.shared.peer_ref())?;
        channel.send_frame(frame)?;
        sending.done();
        Ok(channel)
    }

    /// Asks the worker to exit, waits up to `timeout`, then kills it; always reaps it.
    /// Returns how it ended. Calling it again returns the same status.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] only if the process survives `SIGKILL` for 10 s (a process
    /// stuck in the kernel).
    pub fn exit(&self, timeout: Duration) -> Result<WorkerExit> {
        {
            let mut st = self.shared.lock();
            if let Some(e) = &st.exit {
                return Ok(e.clone());
            }
            st.closed_by_host = true;
        }
        if let Ok(frame) = build_frame(MsgType::GatewayTerminate, 0, |_| Ok::<_, Error>(())) {
            let _ = self.shared.write_frame(&frame);
        }
        if let Some(e) = wait_exit(&self.shared, Instant::now() + timeout) {
            return Ok(e);
        }
        self.kill()
    }

    /// Kills the worker with `SIGKILL` at once (a hard cancel of everything it runs) and
    /// reaps it. Pending and later operations on its channels fail.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] only if the process survives `SIGKILL` for 10 s.
    pub fn kill(&self) -> Result<WorkerExit> {
        kill_and_wait(&self.shared).ok_or_else(|| {
            Error::new(ErrorKind::Timeout {
                operation: format!("reaping killed worker {} (pid {})", self.id(), self.pid()),
                after: Duration::from_secs(10),
            })
        })
    }

    /// The output collected so far in [`OutputMode::Capture`], oldest first.
    pub fn take_output(&self) -> Vec<OutputLine> {
        self.shared.sink.take_captured()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.exit(self.exit_timeout);
    }
}

fn interpreter(spec: &Spec) -> Vec<String> {
    if !spec.python.is_empty() {
        return spec.python.clone();
    }
    match std::env::var("PIXGATE_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".to_string()],
    }
}

fn handshake(shared: &Shared, timeout: Duration) -> Result<WorkerInfo> {
    let pid = shared.pid;
    let deadline = Instant::now() + timeout;
    let bad = |reason: String| Error::new(ErrorKind::Handshake { pid, reason });
    let frame = match shared.read_handshake(deadline).map_err(&bad)? {
        Some(f) => f,
        None => {
            let st = shared.lock();
            if !st.child_gone && Instant::now() >= deadline {
                return Err(Error::new(ErrorKind::Timeout {
                    operation: format!("handshake with worker {} (pid {pid})", shared.id),
                    after: timeout,
                }));
            }
            drop(st);
            let exit = wait_exit(shared, Instant::now() + Duration::from_secs(5));
            let reason = match exit {
                Some(e) => format!("worker ended before answering: {e}"),
                None => "worker closed its protocol pipe without answering".to_string(),
            };
            return Err(bad(reason));
        }
    };
    if frame.msgtype != MsgType::Handshake as i8 || frame.channel != 0 {
        return Err(bad(format!(
            "expected a handshake on channel 0, got message type {} on channel {}",
            frame.msgtype, frame.channel
        )));
    }
    let v = decode_payload(&frame.payload).map_err(|e| bad(e.to_string()))?;
    let text = |k: &str| -> Result<String> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad(format!("handshake lacks {k:?}")))
    };
    Ok(WorkerInfo {
        protocol: v
            .get("protocol")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("handshake lacks \"protocol\"".into()))?,
        helper_version: text("helper")?,
        helper_source: match text("helper_source")?.as_str() {
            "installed" => HelperSource::Installed,
            _ => HelperSource::Bootstrap,
        },
        python_version: text("python")?,
        implementation: v
            .get("implementation")
            .and_then(Value::as_str)
            .unwrap_or("cpython")
            .to_string(),
        numpy_version: v.get("numpy").and_then(Value::as_str).map(str::to_string),
        pid: v
            .get("pid")
            .and_then(Value::as_i64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| bad("handshake lacks a valid \"pid\"".into()))?,
        executable: text("executable")?,
    })
}

/// Waits for the reaper to record the exit, until `deadline`.
fn wait_exit(shared: &Shared, deadline: Instant) -> Option<WorkerExit> {
    let mut st = shared.lock();
    loop {
        if let Some(e) = &st.exit {
            return Some(e.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        st = shared
            .exit_cond
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Sends `SIGKILL` unless the process is already gone, then waits for the reaper.
fn kill_and_wait(shared: &Shared) -> Option<WorkerExit> {
    {
        let mut st = shared.lock();
        st.closed_by_host = true;
        if !st.child_gone {
            // The reaper marks `child_gone` before reaping, under this lock, so the pid
            // still names our child here.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(shared.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    wait_exit(shared, Instant::now() + Duration::from_secs(10))
}

/// The reaper thread: waits for the child to exit, marks it gone before reaping it, and
/// records the status with the stderr tail.
fn reap(shared: &Shared, stderr_done: mpsc::Receiver<()>) {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
    let pid = nix::unistd::Pid::from_raw(shared.pid as i32);
    // Wait without reaping, so that the pid cannot be reused while `kill` may use it.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    shared.lock().child_gone = true;
    let status = loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let (code, signal) = match status {
        Ok(WaitStatus::Exited(_, c)) => (Some(c), None),
        Ok(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    };
    // Let the stderr pump drain what the worker wrote last (grandchildren may hold the
    // pipe open, so only briefly).
    let _ = stderr_done.recv_timeout(Duration::from_millis(500));
    shared.set_exit(WorkerExit {
        gateway: shared.id.clone(),
        pid: shared.pid,
        code,
        signal,
        stderr_tail: shared.sink.stderr_tail(),
    });
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating protocol pipe", e.into()))
}

fn high_dup(fd: &OwnedFd) -> Result<OwnedFd> {
    nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })
        .map_err(|e| Error::io("duplicating protocol pipe", e.into()))
}

/// Runs in the forked child before exec. Async-signal-safe calls only.
fn child_setup(rfd: i32, wfd: i32, nice: Option<i32>, parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: plain system calls on descriptors this process owns; no memory is shared
    // with other threads (the child has only this one).
    unsafe {
        if libc::dup2(rfd, 3) < 0 || libc::dup2(wfd, 4) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(n) = nice {
            nix::errno::Errno::clear();
            if libc::nice(n) == -1 && nix::errno::Errno::last_raw() != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        #[cfg(target_os = "linux")]
        {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
    }
    let _ = parent;
    Ok(())
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns the child from one long-lived thread: Linux's parent-death signal fires when
/// the *thread* that forked the child exits, so forking from a short-lived user thread
/// would kill the worker with it.
fn spawn_child(cmd: Command) -> std::io::Result<std::process::Child> {
    use std::sync::{Mutex, OnceLock};
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("pixgate-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("starting the pixgate spawner thread");
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = mpsc::channel();
    let mut cmd = cmd;
    let job: SpawnJob = Box::new(move || {
        let _ = done_tx.send(cmd.spawn());
    });
    crate::output::lock(tx)
        .send(job)
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    done_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::io("starting a gateway thread", e))
}
