//! Worker output is forwarded in bounded lines: text without a newline is cut into
//! pieces of at most `MAX_OUTPUT_LINE` bytes, so the host's memory does not grow with it.
//!
//! The tests of this file take one lock: the first measures the memory of the whole
//! test process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{T, spec};
use pixgate::{Gateway, MAX_OUTPUT_LINE, OutputLine, OutputMode, Stream};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's resident set size in bytes (`VmRSS` of /proc/self/status).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// What every piece of the flood holds.
static XS: [u8; MAX_OUTPUT_LINE] = [b'x'; MAX_OUTPUT_LINE];

/// Remote code writing `MIB` MiB of `x` to fd 1 without a newline, then answering.
const FLOOD: &str = r#"
import os
block = memoryview(b"x" * (1 << 20))
for _ in range(MIB):
    done = 0
    while done < len(block):
        done += os.write(1, block[done:])
channel.send(MIB)
"#;

#[test]
fn unterminated_output_on_a_descriptor_is_cut_into_bounded_lines() {
    let _l = lock();
    const MIB: usize = 256;
    let bytes = Arc::new(AtomicUsize::new(0));
    let pieces = Arc::new(AtomicUsize::new(0));
    let longest = Arc::new(AtomicUsize::new(0));
    let (b, p, l) = (bytes.clone(), pieces.clone(), longest.clone());
    let gw = Gateway::builder(&spec(""))
        .output(OutputMode::Callback(Arc::new(move |line: &OutputLine| {
            if line.stream == Stream::Stdout && line.channel.is_none() {
                assert!(
                    line.text.as_bytes() == &XS[..line.text.len().min(XS.len())],
                    "only x was written"
                );
                b.fetch_add(line.text.len(), Ordering::Relaxed);
                p.fetch_add(1, Ordering::Relaxed);
                l.fetch_max(line.text.len(), Ordering::Relaxed);
            }
        })))
        .handshake_timeout(T)
        .spawn()
        .unwrap();
    let before = rss();
    let mut peak = before;
    let ch = gw
        .remote_exec(&FLOOD.replace("MIB", &MIB.to_string()))
        .unwrap();
    let start = Instant::now();
    let want = MIB << 20;
    // Whole pieces only: the last piece of up to MAX_OUTPUT_LINE bytes waits for the
    // byte after it (a newline would end the line there).
    while bytes.load(Ordering::Relaxed) + MAX_OUTPUT_LINE < want {
        peak = peak.max(rss());
        assert!(
            peak - before < 64 << 20,
            "host RSS grew by {} MiB while the worker wrote {} MiB without a newline",
            (peak - before) >> 20,
            bytes.load(Ordering::Relaxed) >> 20
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} of {want} bytes arrived",
            bytes.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(MIB as i64));
    // The rest arrives when the stream ends.
    gw.exit(T).unwrap();
    let took = start.elapsed();
    assert_eq!(bytes.load(Ordering::Relaxed), want);
    assert_eq!(longest.load(Ordering::Relaxed), MAX_OUTPUT_LINE);
    assert_eq!(
        pieces.load(Ordering::Relaxed),
        want.div_ceil(MAX_OUTPUT_LINE)
    );
    eprintln!(
        "{MIB} MiB without a newline: {} pieces in {took:?}, host RSS {} MiB before, peak {} MiB (+{} KiB)",
        pieces.load(Ordering::Relaxed),
        before >> 20,
        peak >> 20,
        (peak - before) >> 10
    );
}

/// Collects the output lines of one stream.
fn collector(stream: Stream) -> (OutputMode, Arc<Mutex<Vec<OutputLine>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let mode = OutputMode::Callback(Arc::new(move |line: &OutputLine| {
        if line.stream == stream {
            l.lock().unwrap().push(line.clone());
        }
    }));
    (mode, lines)
}

#[test]
fn long_lines_are_cut_at_character_boundaries_on_both_paths() {
    let _l = lock();
    // 100,000 euro signs (3 bytes each) then a newline, on fd 2 and through print.
    let (mode, lines) = collector(Stream::Stderr);
    let gw = Gateway::builder(&spec(""))
        .output(mode)
        .handshake_timeout(T)
        .spawn()
        .unwrap();
    let ch = gw
        .remote_exec(
            "import os, sys\ntext = '\\u20ac' * 100000\nos.write(2, (text + '\\n').encode())\nprint(text, file=sys.stderr)\nchannel.send(1)",
        )
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(1));
    let want = "\u{20ac}".repeat(100_000);
    let whole = |channel: Option<i32>| -> Option<(String, Vec<usize>)> {
        let lines = lines.lock().unwrap();
        let of: Vec<&OutputLine> = lines.iter().filter(|l| l.channel == channel).collect();
        let text: String = of.iter().map(|l| l.text.as_str()).collect();
        (text.len() >= want.len()).then(|| (text, of.iter().map(|l| l.text.len()).collect()))
    };
    for channel in [None, Some(ch.id())] {
        common::wait_until(|| whole(channel).is_some(), "the long line arrived");
        let (text, lens) = whole(channel).unwrap();
        assert_eq!(text, want, "the pieces add up to the line ({channel:?})");
        assert!(
            lens.iter().all(|&n| n <= MAX_OUTPUT_LINE),
            "{channel:?}: {lens:?}"
        );
        // 300,000 bytes in pieces of 65,535 (a multiple of 3 below the cap) and the rest.
        assert_eq!(
            lens.len(),
            300_000usize.div_ceil(MAX_OUTPUT_LINE - 1),
            "{lens:?}"
        );
    }
    gw.exit(T).unwrap();
}
