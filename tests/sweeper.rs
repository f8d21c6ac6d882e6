//! The sweeper with real processes: segments of a creator killed with `kill -9` are
//! removed by `pixgate gc` and by a gateway start; segments of live processes, of live
//! owners, and everything that is not exactly a pixgate segment of this user are kept.
//!
//! Tests that touch /dev/shm run one at a time (each sweep sees the others' segments);
//! the rest sweep private directories. None asserts anything about segments it did
//! not make.
#![cfg(target_os = "linux")]

mod common;

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, pixgate_ok, python, serial, spec, text};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use pixgate::segment::{self, Segment, SweepReason, SweepReport};
use pixgate::{DType, Layout, Meta};

/// Header offsets from docs/SEGMENT_FORMAT.md, written out independently of the crate.
const CREATOR_PID: u64 = 60;
const CREATOR_START: u64 = 64;
const OWNER_PID: u64 = 84;
const RESERVED: u64 = 92;

/// A pid no process can have: above the largest `pid_max` Linux allows (2^22).
const NO_SUCH_PID: u32 = 0x7fff_fff0;

// ----------------------------------------------------------------------------------
// Processes

/// The test interpreter with this tree's helper first on its path.
fn python_command(source: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.args(["-c", source])
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/python-helper"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child` at most `limit`; kills it and fails when it overruns.
fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if t.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!("process {} ran past {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stdout of a finished child, all of it (the pipe is at EOF once it has ended).
fn stdout_of(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut out).expect("read stdout");
    }
    out
}

/// A Python process that creates a segment, prints its name and kills itself with
/// SIGKILL, so that no clean-up runs. Returns the name and the dead creator's pid.
fn segment_of_a_killed_creator() -> (String, u32) {
    let mut child = python_command(
        "import os, pixgate._segment as s\n\
         seg = s.create('<u2', (3, 4))\n\
         print(seg.name, flush=True)\n\
         os.kill(os.getpid(), 9)",
    )
    .spawn()
    .expect("start python");
    let pid = child.id();
    let status = wait_for(&mut child, T);
    let name = stdout_of(&mut child).trim().to_string();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}: {name}");
    assert!(
        name.starts_with(&format!("/pxg-{pid:x}-")),
        "{name:?} from pid {pid}"
    );
    assert!(in_shm(&name), "{name} missing right after its creator died");
    (name, pid)
}

/// A Python process that creates a segment, prints its name, and exits normally
/// (unlinking it) when its stdin closes.
fn segment_of_a_live_creator() -> (Child, String) {
    let mut child = python_command(
        "import sys, pixgate._segment as s\n\
         seg = s.create('<f4', (8,))\n\
         print(seg.name, flush=True)\n\
         sys.stdin.read()",
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("start python");
    let mut line = Vec::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let t = Instant::now();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert!(t.elapsed() < T, "no name from the live creator");
        match stdout.read(&mut byte).expect("read") {
            0 => panic!("live creator ended early: {}", text(&line)),
            _ => line.push(byte[0]),
        }
    }
    (child, text(&line).trim().to_string())
}

fn in_shm(name: &str) -> bool {
    Path::new("/dev/shm")
        .join(name.trim_start_matches('/'))
        .exists()
}

/// Writes `bytes` at `offset` of a segment in /dev/shm, as another process could.
fn poke_shm(name: &str, offset: u64, bytes: &[u8]) {
    nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty())
        .map(File::from)
        .expect("shm_open")
        .write_all_at(bytes, offset)
        .expect("pwrite");
}

/// The line of a `gc` table that names `name`.
fn line_naming<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

// ----------------------------------------------------------------------------------
// /dev/shm, one test at a time

#[test]
fn gc_removes_the_segment_of_a_killed_creator_and_dry_run_only_lists_it() {
    let _serial = serial();
    let (name, pid) = segment_of_a_killed_creator();
    let reason = format!("creator pid {pid} is not running");

    let dry = pixgate_ok(&["gc", "--dry-run"]);
    let line = line_naming(&dry, &name).unwrap_or_else(|| panic!("{name} not listed:\n{dry}"));
    assert!(line.ends_with(&reason), "{line}");
    assert!(line.contains(" 8.0 KiB "), "{line}");
    assert!(
        dry.lines()
            .last()
            .unwrap_or_default()
            .starts_with("would remove ")
    );
    assert!(in_shm(&name), "--dry-run removed {name}");

    let json = pixgate_ok(&["gc", "--dry-run", "--json"]);
    assert!(json.contains("\"dry_run\": true"), "{json}");
    let object = json
        .lines()
        .find(|l| l.contains(&format!("\"name\": \"{name}\"")))
        .unwrap_or_else(|| panic!("{name} missing:\n{json}"));
    assert!(object.contains("\"reason\": \"creator_dead\""), "{object}");
    assert!(
        object.contains(&format!("\"message\": \"{reason}\"")),
        "{object}"
    );
    assert!(in_shm(&name), "--dry-run --json removed {name}");

    let removed = pixgate_ok(&["gc"]);
    let line =
        line_naming(&removed, &name).unwrap_or_else(|| panic!("{name} not listed:\n{removed}"));
    assert!(line.ends_with(&reason), "{line}");
    let count = removed.lines().last().unwrap_or_default();
    assert!(
        count.starts_with("removed ") && !count.starts_with("removed 0 "),
        "{count}"
    );
    assert!(!in_shm(&name), "gc left {name}");

    let again = pixgate_ok(&["gc", "--json"]);
    assert!(!again.contains(&name), "{again}");
    assert!(again.contains("\"dry_run\": false"), "{again}");
    assert_no_segments();
}

#[test]
fn a_gateway_start_removes_the_segment_of_a_killed_creator() {
    let _serial = serial();
    let (name, _) = segment_of_a_killed_creator();
    // A fresh host process: the sweep runs once per process, on its own thread. The
    // remote code waits (bounded) until the name is gone and says whether it went.
    let path = format!("/dev/shm{name}");
    let source = format!(
        "import os, time\n\
         t = time.monotonic()\n\
         while os.path.exists({path:?}) and time.monotonic() - t < 15:\n    time.sleep(0.01)\n\
         channel.send(not os.path.exists({path:?}))"
    );
    let stdout = pixgate_ok(&[
        "exec",
        "--timeout",
        "30",
        "--spec",
        &spec("id=sweep"),
        &source,
    ]);
    assert_eq!(stdout.trim(), "True", "{name} outlived a gateway start");
    assert!(!in_shm(&name));
    assert_no_segments();
}

#[test]
fn segments_of_live_creators_are_kept() {
    let _serial = serial();
    let (mut child, theirs) = segment_of_a_live_creator();
    let ours = Segment::create(
        &Layout::c_order(DType::U8, &[16]).expect("layout"),
        &Meta::default(),
    )
    .expect("create");

    for args in [&["gc", "--dry-run"][..], &["gc"], &["gc", "--json"]] {
        let stdout = pixgate_ok(args);
        for name in [theirs.as_str(), ours.name()] {
            assert!(
                !stdout.contains(name),
                "{args:?} would remove {name}:\n{stdout}"
            );
            assert!(in_shm(name), "{args:?} removed {name}");
        }
    }
    let report = segment::sweep(false).expect("sweep");
    for name in [theirs.as_str(), ours.name()] {
        assert!(report.swept.iter().all(|s| s.name != name), "{report:?}");
        assert!(in_shm(name), "sweep removed {name}");
    }

    drop(child.stdin.take()); // the creator exits and unlinks its segment
    assert!(wait_for(&mut child, T).success());
    assert!(!in_shm(&theirs), "{theirs} outlived its creator's exit");
    drop(ours);
    assert_no_segments();
}

#[test]
fn a_segment_handed_to_a_live_owner_is_kept_until_the_owner_is_gone() {
    let _serial = serial();
    let (name, creator) = segment_of_a_killed_creator();
    // Ownership moved to this (live) process: the creator's death does not condemn it.
    poke_shm(&name, OWNER_PID, &std::process::id().to_le_bytes());
    let stdout = pixgate_ok(&["gc"]);
    assert!(line_naming(&stdout, &name).is_none(), "{stdout}");
    assert!(in_shm(&name), "gc removed a segment whose owner runs");

    // The owner is gone too.
    poke_shm(&name, OWNER_PID, &NO_SUCH_PID.to_le_bytes());
    let stdout = pixgate_ok(&["gc"]);
    let line = line_naming(&stdout, &name).unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.ends_with(&format!(
            "owner pid {NO_SUCH_PID} is not running, and creator pid {creator} is gone"
        )),
        "{line}"
    );
    assert!(!in_shm(&name));
    assert_no_segments();
}

// ----------------------------------------------------------------------------------
// Private directories

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pixgate-sweeper-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name.trim_start_matches('/'))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A segment name with `pid` and a fixed random part.
fn name_for(pid: u32, tag: u8) -> String {
    format!(
        "/pxg-{pid:x}-{:016x}",
        0x0123_4567_89ab_cd00u64 | u64::from(tag)
    )
}

/// A valid segment in `dir`, made by the library, then renamed to `name` and its
/// creator and owner fields set to `pid` (start time unchanged).
fn planted(dir: &TempDir, name: &str, pid: u32) {
    let seg = Segment::create_in(
        &dir.0,
        &Layout::c_order(DType::U16, &[3, 4]).expect("layout"),
        &Meta::default(),
    )
    .expect("create_in");
    seg.set_unlink_on_drop(false);
    std::fs::rename(dir.file(seg.name()), dir.file(name)).expect("rename");
    drop(seg);
    poke(&dir.file(name), CREATOR_PID, &pid.to_le_bytes());
    poke(&dir.file(name), OWNER_PID, &pid.to_le_bytes());
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .write_all_at(bytes, offset)
        .expect("pwrite");
}

/// A sweep of `dir` on another thread, bounded by the test timeout.
fn sweep_dir(dir: &TempDir, dry_run: bool) -> SweepReport {
    let path = dir.0.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(segment::sweep_in(&path, dry_run));
    });
    let report = rx
        .recv_timeout(T)
        .expect("sweep finished in time")
        .expect("sweep");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    report
}

fn swept_names(report: &SweepReport) -> Vec<&str> {
    report.swept.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn a_live_pid_with_another_start_time_is_a_reused_pid() {
    let dir = TempDir::new();
    let layout = Layout::c_order(DType::U8, &[64]).expect("layout");
    let kept = Segment::create_in(&dir.0, &layout, &Meta::default()).expect("create_in");
    let reused = Segment::create_in(&dir.0, &layout, &Meta::default()).expect("create_in");
    let pid = std::process::id();
    let start = segment::process_start_time(pid).expect("own start time");
    // The header now describes a process with this pid that started one tick earlier.
    poke(
        &dir.file(reused.name()),
        CREATOR_START,
        &(start - 1).to_le_bytes(),
    );
    let expected = SweepReason::PidReused {
        pid,
        start: start - 1,
        now: start,
    };

    let dry = sweep_dir(&dir, true);
    assert_eq!(swept_names(&dry), [reused.name()]);
    assert_eq!(dry.swept[0].reason, expected);
    assert_eq!(dry.swept[0].size, 8192);
    assert!(dir.file(reused.name()).exists(), "a dry run removed it");

    let report = sweep_dir(&dir, false);
    assert_eq!(swept_names(&report), [reused.name()]);
    assert_eq!(report.swept[0].reason, expected);
    assert!(!dir.file(reused.name()).exists());
    assert!(
        dir.file(kept.name()).exists(),
        "the live creator's segment went"
    );
    assert!(sweep_dir(&dir, false).swept.is_empty());
    drop((kept, reused));
}

#[test]
fn symlinks_fifos_foreign_names_and_other_users_files_are_never_removed() {
    let dir = TempDir::new();
    let outside = TempDir::new();
    // The control: an abandoned segment, removed.
    let control = name_for(NO_SUCH_PID, 0);
    planted(&dir, &control, NO_SUCH_PID);
    // Byte-for-byte copies of abandoned segments under names that are not exactly
    // pixgate's.
    let foreign = [
        "other-file".to_string(),
        format!("pxg-{NO_SUCH_PID:x}-0123456789abcde"),
        format!("pxg-0{NO_SUCH_PID:x}-0123456789abcdef"),
        format!("pxg-{NO_SUCH_PID:X}-0123456789abcdef"),
        format!("pxg-{NO_SUCH_PID:x}-0123456789ABCDEF"),
        format!("pxg-{NO_SUCH_PID:x}-0123456789abcdef.bak"),
        format!(".pxg-{NO_SUCH_PID:x}-0123456789abcdef"),
    ];
    let bytes = std::fs::read(dir.file(&control)).expect("read");
    for name in &foreign {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.file(name))
            .and_then(|mut f| f.write_all(&bytes))
            .expect("copy");
    }
    // A symlink with a pixgate name to an abandoned segment elsewhere.
    let target = name_for(NO_SUCH_PID, 1);
    planted(&outside, &target, NO_SUCH_PID);
    let link = name_for(NO_SUCH_PID, 2);
    std::os::unix::fs::symlink(outside.file(&target), dir.file(&link)).expect("symlink");
    // A FIFO with a pixgate name: opening it for reading would block without O_NONBLOCK.
    let fifo = name_for(NO_SUCH_PID, 3);
    nix::unistd::mkfifo(&dir.file(&fifo), Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
    // A directory with a pixgate name.
    let subdir = name_for(NO_SUCH_PID, 4);
    std::fs::create_dir(dir.file(&subdir)).expect("mkdir");
    // An abandoned segment of another user.
    let root = nix::unistd::geteuid().is_root();
    let other_users = name_for(NO_SUCH_PID, 5);
    if root {
        planted(&dir, &other_users, NO_SUCH_PID);
        std::os::unix::fs::chown(dir.file(&other_users), Some(65534), Some(65534)).expect("chown");
    } else {
        eprintln!("not root: the other user's segment is not tested");
    }

    for dry_run in [true, false] {
        let report = sweep_dir(&dir, dry_run);
        assert_eq!(
            swept_names(&report),
            [control.as_str()],
            "dry run {dry_run}"
        );
        assert_eq!(
            report.swept[0].reason,
            SweepReason::CreatorDead { pid: NO_SUCH_PID }
        );
        assert_eq!(dir.file(&control).exists(), dry_run);
    }
    for name in foreign.iter().chain([&link, &fifo, &subdir]) {
        assert!(
            std::fs::symlink_metadata(dir.file(name)).is_ok(),
            "{name} was removed"
        );
    }
    assert!(
        outside.file(&target).exists(),
        "the symlink's target was removed"
    );
    assert!(
        sweep_dir(&outside, true).swept.len() == 1,
        "the target is abandoned"
    );
    if root {
        assert!(
            dir.file(&other_users).exists(),
            "another user's file was removed"
        );
        // Given back to this user, the same file is removed: only its owner kept it.
        std::os::unix::fs::chown(dir.file(&other_users), Some(0), Some(0)).expect("chown");
        assert_eq!(swept_names(&sweep_dir(&dir, false)), [other_users.as_str()]);
    }
}

#[test]
fn an_unreadable_header_is_judged_by_the_pids_that_may_still_write_it() {
    let dir = TempDir::new();
    let pid = std::process::id();
    let zeros = vec![0u8; 4096];
    let write = |name: &str, bytes: &[u8]| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.file(name))
            .and_then(|mut f| f.write_all(bytes))
            .expect("write");
    };
    // Not yet stamped (all zeros), by a live creator: it may be mid-creation.
    let writing = name_for(pid, 0);
    write(&writing, &zeros);
    // Empty, by a live creator (between shm_open and ftruncate).
    let empty = name_for(pid, 1);
    write(&empty, &[]);
    // Not stamped, and nobody has the pid in the name.
    let abandoned = name_for(NO_SUCH_PID, 2);
    write(&abandoned, &zeros);
    // Corrupt (reserved word set) with a dead creator but a live owner in the header.
    let corrupt_owned = name_for(NO_SUCH_PID, 3);
    planted(&dir, &corrupt_owned, NO_SUCH_PID);
    poke(&dir.file(&corrupt_owned), OWNER_PID, &pid.to_le_bytes());
    poke(&dir.file(&corrupt_owned), RESERVED, &7u32.to_le_bytes());
    // Group-readable: refused by openers, judged by the name's dead pid.
    let open_mode = name_for(NO_SUCH_PID, 4);
    planted(&dir, &open_mode, NO_SUCH_PID);
    std::fs::set_permissions(dir.file(&open_mode), Permissions::from_mode(0o640)).expect("chmod");

    let report = sweep_dir(&dir, false);
    assert_eq!(
        swept_names(&report),
        [abandoned.as_str(), open_mode.as_str()]
    );
    assert!(
        matches!(
            &report.swept[0].reason,
            SweepReason::Unreadable { pid, problem: pixgate::SegmentProblem::NotInitialised }
                if *pid == NO_SUCH_PID
        ),
        "{:?}",
        report.swept[0]
    );
    assert!(
        report.swept[1]
            .reason
            .to_string()
            .starts_with("header unreadable (mode 0o100640"),
        "{}",
        report.swept[1].reason
    );
    for name in [&writing, &empty, &corrupt_owned] {
        assert!(dir.file(name).exists(), "{name} was removed");
    }
}

#[test]
fn sweeping_a_missing_directory_is_an_io_error() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing");
    let e = segment::sweep_in(&missing, true).expect_err("a missing directory");
    assert!(matches!(e.kind(), pixgate::ErrorKind::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("missing"), "{e}");
}
