//! Inspection for `pixgate ls` and `pixgate inspect`, and the creator liveness test.
//!
//! Named segments are found in `/dev/shm`; anonymous ones through the descriptors and
//! mappings of the caller's processes (`procfs`), an arena's slots by walking its
//! headers (`describe`). Everything is opened read-only and nothing is written; a
//! segment or process that goes away meanwhile is left out, never an error.

use nix::errno::Errno;

use super::describe::{self, Liveness, Opened};
use super::procfs::{ObjectId, Scan};
use super::{Backing, SegmentProblem, Transport, check_name};
use crate::error::Result;
use crate::header::{DType, Meta, RawHeader};

/// A process holding a descriptor of a segment's object: `pid:fd` in `pixgate ls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    /// The process.
    pub pid: u32,
    /// The descriptor's number in that process.
    pub fd: i32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.fd)
    }
}

/// What `pixgate ls` and `pixgate inspect` show about one segment.
///
/// Fields are `None` when they could not be read; `problem` then says why. A segment
/// that fails validation still shows its creator when its magic is intact.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The name of the segment's object, with its leading slash: the name in
    /// `/dev/shm` of a named segment, the `memfd` name of an anonymous one
    /// (docs/SEGMENT_FORMAT.md §2).
    pub name: String,
    /// What identifies the segment: its name, or for a slot of a pool arena at an
    /// offset other than 0, the name, `@` and the offset in lower-case hex
    /// (`/pxg-1a2b-0123456789abcdef@2000`; docs/PROTOCOL.md §5.7).
    pub key: String,
    /// Named (`/dev/shm`) or anonymous (`memfd`).
    pub transport: Transport,
    /// Where the segment's header starts in its object: 0, or a slot's offset in its
    /// arena (a multiple of 4096).
    pub offset: u64,
    /// Bytes the segment occupies: the object's size, or for a slot of an arena its
    /// header and data rounded up to a page (the rest of the object when the header
    /// cannot say). 0 when it could not be read.
    pub size: u64,
    /// The processes of this user that hold a descriptor of the object, by pid and
    /// descriptor, sorted.
    pub holders: Vec<Holder>,
    /// The processes of this user that map the object, sorted.
    pub mapped_by: Vec<u32>,
    /// The element type.
    pub dtype: Option<DType>,
    /// The array's shape.
    pub shape: Option<Vec<usize>>,
    /// The pid of the process that created it.
    pub creator_pid: Option<u32>,
    /// Whether that process still runs (same pid and start time).
    pub creator_alive: Option<bool>,
    /// The pid of the process that owns it (that will unlink a named segment).
    pub owner_pid: Option<u32>,
    /// The advisory state word ([`STATE_OWNED`](super::STATE_OWNED), …).
    pub state: Option<u32>,
    /// The generation counter.
    pub generation: Option<u64>,
    /// The metadata.
    pub meta: Option<Meta>,
    /// Why the segment is not usable, when it is not.
    pub problem: Option<String>,
    /// The fixed header fields as stored (also when they fail validation).
    pub header: Option<RawHeader>,
}

impl SegmentInfo {
    pub(super) fn unknown(
        name: &str,
        transport: Transport,
        size: u64,
        problem: Option<String>,
    ) -> SegmentInfo {
        SegmentInfo {
            name: name.to_string(),
            key: name.to_string(),
            transport,
            offset: 0,
            size,
            holders: Vec::new(),
            mapped_by: Vec::new(),
            dtype: None,
            shape: None,
            creator_pid: None,
            creator_alive: None,
            owner_pid: None,
            state: None,
            generation: None,
            meta: None,
            problem,
            header: None,
        }
    }
}

/// The longest key: a name of [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes, `@` and a
/// 64-bit offset in hex.
const MAX_KEY_LEN: usize = super::MAX_NAME_LEN + 1 + 16;

/// Describes one segment, found by its name, its key, or a unique prefix of either
/// (with the leading slash, at least `/pxg-`): a named segment in `/dev/shm`, an
/// anonymous object of a process of this user (its first segment), or a slot of an
/// arena (`name@offset`). A name or key that matches exactly wins over longer ones it
/// is a prefix of. Opens read-only, never writes or unlinks anything. Validation
/// failures are reported in [`SegmentInfo::problem`], not as errors.
///
/// # Errors
///
/// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with
/// [`SegmentProblem::NameInvalid`] when `name` cannot begin a segment key,
/// [`SegmentProblem::NotFound`] when no segment matches,
/// [`SegmentProblem::Ambiguous`] (listing the candidates) when several match, or
/// [`SegmentProblem::Os`] when the segment cannot be opened at all.
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    check_key_prefix(name).map_err(|p| p.at(name))?;
    let scan = Scan::run(&|object| {
        object.starts_with(name)
            || name
                .strip_prefix(object)
                .is_some_and(|r| r.starts_with('@'))
    });
    // Named segments are one per object: their key is their name.
    let mut candidates: Vec<(String, Option<SegmentInfo>)> =
        named_names(name).into_iter().map(|n| (n, None)).collect();
    let alive = &mut Liveness::default();
    for (id, seen) in scan.anonymous() {
        candidates.extend(
            describe::anonymous(id, seen, alive)
                .into_iter()
                .filter(|info| info.key.starts_with(name))
                .map(|info| (info.key.clone(), Some(info))),
        );
    }
    let exact = candidates.iter().filter(|(key, _)| key == name).count();
    if exact > 0 {
        candidates.retain(|(key, _)| key == name);
    }
    match candidates.len() {
        0 => Err(SegmentProblem::NotFound.at(name)),
        1 => match candidates.pop() {
            Some((_, Some(info))) => Ok(info),
            Some((key, None)) => describe_named(&key, &scan, alive),
            None => Err(SegmentProblem::NotFound.at(name)),
        },
        _ => {
            let mut keys: Vec<String> = candidates.into_iter().map(|(key, _)| key).collect();
            keys.sort();
            Err(SegmentProblem::Ambiguous { candidates: keys }.at(name))
        }
    }
}

/// Every pixgate segment of this user: the named ones in `/dev/shm` (names starting
/// `pxg-`) and the anonymous ones that processes of this user hold or map, each slot
/// of an arena on its own; sorted by key, each described as by [`inspect`]. Segments
/// that cannot be opened or read appear with a [`SegmentInfo::problem`]; segments and
/// processes that go away while the list is made are left out.
///
/// Only Linux has a directory of shared-memory objects and a `/proc` to scan; on other
/// platforms the list is empty.
pub fn list() -> Vec<SegmentInfo> {
    let scan = Scan::run(&|_| true);
    let alive = &mut Liveness::default();
    let mut out: Vec<SegmentInfo> = named_names("/")
        .into_iter()
        .filter_map(|name| match describe_named(&name, &scan, alive) {
            Ok(info) => Some(info),
            Err(e) => match e.kind() {
                crate::ErrorKind::Segment {
                    problem: SegmentProblem::NotFound,
                    ..
                } => None, // removed since the directory was read
                _ => Some(SegmentInfo::unknown(
                    &name,
                    Transport::Named,
                    0,
                    Some(e.to_string()),
                )),
            },
        })
        .collect();
    for (id, seen) in scan.anonymous() {
        out.extend(describe::anonymous(id, seen, alive));
    }
    out.sort_by(|a, b| a.key.cmp(&b.key).then(a.offset.cmp(&b.offset)));
    out
}

/// The names (`/pxg-…`) in `/dev/shm` that start with `prefix`, sorted. Without a
/// directory to read (not Linux), a complete valid name is taken as it is.
fn named_names(prefix: &str) -> Vec<String> {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|file| format!("/{file}"))
            .filter(|name| name.starts_with(super::NAME_PREFIX) && name.starts_with(prefix))
            .collect();
        names.sort();
        names
    }
    #[cfg(not(target_os = "linux"))]
    {
        if check_name(prefix).is_ok() {
            vec![prefix.to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Describes the named segment `name`, with the holders and mappers `scan` found.
fn describe_named(name: &str, scan: &Scan, alive: &mut Liveness) -> Result<SegmentInfo> {
    check_name(name).map_err(|p| p.at(name))?;
    let file = Backing::Shm.open(name, false).map_err(|p| p.at(name))?;
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => {
            let problem = super::io("fstat", e).to_string();
            return Ok(SegmentInfo::unknown(
                name,
                Transport::Named,
                0,
                Some(problem),
            ));
        }
    };
    let id = ObjectId::of(&meta);
    let mut info = describe::object(
        Opened {
            name,
            transport: Transport::Named,
            file,
            meta,
        },
        false,
        alive,
    )
    .into_iter()
    .next()
    .unwrap_or_else(|| SegmentInfo::unknown(name, Transport::Named, 0, None));
    if let Some(seen) = scan.get(&id) {
        info.holders.clone_from(&seen.holders);
        info.mapped_by.clone_from(&seen.mapped_by);
    }
    Ok(info)
}

/// Checks that `arg` can begin a segment key: `/pxg-`, then the beginning of
/// `<1–8 lower-case hex digits>-<16 lower-case hex digits>`, and only after a complete
/// name, `@` and up to 16 lower-case hex digits.
fn check_key_prefix(arg: &str) -> std::result::Result<(), SegmentProblem> {
    let bad = |reason: String| Err(SegmentProblem::NameInvalid { reason });
    if arg.len() > MAX_KEY_LEN {
        return bad(format!(
            "{} bytes, expected at most {MAX_KEY_LEN}",
            arg.len()
        ));
    }
    let Some(rest) = arg.strip_prefix(super::NAME_PREFIX) else {
        return bad(format!("expected it to start with {}", super::NAME_PREFIX));
    };
    let is_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let shape = "expected the beginning of /pxg-<pid in hex>-<16 hex digits>[@<offset in hex>]";
    let (name, offset) = match rest.split_once('@') {
        Some((name, offset)) => (name, Some(offset)),
        None => (rest, None),
    };
    let name_ok = match name.split_once('-') {
        None => name.len() <= 8 && is_hex(name),
        Some((pid, random)) => {
            (1..=8).contains(&pid.len())
                && random.len() <= 16
                && is_hex(pid)
                && is_hex(random)
                && (offset.is_none() || random.len() == 16)
        }
    };
    let offset_ok = offset.is_none_or(|o| o.len() <= 16 && is_hex(o));
    if name_ok && offset_ok {
        Ok(())
    } else {
        bad(shape.to_string())
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`, read after the last `)` so that a command name holding spaces or
/// parentheses cannot shift it). `None` when the process does not exist or the platform
/// has no `/proc`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// The state letter and start time from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
pub(super) fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Fields counted from 1; after ')' comes field 3 (state), so field 22 is 19 further.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(not(target_os = "linux"))]
pub(super) fn proc_stat(_pid: u32) -> Option<(char, u64)> {
    None
}

/// True when process `pid` exists (and is not a zombie) and, when `start` is not 0,
/// started at `start` clock ticks after boot, so a recycled pid does not count.
/// Where start times are unknown (no `/proc`), only existence is checked.
pub fn creator_alive(pid: u32, start: u64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw == 0 {
        return false;
    }
    if let Some((state, started)) = proc_stat(pid) {
        return state != 'Z' && state != 'X' && (start == 0 || started == start);
    }
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Ok(()) | Err(Errno::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_are_checked_before_anything_is_opened() {
        for ok in [
            "/pxg-",
            "/pxg-1",
            "/pxg-1a2b3c4d",
            "/pxg-1a2b-",
            "/pxg-1a2b-0123",
            "/pxg-1a2b-0123456789abcdef",
            "/pxg-1a2b-0123456789abcdef@",
            "/pxg-1a2b-0123456789abcdef@2000",
            "/pxg-12345678-0123456789abcdef@ffffffffffffffff",
        ] {
            assert_eq!(check_key_prefix(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "/",
            "/pxg",
            "pxg-1a2b",
            "/dev/shm/pxg-1a2b",
            "/../etc/passwd",
            "/pxg-1-short",
            "/pxg-ABC-0000000000000000",
            "/pxg-123456789",
            "/pxg--0123",
            "/pxg-1a2b-0123456789abcdef0",
            "/pxg-1a2b-0123-45",
            "/pxg-1a2b-0123@2000",
            "/pxg-1a2b-0123456789abcdef@2000@1",
            "/pxg-1a2b-0123456789abcdef@X",
            "/pxg-1a2b-0123456789abcdef@10000000000000000",
        ] {
            assert!(
                matches!(
                    check_key_prefix(bad),
                    Err(SegmentProblem::NameInvalid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inspect_refuses_a_bad_prefix_and_reports_a_missing_one() {
        let err = inspect("/tmp/x").unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
        let err = inspect("/pxg-0-00000000000000").unwrap_err();
        assert!(
            matches!(
                err.kind(),
                crate::ErrorKind::Segment {
                    problem: SegmentProblem::NotFound,
                    ..
                }
            ),
            "{err}"
        );
    }
}
