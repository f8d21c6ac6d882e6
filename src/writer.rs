//! The host's end of the pipe to the worker: whole frames, in order, with deadlines, and
//! control frames that never wait.
//!
//! The write end is `O_NONBLOCK`. A write is tried first; only when the pipe is full
//! (`EAGAIN`) does the writer wait, in `poll` on the pipe and on the gateway's *dead
//! pipe*, so that a worker's death wakes it. A frame, once its first byte is written, is
//! always written whole before any other frame, so frames never interleave.
//!
//! - [`Writer::write`] waits, until an optional deadline, for its turn and for room. The
//!   turn is a token (`busy`) under the writer's mutex, given back with a condition
//!   variable, so a thread can wait for it with a deadline; a thread waiting for room
//!   in a full pipe holds no lock that others would wait on without one. A write that
//!   finds the writer free, nothing queued and room in the pipe (the round-trip path)
//!   holds the mutex for one `write` call and never polls.
//! - [`Writer::try_write`] never waits: drops use it (channel close, FORGET). A frame
//!   that cannot be written at once is queued; the next writer writes the queue first,
//!   and a flusher thread, started when something is queued and ending when the queue
//!   is empty, writes it as soon as the pipe has room.
//!
//! Everything queued precedes what is written later, so the order of frames is the
//! order in which they were handed over.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::output::lock;

/// Why a write did not complete.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The deadline passed before any byte of the frame was written; nothing was sent.
    Timeout,
    /// The worker is gone: the pipe is broken or the dead pipe fired.
    Gone,
    /// Another error of the write.
    Io(io::Error),
}

/// The writing end of the protocol pipe of one gateway.
pub(crate) struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the flusher thread.
    id: String,
    /// The pipe's write end, `O_NONBLOCK`.
    fd: OwnedFd,
    /// Readable once the worker is gone (the gateway's dead pipe, never drained).
    dead: OwnedFd,
    state: Mutex<State>,
    /// Signalled when the token is given back.
    turn: Condvar,
}

#[derive(Default)]
struct State {
    /// A thread is writing a frame without holding the mutex (waiting for room).
    busy: bool,
    /// Frames handed over but not written yet, oldest first. The first may be partly
    /// written: `written` bytes of it are in the pipe.
    queue: VecDeque<Vec<u8>>,
    written: usize,
    /// A flusher thread is running.
    flusher: bool,
    /// The worker is gone: nothing more will be written.
    gone: bool,
}

impl Writer {
    /// A writer on `fd` (made non-blocking here) that gives up when `dead` is readable.
    pub(crate) fn new(id: String, fd: OwnedFd, dead: OwnedFd) -> io::Result<Writer> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Writer {
            inner: Arc::new(Inner {
                id,
                fd,
                dead,
                state: Mutex::new(State::default()),
                turn: Condvar::new(),
            }),
        })
    }

    /// Writes `frame` whole, after everything handed over before it. Waits for the turn
    /// and for room until `deadline` (`None`: as long as the worker lives).
    ///
    /// [`WriteError::Timeout`] means that nothing of `frame` was written. If the
    /// deadline passes once part of it is in the pipe, the rest is queued (a frame is
    /// never cut) and the write counts as done.
    pub(crate) fn write(&self, frame: &[u8], deadline: Option<Instant>) -> Result<(), WriteError> {
        let inner = &*self.inner;
        let mut st = lock(&inner.state);
        if st.gone {
            return Err(WriteError::Gone);
        }
        let mut done = 0;
        if !st.busy && st.queue.is_empty() {
            // The common case: one attempt, no poll.
            done = inner.write_now(frame).inspect_err(|_| st.gone = true)?;
            if done == frame.len() {
                return Ok(());
            }
        } else {
            while st.busy {
                st = match deadline {
                    None => inner.turn.wait(st).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(WriteError::Timeout);
                        }
                        inner
                            .turn
                            .wait_timeout(st, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
                if st.gone {
                    return Err(WriteError::Gone);
                }
            }
        }
        st.busy = true;
        drop(st);
        let out = self.write_turn(frame, done, deadline);
        self.give_back();
        out
    }

    /// With the token: the queue, then the rest of `frame` from `done`.
    fn write_turn(
        &self,
        frame: &[u8],
        mut done: usize,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        let inner = &*self.inner;
        if done == 0 {
            inner.drain(deadline)?;
        }
        match inner.write_waiting(frame, &mut done, deadline) {
            Ok(()) => Ok(()),
            Err(WriteError::Timeout) if done > 0 => {
                // Started, so it must end whole: the flusher finishes it.
                let mut st = lock(&inner.state);
                st.queue.push_front(frame.to_vec());
                st.written = done;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `frame` now if the pipe takes it, else queues it; never waits for the
    /// pipe (only, briefly, for another thread's non-blocking `write` call). Nothing
    /// happens once the worker is gone.
    pub(crate) fn try_write(&self, frame: &[u8]) {
        let inner = &*self.inner;
        let mut st = lock(&inner.state);
        if st.gone {
            return;
        }
        if st.busy || !st.queue.is_empty() {
            // The token holder or the flusher writes the queue before anything else.
            st.queue.push_back(frame.to_vec());
        } else {
            match inner.write_now(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => {
                    st.queue.push_back(frame.to_vec());
                    st.written = n;
                }
                Err(_) => {
                    st.gone = true;
                    return;
                }
            }
        }
        if !st.busy {
            self.start_flusher(&mut st);
        }
    }

    /// Gives the token back; the flusher takes over what is still queued.
    fn give_back(&self) {
        let mut st = lock(&self.inner.state);
        st.busy = false;
        if st.gone {
            st.queue.clear();
        } else if !st.queue.is_empty() {
            self.start_flusher(&mut st);
        }
        drop(st);
        self.inner.turn.notify_all();
    }

    fn start_flusher(&self, st: &mut MutexGuard<'_, State>) {
        if st.flusher {
            // Already running: it waits for the token or for room.
            self.inner.turn.notify_all();
            return;
        }
        let inner = Arc::clone(&self.inner);
        let started = std::thread::Builder::new()
            .name(format!("pixgate-{}-flush", self.inner.id))
            .spawn(move || inner.flush());
        // Without a thread, the queue waits for the next writer.
        st.flusher = started.is_ok();
    }
}

impl Inner {
    /// One attempt to write `bytes`, without waiting: how many bytes the pipe took.
    fn write_now(&self, bytes: &[u8]) -> Result<usize, WriteError> {
        let mut done = 0;
        while done < bytes.len() {
            match nix::unistd::write(self.fd.as_fd(), &bytes[done..]) {
                Ok(0) => return Err(WriteError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EPIPE) => return Err(WriteError::Gone),
                Err(e) => return Err(WriteError::Io(e.into())),
            }
        }
        Ok(done)
    }

    /// Writes `bytes[*done..]`, waiting for room until `deadline`; `*done` counts what
    /// was written even when this fails. Any failure but a timeout ends the writer.
    fn write_waiting(
        &self,
        bytes: &[u8],
        done: &mut usize,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        loop {
            *done += self
                .write_now(&bytes[*done..])
                .inspect_err(|_| self.mark_gone())?;
            if *done == bytes.len() {
                return Ok(());
            }
            self.wait_for_room(deadline)?;
        }
    }

    /// Waits until the pipe has room, the worker is gone, or `deadline`.
    fn wait_for_room(&self, deadline: Option<Instant>) -> Result<(), WriteError> {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WriteError::Timeout);
                }
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT),
            PollFd::new(self.dead.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(WriteError::Timeout),
            Ok(_) if readable(&fds[1]) => {
                self.mark_gone();
                Err(WriteError::Gone)
            }
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => {
                // As for a failed write: the stream is unusable (and the flusher must
                // not retry forever).
                self.mark_gone();
                Err(WriteError::Io(e.into()))
            }
        }
    }

    /// With the token: writes the queue until it is empty.
    fn drain(&self, deadline: Option<Instant>) -> Result<(), WriteError> {
        loop {
            let (frame, mut done) = {
                let mut st = lock(&self.state);
                match st.queue.pop_front() {
                    Some(f) => (f, std::mem::take(&mut st.written)),
                    None => return Ok(()),
                }
            };
            if let Err(e) = self.write_waiting(&frame, &mut done, deadline) {
                let mut st = lock(&self.state);
                if !st.gone {
                    // Back in front, with what of it is written already.
                    st.queue.push_front(frame);
                    st.written = done;
                }
                return Err(e);
            }
        }
    }

    fn mark_gone(&self) {
        let mut st = lock(&self.state);
        st.gone = true;
        st.queue.clear();
    }

    /// The flusher thread: takes the token whenever it is free and something is
    /// queued, and writes the queue; ends when the queue is empty or the worker gone.
    fn flush(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.gone || st.queue.is_empty() {
                st.flusher = false;
                return;
            }
            if st.busy {
                st = self.turn.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.busy = true;
            drop(st);
            let _ = self.drain(None);
            st = lock(&self.state);
            st.busy = false;
            self.turn.notify_all();
        }
    }
}

fn readable(fd: &PollFd<'_>) -> bool {
    fd.revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, OwnedFd) {
        crate::descriptors::pipe(false).expect("pipe")
    }

    impl Writer {
        fn queued(&self) -> usize {
            lock(&self.inner.state).queue.len()
        }
    }

    /// A writer on a fresh pipe, its read end, and the write end of its dead pipe.
    fn writer() -> (Writer, OwnedFd, OwnedFd) {
        let (r, w) = pipe();
        let (dead_r, dead_w) = pipe();
        (Writer::new("test".into(), w, dead_r).unwrap(), r, dead_w)
    }

    /// Fills the pipe with try_write-free raw writes until it is full.
    fn fill(w: &Writer) -> usize {
        let chunk = [0u8; 4096];
        let mut n = 0;
        loop {
            match nix::unistd::write(w.inner.fd.as_fd(), &chunk) {
                Ok(k) => n += k,
                Err(Errno::EAGAIN) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Reads everything until EOF or `limit` bytes, on a thread.
    fn reader(r: OwnedFd, limit: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            while out.len() < limit {
                match nix::unistd::read(r.as_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            out
        })
    }

    #[test]
    fn a_write_larger_than_the_pipe_arrives_whole_and_in_order() {
        let (w, r, _dead) = writer();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let h = reader(r, big.len() + 3);
        w.write(b"abc", None).unwrap();
        w.write(&big, None).unwrap();
        drop(w);
        let got = h.join().unwrap();
        assert_eq!(&got[..3], b"abc");
        assert!(got[3..] == big[..]);
    }

    #[test]
    fn a_deadline_on_a_full_pipe_is_a_timeout_and_sends_nothing() {
        let (w, r, _dead) = writer();
        let filled = fill(&w);
        let t = Instant::now();
        let e = w.write(
            b"0123456789",
            Some(Instant::now() + Duration::from_millis(100)),
        );
        assert!(matches!(e, Err(WriteError::Timeout)), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(w);
        assert_eq!(reader(r, usize::MAX).join().unwrap().len(), filled);
    }

    #[test]
    fn try_write_on_a_full_pipe_queues_and_the_flusher_delivers_in_order() {
        let (w, r, _dead) = writer();
        let filled = fill(&w);
        let t = Instant::now();
        w.try_write(b"first");
        w.try_write(b"second");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(w.queued(), 2);
        let h = reader(r, filled + 11 + 5);
        // A later write waits for the queue to go first.
        w.write(b"third", None).unwrap();
        drop(w);
        let got = h.join().unwrap();
        assert_eq!(&got[filled..], b"firstsecondthird");
    }

    #[test]
    fn the_flusher_delivers_without_another_writer() {
        let (w, r, _dead) = writer();
        let filled = fill(&w);
        w.try_write(b"close");
        let got = reader(r, filled + 5).join().unwrap();
        assert_eq!(&got[filled..], b"close");
        let start = Instant::now();
        while w.queued() > 0 || lock(&w.inner.state).flusher {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "flusher still runs"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_dead_pipe_wakes_a_write_blocked_on_a_full_pipe() {
        let (w, _r, dead) = writer();
        fill(&w);
        let w = Arc::new(w);
        let w2 = Arc::clone(&w);
        let h = std::thread::spawn(move || w2.write(b"stuck", None));
        std::thread::sleep(Duration::from_millis(50));
        nix::unistd::write(dead.as_fd(), b"x").unwrap();
        assert!(matches!(h.join().unwrap(), Err(WriteError::Gone)));
        // Later writes fail at once, and tries do nothing.
        assert!(matches!(w.write(b"x", None), Err(WriteError::Gone)));
        w.try_write(b"x");
        assert_eq!(w.queued(), 0);
    }

    #[test]
    fn a_closed_reader_is_gone() {
        let (w, r, _dead) = writer();
        drop(r);
        assert!(matches!(w.write(b"x", None), Err(WriteError::Gone)));
    }
}
