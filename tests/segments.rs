//! Segments in real shared memory: creation, opening, validation of every header
//! field, permissions, ownership, inspection, and ENOSPC on a small tmpfs.
//!
//! The tests run one at a time (they share this process's pid prefix, and each ends
//! by checking that no segment of this process is left in /dev/shm).

mod common;

use std::fs::{File, Permissions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::assert_no_segments;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use pixgate::segment::{self, STATE_LENT, STATE_SHARED, Segment, SegmentProblem};
use pixgate::{DType, ErrorKind, Layout, Meta, Value};

/// Header offsets from docs/SEGMENT_FORMAT.md, written out independently of the crate.
const VERSION: u64 = 8;
const HEADER_LEN: u64 = 12;
const DATA_LEN: u64 = 16;
const NBYTES: u64 = 24;
const DTYPE: u64 = 32;
const ITEMSIZE: u64 = 48;
const NDIM: u64 = 52;
const FLAGS: u64 = 56;
const CREATOR_PID: u64 = 60;
const CREATOR_START: u64 = 64;
const GENERATION: u64 = 72;
const STATE: u64 = 80;
const OWNER_PID: u64 = 84;
const META_LEN: u64 = 88;
const RESERVED: u64 = 92;
const SHAPE: u64 = 96;
const STRIDES: u64 = 352;
const META: u64 = 608;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn problem(e: &pixgate::Error) -> &SegmentProblem {
    match e.kind() {
        ErrorKind::Segment { problem, .. } => problem,
        other => panic!("expected a segment error, got {other:?}"),
    }
}

fn u16_segment() -> Segment {
    Segment::create(
        &Layout::c_order(DType::U16, &[3, 4, 5]).unwrap(),
        &Meta::default(),
    )
    .unwrap()
}

fn meta_5d() -> Meta {
    Meta {
        dims: Some(["t", "z", "c", "y", "x"].map(String::from).to_vec()),
        scale: Some(vec![1.0, 0.5, 1.0, 0.1, 0.1]),
        units: Some(["s", "um", "", "um", "um"].map(String::from).to_vec()),
        channel_names: Some(vec!["gfp".into()]),
        name: Some("stack".into()),
        attrs: vec![("na".into(), Value::Float(1.4))],
    }
}

/// A second, independent read-write handle on the object, as another process has.
fn raw(name: &str) -> File {
    nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty())
        .map(File::from)
        .expect("shm_open")
}

fn poke(name: &str, offset: u64, bytes: &[u8]) {
    raw(name).write_all_at(bytes, offset).expect("pwrite");
}

fn peek(name: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    raw(name).read_exact_at(&mut buf, offset).expect("pread");
    buf
}

fn exists(name: &str) -> bool {
    nix::sys::mman::shm_open(name, OFlag::O_RDONLY, Mode::empty()).is_ok()
}

#[test]
fn create_then_open_reads_the_same_fields() {
    let _g = serial();
    let layout = Layout::c_order(DType::F32, &[2, 3, 1, 4, 5]).unwrap();
    let a = Segment::create(&layout, &meta_5d()).unwrap();
    let prefix = format!("/pxg-{:x}-", std::process::id());
    assert!(
        a.name().starts_with(&prefix) && a.name().len() == prefix.len() + 16,
        "{}",
        a.name()
    );
    assert!(a.is_writable() && a.unlinks_on_drop());
    let b = Segment::open(a.name(), false).unwrap();
    assert_eq!(b.layout(), &layout);
    assert_eq!(b.meta(), &meta_5d());
    assert_eq!(b.data_len(), 480);
    assert!(!b.is_writable() && !b.unlinks_on_drop());
    assert_eq!(
        (b.generation(), b.state(), b.owner_pid()),
        (0, 0, std::process::id())
    );
    assert_eq!(b.data_ptr() as usize % 4096, 0);
    // Mode 0600, size header_len + data_len rounded up to a page.
    let st = raw(a.name()).metadata().unwrap();
    assert_eq!((st.permissions().mode() & 0o777, st.len()), (0o600, 8192));
    assert_eq!(peek(a.name(), VERSION, 4), 1u32.to_le_bytes());
    drop(b);
    drop(a);
    assert_no_segments();
}

#[test]
fn data_written_through_one_mapping_is_seen_through_another() {
    let _g = serial();
    let a = Segment::create(
        &Layout::c_order(DType::U8, &[256, 256]).unwrap(),
        &Meta::default(),
    )
    .unwrap();
    let b = Segment::open(a.name(), true).unwrap();
    let n = a.data_len();
    assert_eq!(n, 65536);
    // SAFETY: both pointers cover n bytes of the same live segment, and only this
    // thread touches it while the test runs.
    unsafe {
        for i in 0..n {
            a.data_ptr().add(i).write((i % 251) as u8);
        }
        assert!((0..n).all(|i| b.data_ptr().add(i).read() == (i % 251) as u8));
        b.data_ptr().add(n - 1).write(0xAB);
        assert_eq!(a.data_ptr().add(n - 1).read(), 0xAB);
    }
    drop((a, b));
    assert_no_segments();
}

#[test]
fn read_only_open_maps_read_only_and_refuses_writes() {
    let _g = serial();
    let mut a = u16_segment();
    let mut b = Segment::open(a.name(), false).unwrap();
    assert!(!b.is_writable());
    #[cfg(target_os = "linux")]
    {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let at = b.data_ptr() as usize;
        let perms = maps
            .lines()
            .find_map(|line| {
                let (range, rest) = line.split_once(' ')?;
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                );
                (lo <= at && at < hi).then(|| rest[..4].to_string())
            })
            .expect("mapping in /proc/self/maps");
        assert_eq!(perms, "r--s");
    }
    for e in [
        b.bump_generation().map(drop).unwrap_err(),
        b.set_state(STATE_SHARED).unwrap_err(),
        b.set_owner_pid(1).unwrap_err(),
        b.set_meta(&meta_5d()).unwrap_err(),
    ] {
        assert_eq!(problem(&e), &SegmentProblem::ReadOnly, "{e}");
    }
    assert_eq!(b.generation(), 0);
    // The owner's writes are seen by the reader.
    assert_eq!(a.bump_generation().unwrap(), 1);
    a.set_state(STATE_LENT).unwrap();
    a.set_owner_pid(77).unwrap();
    assert_eq!(
        (b.generation(), b.state(), b.owner_pid()),
        (1, STATE_LENT, 77)
    );
    assert!(a.set_meta(&Meta::default()).is_ok());
    drop((a, b));
    assert_no_segments();
}

#[test]
fn set_meta_rewrites_the_block_in_place() {
    let _g = serial();
    let layout = Layout::c_order(DType::F32, &[2, 3, 1, 4, 5]).unwrap();
    let mut a = Segment::create(&layout, &Meta::default()).unwrap();
    a.set_meta(&meta_5d()).unwrap();
    assert_eq!(a.meta(), &meta_5d());
    assert_eq!(Segment::open(a.name(), false).unwrap().meta(), &meta_5d());
    // Shorter again: the tail of the old block is zeroed.
    let short = Meta {
        name: Some("s".into()),
        ..Meta::default()
    };
    a.set_meta(&short).unwrap();
    assert_eq!(Segment::open(a.name(), false).unwrap().meta(), &short);
    let len = u32::from_le_bytes(peek(a.name(), META_LEN, 4).try_into().unwrap()) as usize;
    assert!(
        peek(a.name(), META + len as u64, 4096 - 608 - len)
            .iter()
            .all(|&b| b == 0)
    );
    // Too large for the one-page header, or wrong for the layout: refused, unchanged.
    let big = Meta {
        name: Some("x".repeat(5000)),
        ..Meta::default()
    };
    assert!(matches!(
        problem(&a.set_meta(&big).unwrap_err()),
        SegmentProblem::MetaLen { .. }
    ));
    let wrong = Meta {
        dims: Some(vec!["y".into()]),
        ..Meta::default()
    };
    assert!(matches!(
        problem(&a.set_meta(&wrong).unwrap_err()),
        SegmentProblem::Meta { .. }
    ));
    assert_eq!(Segment::open(a.name(), false).unwrap().meta(), &short);
    drop(a);
    assert_no_segments();
}

#[test]
fn large_metadata_gets_a_longer_header() {
    let _g = serial();
    let meta = Meta {
        name: Some("n".repeat(6000)),
        ..Meta::default()
    };
    let a = Segment::create(&Layout::c_order(DType::U8, &[10]).unwrap(), &meta).unwrap();
    assert_eq!(peek(a.name(), HEADER_LEN, 4), 8192u32.to_le_bytes());
    let b = Segment::open(a.name(), false).unwrap();
    assert_eq!(b.meta(), &meta);
    assert_eq!(b.data_len(), 10);
    assert_eq!(raw(a.name()).metadata().unwrap().len(), 8192 + 4096);
    drop((a, b));
    assert_no_segments();
}

type Check = fn(&SegmentProblem) -> bool;

#[test]
fn every_corrupted_header_field_is_refused() {
    use SegmentProblem as P;
    let _g = serial();
    // Segment: <u2 [3, 4, 5], header_len 4096, data_len 120, file size 8192.
    let cases: Vec<(&str, u64, Vec<u8>, Check)> = vec![
        ("magic", 0, b"PXGSEH\0\0".to_vec(), |p| {
            matches!(p, P::BadMagic { .. })
        }),
        ("version 0", VERSION, 0u32.to_le_bytes().to_vec(), |p| {
            *p == P::NotInitialised
        }),
        ("version 2", VERSION, 2u32.to_le_bytes().to_vec(), |p| {
            *p == P::Version {
                found: 2,
                expected: 1,
            }
        }),
        (
            "header_len odd",
            HEADER_LEN,
            4097u32.to_le_bytes().to_vec(),
            |p| *p == P::HeaderLen { found: 4097 },
        ),
        (
            "header_len small",
            HEADER_LEN,
            0u32.to_le_bytes().to_vec(),
            |p| *p == P::HeaderLen { found: 0 },
        ),
        (
            "header_len past end",
            HEADER_LEN,
            12288u32.to_le_bytes().to_vec(),
            |p| {
                *p == P::HeaderBeyondEnd {
                    header_len: 12288,
                    file_size: 8192,
                }
            },
        ),
        ("meta_len", META_LEN, 3489u32.to_le_bytes().to_vec(), |p| {
            *p == P::MetaLen {
                meta_len: 3489,
                header_len: 4096,
            }
        }),
        ("reserved", RESERVED, 9u32.to_le_bytes().to_vec(), |p| {
            *p == P::Reserved { found: 9 }
        }),
        ("data_len", DATA_LEN, 4097u64.to_le_bytes().to_vec(), |p| {
            *p == P::DataBeyondEnd {
                header_len: 4096,
                data_len: 4097,
                file_size: 8192,
            }
        }),
        ("dtype big-endian", DTYPE, b">u2".to_vec(), |p| {
            *p == P::DType {
                found: ">u2".into(),
            }
        }),
        ("dtype unknown", DTYPE, b"<V8".to_vec(), |p| {
            *p == P::DType {
                found: "<V8".into(),
            }
        }),
        ("itemsize", ITEMSIZE, 8u32.to_le_bytes().to_vec(), |p| {
            *p == P::ItemSize {
                found: 8,
                expected: 2,
                dtype: DType::U16,
            }
        }),
        ("ndim", NDIM, 33u32.to_le_bytes().to_vec(), |p| {
            *p == P::Ndim { found: 33 }
        }),
        (
            "shape past ndim",
            SHAPE + 8 * 3,
            2u64.to_le_bytes().to_vec(),
            |p| {
                *p == P::ShapeUnused {
                    axis: 3,
                    found: 2,
                    ndim: 3,
                }
            },
        ),
        (
            "stride past ndim",
            STRIDES + 8 * 31,
            2u64.to_le_bytes().to_vec(),
            |p| {
                *p == P::StridesUnused {
                    axis: 31,
                    found: 2,
                    ndim: 3,
                }
            },
        ),
        (
            "negative stride",
            STRIDES,
            (-40i64).to_le_bytes().to_vec(),
            |p| {
                *p == P::NegativeStride {
                    axis: 0,
                    found: -40,
                }
            },
        ),
        ("nbytes", NBYTES, 121u64.to_le_bytes().to_vec(), |p| {
            *p == P::NBytes {
                found: 121,
                expected: 120,
            }
        }),
        ("shape vs nbytes", SHAPE, 4u64.to_le_bytes().to_vec(), |p| {
            *p == P::NBytes {
                found: 120,
                expected: 160,
            }
        }),
        (
            "shape overflow",
            SHAPE,
            u64::MAX.to_le_bytes().to_vec(),
            |p| matches!(p, P::Overflow { .. }),
        ),
        (
            "stride past data",
            STRIDES,
            41u64.to_le_bytes().to_vec(),
            |p| {
                *p == P::Extent {
                    needs: 122,
                    data_len: 120,
                }
            },
        ),
        ("flags", FLAGS, 2u32.to_le_bytes().to_vec(), |p| {
            *p == P::Flags {
                found: 2,
                expected: 1,
            }
        }),
        ("meta bytes", META, b"\x02Z".to_vec(), |p| {
            matches!(p, P::Meta { .. })
        }),
        (
            "meta type",
            META,
            b"\x02LQ".to_vec(),
            |p| matches!(p, P::Meta { reason } if reason.contains("dict")),
        ),
    ];
    for (what, offset, bytes, check) in cases {
        let a = u16_segment();
        poke(a.name(), offset, &bytes);
        for writable in [false, true] {
            let e = Segment::open(a.name(), writable).expect_err(what);
            assert!(check(problem(&e)), "{what}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("segment {}: ", a.name())),
                "{e}"
            );
        }
        let info = segment::inspect(a.name()).unwrap();
        assert!(
            info.problem.is_some() && info.dtype.is_none(),
            "{what}: {info:?}"
        );
    }
    assert_no_segments();
}

#[test]
fn identity_and_advisory_fields_take_any_value() {
    let _g = serial();
    let a = u16_segment();
    for (offset, len) in [
        (CREATOR_PID, 4),
        (CREATOR_START, 8),
        (GENERATION, 8),
        (STATE, 4),
        (OWNER_PID, 4),
    ] {
        poke(a.name(), offset, &vec![0xEE; len]);
    }
    let b = Segment::open(a.name(), false).unwrap();
    assert_eq!(
        (b.generation(), b.state(), b.owner_pid()),
        (u64::MAX / 255 * 0xEE, 0xEEEE_EEEE, 0xEEEE_EEEE)
    );
    drop((a, b));
    assert_no_segments();
}

#[test]
fn group_or_other_access_is_refused() {
    let _g = serial();
    let a = u16_segment();
    for mode in [0o644, 0o640, 0o604, 0o610] {
        raw(a.name())
            .set_permissions(Permissions::from_mode(mode))
            .unwrap();
        let e = Segment::open(a.name(), false).unwrap_err();
        assert!(
            matches!(problem(&e), SegmentProblem::Mode { mode: m } if m & 0o777 == mode),
            "{e}"
        );
    }
    raw(a.name())
        .set_permissions(Permissions::from_mode(0o600))
        .unwrap();
    assert!(Segment::open(a.name(), false).is_ok());
    drop(a);
    assert_no_segments();
}

#[test]
fn another_users_segment_is_refused() {
    let _g = serial();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing a segment's owner needs root");
        assert_no_segments();
        return;
    }
    let a = u16_segment();
    std::os::unix::fs::fchown(raw(a.name()), Some(65534), None).unwrap();
    let e = Segment::open(a.name(), false).unwrap_err();
    assert_eq!(
        problem(&e),
        &SegmentProblem::Owner {
            uid: 65534,
            expected: 0
        }
    );
    drop(a);
    assert_no_segments();
}

#[test]
fn truncated_segments_are_refused() {
    let _g = serial();
    // The creator's mapping is not touched after the object shrinks (that would fault).
    let a = u16_segment();
    raw(a.name()).set_len(4096).unwrap();
    let e = Segment::open(a.name(), false).unwrap_err();
    assert_eq!(
        problem(&e),
        &SegmentProblem::DataBeyondEnd {
            header_len: 4096,
            data_len: 120,
            file_size: 4096
        }
    );
    raw(a.name()).set_len(100).unwrap();
    let e = Segment::open(a.name(), false).unwrap_err();
    assert_eq!(
        problem(&e),
        &SegmentProblem::TooSmall {
            size: 100,
            needed: 4096
        }
    );
    drop(a);
    assert_no_segments();
}

#[test]
fn malformed_names_are_refused() {
    let _g = serial();
    let pid = format!("{:x}", std::process::id());
    for name in [
        String::new(),
        "pxg-1-0123456789abcdef".into(),
        "/pxh-1-0123456789abcdef".into(),
        "/pxg-1-0123456789ABCDEF".into(),
        "/pxg--0123456789abcdef".into(),
        "/pxg-123456789-0123456789abcdef".into(),
        "/pxg-1-0123456789abcdef/x".into(),
        format!("/pxg-{pid}-0123456789abcdef0"),
        "/pxg-1-../../etc/passwd".into(),
    ] {
        for e in [
            Segment::open(&name, false).unwrap_err(),
            segment::inspect(&name).unwrap_err(),
        ] {
            assert!(
                matches!(problem(&e), SegmentProblem::NameInvalid { .. }),
                "{name:?}: {e}"
            );
        }
    }
    // inspect also takes the beginning of a name: one digit short is a prefix, which no
    // segment has here; open takes whole names only.
    let short = "/pxg-1-0123456789abcde";
    assert!(matches!(
        problem(&Segment::open(short, false).unwrap_err()),
        SegmentProblem::NameInvalid { .. }
    ));
    assert_eq!(
        problem(&segment::inspect(short).unwrap_err()),
        &SegmentProblem::NotFound
    );
    let missing = format!("/pxg-{pid}-0000000000000000");
    assert_eq!(
        problem(&Segment::open(&missing, false).unwrap_err()),
        &SegmentProblem::NotFound
    );
    assert_eq!(
        problem(&segment::inspect(&missing).unwrap_err()),
        &SegmentProblem::NotFound
    );
    assert_no_segments();
}

#[test]
fn only_the_owner_unlinks_on_drop() {
    let _g = serial();
    let a = u16_segment();
    let name = a.name().to_string();
    drop(Segment::open(&name, true).unwrap());
    assert!(exists(&name), "an opener's drop removed the segment");
    drop(a);
    assert!(!exists(&name));

    // Ownership handed away: the creator's drop leaves it; the new owner removes it.
    let a = u16_segment();
    let name = a.name().to_string();
    a.set_unlink_on_drop(false);
    drop(a);
    let b = Segment::open(&name, true).unwrap();
    b.set_unlink_on_drop(true);
    drop(b);
    assert!(!exists(&name));

    // An explicit unlink removes the name at once; the mapping stays usable.
    let a = u16_segment();
    a.unlink().unwrap();
    assert!(!exists(a.name()) && !a.unlinks_on_drop());
    // SAFETY: the data area is 120 bytes of this process's own, still mapped segment.
    unsafe { a.data_ptr().write(1) };
    assert_eq!(problem(&a.unlink().unwrap_err()), &SegmentProblem::NotFound);
    drop(a);
    assert_no_segments();
}

#[test]
fn invalid_layouts_leave_nothing_behind() {
    let _g = serial();
    let bad = Layout {
        dtype: DType::U8,
        shape: vec![2, 3],
        strides: vec![3],
    };
    let e = Segment::create(&bad, &Meta::default()).unwrap_err();
    assert!(
        matches!(problem(&e), SegmentProblem::StrideCount { .. }),
        "{e}"
    );
    let wrong = Meta {
        units: Some(vec!["um".into()]),
        ..Meta::default()
    };
    let e = Segment::create(&Layout::c_order(DType::U8, &[2, 3]).unwrap(), &wrong).unwrap_err();
    assert!(matches!(problem(&e), SegmentProblem::Meta { .. }), "{e}");
    assert_no_segments();
}

#[test]
fn list_and_inspect_report_a_live_segment() {
    let _g = serial();
    let a = Segment::create(
        &Layout::c_order(DType::F32, &[2, 3, 1, 4, 5]).unwrap(),
        &meta_5d(),
    )
    .unwrap();
    a.bump_generation().unwrap();
    let info = segment::inspect(a.name()).unwrap();
    assert_eq!(info.name, a.name());
    assert_eq!(info.size, 8192);
    assert_eq!(info.dtype, Some(DType::F32));
    assert_eq!(info.shape, Some(vec![2, 3, 1, 4, 5]));
    assert_eq!(info.creator_pid, Some(std::process::id()));
    assert_eq!(info.creator_alive, Some(true));
    assert_eq!(
        (info.owner_pid, info.state, info.generation),
        (Some(std::process::id()), Some(0), Some(1))
    );
    assert_eq!(info.meta, Some(meta_5d()));
    assert_eq!(info.problem, None);
    #[cfg(target_os = "linux")]
    {
        let listed = segment::list();
        assert_eq!(listed.iter().find(|i| i.name == a.name()), Some(&info));
    }
    // A damaged segment is still listed, with its creator and the reason.
    poke(a.name(), VERSION, &7u32.to_le_bytes());
    let info = segment::inspect(a.name()).unwrap();
    assert_eq!(info.creator_pid, Some(std::process::id()));
    assert_eq!(info.creator_alive, Some(true));
    assert_eq!(
        info.problem.as_deref(),
        Some("header version 7, expected 1")
    );
    drop(a);
    assert_no_segments();
}

#[test]
fn golden_header_written_by_hand_opens() {
    let _g = serial();
    // A segment made without the crate's encoder: the golden bytes plus a data area.
    let golden =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/f32_meta5d.hdr"))
            .unwrap();
    let name = format!("/pxg-{:x}-{:016x}", std::process::id(), 0x601d_u64);
    let file = nix::sys::mman::shm_open(
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map(File::from)
    .unwrap();
    file.set_len(8192).unwrap();
    file.write_all_at(&golden, 0).unwrap();
    let result =
        Segment::open(&name, false).map(|s| (s.layout().clone(), s.meta().clone(), s.generation()));
    let info = segment::inspect(&name).unwrap();
    nix::sys::mman::shm_unlink(name.as_str()).unwrap();
    let (layout, meta, generation) = result.unwrap();
    assert_eq!(
        layout,
        Layout::c_order(DType::F32, &[2, 3, 1, 4, 5]).unwrap()
    );
    assert_eq!(meta.dims, meta_5d().dims);
    assert_eq!(generation, 7);
    // pid 4242 with start time 123456 is not this machine's process.
    assert_eq!(
        (info.creator_pid, info.creator_alive),
        (Some(4242), Some(false))
    );
    assert_no_segments();
}

#[test]
fn creator_liveness_uses_pid_and_start_time() {
    let _g = serial();
    let pid = std::process::id();
    assert!(segment::creator_alive(pid, 0));
    assert!(!segment::creator_alive(0, 0));
    assert!(!segment::creator_alive(u32::MAX, 0));
    #[cfg(target_os = "linux")]
    {
        let start = segment::process_start_time(pid).expect("own start time");
        assert!(start > 0);
        assert!(segment::creator_alive(pid, start));
        assert!(
            !segment::creator_alive(pid, start + 1),
            "a recycled pid must not count"
        );
    }
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let child_pid = child.id();
    child.wait().unwrap();
    assert!(!segment::creator_alive(child_pid, 0));
    assert_eq!(segment::process_start_time(child_pid), None);
    assert_no_segments();
}

#[test]
fn full_tmpfs_is_a_no_space_error_at_creation() {
    let _g = serial();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        assert_no_segments();
        return;
    }
    let fs = match common::Tmpfs::mount("pxg-tmpfs", "size=1m,mode=0700") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            assert_no_segments();
            return;
        }
    };
    // 4 MiB does not fit in 1 MiB: refused up front, nothing left behind, no SIGBUS.
    let big = Layout::c_order(DType::U16, &[1024, 2048]).unwrap();
    let e = Segment::create_in(&fs.0, &big, &Meta::default()).unwrap_err();
    assert_eq!(
        problem(&e),
        &SegmentProblem::NoSpace {
            needed: 4096 + 4 * 1024 * 1024
        }
    );
    assert!(e.to_string().contains("no space left to reserve"), "{e}");
    assert_eq!(fs.entries(), Vec::<String>::new());

    // 256 KiB fits; it is usable end to end and removed on drop.
    let small = Layout::c_order(DType::U8, &[512, 512]).unwrap();
    let a = Segment::create_in(&fs.0, &small, &Meta::default()).unwrap();
    let b = Segment::open_in(&fs.0, a.name(), false).unwrap();
    // SAFETY: the last byte of a's data area; reserved by posix_fallocate, so no fault.
    unsafe { a.data_ptr().add(a.data_len() - 1).write(9) };
    // SAFETY: the same byte through the second mapping; nothing writes it concurrently.
    assert_eq!(unsafe { b.data_ptr().add(b.data_len() - 1).read() }, 9);
    assert_eq!(fs.entries(), vec![a.name()[1..].to_string()]);
    // The rest of the space is still reserved by `a`: another 900 KiB does not fit.
    let e = Segment::create_in(
        &fs.0,
        &Layout::c_order(DType::U8, &[900 * 1024]).unwrap(),
        &Meta::default(),
    )
    .unwrap_err();
    assert!(matches!(problem(&e), SegmentProblem::NoSpace { .. }), "{e}");
    drop((a, b));
    assert_eq!(fs.entries(), Vec::<String>::new());
    drop(fs);
    assert_no_segments();
}

#[test]
fn a_fifo_under_a_pixgate_name_is_refused_without_hanging() {
    let _serial = serial();
    let name = format!("/pxg-{:x}-{:016x}", std::process::id(), 0xf1f0u64);
    let path = format!("/dev/shm{name}");
    nix::unistd::mkfifo(
        path.as_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.clone();
    std::thread::spawn(move || {
        let _ = tx.send(pixgate::segment::inspect(&n).map(|i| i.problem));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(10));
    std::fs::remove_file(&path).unwrap();
    let info = got.expect("inspect of a FIFO hung");
    let problem = info
        .expect("inspect reports, not fails")
        .expect("a problem");
    assert!(problem.contains("regular file"), "{problem}");
    common::assert_no_segments();
}
