//! ssh gateways: a worker on another machine, started through the `ssh` client with
//! execnet's spec syntax (`ssh=[ssh options] user@host//python=…//chdir=…//env:K=V`).
//!
//! The frames travel over ssh's own stdin and stdout. The remote command is a one-line
//! bootstrap ([`BOOT`]) that moves the remote process's descriptors 0 and 1 to 3 and 4
//! (the local worker's protocol descriptors) and points descriptor 1 at its stderr, so
//! that nothing the remote code prints can reach the frames; then it reads the rest of
//! its start from the pipe — a short program that sets the environment, the working
//! directory and the niceness, followed by the local worker's loader — so that none of
//! that has to survive the remote shell's quoting. The loader then reads the helper
//! bundle as a local worker does. See docs/PROTOCOL.md §2.8.
//!
//! The remote machine shares no memory with the host: arrays travel by value
//! (`crate::byvalue`, docs/PROTOCOL.md §4.14).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::bootstrap;
use crate::error::{Error, ErrorKind, Result};
use crate::gateway::{Gateway, GatewayBuilder, StartGuard, Started, worker_env};
use crate::segment::Transport;
use crate::spec::{HelperSource, Spec};

/// The ssh client program: `$PIXGATE_SSH` when set (a path or a name on PATH), else
/// `ssh`.
fn ssh_program() -> String {
    match std::env::var("PIXGATE_SSH") {
        Ok(p) if !p.is_empty() => p,
        _ => "ssh".to_string(),
    }
}

/// The program the remote interpreter runs with `-c`: one line, no single quote (so
/// that the remote shell's quoting is one pair of `'`). It moves the protocol to
/// descriptors 3 and 4, sends the remote's stdout to its stderr, reads a length (ten
/// decimal digits) and that many bytes of Python from descriptor 3, and runs them.
/// Kept in `python-helper/bootstrap/ssh_boot.py`, whose line ends with the file's only
/// newline; the newline is not sent.
pub(crate) const BOOT: &str =
    include_str!("../python-helper/bootstrap/ssh_boot.py").trim_ascii_end();

/// The second stage's program (`python-helper/bootstrap/ssh_stage_two.py`): each marker
/// line of [`STAGE_TWO_MARKERS`] is replaced by what [`stage_two`] puts there.
const STAGE_TWO: &str = include_str!("../python-helper/bootstrap/ssh_stage_two.py");

/// The marker lines of [`STAGE_TWO`], whole lines with their newline: the environment's
/// `(name, value)` entries, `os.chdir(…)` and `os.nice(…)` (each line, or nothing).
const STAGE_TWO_MARKERS: [&str; 3] = ["    # @env@\n", "# @chdir@\n", "# @nice@\n"];

/// `s` as a Python 3 string literal that holds only ASCII letters, digits and escapes.
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ' ' | '.' | '_' | '-' | '/' | ':' | '=' | ',' => {
                out.push(c)
            }
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The second stage of the bootstrap, sent on the pipe after [`BOOT`] starts: stdin on
/// /dev/null, the environment, chdir, nice, then the local worker's loader.
fn stage_two(spec: &Spec, env: &[(String, Option<String>)]) -> String {
    let mut entries = String::new();
    for (k, v) in env {
        let v = v.as_deref().map_or_else(|| "None".to_string(), py_str);
        entries.push_str(&format!("    ({}, {v}),\n", py_str(k)));
    }
    let chdir = spec.chdir.as_ref().map_or_else(String::new, |dir| {
        format!("os.chdir({})\n", py_str(&dir.to_string_lossy()))
    });
    let nice = spec
        .nice
        .map_or_else(String::new, |n| format!("os.nice({n})\n"));
    let mut p = String::with_capacity(STAGE_TWO.len() + entries.len() + bootstrap::LOADER.len());
    let mut rest = STAGE_TWO;
    for (marker, text) in STAGE_TWO_MARKERS.iter().zip([&entries, &chdir, &nice]) {
        let (head, tail) = rest
            .split_once(marker)
            .expect("the stage two template holds its markers in order");
        p.push_str(head);
        p.push_str(text);
        rest = tail;
    }
    p.push_str(rest);
    p.push_str(bootstrap::LOADER);
    p
}

/// The remote command line: `exec PYTHON [-B] -u -c BOOT`, quoted for the remote shell.
fn remote_command(spec: &Spec) -> String {
    let python: Vec<String> = if spec.python.is_empty() {
        vec!["python3".to_string()]
    } else {
        spec.python.clone()
    };
    let mut words: Vec<String> = python.iter().map(|w| shell_quote(w)).collect();
    if spec.dont_write_bytecode {
        words.push("-B".into());
    }
    words.extend(["-u".into(), "-c".into(), shell_quote(BOOT)]);
    format!("exec {}", words.join(" "))
}

/// The ssh command: `ssh -T -o BatchMode=yes [-F CONFIG] WORDS… REMOTE`. No `-C`:
/// compression costs more than it saves on pixels (BENCHMARKS.md, P9); a spec that
/// wants it says `ssh=-C host`.
fn ssh_command(spec: &Spec) -> Command {
    let mut cmd = Command::new(ssh_program());
    cmd.args(["-T", "-o", "BatchMode=yes"]);
    if let Some(cfg) = &spec.ssh_config {
        cmd.arg("-F").arg(cfg);
    }
    cmd.args(spec.ssh.as_deref().unwrap_or_default());
    cmd.arg(remote_command(spec));
    cmd
}

/// Starts a worker through ssh (see the module docs).
pub(crate) fn start(b: GatewayBuilder, spec: Spec, id: String) -> Result<Gateway> {
    if let Some(t) = b.transport.filter(|t| *t != Transport::ByValue) {
        return Err(Error::new(ErrorKind::Spec {
            spec: b.spec.clone(),
            reason: format!(
                "transport {t} needs shared memory; an ssh gateway passes arrays by value"
            ),
        }));
    }
    let env = {
        let mut env = worker_env(&spec, &id, &b, Transport::ByValue);
        env.push(("PIXGATE_DESCRIPTORS".into(), None));
        env
    };
    let mut cmd = ssh_command(&spec);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: as for a local worker: the closure runs in the forked child before exec
    // and calls only async-signal-safe functions (setpgid, prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || crate::gateway::child_setup(None, None, None, parent));
    }
    let program = ssh_program();
    let mut child =
        crate::gateway::spawn_child(cmd).map_err(|e| crate::gateway::spawn_error(&program, e))?;
    let guard = StartGuard::new(child.id());
    let pid = child.id();
    let stdin = child.stdin.take().expect("stdin piped");
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    drop(child); // reaped by the reaper thread, by pid

    let two = stage_two(&spec, &env);
    let mut boot = format!("{:010}", two.len()).into_bytes();
    boot.extend_from_slice(two.as_bytes());
    if spec.helper == HelperSource::Bootstrap {
        boot.extend_from_slice(&bootstrap::bundle());
    }
    Gateway::finish(Started {
        b,
        id,
        pid,
        guard,
        from_worker: stdout.into(),
        to_worker: stdin.into(),
        stdout: None,
        stderr: stderr.into(),
        boot: Some(boot),
        sock_host: None,
        by_value: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_is_one_line_without_single_quotes() {
        assert!(!BOOT.contains('\n') && !BOOT.contains('\''));
        assert!(BOOT.len() < 240, "{} bytes", BOOT.len());
    }

    #[test]
    fn the_bootstrap_file_is_that_line_and_its_newline() {
        let file = include_str!("../python-helper/bootstrap/ssh_boot.py");
        assert_eq!(file, format!("{BOOT}\n"));
        crate::bootstrap::tests::assert_compiles(BOOT, "ssh_boot.py");
    }

    #[test]
    fn the_stage_two_template_holds_each_marker_once_as_a_line() {
        for marker in STAGE_TWO_MARKERS {
            assert_eq!(STAGE_TWO.matches(marker).count(), 1, "{marker:?}");
            assert!(STAGE_TWO.contains(&format!("\n{marker}")), "{marker:?}");
        }
        assert!(STAGE_TWO.ends_with("del _n, _k, _v\n"));
    }

    #[test]
    fn stage_two_fills_the_template_then_appends_the_loader() {
        let spec = Spec::parse("ssh=h//chdir=/tmp/a b//nice=5").unwrap();
        let env = [
            ("K".to_string(), Some("v'x".to_string())),
            ("GONE".into(), None),
        ];
        let p = stage_two(&spec, &env);
        assert!(!p.contains("# @"), "{p}");
        let program = p.strip_suffix(bootstrap::LOADER).unwrap();
        assert!(program.starts_with("import os\n_n = os.open(os.devnull, os.O_RDONLY)\n"));
        assert!(
            program.contains(
                "for _k, _v in [\n    (\"K\", \"v\\x27x\"),\n    (\"GONE\", None),\n]:\n"
            )
        );
        assert!(program.ends_with(
            "os.environ[_k] = _v\nos.chdir(\"/tmp/a b\")\nos.nice(5)\ndel _n, _k, _v\n"
        ));
        crate::bootstrap::tests::assert_compiles(&p, "stage two");
        // Without chdir and nice their markers leave nothing.
        let plain = stage_two(&Spec::parse("ssh=h").unwrap(), &env);
        assert!(plain.contains("os.environ[_k] = _v\ndel _n, _k, _v\nimport os, sys\n"));
    }

    #[test]
    fn python_literals_escape_everything_but_plain_characters() {
        assert_eq!(py_str("a/b c"), "\"a/b c\"");
        assert_eq!(
            py_str("x\"'\\\n$`é😀"),
            "\"x\\x22\\x27\\x5c\\x0a\\x24\\x60\\xe9\\U0001f600\""
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("python3"), "python3");
        assert_eq!(shell_quote("/opt/my python"), "'/opt/my python'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_ssh_command_follows_execnet_without_compression() {
        let spec = Spec::parse(
            "ssh=-p 2222 -i /k root@h//ssh_config=/c//python=python3 -X dev//dont_write_bytecode",
        )
        .unwrap();
        let cmd = ssh_command(&spec);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[..10],
            [
                "-T",
                "-o",
                "BatchMode=yes",
                "-F",
                "/c",
                "-p",
                "2222",
                "-i",
                "/k",
                "root@h"
            ]
        );
        assert!(!args.iter().any(|a| a == "-C"));
        let remote = &args[10];
        assert!(
            remote.starts_with("exec python3 -X dev -B -u -c 'import os;"),
            "{remote}"
        );
    }
}
