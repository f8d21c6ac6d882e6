//! Frames: execnet's 9-byte header (message type, channel id, payload length) and a
//! buffered reader that never trusts a length it has not received the bytes for.
//!
//! The byte layout is specified in `docs/PROTOCOL.md`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Length of a frame header in bytes.
pub(crate) const HEADER_LEN: usize = 9;

/// Default cap on a frame's payload (configurable per gateway).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 256 * 1024 * 1024;

/// Message types: 0–7 are execnet's, 32 and up are pixgate's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i8)]
pub(crate) enum MsgType {
    Status = 0,
    Reconfigure = 1,
    GatewayTerminate = 2,
    ChannelExec = 3,
    ChannelData = 4,
    ChannelClose = 5,
    ChannelCloseError = 6,
    ChannelLastMessage = 7,
    Handshake = 32,
    Output = 33,
    Cancel = 34,
    ExecMain = 35,
    Release = 36,
    Forget = 37,
    /// By value: an object's bytes follow under a token (docs/PROTOCOL.md §4.14).
    Object = 38,
    /// By value: bytes of an object announced by OBJECT.
    Chunk = 39,
    /// By value: pixels a worker wrote into a lent array, before its RELEASE.
    WriteBack = 40,
}

impl MsgType {
    pub(crate) fn from_i8(v: i8) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Status,
            1 => Reconfigure,
            2 => GatewayTerminate,
            3 => ChannelExec,
            4 => ChannelData,
            5 => ChannelClose,
            6 => ChannelCloseError,
            7 => ChannelLastMessage,
            32 => Handshake,
            33 => Output,
            34 => Cancel,
            35 => ExecMain,
            36 => Release,
            37 => Forget,
            38 => Object,
            39 => Chunk,
            40 => WriteBack,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub msgtype: i8,
    pub channel: i32,
    pub len: i32,
}

impl Header {
    pub(crate) fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            msgtype: b[0] as i8,
            channel: i32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            len: i32::from_be_bytes([b[5], b[6], b[7], b[8]]),
        }
    }

    pub(crate) fn write(msgtype: i8, channel: i32, len: u32, out: &mut [u8]) {
        out[0] = msgtype as u8;
        out[1..5].copy_from_slice(&channel.to_be_bytes());
        out[5..9].copy_from_slice(&len.to_be_bytes());
    }
}

/// A whole frame as read from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub msgtype: i8,
    pub channel: i32,
    pub payload: Vec<u8>,
}

/// What one call of [`FrameReader::next_event`] produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A complete frame.
    Frame(Frame),
    /// A frame whose payload exceeded the limit; its bytes were read and dropped.
    Oversized { msgtype: i8, channel: i32, len: u32 },
    /// The peer closed its end.
    Eof,
    /// The deadline passed, or one of the wake descriptors became readable.
    Idle,
}

/// A fatal framing error: the byte stream cannot be resynchronised.
#[derive(Debug)]
pub(crate) enum ReadError {
    NegativeLength { msgtype: i8, channel: i32, len: i32 },
    TruncatedAtEof { have: usize },
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NegativeLength {
                msgtype,
                channel,
                len,
            } => write!(
                f,
                "frame of type {msgtype} on channel {channel} has negative length {len}"
            ),
            ReadError::TruncatedAtEof { have } => {
                write!(
                    f,
                    "stream ended inside a frame ({have} bytes of it received)"
                )
            }
            ReadError::Io(e) => write!(f, "reading the protocol pipe: {e}"),
        }
    }
}

const CHUNK: usize = 64 * 1024;

/// The byte-level half of [`FrameReader`]: buffers what the peer has sent and cuts it
/// into events. It does no I/O, so it can be driven from any byte source, including a
/// test feeding it arbitrary reads.
///
/// Bytes are taken only as the peer provides them: a header announcing a large payload
/// causes no allocation beyond what actually arrives, and a payload over `max_len` is
/// discarded as it arrives.
pub(crate) struct FrameBuffer {
    /// `buf[start..end]` is received and not yet consumed; `buf[end..]` is spare room
    /// that was zeroed once and is reused by later reads without zeroing it again.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Remaining bytes of an oversized payload still to discard, with its header.
    discarding: Option<(Header, u64)>,
    max_len: u32,
}

impl FrameBuffer {
    pub(crate) fn new(max_len: u32) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::with_capacity(CHUNK),
            start: 0,
            end: 0,
            discarding: None,
            max_len,
        }
    }

    /// The next complete frame (or discard result) that needs no more bytes, if any.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Event>, ReadError> {
        let ev = self.buffered_event();
        self.compact();
        ev
    }

    fn buffered_event(&mut self) -> Result<Option<Event>, ReadError> {
        if let Some((h, left)) = self.discarding {
            let avail = (self.end - self.start) as u64;
            let take = avail.min(left);
            self.start += take as usize;
            if take == left {
                self.discarding = None;
                return Ok(Some(Event::Oversized {
                    msgtype: h.msgtype,
                    channel: h.channel,
                    len: h.len as u32,
                }));
            }
            self.discarding = Some((h, left - take));
            return Ok(None);
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let h = Header::parse(avail[..HEADER_LEN].try_into().expect("9 bytes"));
        if h.len < 0 {
            return Err(ReadError::NegativeLength {
                msgtype: h.msgtype,
                channel: h.channel,
                len: h.len,
            });
        }
        let len = h.len as usize;
        if h.len as u32 > self.max_len {
            self.start += HEADER_LEN;
            self.discarding = Some((h, len as u64));
            return self.buffered_event();
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(Event::Frame(Frame {
            msgtype: h.msgtype,
            channel: h.channel,
            payload,
        })))
    }

    /// Bytes the buffer still wants for the frame in progress (at least one chunk).
    fn want(&self) -> usize {
        let avail = self.end - self.start;
        if self.discarding.is_some() || avail < HEADER_LEN {
            return CHUNK;
        }
        let h = Header::parse(
            self.buf[self.start..self.start + HEADER_LEN]
                .try_into()
                .expect("9 bytes"),
        );
        let need = HEADER_LEN + h.len.max(0) as usize - avail;
        // Grow by what the peer has actually sent, at most 1 MiB beyond a chunk at a time.
        need.clamp(CHUNK, CHUNK + (1 << 20))
    }

    /// Appends what one call of `read` puts into a spare area of [`Self::want`] bytes
    /// and returns how many bytes that was (0 at end of stream).
    ///
    /// # Errors
    ///
    /// Whatever `read` returns; the buffer is left as it was.
    pub(crate) fn fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let want = self.want();
        if self.buf.len() < self.end + want {
            self.buf.resize(self.end + want, 0);
        }
        let n = read(&mut self.buf[self.end..self.end + want])?;
        let n = n.min(want);
        self.end += n;
        Ok(n)
    }

    /// The event for the end of the stream, once [`Self::next_buffered`] has nothing
    /// more: [`Event::Eof`] between frames, an error inside one.
    pub(crate) fn at_eof(&self) -> Result<Event, ReadError> {
        let have = self.end - self.start;
        if have > 0 || self.discarding.is_some() {
            return Err(ReadError::TruncatedAtEof { have });
        }
        Ok(Event::Eof)
    }

    /// Bytes allocated for buffering.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > 4 * CHUNK {
                self.buf.clear();
                self.buf.shrink_to(CHUNK);
            }
        } else if self.start > CHUNK && self.start * 2 > self.end {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Reads frames from a pipe with a deadline, keeping partial frames between calls: a
/// [`FrameBuffer`] fed from a file descriptor.
pub(crate) struct FrameReader {
    fd: OwnedFd,
    frames: FrameBuffer,
}

impl FrameReader {
    pub(crate) fn new(fd: OwnedFd, max_len: u32) -> FrameReader {
        FrameReader {
            fd,
            frames: FrameBuffer::new(max_len),
        }
    }

    /// Produces the next event, waiting until `deadline` (forever if `None`) or until one
    /// of `wake` becomes readable.
    pub(crate) fn next_event(
        &mut self,
        deadline: Option<Instant>,
        wake: &[BorrowedFd<'_>],
    ) -> Result<Event, ReadError> {
        self.next_event_spinning(deadline, wake, Duration::ZERO)
    }

    /// As [`FrameReader::next_event`], but polls without blocking for up to `spin`
    /// before it sleeps: a reply that comes within `spin` then costs no wake-up.
    pub(crate) fn next_event_spinning(
        &mut self,
        deadline: Option<Instant>,
        wake: &[BorrowedFd<'_>],
        spin: Duration,
    ) -> Result<Event, ReadError> {
        loop {
            if let Some(ev) = self.frames.next_buffered()? {
                return Ok(ev);
            }
            if !spin.is_zero() {
                self.spin_until_readable(spin, deadline);
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that a short wait does not become a busy loop.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = Vec::with_capacity(1 + wake.len());
            fds.push(PollFd::new(self.fd.as_fd(), PollFlags::POLLIN));
            for w in wake {
                fds.push(PollFd::new(*w, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(Event::Idle),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ReadError::Io(e.into())),
            }
            let ready = fds[0].revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            });
            if !ready {
                // A wake descriptor fired and the pipe has nothing for us.
                return Ok(Event::Idle);
            }
            let fd = self.fd.as_fd();
            let n = self
                .frames
                .fill(|spare| {
                    loop {
                        match nix::unistd::read(fd, spare) {
                            Err(nix::errno::Errno::EINTR) => continue,
                            r => return r.map_err(io::Error::from),
                        }
                    }
                })
                .map_err(ReadError::Io)?;
            if n == 0 {
                return self.frames.at_eof();
            }
        }
    }
}

impl FrameReader {
    /// Polls the pipe without blocking until it is readable, `spin` has passed, or the
    /// deadline; yields the CPU between polls so that a peer on the same core runs.
    fn spin_until_readable(&self, spin: Duration, deadline: Option<Instant>) {
        let start = Instant::now();
        let until = deadline.map_or(start + spin, |d| d.min(start + spin));
        loop {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) || Instant::now() >= until {
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// Builds a frame in one buffer: header, then whatever `fill` appends as payload.
pub(crate) fn build_frame<E>(
    msgtype: MsgType,
    channel: i32,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    fill(&mut out)?;
    let len = (out.len() - HEADER_LEN) as u32;
    Header::write(msgtype as i8, channel, len, &mut out[..HEADER_LEN]);
    Ok(out)
}

/// Writes all of `bytes` to a blocking `fd`, retrying on EINTR and short writes (the
/// tests' writer; the gateway writes through `crate::writer`).
#[cfg(test)]
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, OwnedFd) {
        crate::descriptors::pipe(false).expect("pipe")
    }

    fn frame_bytes(t: i8, ch: i32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0; HEADER_LEN];
        Header::write(t, ch, payload.len() as u32, &mut v);
        v.extend_from_slice(payload);
        v
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn header_matches_execnet_struct_layout() {
        // struct.pack("!bii", 4, 3, 258) == b'\x04\x00\x00\x00\x03\x00\x00\x01\x02'
        let v = frame_bytes(4, 3, &[0; 258]);
        assert_eq!(&v[..9], b"\x04\x00\x00\x00\x03\x00\x00\x01\x02");
        let h = Header::parse(v[..9].try_into().unwrap());
        assert_eq!(
            h,
            Header {
                msgtype: 4,
                channel: 3,
                len: 258
            }
        );
    }

    #[test]
    fn reader_reassembles_frames_split_across_writes() {
        let (r, w) = pipe();
        let mut rd = FrameReader::new(r, 1024);
        let mut bytes = frame_bytes(4, 1, b"hello");
        bytes.extend(frame_bytes(5, 1, b""));
        write_all(w.as_fd(), &bytes[..4]).unwrap();
        assert_eq!(
            rd.next_event(Some(Instant::now() + Duration::from_millis(20)), &[])
                .unwrap(),
            Event::Idle
        );
        write_all(w.as_fd(), &bytes[4..]).unwrap();
        let ev = rd.next_event(soon(), &[]).unwrap();
        assert_eq!(
            ev,
            Event::Frame(Frame {
                msgtype: 4,
                channel: 1,
                payload: b"hello".to_vec()
            })
        );
        let ev = rd.next_event(soon(), &[]).unwrap();
        assert!(matches!(ev, Event::Frame(Frame { msgtype: 5, .. })));
        drop(w);
        assert_eq!(rd.next_event(soon(), &[]).unwrap(), Event::Eof);
    }

    #[test]
    fn oversized_frame_is_skipped_and_stream_stays_in_sync() {
        let (r, w) = pipe();
        let mut rd = FrameReader::new(r, 16);
        let big = vec![7u8; 200_000];
        let writer = std::thread::spawn(move || {
            let mut bytes = frame_bytes(4, 3, &big);
            bytes.extend(frame_bytes(4, 5, b"after"));
            write_all(w.as_fd(), &bytes).unwrap();
        });
        let ev = rd.next_event(soon(), &[]).unwrap();
        assert_eq!(
            ev,
            Event::Oversized {
                msgtype: 4,
                channel: 3,
                len: 200_000
            }
        );
        let ev = rd.next_event(soon(), &[]).unwrap();
        assert!(matches!(ev, Event::Frame(Frame { channel: 5, .. })));
        writer.join().unwrap();
    }

    #[test]
    fn negative_length_is_a_fatal_error() {
        let (r, w) = pipe();
        let mut rd = FrameReader::new(r, 16);
        let mut v = vec![0; 9];
        Header::write(4, 1, u32::MAX, &mut v);
        write_all(w.as_fd(), &v).unwrap();
        assert!(matches!(
            rd.next_event(soon(), &[]),
            Err(ReadError::NegativeLength { len: -1, .. })
        ));
    }

    #[test]
    fn eof_inside_a_frame_is_reported_as_truncation() {
        let (r, w) = pipe();
        let mut rd = FrameReader::new(r, 1024);
        let v = frame_bytes(4, 1, b"abcdef");
        write_all(w.as_fd(), &v[..12]).unwrap();
        drop(w);
        assert!(matches!(
            rd.next_event(soon(), &[]),
            Err(ReadError::TruncatedAtEof { have: 12 })
        ));
    }

    #[test]
    fn huge_announced_length_allocates_only_what_arrives() {
        let (r, w) = pipe();
        let mut rd = FrameReader::new(r, u32::MAX);
        let mut v = vec![0; 9];
        Header::write(4, 1, i32::MAX as u32, &mut v);
        write_all(w.as_fd(), &v).unwrap();
        drop(w);
        assert!(matches!(
            rd.next_event(soon(), &[]),
            Err(ReadError::TruncatedAtEof { .. })
        ));
        assert!(rd.frames.capacity() < 4 << 20, "{}", rd.frames.capacity());
    }

    #[test]
    fn wake_descriptor_interrupts_the_wait() {
        let (r, _w) = pipe();
        let (wr, ww) = pipe();
        let mut rd = FrameReader::new(r, 1024);
        write_all(ww.as_fd(), b"x").unwrap();
        let t = Instant::now();
        assert_eq!(rd.next_event(None, &[wr.as_fd()]).unwrap(), Event::Idle);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
