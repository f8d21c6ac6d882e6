//! Reading an object's segments for `pixgate ls` and `pixgate inspect`, read-only: the
//! header at offset 0, and for a pool arena every slot's (docs/SEGMENT_FORMAT.md §3.3).
//!
//! Each header is validated as when a segment is opened (§8): the object's owner, mode
//! and size; for an anonymous object its seals (step 0), so that nobody can shrink it
//! under the mapping; then a private copy of the header. An arena's slots follow each
//! other at `header_len + data_len` rounded up to a page. The walk goes on while the
//! header found there is stamped and carries the pool-slot flag, and ends at an
//! unstamped one. A slot that was never made is a hole in the object (its range is
//! reserved only when the slot is made); holes are found with `SEEK_DATA` and skipped
//! without touching them, because a read fault on a hole would give the object a page.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

use memmap2::MmapRaw;

use super::info::SegmentInfo;
use super::procfs::{ObjectId, Seen};
use super::{
    SegmentProblem, Transport, atomic_u32, atomic_u64, check_metadata, copy_header, io, load_u32,
    load_u64, map_file, raw_creator, read_mapped,
};
use crate::header::{
    self, FIXED_LEN, FLAG_POOL_SLOT, MAGIC, OFF_GENERATION, OFF_OWNER_PID, OFF_STATE, PAGE,
    RawHeader,
};
use crate::segment::creator_alive;

/// Creators' liveness, looked up once per creator (pid and start time) in one listing:
/// a process with a thousand arrays costs one read of its `/proc/PID/stat`, not a
/// thousand.
#[derive(Debug, Default)]
pub(super) struct Liveness(HashMap<(u32, u64), bool>);

impl Liveness {
    fn of(&mut self, pid: u32, start: u64) -> bool {
        *self
            .0
            .entry((pid, start))
            .or_insert_with(|| creator_alive(pid, start))
    }
}

/// An object opened read-only, and what it is.
pub(super) struct Opened<'a> {
    /// `/pxg-…`.
    pub(super) name: &'a str,
    pub(super) transport: Transport,
    pub(super) file: File,
    /// `fstat` of `file`, taken once.
    pub(super) meta: std::fs::Metadata,
}

/// The segments of an anonymous object found in `/proc`: opened through one of its
/// holders' descriptors (or, failing those, a mapper's `map_files` entry), then read as
/// [`object`] reads it. Empty when the object is gone (every process that held it ended
/// or let it go since the scan); one entry with a problem when it exists but cannot be
/// opened.
pub(super) fn anonymous(id: &ObjectId, seen: &Seen, alive: &mut Liveness) -> Vec<SegmentInfo> {
    let mut infos = match open(id, seen) {
        Open::File(file, meta) => object(
            Opened {
                name: &seen.name,
                transport: Transport::Anonymous,
                file,
                meta,
            },
            true,
            alive,
        ),
        Open::Gone => return Vec::new(),
        Open::Refused(problem) => {
            let problem = if seen.fd_paths.is_empty() {
                format!("mapped only, and its mappings cannot be opened: {problem}")
            } else {
                format!("cannot be opened through /proc: {problem}")
            };
            vec![SegmentInfo::unknown(
                &seen.name,
                Transport::Anonymous,
                0,
                Some(problem),
            )]
        }
    };
    for info in &mut infos {
        info.holders.clone_from(&seen.holders);
        info.mapped_by.clone_from(&seen.mapped_by);
    }
    infos
}

enum Open {
    File(File, std::fs::Metadata),
    Gone,
    Refused(SegmentProblem),
}

/// Opens the object `id` read-only through the first of its paths that still leads to
/// it. A path whose process or descriptor is gone, or whose descriptor number now names
/// another file, is passed over.
fn open(id: &ObjectId, seen: &Seen) -> Open {
    let mut refused = None;
    for path in seen.fd_paths.iter().chain(&seen.map_paths) {
        // O_NONBLOCK: whatever the link leads to now, opening it must not wait.
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => match file.metadata() {
                Ok(meta) if ObjectId::of(&meta) == *id => return Open::File(file, meta),
                _ => {}
            },
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {}
            Err(e) => refused = Some(io("open", e)),
        }
    }
    refused.map_or(Open::Gone, Open::Refused)
}

/// The segments of an opened object, read-only: the one at offset 0, and with `arena`
/// the slots that follow it when it is a pool slot. A check that fails gives one entry
/// with the problem.
pub(super) fn object(o: Opened<'_>, arena: bool, alive: &mut Liveness) -> Vec<SegmentInfo> {
    let size = o.meta.len();
    let fail = |p: SegmentProblem| {
        vec![SegmentInfo::unknown(
            o.name,
            o.transport,
            size,
            Some(p.to_string()),
        )]
    };
    if let Err(p) = check_metadata(&o.meta) {
        return fail(p);
    }
    if o.transport == Transport::Anonymous {
        if let Err(p) = super::anon::check_sealed(&o.file) {
            return fail(p);
        }
    }
    let map = match map_file(&o.file, size, false) {
        Ok(map) => map,
        Err(p) => return fail(p),
    };
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut stride: Option<u64> = None;
    while offset
        .checked_add(PAGE as u64)
        .is_some_and(|end| end <= size)
    {
        if arena {
            match next_data(&o.file, offset) {
                Some(data) if data == offset => {}
                found => match (found, stride) {
                    // Slot k starts at k × stride: go on at the slot the data is in.
                    (Some(data), Some(s)) => {
                        offset = (data / s * s).max(offset + s);
                        continue;
                    }
                    _ => {
                        if out.is_empty() {
                            out.push(SegmentInfo::unknown(
                                o.name,
                                o.transport,
                                size,
                                Some(SegmentProblem::NotInitialised.to_string()),
                            ));
                        }
                        break;
                    }
                },
            }
            if offset > 0 && never_stamped(&map, offset) {
                break;
            }
        }
        let (mut info, step) = at(&map, &o, offset, size, alive);
        if arena && step.pool_slot {
            info.size = step.len.or(stride).unwrap_or(size - offset);
        }
        out.push(info);
        if !arena || !step.pool_slot {
            break;
        }
        let Some(len) = step.len.or(stride) else {
            break;
        };
        stride = Some(len);
        offset += len; // ≤ size: len was checked against the bytes left
    }
    out
}

/// How a header found at some offset continues the walk.
struct Step {
    /// It carries the pool-slot flag.
    pool_slot: bool,
    /// Its header and data rounded up to a page, when plausible: at least a page, a
    /// multiple of one, inside the object.
    len: Option<u64>,
}

impl Step {
    fn new(flags: u32, header_len: u32, data_len: u64, left: u64) -> Step {
        let page = PAGE as u64;
        let len = u64::from(header_len)
            .checked_add(data_len)
            .and_then(|n| n.checked_next_multiple_of(page))
            .filter(|&n| header_len as u64 % page == 0 && n >= page && n <= left);
        Step {
            pool_slot: flags & FLAG_POOL_SLOT != 0,
            len,
        }
    }
}

/// Describes the segment whose header is at `offset` of the object `o` (mapped whole in
/// `map`, `size` bytes).
fn at(
    map: &MmapRaw,
    o: &Opened<'_>,
    offset: u64,
    size: u64,
    alive: &mut Liveness,
) -> (SegmentInfo, Step) {
    // Fits: offset + a page ≤ size, the mapping's length.
    let base = offset as usize;
    let left = size - offset;
    let raw = if left >= FIXED_LEN as u64 {
        let mut bytes = vec![0u8; FIXED_LEN];
        read_mapped(map, base, &mut bytes);
        RawHeader::decode(&bytes)
    } else {
        None
    };
    let parsed = copy_header(map, base, left).and_then(|copy| header::parse_header(&copy, left));
    let (mut info, step) = match parsed {
        Ok(fields) => {
            let step = Step::new(fields.flags(), fields.header_len, fields.data_len, left);
            let mut info = SegmentInfo::unknown(o.name, o.transport, size, None);
            info.dtype = Some(fields.layout.dtype);
            info.shape = Some(fields.layout.shape.clone());
            info.creator_pid = Some(fields.creator_pid);
            info.creator_alive = Some(alive.of(fields.creator_pid, fields.creator_start));
            info.owner_pid = Some(load_u32(atomic_u32(map, base + OFF_OWNER_PID)));
            info.state = Some(load_u32(atomic_u32(map, base + OFF_STATE)));
            info.generation = Some(load_u64(atomic_u64(map, base + OFF_GENERATION)));
            info.meta = Some(fields.meta);
            (info, step)
        }
        Err(p) => {
            let mut info = SegmentInfo::unknown(o.name, o.transport, size, Some(p.to_string()));
            if let Some((pid, start)) = raw_creator(map, base) {
                info.creator_pid = Some(pid);
                info.creator_alive = Some(alive.of(pid, start));
            }
            // A slot whose header is being rewritten keeps its magic and its lengths.
            let step = match &raw {
                Some(h) if h.magic_ok() => Step::new(h.flags, h.header_len, h.data_len, left),
                _ => Step {
                    pool_slot: false,
                    len: None,
                },
            };
            (info, step)
        }
    };
    info.offset = offset;
    if offset != 0 {
        info.key = format!("{}@{offset:x}", o.name);
    }
    info.header = raw;
    (info, step)
}

/// True when the header at `offset` was never written: no magic, version 0 (the
/// unmade slots of an arena reserved whole read as zeros).
fn never_stamped(map: &MmapRaw, offset: u64) -> bool {
    let mut head = [0u8; 12];
    read_mapped(map, offset as usize, &mut head);
    head[..8] != MAGIC && head[8..] == [0; 4]
}

/// Where the object's next byte of data (not a hole) is, from `offset` on; `None` when
/// only holes follow. A file system that cannot tell counts everything as data.
#[cfg(target_os = "linux")]
fn next_data(file: &File, offset: u64) -> Option<u64> {
    let Ok(at) = i64::try_from(offset) else {
        return None;
    };
    match nix::unistd::lseek(file, at, nix::unistd::Whence::SeekData) {
        Ok(data) => u64::try_from(data).ok(),
        Err(nix::errno::Errno::ENXIO) => None,
        Err(_) => Some(offset),
    }
}

#[cfg(not(target_os = "linux"))]
fn next_data(_file: &File, offset: u64) -> Option<u64> {
    Some(offset)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{AnonObject, STATE_LENT, STATE_OWNED, Segment, atomic_u32, list, new_name};
    use super::*;
    use crate::header::{DType, Layout, Meta, OFF_VERSION};

    /// What `list` says about the object `name`, by key.
    fn listed(name: &str) -> Vec<SegmentInfo> {
        list().into_iter().filter(|i| i.name == name).collect()
    }

    fn keys(infos: &[SegmentInfo]) -> Vec<String> {
        infos.iter().map(|i| i.key.clone()).collect()
    }

    #[test]
    fn an_arena_is_walked_slot_by_slot_and_holes_are_skipped() {
        // 100 data bytes: a slot is the header page and one data page.
        let arena = Segment::arena(100, 5, false).unwrap();
        let name = arena.obj.name().to_string();
        let mut s0 = arena.slot(0).unwrap();
        let _s1 = arena.slot(1).unwrap();
        let layout = Layout::c_order(DType::F32, &[5, 5]).unwrap();
        s0.reuse_as(&layout, &Meta::default()).unwrap();
        let infos = listed(&name);
        assert_eq!(keys(&infos), [name.clone(), format!("{name}@2000")]);
        assert_eq!(infos[0].dtype, Some(DType::F32));
        assert_eq!(infos[0].shape, Some(vec![5, 5]));
        assert_eq!(infos[1].dtype, Some(DType::U8));
        assert_eq!(infos[1].shape, Some(vec![100]));
        assert!(infos.iter().all(|i| i.size == 8192 && i.problem.is_none()));
        assert_eq!((infos[0].offset, infos[1].offset), (0, 0x2000));
        assert!(infos.iter().all(|i| i.transport == Transport::Anonymous));

        // Slot 3 made, slot 2 not (a pool skips an index whose making failed): the
        // hole between them is passed over, not read.
        let _s3 = arena.slot(3).unwrap();
        assert_eq!(
            keys(&listed(&name)),
            [name.clone(), format!("{name}@2000"), format!("{name}@6000")]
        );
        assert_eq!(next_data(&arena.obj.file().unwrap(), 0x4000), Some(0x6000));
        assert_eq!(next_data(&arena.obj.file().unwrap(), 0x8000), None);
    }

    #[test]
    fn an_arena_reserved_whole_ends_at_its_first_unstamped_slot() {
        let arena = Segment::arena(100, 4, true).unwrap();
        let name = arena.obj.name().to_string();
        let _s0 = arena.slot(0).unwrap();
        let _s1 = arena.slot(1).unwrap();
        assert_eq!(keys(&listed(&name)), [name.clone(), format!("{name}@2000")]);
    }

    #[test]
    fn a_slot_being_rewritten_is_reported_and_the_walk_goes_on() {
        let arena = Segment::arena(100, 3, false).unwrap();
        let name = arena.obj.name().to_string();
        let _s0 = arena.slot(0).unwrap();
        let s1 = arena.slot(1).unwrap();
        let _s2 = arena.slot(2).unwrap();
        // The owner rewriting slot 1's header stores 0 in its version first.
        let version = atomic_u32(&s1.map, s1.base + OFF_VERSION);
        version.store(0, Ordering::Release);
        let infos = listed(&name);
        version.store(1, Ordering::Release);
        assert_eq!(keys(&infos).len(), 3, "{infos:?}");
        assert_eq!(
            infos[1].problem.as_deref(),
            Some("header not initialised (version 0)")
        );
        assert!(infos[0].problem.is_none() && infos[2].problem.is_none());
    }

    #[test]
    fn the_state_word_shows_what_the_owner_handed_out() {
        let seg = Segment::create_anonymous(
            &Layout::c_order(DType::U16, &[3, 4]).unwrap(),
            &Meta::default(),
        )
        .unwrap();
        let word = seg.state_word().unwrap();
        assert_eq!(listed(seg.name())[0].state, Some(STATE_OWNED));
        word.set(STATE_LENT);
        let info = &listed(seg.name())[0];
        assert_eq!(info.state, Some(STATE_LENT));
        assert_eq!(info.key, seg.name());
        assert_eq!(info.size, 8192);
        assert_eq!(info.shape, Some(vec![3, 4]));
        assert_eq!(info.owner_pid, Some(std::process::id()));
    }

    #[test]
    fn an_unsealed_object_is_reported_without_being_mapped() {
        // A half-made anonymous segment: created and sized, not yet sealed.
        let name = new_name();
        let obj = AnonObject::create(&name, 8192).unwrap();
        let infos = listed(&name);
        assert_eq!(infos.len(), 1, "{infos:?}");
        let problem = infos[0].problem.as_deref().unwrap_or_default();
        assert!(problem.starts_with("descriptor not sealed"), "{problem}");
        assert_eq!(infos[0].header, None);
        assert_eq!(infos[0].holders[0].pid, std::process::id());
        drop(obj);
    }

    #[test]
    fn an_object_only_mapped_is_read_through_map_files_where_that_is_allowed() {
        let seg =
            Segment::create_anonymous(&Layout::c_order(DType::U8, &[3]).unwrap(), &Meta::default())
                .unwrap();
        let name = seg.name().to_string();
        let scan = super::super::procfs::Scan::run(&|n| n == name);
        let (id, found) = scan.anonymous().next().expect("found");
        // As if nobody held a descriptor: only the mapping leads to it.
        let mut seen = Seen::new(Transport::Anonymous, name.clone());
        seen.map_paths.clone_from(&found.map_paths);
        assert_eq!(seen.map_paths.len(), 1, "{found:?}");
        let infos = anonymous(id, &seen, &mut Liveness::default());
        assert_eq!(infos.len(), 1, "{infos:?}");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(infos[0].problem, None);
            assert_eq!(infos[0].shape, Some(vec![3]));
        } else {
            let problem = infos[0].problem.as_deref().unwrap_or_default();
            assert!(problem.starts_with("mapped only"), "{problem}");
        }
    }

    #[test]
    fn an_object_whose_holders_went_away_is_left_out() {
        let mut seen = Seen::new(Transport::Anonymous, new_name());
        seen.fd_paths.push("/proc/4294967295/fd/3".into());
        seen.map_paths
            .push("/proc/4294967295/map_files/1000-2000".into());
        let id = ObjectId::of(&std::fs::metadata("/").unwrap());
        let alive = &mut Liveness::default();
        assert_eq!(anonymous(&id, &seen, alive), Vec::new());
        // A path that now leads to another file is passed over too.
        seen.fd_paths = vec!["/proc/self/fd/0".into()];
        seen.map_paths.clear();
        assert_eq!(anonymous(&id, &seen, alive), Vec::new());
    }
}
