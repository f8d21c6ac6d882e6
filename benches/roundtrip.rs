//! Small-value round trip host ↔ helper, next to its floor and its peer, in one run:
//!
//! - `raw_pipe_echo`: Rust writes 8 bytes into a pipe, a Python `os.read`/`os.write`
//!   loop echoes them on another pipe (the floor for any pipe protocol with a Python peer);
//! - `pixgate_channel`: `channel.send(i)` and `channel.receive()` against an echoing
//!   remote_exec; `pixgate_channel_spin50us` the same with both sides polling the pipe
//!   for up to 50 µs before they sleep (`GatewayBuilder::spin`);
//! - `execnet_channel`: the same exchange with execnet (`benches/peer_execnet.py`), when
//!   the interpreter has execnet.
//!
//! The interpreter is `$PIXGATE_PYTHON`, else `.venv/bin/python`, else `python3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pixgate::Gateway;

#[path = "../tests/common/mod.rs"]
mod common;
use common::python;

const ECHO: &str = "import os\nwhile True:\n    b = os.read(0, 64)\n    if not b:\n        break\n    os.write(1, b)\n";

fn roundtrip(c: &mut Criterion) {
    let py = python();
    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(5));

    let mut child = Command::new(&py)
        .args(["-u", "-c", ECHO])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo interpreter");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 8];
    g.bench_function("raw_pipe_echo", |b| {
        b.iter(|| {
            to.write_all(b"01234567").expect("write");
            from.read_exact(&mut buf).expect("read");
        })
    });
    drop(to);
    let _ = child.wait();

    for (label, spin) in [
        ("pixgate_channel", Duration::ZERO),
        ("pixgate_channel_spin50us", Duration::from_micros(50)),
    ] {
        let gw = Gateway::builder(&format!("popen//python={py}//id=bench"))
            .spin(spin)
            .spawn()
            .expect("gateway");
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(x)")
            .expect("remote_exec");
        let mut i = 0i64;
        g.bench_function(label, |b| {
            b.iter(|| {
                i += 1;
                ch.send(i).expect("send");
                ch.receive_timeout(Duration::from_secs(10))
                    .expect("receive")
            })
        });
        ch.close().expect("close");
        gw.exit(Duration::from_secs(5)).expect("exit");
    }

    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer_execnet.py");
    let has_execnet = Command::new(&py)
        .args(["-c", "import execnet"])
        .status()
        .is_ok_and(|s| s.success());
    if has_execnet {
        g.bench_function("execnet_channel", |b| {
            b.iter_custom(|iters| {
                let out = Command::new(&py)
                    .arg(peer)
                    .arg(iters.to_string())
                    .output()
                    .expect("run the execnet peer");
                let text = String::from_utf8_lossy(&out.stdout);
                let secs: f64 = text.trim().parse().unwrap_or_else(|_| {
                    panic!(
                        "execnet peer printed {text:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
                Duration::from_secs_f64(secs)
            })
        });
    } else {
        eprintln!("execnet_channel skipped: {py} cannot import execnet");
    }
    g.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
