//! The host's side of the protocol pipe: who reads it, and where frames go.
//!
//! Reading follows the leader/follower pattern. The [`FrameReader`] is a baton kept in
//! the shared state. A thread that waits for something on a channel and finds the baton
//! free takes it and reads the pipe itself, so the reply to a request wakes exactly the
//! thread that wants it — no hand-off between threads on the round-trip path (each one
//! costs a wake-up, 5–45 µs here). Frames for other channels are queued and their
//! waiters notified. When no thread waits, a background thread holds the baton so that
//! output is forwarded and closes are noticed; a thread that starts waiting kicks it
//! off the baton through a pipe.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::codec::{LoadOptions, decode_payload, decode_payload_with, encode_payload};
use crate::descriptors::DescriptorSocket;
use crate::error::{Error, ErrorKind, RemoteError, Result, WorkerExit};
use crate::frame::{Event, Frame, FrameReader, MsgType, ReadError, build_frame};
use crate::output::{OutputSink, Stream, lock};
use crate::value::{Access, Value};
use crate::writer::{WriteError, Writer};

/// How long the baton stays free before the background reader takes it.
const BG_IDLE: Duration = Duration::from_millis(1);

/// How long a thread that saw the pipe close waits for the exit status before reporting.
const EXIT_STATUS_GRACE: Duration = Duration::from_secs(3);

pub(crate) struct ChanState {
    items: VecDeque<Result<Value>>,
    remote_closed: bool,
    remote_error: Option<Error>,
    pub(crate) local_closed: bool,
    pub(crate) cancel_sent: bool,
    dropped: bool,
    /// How items on this channel load strings, once a reconfigure fixed it; `None`:
    /// as [`State::load_options`] (the channel was created after its last change).
    pub(crate) load_options: Option<LoadOptions>,
    /// Threads waiting on this channel.
    waiters: usize,
    cond: Arc<Condvar>,
}

impl ChanState {
    /// Why nothing more comes from a channel the remote side closed.
    fn closed_error(&self, id: i32) -> Error {
        self.remote_error
            .clone()
            .unwrap_or_else(|| Error::new(ErrorKind::ChannelClosed { id }))
    }

    pub(crate) fn new() -> ChanState {
        ChanState {
            items: VecDeque::new(),
            remote_closed: false,
            remote_error: None,
            local_closed: false,
            cancel_sent: false,
            dropped: false,
            load_options: None,
            waiters: 0,
            cond: Arc::new(Condvar::new()),
        }
    }

    pub(crate) fn remote_closed(&self) -> bool {
        self.remote_closed
    }

    /// The handle is gone: later items are dropped, the state goes at the remote close.
    pub(crate) fn mark_dropped(&mut self) {
        self.dropped = true;
        self.items.clear();
    }
}

pub(crate) struct State {
    reader: Option<FrameReader>,
    /// When the baton was last given back with nobody waiting for it.
    baton_free_since: Instant,
    /// The background reader waits without a deadline for the baton to come back.
    bg_parked: bool,
    bg_reading: bool,
    kicked: bool,
    /// Threads waiting for some channel (they want the baton when it is free).
    waiting: usize,
    /// Those of them waiting for a release.
    release_waiters: usize,
    pub(crate) channels: HashMap<i32, ChanState>,
    pub(crate) next_id: i32,
    /// The pipe ended.
    eof: bool,
    /// The stream broke beyond repair.
    broken: Option<Error>,
    /// The worker has exited (not necessarily reaped yet): never signal its pid again.
    pub(crate) child_gone: bool,
    pub(crate) exit: Option<WorkerExit>,
    pub(crate) closed_by_host: bool,
    /// How channels created from now on load strings (execnet copies the gateway's
    /// setting into each new channel).
    load_options: LoadOptions,
}

impl State {
    /// Sets how channels created from now on load strings; channels that exist keep
    /// what they have, as in execnet.
    pub(crate) fn set_load_options(&mut self, options: LoadOptions) {
        let old = self.load_options;
        for ch in self.channels.values_mut() {
            ch.load_options.get_or_insert(old);
        }
        self.load_options = options;
    }

    /// How items on channel `id` load strings.
    pub(crate) fn load_options(&self, id: i32) -> LoadOptions {
        self.channels
            .get(&id)
            .and_then(|ch| ch.load_options)
            .unwrap_or(self.load_options)
    }

    /// The stream from the worker broke beyond repair.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }
}

/// The connection to one worker: its pipes and descriptor socket, the state of its
/// channels, and the reading baton; shared by the gateway handle, its channels and its
/// threads.
pub(crate) struct Connection {
    pub(crate) id: String,
    pub(crate) pid: u32,
    pub(crate) max_frame_len: u32,
    /// How long a waiting thread polls the pipe before it sleeps.
    spin: Duration,
    pub(crate) state: Mutex<State>,
    bg_cond: Condvar,
    pub(crate) exit_cond: Condvar,
    writer: Writer,
    kick_r: OwnedFd,
    kick_w: OwnedFd,
    dead_r: OwnedFd,
    dead_w: OwnedFd,
    pub(crate) sink: OutputSink,
    /// With the anonymous transport, set once the handshake agreed on it.
    descriptors: OnceLock<DescriptorSocket>,
    /// With the by-value transport (no shared memory with the worker), set at start.
    by_value: OnceLock<crate::byvalue::ByValue>,
    /// The worker's own pid, as its handshake reports it: the process's pid for a
    /// local worker, the remote python's for an ssh one (whose `pid` is ssh's).
    worker_pid: std::sync::atomic::AtomicU32,
    /// Some channel or the gateway was reconfigured: decoding must look up the options
    /// (until then every channel has [`LoadOptions::CHANNEL`], and no lock is taken).
    pub(crate) reconfigured: AtomicBool,
    /// The objects this gateway was last told to FORGET (at most [`FORGOTTEN_KEPT`]): a
    /// release of one of them may still be on its way, and is no surprise.
    forgotten: Mutex<std::collections::VecDeque<String>>,
}

/// How many forgotten objects a gateway remembers, so that releases already under way
/// when the host dropped an array are accepted quietly.
const FORGOTTEN_KEPT: usize = 256;

/// What a thread waiting on a channel wants to know.
pub(crate) enum Want<'a> {
    Item,
    Close,
    /// That the worker released the named array (of this generation).
    Released(&'a str, u64),
}

impl Connection {
    pub(crate) fn new(
        id: String,
        pid: u32,
        reader: FrameReader,
        writer: OwnedFd,
        max_frame_len: u32,
        sink: OutputSink,
        spin: Duration,
    ) -> std::io::Result<Connection> {
        let (kick_r, kick_w) = nonblocking_pipe()?;
        let (dead_r, dead_w) = nonblocking_pipe()?;
        let writer = Writer::new(id.clone(), writer, dead_r.try_clone()?)?;
        Ok(Connection {
            id,
            pid,
            max_frame_len,
            spin,
            state: Mutex::new(State {
                reader: Some(reader),
                baton_free_since: Instant::now(),
                bg_parked: false,
                bg_reading: false,
                kicked: false,
                waiting: 0,
                release_waiters: 0,
                channels: HashMap::new(),
                next_id: 1,
                eof: false,
                broken: None,
                child_gone: false,
                exit: None,
                closed_by_host: false,
                load_options: LoadOptions::CHANNEL,
            }),
            bg_cond: Condvar::new(),
            exit_cond: Condvar::new(),
            writer,
            kick_r,
            kick_w,
            dead_r,
            dead_w,
            sink,
            descriptors: OnceLock::new(),
            by_value: OnceLock::new(),
            worker_pid: std::sync::atomic::AtomicU32::new(pid),
            reconfigured: AtomicBool::new(false),
            forgotten: Mutex::default(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Reads frames on the calling thread until the handshake arrives or `deadline`.
    /// Errors are framing failures, described for the caller to wrap.
    pub(crate) fn read_handshake(
        &self,
        deadline: Instant,
    ) -> std::result::Result<Option<Frame>, String> {
        let mut reader = self.lock().reader.take().expect("reader free before start");
        let dead = self.dead_r.as_fd();
        let out = loop {
            match reader.next_event(Some(deadline), &[dead]) {
                Ok(Event::Frame(f)) if f.msgtype == MsgType::Output as i8 => {
                    self.emit_output(&f);
                }
                Ok(Event::Frame(f)) => break Ok(Some(f)),
                Ok(Event::Idle) if Instant::now() < deadline && !self.lock().child_gone => {}
                Ok(Event::Idle | Event::Eof) => break Ok(None),
                Ok(Event::Oversized { len, .. }) => {
                    break Err(format!(
                        "handshake frame of {len} bytes exceeds the limit of {} bytes",
                        self.max_frame_len
                    ));
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        self.lock().reader = Some(reader);
        out
    }

    /// Writes one frame, waiting for room as long as the worker lives. Errors report
    /// the worker's death when that is the cause.
    pub(crate) fn write_frame(&self, bytes: &[u8]) -> Result<()> {
        self.write_frame_until(bytes, None)
    }

    /// Writes one frame, waiting for the turn and for room until `deadline`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the deadline passed before the frame was started
    /// (nothing was sent); the worker's death; an I/O error.
    pub(crate) fn write_frame_until(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        // The clock only for a deadline: sends have none, and this is their path.
        let start = deadline.map(|_| Instant::now());
        self.writer.write(bytes, deadline).map_err(|e| match e {
            WriteError::Gone => {
                let st = self.lock();
                self.gone_error(st)
            }
            WriteError::Timeout => Error::new(ErrorKind::Timeout {
                operation: format!("writing to worker {} (pid {})", self.id, self.pid),
                after: match (deadline, start) {
                    (Some(d), Some(s)) => d.saturating_duration_since(s),
                    _ => Duration::ZERO,
                },
            }),
            WriteError::Io(e) => Error::io(format!("writing to worker {}", self.id), e),
        })
    }

    /// The descriptor the worker sent under `token` (docs/PROTOCOL.md §2.7), or of the
    /// object it sent by value under it (§4.14).
    fn take_descriptor(&self, token: u64) -> std::result::Result<OwnedFd, String> {
        if let Some(bv) = self.by_value.get() {
            return bv.take(token);
        }
        match self.descriptors.get() {
            Some(sock) => sock.take(token, Instant::now() + crate::descriptors::TAKE_TIMEOUT),
            None => Err("this gateway has no descriptor socket (named transport)".to_string()),
        }
    }

    /// Gives the gateway its descriptor socket (anonymous transport), once.
    pub(crate) fn set_descriptors(&self, sock: DescriptorSocket) {
        let _ = self.descriptors.set(sock);
    }

    /// The descriptor socket, with the anonymous transport.
    pub(crate) fn descriptors(&self) -> Option<&DescriptorSocket> {
        self.descriptors.get()
    }

    /// Makes the gateway pass arrays by value, once (before the handshake).
    pub(crate) fn set_by_value(&self) {
        let _ = self.by_value.set(crate::byvalue::ByValue::new());
    }

    /// The by-value state, with the by-value transport.
    pub(crate) fn by_value(&self) -> Option<&crate::byvalue::ByValue> {
        self.by_value.get()
    }

    /// Records the worker's own pid from its handshake.
    pub(crate) fn set_worker_pid(&self, pid: u32) {
        self.worker_pid.store(pid, Ordering::Relaxed);
    }

    /// The worker's own pid (see the field).
    pub(crate) fn worker_pid(&self) -> u32 {
        self.worker_pid.load(Ordering::Relaxed)
    }

    /// The identity the ledger knows this gateway by, for references sent to it.
    pub(crate) fn peer_ref(self: &Arc<Self>) -> crate::lease::PeerRef {
        crate::lease::PeerRef::new(self)
    }

    /// Writes a small control frame now, or hands it to the gateway's flusher when the
    /// pipe is full: for drops, which must never wait for the worker. Nothing is
    /// reported; a worker that is gone needs no control frames.
    pub(crate) fn try_write_frame(&self, bytes: &[u8]) {
        self.writer.try_write(bytes);
    }

    /// Tells the worker that the segment `name` is gone, so that it drops the mapping it
    /// keeps of it (FORGET, docs/PROTOCOL.md §4.13). Nothing to do, and nothing
    /// reported, when the worker is gone: it has nothing mapped any more. Never waits
    /// for the pipe: a FORGET that does not fit is written when it drains.
    pub(crate) fn forget_segment(&self, name: &str) {
        self.note_forgotten(name);
        {
            let st = self.lock();
            if st.closed_by_host || st.child_gone || st.is_broken() {
                return;
            }
        }
        let frame = build_frame(MsgType::Forget, 0, |out| {
            encode_payload(&Value::from(name), out)
        });
        if let Ok(frame) = frame {
            self.try_write_frame(&frame);
        }
    }

    /// Remembers `name` among the forgotten objects, whose releases still under way are
    /// expected; once, when a drop noted it just before sending FORGET.
    fn note_forgotten(&self, name: &str) {
        let mut forgotten = crate::output::lock(&self.forgotten);
        if forgotten.back().is_some_and(|f| f == name) {
            return;
        }
        if forgotten.len() == FORGOTTEN_KEPT {
            forgotten.pop_front();
        }
        forgotten.push_back(name.to_string());
    }

    /// The error for an operation that needs a worker that is gone. Waits briefly for
    /// the exit status when the pipe closed before the process was reaped.
    pub(crate) fn gone_error(&self, mut st: MutexGuard<'_, State>) -> Error {
        let until = Instant::now() + EXIT_STATUS_GRACE;
        loop {
            if let Some(b) = &st.broken {
                return b.clone();
            }
            if st.closed_by_host {
                return Error::new(ErrorKind::GatewayClosed {
                    id: self.id.clone(),
                });
            }
            if let Some(e) = &st.exit {
                return Error::new(ErrorKind::WorkerDied(e.clone()));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Error::protocol(format!(
                    "worker {} (pid {}) closed its protocol pipe but has not exited",
                    self.id, self.pid
                ));
            }
            st = self
                .exit_cond
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Called by the reaper once the worker is reaped.
    pub(crate) fn set_exit(&self, exit: WorkerExit) {
        let mut st = self.lock();
        st.child_gone = true;
        st.exit = Some(exit);
        drop(st);
        // Before waking anyone: a thread waiting for a release sees it done.
        crate::lease::peer_gone(crate::lease::key_of(self));
        let st = self.lock();
        self.notify_everyone(&st);
        drop(st);
        let _ = nix::unistd::write(self.dead_w.as_fd(), b"x");
    }

    fn notify_everyone(&self, st: &State) {
        for ch in st.channels.values() {
            ch.cond.notify_all();
        }
        self.bg_cond.notify_all();
        self.exit_cond.notify_all();
    }

    /// Waits until the channel has what `want` asks for, reading the pipe when the baton
    /// is free. `deadline == None` waits as long as the worker lives.
    pub(crate) fn wait(&self, id: i32, want: Want<'_>, deadline: Option<Instant>) -> Result<Value> {
        let st = self.lock();
        let (mut st, out) = self.wait_locked(st, id, want, deadline);
        self.hand_off(&mut st);
        drop(st);
        out
    }

    fn wait_locked<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        id: i32,
        want: Want<'_>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, Result<Value>) {
        let started = Instant::now();
        let mut gone_since = None;
        loop {
            let child_gone = st.child_gone;
            let Some(ch) = st.channels.get_mut(&id) else {
                return (st, Err(Error::new(ErrorKind::ChannelClosed { id })));
            };
            match want {
                Want::Item => {
                    if let Some(item) = ch.items.pop_front() {
                        return (st, item);
                    }
                    if ch.remote_closed {
                        let err = ch.closed_error(id);
                        return (st, Err(err));
                    }
                }
                Want::Close => {
                    if ch.remote_closed {
                        let out = match &ch.remote_error {
                            Some(e) => Err(e.clone()),
                            None => Ok(Value::None),
                        };
                        return (st, out);
                    }
                }
                Want::Released(name, generation) => {
                    // A worker that died released everything: that is its death, below.
                    if !child_gone && !crate::lease::is_out(name, generation) {
                        return (st, Ok(Value::None));
                    }
                    if ch.remote_closed {
                        // The remote code ended holding it: its error says why.
                        let err = ch.closed_error(id);
                        return (st, Err(err));
                    }
                }
            }
            if st.eof || st.broken.is_some() || st.exit.is_some() || st.closed_by_host {
                if !st.eof && st.reader.is_some() {
                    // The worker is gone but its last frames may still be in the pipe.
                    let idle;
                    (st, idle) = self.lead(st, Some(Instant::now()));
                    if idle {
                        st.eof = true;
                    }
                    continue;
                }
                // Another thread holds the pipe. What it reads last (a frame, or a stream
                // that ends inside one) came before the death, so wait for its report: the
                // death wakes it, and the grace only bounds a wait that cannot last.
                let since = *gone_since.get_or_insert_with(Instant::now);
                if st.eof || st.closed_by_host || since.elapsed() >= EXIT_STATUS_GRACE {
                    let err = self.gone_error(st);
                    return (self.lock(), Err(err));
                }
                st = self.wait_turn(st, id, &want, Some(since + EXIT_STATUS_GRACE));
                continue;
            }
            let now = Instant::now();
            if let Some(d) = deadline {
                if now >= d {
                    let operation = match want {
                        Want::Released(name, _) => {
                            format!("waiting for the release of {name} by gateway {}", self.id)
                        }
                        _ => format!("receive on channel {id} of gateway {}", self.id),
                    };
                    let err = Error::new(ErrorKind::Timeout {
                        operation,
                        after: d.saturating_duration_since(started),
                    });
                    return (st, Err(err));
                }
            }
            if st.reader.is_some() {
                st = self.lead(st, deadline).0;
                continue;
            }
            st = self.wait_turn(st, id, &want, deadline);
        }
    }

    /// Someone else reads: waits on channel `id` (which exists) to be handed an item or
    /// the baton, or until `deadline`.
    fn wait_turn<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        id: i32,
        want: &Want<'_>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        if st.bg_reading && !st.kicked {
            st.kicked = true;
            let _ = nix::unistd::write(self.kick_w.as_fd(), b"k");
        }
        let ch = st.channels.get_mut(&id).expect("checked by the caller");
        ch.waiters += 1;
        let cond = Arc::clone(&ch.cond);
        st.waiting += 1;
        let for_release = matches!(want, Want::Released(..));
        st.release_waiters += usize::from(for_release);
        st = match deadline {
            None => cond.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                cond.wait_timeout(st, d.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        st.waiting -= 1;
        st.release_waiters -= usize::from(for_release);
        if let Some(ch) = st.channels.get_mut(&id) {
            ch.waiters -= 1;
        }
        st
    }

    /// Takes the baton, reads one event without the lock, applies it, gives it back.
    /// Also says whether the pipe had nothing to offer.
    fn lead<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, bool) {
        let mut reader = st.reader.take().expect("caller checked the baton is free");
        drop(st);
        let ev = reader.next_event_spinning(deadline, &[self.dead_r.as_fd()], self.spin);
        let idle = matches!(ev, Ok(Event::Idle));
        let ev = self.prepare(ev);
        let mut st = self.lock();
        st.reader = Some(reader);
        self.apply(&mut st, ev);
        (st, idle)
    }

    /// Work done without the lock: decoding and forwarding output.
    fn prepare(&self, ev: std::result::Result<Event, ReadError>) -> Prepared {
        match ev {
            Ok(Event::Frame(f)) => {
                let Some(t) = MsgType::from_i8(f.msgtype) else {
                    return Prepared::Bad(
                        f.channel,
                        format!("unknown message type {} from worker", f.msgtype),
                    );
                };
                match t {
                    MsgType::ChannelData => {
                        let options = if self.reconfigured.load(Ordering::Acquire) {
                            self.lock().load_options(f.channel)
                        } else {
                            LoadOptions::CHANNEL
                        };
                        let mut item =
                            decode_payload_with(&f.payload, options).map_err(Error::from);
                        // No `U` or `V` opcode, no array: skip the walk (a byte scan is
                        // cheaper than a walk over a big list).
                        let arrays = f.payload.iter().any(|&b| b == b'U' || b == b'V');
                        if let (Ok(v), true) = (&mut item, arrays) {
                            let taken = crate::lease::receive(
                                v,
                                self.worker_pid(),
                                crate::lease::key_of(self),
                                |token| self.take_descriptor(token),
                            );
                            if let Err(why) = taken {
                                item = Err(Error::protocol(why));
                            }
                        }
                        Prepared::Data {
                            channel: f.channel,
                            item,
                        }
                    }
                    MsgType::Release => {
                        self.release(&f.payload);
                        Prepared::Released
                    }
                    MsgType::Object | MsgType::Chunk | MsgType::WriteBack => {
                        self.by_value_frame(t, &f.payload);
                        Prepared::Nothing
                    }
                    MsgType::Reconfigure => {
                        self.reconfigure(f.channel, &f.payload);
                        Prepared::Nothing
                    }
                    // execnet's "the peer will send nothing more" (no payload).
                    MsgType::ChannelClose | MsgType::ChannelLastMessage => {
                        Prepared::Close(f.channel, None)
                    }
                    MsgType::ChannelCloseError => {
                        Prepared::Close(f.channel, Some(remote_error(&f.payload)))
                    }
                    MsgType::Output => {
                        self.emit_output(&f);
                        Prepared::Nothing
                    }
                    other => Prepared::Bad(
                        f.channel,
                        format!("unexpected message type {other:?} from worker"),
                    ),
                }
            }
            Ok(Event::Oversized {
                channel,
                len,
                msgtype,
            }) => {
                let err = Error::new(ErrorKind::FrameTooLarge {
                    channel,
                    len: u64::from(len),
                    limit: u64::from(self.max_frame_len),
                });
                match MsgType::from_i8(msgtype) {
                    // The close must not be lost with its payload.
                    Some(MsgType::ChannelCloseError) => Prepared::Close(channel, Some(Err(err))),
                    Some(MsgType::Output) => {
                        self.sink.emit_text(
                            (channel != 0).then_some(channel),
                            Stream::Stderr,
                            &format!("pixgate: {err}; output dropped"),
                        );
                        Prepared::Nothing
                    }
                    _ => Prepared::Failed(channel, err),
                }
            }
            Ok(Event::Eof) => Prepared::Eof,
            Ok(Event::Idle) => Prepared::Nothing,
            Err(e) => Prepared::Broken(Error::protocol(format!(
                "stream from worker {} (pid {}) is corrupt: {e}",
                self.id, self.pid
            ))),
        }
    }

    /// A RECONFIGURE from the worker (its `channel.reconfigure`): how the host's end of
    /// that channel, or with id 0 every channel created from now on, loads strings.
    fn reconfigure(&self, channel: i32, payload: &[u8]) {
        match crate::codec::decode_load_options(payload) {
            Ok(options) => {
                let mut st = self.lock();
                self.reconfigured.store(true, Ordering::Release);
                if channel == 0 {
                    st.set_load_options(options);
                } else if let Some(ch) = st.channels.get_mut(&channel) {
                    ch.load_options = Some(options);
                }
            }
            Err(problem) => self.sink.emit_text(
                (channel != 0).then_some(channel),
                Stream::Stderr,
                &format!("pixgate: malformed reconfigure message from worker: {problem}"),
            ),
        }
    }

    /// OBJECT, CHUNK and WRITE_BACK (docs/PROTOCOL.md §4.14). A malformed one is
    /// reported on the output sink; for OBJECT and CHUNK the reference naming the
    /// object fails too, as a protocol error on its channel.
    fn by_value_frame(&self, t: MsgType, payload: &[u8]) {
        let Some(bv) = self.by_value.get() else {
            self.sink.emit_text(
                None,
                Stream::Stderr,
                &format!("pixgate: {t:?} message on a gateway that shares memory; ignored"),
            );
            return;
        };
        let done = match t {
            MsgType::Object => bv.object(payload),
            MsgType::Chunk => bv.chunk(payload),
            _ => crate::byvalue::parse_write_back(payload).and_then(|(key, g, off, bytes)| {
                crate::lease::write_back(key, g, crate::lease::key_of(self), off, bytes)
            }),
        };
        if let Err(why) = done {
            self.sink
                .emit_text(None, Stream::Stderr, &format!("pixgate: {why}"));
        }
    }

    /// A RELEASE message: the worker no longer uses an array it was shared or lent.
    fn release(&self, payload: &[u8]) {
        let parsed = match decode_payload(payload) {
            Ok(Value::Tuple(ref t)) if t.len() == 3 => match (
                t[0].as_str(),
                t[1].as_bigint().and_then(|g| u64::try_from(g).ok()),
                t[2].as_i64()
                    .and_then(|a| u8::try_from(a).ok())
                    .and_then(Access::from_u8),
            ) {
                (Some(name), Some(generation), Some(access)) => {
                    Some((name.to_string(), generation, access))
                }
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some((name, generation, access)) => {
                // A release under way when the host dropped the array (and sent
                // FORGET) is expected; one of something never sent is worth a line.
                let object = name.split_once('@').map_or(name.as_str(), |(o, _)| o);
                if !crate::lease::release(&name, generation, access, crate::lease::key_of(self))
                    && !crate::output::lock(&self.forgotten).iter().any(|f| f == object)
                {
                    self.sink.emit_text(
                        None,
                        Stream::Stderr,
                        &format!("pixgate: release of {name} (generation {generation}, {access:?}) matches nothing held; ignored"),
                    );
                }
            }
            None => self.sink.emit_text(
                None,
                Stream::Stderr,
                "pixgate: malformed release message from worker: expected (name, generation, access)",
            ),
        }
    }

    fn emit_output(&self, f: &Frame) {
        let chan = (f.channel != 0).then_some(f.channel);
        let problem = match decode_payload(&f.payload) {
            Ok(Value::Tuple(ref t)) if t.len() == 2 => {
                let stream = match t[0].as_i64() {
                    Some(1) => Some(Stream::Stdout),
                    Some(2) => Some(Stream::Stderr),
                    _ => None,
                };
                match (stream, t[1].as_str()) {
                    (Some(stream), Some(text)) => {
                        self.sink.emit_text(chan, stream, text);
                        return;
                    }
                    _ => format!(
                        "expected (1 or 2, str), got ({}, {})",
                        t[0],
                        t[1].type_name()
                    ),
                }
            }
            Ok(other) => format!("expected a 2-tuple, got {}", other.type_name()),
            Err(e) => e.to_string(),
        };
        self.sink.emit_text(
            chan,
            Stream::Stderr,
            &format!("pixgate: malformed output message from worker: {problem}"),
        );
    }

    fn apply(&self, st: &mut State, ev: Prepared) {
        let target = match ev {
            Prepared::Nothing => return,
            Prepared::Released => {
                if st.release_waiters > 0 {
                    for ch in st.channels.values().filter(|c| c.waiters > 0) {
                        ch.cond.notify_all();
                    }
                }
                return;
            }
            Prepared::Data { channel, item } => {
                let Some(ch) = st.channels.get_mut(&channel) else {
                    return;
                };
                if !ch.dropped {
                    ch.items.push_back(item);
                }
                channel
            }
            Prepared::Close(channel, err) => {
                let Some(ch) = st.channels.get_mut(&channel) else {
                    return;
                };
                ch.remote_closed = true;
                ch.remote_error = err.map(|r| match r {
                    Ok(r) if ch.cancel_sent && r.type_name == "Cancelled" => {
                        Error::new(ErrorKind::Cancelled { id: channel })
                    }
                    Ok(r) => Error::new(ErrorKind::Remote(r)),
                    Err(e) => e,
                });
                channel
            }
            Prepared::Failed(channel, err) => {
                let Some(ch) = st.channels.get_mut(&channel) else {
                    return;
                };
                ch.items.push_back(Err(err));
                channel
            }
            Prepared::Bad(channel, msg) => {
                let Some(ch) = st.channels.get_mut(&channel) else {
                    self.sink
                        .emit_text(None, Stream::Stderr, &format!("pixgate: {msg}"));
                    return;
                };
                ch.items.push_back(Err(Error::protocol(msg)));
                channel
            }
            Prepared::Eof => {
                st.eof = true;
                self.notify_everyone(st);
                return;
            }
            Prepared::Broken(e) => {
                st.broken = Some(e);
                st.eof = true;
                self.notify_everyone(st);
                return;
            }
        };
        let remove = match st.channels.get(&target) {
            Some(ch) => {
                ch.cond.notify_all();
                ch.dropped && ch.remote_closed
            }
            None => false,
        };
        if remove {
            st.channels.remove(&target);
        }
    }

    /// Gives the baton to a waiting thread, or to the background reader.
    ///
    /// The background reader does not take a freed baton at once: a thread that receives
    /// again soon (the common request/reply rhythm) would have to kick it off first, which
    /// costs two wake-ups. It takes the baton only after [`BG_IDLE`] without a taker.
    fn hand_off(&self, st: &mut State) {
        if st.reader.is_none() {
            return;
        }
        // Restart the idle clock even when waking a waiter: it may already hold its item
        // and not take the baton.
        st.baton_free_since = Instant::now();
        if st.waiting > 0 {
            if let Some(ch) = st.channels.values().find(|c| c.waiters > 0) {
                ch.cond.notify_one();
                return;
            }
        }
        if st.bg_parked {
            self.bg_cond.notify_one();
        }
    }

    /// The background reader: holds the baton while no other thread wants it.
    pub(crate) fn background(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            if st.eof || st.exit.is_some() {
                return;
            }
            if st.reader.is_none() || st.waiting > 0 {
                st.bg_parked = true;
                st = self.bg_cond.wait(st).unwrap_or_else(|e| e.into_inner());
                st.bg_parked = false;
                continue;
            }
            let idle = st.baton_free_since.elapsed();
            if idle < BG_IDLE {
                st = self
                    .bg_cond
                    .wait_timeout(st, BG_IDLE - idle)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let mut reader = st.reader.take().expect("checked");
            st.bg_reading = true;
            drop(st);
            let ev = reader.next_event(None, &[self.kick_r.as_fd(), self.dead_r.as_fd()]);
            let ev = self.prepare(ev);
            st = self.lock();
            st.bg_reading = false;
            st.reader = Some(reader);
            if st.kicked {
                st.kicked = false;
                let mut sink = [0u8; 64];
                while matches!(nix::unistd::read(self.kick_r.as_fd(), &mut sink), Ok(n) if n > 0) {}
            }
            self.apply(&mut st, ev);
            if st.waiting > 0 {
                self.hand_off(&mut st);
            }
        }
    }
}

enum Prepared {
    Nothing,
    /// A RELEASE was applied: threads waiting for one look again.
    Released,
    Data {
        channel: i32,
        item: Result<Value>,
    },
    /// A close, with the remote error (or why its report could not be read).
    Close(i32, Option<Result<RemoteError>>),
    Failed(i32, Error),
    Bad(i32, String),
    Eof,
    Broken(Error),
}

/// Decodes a CHANNEL_CLOSE_ERROR payload: execnet's formatted traceback (a str), or
/// pixgate's `(type name, message, traceback)` tuple.
fn remote_error(payload: &[u8]) -> Result<RemoteError> {
    match &decode_payload(payload)? {
        Value::Str(s) => Ok(RemoteError::from_traceback(s)),
        Value::Tuple(t) if t.len() == 3 && t.iter().all(|v| v.as_str().is_some()) => {
            let text = |i: usize| t[i].as_str().unwrap_or_default().to_string();
            Ok(RemoteError {
                type_name: text(0),
                message: text(1),
                traceback: text(2),
            })
        }
        other => Err(Error::protocol(format!(
            "close-error payload must be a str or a (str, str, str) tuple, got {}",
            other.type_name()
        ))),
    }
}

fn nonblocking_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(crate::descriptors::pipe(true)?)
}

impl crate::lease::Peer for Connection {
    fn forget(&self, name: &str) {
        self.forget_segment(name);
    }

    fn forgetting(&self, name: &str) {
        self.note_forgotten(name);
    }
}
