//! P1, the small-value round trip, and P7, start-up to the first answer.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::report::{Row, Target};
use super::{Bench, BenchError, Scenario, TIMEOUT, peers};

/// The floor: a Python loop echoing what arrives on its stdin to its stdout.
const RAW_ECHO: &str = "import os\nwhile True:\n    b = os.read(0, 64)\n    if not b:\n        break\n    os.write(1, b)\n";

/// Round trips before any timing.
const WARM_UP: usize = 200;

/// P1: raw pipe echo, pixgate's `send` + `receive`, execnet's; pixgate ÷ raw and
/// execnet ÷ pixgate.
pub(crate) fn round_trip(b: &mut Bench) -> Result<(), BenchError> {
    let n = b.pick(300, 5000);
    let p = Scenario::P1;

    // The raw echo and pixgate take turns, a chunk of round trips each, so that a change
    // of the machine's regime (vCPUs that halt or not, which moves every wake-up by tens
    // of µs) falls on both alike.
    b.step("P1 raw pipe echo and pixgate channel in turn");
    let gw = b.gateway("bench-p1")?;
    let ch = gw.remote_exec("for x in channel:\n    channel.send(x)")?;
    let mut samples = Vec::with_capacity(n);
    let mut i = 0i64;
    let mut pixgate_chunk = |trips: usize, keep: bool| -> Result<(), BenchError> {
        for _ in 0..trips {
            i += 1;
            let t = Instant::now();
            ch.send(i)?;
            let back = ch.receive_timeout(TIMEOUT)?;
            let dt = t.elapsed().as_secs_f64();
            if back.as_i64() != Some(i) {
                return Err(BenchError::Answer(format!("sent {i}, got {back}")));
            }
            if keep {
                samples.push(dt);
            }
        }
        Ok(())
    };
    pixgate_chunk(WARM_UP, false)?;
    let raw = raw_echo(&b.opts.python, n, &mut |k| pixgate_chunk(k, true))?;
    ch.close()?;
    gw.exit(Duration::from_secs(10))?;
    let raw = b.report.row(
        Row::new(p, "raw pipe echo (Python os.read/os.write)", &raw)
            .note("8 bytes each way; the floor; in turn with pixgate"),
    );
    let pixgate = b.report.row(
        Row::new(p, "pixgate channel.send(i) + receive", &samples)
            .note("in turn with the raw echo"),
    );
    b.p1_pixgate = pixgate;

    let mut execnet = None;
    if b.has_execnet() {
        b.step("P1 execnet channel");
        let out = peers::run(
            &b.opts.python,
            peers::EXECNET,
            &[n.to_string(), "--each".into()],
            b.peer_deadline(),
        )?;
        execnet = b.report.row(Row::new(
            p,
            "execnet channel.send(i) + receive",
            &peers::floats(&out)?,
        ));
    }
    b.report.ratio(
        p,
        "pixgate ÷ raw pipe echo",
        pixgate.zip(raw).map(|(a, r)| a / r),
        "×",
        Target::AtMost(1.3),
    );
    b.report.ratio(
        p,
        "execnet ÷ pixgate",
        execnet.zip(pixgate).map(|(e, a)| e / a),
        "×",
        Target::AtLeast(5.0),
    );
    Ok(())
}

/// Round trips in one turn of the raw echo (and of what runs between its turns).
const CHUNK: usize = 100;

/// Times `n` round trips of 8 bytes through a Python echo on a pipe pair, calling
/// `between(CHUNK)` after each chunk of `CHUNK` timed trips.
fn raw_echo(
    python: &str,
    n: usize,
    between: &mut dyn FnMut(usize) -> Result<(), BenchError>,
) -> Result<Vec<f64>, BenchError> {
    let fail = |reason: String| BenchError::Peer {
        what: format!("{python} raw pipe echo"),
        reason,
    };
    let mut child = Command::new(python)
        .args(["-u", "-c", RAW_ECHO])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let result = (|| {
        let mut to = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let mut from = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let mut buf = [0u8; 8];
        let mut samples = Vec::with_capacity(n);
        for i in 0..WARM_UP + n {
            let t = Instant::now();
            to.write_all(b"01234567")
                .map_err(|e| fail(format!("write: {e}")))?;
            let mut got = 0;
            while got < buf.len() {
                let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, 10_000u16) {
                    Ok(0) => return Err(fail("no echo within 10 s".into())),
                    Ok(_) => {}
                    Err(e) => return Err(fail(format!("poll: {e}"))),
                }
                match from.read(&mut buf[got..]) {
                    Ok(0) => return Err(fail("the echo ended".into())),
                    Ok(k) => got += k,
                    Err(e) => return Err(fail(format!("read: {e}"))),
                }
            }
            if i >= WARM_UP {
                samples.push(t.elapsed().as_secs_f64());
                if (i + 1 - WARM_UP) % CHUNK == 0 {
                    between(CHUNK)?;
                }
            }
        }
        Ok(samples)
    })();
    // Closing stdin ends the loop; the deadline covers an echo that does not.
    drop(child.stdin.take());
    peers::wait(&mut child, Duration::from_secs(10));
    result
}

/// P7: `Gateway` spawn + first `remote_exec` answer, against execnet's `makegateway`
/// + first `remote_exec` answer; pixgate ÷ execnet.
pub(crate) fn start_up(b: &mut Bench) -> Result<(), BenchError> {
    let k = b.pick(2, 10);
    let p = Scenario::P7;
    let mut samples = Vec::with_capacity(k);
    for i in 0..k {
        b.step(format!("P7 pixgate start-up {}/{k}", i + 1));
        let t = Instant::now();
        let gw = b.gateway("bench-p7")?;
        let ch = gw.remote_exec("channel.send(1)")?;
        let one = ch.receive_timeout(TIMEOUT)?;
        samples.push(t.elapsed().as_secs_f64());
        if one.as_i64() != Some(1) {
            return Err(BenchError::Answer(format!("expected 1, got {one}")));
        }
        gw.exit(Duration::from_secs(10))?;
    }
    let pixgate = b.report.row(
        Row::new(p, "pixgate Gateway spawn + remote_exec answer", &samples).note("exit not timed"),
    );
    let mut execnet = None;
    if b.has_execnet() {
        b.step("P7 execnet start-up");
        let out = peers::run(
            &b.opts.python,
            peers::EXECNET,
            &["startup".into(), k.to_string()],
            b.peer_deadline(),
        )?;
        execnet = b.report.row(
            Row::new(
                p,
                "execnet makegateway + remote_exec answer",
                &peers::floats(&out)?,
            )
            .note("timed in the execnet host (Python)"),
        );
    }
    b.report.ratio(
        p,
        "pixgate ÷ execnet",
        pixgate.zip(execnet).map(|(a, e)| a / e),
        "×",
        Target::AtMost(1.0),
    );
    Ok(())
}
