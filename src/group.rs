//! Groups: several workers started from one spec, working on one shared stack.
//!
//! A [`Group`] holds N [`Gateway`]s started in parallel from the same spec (execnet's
//! `Group`). [`Group::map_planes`] splits a stack along an axis into N contiguous ranges,
//! and each worker applies a Python function to every plane of its range, writing the
//! results into its own part of one shared output array; [`Group::terminate`] ends every
//! worker within a bounded time.
//!
//! # Rationale
//!
//! - **One output, written by everyone at once.** The input is shared read-only with
//!   each worker. The output is handed out as a *split lend*: one writable reference
//!   per worker, each told its own range. Rust's side keeps the borrow rule of
//!   [`SharedArray`]: `map_planes` takes `&mut output`, so no view exists while any
//!   part is out, and the array counts every part until it comes back (by the worker's
//!   release, or its death). Writing only its own range is the harness's promise, and
//!   the harness is pixgate's own code (below), so the split is cooperative, like the
//!   rest of the access rules against a worker of the same user.
//! - **Contiguous, even ranges.** Workers with more planes get one more than the rest
//!   (`10 = 4 + 3 + 3`); a worker with nothing to do is not asked. Along the outermost axis
//!   of a C-order array, contiguous ranges keep each worker's writes to pages nobody
//!   else writes, except at the borders.
//! - **A failure stops the group, named.** The first worker that fails (its function
//!   raises, it dies, the map runs past its timeout) is the error:
//!   [`ErrorKind::GroupWorker`] with its index, gateway id, pid and the cause. The others
//!   are cancelled (the harness polls `channel.is_cancelled()` between planes), given a
//!   bounded time to stop, and killed if they do not; the error lists those. Every part
//!   of the output is released when `map_planes` returns, with whatever was written.
//! - **Bounded shutdown.** [`Group::terminate`] asks all workers to exit at once and
//!   kills the ones still running at the deadline, so a group of N stuck workers costs
//!   one timeout, not N.
//!
//! # Limitations
//!
//! - A worker that was killed, or died, stays dead: its [`Gateway`] remains in the group
//!   ([`Gateway::is_alive`] is false) and later group operations fail naming it. Start a
//!   new group to replace it.
//! - Cancellation is checked between planes: a function that runs for a long time on
//!   one plane is killed at the deadline rather than stopped.
//! - The function must not keep references to its plane or to the output: the harness
//!   gives both back to the host when its range is done, after which the host may write
//!   them. The output part is written by plain numpy assignment (`out[i] = f(plane)`),
//!   so its casting rules apply (a float result into an integer output is truncated).
//! - The user's source is run anew in every worker for each map (imports are cached by
//!   Python, so this costs little after the first).

use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::array::{Element, SharedArray};
use crate::channel::{Channel, ExecOptions};
use crate::error::{Error, ErrorKind, Result, WorkerExit};
use crate::gateway::{DEFAULT_EXIT_TIMEOUT, Gateway, GatewayBuilder};
use crate::spec::Spec;
use crate::value::Value;

/// How long workers get to stop after a failure or a timeout, at least, before they
/// are killed.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// The worker's side of [`Group::map_planes`], run as ordinary remote code
/// (`python-helper/remote/map_planes.py`; the leading newline keeps its line numbers in
/// tracebacks as they have always been).
const HARNESS: &str = concat!("\n", include_str!("../python-helper/remote/map_planes.py"));

/// N gateways started in parallel from one spec, mapping Python functions over the
/// planes of shared stacks.
///
/// ```no_run
/// use std::time::Duration;
/// use pixgate::{Group, SharedArray};
///
/// let group = Group::new("popen//id=blur", 2)?;
/// let stack = SharedArray::<u16>::zeros(&[16, 512, 512])?;
/// let mut out = SharedArray::<f32>::zeros(&[16, 512, 512])?;
/// let source = "import numpy as np\ndef smooth(p):\n    return np.sqrt(p)\n";
/// group.map_planes(source, "smooth", &stack, &mut out, 0, Some(Duration::from_secs(60)))?;
/// let planes = out.view()?; // every part is back
/// # drop(planes);
/// group.terminate(Duration::from_secs(5))?;
/// # Ok::<(), pixgate::Error>(())
/// ```
///
/// A worker that failed stays in the group as a dead [`Gateway`]; later group operations
/// fail naming it. The reasons behind the design are in `src/group.rs`.
///
/// Dropping the group terminates every worker in parallel (polite exit, then `SIGKILL`
/// after [`DEFAULT_EXIT_TIMEOUT`]).
#[derive(Debug)]
pub struct Group {
    gateways: Vec<Gateway>,
}

/// One worker's share of a map: which worker, its planes, its channel.
struct Part<'g> {
    index: usize,
    gateway: &'g Gateway,
    channel: Channel,
}

impl Group {
    /// Starts `n` workers from `spec` in parallel, with default gateway options. Their
    /// ids are the spec's `id=` (else `group`) followed by `-0`, `-1`, ….
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for `n == 0`; [`ErrorKind::Spec`] for a bad spec;
    /// [`ErrorKind::GroupWorker`] naming the first worker that could not be started
    /// (the cause is the gateway's start-up error), after killing the others.
    pub fn new(spec: &str, n: usize) -> Result<Group> {
        Group::with_builder(&Gateway::builder(spec), n)
    }

    /// As [`Group::new`], with the options of `builder` (handshake and exit timeouts,
    /// output mode, frame limit) for every worker.
    ///
    /// # Errors
    ///
    /// As [`Group::new`].
    pub fn with_builder(builder: &GatewayBuilder, n: usize) -> Result<Group> {
        if n == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument(
                "a group needs at least one worker, got 0".into(),
            )));
        }
        let spec = Spec::parse(&builder.spec)?;
        let base = spec.id.as_deref().unwrap_or("group");
        let rest: Vec<&str> = builder
            .spec
            .split("//")
            .filter(|p| !p.is_empty() && !p.starts_with("id="))
            .collect();
        let builders: Vec<(String, GatewayBuilder)> = (0..n)
            .map(|i| {
                let id = format!("{base}-{i}");
                let mut b = builder.clone();
                b.spec = format!("{}//id={id}", rest.join("//"));
                (id, b)
            })
            .collect();
        let started: Vec<Result<Gateway>> = std::thread::scope(|s| {
            let handles: Vec<_> = builders
                .iter()
                .map(|(_, b)| s.spawn(|| b.clone().spawn()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::protocol("a thread starting a worker panicked"))
                    })
                })
                .collect()
        });
        let mut gateways = Vec::with_capacity(n);
        let mut failure = None;
        for (i, r) in started.into_iter().enumerate() {
            match r {
                Ok(gw) => gateways.push(gw),
                Err(e) if failure.is_none() => failure = Some((i, e)),
                Err(_) => {}
            }
        }
        if let Some((index, cause)) = failure {
            let pid = match cause.kind() {
                ErrorKind::Handshake { pid, .. } => Some(*pid),
                _ => None,
            };
            for gw in &gateways {
                let _ = gw.kill();
            }
            return Err(Error::new(ErrorKind::GroupWorker {
                index,
                gateway: builders[index].0.clone(),
                pid,
                cause: Box::new(cause),
                killed: Vec::new(),
            }));
        }
        Ok(Group { gateways })
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.gateways.len()
    }

    /// Always false: a group has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }

    /// The workers' gateways, in index order.
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// The gateway of worker `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&Gateway> {
        self.gateways.get(i)
    }

    /// Runs `source` on every worker; the channels are in index order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::GroupWorker`] naming the first worker that could not run it (the
    /// channels opened before are closed).
    pub fn remote_exec(&self, source: &str) -> Result<Vec<Channel>> {
        self.gateways
            .iter()
            .enumerate()
            .map(|(i, gw)| gw.remote_exec(source).map_err(|e| self.failed(i, e, &[])))
            .collect()
    }

    /// Asks every worker to exit, in parallel, kills those still running after
    /// `timeout`, and reaps them all. Returns how each ended, in index order; calling it
    /// again returns the same. Takes about `timeout` at most (plus the time the kernel
    /// needs to end killed processes).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::GroupWorker`] naming a worker that survived `SIGKILL` for 10 s (a
    /// process stuck in the kernel); every other worker is reaped all the same.
    pub fn terminate(&self, timeout: Duration) -> Result<Vec<WorkerExit>> {
        let results: Vec<Result<WorkerExit>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .gateways
                .iter()
                .map(|gw| s.spawn(move || gw.exit(timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::protocol("a thread ending a worker panicked"))
                    })
                })
                .collect()
        });
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| self.failed(i, e, &[])))
            .collect()
    }

    /// Applies the Python function `func`, defined by `source`, to every plane of
    /// `input` along `axis`, in parallel over the group: worker *k* gets a contiguous
    /// range of indices and does `output[..., i, ...] = func(input[..., i, ...])` for
    /// each index `i` of its range. `input` is shared read-only with the workers;
    /// `output` is lent to all of them at once, each writing its own range, and is
    /// usable again in Rust when this returns, whether it succeeded or not.
    ///
    /// `timeout` bounds the whole map; on a failure or timeout the other workers are
    /// cancelled, given until the deadline (at least [`STOP_GRACE`]; [`DEFAULT_EXIT_TIMEOUT`]
    /// without a timeout) to stop, and killed if they do not.
    ///
    /// # Errors
    ///
    /// Checked before anything is sent:
    /// [`ErrorKind::InvalidArgument`] when `axis` is not an axis of both arrays, or
    /// they differ in length along it; [`ErrorKind::Busy`] when `input` is lent, or
    /// `output` is shared or lent or mapped read-only in this process.
    ///
    /// While it runs: [`ErrorKind::GroupWorker`] naming the first worker that failed,
    /// with the cause: [`ErrorKind::Remote`] when `func` (or `source`) raised, in which
    /// case the message names the plane; [`ErrorKind::WorkerDied`] when the worker died;
    /// [`ErrorKind::Timeout`] when it had not finished by the deadline;
    /// [`ErrorKind::GatewayClosed`] for a worker that was terminated before. The error's
    /// `killed` lists workers that had to be killed to stop them.
    pub fn map_planes<T: Element, U: Element>(
        &self,
        source: &str,
        func: &str,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        axis: usize,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let planes = check_axis(input.shape(), output.shape(), axis)?;
        if input.is_lent() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "cannot share array {} with the group: it is lent to a worker",
                input.name()
            ))));
        }
        let ranges = split(planes, self.len());
        let active: Vec<usize> = (0..self.len()).filter(|&i| !ranges[i].is_empty()).collect();
        if active.is_empty() {
            return Ok(());
        }
        let peers: Vec<_> = active
            .iter()
            .map(|&i| crate::lease::key_of(&**self.gateways[i].shared()))
            .collect();
        let out_refs = output.lend_split(&peers)?;
        let (out_name, out_gen) = (output.key(), output.generation());

        // Start every part; a worker that cannot be started is the failure, and the
        // references made for it and for those after it are taken back (dropped unsent).
        let mut parts = Vec::with_capacity(active.len());
        let mut failure = None;
        for (&i, out_ref) in active.iter().zip(out_refs) {
            let gw = &self.gateways[i];
            let started = if failure.is_none() {
                self.start_part(gw, source, func, axis, &ranges[i], input, out_ref)
            } else {
                Err(Error::protocol("not started"))
            };
            match started {
                Ok(channel) => parts.push(Part {
                    index: i,
                    gateway: gw,
                    channel,
                }),
                Err(e) => {
                    if failure.is_none() {
                        failure = Some((i, e));
                    }
                }
            }
        }
        let outcome = collect(&parts, failure, deadline, timeout, planes);
        // Every part comes back before the caller sees the result: a part released by
        // RELEASE precedes the harness's answer on the pipe, and a dead worker's parts
        // were released when it was reaped; a worker that is slow to report still gets
        // a bounded wait.
        let limit = Instant::now() + STOP_GRACE;
        for p in &parts {
            if p.gateway.is_alive() {
                let _ = p.channel.wait_released_key(&out_name, out_gen, Some(limit));
            }
        }
        while output.is_lent() && Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
        let result = match outcome {
            Ok(()) => Ok(()),
            Err((i, cause, killed)) => Err(self.failed(i, cause, &killed)),
        };
        if output.is_lent() && result.is_ok() {
            return Err(Error::protocol(format!(
                "array {out_name}: a worker finished its part without giving it back"
            )));
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn start_part<T: Element>(
        &self,
        gw: &Gateway,
        source: &str,
        func: &str,
        axis: usize,
        range: &Range<usize>,
        input: &SharedArray<T>,
        out_ref: Value,
    ) -> Result<Channel> {
        let kwargs = vec![
            ("source".to_string(), Value::from(source)),
            ("func".to_string(), Value::from(func)),
            ("axis".to_string(), Value::from(axis as i64)),
            ("start".to_string(), Value::from(range.start as i64)),
            ("stop".to_string(), Value::from(range.end as i64)),
        ];
        let opts = ExecOptions::default()
            .file_name("<pixgate map_planes>")
            .call("_pixgate_map_planes", kwargs);
        let channel = gw.remote_exec_with(HARNESS, opts)?;
        let in_ref = input.share_to(crate::lease::key_of(&**gw.shared()))?;
        if let Err(e) = channel.send_value(&Value::Tuple(vec![in_ref, out_ref])) {
            let _ = channel.cancel();
            return Err(e);
        }
        Ok(channel)
    }

    /// The error for worker `index` failing with `cause`.
    fn failed(&self, index: usize, cause: Error, killed: &[usize]) -> Error {
        let gw = &self.gateways[index];
        Error::new(ErrorKind::GroupWorker {
            index,
            gateway: gw.id().to_string(),
            pid: Some(gw.pid()),
            cause: Box::new(cause),
            killed: killed.to_vec(),
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.terminate(DEFAULT_EXIT_TIMEOUT);
    }
}

/// The length along `axis`, checked to be an axis of both shapes with one length.
fn check_axis(input: &[usize], output: &[usize], axis: usize) -> Result<usize> {
    let bad = |m: String| Err(Error::new(ErrorKind::InvalidArgument(m)));
    if axis >= input.len() {
        return bad(format!(
            "axis {axis} is out of range for an input of {} axes (shape {input:?})",
            input.len()
        ));
    }
    if axis >= output.len() {
        return bad(format!(
            "axis {axis} is out of range for an output of {} axes (shape {output:?})",
            output.len()
        ));
    }
    if input[axis] != output[axis] {
        return bad(format!(
            "input and output differ along axis {axis}: input shape {input:?}, output shape {output:?}"
        ));
    }
    Ok(input[axis])
}

/// `len` indices in `n` contiguous ranges, as even as possible: the first `len % n`
/// ranges hold one more.
pub(crate) fn split(len: usize, n: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let end = start + base + usize::from(i < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// Waits for every part's answer. On the first failure (or at the deadline) the
/// others are cancelled, waited for until the stop deadline, then killed. Returns the
/// failure: the worker's index, the cause, and the workers that were killed.
fn collect(
    parts: &[Part<'_>],
    mut failure: Option<(usize, Error)>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    planes: usize,
) -> std::result::Result<(), (usize, Error, Vec<usize>)> {
    let stop_deadline = || {
        let now = Instant::now();
        match deadline {
            Some(d) => d.max(now + STOP_GRACE),
            None => now + DEFAULT_EXIT_TIMEOUT,
        }
    };
    let mut killed = Vec::new();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for (k, p) in parts.iter().enumerate() {
            let tx = tx.clone();
            s.spawn(move || {
                let _ = tx.send((k, p.channel.receive()));
            });
        }
        drop(tx);
        let mut pending = vec![true; parts.len()];
        let cancel_pending = |pending: &[bool]| {
            for (k, p) in parts.iter().enumerate() {
                if pending[k] {
                    let _ = p.channel.cancel();
                }
            }
        };
        let mut stop_by = None;
        if failure.is_some() {
            cancel_pending(&pending);
            stop_by = Some(stop_deadline());
        }
        let mut after_kill = false;
        while pending.iter().any(|&p| p) {
            let until = if after_kill {
                None
            } else {
                stop_by.or(deadline)
            };
            let got = match until {
                Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((k, r)) => {
                    pending[k] = false;
                    if let Err(e) = r {
                        if failure.is_none() {
                            failure = Some((parts[k].index, e));
                            cancel_pending(&pending);
                            stop_by = Some(stop_deadline());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if stop_by.is_none() => {
                    // The map's deadline: the first worker still busy is named.
                    let k = pending.iter().position(|&p| p).expect("some pending");
                    let p = &parts[k];
                    failure = Some((
                        p.index,
                        Error::new(ErrorKind::Timeout {
                            operation: format!(
                                "map over {planes} planes: worker {} had not finished its range",
                                p.index
                            ),
                            after: timeout.unwrap_or_default(),
                        }),
                    ));
                    cancel_pending(&pending);
                    stop_by = Some(stop_deadline());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The stop deadline: whoever has not stopped is killed; their
                    // receives then end with the death.
                    for (k, p) in parts.iter().enumerate() {
                        if pending[k] {
                            let _ = p.gateway.kill();
                            killed.push(p.index);
                        }
                    }
                    after_kill = true;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    match failure {
        None => Ok(()),
        Some((i, e)) => Err((i, e, killed)),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_axis, split};

    #[test]
    fn ranges_are_contiguous_and_even() {
        let lens = |len, n| split(len, n).iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(lens(12, 2), [6, 6]);
        assert_eq!(lens(10, 3), [4, 3, 3]);
        assert_eq!(lens(2, 4), [1, 1, 0, 0]);
        assert_eq!(lens(0, 2), [0, 0]);
        assert_eq!(lens(7, 1), [7]);
        assert!(split(5, 0).is_empty());
        for len in 0..40 {
            for n in 1..9 {
                let r = split(len, n);
                assert_eq!(r.len(), n);
                assert_eq!(r[0].start, 0);
                assert_eq!(r[n - 1].end, len);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let (lo, hi) = (len / n, len.div_ceil(n));
                assert!(r.iter().all(|x| x.len() == lo || x.len() == hi));
            }
        }
    }

    #[test]
    fn axes_must_exist_and_agree() {
        assert_eq!(check_axis(&[4, 3], &[4], 0).unwrap(), 4);
        assert_eq!(check_axis(&[4, 3], &[2, 3], 1).unwrap(), 3);
        assert!(check_axis(&[4, 3], &[4, 3], 2).is_err());
        assert!(check_axis(&[4, 3], &[4], 1).is_err());
        assert!(check_axis(&[4, 3], &[5, 3], 0).is_err());
        assert!(check_axis(&[], &[], 0).is_err());
    }
}
