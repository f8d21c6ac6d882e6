//! `pixgate bench`, run as a user would run it, in its quick mode. No timing is checked:
//! speed targets live in the benchmarks and BENCHMARKS.md, not in tests.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{python, text};

/// Runs `pixgate bench ARGS…` (killed past 60 s); its output, and whether any segment
/// named after its pid is left in /dev/shm.
fn bench(args: &[&str]) -> (std::process::Output, Vec<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_pixgate"))
        .arg("bench")
        .args(args)
        .env("PIXGATE_PYTHON", python())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pixgate bench");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("pixgate bench {args:?} ran past 60 s");
        }
    };
    let prefix = format!("pxg-{pid:x}-");
    let start = Instant::now();
    let left = loop {
        let left: Vec<String> = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (out, left)
}

#[test]
fn quick_bench_prints_every_scenario_and_writes_a_two_panel_chart() {
    let _serial = common::serial();
    let dir = std::env::temp_dir().join(format!("pixgate-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("chart.svg");
    let (out, left) = bench(&["--quick", "--svg", svg.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for header in ["MEDIAN", "P10", "P90", "N"] {
        assert!(stdout.contains(header), "{header} missing:\n{stdout}");
    }
    for scenario in ["P1", "P2", "P3", "P4", "P5", "P6", "P7"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(scenario)),
            "{scenario} missing:\n{stdout}"
        );
    }
    for needle in [
        "raw pipe echo",
        "pixgate channel.send(i) + receive",
        "pixgate lend + receive back, 1 MiB",
        "worker's numpy arr *= 2",
        "copy into a used pool slot",
        "first touch of fresh anonymous memory",
        "pixgate lock-step 256²",
        "pixgate pipelined 256²",
        "Group of 2, row hash",
        "pixgate Gateway spawn + remote_exec answer",
        "pixgate ÷ raw pipe echo",
        "execnet ÷ pixgate",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(chart.starts_with("<?xml") && chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches(r#"class="panel""#).count(), 2, "{chart}");
    assert!(chart.contains("latency vs size") && chart.contains("throughput vs frame size"));
    assert!(chart.contains("<polyline"), "no series drawn:\n{chart}");
    std::fs::remove_dir_all(&dir).ok();
    assert!(left.is_empty(), "segments left: {left:?}");
    common::assert_no_segments();
}

#[test]
fn json_output_holds_only_the_selected_scenarios() {
    let _serial = common::serial();
    let svg = std::env::temp_dir().join(format!("pixgate-bench-json-{}.svg", std::process::id()));
    let (out, left) = bench(&[
        "--quick",
        "--only",
        "p1,P6",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.trim_start().starts_with('{') && stdout.trim_end().ends_with('}'));
    assert!(stdout.contains(r#""scenario": "P1""#), "{stdout}");
    assert!(stdout.contains(r#""scenario": "P6""#), "{stdout}");
    assert!(!stdout.contains(r#""scenario": "P5""#), "{stdout}");
    assert!(stdout.contains(r#""median_s": "#), "{stdout}");
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(chart.contains("no data in this run"));
    std::fs::remove_file(&svg).ok();
    assert!(left.is_empty(), "segments left: {left:?}");
}

#[test]
fn bad_options_fail_with_a_message_and_run_nothing() {
    for (args, needle) in [
        (&["--only", "P9"][..], "unknown scenario"),
        (&["--max-size", "12T"][..], "unknown unit"),
        (&["--max-size", "0"][..], "between 1 byte"),
    ] {
        let (out, _) = bench(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
