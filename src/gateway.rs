//! Gateways: a worker process running the helper, and the host's handle on it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::bootstrap;
use crate::channel::{Channel, ExecOptions};
use crate::codec::decode_payload;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result, WorkerExit};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader, MsgType, build_frame};
use crate::output::{OutputLine, OutputMode, OutputSink, Stream};
use crate::segment::Transport;
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
    /// How arrays reach this worker: anonymous segments by descriptor when both sides
    /// can (the default), else named segments.
    pub transport: Transport,
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
    pub(crate) max_frame_len: u32,
    pub(crate) spin: Duration,
    pub(crate) transport: Option<Transport>,
    python: Option<std::path::PathBuf>,
}

impl GatewayBuilder {
    /// The interpreter to run, as one path: spaces and other characters are part of
    /// it (the spec's `python=` is split on whitespace, as execnet splits it, so that it
    /// can carry flags). Overrides the spec's `python=`.
    ///
    /// Without either, a local worker runs `$PIXGATE_PYTHON` if set, else `python3`
    /// from `PATH`; an ssh worker runs `python3` on the remote machine.
    ///
    /// ```no_run
    /// # fn main() -> pixgate::Result<()> {
    /// let gw = pixgate::Gateway::builder("popen")
    ///     .python("/opt/My Tools/venv/bin/python")
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn python(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.python = Some(path.into());
        self
    }

    /// How arrays reach the worker (default: the spec's `transport=`, else
    /// [`Transport::from_env`]). With [`Transport::Anonymous`] the gateway gets a
    /// descriptor socket, provided the worker can pass descriptors (CPython 3.9 or later
    /// on Linux or macOS); otherwise, and with [`Transport::Named`], arrays travel as
    /// named segments, and an anonymous array cannot be sent to it.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

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
    /// interpreter cannot be executed (missing, not executable, not a program),
    /// [`ErrorKind::Io`] when the start fails for another reason (descriptors or
    /// threads exhausted; the operating system's error is its source),
    /// [`ErrorKind::Timeout`] when the handshake does not arrive in time,
    /// [`ErrorKind::Handshake`] when the worker dies or answers wrongly. After any of
    /// these, no process of the failed start remains: a child already forked is killed
    /// and reaped.
    pub fn spawn(self) -> Result<Gateway> {
        Gateway::start(self)
    }
}

/// A worker process running the helper, and the host's handle on it.
///
/// Dropping the gateway ends the worker: politely first, then by `SIGKILL` after the
/// exit timeout, which bounds the whole drop also when the worker has stopped reading.
/// The worker leads a process group of its own; processes its remote code starts are
/// in it and end with the worker. Channels of a dropped gateway report
/// [`ErrorKind::GatewayClosed`].
pub struct Gateway {
    shared: Arc<Connection>,
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
            transport: None,
            python: None,
        }
    }

    fn start(b: GatewayBuilder) -> Result<Gateway> {
        let mut spec = Spec::parse(&b.spec)?;
        if let Some(path) = &b.python {
            let Some(path) = path.to_str() else {
                return Err(Error::new(ErrorKind::Spec {
                    spec: b.spec.clone(),
                    reason: format!("interpreter path {} is not UTF-8", path.display()),
                }));
            };
            spec.python = vec![path.to_string()];
        }
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| format!("gw{}", NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed)));
        // Segments left by killed processes: removed on a thread of its own, once per
        // process; the outcome never affects the start (docs/ARCHITECTURE.md).
        crate::segment::sweep_once_in_background();
        if spec.is_ssh() {
            return crate::ssh::start(b, spec, id);
        }
        if let Some(dir) = &spec.chdir {
            if !dir.is_dir() {
                return Err(Error::new(ErrorKind::Spec {
                    spec: b.spec.clone(),
                    reason: format!("chdir {} is not a directory", dir.display()),
                }));
            }
        }
        let python = interpreter(&spec);

        // Protocol pipes. The child's ends are moved to descriptors 3 and 4 in the child;
        // copies at 10 and above keep dup2 from clobbering one with the other.
        let (to_worker_r, to_worker_w) = cloexec_pipe()?;
        let (from_worker_r, from_worker_w) = cloexec_pipe()?;
        let child_r = high_dup(&to_worker_r)?;
        let child_w = high_dup(&from_worker_w)?;
        drop((to_worker_r, from_worker_w));
        // The descriptor socket (anonymous transport), fd 5 in the child.
        let wanted = b
            .transport
            .or(spec.transport)
            .unwrap_or_else(Transport::from_env);
        let (sock_host, sock_child) = if wanted == Transport::Anonymous {
            let (host, child) = crate::descriptors::pair()
                .map_err(|e| Error::io("creating the descriptor socket", e))?;
            (Some(host), Some(high_dup(&child)?))
        } else {
            (None, None)
        };

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
        for (k, v) in worker_env(&spec, &id, &b, wanted) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        match sock_child {
            Some(_) => cmd.env("PIXGATE_DESCRIPTORS", "5"),
            None => cmd.env_remove("PIXGATE_DESCRIPTORS"),
        };
        if let Some(dir) = &spec.chdir {
            cmd.current_dir(dir);
        }
        let (rfd, wfd) = (child_r.as_raw_fd(), child_w.as_raw_fd());
        let dfd = sock_child.as_ref().map(|fd| fd.as_raw_fd());
        let nice = spec.nice;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (setpgid, dup2, nice, prctl, getppid, _exit); it
        // allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || child_setup(Some((rfd, wfd)), dfd, nice, parent));
        }
        let mut child = spawn_child(cmd).map_err(|e| spawn_error(&python[0], e))?;
        // From here on every early return kills and reaps the child.
        let guard = StartGuard::new(child.id());
        drop((child_r, child_w, sock_child));
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        drop(child); // reaped by the reaper thread below, by pid
        let boot = (spec.helper == HelperSource::Bootstrap).then(bootstrap::bundle);
        Gateway::finish(Started {
            b,
            id,
            pid,
            guard,
            from_worker: from_worker_r,
            to_worker: to_worker_w,
            stdout: Some(stdout.into()),
            stderr: stderr.into(),
            boot,
            sock_host,
            by_value: wanted == Transport::ByValue,
        })
    }

    /// The part of a start common to local and ssh workers, once the child runs: the
    /// shared state, the output pumps, the reaper, the bootstrap, the handshake.
    pub(crate) fn finish(s: Started) -> Result<Gateway> {
        let Started {
            b,
            id,
            pid,
            mut guard,
            from_worker,
            to_worker,
            stdout,
            stderr,
            boot,
            sock_host,
            by_value,
        } = s;
        let sink = OutputSink::new(id.clone(), b.output.clone());
        let reader = FrameReader::new(from_worker, b.max_frame_len);
        let shared = Arc::new(
            Connection::new(
                id.clone(),
                pid,
                reader,
                to_worker,
                b.max_frame_len,
                sink,
                b.spin,
            )
            .map_err(|e| Error::io("creating wake-up pipes", e))?,
        );
        if by_value {
            shared.set_by_value();
        }

        // The receiver disconnects once both pumps have ended.
        let (pumped_tx, pumped) = mpsc::channel::<()>();
        if let Some(stdout) = stdout {
            let (s, done) = (Arc::clone(&shared), pumped_tx.clone());
            spawn_thread(format!("pixgate-{id}-stdout"), move || {
                s.sink.pump(std::fs::File::from(stdout), Stream::Stdout);
                drop(done);
            })?;
        }
        let (s, done) = (Arc::clone(&shared), pumped_tx);
        spawn_thread(format!("pixgate-{id}-stderr"), move || {
            s.sink.pump(std::fs::File::from(stderr), Stream::Stderr);
            drop(done);
        })?;
        let s = Arc::clone(&shared);
        spawn_thread(format!("pixgate-{id}-reaper"), move || reap(&s, pumped))?;
        guard.reaper_runs(Arc::clone(&shared));

        if let Some(boot) = boot {
            // A writer thread, so that a worker that never reads cannot block the host
            // past the handshake deadline; it ends when the pipe breaks.
            let s = Arc::clone(&shared);
            spawn_thread(format!("pixgate-{id}-bootstrap"), move || {
                let _ = s.write_frame(&boot);
            })?;
        }

        let mut info = handshake(&shared, b.handshake_timeout)?;
        shared.set_worker_pid(info.pid);
        // Anonymous segments need both sides to pass descriptors; else names.
        info.transport = match sock_host {
            _ if by_value => Transport::ByValue,
            Some(sock) if info.transport == Transport::Anonymous => {
                shared.set_descriptors(crate::descriptors::DescriptorSocket::new(sock));
                Transport::Anonymous
            }
            _ => Transport::Named,
        };
        if info.protocol != PROTOCOL_VERSION
            || (info.helper_source == HelperSource::Installed
                && info.helper_version != HELPER_VERSION)
        {
            let reason = format!(
                "worker speaks protocol {} with helper {}; this host speaks protocol {} with helper {}",
                info.protocol, info.helper_version, PROTOCOL_VERSION, HELPER_VERSION
            );
            return Err(Error::new(ErrorKind::Handshake { pid, reason }));
        }
        let s = Arc::clone(&shared);
        spawn_thread(format!("pixgate-{id}-reader"), move || s.background())?;
        guard.disarm();
        Ok(Gateway {
            info,
            shared,
            exit_timeout: b.exit_timeout,
        })
    }

    /// The state this gateway's channels share, for arrays made for its worker.
    pub(crate) fn shared(&self) -> &Arc<Connection> {
        &self.shared
    }

    /// The gateway id (`id=` in the spec, else `gwN`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// How arrays reach this worker (see [`GatewayBuilder::transport`]).
    pub fn transport(&self) -> Transport {
        self.info.transport
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
            st.channels.insert(id, crate::connection::ChanState::new());
            id
        };
        let channel = Channel::new(Arc::clone(&self.shared), id);
        channel.send_encoded(msg, &task, false)?;
        Ok(channel)
    }

    /// Sets how strings load on the channels created from now on, on both sides, as
    /// execnet's `gateway.reconfigure(py2str_as_py3str, py3str_as_py2str)`: the host's
    /// ends of later channels decode with `options`, and a RECONFIGURE message on
    /// channel 0 makes the worker do the same for the channels it creates after it.
    /// Channels that exist keep their options ([`Channel::reconfigure`] changes one).
    /// The default is [`LoadOptions::CHANNEL`](crate::LoadOptions::CHANNEL): a Python 2
    /// `str` (`M`) loads as text.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone;
    /// the options are not changed then.
    pub fn reconfigure(&self, options: crate::LoadOptions) -> Result<()> {
        let frame = crate::channel::reconfigure_frame(0, options)?;
        {
            let mut st = self.shared.lock();
            if st.closed_by_host || st.child_gone || st.is_broken() {
                return Err(self.shared.gone_error(st));
            }
            self.shared
                .reconfigured
                .store(true, std::sync::atomic::Ordering::Release);
            st.set_load_options(options);
        }
        self.shared.write_frame(&frame)
    }

    /// How the channels created from now on load strings (see [`Gateway::reconfigure`]).
    pub fn load_options(&self) -> crate::LoadOptions {
        self.shared.lock().load_options(0)
    }

    /// Asks the worker to exit, waits up to `timeout`, then kills it; always reaps it.
    /// Returns how it ended. Calling it again returns the same status.
    ///
    /// `timeout` covers the whole polite part: waiting for the pipe to the worker (full
    /// when the worker stopped reading, or while another thread's send is under way),
    /// writing GATEWAY_TERMINATE, and waiting for the process to end. Then the worker
    /// and its process group get `SIGKILL`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] only if the process survives `SIGKILL` for 10 s (a process
    /// stuck in the kernel).
    pub fn exit(&self, timeout: Duration) -> Result<WorkerExit> {
        let deadline = Instant::now() + timeout;
        {
            let mut st = self.shared.lock();
            if let Some(e) = &st.exit {
                return Ok(e.clone());
            }
            st.closed_by_host = true;
        }
        if let Ok(frame) = build_frame(MsgType::GatewayTerminate, 0, |_| Ok::<_, Error>(())) {
            let _ = self.shared.write_frame_until(&frame, Some(deadline));
        }
        if let Some(e) = wait_exit(&self.shared, deadline) {
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

fn handshake(shared: &Connection, timeout: Duration) -> Result<WorkerInfo> {
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
        // What the worker offers; the start decides what the gateway uses.
        transport: if v.get("descriptors").and_then(Value::as_bool) == Some(true) {
            Transport::Anonymous
        } else {
            Transport::Named
        },
    })
}

/// Waits for the reaper to record the exit, until `deadline`.
fn wait_exit(shared: &Connection, deadline: Instant) -> Option<WorkerExit> {
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

/// A child that runs, and what the rest of its start needs ([`Gateway::finish`]).
pub(crate) struct Started {
    pub(crate) b: GatewayBuilder,
    pub(crate) id: String,
    /// The local child's pid (the worker, or ssh).
    pub(crate) pid: u32,
    pub(crate) guard: StartGuard,
    pub(crate) from_worker: OwnedFd,
    pub(crate) to_worker: OwnedFd,
    /// The worker's raw stdout; None when stdout carries the frames (ssh).
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: OwnedFd,
    /// Bytes written to the worker before any frame: the bundle, after the ssh
    /// bootstrap's own part.
    pub(crate) boot: Option<Vec<u8>>,
    pub(crate) sock_host: Option<OwnedFd>,
    pub(crate) by_value: bool,
}

/// The worker's environment as pixgate sets it: the spec's variables first, then
/// pixgate's own, which they cannot override (docs/PROTOCOL.md §2.3). `None` removes
/// a variable.
pub(crate) fn worker_env(
    spec: &Spec,
    id: &str,
    b: &GatewayBuilder,
    transport: Transport,
) -> Vec<(String, Option<String>)> {
    let mut env: Vec<(String, Option<String>)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let mut set = |k: &str, v: Option<String>| env.push((k.to_string(), v));
    if spec.dont_write_bytecode {
        set("PIXGATE_NO_CODE_CACHE", Some("1".into()));
    }
    set("PIXGATE_GATEWAY_ID", Some(id.to_string()));
    set("PIXGATE_MAX_FRAME", Some(b.max_frame_len.to_string()));
    set("PIXGATE_SPIN_US", Some(b.spin.as_micros().to_string()));
    set(
        "PIXGATE_BOOTSTRAP",
        (spec.helper == HelperSource::Bootstrap).then(|| "1".to_string()),
    );
    set(
        "PIXGATE_BY_VALUE",
        (transport == Transport::ByValue).then(|| "1".to_string()),
    );
    env
}

/// Ends the child of a start that fails after the fork: on every early return from
/// [`Gateway::start`], the child and its process group get `SIGKILL` and the child is
/// reaped — by the reaper thread once it runs, else here.
pub(crate) struct StartGuard {
    pid: Option<u32>,
    shared: Option<Arc<Connection>>,
}

impl StartGuard {
    pub(crate) fn new(pid: u32) -> StartGuard {
        StartGuard {
            pid: Some(pid),
            shared: None,
        }
    }

    /// The reaper thread waits for the child from now on.
    fn reaper_runs(&mut self, shared: Arc<Connection>) {
        self.shared = Some(shared);
    }

    /// The start succeeded: the gateway owns the child.
    fn disarm(mut self) {
        self.pid = None;
        self.shared = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let _ = kill_and_wait(&shared);
        } else if let Some(pid) = self.pid.take() {
            kill_and_reap(pid);
        }
    }
}

/// Kills a child that no reaper thread waits for and reaps it, waiting up to 10 s.
fn kill_and_reap(pid: u32) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    // Not reaped yet (only this function reaps it), so the pid is still our child's.
    kill_worker(pid);
    let child = nix::unistd::Pid::from_raw(pid as i32);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// The error for an interpreter that could not be started: [`ErrorKind::InterpreterNotFound`]
/// when the exec itself failed for the file (missing, not executable, not a program),
/// else [`ErrorKind::Io`] with the operating system's error (descriptors exhausted, no
/// memory, a failed set-up step in the child).
pub(crate) fn spawn_error(path: &str, e: std::io::Error) -> Error {
    let not_runnable = matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::ENOEXEC
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ENAMETOOLONG
                | libc::EISDIR
                | libc::ETXTBSY
        )
    );
    if not_runnable {
        Error::new(ErrorKind::InterpreterNotFound {
            path: path.to_string(),
            reason: e.to_string(),
        })
    } else {
        Error::io(format!("starting python interpreter {path:?}"), e)
    }
}

/// Sends `SIGKILL` to the worker and its process group unless the worker is already
/// gone, then waits for the reaper.
fn kill_and_wait(shared: &Connection) -> Option<WorkerExit> {
    {
        let mut st = shared.lock();
        st.closed_by_host = true;
        if !st.child_gone {
            // The reaper marks `child_gone` before reaping, under this lock, so the pid
            // still names our child here, and the group it leads.
            kill_worker(shared.pid);
        }
    }
    wait_exit(shared, Instant::now() + Duration::from_secs(10))
}

/// `SIGKILL` to the worker and to its process group (the processes remote code
/// started). The group's id is the worker's pid (`setpgid(0, 0)` in `child_setup`);
/// the caller must know that the worker is not reaped yet, so that neither the pid nor
/// the group id can name another process.
fn kill_worker(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // The worker first: it may have left its group.
    let _ = kill(pid, Signal::SIGKILL);
    let _ = killpg(pid, Signal::SIGKILL);
}

/// The reaper thread: waits for the child to exit, ends the rest of its process group,
/// marks it gone before reaping it, and records the status with the stderr tail.
fn reap(shared: &Connection, pumped: mpsc::Receiver<()>) {
    use nix::sys::wait::{WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(shared.pid as i32);
    // Wait without reaping, so that the pid cannot be reused while `kill` may use it.
    wait_exited_unreaped(pid);
    // Processes the remote code started end with the worker. The unreaped worker keeps
    // its pid, and so the group's id, from being reused until the reap below.
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
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
    // Let the output pumps deliver what the worker wrote last, so that `exit` returns
    // after it and the stderr tail holds it (something else may hold the pipes open,
    // so only briefly).
    let _ = pumped.recv_timeout(Duration::from_millis(500));
    shared.set_exit(WorkerExit {
        gateway: shared.id.clone(),
        pid: shared.pid,
        code,
        signal,
        stderr_tail: shared.sink.stderr_tail(),
    });
}

/// Waits until `pid` has exited, leaving it to be reaped (`waitid` with `WNOWAIT`).
fn wait_exited_unreaped(pid: nix::unistd::Pid) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        // nix does not wrap waitid here; libc has it on every POSIX system.
        // SAFETY: waitid writes only into the zeroed siginfo_t it is given.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            while libc::waitid(
                libc::P_PID,
                pid.as_raw() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) == -1
                && nix::errno::Errno::last() == nix::errno::Errno::EINTR
            {}
        }
    }
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    crate::descriptors::pipe(false).map_err(|e| Error::io("creating protocol pipe", e.into()))
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
///
/// The worker leads a process group of its own: the processes its remote code starts
/// join it, so the host can end them with it; and a stopped worker cannot make the
/// host's group an orphaned group with a stopped member, which the kernel answers with
/// SIGHUP to every member, the host included.
pub(crate) fn child_setup(
    pipes: Option<(i32, i32)>,
    dfd: Option<i32>,
    nice: Option<i32>,
    parent: libc::pid_t,
) -> std::io::Result<()> {
    // SAFETY: plain system calls on descriptors this process owns; no memory is shared
    // with other threads (the child has only this one).
    unsafe {
        if libc::setpgid(0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some((rfd, wfd)) = pipes {
            if libc::dup2(rfd, 3) < 0 || libc::dup2(wfd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(d) = dfd {
            if libc::dup2(d, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
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
pub(crate) fn spawn_child(cmd: Command) -> std::io::Result<std::process::Child> {
    use std::sync::Mutex;
    // Started by the first spawn; a failure to start it is that spawn's error.
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);
    let (done_tx, done_rx) = mpsc::channel();
    let mut cmd = cmd;
    let job: SpawnJob = Box::new(move || {
        let _ = done_tx.send(cmd.spawn());
    });
    {
        let mut spawner = crate::output::lock(&SPAWNER);
        if spawner.is_none() {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("pixgate-spawner".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })?;
            *spawner = Some(tx);
        }
        let tx = spawner.as_ref().expect("set above");
        tx.send(job)
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    }
    done_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

pub(crate) fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::io("starting a gateway thread", e))
}
