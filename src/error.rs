//! The crate's one error type.
//!
//! Every fallible public function returns [`Result<T>`](crate::Result), whose error is an
//! [`Error`] carrying an [`ErrorKind`]. Messages are lower case, name what was involved
//! and show expected and actual values where there are any.

use std::fmt;
use std::time::Duration;

use crate::codec::{DecodeError, EncodeError};

/// Shorthand for `std::result::Result<T, pixgate::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from pixgate: what went wrong ([`Error::kind`]) and where.
#[derive(Clone)]
pub struct Error {
    kind: Box<ErrorKind>,
}

impl Error {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind: Box::new(kind),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Consumes the error and returns its kind.
    pub fn into_kind(self) -> ErrorKind {
        *self.kind
    }

    /// The remote exception, when this error is one (or a group worker's failure
    /// caused by one).
    pub fn remote(&self) -> Option<&RemoteError> {
        match &*self.kind {
            ErrorKind::Remote(r) => Some(r),
            ErrorKind::GroupWorker { cause, .. } => cause.remote(),
            _ => None,
        }
    }

    /// How the worker ended, when this error reports its death (or a group worker's
    /// failure caused by it).
    pub fn worker_exit(&self) -> Option<&WorkerExit> {
        match &*self.kind {
            ErrorKind::WorkerDied(w) => Some(w),
            ErrorKind::GroupWorker { cause, .. } => cause.worker_exit(),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io {
            context: context.into(),
            kind: err.kind(),
            message: err.to_string(),
            source: std::sync::Arc::new(err),
        })
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol(message.into()))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::new(ErrorKind::Decode(e))
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Error {
        Error::new(ErrorKind::Encode(e))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ErrorKind::Decode(e) => Some(e),
            ErrorKind::Encode(e) => Some(e),
            ErrorKind::GroupWorker { cause, .. } => Some(&**cause),
            ErrorKind::Io { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// The kinds of error pixgate reports.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A gateway spec string could not be parsed or names something unsupported.
    #[error("gateway spec {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The interpreter named by the spec (or the default) does not exist or cannot run.
    #[error("python interpreter {path:?} could not be started: {reason}")]
    InterpreterNotFound {
        /// The interpreter that was tried.
        path: String,
        /// Why it could not be started.
        reason: String,
    },
    /// The worker did not complete the handshake.
    #[error("handshake with worker pid {pid} failed: {reason}")]
    Handshake {
        /// The worker's process id.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
    /// A blocking operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        operation: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// The channel is closed: no more items will arrive, or it can no longer send.
    #[error("channel {id} is closed")]
    ChannelClosed {
        /// The channel id.
        id: i32,
    },
    /// The remote code raised an exception, which closed the channel.
    #[error("{0}")]
    Remote(RemoteError),
    /// The remote code stopped because the host cancelled it.
    #[error("channel {id} was cancelled")]
    Cancelled {
        /// The channel id.
        id: i32,
    },
    /// An array is held by the peer in a way that forbids the operation (writing while
    /// shared, anything while lent).
    #[error("{0}")]
    Busy(String),
    /// An array reference cannot be sent: it was not made by
    /// [`SharedArray::share`](crate::SharedArray::share),
    /// [`lend`](crate::SharedArray::lend) or
    /// [`into_value`](crate::SharedArray::into_value) in this process (it was decoded
    /// from bytes or received from a worker), it was sent before (a reference is
    /// single-use, its clones included), it was made for another gateway, or its array
    /// was dropped. Also a moved reference offered for adoption that no worker sent.
    /// Nothing was sent.
    #[error("{0}")]
    Reference(String),
    /// Every slot of a pool's size class is in flight: at once with
    /// [`WhenFull::Fail`](crate::WhenFull::Fail), or after waiting as long as
    /// [`WhenFull::Block`](crate::WhenFull::Block) allows.
    #[error("pool: all {slots} slots of {slot_bytes} bytes are in use (waited {waited:?})")]
    PoolExhausted {
        /// The size class's slot size in bytes.
        slot_bytes: usize,
        /// Its number of slots.
        slots: usize,
        /// How long the call waited for one.
        waited: Duration,
    },
    /// No size class of a pool is large enough for the array.
    #[error("pool: an array of {needs} bytes fits no size class (the largest holds {largest})")]
    PoolNoClass {
        /// The array's extent in bytes.
        needs: usize,
        /// The largest slot size of the pool.
        largest: usize,
    },
    /// The worker process ended while the operation needed it.
    #[error("{0}")]
    WorkerDied(WorkerExit),
    /// An argument is out of range or inconsistent with another: an axis beyond an
    /// array's axes, shapes that disagree, a group of no workers.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// One worker of a [`Group`](crate::Group) failed an operation of the whole group:
    /// it could not be started, its code raised, it died, or it did not finish in time.
    #[error("{}", group_worker_text(*.index, .gateway, *.pid, .cause, .killed))]
    GroupWorker {
        /// The worker's index in the group.
        index: usize,
        /// Its gateway id.
        gateway: String,
        /// Its process id, when it was started.
        pid: Option<u32>,
        /// What went wrong there: the remote exception ([`ErrorKind::Remote`]), its death
        /// ([`ErrorKind::WorkerDied`]), a [`ErrorKind::Timeout`], a start-up error, ….
        cause: Box<Error>,
        /// Other workers (by index) that had to be killed because they did not stop in
        /// time after this failure; their gateways are dead.
        killed: Vec<usize>,
    },
    /// The gateway was shut down by the host.
    #[error("gateway {id} is closed")]
    GatewayClosed {
        /// The gateway id.
        id: String,
    },
    /// Bytes did not decode as a value.
    #[error("{0}")]
    Decode(DecodeError),
    /// A value could not be encoded.
    #[error("{0}")]
    Encode(EncodeError),
    /// A frame is larger than the configured limit.
    #[error("frame of {len} bytes on channel {channel} exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The channel the frame was for.
        channel: i32,
        /// The frame's payload length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Conversion between a value and a Rust type failed.
    #[error("value conversion: {0}")]
    Convert(String),
    /// A shared-memory segment could not be created, opened or used: its header failed
    /// validation, its owner or mode is wrong, the system is out of space, ….
    #[error("segment {name}: {problem}")]
    Segment {
        /// The segment's name (`/pxg-…`), or `(new)` for a layout or metadata that
        /// belongs to no segment yet.
        name: String,
        /// What is wrong.
        problem: crate::problem::SegmentProblem,
    },
    /// An operating-system call failed. The error's
    /// [`source`](std::error::Error::source) is the [`std::io::Error`] itself (with its
    /// `raw_os_error`).
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
        /// The error as the operating system reported it.
        source: std::sync::Arc<std::io::Error>,
    },
}

fn group_worker_text(
    index: usize,
    gateway: &str,
    pid: Option<u32>,
    cause: &Error,
    killed: &[usize],
) -> String {
    let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    let mut text = format!("group worker {index} (gateway {gateway}{pid}) failed: {cause}");
    if !killed.is_empty() {
        let list: Vec<String> = killed.iter().map(usize::to_string).collect();
        text.push_str(&format!(
            "; worker(s) {} did not stop in time and were killed",
            list.join(", ")
        ));
    }
    text
}

/// An exception raised by remote code, as the worker reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    /// The exception's type name, such as `ZeroDivisionError`.
    pub type_name: String,
    /// The exception's message (`str(exc)`).
    pub message: String,
    /// The formatted traceback, as `traceback.format_exception` prints it.
    pub traceback: String,
}

impl RemoteError {
    /// Builds a remote error from execnet's format: a formatted traceback whose last
    /// line reads `Type: message`.
    pub fn from_traceback(text: &str) -> RemoteError {
        let last = text.trim_end().lines().last().unwrap_or("");
        let (type_name, message) = match last.split_once(": ") {
            Some((t, m)) if !t.contains(' ') => (t.to_string(), m.to_string()),
            _ if !last.contains(' ') && !last.is_empty() => (last.to_string(), String::new()),
            _ => ("RemoteError".to_string(), last.to_string()),
        };
        RemoteError {
            type_name,
            message,
            traceback: text.to_string(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remote {}: {}", self.type_name, self.message)?;
        if !self.traceback.is_empty() {
            write!(f, "\n{}", self.traceback.trim_end())?;
        }
        Ok(())
    }
}

/// How a worker process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerExit {
    /// The gateway id.
    pub gateway: String,
    /// The worker's process id.
    pub pid: u32,
    /// The exit code, when it exited normally.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The last lines the worker wrote to its stderr.
    pub stderr_tail: Vec<String>,
}

impl WorkerExit {
    /// A short description of the exit: `exit code 3` or `signal 9 (SIGKILL)`.
    pub fn status_text(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(sig)) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                format!("signal {sig} ({name})")
            }
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "unknown status".to_string(),
        }
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}) died: {}",
            self.gateway,
            self.pid,
            self.status_text()
        )?;
        if !self.stderr_tail.is_empty() {
            write!(f, "; last stderr lines:")?;
            for line in &self.stderr_tail {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl crate::problem::SegmentProblem {
    /// This problem as the crate's error, naming the segment.
    pub(crate) fn at(self, name: &str) -> Error {
        Error::new(ErrorKind::Segment {
            name: name.to_string(),
            problem: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_error_parses_execnet_traceback() {
        let tb = "Traceback (most recent call last):\n  File \"<remote exec>\", line 1, in <module>\nZeroDivisionError: division by zero\n";
        let r = RemoteError::from_traceback(tb);
        assert_eq!(r.type_name, "ZeroDivisionError");
        assert_eq!(r.message, "division by zero");
        assert_eq!(r.traceback, tb);
    }

    #[test]
    fn remote_error_without_message_keeps_type() {
        let r = RemoteError::from_traceback("Traceback...\nKeyboardInterrupt\n");
        assert_eq!(r.type_name, "KeyboardInterrupt");
        assert_eq!(r.message, "");
    }

    #[test]
    fn worker_exit_names_the_signal() {
        let w = WorkerExit {
            gateway: "gw0".into(),
            pid: 42,
            code: None,
            signal: Some(9),
            stderr_tail: vec!["boom".into()],
        };
        let text = w.to_string();
        assert!(text.contains("signal 9 (SIGKILL)"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }
}
