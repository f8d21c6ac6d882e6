//! pixgate: run Python in a separate CPython process and exchange values with it.
//!
//! A [`Gateway`] starts a worker interpreter, sends it the bundled helper over a pipe
//! (the worker needs nothing installed) and runs code there; each
//! [`Gateway::remote_exec`] returns a [`Channel`] to talk to that code. Values travel in
//! execnet's wire format ([`dumps`], [`loads`], [`Value`]); Rust types travel through
//! serde ([`to_value`], [`from_value`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use pixgate::Gateway;
//!
//! let gw = Gateway::spawn("popen//id=demo")?;
//! let ch = gw.remote_exec("for x in channel:\n    channel.send(x * 2)")?;
//! ch.send(21)?;
//! assert_eq!(ch.receive_timeout(Duration::from_secs(5))?.as_i64(), Some(42));
//! ch.close()?;
//! gw.exit(Duration::from_secs(5))?;
//! # Ok::<(), pixgate::Error>(())
//! ```

mod array;
mod bootstrap;
mod byvalue;
mod channel;
pub mod codec;
mod connection;
mod descriptors;
mod dtype;
mod error;
mod frame;
/// Fuzz target bodies, shared by `fuzz/` and `tests/fuzz_corpus.rs`; not part of the API.
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod group;
mod header;
mod lease;
mod output;
mod peer;
mod pool;
mod problem;
pub mod segment;
mod serde_value;
mod spec;
mod ssh;
mod stream;
mod value;
mod writer;

pub use array::{Element, SharedArray};
pub use channel::{Channel, ExecOptions, Iter};
pub use codec::{
    DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind, FormatVersion, LoadOptions, dumps,
    dumps_with, loads, loads_with,
};
pub use error::{Error, ErrorKind, RemoteError, Result, WorkerExit};
pub use frame::DEFAULT_MAX_FRAME_LEN;
pub use gateway::{
    DEFAULT_EXIT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, Gateway, GatewayBuilder, HELPER_VERSION,
    PROTOCOL_VERSION, WorkerInfo,
};
pub use group::{Group, STOP_GRACE};
pub use header::{
    DType, FLAG_C_CONTIGUOUS, FLAG_F_CONTIGUOUS, FLAG_POOL_SLOT, Layout, MAX_NDIM, Meta, RawHeader,
};
/// The `ndarray` this crate's views are made of, so that users need not match its
/// version in their own dependencies.
pub use ndarray;
pub use output::{
    CAPTURED_LINE_OVERHEAD, MAX_CAPTURED_OUTPUT, MAX_OUTPUT_LINE, OutputCallback, OutputLine,
    OutputMode, Stream,
};
pub use pool::{ClassStats, Pool, PoolBuilder, WhenFull};
pub use segment::{SegmentInfo, SegmentProblem};
pub use serde_value::{from_value, to_value};
pub use spec::{HelperSource, Spec};
pub use stream::{FrameStream, StreamMode};
pub use value::{Access, ArrayRef, Value};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
