//! Python processes the scenarios compare with: the scripts under `benches/`, built into
//! the binary and run with `python -c`, each under a deadline.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::BenchError;

/// execnet's small-value round trip and start-up (`benches/peer_execnet.py`).
pub(crate) const EXECNET: &str = include_str!("../../../benches/peer_execnet.py");
/// execnet sending an array's bytes to be doubled (`benches/peer_execnet_arrays.py`).
pub(crate) const EXECNET_ARRAYS: &str = include_str!("../../../benches/peer_execnet_arrays.py");
/// multiprocessing shared memory and a Pipe (`benches/peer_multiprocessing.py`).
pub(crate) const MULTIPROCESSING: &str = include_str!("../../../benches/peer_multiprocessing.py");

/// Whether `python` can import `module`.
pub(crate) fn importable(python: &str, module: &str) -> bool {
    run(
        python,
        &format!("import {module}"),
        &[],
        Duration::from_secs(30),
    )
    .is_ok()
}

/// Runs `python -c source args…`; its standard output, once it exits successfully within
/// `deadline` (killed otherwise).
pub(crate) fn run(
    python: &str,
    source: &str,
    args: &[String],
    deadline: Duration,
) -> Result<String, BenchError> {
    let what = source
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim_matches('"')
        .chars()
        .take(60)
        .collect::<String>();
    let fail = |reason: String| BenchError::Peer {
        what: format!("{python} -c {what:?} {}", args.join(" ")),
        reason,
    };
    let mut child = Command::new(python)
        .arg("-c")
        .arg(source)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait(&mut child, deadline);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    };
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(fail(format!("{s}: {}", tail()))),
        None => Err(fail(format!("still running after {deadline:?}; killed"))),
    }
}

/// Seconds printed on one line, separated by spaces.
pub(crate) fn floats(text: &str) -> Result<Vec<f64>, BenchError> {
    let v: Result<Vec<f64>, _> = text.split_whitespace().map(str::parse).collect();
    match v {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(BenchError::Peer {
            what: "peer output".into(),
            reason: format!("expected numbers, got {:?}", truncate(text)),
        }),
    }
}

/// The last non-empty line of a peer's output, read as JSON into `T` (the fields it
/// names; any others are ignored).
pub(crate) fn json_line<T: DeserializeOwned>(text: &str) -> Result<T, BenchError> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line).map_err(|e| BenchError::Peer {
        what: "peer output".into(),
        reason: format!("{e} in {:?}", truncate(text)),
    })
}

/// What `benches/peer_execnet_arrays.py` prints: the seconds of each timed exchange.
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct Exchanges {
    pub times: Vec<f64>,
}

fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Reads a child's pipe to the end on a thread, so that a full pipe never stalls it.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// Waits for `child` up to `deadline`; kills it past that (and returns `None`).
pub(crate) fn wait(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_output_parses_or_fails_with_the_text() {
        assert_eq!(floats("0.5 1e-3\n").unwrap(), vec![0.5, 1e-3]);
        assert!(floats("").is_err());
        assert!(floats("0.5 nope").is_err());
        let line = r#"{"mib": 8, "times": [0.25, 0.5], "median": 0.375, "checked": true}"#;
        let exchanges = |text: &str| json_line::<Exchanges>(text).map(|e| e.times);
        assert_eq!(exchanges(line).unwrap(), vec![0.25, 0.5]);
        assert_eq!(
            exchanges(&format!("a warning\n{line}\n\n")).unwrap(),
            [0.25, 0.5]
        );
        for bad in ["", r#"{"mib": 8}"#, r#"{"times": [0.25, "x"]}"#, "0.25 0.5"] {
            let err = exchanges(bad).unwrap_err().to_string();
            assert!(err.starts_with("peer output: "), "{bad:?}: {err}");
        }
    }
}
