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
    let batches = b.pick(3, 15);

    let gw = b.gateway("bench-p5")?;
    let ch = gw.remote_exec("import pixgate\nfor frame in pixgate.frames(channel):\n    pass")?;
    let mut largest = (None, None);
    for &side in sides {
        let pool = b
            .pool()
            .class(side * side * 2)
            .slots(SLOTS)
            .build()?;
        for (mode, name) in [
            (StreamMode::LockStep, "lock-step"),
            (StreamMode::Pipelined(DEPTH), "pipelined"),
        ] {
            b.step(format!("P5 pixgate {name} {side}²"));
            let mut stream = FrameStream::new(&ch, &pool, mode).timeout(TIMEOUT);
            let mut samples = Vec::with_capacity(batches);
            // Batch 0 warms up: the worker maps each slot the first time it sees it.
            for batch in 0..=batches {
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
                    samples.push(t.elapsed().as_secs_f64() / count as f64);
                }
            }
            let m = b.report.row(
                Row::new(p, format!("pixgate {name} {side}²"), &samples)
                    .note(fps_note(&samples, mode))
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
        format!("lock-step fps × P1 round trip (s), {side}²"),
        lock.zip(b.p1_pixgate).map(|(l, r)| r / l),
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
