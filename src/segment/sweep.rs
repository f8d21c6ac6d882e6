//! The sweeper: removes segments whose creator (and owner) are gone, behind
//! `pixgate gc` and the sweep at gateway start.
//!
//! # Rationale
//!
//! Every process unlinks what it owns when it drops it and when it exits, but a process
//! killed with `SIGKILL` (or by the out-of-memory killer) runs no clean-up, and its
//! segments would hold their memory until reboot. The sweeper finds such segments by
//! the liveness token of `docs/SEGMENT_FORMAT.md` §5 and unlinks them.
//!
//! # What it never removes
//!
//! A sweep runs in every process that starts a gateway, next to other processes that
//! are creating and using segments at that moment, so it errs towards keeping:
//!
//! - a name that is not exactly `pxg-<pid hex, no leading zero>-<16 hex digits>`;
//! - anything that is not a regular file (a symlink, a FIFO, a directory), or that
//!   belongs to another uid: the directory entry is checked first (`lstat`), then the
//!   object is opened `O_NOFOLLOW | O_NONBLOCK` and checked again by `fstat` on the
//!   descriptor, which is what decides;
//! - a segment whose creator is alive: same pid, not a zombie, same start time;
//! - a segment whose owner (`owner_pid`, when it differs from the creator) is a running
//!   process. The header stores no start time for the owner, so a running process with
//!   that pid counts as the owner even if the pid was reused: a leak until that process
//!   ends is better than unlinking an array somebody uses;
//! - a segment whose name carries a pid other than the header's creator while a process
//!   with that pid runs (a header that disagrees with its name is not trusted to
//!   condemn it);
//! - a segment whose header cannot be read (being written, corrupt, too small, wrong
//!   mode) while the pid in its name, or the creator or owner pid of a header whose
//!   magic is intact, is any running process: its creator may be between `shm_open`
//!   and the version stamp, or its owner may be rewriting the metadata.
//!
//! # Limitations
//!
//! - Names are unlinked by path: between the check and the unlink another object could
//!   take the name. The device and inode are compared again just before the unlink,
//!   which leaves only a window of one system call, and a name holds 64 random bits.
//! - A segment moved by a process that dies before the receiver has stored its pid in
//!   `owner_pid` looks abandoned; a sweep in that window removes it and the receiver's
//!   open fails with "no such segment". Unlinking never unmaps: processes that already
//!   map a swept segment keep their memory until they unmap it.
//! - Only Linux has a directory of shared-memory objects (`/dev/shm`); elsewhere
//!   [`sweep`] finds nothing. [`sweep_in`] works on any directory.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;

use super::{
    Backing, SegmentProblem, atomic_u32, check_file, check_name, copy_header, load_u32, map_file,
    raw_creator,
};
use crate::error::{Error, Result};
use crate::header::{self, OFF_OWNER_PID};

/// One segment a sweep removed, or would remove in a dry run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// The name, with its leading slash.
    pub name: String,
    /// The object's size in bytes.
    pub size: u64,
    /// Why it was judged abandoned.
    pub reason: SweepReason,
}

/// Why a sweep judged a segment abandoned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SweepReason {
    /// No process has the header's creator pid (or only a zombie does), and the owner
    /// is the creator.
    #[error("creator pid {pid} is not running")]
    CreatorDead {
        /// The creator's pid.
        pid: u32,
    },
    /// A process has the creator's pid but started at another time: the pid was reused.
    #[error(
        "creator pid {pid} was reused: the creator started at tick {start}, pid {pid} now at tick {now}"
    )]
    PidReused {
        /// The creator's pid.
        pid: u32,
        /// The creator's start time from the header (clock ticks since boot).
        start: u64,
        /// The start time of the process that has the pid now.
        now: u64,
    },
    /// Ownership moved to another process, and neither it nor the creator runs.
    #[error("owner pid {owner} is not running, and creator pid {creator} is gone")]
    OwnerDead {
        /// The owner's pid.
        owner: u32,
        /// The creator's pid.
        creator: u32,
    },
    /// The header could not be read, and no process has the pid from the name.
    #[error("header unreadable ({problem}), and pid {pid} from the name is not running")]
    Unreadable {
        /// The pid from the name.
        pid: u32,
        /// Why the header could not be read.
        problem: SegmentProblem,
    },
}

impl SweepReason {
    /// A short stable code for the reason: `creator_dead`, `pid_reused`, `owner_dead`
    /// or `unreadable`.
    pub fn code(&self) -> &'static str {
        match self {
            SweepReason::CreatorDead { .. } => "creator_dead",
            SweepReason::PidReused { .. } => "pid_reused",
            SweepReason::OwnerDead { .. } => "owner_dead",
            SweepReason::Unreadable { .. } => "unreadable",
        }
    }
}

/// What one sweep did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// The segments removed (in a dry run: that would have been removed), by name.
    pub swept: Vec<Swept>,
    /// Segments that could not be examined or removed, each as a
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment). A segment that disappears
    /// while the sweep looks at it is not an error.
    pub failed: Vec<Error>,
}

/// Removes the pixgate segments in `/dev/shm` whose creator is dead (see the module
/// documentation for the rules and for what is never removed). With `dry_run`, removes
/// nothing and reports what it would remove.
///
/// On platforms other than Linux there is no directory of shared-memory objects to scan
/// and the report is empty.
///
/// # Errors
///
/// [`ErrorKind::Io`](crate::ErrorKind::Io) when `/dev/shm` cannot be read. Problems with
/// single segments are collected in [`SweepReport::failed`].
pub fn sweep(dry_run: bool) -> Result<SweepReport> {
    #[cfg(target_os = "linux")]
    {
        sweep_in(Path::new("/dev/shm"), dry_run)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dry_run;
        Ok(SweepReport::default())
    }
}

/// As [`sweep`], for segments made by [`Segment::create_in`](super::Segment::create_in)
/// in `dir` (a tmpfs or hugetlbfs directory).
///
/// # Errors
///
/// [`ErrorKind::Io`](crate::ErrorKind::Io) when `dir` cannot be read.
pub fn sweep_in(dir: &Path, dry_run: bool) -> Result<SweepReport> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let backing = Backing::Dir(dir.to_path_buf());
    let uid = nix::unistd::geteuid().as_raw();
    let mut report = SweepReport::default();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(|n| format!("/{n}")) else {
            continue;
        };
        let Some(name_pid) = name_pid(&name) else {
            continue;
        };
        // The entry itself (lstat): symlinks, FIFOs, directories and other users'
        // objects are never opened. `examine` checks again on the descriptor.
        if !entry
            .metadata()
            .is_ok_and(|m| m.file_type().is_file() && m.uid() == uid)
        {
            continue;
        }
        match examine(&backing, &name, name_pid, uid, dry_run) {
            Ok(Some(swept)) => report.swept.push(swept),
            Ok(None) => {}
            Err(problem) => report.failed.push(problem.at(&name)),
        }
    }
    report.swept.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(report)
}

/// The creator pid in a name of exactly the form `/pxg-<pid>-<16 hex digits>`, the pid
/// in lower-case hex without leading zeros.
fn name_pid(name: &str) -> Option<u32> {
    check_name(name).ok()?;
    let pid = name.strip_prefix(super::NAME_PREFIX)?.split_once('-')?.0;
    if pid.starts_with('0') {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

/// Looks at one segment and removes it when it is abandoned. `Ok(None)`: kept, or gone
/// meanwhile.
fn examine(
    backing: &Backing,
    name: &str,
    name_pid: u32,
    uid: u32,
    dry_run: bool,
) -> std::result::Result<Option<Swept>, SegmentProblem> {
    // O_NOFOLLOW | O_NONBLOCK, read-only: a symlink put in place since the directory was
    // read fails (ELOOP), a FIFO neither blocks nor passes the checks below.
    let file = match backing.open(name, false) {
        Ok(file) => file,
        Err(SegmentProblem::NotFound) => return Ok(None),
        Err(SegmentProblem::Os { .. }) if replaced_by_symlink(backing, name) => return Ok(None),
        Err(p) => return Err(p),
    };
    let stat = file.metadata().map_err(|e| super::io("fstat", e))?;
    if !stat.file_type().is_file() || stat.uid() != uid {
        return Ok(None);
    }
    let header = read_pids(&file);
    let Some(reason) = verdict(name_pid, header, probe) else {
        return Ok(None);
    };
    if !dry_run {
        let Backing::Dir(dir) = backing else {
            return Ok(None); // sweeps always go through a directory
        };
        // The name must still lead to the object that was judged.
        match std::fs::symlink_metadata(Backing::path(dir, name)) {
            Ok(now) if now.dev() == stat.dev() && now.ino() == stat.ino() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(super::io("lstat", e)),
        }
        match backing.unlink(name) {
            Ok(()) => {}
            Err(SegmentProblem::NotFound) => return Ok(None),
            Err(p) => return Err(p),
        }
    }
    Ok(Some(Swept {
        name: name.to_string(),
        size: stat.len(),
        reason,
    }))
}

/// True when `name` is now a symlink (the open failed with ELOOP for that reason).
fn replaced_by_symlink(backing: &Backing, name: &str) -> bool {
    let Backing::Dir(dir) = backing else {
        return false;
    };
    std::fs::symlink_metadata(Backing::path(dir, name)).is_ok_and(|m| m.file_type().is_symlink())
}

/// The liveness fields of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderPids {
    creator: u32,
    start: u64,
    owner: u32,
}

/// A header that did not validate: why, and the creator and owner pids as stored when
/// its magic is intact (else none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unreadable {
    problem: SegmentProblem,
    raw_pids: Vec<u32>,
}

/// Validates the header as an opener does (mode, size, stamp, every field) and returns
/// its liveness fields, the owner read atomically.
fn read_pids(file: &File) -> std::result::Result<HeaderPids, Unreadable> {
    let unreadable = |problem| Unreadable {
        problem,
        raw_pids: Vec::new(),
    };
    let size = check_file(file).map_err(unreadable)?;
    let map = map_file(file, size, false).map_err(unreadable)?;
    match copy_header(&map, 0, size).and_then(|copy| header::parse_header(&copy, size)) {
        Ok(fields) => Ok(HeaderPids {
            creator: fields.creator_pid,
            start: fields.creator_start,
            owner: load_u32(atomic_u32(&map, OFF_OWNER_PID)),
        }),
        Err(problem) => {
            let raw_pids = match raw_creator(&map, 0) {
                Some((creator, _)) => vec![creator, load_u32(atomic_u32(&map, OFF_OWNER_PID))],
                None => Vec::new(),
            };
            Err(Unreadable { problem, raw_pids })
        }
    }
}

/// A process as the sweeper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Process {
    /// No process has the pid, or only a zombie does.
    Gone,
    /// A process runs with the pid; its start time when `/proc` tells it.
    Running { start: Option<u64> },
}

fn probe(pid: u32) -> Process {
    let Ok(raw) = i32::try_from(pid) else {
        return Process::Gone;
    };
    if raw <= 0 {
        return Process::Gone;
    }
    if let Some((state, start)) = super::info::proc_stat(pid) {
        return if state == 'Z' || state == 'X' {
            Process::Gone
        } else {
            Process::Running { start: Some(start) }
        };
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => Process::Running { start: None },
        Err(_) => Process::Gone,
    }
}

/// Why a segment is abandoned, or `None` to keep it. The rules of the module
/// documentation, with `probe` telling which processes run.
fn verdict(
    name_pid: u32,
    header: std::result::Result<HeaderPids, Unreadable>,
    probe: impl Fn(u32) -> Process,
) -> Option<SweepReason> {
    let running = |pid: u32| pid != 0 && matches!(probe(pid), Process::Running { .. });
    let h = match header {
        Ok(h) => h,
        Err(Unreadable { problem, raw_pids }) => {
            if std::iter::once(name_pid).chain(raw_pids).any(running) {
                return None;
            }
            return Some(SweepReason::Unreadable {
                pid: name_pid,
                problem,
            });
        }
    };
    let creator_gone = match probe(h.creator) {
        Process::Gone => SweepReason::CreatorDead { pid: h.creator },
        Process::Running { start: Some(now) } if h.start != 0 && now != h.start => {
            SweepReason::PidReused {
                pid: h.creator,
                start: h.start,
                now,
            }
        }
        Process::Running { .. } => return None,
    };
    if name_pid != h.creator && running(name_pid) {
        return None;
    }
    if h.owner != 0 && h.owner != h.creator {
        if running(h.owner) {
            return None;
        }
        return Some(SweepReason::OwnerDead {
            owner: h.owner,
            creator: h.creator,
        });
    }
    Some(creator_gone)
}

/// Sweeps `/dev/shm` once per process, on a thread of its own, ignoring the outcome:
/// called at gateway start, where a sweep must cost nothing and never fail the start.
pub(crate) fn sweep_once_in_background() {
    #[cfg(target_os = "linux")]
    {
        // `PIXGATE_SWEEP=0` turns it off (anonymous segments need no sweeping; tests
        // prove that nothing is left without it).
        if std::env::var_os("PIXGATE_SWEEP").is_some_and(|v| v == "0") {
            return;
        }
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("pixgate-sweep".to_string())
                .spawn(|| {
                    let _ = sweep(false);
                });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_PID: u32 = 100;

    /// Pids 100..=199 run; 150 started at tick 7, the others at tick 5; 300 is a
    /// process whose start time is unknown; everything else is gone.
    fn fake(pid: u32) -> Process {
        match pid {
            150 => Process::Running { start: Some(7) },
            100..=199 => Process::Running { start: Some(5) },
            300 => Process::Running { start: None },
            _ => Process::Gone,
        }
    }

    type Header = std::result::Result<HeaderPids, Unreadable>;

    fn header(creator: u32, start: u64, owner: u32) -> Header {
        Ok(HeaderPids {
            creator,
            start,
            owner,
        })
    }

    fn unreadable(raw_pids: Vec<u32>) -> Header {
        Err(Unreadable {
            problem: SegmentProblem::NotInitialised,
            raw_pids,
        })
    }

    #[test]
    fn verdicts_follow_the_liveness_rules() {
        use SweepReason as R;
        let dead = |pid| Some(R::CreatorDead { pid });
        let cases: Vec<(&str, u32, Header, Option<R>)> = vec![
            ("live creator", 100, header(100, 5, 100), None),
            (
                "live creator, start unknown in header",
                100,
                header(100, 0, 100),
                None,
            ),
            (
                "live creator, start unknown in /proc",
                300,
                header(300, 9, 300),
                None,
            ),
            ("dead creator", 400, header(400, 5, 400), dead(400)),
            ("dead creator, owner 0", 400, header(400, 5, 0), dead(400)),
            (
                "reused pid",
                150,
                header(150, 5, 150),
                Some(R::PidReused {
                    pid: 150,
                    start: 5,
                    now: 7,
                }),
            ),
            ("dead creator, live owner", 400, header(400, 5, 120), None),
            (
                "dead creator, owner with unknown start",
                400,
                header(400, 5, 300),
                None,
            ),
            (
                "dead creator, dead owner",
                400,
                header(400, 5, 500),
                Some(R::OwnerDead {
                    owner: 500,
                    creator: 400,
                }),
            ),
            (
                "reused creator, dead owner",
                150,
                header(150, 5, 500),
                Some(R::OwnerDead {
                    owner: 500,
                    creator: 150,
                }),
            ),
            (
                "header disagrees with a live name pid",
                NAME_PID,
                header(400, 5, 400),
                None,
            ),
            (
                "header disagrees with a dead name pid",
                401,
                header(400, 5, 400),
                dead(400),
            ),
            (
                "unreadable, live name pid",
                NAME_PID,
                unreadable(vec![]),
                None,
            ),
            (
                "unreadable, live raw creator",
                400,
                unreadable(vec![120, 0]),
                None,
            ),
            (
                "unreadable, live raw owner",
                400,
                unreadable(vec![400, 130]),
                None,
            ),
            (
                "unreadable, everyone gone",
                400,
                unreadable(vec![401, 402]),
                Some(R::Unreadable {
                    pid: 400,
                    problem: SegmentProblem::NotInitialised,
                }),
            ),
        ];
        for (what, name_pid, header, expected) in cases {
            assert_eq!(verdict(name_pid, header, fake), expected, "{what}");
        }
    }

    #[test]
    fn dead_creator_with_pid_zero_is_kept_only_while_the_name_pid_runs() {
        // Pid 0 is nobody: a header that claims it is judged by the name's pid.
        assert_eq!(
            verdict(400, header(0, 5, 0), fake),
            Some(SweepReason::CreatorDead { pid: 0 })
        );
    }

    #[test]
    fn names_must_match_exactly() {
        for (name, pid) in [
            ("/pxg-1a2b-0123456789abcdef", Some(0x1a2b)),
            ("/pxg-ffffffff-0123456789abcdef", Some(u32::MAX)),
            ("/pxg-01a2b-0123456789abcdef", None),
            ("/pxg-0-0123456789abcdef", None),
            ("/pxg-1A2B-0123456789abcdef", None),
            ("/pxg-1a2b-0123456789abcde", None),
            ("/pxg-1a2b-0123456789abcdef0", None),
            ("/pxg-123456789-0123456789abcdef", None),
            ("/pxg--0123456789abcdef", None),
            ("/pxh-1a2b-0123456789abcdef", None),
            ("/pxg-1a2b-0123456789abcdef.tmp", None),
            ("/other", None),
        ] {
            assert_eq!(name_pid(name), pid, "{name}");
        }
    }

    #[test]
    fn reasons_have_codes_and_messages() {
        let reason = SweepReason::PidReused {
            pid: 42,
            start: 5,
            now: 7,
        };
        assert_eq!(reason.code(), "pid_reused");
        assert_eq!(
            reason.to_string(),
            "creator pid 42 was reused: the creator started at tick 5, pid 42 now at tick 7"
        );
    }
}
