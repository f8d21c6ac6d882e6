//! A process that holds anonymous segments, for `tests/cli_anonymous.rs` and for timing
//! `pixgate ls`.
//!
//! `anon_holder ARRAYS [SLOTS]` makes ARRAYS anonymous `u16` arrays of shape [3, 4, 5]
//! and, when SLOTS is given, a pool with one size class of 4096 bytes and SLOTS slots
//! (one arena, every slot made), prints `ready PID` and waits until its input ends; then
//! it drops everything and exits 0. Killing it is what the tests do too.
//!
//! ```sh
//! cargo run --example anon_holder -- 100 8
//! ```

use std::io::{Read, Write};
use std::process::ExitCode;

use pixgate::segment::Transport;
use pixgate::{Pool, SharedArray};

fn main() -> ExitCode {
    let args: Vec<usize> = match std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect()
    {
        Ok(args) => args,
        Err(e) => return usage(&e.to_string()),
    };
    let (arrays, slots) = match args[..] {
        [arrays] => (arrays, None),
        [arrays, slots] => (arrays, Some(slots)),
        _ => return usage("one or two counts"),
    };
    let made = (0..arrays)
        .map(|_| SharedArray::<u16>::zeros_in(Transport::Anonymous, &[3, 4, 5]))
        .collect::<pixgate::Result<Vec<_>>>();
    let pool = slots
        .map(|slots| {
            Pool::builder()
                .class(4096)
                .slots(slots)
                .transport(Transport::Anonymous)
                .build()
        })
        .transpose();
    let (held, pool) = match (made, pool) {
        (Ok(held), Ok(pool)) => (held, pool),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("anon_holder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "ready {}", std::process::id())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Until the input ends.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop((held, pool));
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("usage: anon_holder ARRAYS [SLOTS] ({why})");
    ExitCode::from(2)
}
