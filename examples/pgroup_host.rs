//! A host for the process-group test in `tests/lifecycle.rs`: a gateway whose host
//! runs in a process group that becomes orphaned.
//!
//! - `pgroup_host launch SPEC` starts a new session, starts `pgroup_host host SPEC` in a
//!   process group of its own inside that session (stdin and stdout shared with the
//!   launcher), prints `host PID` and sleeps until it is killed. Its death orphans the
//!   host's process group: no member of it then has a parent in the session.
//! - `pgroup_host host SPEC` starts a gateway, prints `worker PID`, and waits for a line
//!   on stdin. On `exit` it calls `Gateway::exit(500 ms)` and prints
//!   `exited STATUS after MS ms`; at the end of its input it exits without a word.
//!
//! ```sh
//! cargo run --example pgroup_host -- launch "popen//python=.venv/bin/python"
//! ```

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use pixgate::{Gateway, OutputMode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("launch") if args.len() == 2 => launch(&args[1]),
        Some("host") if args.len() == 2 => host(&args[1]),
        _ => {
            eprintln!("usage: pgroup_host launch|host SPEC");
            ExitCode::from(2)
        }
    }
}

fn launch(spec: &str) -> ExitCode {
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("pgroup_host: setsid: {e}");
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pgroup_host: {e}");
            return ExitCode::FAILURE;
        }
    };
    match Command::new(exe)
        .args(["host", spec])
        .process_group(0)
        .spawn()
    {
        Ok(child) => {
            println!("host {}", child.id());
            let _ = std::io::stdout().flush();
            // Killed by the test; a bound in case it never is.
            std::thread::sleep(Duration::from_secs(120));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgroup_host: starting the host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn host(spec: &str) -> ExitCode {
    let gw = match Gateway::builder(spec).output(OutputMode::Discard).spawn() {
        Ok(gw) => gw,
        Err(e) => {
            eprintln!("pgroup_host: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("worker {}", gw.pid());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    while matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
        if line.trim() == "exit" {
            let t = Instant::now();
            match gw.exit(Duration::from_millis(500)) {
                Ok(e) => println!(
                    "exited {} after {} ms",
                    e.status_text(),
                    t.elapsed().as_millis()
                ),
                Err(e) => println!("exit failed: {e}"),
            }
            let _ = std::io::stdout().flush();
            return ExitCode::SUCCESS;
        }
        line.clear();
    }
    ExitCode::SUCCESS
}
