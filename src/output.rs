//! The worker's output: Python-level prints attributed to channels, fd-level output line
//! by line, and where it all goes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// The longest piece of worker output the host holds as one line, in bytes.
///
/// A longer line — and text that never ends a line, such as a progress bar written
/// with `\r` or a binary dump on fd 1 — is delivered in pieces of at most this size,
/// each an [`OutputLine`] of its own, cut before a UTF-8 character that would cross the
/// limit. This applies to output read from the worker's file descriptors 1 and 2 and to
/// text arriving in OUTPUT frames alike, so the host's memory for a line is bounded
/// whatever the worker writes.
pub const MAX_OUTPUT_LINE: usize = 64 * 1024;

/// The most output [`OutputMode::Capture`] keeps until
/// [`Gateway::take_output`](crate::Gateway::take_output), in bytes: each line counts
/// its text plus [`CAPTURED_LINE_OVERHEAD`]. Beyond it the oldest lines are dropped, and
/// the next `take_output` starts with a line saying how many were.
pub const MAX_CAPTURED_OUTPUT: usize = 64 * 1024 * 1024;

/// What each captured line counts beyond its text towards [`MAX_CAPTURED_OUTPUT`] (so
/// that a flood of empty lines is bounded too).
pub const CAPTURED_LINE_OVERHEAD: usize = 128;

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
    /// At most [`MAX_CAPTURED_OUTPUT`] is kept; older lines are dropped beyond it.
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
    captured: Mutex<Captured>,
    tail: Mutex<VecDeque<String>>,
}

/// Captured lines, bounded by [`MAX_CAPTURED_OUTPUT`].
#[derive(Default)]
struct Captured {
    lines: VecDeque<OutputLine>,
    /// What `lines` counts towards the bound.
    bytes: usize,
    /// Lines dropped since the last take.
    dropped: usize,
}

fn captured_cost(line: &OutputLine) -> usize {
    line.text.len() + CAPTURED_LINE_OVERHEAD
}

impl OutputSink {
    pub(crate) fn new(gateway: String, mode: OutputMode) -> OutputSink {
        OutputSink {
            gateway,
            mode,
            captured: Mutex::new(Captured::default()),
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
        }
    }

    /// Emits every line of `text` (a trailing newline does not make an empty line), in
    /// pieces of at most [`MAX_OUTPUT_LINE`] bytes.
    pub(crate) fn emit_text(&self, channel: Option<i32>, stream: Stream, text: &str) {
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            self.emit_pieces(channel, stream, line.strip_suffix('\r').unwrap_or(line));
        }
    }

    /// Emits one line, cut into pieces of at most [`MAX_OUTPUT_LINE`] bytes.
    fn emit_pieces(&self, channel: Option<i32>, stream: Stream, mut line: &str) {
        loop {
            let (piece, rest) = line.split_at(piece_len(line));
            self.emit(OutputLine {
                gateway: self.gateway.clone(),
                channel,
                stream,
                text: piece.to_string(),
            });
            if rest.is_empty() {
                return;
            }
            line = rest;
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
            OutputMode::Capture => {
                let mut c = lock(&self.captured);
                c.bytes += captured_cost(&line);
                c.lines.push_back(line);
                while c.bytes > MAX_CAPTURED_OUTPUT {
                    let Some(old) = c.lines.pop_front() else {
                        break;
                    };
                    c.bytes -= captured_cost(&old);
                    c.dropped += 1;
                }
            }
            OutputMode::Discard => {}
        }
    }

    pub(crate) fn take_captured(&self) -> Vec<OutputLine> {
        let c = std::mem::take(&mut *lock(&self.captured));
        let mut out = Vec::with_capacity(c.lines.len() + 1);
        if c.dropped > 0 {
            out.push(OutputLine {
                gateway: self.gateway.clone(),
                channel: None,
                stream: Stream::Stderr,
                text: format!(
                    "pixgate: {} earlier lines of output dropped (captured output is kept up to {} bytes)",
                    c.dropped, MAX_CAPTURED_OUTPUT
                ),
            });
        }
        out.extend(c.lines);
        out
    }

    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        lock(&self.tail).iter().cloned().collect()
    }

    /// Forwards a pipe line by line until it ends, in pieces of at most
    /// [`MAX_OUTPUT_LINE`] bytes. Runs on its own thread.
    pub(crate) fn pump(&self, mut pipe: impl Read, stream: Stream) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut lines = LineCutter::default();
        let mut emit = |bytes: &[u8], ended: bool| {
            let text = String::from_utf8_lossy(bytes);
            let text = if ended {
                text.strip_suffix('\r').unwrap_or(&text)
            } else {
                &text
            };
            // Replacement characters may make the text longer than the bytes were.
            self.emit_pieces(None, stream, text);
        };
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => lines.feed(&buf[..n], &mut emit),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        lines.finish(&mut emit);
    }
}

/// The length of the first piece of `line`: all of it up to [`MAX_OUTPUT_LINE`] bytes,
/// else the longest prefix that ends on a character boundary.
fn piece_len(line: &str) -> usize {
    if line.len() <= MAX_OUTPUT_LINE {
        return line.len();
    }
    let mut end = MAX_OUTPUT_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Cuts a byte stream into lines of at most [`MAX_OUTPUT_LINE`] bytes, holding at most
/// one such line.
#[derive(Default)]
struct LineCutter {
    line: Vec<u8>,
}

impl LineCutter {
    /// Takes the next bytes of the stream; hands each completed line or piece to
    /// `out`, with whether a newline ended it (the newline itself is not included).
    fn feed(&mut self, mut rest: &[u8], out: &mut impl FnMut(&[u8], bool)) {
        while !rest.is_empty() {
            if self.line.len() == MAX_OUTPUT_LINE {
                // Full: the next byte decides between a line and a piece.
                if rest[0] == b'\n' {
                    out(&self.line, true);
                    self.line.clear();
                    rest = &rest[1..];
                } else {
                    let cut = utf8_cut(&self.line, rest[0]);
                    out(&self.line[..cut], false);
                    self.line.drain(..cut);
                }
                continue;
            }
            let room = MAX_OUTPUT_LINE - self.line.len();
            let window = &rest[..rest.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&window[..i]);
                    out(&self.line, true);
                    self.line.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    self.line.extend_from_slice(window);
                    rest = &rest[window.len()..];
                }
            }
        }
    }

    /// The end of the stream: the last line, if it did not end with a newline.
    fn finish(&mut self, out: &mut impl FnMut(&[u8], bool)) {
        if !self.line.is_empty() {
            out(&self.line, true);
            self.line.clear();
        }
    }
}

/// Where to cut a full line whose next byte is `next`: before the UTF-8 character that
/// would cross the end, when the bytes there look like one; at the end otherwise.
fn utf8_cut(line: &[u8], next: u8) -> usize {
    let continuation = |b: u8| b & 0xC0 == 0x80;
    if !continuation(next) {
        return line.len();
    }
    // A character is at most 4 bytes: its first byte is among the last 3.
    let start = line.len().saturating_sub(3);
    match (start..line.len()).rev().find(|&i| !continuation(line[i])) {
        Some(i) if i > 0 && line[i] >= 0xC0 => i,
        _ => line.len(),
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

    /// Runs `chunks` through a cutter and returns the lines with their endings.
    fn cut(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut c = LineCutter::default();
        let mut out = Vec::new();
        let mut push = |b: &[u8], ended: bool| out.push((b.to_vec(), ended));
        for chunk in chunks {
            c.feed(chunk, &mut push);
        }
        c.finish(&mut push);
        out
    }

    #[test]
    fn the_cutter_bounds_lines_and_keeps_every_byte() {
        let m = MAX_OUTPUT_LINE;
        // A line of exactly the limit, then a newline in the next read: one line.
        let full = vec![b'a'; m];
        assert_eq!(
            cut(&[&full, b"\nb"]),
            [(full.clone(), true), (b"b".to_vec(), true)]
        );
        // One byte more: a piece and the rest.
        let over = vec![b'a'; m + 1];
        assert_eq!(
            cut(&[&over, b"\n"]),
            [(full.clone(), false), (b"a".to_vec(), true)]
        );
        // Bytes one at a time give the same.
        let mut bytes = over.clone();
        bytes.push(b'\n');
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(cut(&singles), cut(&[&bytes]));
        // No newline at all: pieces of the limit, every byte kept.
        let flood = vec![b'x'; 5 * m + 7];
        let lines = cut(&[&flood[..1000], &flood[1000..]]);
        assert_eq!(lines.len(), 6);
        assert!(lines.iter().all(|(l, _)| l.len() <= m));
        assert_eq!(
            lines.iter().map(|(l, _)| l.len()).sum::<usize>(),
            flood.len()
        );
        // Empty lines stay lines.
        assert_eq!(cut(&[b"\n\n"]), [(vec![], true), (vec![], true)]);
    }

    #[test]
    fn the_cutter_does_not_split_a_utf8_character() {
        for width in 2..=4usize {
            let ch = ['é', '€', '😀'][width - 2].to_string();
            let text = ch.repeat(3 * MAX_OUTPUT_LINE / width);
            let lines = cut(&[text.as_bytes()]);
            let mut whole = Vec::new();
            for (l, _) in &lines {
                assert!(l.len() <= MAX_OUTPUT_LINE);
                assert!(
                    std::str::from_utf8(l).is_ok(),
                    "width {width}: a split character"
                );
                whole.extend_from_slice(l);
            }
            assert_eq!(whole, text.as_bytes());
        }
        // Not UTF-8: cut at the limit.
        let junk = vec![0x80u8; MAX_OUTPUT_LINE + 10];
        assert_eq!(cut(&[&junk])[0].0.len(), MAX_OUTPUT_LINE);
    }

    #[test]
    fn long_text_lines_are_emitted_in_pieces_at_character_boundaries() {
        let sink = OutputSink::new("gw".into(), OutputMode::Capture);
        let line = "€".repeat(MAX_OUTPUT_LINE); // 3 bytes each
        sink.emit_text(Some(1), Stream::Stdout, &format!("{line}\nshort\n"));
        let lines = sink.take_captured();
        let lens: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(lens, [65535, 65535, 65535, 3, 5]);
        let joined: String = lines[..4].iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn captured_output_is_bounded_and_says_what_it_dropped() {
        let sink = OutputSink::new("gw".into(), OutputMode::Capture);
        let text = "y".repeat(1000);
        let per_line = 1000 + CAPTURED_LINE_OVERHEAD;
        let n = MAX_CAPTURED_OUTPUT / per_line + 100;
        for i in 0..n {
            sink.emit_text(None, Stream::Stdout, &format!("{text}{i}"));
        }
        let lines = sink.take_captured();
        let kept = &lines[1..];
        assert!(
            lines[0].text.starts_with("pixgate: ")
                && lines[0].text.contains("earlier lines of output dropped"),
            "{}",
            lines[0].text
        );
        let dropped: usize = lines[0].text["pixgate: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(dropped + kept.len(), n);
        assert!(kept.iter().map(captured_cost).sum::<usize>() <= MAX_CAPTURED_OUTPUT);
        assert_eq!(kept.last().unwrap().text, format!("{text}{}", n - 1));
        // Empty lines count too.
        for _ in 0..(MAX_CAPTURED_OUTPUT / CAPTURED_LINE_OVERHEAD + 10) {
            sink.emit_text(None, Stream::Stdout, "");
        }
        assert!(sink.take_captured().len() <= MAX_CAPTURED_OUTPUT / CAPTURED_LINE_OVERHEAD + 1);
        // Nothing dropped since: no note.
        sink.emit_text(None, Stream::Stdout, "z");
        assert_eq!(sink.take_captured().len(), 1);
    }
}
