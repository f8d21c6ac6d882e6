//! Gateways with real CPython workers: spawn, every spec key, handshake, lifecycle, death.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{T, gateway, process_alive, python, spec, wait_gone};
use pixgate::{ErrorKind, Gateway, HelperSource, OutputMode, Value};

fn ask(gw: &Gateway, source: &str) -> Value {
    let ch = gw.remote_exec(source).expect("remote_exec");
    ch.receive_timeout(T).expect("receive")
}

#[test]
fn spawn_handshake_and_polite_exit() {
    let gw = gateway();
    let info = gw.info().clone();
    assert_eq!(info.pid, gw.pid());
    assert_eq!(info.protocol, pixgate::PROTOCOL_VERSION);
    assert_eq!(info.helper_version, pixgate::HELPER_VERSION);
    assert_eq!(info.helper_source, HelperSource::Bootstrap);
    let v = ask(&gw, "import sys\nchannel.send(sys.version.split()[0])");
    assert_eq!(v.as_str(), Some(info.python_version.as_str()));
    let np = ask(
        &gw,
        "try:\n    import numpy\n    channel.send(numpy.__version__)\nexcept ImportError:\n    channel.send(None)",
    );
    assert_eq!(np.as_str(), info.numpy_version.as_deref());
    let pid = gw.pid();
    let exit = gw.exit(T).expect("exit");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_eq!(exit.signal, None);
    assert!(!process_alive(pid));
    // exit is idempotent and reports the same status.
    assert_eq!(gw.exit(T).unwrap(), exit);
    assert!(!gw.is_alive());
}

#[test]
fn spec_keys_reach_the_worker() {
    let dir = std::env::temp_dir().canonicalize().unwrap();
    let gw = Gateway::builder(&spec(&format!(
        "chdir={}//env:PXG_A=one//env:PXG_B=x=y//id=speckeys//nice=3//dont_write_bytecode",
        dir.display()
    )))
    .output(OutputMode::Capture)
    .spawn()
    .unwrap();
    assert_eq!(gw.id(), "speckeys");
    let v = ask(
        &gw,
        "import os, sys\nchannel.send((os.getcwd(), os.environ['PXG_A'], os.environ['PXG_B'], os.nice(0), sys.dont_write_bytecode, os.environ.get('PIXGATE_GATEWAY_ID')))",
    );
    let t = v.as_seq().unwrap();
    assert_eq!(t[0].as_str(), Some(dir.to_str().unwrap()));
    assert_eq!(t[1].as_str(), Some("one"));
    assert_eq!(t[2].as_str(), Some("x=y"));
    assert!(t[3].as_i64().unwrap() >= 3, "nice {:?}", t[3]);
    assert_eq!(t[4].as_bool(), Some(true));
    assert_eq!(t[5].as_str(), Some("speckeys"));
}

#[test]
fn python_key_takes_interpreter_arguments() {
    let gw = Gateway::builder(&format!("popen//python={} -X dev", python()))
        .output(OutputMode::Capture)
        .spawn()
        .unwrap();
    let v = ask(&gw, "import sys\nchannel.send(sys.flags.dev_mode)");
    assert_eq!(v.as_bool(), Some(true));
}

#[test]
fn default_interpreter_comes_from_pixgate_python() {
    // The test environment sets PIXGATE_PYTHON (see the Makefile); a spec without
    // python= must use it.
    let Ok(p) = std::env::var("PIXGATE_PYTHON") else {
        eprintln!("skipped: PIXGATE_PYTHON is not set");
        return;
    };
    let gw = Gateway::builder("popen")
        .output(OutputMode::Capture)
        .spawn()
        .unwrap();
    let exe = ask(&gw, "import sys\nchannel.send(sys.executable)");
    assert_eq!(
        std::fs::canonicalize(exe.as_str().unwrap()).unwrap(),
        std::fs::canonicalize(p).unwrap()
    );
}

const BATTERY: &str = r#"
import pixgate, sys, threading
values = [None, True, 1, -2**40, 2**70, 1.5, 2j, "ä", b"\x00", [1, (2,)], {"k": {1, 2}}, frozenset([3])]
out = {
    "version": pixgate.__version__,
    "protocol": pixgate.PROTOCOL_VERSION,
    "dumps": [pixgate.dumps(v) for v in values],
    "roundtrip": pixgate.loads(pixgate.dumps(values)) == values,
    "errors": [c.__name__ for c in (pixgate.Cancelled, pixgate.RemoteError, pixgate.LoadError, pixgate.TimeoutError)],
    "bases": [issubclass(pixgate.LoadError, ValueError), issubclass(pixgate.TimeoutError, TimeoutError)],
    "echo": channel.receive(timeout=10),
}
try:
    pixgate.loads(b"\x02U")
except pixgate.LoadError as e:
    out["reserved"] = type(e).__name__
channel.send(out)
"#;

#[test]
fn bootstrapped_and_installed_helpers_behave_alike() {
    let installed = Command::new(python())
        .args([
            "-c",
            "import pixgate, sys; sys.exit(0 if getattr(pixgate, '__file__', None) else 1)",
        ])
        .env_remove("PYTHONPATH")
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        // `make test` installs the package and sets PIXGATE_TEST_STRICT: there, a missing
        // package is a failure, not a reason to skip.
        assert!(
            std::env::var_os("PIXGATE_TEST_STRICT").is_none(),
            "the pixgate package is not installed in {}",
            python()
        );
        eprintln!(
            "skipped: the pixgate package is not installed in {}",
            python()
        );
        return;
    }
    let mut results = Vec::new();
    for helper in ["bootstrap", "installed"] {
        let gw = Gateway::builder(&spec(&format!("helper={helper}")))
            .output(OutputMode::Capture)
            .spawn()
            .unwrap();
        let expected = if helper == "installed" {
            HelperSource::Installed
        } else {
            HelperSource::Bootstrap
        };
        assert_eq!(gw.info().helper_source, expected);
        let origin = ask(
            &gw,
            "import pixgate\nchannel.send(getattr(pixgate, '__file__', None))",
        );
        assert_eq!(origin.is_none(), helper == "bootstrap", "{origin}");
        let ch = gw.remote_exec(BATTERY).unwrap();
        ch.send("ping").unwrap();
        results.push(ch.receive_timeout(T).unwrap());
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(
        results[0].get("roundtrip").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(results[0].get("echo").and_then(Value::as_str), Some("ping"));
    assert_eq!(
        results[0].get("reserved").and_then(Value::as_str),
        Some("LoadError")
    );
}

#[test]
fn missing_interpreter_is_a_clear_error() {
    let err = Gateway::spawn("popen//python=/nonexistent/python3.99").unwrap_err();
    match err.kind() {
        ErrorKind::InterpreterNotFound { path, .. } => assert_eq!(path, "/nonexistent/python3.99"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("/nonexistent/python3.99"), "{err}");
}

fn script(name: &str, body: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pixgate-test-{}-{name}", std::process::id()));
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn handshake_that_never_comes_times_out() {
    let hang = script("hang.sh", "#!/bin/sh\nexec sleep 30\n");
    let t = Instant::now();
    let err = Gateway::builder(&format!("popen//python={}", hang.display()))
        .handshake_timeout(Duration::from_millis(500))
        .output(OutputMode::Discard)
        .spawn()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    std::fs::remove_file(hang).ok();
}

#[test]
fn interpreter_that_dies_at_once_reports_its_status_and_stderr() {
    let bad = script("bad.sh", "#!/bin/sh\necho 'not a python' >&2\nexit 7\n");
    let err = Gateway::builder(&format!("popen//python={}", bad.display()))
        .output(OutputMode::Discard)
        .spawn()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Handshake { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("exit code 7"), "{text}");
    assert!(text.contains("not a python"), "{text}");
    std::fs::remove_file(bad).ok();
}

#[test]
fn drop_ends_the_worker() {
    let gw = gateway();
    let pid = gw.pid();
    drop(gw);
    assert!(wait_gone(pid, T).is_some());
}

#[test]
fn exit_kills_a_worker_that_does_not_answer() {
    let gw = gateway();
    common::stop_process(gw.pid());
    let t = Instant::now();
    let exit = gw.exit(Duration::from_millis(300)).unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn worker_killed_mid_receive_names_the_signal() {
    let gw = gateway();
    let ch = gw.remote_exec("import time\ntime.sleep(30)").unwrap();
    let pid = gw.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
    let err = ch.receive_timeout(T).unwrap_err();
    killer.join().unwrap();
    let exit = err.worker_exit().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.pid, pid);
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    // Later operations fail the same way, at once.
    let again = gw.remote_exec("pass").unwrap_err();
    assert!(
        matches!(again.kind(), ErrorKind::WorkerDied(_)),
        "{again:?}"
    );
}

#[test]
fn worker_exit_carries_code_and_stderr_tail() {
    let gw = gateway();
    let ch = gw
        .remote_exec("import os, sys\nos.write(2, b'first line\\nlast words\\n')\nos._exit(3)")
        .unwrap();
    let err = ch.receive_timeout(T).unwrap_err();
    let exit = err.worker_exit().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.stderr_tail, ["first line", "last words"]);
    assert!(err.to_string().contains("last words"), "{err}");
}

#[test]
fn hard_cancel_kills_the_worker_and_fails_pending_receives() {
    let gw = gateway();
    let ch = gw
        .remote_exec("import time\nwhile True:\n    time.sleep(1)")
        .unwrap();
    let exit = gw.kill().unwrap();
    assert_eq!(exit.signal, Some(9));
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::GatewayClosed { .. }),
        "{err:?}"
    );
}

#[test]
fn worker_of_a_killed_host_exits_promptly() {
    // The host is the pixgate binary running remote code that reports its pid and sleeps.
    let (mut host, line) = common::host_running(
        "orphan",
        "import os, time\nchannel.send(os.getpid())\ntime.sleep(60)",
    );
    let worker: u32 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    assert!(process_alive(worker));
    host.kill().unwrap();
    host.wait().unwrap();
    let gone = wait_gone(worker, Duration::from_secs(5));
    assert!(gone.is_some(), "worker {worker} outlived its host");
    eprintln!(
        "worker exited {:?} after its host was killed",
        gone.unwrap()
    );
    assert!(gone.unwrap() < Duration::from_secs(1), "{gone:?}");
}

#[test]
fn a_burst_of_termination_signals_ends_the_worker_at_once() {
    // Linux sends the parent-death signal again each time a worker is handed to another
    // thread of its dying host, so the later ones land inside the cleanup the first began.
    // The gateway keeps the exited worker unreaped until `exit`, so the pid cannot be reused
    // while the loop signals it.
    let gw = gateway();
    // Running remote code: the worker has threads besides the main one, as in real use.
    let _ch = gw.remote_exec("import time\ntime.sleep(60)").unwrap();
    let pid = nix::unistd::Pid::from_raw(gw.pid() as i32);
    let start = Instant::now();
    let mut sent = 0;
    while gw.is_alive() && start.elapsed() < T {
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            sent += 1;
        }
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros(2) {
            std::hint::spin_loop();
        }
    }
    let took = start.elapsed();
    let exit = gw.exit(T).unwrap();
    eprintln!("worker ended {took:?} after the first of {sent} SIGTERMs: {exit:?}");
    assert_eq!(exit.code, Some(128 + 15), "{exit:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
#[cfg(target_os = "linux")]
fn a_termination_signal_delivered_to_another_thread_runs_the_cleanup() {
    // Python runs signal handlers in the main thread only; the kernel may deliver a
    // process's SIGTERM to any of its threads, and then nothing wakes the main thread
    // unless the signal's wake-up descriptor does.
    let gw = gateway();
    let ch = gw
        .remote_exec("import time\nchannel.send(1)\ntime.sleep(60)")
        .unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(1));
    let tid = common::sigterm_another_thread(gw.pid()).expect("a thread besides the main one");
    common::wait_until(|| !gw.is_alive(), "the worker to end on SIGTERM");
    let exit = gw.exit(T).unwrap();
    eprintln!("worker ended after SIGTERM to thread {tid}: {exit:?}");
    assert_eq!(exit.code, Some(128 + 15), "{exit:?}");
}

#[test]
fn many_gateways_start_and_stop_in_parallel() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let gw = gateway();
                let v = ask(&gw, &format!("channel.send({i} * 10)"));
                assert_eq!(v.as_i64(), Some(i * 10));
                gw.exit(T).unwrap().code
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(0));
    }
}

#[test]
fn gateway_spawned_from_a_short_lived_thread_outlives_it() {
    // Linux's parent-death signal follows the forking thread; the worker must not die
    // when the thread that asked for it ends.
    let gw = std::thread::spawn(gateway).join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(gw.is_alive());
    assert_eq!(ask(&gw, "channel.send(1)").as_i64(), Some(1));
}

#[test]
fn a_spinning_gateway_tells_its_worker_and_answers_in_order() {
    let gw = Gateway::builder(&spec(""))
        .spin(Duration::from_micros(200))
        .spawn()
        .unwrap();
    let spin = ask(
        &gw,
        "import pixgate._worker as w\nchannel.send(w._gateway.spin)",
    );
    assert_eq!(spin.as_f64(), Some(0.0002));
    let ch = gw
        .remote_exec("for x in channel:\n    channel.send(x + 1)")
        .unwrap();
    for i in 0..200i64 {
        ch.send(i).unwrap();
        assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(i + 1));
    }
    // A receive that waits longer than the spin still gets its item.
    let slow = gw
        .remote_exec("import time\nchannel.receive()\ntime.sleep(0.05)\nchannel.send('late')")
        .unwrap();
    slow.send(0).unwrap();
    assert_eq!(slow.receive_timeout(T).unwrap().as_str(), Some("late"));
    ch.close().unwrap();
    gw.exit(T).unwrap();
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_code_cache_keeps_a_few_compilations_of_each_module() {
    let base = std::env::temp_dir().join(format!("pxg-codeprune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("pixgate");
    // Five earlier compilations of one module (oldest first), one of another module and
    // another interpreter, and a file that is not a compilation at all.
    let plant = format!(
        "import os, sys, time\nd = {dir:?}\nos.makedirs(d, 0o700)\n\
         tag = sys.implementation.cache_tag\nnow = time.time()\n\
         names = ['pixgate._errors-%s-%016x.pyc' % (tag, i) for i in range(5)]\n\
         names += ['pixgate._wire-other-0000000000000001.pyc', 'notes.txt']\n\
         for i, n in enumerate(names):\n    p = os.path.join(d, n)\n    \
         os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))\n    \
         os.utime(p, (now - 1000 + i, now - 1000 + i))\nprint(tag)",
        dir = dir.display().to_string(),
    );
    let out = Command::new(python())
        .args(["-c", &plant])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tag = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let gw = Gateway::spawn(&spec(&format!("env:XDG_CACHE_HOME={}", base.display()))).unwrap();
    assert_eq!(ask(&gw, "channel.send(7)").as_i64(), Some(7));
    gw.exit(T).unwrap();
    let names: Vec<String> = cache_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let errors: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("pixgate._errors-{tag}-")))
        .collect();
    // The new compilation and the three newest earlier ones.
    assert_eq!(errors.len(), 4, "{names:?}");
    for i in 0..2 {
        assert!(
            !names.contains(&format!("pixgate._errors-{tag}-{i:016x}.pyc")),
            "{names:?}"
        );
    }
    for i in 2..5 {
        assert!(
            names.contains(&format!("pixgate._errors-{tag}-{i:016x}.pyc")),
            "{names:?}"
        );
    }
    for kept in ["pixgate._wire-other-0000000000000001.pyc", "notes.txt"] {
        assert!(names.iter().any(|n| n == kept), "{kept} kept: {names:?}");
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_bootstrapped_helper_is_compiled_once_into_a_private_cache() {
    let base = std::env::temp_dir().join(format!("pxg-codecache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let spec_with = |extra: &str| spec(&format!("env:XDG_CACHE_HOME={}{extra}", base.display()));
    let gw = Gateway::spawn(&spec_with("")).unwrap();
    assert_eq!(ask(&gw, "channel.send(7)").as_i64(), Some(7));
    gw.exit(T).unwrap();
    let dir = base.join("pixgate");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    let files = cache_files(&dir);
    assert!(files.len() >= 3, "compiled modules cached: {files:?}");
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // The next start loads them: a cached module that says so is the one that runs.
    let errors = files
        .iter()
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pixgate._errors-")
        })
        .expect("pixgate._errors cached");
    let mark = format!(
        "import marshal, sys\np = {:?}\nb = open(p, 'rb').read()\nc = marshal.loads(b[16:])\n\
         src = open({:?}).read() + '\\nFROM_CACHE = True\\n'\n\
         open(p, 'wb').write(b[:16] + marshal.dumps(compile(src, c.co_filename, 'exec')))",
        errors.display(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python-helper/pixgate/_errors.py"
        ),
    );
    let st = Command::new(python()).args(["-c", &mark]).status().unwrap();
    assert!(st.success());
    let gw = Gateway::spawn(&spec_with("")).unwrap();
    let r = ask(
        &gw,
        "import pixgate._errors as e\nchannel.send(getattr(e, 'FROM_CACHE', False))",
    );
    assert_eq!(r.as_bool(), Some(true), "loaded from the cache");
    gw.exit(T).unwrap();

    // A damaged file is compiled anew and rewritten; the worker does not mind.
    std::fs::write(errors, b"not a code object").unwrap();
    let gw = Gateway::spawn(&spec_with("")).unwrap();
    let r = ask(
        &gw,
        "import pixgate._errors as e\nchannel.send(getattr(e, 'FROM_CACHE', False))",
    );
    assert_eq!(r.as_bool(), Some(false));
    gw.exit(T).unwrap();
    assert!(std::fs::read(errors).unwrap().len() > 100, "rewritten");

    // A cache directory others can read is not used; neither is any with
    // dont_write_bytecode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(errors, b"not a code object").unwrap();
    let gw = Gateway::spawn(&spec_with("")).unwrap();
    assert_eq!(ask(&gw, "channel.send(1)").as_i64(), Some(1));
    gw.exit(T).unwrap();
    assert_eq!(
        std::fs::read(errors).unwrap(),
        b"not a code object",
        "left alone"
    );
    let _ = std::fs::remove_dir_all(&base);
    let gw = Gateway::spawn(&spec_with("//dont_write_bytecode")).unwrap();
    assert_eq!(ask(&gw, "channel.send(1)").as_i64(), Some(1));
    gw.exit(T).unwrap();
    assert!(
        cache_files(&base.join("pixgate")).is_empty(),
        "nothing written"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_builder_takes_an_interpreter_path_with_spaces_over_the_spec() {
    let dir = std::env::temp_dir().join(format!("pixgate test {} python", std::process::id()));
    std::fs::create_dir_all(dir.join("my bin")).unwrap();
    let link = dir.join("my bin").join("python 3");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(python(), &link).unwrap();
    // The spec names an interpreter that does not exist: the builder's path wins.
    let gw = Gateway::builder("popen//python=/nonexistent/python")
        .python(&link)
        .handshake_timeout(T)
        .spawn()
        .expect("a worker from a path with spaces");
    let exe = ask(&gw, "import sys\nchannel.send(sys.executable)");
    assert_eq!(exe.as_str(), Some(link.to_str().unwrap()));
    gw.exit(T).unwrap();
    // A path that does not exist is the interpreter that was not found, named whole.
    let missing = dir.join("no such python");
    let err = Gateway::builder("popen")
        .python(&missing)
        .handshake_timeout(T)
        .spawn()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InterpreterNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no such python"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
