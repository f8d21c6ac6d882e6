//! The worker's output: Python-level prints attributed to channels, fd-level output line
//! by line, and where it all goes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};

/// Which of the worker's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of worker output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// Id of the gateway whose worker wrote it.
    pub gateway: String,
    /// The channel whose remote code printed it; `None` for output written at the file
    /// descriptor level (C extensions, subprocesses, threads that user code started).
    pub channel: Option<i32>,
    /// The stream it was written to.
    pub stream: Stream,
    /// The text, without its line terminator.
    pub text: String,
}

/// A callback receiving worker output.
pub type OutputCallback = Arc<dyn Fn(&OutputLine) + Send + Sync>;

/// Where worker output goes.
#[derive(Clone, Default)]
pub enum OutputMode {
    /// Written to the host's stderr, each line prefixed with `[ID]` or `[ID:CHANNEL]`.
    #[default]
    Stderr,
    /// Handed to a callback, on the thread that read it.
    Callback(OutputCallback),
    /// Kept in memory; read with [`Gateway::take_output`](crate::Gateway::take_output).
    Capture,
    /// Dropped (the last stderr lines are still kept for error reports).
    Discard,
}

impl fmt::Debug for OutputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputMode::Stderr => f.write_str("Stderr"),
            OutputMode::Callback(_) => f.write_str("Callback(..)"),
            OutputMode::Capture => f.write_str("Capture"),
            OutputMode::Discard => f.write_str("Discard"),
        }
    }
}

/// How many stderr lines are kept for error reports.
pub(crate) const TAIL_LINES: usize = 20;

/// Routes output lines to the configured mode and remembers the stderr tail.
pub(crate) struct OutputSink {
    gateway: String,
    mode: OutputMode,
    captured: Mutex<Vec<OutputLine>>,
    tail: Mutex<VecDeque<String>>,
}

impl OutputSink {
    pub(crate) fn new(gateway: String, mode: OutputMode) -> OutputSink {
        OutputSink {
            gateway,
            mode,
            captured: Mutex::new(Vec::new()),
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
        }
    }

    /// Emits every line of `text` (a trailing newline does not make an empty line).
    pub(crate) fn emit_text(&self, channel: Option<i32>, stream: Stream, text: &str) {
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            self.emit(OutputLine {
                gateway: self.gateway.clone(),
                channel,
                stream,
                text: line.strip_suffix('\r').unwrap_or(line).to_string(),
            });
        }
    }

    fn emit(&self, line: OutputLine) {
        if line.stream == Stream::Stderr {
            let mut tail = lock(&self.tail);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.text.clone());
        }
        match &self.mode {
            OutputMode::Stderr => {
                let prefix = match line.channel {
                    Some(ch) => format!("[{}:{}]", line.gateway, ch),
                    None => format!("[{}]", line.gateway),
                };
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{prefix} {}", line.text);
            }
            OutputMode::Callback(cb) => cb(&line),
            OutputMode::Capture => lock(&self.captured).push(line),
            OutputMode::Discard => {}
        }
    }

    pub(crate) fn take_captured(&self) -> Vec<OutputLine> {
        std::mem::take(&mut *lock(&self.captured))
    }

    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        lock(&self.tail).iter().cloned().collect()
    }

    /// Forwards a pipe line by line until it ends. Runs on its own thread.
    pub(crate) fn pump(&self, pipe: impl std::io::Read, stream: Stream) {
        let mut reader = BufReader::with_capacity(16 * 1024, pipe);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    self.emit_text(None, stream, &text);
                }
            }
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (output state
/// stays usable: it holds no invariant a panic could break).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_split_into_lines_and_stderr_tail_is_bounded() {
        let sink = OutputSink::new("gw".into(), OutputMode::Capture);
        sink.emit_text(Some(3), Stream::Stdout, "a\nb\n");
        for i in 0..30 {
            sink.emit_text(None, Stream::Stderr, &format!("e{i}\r\n"));
        }
        let lines = sink.take_captured();
        assert_eq!(lines.len(), 32);
        assert_eq!(lines[0].text, "a");
        assert_eq!(lines[1].channel, Some(3));
        assert_eq!(lines[2].text, "e0");
        let tail = sink.stderr_tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().unwrap(), "e29");
        assert!(sink.take_captured().is_empty());
    }
}
