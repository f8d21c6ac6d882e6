//! The `pixgate` command line, run as a user would run it.

mod common;

use common::{run_pixgate, text};

use common::{python, spec};

/// The text after `key` on the line that starts with it.
fn line_of<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
}

/// Piped, as here, a command draws no progress bar: no carriage return or escape
/// sequence in its output.
fn assert_no_progress(out: &std::process::Output) {
    for stream in [&out.stdout, &out.stderr] {
        let stream = text(stream);
        assert!(
            !stream.contains('\r') && !stream.contains('\u{1b}'),
            "{stream:?}"
        );
    }
}

#[test]
fn doctor_reports_interpreter_numpy_shm_and_huge_pages() {
    let out = run_pixgate(&["doctor", "--spec", &spec("")]);
    let stdout = text(&out.stdout);
    for key in [
        "interpreter",
        "python",
        "numpy",
        "platform",
        "transport",
        "memfd",
        "descriptors",
        "/dev/shm",
        "huge pages",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(key)),
            "{key} missing:\n{stdout}"
        );
    }
    let exe = std::fs::canonicalize(python()).unwrap();
    let reported = stdout
        .lines()
        .find_map(|l| l.strip_prefix("interpreter"))
        .unwrap()
        .trim();
    assert_eq!(std::fs::canonicalize(reported).unwrap(), exe);
    assert!(stdout.contains("free"), "{stdout}");
}

#[test]
fn doctor_says_which_transport_a_gateway_gets_and_why() {
    // What the gateway gets depends on the worker's helper; the reason must match it.
    let gw = common::gateway();
    let got = gw.transport();
    drop(gw);
    let stdout = text(&run_pixgate(&["doctor", "--spec", &spec("")]).stdout);
    let line = line_of(&stdout, "transport");
    assert!(line.starts_with(&format!("{got}: ")), "{line}");
    if got == pixgate::segment::Transport::Anonymous {
        assert!(line.contains("descriptors passed on fd 5"), "{line}");
    }

    // Asked for named, by the spec or by the environment, a gateway says so.
    let stdout = text(&run_pixgate(&["doctor", "--spec", &spec("transport=named")]).stdout);
    assert_eq!(
        line_of(&stdout, "transport"),
        "named: transport=named in the spec"
    );
    let out = common::run_pixgate_env(
        &["doctor", "--spec", &spec("")],
        &[("PIXGATE_TRANSPORT", "named")],
    );
    assert_eq!(
        line_of(&text(&out.stdout), "transport"),
        "named: PIXGATE_TRANSPORT=named"
    );
}

#[test]
#[cfg(target_os = "linux")]
fn doctor_checks_sealed_memfds_and_the_descriptor_limit() {
    let stdout = text(&run_pixgate(&["doctor", "--spec", &spec("")]).stdout);
    let memfd = line_of(&stdout, "memfd");
    assert!(
        memfd.starts_with("memfd_create with sealing works (kernel "),
        "{memfd}"
    );
    assert!(memfd.contains("MFD_NOEXEC_SEAL"), "{memfd}");
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let limit = |n: u64| {
        if n == nix::sys::resource::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    // The child inherits this process's limits.
    assert!(
        line_of(&stdout, "descriptors").starts_with(&format!(
            "RLIMIT_NOFILE soft {}, hard {}: the host holds one descriptor per live anonymous array",
            limit(soft),
            limit(hard)
        )),
        "{stdout}"
    );
}

#[test]
fn doctor_fails_clearly_without_an_interpreter() {
    let out = run_pixgate(&["doctor", "--spec", "popen//python=/nonexistent/python"]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("unusable"), "{stdout}");
    assert!(stdout.contains("/nonexistent/python"), "{stdout}");
}

#[test]
fn demo_runs_the_stack_job_both_ways_and_prints_its_timings() {
    let _serial = common::serial();
    let out = run_pixgate(&[
        "demo",
        "--spec",
        &spec("id=demo"),
        "--size-mib",
        "64",
        "--round-trips",
        "50",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_no_progress(&out);
    for needle in [
        "1×16×2×1024×1024 (t z c y x) uint16 stack: 64 MiB",
        "move data (stack there, results back)",
        "numpy: max along z, mean per plane",
        "sharing instead of copying: the exchange is",
        "small-value round trip, median of 50",
        "worker ended with exit code 0",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    common::assert_no_segments_anywhere();
}

#[test]
fn exec_prints_values_and_reports_remote_errors() {
    let out = run_pixgate(&[
        "exec",
        "--spec",
        &spec(""),
        "channel.send([1, 'two', (3.0, None)])",
    ]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "[1, 'two', (3.0, None)]\n");
    assert_eq!(text(&out.stderr), "");

    let out = run_pixgate(&["exec", "--spec", &spec(""), "1 / 0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ZeroDivisionError"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_prints_arrays_with_dtype_shape_and_a_preview_and_never_waits_forever() {
    let out = run_pixgate(&[
        "exec",
        "--spec",
        &spec(""),
        "import numpy as np, pixgate\n\
         a = pixgate.zeros((3, 4), 'uint16'); a[:] = np.arange(12).reshape(3, 4)\n\
         channel.send({'labels': a, 'n': 3})\n\
         channel.send(pixgate.asarray(np.linspace(0, 1, 2000, dtype=np.float32)))",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.starts_with("{'labels': <array #0>, 'n': 3}\n  #0: array(uint16, shape=(3, 4))\n"),
        "{stdout}"
    );
    assert!(stdout.contains("[8, 9, 10, 11]]"), "{stdout}");
    // A long axis is elided: the preview stays short.
    assert!(stdout.contains("array(float32, shape=(2000,))"), "{stdout}");
    let long = stdout
        .lines()
        .find(|l| l.contains("0.999500"))
        .expect("preview");
    assert!(long.contains("...") && long.len() < 200, "{long}");
    // A worker that sends nothing: the default timeout would end it; a short one does.
    let t = std::time::Instant::now();
    let out = run_pixgate(&[
        "exec",
        "--spec",
        &spec(""),
        "--timeout",
        "0.5",
        "import time\ntime.sleep(30)",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no value within 0.5 s"),
        "{}",
        text(&out.stderr)
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    let help = run_pixgate(&["exec", "--help"]);
    assert!(
        text(&help.stdout).contains("[default: 60]"),
        "{}",
        text(&help.stdout)
    );
}

#[test]
fn a_bad_exec_timeout_is_refused_without_a_panic() {
    for bad in ["inf", "NaN", "-1", "1e300", "soon"] {
        let flag = format!("--timeout={bad}");
        let out = run_pixgate(&["exec", &flag, "pass"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--timeout"), "{bad}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bad}: {stderr}");
    }
}

#[test]
fn a_bad_spec_is_reported_without_a_panic() {
    let out = run_pixgate(&["exec", "--spec", "popen//bogus=1", "pass"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown key \"bogus\""), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn python_flag_chooses_the_interpreter_and_a_missing_numpy_says_how_to_fix_it() {
    // A fresh venv without numpy, in a directory whose name has a space.
    let dir = std::env::temp_dir().join(format!("pixgate cli {} venv", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let made = std::process::Command::new(python())
        .args(["-m", "venv", "--without-pip"])
        .arg(&dir)
        .status()
        .expect("python -m venv");
    assert!(made.success());
    let venv_python = dir.join("bin").join("python");
    let venv_python = venv_python.to_str().unwrap();
    let fix = "-m pip install numpy";

    let out = run_pixgate(&["doctor", "--python", venv_python]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(fix) && stdout.contains("pixgate cli"),
        "{stdout}"
    );

    let out = run_pixgate(&["demo", "--python", venv_python, "--size-mib", "32"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(fix), "{}", text(&out.stderr));

    let out = run_pixgate(&[
        "exec",
        "--python",
        venv_python,
        "import sys\nchannel.send(sys.prefix)",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("venv"), "{}", text(&out.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}
