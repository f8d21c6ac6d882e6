//! A host for the chaos test (`tests/chaos.rs`): starts one gateway, prints the worker's
//! pid on stdout, then keeps arrays and a frame stream in flight until it is killed or
//! its worker dies.
//!
//! Each round: lends a fresh array to a remote doubling loop and checks what comes back,
//! shares another with a remote summing loop, has Python create an array
//! (`pixgate.zeros`) and move it here, and sends frames from a pool on a pipelined
//! [`FrameStream`]. Every wait has a time limit. Any error (the worker died, a check
//! failed) is printed on stderr and ends the process with status 1; what it holds is
//! dropped on the way out, so its own segments are unlinked.
//!
//! ```sh
//! cargo run --example chaos_host -- "popen//python=.venv/bin/python"
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use pixgate::{FrameStream, Gateway, OutputMode, Pool, SharedArray, StreamMode, Value};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

const DOUBLER: &str = "
for arr in channel:
    arr *= 2
    channel.send(arr)
    del arr
";

const SUMMER: &str = "
for arr in channel:
    channel.send(int(arr.sum()))
    del arr
";

const MAKER: &str = "
import pixgate
for n in channel:
    a = pixgate.zeros((n,), 'uint16')
    a[...] = 3
    channel.send(a)
    del a
";

const CONSUMER: &str = "
import pixgate
total = 0
for frame in pixgate.frames(channel):
    total += int(frame[0])
channel.send(total)
";

fn main() -> ExitCode {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "popen".to_string());
    match run(&spec) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos_host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn run(spec: &str) -> Result<(), String> {
    let err = |e: pixgate::Error| e.to_string();
    let gw = Gateway::builder(spec)
        .output(OutputMode::Discard)
        .handshake_timeout(WAIT)
        .spawn()
        .map_err(err)?;
    let doubler = gw.remote_exec(DOUBLER).map_err(err)?;
    let summer = gw.remote_exec(SUMMER).map_err(err)?;
    let maker = gw.remote_exec(MAKER).map_err(err)?;
    let consumer = gw.remote_exec(CONSUMER).map_err(err)?;
    let pool = Pool::builder()
        .class(64 * 1024)
        .slots(5)
        .build()
        .map_err(err)?;
    let mut stream = FrameStream::new(&consumer, &pool, StreamMode::Pipelined(4)).timeout(WAIT);

    let mut out = std::io::stdout();
    writeln!(out, "{}", gw.pid()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;

    for round in 0u64.. {
        let n = 1024 + (round as usize % 7) * 4096;

        // Lent, doubled in place, given back.
        let mut a = SharedArray::<u32>::zeros(&[n]).map_err(err)?;
        a.view_mut().map_err(err)?.fill(round as u32);
        doubler.send_value(&a.lend().map_err(err)?).map_err(err)?;
        let back = doubler.receive_timeout(WAIT).map_err(err)?;
        check(matches!(back, Value::Array(_)), || {
            format!("doubler sent {back:?}")
        })?;
        drop(back);
        let want = (round as u32).wrapping_mul(2);
        check(a.view().map_err(err)?.iter().all(|&v| v == want), || {
            format!("round {round}: lent array not doubled")
        })?;

        // Shared read-only; Rust reads it meanwhile.
        let s = SharedArray::<u8>::zeros(&[n]).map_err(err)?;
        summer.send_value(&s.share().map_err(err)?).map_err(err)?;
        let sum = summer.receive_timeout(WAIT).map_err(err)?;
        check(sum.as_i64() == Some(0), || format!("summer sent {sum:?}"))?;
        drop((a, s));

        // Made in Python, moved here.
        maker.send(n as i64).map_err(err)?;
        let made = maker.receive_timeout(WAIT).map_err(err)?;
        let made = SharedArray::<u16>::from_value(made).map_err(err)?;
        check(
            made.shape() == [n] && made.view().map_err(err)?.iter().all(|&v| v == 3),
            || format!("round {round}: moved array wrong"),
        )?;
        drop(made);

        // A few frames, up to four in flight.
        for k in 0..3u32 {
            let mut f = stream.frame::<u32>(&[4096]).map_err(err)?;
            f.view_mut().map_err(err)?.fill(k);
            stream.send(f).map_err(err)?;
        }
    }
    Ok(())
}
