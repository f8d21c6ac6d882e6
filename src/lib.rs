//! pixgate: run Python in a separate CPython process and hand it arrays without
//! copying.
//!
//! A [`Gateway`] starts a worker interpreter, sends it the bundled helper over a pipe
//! (the worker needs nothing installed but numpy for arrays) and runs code there; each
//! [`Gateway::remote_exec`] returns a [`Channel`] to talk to that code. Values travel in
//! execnet's wire format ([`Value`], [`dumps`], [`loads`]); Rust types through serde
//! ([`to_value`], [`from_value`], [`Channel::receive_as`]). Pixels travel in shared
//! memory ([`SharedArray`]): Python sees a numpy array over the very pages Rust wrote.
//!
//! The examples below run a real worker: the interpreter is `$PIXGATE_PYTHON`, else
//! `python3` ([`GatewayBuilder::python`] names one explicitly).
//!
//! # Channels
//!
//! ```
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
//!
//! # Arrays: share, lend, move
//!
//! | call | the worker gets | Rust meanwhile | Rust may write again |
//! |---|---|---|---|
//! | [`SharedArray::share`] | a read-only numpy array (mapped read-only) | reads | when the worker released every share |
//! | [`SharedArray::lend`] | a writable numpy array | neither reads nor writes | when the worker released it (or sent it back) |
//! | [`SharedArray::into_value`] | the array itself: it owns it from then on | nothing: the handle is consumed | — |
//! | an array created in Python (`pixgate.empty`), sent | — | owns it ([`SharedArray::from_value`], [`Channel::receive_as`]) | at once |
//!
//! Each reference is single-use: sending it twice, or sending one not made by these
//! calls, fails with [`ErrorKind::Reference`] before anything is written (the rules in
//! full: [`SharedArray`]).
//!
//! ```
//! use std::time::Duration;
//! use pixgate::{Gateway, SharedArray};
//!
//! let t = Duration::from_secs(10);
//! let gw = Gateway::spawn("popen//id=arrays")?;
//! let ch = gw.remote_exec(
//!     "import numpy as np, pixgate\n\
//!      stack = channel.receive()\n\
//!      stack *= 2\n\
//!      mip = pixgate.empty(stack.shape[1:], stack.dtype)\n\
//!      np.max(stack, axis=0, out=mip)\n\
//!      channel.send((stack, mip))",
//! )?;
//! let mut stack = SharedArray::<u16>::zeros(&[8, 64, 64])?;
//! stack.view_mut()?.fill(3);
//! ch.send(stack.lend()?)?;                    // writable in Python, locked in Rust
//! let back = ch.receive_timeout(t)?;          // the stack given back, the MIP moved here
//! let items = back.into_items().unwrap();
//! let mip = SharedArray::<u16>::from_value(items.into_iter().nth(1).unwrap())?;
//! assert_eq!(stack.view_mut()?[[0, 0, 0]], 6);
//! assert_eq!(mip.view()?[[5, 5]], 6);
//! # gw.exit(t)?;
//! # Ok::<(), pixgate::Error>(())
//! ```
//!
//! Results with arrays inside convert straight into Rust types:
//!
//! ```
//! use std::time::Duration;
//! use pixgate::{Gateway, SharedArray};
//!
//! #[derive(serde::Deserialize)]
//! struct Segmented {
//!     labels: SharedArray<i32>,
//!     count: i64,
//! }
//!
//! let gw = Gateway::spawn("popen//id=labels")?;
//! let ch = gw.remote_exec(
//!     "import pixgate\n\
//!      labels = pixgate.zeros((4, 4), 'int32'); labels[1:3, 1:3] = 1\n\
//!      channel.send({'labels': labels, 'count': 1})",
//! )?;
//! let r: Segmented = ch.receive_as(Some(Duration::from_secs(10)))?;
//! assert_eq!((r.labels.view()?.sum(), r.count), (4, 1));
//! # gw.exit(Duration::from_secs(5))?;
//! # Ok::<(), pixgate::Error>(())
//! ```
//!
//! # Pools and frame streams
//!
//! A [`Pool`] keeps slots of pre-faulted shared memory that both sides map once; a
//! [`FrameStream`] sends its frames lock-step or pipelined, and each slot comes back when
//! the worker releases it (`pixgate.frames(channel)` does that as its loop moves on).
//!
//! ```
//! use std::time::Duration;
//! use pixgate::{FrameStream, Gateway, Pool, StreamMode};
//!
//! let gw = Gateway::spawn("popen//id=camera")?;
//! let ch = gw.remote_exec(
//!     "import pixgate\n\
//!      sums = [int(f.sum()) for f in pixgate.frames(channel)]\n\
//!      channel.send(sums)",
//! )?;
//! let pool = Pool::builder().class(256 * 256 * 2).slots(4).build()?;
//! let mut stream = FrameStream::new(&ch, &pool, StreamMode::Pipelined(2));
//! for i in 0..10u16 {
//!     let mut frame = stream.frame::<u16>(&[256, 256])?; // waits while 2 are out
//!     frame.view_mut()?.fill(i);
//!     stream.send(frame)?;
//! }
//! stream.finish()?;
//! ch.close()?;
//! let sums = ch.receive_timeout(Duration::from_secs(10))?;
//! assert_eq!(sums.as_seq().unwrap()[9].as_i64(), Some(9 * 256 * 256));
//! # gw.exit(Duration::from_secs(5))?;
//! # Ok::<(), pixgate::Error>(())
//! ```
//!
//! # Errors
//!
//! Every failure is an [`Error`] whose [`ErrorKind`] says what happened: the remote
//! code's exception ([`ErrorKind::Remote`], with its traceback), a timeout, a closed
//! channel, a dead worker, a refused reference, a bad segment. Bad input never panics
//! and never takes the gateway, the other channels or the host's arrays with it.
//!
//! ```
//! use std::time::Duration;
//! use pixgate::{ErrorKind, Gateway};
//!
//! let gw = Gateway::spawn("popen//id=errors")?;
//! let err = gw.remote_exec("1 / 0")?.receive_timeout(Duration::from_secs(5)).unwrap_err();
//! assert_eq!(err.remote().map(|r| r.type_name.as_str()), Some("ZeroDivisionError"));
//! let ch = gw.remote_exec("import time\ntime.sleep(10)")?;
//! let err = ch.receive_timeout(Duration::from_millis(100)).unwrap_err();
//! assert!(matches!(err.kind(), ErrorKind::Timeout { .. }));
//! gw.kill()?;
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
/// The views `tests/spec_tables.rs` checks `spec/` against; not part of the API.
#[doc(hidden)]
pub mod tables;
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
