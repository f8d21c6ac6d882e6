//! Inspection for `pixgate ls` and `pixgate inspect`, and the creator liveness test.

use nix::errno::Errno;

use super::{
    Backing, SegmentProblem, atomic_u32, atomic_u64, check_file, check_name, copy_header, load_u32,
    load_u64, map_file, raw_creator, read_mapped,
};
use crate::error::Result;
use crate::header::{self, DType, Meta, OFF_GENERATION, OFF_OWNER_PID, OFF_STATE, RawHeader};

/// What `pixgate ls` and `pixgate inspect` show about one segment.
///
/// Fields are `None` when they could not be read; `problem` then says why. A segment
/// that fails validation still shows its creator when its magic is intact.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentInfo {
    /// The name, with its leading slash.
    pub name: String,
    /// The object's size in bytes (0 when it could not be read).
    pub size: u64,
    /// The element type.
    pub dtype: Option<DType>,
    /// The array's shape.
    pub shape: Option<Vec<usize>>,
    /// The pid of the process that created it.
    pub creator_pid: Option<u32>,
    /// Whether that process still runs (same pid and start time).
    pub creator_alive: Option<bool>,
    /// The pid of the process that will unlink it.
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
    fn unknown(name: &str, size: u64, problem: Option<String>) -> SegmentInfo {
        SegmentInfo {
            name: name.to_string(),
            size,
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

/// Describes the segment `name` (with its leading slash). Opens it read-only, never
/// writes or unlinks it. Validation failures are reported in
/// [`SegmentInfo::problem`], not as errors.
///
/// # Errors
///
/// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with
/// [`SegmentProblem::NameInvalid`], [`SegmentProblem::NotFound`] or
/// [`SegmentProblem::Os`] when the segment cannot be opened at all.
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    check_name(name).map_err(|p| p.at(name))?;
    let file = Backing::Shm.open(name, false).map_err(|p| p.at(name))?;
    let size = file.metadata().map_or(0, |m| m.len());
    let problem = |p: SegmentProblem| Some(p.to_string());
    if let Err(p) = check_file(&file) {
        return Ok(SegmentInfo::unknown(name, size, problem(p)));
    }
    let map = match map_file(&file, size, false) {
        Ok(map) => map,
        Err(p) => return Ok(SegmentInfo::unknown(name, size, problem(p))),
    };
    let raw = if size >= header::FIXED_LEN as u64 {
        let mut bytes = vec![0u8; header::FIXED_LEN];
        read_mapped(&map, 0, &mut bytes);
        RawHeader::decode(&bytes)
    } else {
        None
    };
    match copy_header(&map, 0, size).and_then(|copy| header::parse_header(&copy, size)) {
        Ok(fields) => {
            let alive = creator_alive(fields.creator_pid, fields.creator_start);
            Ok(SegmentInfo {
                name: name.to_string(),
                size,
                dtype: Some(fields.layout.dtype),
                shape: Some(fields.layout.shape.clone()),
                creator_pid: Some(fields.creator_pid),
                creator_alive: Some(alive),
                owner_pid: Some(load_u32(atomic_u32(&map, OFF_OWNER_PID))),
                state: Some(load_u32(atomic_u32(&map, OFF_STATE))),
                generation: Some(load_u64(atomic_u64(&map, OFF_GENERATION))),
                meta: Some(fields.meta),
                problem: None,
                header: raw,
            })
        }
        Err(p) => {
            let mut info = SegmentInfo::unknown(name, size, problem(p));
            info.header = raw;
            if let Some((pid, start)) = raw_creator(&map) {
                info.creator_pid = Some(pid);
                info.creator_alive = Some(creator_alive(pid, start));
            }
            Ok(info)
        }
    }
}

/// Every pixgate segment in `/dev/shm` (names starting `pxg-`), sorted by name, each
/// described as by [`inspect`]; segments that cannot be opened appear with a
/// [`SegmentInfo::problem`].
///
/// Only Linux has a directory of shared-memory objects to scan; on other platforms the
/// list is empty.
pub fn list() -> Vec<SegmentInfo> {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else {
            return Vec::new();
        };
        let mut names: Vec<(std::ffi::OsString, u64)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let size = e.metadata().map_or(0, |m| m.len());
                Some((e.file_name(), size))
            })
            .filter(|(n, _)| {
                n.as_encoded_bytes()
                    .starts_with(&super::NAME_PREFIX.as_bytes()[1..])
            })
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|(file, size)| {
                let name = format!("/{}", file.to_string_lossy());
                match inspect(&name) {
                    Ok(info) => Some(info),
                    Err(e) => match e.kind() {
                        crate::ErrorKind::Segment {
                            problem: SegmentProblem::NotFound,
                            ..
                        } => None, // removed since the directory was read
                        _ => Some(SegmentInfo::unknown(&name, size, Some(e.to_string()))),
                    },
                }
            })
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
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
