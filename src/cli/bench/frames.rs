//! P5: `uint16` frames streamed to a worker that only iterates over them, lock-step and
//! pipelined, and the same with the multiprocessing peer.

use std::time::{Duration, Instant};

use pixgate::{FrameStream, StreamMode};

use super::report::{Plot, Row, Target};
use super::{Bench, BenchError, Scenario, TIMEOUT, peers};

/// Slots in each frame size's pool.
const SLOTS: usize = 6;
/// Frames in flight when pipelined.
const DEPTH: usize = 4;

/// P5: frames per second lock-step and `Pipelined(4)` at a few frame sizes; pipelined ÷
/// lock-step and lock-step fps × P1 at the largest.
pub(crate) fn stream(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P5;
    let sides: &[usize] = b.pick(&[256, 1024], &[256, 1024, 2048]);
    let per_batch = b.pick(10, 25);
    let batches = b.pick(3, 40);

    let gw = b.gateway("bench-p5")?;
    let ch = gw.remote_exec("import pixgate\nfor frame in pixgate.frames(channel):\n    pass")?;
    let mut largest = (None, None);
    // Every frame size and both modes take turns batch by batch, so that a change of
    // the machine's regime (vCPUs that halt or not) falls on all of them alike.
    let modes = [
        (StreamMode::LockStep, "lock-step"),
        (StreamMode::Pipelined(DEPTH), "pipelined"),
    ];
    let mut pools = Vec::with_capacity(sides.len());
    for &side in sides {
        pools.push(b.pool().class(side * side * 2).slots(SLOTS).build()?);
    }
    b.step("P5 pixgate frames, every size and mode in turn");
    let mut samples = vec![[Vec::new(), Vec::new()]; sides.len()];
    // Small ints on another channel of the same worker take their turn too: the round
    // trip the lock-step frame compares with.
    let echo = gw.remote_exec("for x in channel:\n    channel.send(x)")?;
    let mut small = Vec::new();
    // Batch 0 warms up: the worker maps each slot the first time it sees it.
    for batch in 0..=batches {
        let t = Instant::now();
        for i in 0..per_batch as i64 {
            echo.send(i)?;
            let back = echo.receive_timeout(TIMEOUT)?;
            if back.as_i64() != Some(i) {
                return Err(BenchError::Answer(format!("sent {i}, got {back}")));
            }
        }
        if batch > 0 {
            small.push(t.elapsed().as_secs_f64() / per_batch as f64);
        }
        for (s, (&side, pool)) in sides.iter().zip(&pools).enumerate() {
            for (k, &(mode, _)) in modes.iter().enumerate() {
                let mut stream = FrameStream::new(&ch, pool, mode).timeout(TIMEOUT);
                let count = if batch == 0 {
                    per_batch.max(2 * SLOTS)
                } else {
                    per_batch
                };
                let t = Instant::now();
                for _ in 0..count {
                    let frame = stream.frame::<u16>(&[side, side])?;
                    stream.send(frame)?;
                }
                stream.finish()?;
                if batch > 0 {
                    samples[s][k].push(t.elapsed().as_secs_f64() / count as f64);
                }
            }
        }
    }
    drop(pools);
    echo.close()?;
    let small = b.report.row(
        Row::new(p, "pixgate small int round trip, in turn", &small)
            .note("another channel of the same worker"),
    );
    for (s, &side) in sides.iter().enumerate() {
        for (k, &(mode, name)) in modes.iter().enumerate() {
            let m = b.report.row(
                Row::new(p, format!("pixgate {name} {side}²"), &samples[s][k])
                    .note(fps_note(&samples[s][k], mode))
                    .plot(Plot::Throughput {
                        series: format!("pixgate {name}"),
                        pixels: (side * side) as u64,
                    }),
            );
            if side == sides[sides.len() - 1] {
                match mode {
                    StreamMode::LockStep => largest.0 = m,
                    StreamMode::Pipelined(_) => largest.1 = m,
                }
            }
        }
    }
    ch.close()?;
    gw.exit(Duration::from_secs(20))?;

    'peer: for &side in sides {
        for (depth, name) in [(1, "lock-step"), (DEPTH, "pipelined")] {
            b.step(format!("P5 multiprocessing {name} {side}²"));
            let out = peers::run(
                &b.opts.python,
                peers::MULTIPROCESSING,
                &[
                    "frames".into(),
                    side.to_string(),
                    per_batch.to_string(),
                    batches.to_string(),
                    depth.to_string(),
                ],
                b.peer_deadline(),
            );
            match out.and_then(|o| peers::floats(&o)) {
                Ok(v) => {
                    b.report.row(
                        Row::new(p, format!("multiprocessing {name} {side}²"), &v)
                            .note(fps_note(
                                &v,
                                if depth == 1 {
                                    StreamMode::LockStep
                                } else {
                                    StreamMode::Pipelined(depth)
                                },
                            ))
                            .plot(Plot::Throughput {
                                series: format!("multiprocessing shm + Pipe {name}"),
                                pixels: (side * side) as u64,
                            }),
                    );
                }
                Err(e) => {
                    b.report
                        .note(format!("P5 multiprocessing peer not run: {e}"));
                    break 'peer;
                }
            }
        }
    }

    let side = sides[sides.len() - 1];
    let (lock, piped) = largest;
    b.report.ratio(
        p,
        format!("pipelined ÷ lock-step fps, {side}²"),
        lock.zip(piped).map(|(l, p)| l / p),
        "×",
        Target::AtLeast(2.0),
    );
    b.report.ratio(
        p,
        format!("lock-step fps × small-int round trip (s), {side}²"),
        lock.zip(small).map(|(l, r)| r / l),
        "×",
        Target::AtLeast(0.8),
    );
    Ok(())
}

/// `1234 fps` from per-frame seconds (median), with the mode's depth.
fn fps_note(samples: &[f64], mode: StreamMode) -> String {
    let fps = super::stats::median(samples)
        .map_or_else(|| "-".to_string(), |m| format!("{:.0} fps", 1.0 / m));
    match mode {
        StreamMode::LockStep => format!("{fps}; seconds per frame"),
        StreamMode::Pipelined(d) => format!("{fps}; depth {d}, pool of {SLOTS}"),
    }
}
