//! `pixgate demo`: the main job on a generated stack, timed against the copying way.
//!
//! A 5-D T,Z,C,Y,X `uint16` stack is made in Rust and shared read-only with Python,
//! which computes a maximum projection along Z and the mean of every plane into arrays
//! it creates, and moves them back. Then the same exchange is done by copying the bytes
//! through the pipe, as execnet would.

use std::time::{Duration, Instant};

use pixgate::{Gateway, Meta, SharedArray, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Python's side: one request per stack, answered with the two result arrays and the
/// time numpy itself took (`python-helper/remote/demo.py`, after a newline as it always
/// was sent).
const WORKER: &str = concat!("\n", include_str!("../../python-helper/remote/demo.py"));

pub(crate) struct Options {
    pub spec: String,
    pub size_mib: usize,
    pub compare_copy: bool,
    /// Small-value round trips to time at the end.
    pub round_trips: usize,
}

/// The results as they arrived: arrays that moved, or decoded copies.
enum Results {
    Shared(SharedArray<u16>),
    SharedF(SharedArray<f64>),
    Copied(Vec<u16>),
    CopiedF(Vec<f64>),
}

struct Run {
    handoff: Duration,
    numpy: Duration,
    back: Duration,
    total: Duration,
}

/// Runs the demo, with a progress bar over its steps on a terminal: starting the
/// worker, making the stack, each exchange, the round trips.
pub(crate) fn run(o: &Options) -> pixgate::Result<()> {
    // T, Z, C, Y, X with 2 channels of 1024×1024 planes; T grows to reach the size.
    let (z, c, y, x) = (16usize, 2usize, 1024usize, 1024usize);
    let plane_bytes = y * x * 2;
    let t = (o.size_mib << 20).div_ceil(z * c * plane_bytes).max(1);
    let shape = [t, z, c, y, x];
    let bytes = shape.iter().product::<usize>() * 2;

    let progress = crate::progress::bar(4 + u64::from(o.compare_copy));
    let say = |text: String| progress.suspend(|| println!("{text}"));

    progress.set_message("starting the worker");
    let t0 = Instant::now();
    let gw = Gateway::builder(&o.spec)
        .max_frame_len(i32::MAX as u32)
        .output(crate::progress::worker_output(&progress))
        .spawn()?;
    let started = t0.elapsed();
    say(format!(
        "gateway {}: Python {}, numpy {}, started in {}",
        gw.id(),
        gw.info().python_version,
        gw.info().numpy_version.as_deref().unwrap_or("absent"),
        fmt(started)
    ));
    if gw.info().numpy_version.is_none() {
        return Err(pixgate::Error::new(pixgate::ErrorKind::Convert(format!(
            "the demo needs numpy in the worker's interpreter: {} -m pip install numpy \
                 (or choose another with --python)",
            gw.info().executable
        ))));
    }
    progress.inc(1);

    say(format!(
        "making a {}×{}×{}×{}×{} (t z c y x) uint16 stack: {}",
        t,
        z,
        c,
        y,
        x,
        human(bytes)
    ));
    progress.set_message(format!("making the {} stack", human(bytes)));
    let t1 = Instant::now();
    let mut stack = SharedArray::<u16>::zeros(&shape)?;
    let allocated = t1.elapsed();
    stack.set_meta(Meta {
        dims: Some(["t", "z", "c", "y", "x"].map(String::from).to_vec()),
        scale: Some(vec![1.0, 0.5, 1.0, 0.1, 0.1]),
        units: Some(["s", "um", "", "um", "um"].map(String::from).to_vec()),
        channel_names: Some(vec!["gfp".into(), "rfp".into()]),
        name: Some("demo stack".into()),
        attrs: vec![],
    })?;
    let t2 = Instant::now();
    fill(&mut stack)?;
    let filled = t2.elapsed();
    progress.inc(1);

    let ch = gw.remote_exec(WORKER)?;
    progress.set_message("sharing the stack with the worker");
    let shared = exchange(&ch, &mut stack, false)?;
    progress.inc(1);
    let copied = if o.compare_copy {
        progress.set_message("copying the stack through the pipe");
        let copied = exchange(&ch, &mut stack, true)?;
        progress.inc(1);
        Some(copied)
    } else {
        None
    };
    ch.close()?;
    ch.wait_close(Some(TIMEOUT))?;
    gw.exit(Duration::from_secs(10))?;

    let mut table = format!(
        "\n{:<38} {:>16} {:>16}\n",
        "step", "shared memory", "copying bytes"
    );
    let mut row = |name: &str, a: Duration, b: Option<Duration>| {
        let b = b.map(fmt).unwrap_or_else(|| "-".into());
        table.push_str(&format!("{name:<38} {:>16} {b:>16}\n", fmt(a)));
    };
    row("allocate the stack (reserve pages)", allocated, None);
    row("fill it (first touch of every page)", filled, None);
    row(
        "move data (stack there, results back)",
        shared.handoff,
        copied.as_ref().map(|r| r.handoff),
    );
    row(
        "numpy: max along z, mean per plane",
        shared.numpy,
        copied.as_ref().map(|r| r.numpy),
    );
    row(
        "results into Rust arrays",
        shared.back,
        copied.as_ref().map(|r| r.back),
    );
    row(
        "exchange in all",
        shared.total,
        copied.as_ref().map(|r| r.total),
    );
    if let Some(c) = &copied {
        table.push_str(&format!(
            "\nsharing instead of copying: the exchange is {:.1}× faster; moving the data for {} takes {} instead of {}\n",
            c.total.as_secs_f64() / shared.total.as_secs_f64(),
            human(bytes),
            fmt(shared.handoff),
            fmt(c.handoff)
        ));
    }
    progress.suspend(|| print!("{table}"));

    progress.set_message(format!("{} small-value round trips", o.round_trips.max(1)));
    let trips = round_trips(&o.spec, o.round_trips, &progress)?;
    progress.finish_and_clear();
    print!("{trips}");
    Ok(())
}

/// Times small-value round trips on a fresh gateway; the lines reporting them.
fn round_trips(
    spec: &str,
    round_trips: usize,
    progress: &indicatif::ProgressBar,
) -> pixgate::Result<String> {
    let timeout = Duration::from_secs(30);
    let gw = Gateway::builder(spec)
        .output(crate::progress::worker_output(progress))
        .spawn()?;
    let echo = gw.remote_exec("for x in channel:\n    channel.send(x)")?;
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips.max(1) {
        let t = Instant::now();
        echo.send(i as i64)?;
        echo.receive_timeout(timeout)?;
        samples.push(t.elapsed());
    }
    echo.close()?;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let status = gw.exit(Duration::from_secs(5))?;
    progress.inc(1);
    Ok(format!(
        "\nsmall-value round trip, median of {}: {} (p10 {}, p90 {})\nworker ended with {}\n",
        samples.len(),
        fmt(pct(0.5)),
        fmt(pct(0.1)),
        fmt(pct(0.9)),
        status.status_text()
    ))
}

/// A deterministic pattern whose maxima are easy to check: value = (t·Z + z)·3 + c + y + x
/// (mod 2¹⁶), written row by row.
fn fill(stack: &mut SharedArray<u16>) -> pixgate::Result<()> {
    let shape = stack.shape().to_vec();
    let (zs, cs, ys) = (shape[1], shape[2], shape[3]);
    let mut v = stack.view_mut()?;
    let flat = v.as_slice_mut().expect("a new stack is C-contiguous");
    for (i, row) in flat.chunks_exact_mut(shape[4]).enumerate() {
        let yy = i % ys;
        let c = (i / ys) % cs;
        let z = (i / ys / cs) % zs;
        let t = i / ys / cs / zs;
        let base = (t * 16 + z) * 3 + c + yy;
        for (xx, p) in row.iter_mut().enumerate() {
            *p = ((base + xx) & 0xffff) as u16;
        }
    }
    Ok(())
}

fn exchange(
    ch: &pixgate::Channel,
    stack: &mut SharedArray<u16>,
    copy: bool,
) -> pixgate::Result<Run> {
    let shape = stack.shape().to_vec();
    let t0 = Instant::now();
    if copy {
        let view = stack.view()?;
        let raw: Vec<u8> =
            bytemuck::cast_slice(view.as_slice().expect("a new stack is C-contiguous")).to_vec();
        ch.send(Value::Tuple(vec![Value::from("bytes"), Value::bytes(raw)]))?;
        ch.send(Value::Tuple(
            shape.iter().map(|&n| Value::from(n)).collect(),
        ))?;
    } else {
        ch.send(Value::Tuple(vec![Value::from("shared"), stack.share()?]))?;
    }
    let reply = ch.receive_timeout(TIMEOUT)?;
    let total = t0.elapsed();
    let t = reply.as_seq().map(<[Value]>::to_vec).unwrap_or_default();
    if t.len() != 4 {
        return Err(pixgate::Error::new(pixgate::ErrorKind::Convert(format!(
            "unexpected reply {reply}"
        ))));
    }
    let numpy = Duration::from_secs_f64(t[2].as_f64().unwrap_or(0.0));
    let python_total = Duration::from_secs_f64(t[3].as_f64().unwrap_or(0.0));
    let t1 = Instant::now();
    let (mip, means) = if copy {
        let mip: Vec<u16> = t[0]
            .as_bytes()
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let means: Vec<f64> = t[1]
            .as_bytes()
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        (Results::Copied(mip), Results::CopiedF(means))
    } else {
        (
            Results::Shared(SharedArray::<u16>::from_value(t[0].clone())?),
            Results::SharedF(SharedArray::<f64>::from_value(t[1].clone())?),
        )
    };
    let back = t1.elapsed();
    let mip_max = match &mip {
        Results::Copied(v) => v.iter().copied().max().unwrap_or(0),
        Results::Shared(a) => a.view()?.iter().copied().max().unwrap_or(0),
        _ => 0,
    };
    let mean00 = match &means {
        Results::CopiedF(v) => v.first().copied().unwrap_or(0.0),
        Results::SharedF(a) => a.view()?.iter().next().copied().unwrap_or(0.0),
        _ => 0.0,
    };
    // Check the answers against the pattern.
    let v = stack.view()?;
    let want_max = *v.iter().max().unwrap_or(&0);
    let plane = v.slice(ndarray::s![0, 0, 0, .., ..]);
    let want_mean00 = plane.iter().map(|&p| f64::from(p)).sum::<f64>() / plane.len() as f64;
    if mip_max != want_max || (mean00 - want_mean00).abs() > 1e-6 {
        return Err(pixgate::Error::new(pixgate::ErrorKind::Convert(format!(
            "wrong results: max {mip_max} (expected {want_max}), mean {mean00} (expected {want_mean00})"
        ))));
    }
    Ok(Run {
        handoff: total.saturating_sub(python_total),
        numpy,
        back,
        total: total + back,
    })
}

/// A duration in µs, ms or s, whichever reads best.
fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn human(bytes: usize) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
