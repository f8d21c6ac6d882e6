//! The descriptor socket (docs/PROTOCOL.md §2.7): with the anonymous transport, the
//! descriptors of the segments a frame refers to travel on a Unix stream socket beside
//! the frame pipes, in messages of 12 bytes with `SCM_RIGHTS` attached.
//!
//! A sender numbers its descriptors from 1 up and sends a frame's descriptors in one
//! message before it writes the frame; a receiver files what arrives under its tokens
//! and hands each descriptor out once, to the reference that names its token.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    recvmsg, sendmsg, socketpair,
};

use crate::output::lock;

/// Bytes of a message before its ancillary data: the count and the first token.
const MESSAGE_LEN: usize = 12;

/// The most descriptors one message carries (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_PER_MESSAGE: usize = 253;

/// The most descriptors a receiver keeps filed without a reference having taken them: a
/// peer that sends more breaks the socket instead of filling this process's descriptor
/// table.
pub(crate) const MAX_FILED: usize = 1024;

/// How long a receiver waits for the message of a token whose frame it holds.
pub(crate) const TAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One end of a descriptor socket.
pub(crate) struct DescriptorSocket {
    sock: OwnedFd,
    /// The token of the next descriptor sent; held while a message is written, so that
    /// tokens reach the socket in order.
    next_send: Mutex<u64>,
    received: Mutex<Received>,
}

struct Received {
    /// The token the next message must start with.
    expected: u64,
    filed: HashMap<u64, OwnedFd>,
    /// Why the stream of messages cannot be trusted any more.
    broken: Option<String>,
}

impl std::fmt::Debug for DescriptorSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DescriptorSocket")
            .field("fd", &self.sock.as_raw_fd())
            .finish_non_exhaustive()
    }
}

/// Flags of `sendmsg`: a peer gone is `EPIPE`, not `SIGPIPE` (macOS has no
/// `MSG_NOSIGNAL`; there the process must ignore `SIGPIPE`, as Rust executables do).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: MsgFlags = MsgFlags::empty();

/// Flags of `recvmsg`: received descriptors are close-on-exec from the start where the
/// kernel can do it (elsewhere they are marked right after the call).
#[cfg(any(target_os = "linux", target_os = "android"))]
const RECV_FLAGS: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RECV_FLAGS: MsgFlags = MsgFlags::empty();

/// Marks `fd` close-on-exec.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_cloexec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

/// A pipe whose ends are close-on-exec (and non-blocking if asked): `pipe2` where the
/// system has it, else `pipe` and `fcntl`.
pub(crate) fn pipe(nonblocking: bool) -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let flags = if nonblocking {
        OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
    } else {
        OFlag::O_CLOEXEC
    };
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        nix::unistd::pipe2(flags)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        let (r, w) = nix::unistd::pipe()?;
        for end in [r.as_fd(), w.as_fd()] {
            set_cloexec(end)?;
            if flags.contains(OFlag::O_NONBLOCK) {
                fcntl(end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            }
        }
        Ok((r, w))
    }
}

/// A connected pair of sockets for a gateway: the host's end, the worker's end. Both
/// close-on-exec; the host's is non-blocking.
pub(crate) fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let (host, worker) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // No SOCK_CLOEXEC on macOS: nothing forks between the two calls while the socket
    // is being made except a gateway's own spawn, which passes its end explicitly.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let (host, worker) = {
        let (h, w) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )?;
        set_cloexec(h.as_fd())?;
        set_cloexec(w.as_fd())?;
        (h, w)
    };
    nix::fcntl::fcntl(
        host.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((host, worker))
}

impl DescriptorSocket {
    /// Wraps a non-blocking socket end.
    pub(crate) fn new(sock: OwnedFd) -> DescriptorSocket {
        DescriptorSocket {
            sock,
            next_send: Mutex::new(1),
            received: Mutex::new(Received {
                expected: 1,
                filed: HashMap::new(),
                broken: None,
            }),
        }
    }

    /// Sends `fds` in messages of at most [`MAX_PER_MESSAGE`] and returns the token of
    /// the first; waits for room at most until `deadline`, and as long as `alive` says
    /// the peer is there.
    pub(crate) fn send(
        &self,
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> std::io::Result<u64> {
        let mut next = lock(&self.next_send);
        let first = *next;
        for chunk in fds.chunks(MAX_PER_MESSAGE) {
            let raw: Vec<RawFd> = chunk.iter().map(|fd| fd.as_raw_fd()).collect();
            let mut msg = [0u8; MESSAGE_LEN];
            msg[..4].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
            msg[4..].copy_from_slice(&next.to_be_bytes());
            let mut sent = 0;
            while sent < MESSAGE_LEN {
                let iov = [IoSlice::new(&msg[sent..])];
                // The descriptors go with the first byte only.
                let rights = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if sent == 0 { &rights } else { &[] };
                match sendmsg::<UnixAddr>(self.sock.as_raw_fd(), &iov, cmsgs, SEND_FLAGS, None) {
                    Ok(n) => sent += n,
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => wait_for(&self.sock, PollFlags::POLLOUT, deadline)?,
                    Err(e) => return Err(e.into()),
                }
            }
            *next += chunk.len() as u64;
        }
        Ok(first)
    }

    /// Takes the descriptor filed under `token`, reading messages (and filing the others
    /// it meets) until it arrives or `deadline` passes.
    ///
    /// # Errors
    ///
    /// A description of the problem: the token is unknown or used already (0 is never a
    /// token), the socket ended or broke, or the wait timed out.
    pub(crate) fn take(&self, token: u64, deadline: Instant) -> Result<OwnedFd, String> {
        let mut rx = lock(&self.received);
        loop {
            if let Some(fd) = rx.filed.remove(&token) {
                return Ok(fd);
            }
            if let Some(why) = &rx.broken {
                return Err(why.clone());
            }
            if token == 0 || token < rx.expected {
                return Err(format!(
                    "descriptor token {token} is unknown or used already"
                ));
            }
            match self.read_message(&mut rx) {
                Ok(true) => {}
                Ok(false) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!(
                            "descriptor {token} did not arrive within {TAKE_TIMEOUT:?}"
                        ));
                    }
                    drop(rx);
                    let _ = wait_for(&self.sock, PollFlags::POLLIN, Some(deadline));
                    rx = lock(&self.received);
                }
                Err(why) => {
                    rx.filed.clear();
                    rx.broken = Some(why);
                }
            }
        }
    }

    /// Reads one message if one is there: Ok(true) when it was filed, Ok(false) when
    /// nothing was waiting.
    fn read_message(&self, rx: &mut Received) -> Result<bool, String> {
        let mut msg = [0u8; MESSAGE_LEN];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_PER_MESSAGE]);
        let (got, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut msg)];
            let r = match recvmsg::<UnixAddr>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                RECV_FLAGS,
            ) {
                Ok(r) => r,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(false),
                Err(e) => return Err(format!("reading the descriptor socket: {e}")),
            };
            let mut fds = Vec::new();
            for c in r.cmsgs().map_err(|e| format!("descriptor message: {e}"))? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel installed these descriptors in this process's
                    // table just now for this message; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                    // Where recvmsg cannot set close-on-exec itself, set it now.
                    #[cfg(not(any(target_os = "linux", target_os = "android")))]
                    for fd in &fds {
                        set_cloexec(fd.as_fd()).map_err(|e| format!("descriptor: {e}"))?;
                    }
                }
            }
            (r.bytes, fds, r.flags.contains(MsgFlags::MSG_CTRUNC))
        };
        if got == 0 {
            return Err("the descriptor socket was closed by the worker".to_string());
        }
        // The rest of a short read carries no descriptors.
        let mut have = got;
        let until = Instant::now() + TAKE_TIMEOUT;
        while have < MESSAGE_LEN {
            match nix::sys::socket::recv(self.sock.as_raw_fd(), &mut msg[have..], MsgFlags::empty())
            {
                Ok(0) => return Err("the descriptor socket ended inside a message".into()),
                Ok(n) => have += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    wait_for(&self.sock, PollFlags::POLLIN, Some(until))
                        .map_err(|e| format!("reading the descriptor socket: {e}"))?;
                }
                Err(e) => return Err(format!("reading the descriptor socket: {e}")),
            }
        }
        let count = u32::from_be_bytes(msg[..4].try_into().expect("4 bytes")) as usize;
        let first = u64::from_be_bytes(msg[4..].try_into().expect("8 bytes"));
        if truncated || count == 0 || count > MAX_PER_MESSAGE || count != fds.len() {
            return Err(format!(
                "descriptor message announces {count} descriptors, {} arrived{}",
                fds.len(),
                if truncated { " (cut)" } else { "" }
            ));
        }
        if rx.filed.len() + count > MAX_FILED {
            return Err(format!(
                "the peer sent more than {MAX_FILED} descriptors that no reference took"
            ));
        }
        if first != rx.expected {
            return Err(format!(
                "descriptor message starts at token {first}, expected {}",
                rx.expected
            ));
        }
        for (i, fd) in fds.into_iter().enumerate() {
            rx.filed.insert(first + i as u64, fd);
        }
        rx.expected += count as u64;
        Ok(true)
    }

    /// Descriptors received and not taken yet.
    #[allow(dead_code)]
    pub(crate) fn filed(&self) -> usize {
        lock(&self.received).filed.len()
    }
}

/// Waits until `fd` is ready for `what`, at most until `deadline`.
fn wait_for(fd: &OwnedFd, what: PollFlags, deadline: Option<Instant>) -> std::io::Result<()> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd.as_fd(), what)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Err(std::io::ErrorKind::TimedOut.into()),
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender and a receiver, both ends non-blocking as the host's is.
    fn sockets() -> (DescriptorSocket, DescriptorSocket) {
        let (a, b) = pair().unwrap();
        nix::fcntl::fcntl(
            b.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (DescriptorSocket::new(a), DescriptorSocket::new(b))
    }

    fn pipe_fds(n: usize) -> Vec<(OwnedFd, OwnedFd)> {
        (0..n)
            .map(|_| crate::descriptors::pipe(false).unwrap())
            .collect()
    }

    #[test]
    fn descriptors_arrive_under_their_tokens_in_any_order_of_taking() {
        let (tx, rx) = sockets();
        let pipes = pipe_fds(300);
        let first: Vec<BorrowedFd<'_>> = pipes[..2].iter().map(|(r, _)| r.as_fd()).collect();
        assert_eq!(tx.send(&first, None).unwrap(), 1);
        // More than one message's worth: split, tokens continue.
        let rest: Vec<BorrowedFd<'_>> = pipes[2..].iter().map(|(r, _)| r.as_fd()).collect();
        assert_eq!(tx.send(&rest, None).unwrap(), 3);
        let soon = Instant::now() + Duration::from_secs(5);
        let last = rx.take(300, soon).unwrap();
        let one = rx.take(1, soon).unwrap();
        // The descriptor received is the pipe sent: a write on its twin reads back.
        nix::unistd::write(&pipes[0].1, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(one.as_fd(), &mut buf).unwrap(), 1);
        nix::unistd::write(&pipes[299].1, b"y").unwrap();
        assert_eq!(nix::unistd::read(last.as_fd(), &mut buf).unwrap(), 1);
        assert_eq!(buf, *b"y");
        assert_eq!(rx.filed(), 298);
        assert!(rx.take(1, soon).unwrap_err().contains("used already"));
        assert!(rx.take(0, soon).is_err());
        let t = Instant::now();
        let err = rx
            .take(301, Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(err.contains("did not arrive"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_peer_cannot_fill_the_descriptor_table_with_unused_descriptors() {
        let (tx, rx) = sockets();
        let (r, _w) = crate::descriptors::pipe(false).unwrap();
        let same: Vec<BorrowedFd<'_>> = (0..MAX_PER_MESSAGE).map(|_| r.as_fd()).collect();
        let mut sent = 0;
        while sent <= MAX_FILED + MAX_PER_MESSAGE {
            tx.send(&same, None).unwrap();
            sent += MAX_PER_MESSAGE;
        }
        let soon = Instant::now() + Duration::from_secs(5);
        let err = rx.take(sent as u64, soon).unwrap_err();
        assert!(err.contains("no reference took"), "{err}");
        assert_eq!(rx.filed(), 0, "what was filed is closed");
    }

    #[test]
    fn a_message_that_breaks_the_sequence_breaks_the_socket() {
        let (a, b) = pair().unwrap();
        nix::fcntl::fcntl(
            b.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let rx = DescriptorSocket::new(b);
        // A message claiming two descriptors with one attached.
        let pipes = pipe_fds(1);
        let raw = [pipes[0].0.as_raw_fd()];
        let mut msg = [0u8; MESSAGE_LEN];
        msg[..4].copy_from_slice(&2u32.to_be_bytes());
        msg[4..].copy_from_slice(&1u64.to_be_bytes());
        sendmsg::<UnixAddr>(
            a.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let soon = Instant::now() + Duration::from_secs(5);
        let err = rx.take(1, soon).unwrap_err();
        assert!(err.contains("announces 2 descriptors, 1 arrived"), "{err}");
        assert!(rx.take(2, soon).is_err(), "broken for good");
        assert_eq!(rx.filed(), 0, "what came with it was closed");
    }
}
