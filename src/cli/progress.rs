//! Progress for the commands that can take a while: a bar over known steps (`pixgate
//! bench`, `pixgate demo`), a spinner over a wait of unknown length (`exec` waiting for
//! a value, `doctor` starting its worker, `ls`, `inspect` and `gc` scanning).
//!
//! It is drawn on stderr and only when stderr is a terminal. Piped or redirected (as
//! in the tests), the bar is hidden: nothing of it is written and no thread ticks it,
//! so stdout and stderr carry the command's own output alone. While a bar shows, text
//! goes out through [`ProgressBar::suspend`], and worker output through
//! [`worker_output`], so that neither is torn by it. A bar that is dropped unfinished
//! (a command ending with an error) is cleared.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use pixgate::{OutputLine, OutputMode};

/// How often a visible bar is redrawn, for its spinner and elapsed time.
const TICK: Duration = Duration::from_millis(200);

/// A bar of `steps` steps: spinner, elapsed time, the bar, `pos/len` and a message.
pub(crate) fn bar(steps: u64) -> ProgressBar {
    show(
        ProgressBar::with_draw_target(Some(steps), target()),
        "{spinner} {elapsed:>4} [{bar:28}] {pos}/{len} {wide_msg}",
        "".into(),
    )
}

/// A spinner with the elapsed time and `message`.
pub(crate) fn spinner(message: impl Into<Cow<'static, str>>) -> ProgressBar {
    show(
        ProgressBar::with_draw_target(None, target()),
        "{spinner} {elapsed:>4} {wide_msg}",
        message.into(),
    )
}

/// Where a gateway's worker output goes while `bar` may show: to stderr as
/// [`OutputMode::Stderr`] writes it (`[ID] text`, `[ID:CHANNEL] text`), with the bar
/// cleared for the line and drawn again after it. Just [`OutputMode::Stderr`] when the
/// bar is hidden.
pub(crate) fn worker_output(bar: &ProgressBar) -> OutputMode {
    if bar.is_hidden() {
        return OutputMode::Stderr;
    }
    let bar = bar.clone();
    OutputMode::Callback(Arc::new(move |line: &OutputLine| {
        let prefix = match line.channel {
            Some(ch) => format!("[{}:{ch}]", line.gateway),
            None => format!("[{}]", line.gateway),
        };
        bar.suspend(|| {
            let _ = writeln!(std::io::stderr().lock(), "{prefix} {}", line.text);
        });
    }))
}

/// Stderr when it is a terminal; nowhere otherwise.
fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// `bar` with the style of `template` and `message`, ticking when it is visible,
/// cleared when dropped.
fn show(bar: ProgressBar, template: &str, message: Cow<'static, str>) -> ProgressBar {
    let bar = bar.with_finish(ProgressFinish::AndClear);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    if !bar.is_hidden() {
        bar.enable_steady_tick(TICK);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_bars_are_hidden_and_output_goes_to_stderr_as_usual() {
        // `cargo test` captures stderr through a pipe, never a terminal, except when
        // run by hand in one with --nocapture.
        if std::io::stderr().is_terminal() {
            return;
        }
        let bar = bar(3);
        let spinner = spinner("waiting");
        assert!(bar.is_hidden() && spinner.is_hidden());
        assert!(matches!(worker_output(&bar), OutputMode::Stderr));
        bar.inc(1);
        assert_eq!(bar.position(), 1);
        assert_eq!(spinner.suspend(|| 7), 7);
    }
}
