//! Channels: the host's end of a remote execution.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{LoadOptions, encode_load_options, encode_payload};
use crate::connection::{Connection, Want};
use crate::error::{Error, ErrorKind, Result};
use crate::frame::{MsgType, build_frame};
use crate::value::Value;

/// Options for [`Gateway::remote_exec_with`](crate::Gateway::remote_exec_with).
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    /// Run on the worker's main thread (for GUI toolkits and other main-thread-bound
    /// code); main-thread executions run one at a time, in order.
    pub main_thread: bool,
    /// File name shown in tracebacks (default `<remote exec N>`).
    pub file_name: Option<String>,
    /// After running the source, call this function with the channel and `kwargs`.
    pub call_name: Option<String>,
    /// Keyword arguments for `call_name`.
    pub kwargs: Vec<(String, Value)>,
}

impl ExecOptions {
    /// Run on the worker's main thread.
    pub fn main_thread(mut self) -> Self {
        self.main_thread = true;
        self
    }

    /// The file name tracebacks show.
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    /// Call `name(channel, **kwargs)` after running the source.
    pub fn call(mut self, name: impl Into<String>, kwargs: Vec<(String, Value)>) -> Self {
        self.call_name = Some(name.into());
        self.kwargs = kwargs;
        self
    }
}

/// The host's end of a channel to code running in the worker.
///
/// Items arrive in the order the remote code sent them. A receive returns
/// [`ErrorKind::ChannelClosed`] once the remote side closed the channel and every item
/// was taken, [`ErrorKind::Remote`] when the remote code raised, [`ErrorKind::Cancelled`]
/// when it ended because of [`Channel::cancel`], and [`ErrorKind::WorkerDied`] when the
/// worker went away. Dropping a channel closes the host's sending side; the drop never
/// waits for the worker (with the pipe full, the close is written once it drains).
pub struct Channel {
    shared: Arc<Connection>,
    id: i32,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("gateway", &self.shared.id)
            .field("id", &self.id)
            .finish()
    }
}

impl Channel {
    pub(crate) fn new(shared: Arc<Connection>, id: i32) -> Channel {
        Channel { shared, id }
    }

    /// The channel id (odd: the host numbers its channels 1, 3, 5, …).
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Id of the gateway this channel belongs to.
    pub fn gateway_id(&self) -> &str {
        &self.shared.id
    }

    /// Sends a value to the remote code.
    ///
    /// While the pipe to the worker is full (the worker is not reading), waits for room
    /// as long as the worker lives; [`Gateway::exit`](crate::Gateway::exit) or
    /// [`Gateway::kill`](crate::Gateway::kill) on another thread ends the wait.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ChannelClosed`] after [`Channel::close`]; [`ErrorKind::Encode`] for a
    /// value the wire cannot carry; [`ErrorKind::FrameTooLarge`] over the frame limit;
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone.
    /// Nothing is sent when an error is returned.
    pub fn send(&self, value: impl Into<Value>) -> Result<()> {
        self.send_value(&value.into())
    }

    /// Sends a value by reference. The array references in it are used up (see
    /// [`SharedArray`](crate::SharedArray#references-are-single-use)): sending the same
    /// value again fails.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`], and [`ErrorKind::Reference`] for an array reference that
    /// cannot be sent (made elsewhere, sent already, or its array dropped); nothing is
    /// written then.
    pub fn send_value(&self, value: &Value) -> Result<()> {
        self.send_encoded(MsgType::ChannelData, value, true)
    }

    /// Encodes `value` into a frame of type `msg` and sends it with what its array
    /// references need: each is marked sent before the write (the worker may give one
    /// back before the write returns), and an anonymous segment the worker does not map
    /// yet has its descriptor sent first on the descriptor socket (docs/PROTOCOL.md
    /// §2.7, §5.7). `need_open`: the host must not have closed the channel.
    pub(crate) fn send_encoded(&self, msg: MsgType, value: &Value, need_open: bool) -> Result<()> {
        let encode = || build_frame(msg, self.id, |out| encode_payload(value, out));
        let mut frame = encode()?;
        self.check_frame_len(&frame)?;
        // No `U` or `V` opcode, no array: skip the walk (a byte scan is cheaper than a
        // walk over a big list).
        if !frame[crate::frame::HEADER_LEN..]
            .iter()
            .any(|&b| b == b'U' || b == b'V')
        {
            return self.send_checked(frame, need_open);
        }
        let peer = self.shared.peer_ref();
        if self.shared.by_value().is_some() {
            return self.send_by_value(frame, value, &peer, need_open, encode);
        }
        let sending = crate::lease::send(value, &peer)?;
        let mut delivered = Vec::new();
        // The descriptors passed close after the frame is written: closing is not on
        // the way to the worker.
        let mut fds = Vec::new();
        if sending.has_anonymous() {
            let Some(sock) = self.shared.descriptors() else {
                return Err(Error::new(ErrorKind::Reference(format!(
                    "gateway {} uses named segments (transport=named); an anonymous array \
                     cannot reach it: make the array with Transport::Named",
                    self.shared.id
                ))));
            };
            for (r, obj) in sending.anonymous() {
                let writable = r.access() != crate::value::Access::Shared;
                if !obj.delivered_to(peer.key, writable) {
                    let fd = obj
                        .descriptor(writable)
                        .map_err(|e| Error::io(format!("passing array {}", r.key()), e))?;
                    fds.push(fd);
                    delivered.push((r, obj, writable));
                }
            }
            if !fds.is_empty() {
                self.check_open(need_open)?;
                let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
                let first = sock.send(&borrowed, None).map_err(|e| {
                    Error::io(format!("sending descriptors to {}", self.shared.id), e)
                })?;
                for (i, (r, ..)) in delivered.iter().enumerate() {
                    r.set_token(first + i as u64);
                }
                frame = encode()?;
                for (r, ..) in &delivered {
                    r.set_token(0);
                }
            }
        }
        self.send_checked(frame, need_open)?;
        drop(fds);
        for (_, obj, writable) in delivered {
            obj.note_delivered(&peer, writable);
        }
        sending.done();
        Ok(())
    }

    /// The by-value transport's send (docs/PROTOCOL.md §4.14): every array reference
    /// carries a copy of its segment, sent in OBJECT and CHUNK frames under a token
    /// before the frame that names it. The worker keeps nothing of the host's between
    /// references, so every reference sends its bytes.
    fn send_by_value(
        &self,
        frame: Vec<u8>,
        value: &Value,
        peer: &crate::lease::PeerRef,
        need_open: bool,
        encode: impl Fn() -> std::result::Result<Vec<u8>, crate::codec::EncodeError>,
    ) -> Result<()> {
        let mut named = None;
        value.for_each_array(|r| {
            if r.transport() == crate::segment::Transport::Named {
                named.get_or_insert_with(|| r.name().to_string());
            }
        });
        if let Some(name) = named {
            return Err(Error::new(ErrorKind::Reference(format!(
                "gateway {} shares no memory with this host and copies anonymous segments \
                 only; array {name} is a named one: make it with Transport::ByValue (or \
                 Transport::Anonymous)",
                self.shared.id
            ))));
        }
        let sending = crate::lease::send(value, peer)?;
        let mut frame = frame;
        if sending.has_anonymous() {
            self.check_open(need_open)?;
            let bv = self.shared.by_value().expect("checked by the caller");
            let mut copied = Vec::new();
            for (r, obj) in sending.anonymous() {
                let writable = r.access() != crate::value::Access::Shared;
                let token =
                    bv.send_object(&obj, r.offset(), writable, self.shared.max_frame_len, |f| {
                        self.shared.write_frame(f)
                    })?;
                r.set_token(token);
                copied.push(r);
            }
            let encoded = encode();
            for r in &copied {
                r.set_token(0);
            }
            frame = encoded?;
        }
        self.send_checked(frame, need_open)?;
        sending.done();
        Ok(())
    }

    /// Waits until no reference of `array` made at its current generation is out: every
    /// share or lend of it sent (on any gateway) has been released, or was never taken.
    /// Meanwhile this thread reads the pipe if no other does, so items for other
    /// channels are queued as usual.
    ///
    /// After it returns `Ok`, [`SharedArray::view_mut`](crate::SharedArray::view_mut) succeeds again (unless a new
    /// reference is made).
    ///
    /// ```
    /// # fn main() -> pixgate::Result<()> {
    /// # let gw = pixgate::Gateway::builder(&format!("popen//python={}",
    /// #     std::env::var("PIXGATE_PYTHON").unwrap_or_else(|_| "python3".into()))).spawn()?;
    /// use std::time::Duration;
    /// let mut a = pixgate::SharedArray::<f32>::zeros(&[4])?;
    /// let ch = gw.remote_exec("a = channel.receive()\na[:] = 1\ndel a")?;
    /// ch.send(a.lend()?)?;
    /// ch.wait_released(&a, Duration::from_secs(10))?;
    /// assert_eq!(a.view_mut()?.sum(), 4.0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when `timeout` passes first; the remote code's error when
    /// it ended holding the array; [`ErrorKind::WorkerDied`] when the worker died.
    pub fn wait_released<T: crate::Element>(
        &self,
        array: &crate::SharedArray<T>,
        timeout: std::time::Duration,
    ) -> Result<()> {
        self.wait_released_key(
            &array.key(),
            array.generation(),
            Some(Instant::now() + timeout),
        )
    }

    /// Waits until the worker has released the array filed under `key` at this
    /// generation (or never held it), reading the pipe meanwhile if no other thread
    /// does.
    pub(crate) fn wait_released_key(
        &self,
        name: &str,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.shared
            .wait(self.id, Want::Released(name, generation), deadline)
            .map(|_| ())
    }

    /// Sends any `serde::Serialize` value, converted with [`to_value`](crate::to_value).
    ///
    /// # Errors
    ///
    /// As [`Channel::send`], and [`ErrorKind::Convert`] when the conversion fails.
    pub fn send_serde<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.send_value(&crate::to_value(value)?)
    }

    /// Receives the next item, waiting as long as the worker lives.
    ///
    /// # Errors
    ///
    /// See the type's documentation.
    pub fn receive(&self) -> Result<Value> {
        self.shared.wait(self.id, Want::Item, None)
    }

    /// Receives the next item, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when nothing arrived in time (the channel stays usable);
    /// otherwise as [`Channel::receive`].
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Value> {
        self.shared
            .wait(self.id, Want::Item, Some(Instant::now() + timeout))
            .map_err(|e| with_timeout(e, timeout))
    }

    /// Receives the next item and converts it with [`from_value`](crate::from_value).
    ///
    /// # Errors
    ///
    /// As [`Channel::receive_timeout`] (or [`Channel::receive`] without a timeout), and
    /// [`ErrorKind::Convert`] when the item does not fit `T`.
    pub fn receive_as<T: serde::de::DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let v = match timeout {
            Some(t) => self.receive_timeout(t)?,
            None => self.receive()?,
        };
        crate::from_value(v)
    }

    /// Iterates over received items until the remote side closes the channel. A failure
    /// other than a clean close is yielded once as `Err`, then iteration ends.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            channel: self,
            done: false,
        }
    }

    /// Closes the host's sending side; the remote code's receive then reports the end.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone.
    pub fn close(&self) -> Result<()> {
        self.close_frame(MsgType::ChannelClose, None)
    }

    /// Closes the host's sending side with an error: the remote code's receive raises
    /// `pixgate.RemoteError` carrying `message`.
    ///
    /// # Errors
    ///
    /// As [`Channel::close`].
    pub fn close_with_error(&self, message: &str) -> Result<()> {
        self.close_frame(MsgType::ChannelCloseError, Some(message))
    }

    /// Waits until the remote side closes the channel, leaving queued items in place.
    ///
    /// # Errors
    ///
    /// The remote error if it closed with one; [`ErrorKind::Timeout`] after `timeout`;
    /// [`ErrorKind::WorkerDied`] when the worker dies first.
    pub fn wait_close(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.shared
            .wait(self.id, Want::Close, deadline)
            .map(|_| ())
            .map_err(|e| match timeout {
                Some(t) => with_timeout(e, t),
                None => e,
            })
    }

    /// Asks the remote code to stop: it sees `pixgate.Cancelled` at its next channel
    /// operation (once per request). If the exception ends the remote code, receives
    /// report [`ErrorKind::Cancelled`]. For code that never touches its channel, use
    /// [`Gateway::kill`](crate::Gateway::kill).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone.
    pub fn cancel(&self) -> Result<()> {
        if let Some(ch) = self.shared.lock().channels.get_mut(&self.id) {
            ch.cancel_sent = true;
        }
        let frame = build_frame(MsgType::Cancel, self.id, |_| Ok::<_, Error>(()))?;
        self.send_frame(frame)
    }

    /// Sets how strings load on this channel, in both directions, as execnet's
    /// `channel.reconfigure(py2str_as_py3str, py3str_as_py2str)`: items the host
    /// decodes from now on use `options`, and a RECONFIGURE message tells the worker to
    /// use them for the items it receives on this channel. A new channel has the
    /// gateway's options ([`Gateway::reconfigure`](crate::Gateway::reconfigure)), at
    /// first [`LoadOptions::CHANNEL`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WorkerDied`] or [`ErrorKind::GatewayClosed`] when the worker is gone;
    /// the options are not changed then.
    pub fn reconfigure(&self, options: LoadOptions) -> Result<()> {
        let frame = reconfigure_frame(self.id, options)?;
        {
            let mut st = self.shared.lock();
            if st.closed_by_host || st.child_gone || st.is_broken() {
                return Err(self.shared.gone_error(st));
            }
            if let Some(ch) = st.channels.get_mut(&self.id) {
                self.shared
                    .reconfigured
                    .store(true, std::sync::atomic::Ordering::Release);
                ch.load_options = Some(options);
            }
        }
        self.send_frame(frame)
    }

    /// How items the host receives on this channel load strings (see
    /// [`Channel::reconfigure`]).
    pub fn load_options(&self) -> LoadOptions {
        self.shared.lock().load_options(self.id)
    }

    /// True when the host closed its side or the remote side closed the channel.
    pub fn is_closed(&self) -> bool {
        let st = self.shared.lock();
        match st.channels.get(&self.id) {
            Some(ch) => ch.local_closed || ch.remote_closed(),
            None => true,
        }
    }

    fn close_frame(&self, t: MsgType, message: Option<&str>) -> Result<()> {
        // Build and check the frame first: a close that cannot be sent changes nothing.
        let frame = build_frame(t, self.id, |out| match message {
            Some(m) => encode_payload(&Value::from(m), out),
            None => Ok(()),
        })?;
        self.check_frame_len(&frame)?;
        {
            let mut st = self.shared.lock();
            match st.channels.get_mut(&self.id) {
                Some(ch) if !ch.local_closed => ch.local_closed = true,
                _ => return Ok(()),
            }
        }
        self.send_frame(frame)
    }

    fn check_frame_len(&self, frame: &[u8]) -> Result<()> {
        let len = (frame.len() - crate::frame::HEADER_LEN) as u64;
        if len > u64::from(self.shared.max_frame_len) {
            return Err(Error::new(ErrorKind::FrameTooLarge {
                channel: self.id,
                len,
                limit: u64::from(self.shared.max_frame_len),
            }));
        }
        Ok(())
    }

    pub(crate) fn send_frame(&self, frame: Vec<u8>) -> Result<()> {
        self.send_checked(frame, false)
    }

    /// Sends a frame after checking, under one lock, that the worker is there and, with
    /// `need_open`, that the host has not closed this channel.
    fn send_checked(&self, frame: Vec<u8>, need_open: bool) -> Result<()> {
        self.check_frame_len(&frame)?;
        self.check_open(need_open)?;
        self.shared.write_frame(&frame)
    }

    /// The worker is there and, with `need_open`, the host has not closed this channel.
    fn check_open(&self, need_open: bool) -> Result<()> {
        let st = self.shared.lock();
        if need_open && st.channels.get(&self.id).is_none_or(|ch| ch.local_closed) {
            return Err(Error::new(ErrorKind::ChannelClosed { id: self.id }));
        }
        if st.closed_by_host || st.child_gone || st.is_broken() {
            return Err(self.shared.gone_error(st));
        }
        Ok(())
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let send_close = {
            let mut st = self.shared.lock();
            let gone = st.closed_by_host || st.child_gone;
            match st.channels.get_mut(&self.id) {
                Some(ch) => {
                    let send = !ch.local_closed && !gone;
                    ch.local_closed = true;
                    if ch.remote_closed() || gone {
                        st.channels.remove(&self.id);
                    } else {
                        ch.mark_dropped();
                    }
                    send
                }
                None => false,
            }
        };
        if send_close {
            // Never waits for a full pipe: the close is written when it drains.
            if let Ok(frame) = build_frame(MsgType::ChannelClose, self.id, |_| Ok::<_, Error>(())) {
                self.shared.try_write_frame(&frame);
            }
        }
    }
}

/// Iterator over a channel's items; see [`Channel::iter`].
pub struct Iter<'a> {
    channel: &'a Channel,
    done: bool,
}

impl Iterator for Iter<'_> {
    type Item = Result<Value>;

    fn next(&mut self) -> Option<Result<Value>> {
        if self.done {
            return None;
        }
        match self.channel.receive() {
            Ok(v) => Some(Ok(v)),
            Err(e) if matches!(e.kind(), ErrorKind::ChannelClosed { .. }) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> IntoIterator for &'a Channel {
    type Item = Result<Value>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// A RECONFIGURE frame for channel `id` (0: the gateway).
pub(crate) fn reconfigure_frame(id: i32, options: LoadOptions) -> Result<Vec<u8>> {
    build_frame(MsgType::Reconfigure, id, |out| {
        encode_load_options(options, out);
        Ok::<_, Error>(())
    })
}

/// Fills in the waited duration of a timeout error.
fn with_timeout(e: Error, after: Duration) -> Error {
    match e.kind() {
        ErrorKind::Timeout { operation, .. } => Error::new(ErrorKind::Timeout {
            operation: operation.clone(),
            after,
        }),
        _ => e,
    }
}
