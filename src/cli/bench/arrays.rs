//! P2 (handoff of a resident array), P3 (an array doubled in place by the worker) and
//! P4 (filling an array from Rust).

use std::time::{Duration, Instant};

use memmap2::MmapMut;
use pixgate::{Element, SharedArray, Value};

use super::report::{Plot, Row, Target};
use super::stats::median;
use super::{Bench, BenchError, GIB, MIB, Scenario, TIMEOUT, label, peers};

/// P2's sizes before capping.
const HANDOFF_SIZES: [u64; 4] = [MIB, 64 * MIB, GIB, 8 * GIB];

/// Writes `byte` into every byte of `dst` with `memcpy`s of 1 MiB (fast in any build).
fn fill_bytes(dst: &mut [u8], byte: u8) {
    let src = vec![byte; MIB as usize];
    for chunk in dst.chunks_mut(src.len()) {
        chunk.copy_from_slice(&src[..chunk.len()]);
    }
}

/// The bytes of a view over a fresh (so C-contiguous) array that only Rust holds.
fn bytes_of<'v, T: Element + bytemuck::Pod>(
    view: &'v mut ndarray::ArrayViewMutD<'_, T>,
) -> Result<&'v mut [u8], BenchError> {
    let s = view
        .as_slice_mut()
        .ok_or_else(|| BenchError::Setup("a new array is not C-contiguous".into()))?;
    Ok(bytemuck::cast_slice_mut(s))
}

/// P2: a resident `SharedArray<u8>` lent to an echo and received back, at each size;
/// the multiprocessing peer at the same sizes; largest ÷ 1 MiB and 1 MiB − P1.
pub(crate) fn handoff(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P2;
    let sizes: Vec<u64> = if b.opts.quick {
        vec![MIB, 16 * MIB]
    } else {
        HANDOFF_SIZES.to_vec()
    };
    // All of them exist at once (they take turns), so together they must fit.
    let room = super::room();
    let mut total = 0;
    let (sizes, skipped): (Vec<u64>, Vec<u64>) = sizes.into_iter().partition(|&s| {
        total += s;
        s <= b.max_bytes && total <= room
    });
    if !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().map(|&s| label(s)).collect();
        b.report.note(format!(
            "P2 sizes skipped (over {}): {}",
            label(b.max_bytes),
            list.join(", ")
        ));
    }
    let iters = |bytes: u64| match (b.opts.quick, bytes) {
        (true, _) => 50,
        (false, s) if s <= 64 * MIB => 2000,
        (false, s) if s <= GIB => 500,
        _ => 200,
    };

    let gw = b.gateway("bench-p2")?;
    let ch = gw.remote_exec("for msg in channel:\n    channel.send(msg)")?;
    // Every size in each round, so that a change of the machine's regime (vCPUs that
    // halt or not, which moves every wake-up by tens of µs) falls on all sizes alike.
    let mut arrays = Vec::with_capacity(sizes.len());
    for &bytes in &sizes {
        b.step(format!("P2 pixgate handoff {}: writing it", label(bytes)));
        let mut a = SharedArray::<u8>::zeros(&[bytes as usize])?;
        fill_bytes(bytes_of(&mut a.view_mut()?)?, 1);
        arrays.push(a);
    }
    b.step("P2 pixgate handoffs, all sizes in turn");
    let rounds = b.pick(50, 1000);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); sizes.len()];
    // A small int takes its turn too: the round trip the handoffs compare with.
    let mut small = Vec::with_capacity(rounds);
    for round in 0..rounds + 3 {
        let t = Instant::now();
        ch.send(round as i64)?;
        let back = ch.receive_timeout(TIMEOUT)?;
        if round >= 3 {
            small.push(t.elapsed().as_secs_f64());
        }
        if back.as_i64() != Some(round as i64) {
            return Err(BenchError::Answer(format!("sent {round}, got {back}")));
        }
        for (a, rec) in arrays.iter_mut().zip(&mut samples) {
            let t = Instant::now();
            ch.send(a.lend()?)?;
            let back = ch.receive_timeout(TIMEOUT)?;
            let dt = t.elapsed().as_secs_f64();
            if !matches!(back, Value::Array(_)) || a.is_lent() {
                return Err(BenchError::Answer(format!(
                    "expected the array back, got {back}"
                )));
            }
            if round >= 3 {
                rec.push(dt);
            }
        }
    }
    drop(arrays);
    let small = b
        .report
        .row(Row::new(p, "pixgate small int, same channel", &small).note("all sizes in turn"));
    let mut medians = Vec::new();
    for (&bytes, samples) in sizes.iter().zip(&samples) {
        let m = b.report.row(
            Row::new(
                p,
                format!("pixgate lend + receive back, {}", label(bytes)),
                samples,
            )
            .note("all sizes in turn")
            .plot(Plot::Latency {
                series: "pixgate (lend, echo)".into(),
                bytes,
            }),
        );
        medians.push((bytes, m));
    }
    ch.close()?;
    gw.exit(Duration::from_secs(20))?;

    for &bytes in &sizes {
        b.step(format!("P2 multiprocessing peer {}", label(bytes)));
        let out = peers::run(
            &b.opts.python,
            peers::MULTIPROCESSING,
            &[
                "handoff".into(),
                bytes.to_string(),
                iters(bytes).to_string(),
            ],
            b.peer_deadline(),
        );
        match out.and_then(|o| peers::floats(&o)) {
            Ok(v) => {
                // The first exchange attaches the block; leave it out, as above.
                b.report.row(
                    Row::new(
                        p,
                        format!("multiprocessing shm name over Pipe, {}", label(bytes)),
                        v.get(1..).unwrap_or(&v),
                    )
                    .plot(Plot::Latency {
                        series: "multiprocessing shm + Pipe".into(),
                        bytes,
                    }),
                );
            }
            Err(e) => {
                b.report
                    .note(format!("P2 multiprocessing peer not run: {e}"));
                break;
            }
        }
    }

    let first = medians
        .first()
        .and_then(|&(s, m)| (s == MIB).then_some(m).flatten());
    let last = medians.last().filter(|l| l.0 > MIB);
    b.report.ratio(
        p,
        format!(
            "{} ÷ 1 MiB handoff",
            last.map_or_else(|| "largest".to_string(), |l| label(l.0))
        ),
        last.and_then(|l| l.1).zip(first).map(|(l, f)| l / f),
        "×",
        Target::AtMost(1.1),
    );
    b.report.ratio(
        p,
        "1 MiB handoff − small int round trip, in turn",
        first.zip(small).map(|(f, s)| (f - s) * 1e6),
        "µs",
        Target::AtMost(30.0),
    );
    Ok(())
}

/// The worker of P3: doubles each lent array in place, timing numpy, and sends it back.
const DOUBLE: &str = "\
import time
for arr in channel:
    t = time.perf_counter()
    arr *= 2
    dt = time.perf_counter() - t
    channel.send((arr, dt))
    del arr
";

/// P3: a `uint16` array doubled in place by the worker, against the worker's own numpy
/// time, and against execnet sending the bytes.
pub(crate) fn double_in_place(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P3;
    let bytes = b.pick(8 * MIB, 512 * MIB).min(b.max_bytes) / (2 * MIB) * (2 * MIB);
    if bytes == 0 {
        b.report.note(format!(
            "P3 skipped: its array needs at least 2 MiB, and arrays are capped at {}",
            label(b.max_bytes)
        ));
        return Ok(());
    }
    let n = b.pick(5, 20);
    b.step(format!("P3 pixgate {}", label(bytes)));
    let gw = b.gateway("bench-p3")?;
    let ch = gw.remote_exec(DOUBLE)?;
    let mut a = SharedArray::<u16>::zeros(&[(bytes / 2048) as usize, 1024])?;
    fill_bytes(bytes_of(&mut a.view_mut()?)?, 3);
    let (mut exchange, mut numpy) = (Vec::new(), Vec::new());
    for i in 0..=n {
        let t = Instant::now();
        ch.send(a.lend()?)?;
        let back = ch.receive_timeout(TIMEOUT)?;
        let dt = t.elapsed().as_secs_f64();
        let worker = match back.as_seq() {
            Some([Value::Array(_), dt]) => dt.as_f64(),
            _ => None,
        }
        .ok_or_else(|| BenchError::Answer(format!("expected (array, seconds), got {back}")))?;
        if i > 0 {
            exchange.push(dt);
            numpy.push(worker);
        }
    }
    drop(a);
    ch.close()?;
    gw.exit(Duration::from_secs(20))?;
    let pixgate = b.report.row(Row::new(
        p,
        format!("pixgate lend, arr *= 2, back, {}", label(bytes)),
        &exchange,
    ));
    let worker = b.report.row(
        Row::new(
            p,
            format!("worker's numpy arr *= 2, {}", label(bytes)),
            &numpy,
        )
        .note("timed in the worker, inside each exchange"),
    );

    let mut execnet = None;
    if b.has_execnet() {
        let k = b.pick(2, 3);
        b.step(format!("P3 execnet peer {} ({k} exchanges)", label(bytes)));
        let out = peers::run(
            &b.opts.python,
            peers::EXECNET_ARRAYS,
            &[(bytes / MIB).to_string(), k.to_string()],
            b.peer_deadline(),
        )?;
        execnet = b.report.row(
            Row::new(
                p,
                format!("execnet bytes there and back, {}", label(bytes)),
                &peers::json_line::<peers::Exchanges>(&out)?.times,
            )
            .note("benches/peer_execnet_arrays.py"),
        );
    }
    b.report.ratio(
        p,
        "exchange ÷ worker's numpy time",
        pixgate.zip(worker).map(|(a, w)| a / w),
        "×",
        Target::AtMost(1.05),
    );
    b.report.ratio(
        p,
        "execnet ÷ pixgate",
        execnet.zip(pixgate).map(|(e, a)| e / a),
        "×",
        Target::AtLeast(250.0),
    );
    Ok(())
}

/// P4: copying into a warm pool slot against `memcpy` between warm buffers; copying
/// into a fresh `SharedArray` against the first touch of fresh anonymous memory.
pub(crate) fn fill(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P4;
    let bytes = b.pick(32 * MIB, GIB).min(b.max_bytes) as usize;
    let reps = b.pick(3, 5);
    let size = label(bytes as u64);
    let gbps = |m: Option<f64>| {
        m.map_or_else(String::new, |m| {
            format!("{:.1} GB/s", bytes as f64 / m / 1e9)
        })
    };

    b.step(format!("P4 memcpy {size}"));
    let src = vec![7u8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src);
    let memcpy: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            t.elapsed().as_secs_f64()
        })
        .collect();
    drop(dst);
    let memcpy = b.report.row(
        Row::new(p, format!("memcpy between warm buffers, {size}"), &memcpy)
            .note(gbps(median(&memcpy))),
    );

    b.step(format!("P4 fresh pool slot {size}"));
    let mut slot = Vec::with_capacity(reps.min(3));
    for _ in 0..reps.min(3) {
        let t = Instant::now();
        let pool = b.pool().class(bytes).slots(1).build()?;
        let mut a = pool.take::<u8>(&[bytes])?;
        bytes_of(&mut a.view_mut()?)?.copy_from_slice(&src);
        slot.push(t.elapsed().as_secs_f64());
        drop((a, pool));
    }
    let backing = match &b.opts.backing_dir {
        Some(d) => format!("slots in {}", d.display()),
        None => "slots in /dev/shm".to_string(),
    };
    b.report.row(
        Row::new(p, format!("copy into a new pool's slot, {size}"), &slot).note(format!(
            "pool build (create + pre-fault) + take + copy; {backing}"
        )),
    );

    b.step(format!("P4 warm pool slot {size}"));
    let pool = b.pool().class(bytes).slots(1).build()?;
    let mut warm = Vec::with_capacity(reps);
    for i in 0..=reps {
        let t = Instant::now();
        let mut a = pool.take::<u8>(&[bytes])?;
        bytes_of(&mut a.view_mut()?)?.copy_from_slice(&src);
        let dt = t.elapsed().as_secs_f64();
        drop(a);
        if i > 0 {
            warm.push(dt);
        }
    }
    drop(pool);
    let warm = b.report.row(
        Row::new(p, format!("copy into a used pool slot, {size}"), &warm)
            .note(format!("{}; take + copy; {backing}", gbps(median(&warm)))),
    );

    // A fresh SharedArray and fresh anonymous memory take turns.
    let fresh_reps = b.pick(2, 5);
    b.step(format!(
        "P4 fresh SharedArray and anonymous memory {size}, in turn"
    ));
    let mut fresh = Vec::with_capacity(fresh_reps);
    let mut anon = Vec::with_capacity(fresh_reps);
    for _ in 0..fresh_reps {
        let t = Instant::now();
        let mut a = SharedArray::<u8>::zeros(&[bytes])?;
        bytes_of(&mut a.view_mut()?)?.copy_from_slice(&src);
        fresh.push(t.elapsed().as_secs_f64());
        drop(a);
        let t = Instant::now();
        let mut m = MmapMut::map_anon(bytes)
            .map_err(|e| BenchError::Setup(format!("mmap of {size} of anonymous memory: {e}")))?;
        m.copy_from_slice(&src);
        anon.push(t.elapsed().as_secs_f64());
        drop(m);
    }
    let fresh = b.report.row(
        Row::new(p, format!("copy into a fresh SharedArray, {size}"), &fresh)
            .note("zeros + copy; unlink not timed"),
    );
    let anon = b.report.row(
        Row::new(
            p,
            format!("first touch of fresh anonymous memory, {size}"),
            &anon,
        )
        .note("mmap MAP_ANONYMOUS + copy; the floor"),
    );
    drop(src);

    b.report.ratio(
        p,
        "warm slot bandwidth ÷ memcpy bandwidth",
        memcpy.zip(warm).map(|(c, w)| c / w),
        "×",
        Target::AtLeast(0.8),
    );
    b.report.ratio(
        p,
        "fresh SharedArray ÷ fresh anonymous memory",
        fresh.zip(anon).map(|(f, a)| f / a),
        "×",
        Target::AtMost(1.1),
    );
    Ok(())
}
