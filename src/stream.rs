//! Frame streams: arrays from a [`Pool`] sent on a channel with several in flight.
//!
//! # Rationale
//!
//! A camera pipeline hands Python one frame after another. Sent *lock-step* (send a
//! frame, wait until Python is done with it, send the next) every frame pays the full
//! round trip, two wake-ups included. *Pipelined*, up to `depth` frames are in flight:
//! the producer fills the next slot while Python works on the previous ones, and waits
//! only when `depth` frames are out. Frames are lent pool slots, so only a name and a
//! generation cross the pipe, and a slot is back in the pool as soon as Python releases
//! it (`pixgate.frames` releases each frame when its loop moves on; sending the frame
//! back, or letting it be garbage-collected, release it too).
//!
//! Frames arrive in the order they were sent (one channel, one pipe). Results come back
//! the same way: [`FrameStream::send_with`] lends an array for the result (a slot of
//! another pool) with each frame, the worker writes it and sends it back, and
//! [`Channel::receive`] reads the results, in order, while the stream goes on.
//!
//! ```no_run
//! # fn main() -> pixgate::Result<()> {
//! use pixgate::{FrameStream, Gateway, Pool, StreamMode};
//! let gw = Gateway::spawn("popen")?;
//! let ch = gw.remote_exec("import pixgate\nfor f in pixgate.frames(channel): pass")?;
//! let pool = Pool::builder().class(2048 * 2048 * 2).slots(8).build()?;
//! let mut stream = FrameStream::new(&ch, &pool, StreamMode::Pipelined(4));
//! for i in 0..100u16 {
//!     let mut frame = stream.frame::<u16>(&[2048, 2048])?;
//!     frame.view_mut()?.fill(i);
//!     stream.send(frame)?;
//! }
//! stream.finish()?;
//! ch.close()?;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::array::{Element, SharedArray};
use crate::channel::Channel;
use crate::error::Result;
use crate::pool::Pool;
use crate::value::Value;

/// How many frames a [`FrameStream`] lets be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// One at a time: [`FrameStream::send`] returns once the worker has released the
    /// frame.
    LockStep,
    /// Up to this many (at least 1): [`FrameStream::send`] waits only while that many
    /// are out. The pool should hold at least one more slot than this, for the frame
    /// being filled.
    Pipelined(usize),
}

/// Sends frames taken from a [`Pool`] on a channel; see the module docs.
#[derive(Debug)]
pub struct FrameStream<'c> {
    channel: &'c Channel,
    pool: Pool,
    mode: StreamMode,
    timeout: Option<Duration>,
    in_flight: VecDeque<(String, u64)>,
    sent: u64,
}

impl<'c> FrameStream<'c> {
    /// A stream of frames from `pool` on `channel`.
    pub fn new(channel: &'c Channel, pool: &Pool, mode: StreamMode) -> FrameStream<'c> {
        FrameStream {
            channel,
            pool: pool.clone(),
            mode,
            timeout: None,
            in_flight: VecDeque::new(),
            sent: 0,
        }
    }

    /// Gives up waiting for the worker to release a frame after `timeout` (default: wait
    /// as long as the worker lives).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An empty frame from the pool, to fill and [`send`](FrameStream::send). Its
    /// contents are whatever the slot's last use left.
    ///
    /// # Errors
    ///
    /// As [`Pool::take`].
    pub fn frame<T: Element>(&mut self, shape: &[usize]) -> Result<SharedArray<T>> {
        self.pool.take(shape)
    }

    /// Lends `frame` to the worker and sends it; its slot returns to the pool when the
    /// worker releases it. Lock-step, returns after that release; pipelined, first waits
    /// while the stream's limit of frames is in flight.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`] (the frame then goes back to the pool); [`ErrorKind::Timeout`]
    /// past the stream's timeout; the remote code's error when it ended while holding a
    /// frame.
    ///
    /// [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout
    pub fn send<T: Element>(&mut self, frame: SharedArray<T>) -> Result<()> {
        self.send_lent(frame, None)
    }

    /// As [`FrameStream::send`], with an array for the result: `result` (typically a
    /// slot of another pool) is lent with the frame, and the worker receives the pair
    /// `(frame, result)`. The worker writes into `result` and sends it back on the
    /// channel, which gives it back: [`Channel::receive`] then returns its reference
    /// and `result` can be read here again. Results come back in the order the frames
    /// were sent; keep the result arrays in that order (e.g. a `VecDeque`).
    ///
    /// # Errors
    ///
    /// As [`FrameStream::send`]; [`ErrorKind::Busy`] when `result` is already held by
    /// the worker.
    ///
    /// [`ErrorKind::Busy`]: crate::ErrorKind::Busy
    pub fn send_with<T: Element, U: Element>(
        &mut self,
        frame: SharedArray<T>,
        result: &mut SharedArray<U>,
    ) -> Result<()> {
        // Never sent (an error below): the reference is dropped, which gives the result
        // back to this process.
        let lent = result.lend()?;
        self.send_lent(frame, Some(lent))
    }

    fn send_lent<T: Element>(
        &mut self,
        mut frame: SharedArray<T>,
        with: Option<Value>,
    ) -> Result<()> {
        if let StreamMode::Pipelined(depth) = self.mode {
            while self.in_flight.len() >= depth.max(1) {
                self.wait_oldest()?;
            }
        }
        let lent = frame.lend()?;
        let value = match with {
            Some(extra) => Value::Tuple(vec![lent, extra]),
            None => lent,
        };
        let (name, generation) = (frame.key(), frame.generation());
        // Out of our hands: the slot comes back with the worker's release, or at once
        // if the send fails (the unsent reference is dropped with `value`).
        drop(frame);
        self.channel.send_value(&value)?;
        self.sent += 1;
        self.in_flight.push_back((name, generation));
        if self.mode == StreamMode::LockStep {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Waits until the worker has released every frame sent.
    ///
    /// # Errors
    ///
    /// As [`FrameStream::send`].
    pub fn finish(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Frames sent and not yet released.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn wait_oldest(&mut self) -> Result<()> {
        if let Some((name, generation)) = self.in_flight.front() {
            let deadline = self.timeout.map(|t| Instant::now() + t);
            self.channel
                .wait_released_key(name, *generation, deadline)?;
            self.in_flight.pop_front();
        }
        Ok(())
    }
}
