//! Named POSIX shared-memory segments that carry one array each, in the format of
//! `docs/SEGMENT_FORMAT.md` (layout version 1).
//!
//! A segment is a shared-memory object `/pxg-<creator pid>-<64 random bits>` holding a
//! typed header at offset 0 and the array's bytes from the next page on. This module
//! creates, opens, validates, inspects and removes them; typed views over the data
//! belong to the layers above.
//!
//! The public part is the inspection API, which `pixgate ls` and `pixgate inspect`
//! print: [`list`], [`inspect`], [`SegmentInfo`] and [`Holder`] (named segments from
//! `/dev/shm`, anonymous ones from the descriptors and mappings in `/proc`), the
//! liveness helpers [`process_start_time`] and [`creator_alive`], [`probe_anonymous`]
//! (whether the anonymous transport works here; `pixgate doctor`'s memfd line), and
//! [`SegmentProblem`], the reason carried by
//! [`ErrorKind::Segment`](crate::ErrorKind::Segment); and the sweeper behind
//! `pixgate gc` and the sweep at gateway start: [`sweep`], [`sweep_in`], [`Swept`],
//! [`SweepReason`], [`SweepReport`].
//!
//! # Platforms
//!
//! Linux is the primary platform. On macOS segments are created without
//! `posix_fallocate` (shared-memory objects cannot be reserved there, so a full
//! system can still fail at first touch), [`list`] and [`sweep`] find nothing
//! (shared-memory objects have no directory to scan, and there is no `/proc` to find
//! anonymous objects in) and creator start times are unknown (0).

use std::fs::{File, OpenOptions, Permissions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::Result;
use crate::header::{
    self, FIXED_LEN, HeaderFields, Layout, MAGIC, Meta, OFF_CREATOR_PID, OFF_CREATOR_START,
    OFF_GENERATION, OFF_HEADER_LEN, OFF_META_LEN, OFF_OWNER_PID, OFF_STATE, OFF_VERSION, PAGE,
    VERSION,
};

mod anon;
mod describe;
mod info;
mod procfs;
mod sweep;

pub(crate) use anon::AnonObject;

pub use crate::problem::SegmentProblem;
use crate::problem::{io, os};
pub use anon::{AnonymousSupport, PREPARED_READ_ONLY_MAX, probe_anonymous};
pub use info::{Holder, SegmentInfo, creator_alive, inspect, list, process_start_time};
pub(crate) use sweep::sweep_once_in_background;
pub use sweep::{SweepReason, SweepReport, Swept, sweep, sweep_in};

/// The longest segment name, slash included (macOS's limit).
pub const MAX_NAME_LEN: usize = 31;

/// The prefix of every segment name.
pub const NAME_PREFIX: &str = "/pxg-";

/// State word: owned by `owner_pid`, not handed out.
pub const STATE_OWNED: u32 = 0;
/// State word: shared read-only with a peer.
pub const STATE_SHARED: u32 = 1;
/// State word: lent writable to a peer.
pub const STATE_LENT: u32 = 2;
/// State word: moved; the receiver owns it.
pub const STATE_MOVED: u32 = 3;
/// State word: an anonymous segment's owner let go of it; its creator may reuse the
/// object for another array (docs/SEGMENT_FORMAT.md §10).
pub const STATE_FREE: u32 = 4;

/// A fresh segment name: `/pxg-<pid hex>-<16 hex digits of randomness>`.
pub(crate) fn new_name() -> String {
    let mut random = [0u8; 8];
    if getrandom::fill(&mut random).is_err() {
        // No system randomness: fall back to the clock and a counter. Names need only be
        // unique; creation uses O_EXCL, and openers check owner and mode.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        random = (nanos ^ n.rotate_left(48)).to_le_bytes();
    }
    format!(
        "{NAME_PREFIX}{:x}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(random)
    )
}

/// Checks the shape of a segment name: `/pxg-`, 1–8 lower-case hex digits, `-`, 16
/// lower-case hex digits; at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), SegmentProblem> {
    let bad = |reason: String| Err(SegmentProblem::NameInvalid { reason });
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "{} bytes, expected at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
        return bad(format!("expected it to start with {NAME_PREFIX}"));
    };
    let is_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match rest.split_once('-') {
        Some((pid, random))
            if (1..=8).contains(&pid.len())
                && random.len() == 16
                && is_hex(pid)
                && is_hex(random) =>
        {
            Ok(())
        }
        _ => bad("expected /pxg-<pid in hex>-<16 hex digits>".to_string()),
    }
}

/// How a segment's memory reaches other processes (docs/SEGMENT_FORMAT.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// An object with no name, sealed against shrinking and growing, reached only
    /// through descriptors passed to the peer; freed by the kernel when the last
    /// process holding it lets go. The default on Linux and macOS.
    Anonymous,
    /// A named POSIX shared-memory object (`/dev/shm/pxg-…`), which any process of the
    /// user can open by name: for peers that need names (foreign readers, Jython,
    /// debugging). Removed by its owner, or by the sweeper after a crash.
    Named,
    /// No shared memory with the peer (an ssh gateway, or `transport=by-value`): the
    /// pixels of every reference are copied over the protocol pipe in chunks, and a
    /// lent array's are copied back when it is released (docs/PROTOCOL.md §4.14).
    /// As a kind of segment it means anonymous: arrays made for such a gateway are
    /// ordinary anonymous segments of this process.
    ByValue,
}

impl Transport {
    /// The process's default: `PIXGATE_TRANSPORT` (`anonymous` or `named`) when set,
    /// else anonymous on Linux and macOS and named elsewhere.
    pub fn from_env() -> Transport {
        static DEFAULT: OnceLock<Transport> = OnceLock::new();
        *DEFAULT.get_or_init(|| {
            std::env::var("PIXGATE_TRANSPORT")
                .ok()
                .and_then(|v| Transport::parse(&v))
                .unwrap_or(if cfg!(any(target_os = "linux", target_os = "macos")) {
                    Transport::Anonymous
                } else {
                    Transport::Named
                })
        })
    }

    /// `"anonymous"`, `"named"` or `"by-value"`.
    pub fn parse(text: &str) -> Option<Transport> {
        match text {
            "anonymous" => Some(Transport::Anonymous),
            "named" => Some(Transport::Named),
            "by-value" => Some(Transport::ByValue),
            _ => None,
        }
    }

    /// The spelling [`Transport::parse`] reads.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Anonymous => "anonymous",
            Transport::Named => "named",
            Transport::ByValue => "by-value",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a segment's object lives.
#[derive(Clone, Debug)]
enum Backing {
    /// A POSIX shared-memory object (`shm_open`; `/dev/shm` on Linux).
    Shm,
    /// A file in a directory (a tmpfs or hugetlbfs mount), named without the slash.
    Dir(PathBuf),
    /// An anonymous object, reached through its descriptor.
    Anon(Arc<AnonObject>),
}

impl Backing {
    fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(name.trim_start_matches('/'))
    }

    fn create(&self, name: &str) -> std::result::Result<File, SegmentProblem> {
        match self {
            Backing::Anon(_) => Err(SegmentProblem::Exists),
            Backing::Shm => nix::sys::mman::shm_open(
                name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
                Mode::S_IRUSR | Mode::S_IWUSR,
            )
            .map(File::from)
            .map_err(|e| os("shm_open", e)),
            Backing::Dir(dir) => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(Backing::path(dir, name))
                .map_err(|e| io("open", e)),
        }
    }

    fn open(&self, name: &str, writable: bool) -> std::result::Result<File, SegmentProblem> {
        match self {
            Backing::Anon(obj) => {
                let _ = (name, writable);
                obj.file()
            }
            Backing::Shm => {
                // O_NONBLOCK: opening something that is not a regular file (a FIFO
                // planted under a pixgate name) must fail validation, not hang here.
                let flags = if writable {
                    OFlag::O_RDWR
                } else {
                    OFlag::O_RDONLY
                } | OFlag::O_NONBLOCK;
                nix::sys::mman::shm_open(name, flags, Mode::empty())
                    .map(File::from)
                    .map_err(|e| os("shm_open", e))
            }
            Backing::Dir(dir) => OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(Backing::path(dir, name))
                .map_err(|e| io("open", e)),
        }
    }

    fn unlink(&self, name: &str) -> std::result::Result<(), SegmentProblem> {
        match self {
            // Nothing to remove: the memory goes with the last descriptor and mapping.
            Backing::Anon(_) => {
                let _ = name;
                Ok(())
            }
            Backing::Shm => nix::sys::mman::shm_unlink(name).map_err(|e| os("shm_unlink", e)),
            Backing::Dir(dir) => {
                std::fs::remove_file(Backing::path(dir, name)).map_err(|e| io("unlink", e))
            }
        }
    }
}

/// Removes a half-made segment unless disarmed.
struct Unlinker<'a> {
    backing: &'a Backing,
    name: &'a str,
    armed: bool,
}

impl Drop for Unlinker<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.backing.unlink(self.name);
        }
    }
}

/// One mapped segment: its name, its validated header, and raw access to its bytes.
///
/// The crate's internal handle on a segment; the layers above (shared arrays, the pool)
/// build typed views on it. It is public but hidden from the documentation so that the
/// integration tests can drive it; it is not part of the stable API.
///
/// # Safety
///
/// A segment is memory that another process can write at any moment: the peer it was
/// shared with, or any process of the same user that opens it by name. The compiler
/// cannot see those writes, so this type never hands out `&[u8]` or `&mut [u8]` over
/// the mapping: [`Segment::data_ptr`] is a raw pointer, and whoever turns it into a
/// reference must know (from the ownership protocol: owned, shared read-only, lent, or
/// moved) that no other process writes those bytes for the reference's lifetime. The
/// only references made here are to the header's atomic words (`generation`, `state`,
/// `owner_pid`, `version`), which every party accesses atomically.
///
/// The header is read once, at [`Segment::open`], into a private copy that is then
/// validated; after that the data area's position and size come from that copy, never
/// from the mapping again, so a peer that rewrites the header later cannot make this
/// process read or write outside the mapping.
///
/// What no user-space check can prevent: a process of the same user that shrinks the
/// object (`ftruncate`) makes later accesses beyond the new end fault with `SIGBUS`.
/// The format forbids shrinking a segment that anyone maps.
///
/// `Segment` is `Send` and `Sync` because `MmapRaw` is: the mapping stays valid until
/// the last `Segment` over it is dropped, whichever thread drops it.
#[doc(hidden)]
pub struct Segment {
    /// Dropped before `map` (fields drop in order). An anonymous object's last handle
    /// sends FORGET and closes its descriptor before this process unmaps it, as a named
    /// segment is unlinked and forgotten before it is unmapped: the worker, woken by
    /// FORGET, then mostly lets go first, so the memory is freed here, by the process
    /// that dropped the array, not by the worker in the middle of its next handoff
    /// (docs/ARCHITECTURE.md, *Who frees an object's memory*).
    backing: Backing,
    /// The mapping: of this segment alone, or of the whole object it lives in (a pool
    /// arena's slots share one).
    map: Arc<MmapRaw>,
    /// Where the segment's header starts in `map` (0, or a slot's offset in an arena);
    /// a multiple of the page size.
    base: usize,
    fields: HeaderFields,
    name: String,
    writable: bool,
    unlink_on_drop: AtomicBool,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("layout", &self.fields.layout)
            .field("data_len", &self.fields.data_len)
            .field("writable", &self.writable)
            .field(
                "unlink_on_drop",
                &self.unlink_on_drop.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// Creates a segment for `layout` and `meta` in POSIX shared memory, owned by this
    /// process: named `/pxg-<pid>-<random>`, mode 0600, memory reserved up front, header
    /// written and then stamped. The segment is unlinked when dropped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment): the layout or metadata is
    /// invalid, [`SegmentProblem::NoSpace`] when the memory cannot be reserved, or
    /// [`SegmentProblem::Os`]. Nothing is left behind on failure.
    pub fn create(layout: &Layout, meta: &Meta) -> Result<Segment> {
        Segment::create_with(Backing::Shm, layout, meta)
    }

    /// As [`Segment::create`], but as a file in `dir` (a tmpfs or hugetlbfs mount)
    /// instead of POSIX shared memory. Peers open it with [`Segment::open_in`].
    ///
    /// # Errors
    ///
    /// As [`Segment::create`].
    pub fn create_in(dir: &Path, layout: &Layout, meta: &Meta) -> Result<Segment> {
        Segment::create_with(Backing::Dir(dir.to_path_buf()), layout, meta)
    }

    fn create_with(backing: Backing, layout: &Layout, meta: &Meta) -> Result<Segment> {
        let name = new_name();
        Segment::create_named(backing, name.clone(), layout, meta).map_err(|p| p.at(&name))
    }

    fn create_named(
        backing: Backing,
        name: String,
        layout: &Layout,
        meta: &Meta,
    ) -> std::result::Result<Segment, SegmentProblem> {
        let plan = Plan::new(layout, meta)?;
        let file = backing.create(&name)?;
        let mut unlinker = Unlinker {
            backing: &backing,
            name: &name,
            armed: true,
        };
        // The umask may have cleared bits of 0600; set the mode exactly.
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| io("fchmod", e))?;
        file.set_len(plan.size).map_err(|e| io("ftruncate", e))?;
        reserve(&file, plan.size)?;
        // Populated: `reserve` has allocated (and zeroed) every page, so mapping them all
        // now costs a fraction of faulting them in one by one on first write
        // (BENCHMARKS.md, P4).
        let map = MmapOptions::new()
            .len(plan.len)
            .populate()
            .map_raw(&file)
            .map_err(|e| io("mmap", e))?;
        // No other process writes it yet: the name was created with O_EXCL just now, and
        // an opener that finds it only reads, and refuses it while the version is 0.
        write_stamped(&map, 0, &plan.header);
        unlinker.armed = false;
        drop(unlinker);
        Ok(Segment {
            map: Arc::new(map),
            base: 0,
            fields: plan.fields,
            name,
            backing,
            writable: true,
            unlink_on_drop: AtomicBool::new(true),
        })
    }

    /// Creates a segment for `layout` and `meta` in an anonymous object, owned by this
    /// process (docs/SEGMENT_FORMAT.md §3.2): reserved, header written and stamped,
    /// then sealed against shrinking and growing. Peers reach it only through its
    /// descriptor; it goes when the last descriptor and mapping of it do.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`]; [`SegmentProblem::Descriptors`] when this process has no
    /// descriptor left.
    pub fn create_anonymous(layout: &Layout, meta: &Meta) -> Result<Segment> {
        let name = new_name();
        Segment::create_anon(name.clone(), layout, meta).map_err(|p| p.at(&name))
    }

    fn create_anon(
        name: String,
        layout: &Layout,
        meta: &Meta,
    ) -> std::result::Result<Segment, SegmentProblem> {
        let plan = Plan::new(layout, meta)?;
        let obj = AnonObject::create(&name, plan.size)?;
        obj.reserve(0, plan.size)?;
        let map = MmapOptions::new()
            .len(plan.len)
            .populate()
            .map_raw(obj.raw_fd())
            .map_err(|e| io("mmap", e))?;
        // No other process can reach the object yet: its descriptor has not left.
        write_stamped(&map, 0, &plan.header);
        obj.seal()?;
        obj.prepare_read_only();
        Ok(Segment {
            map: Arc::new(map),
            base: 0,
            fields: plan.fields,
            name,
            backing: Backing::Anon(Arc::new(obj)),
            writable: true,
            unlink_on_drop: AtomicBool::new(false),
        })
    }

    /// Creates a pool arena: an anonymous object for `slots` slots of `data_bytes` bytes
    /// each (docs/SEGMENT_FORMAT.md §3.3), sized and sealed now. With `reserve_all`
    /// every slot's memory is reserved and mapped populated at once; otherwise each
    /// slot's range is, when [`Arena::slot`] makes it.
    ///
    /// # Errors
    ///
    /// As [`Segment::create_anonymous`].
    pub(crate) fn arena(data_bytes: usize, slots: usize, reserve_all: bool) -> Result<Arena> {
        let name = new_name();
        let layout = Layout::c_order(crate::header::DType::U8, &[data_bytes])?;
        Arena::create(name.clone(), layout, slots, reserve_all).map_err(|p| p.at(&name))
    }

    /// Creates a segment with `transport`.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`] and [`Segment::create_anonymous`].
    pub fn create_with_transport(
        transport: Transport,
        layout: &Layout,
        meta: &Meta,
    ) -> Result<Segment> {
        match transport {
            Transport::Anonymous | Transport::ByValue => Segment::create_anonymous(layout, meta),
            Transport::Named => Segment::create(layout, meta),
        }
    }

    /// Takes in the segment at `offset` of an anonymous object a peer sent the
    /// descriptor of, validating the descriptor (docs/SEGMENT_FORMAT.md §8, step 0) and
    /// then the header as for any segment. `name` is the object's name from the
    /// reference (its identity, never opened).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with the first check that
    /// failed.
    pub(crate) fn from_descriptor(
        fd: std::os::fd::OwnedFd,
        name: &str,
        offset: u64,
        writable: bool,
    ) -> Result<Segment> {
        let open = || -> std::result::Result<Segment, SegmentProblem> {
            check_name(name)?;
            let (obj, size) = AnonObject::received(fd, name, offset, writable)?;
            let base = usize::try_from(offset).map_err(|_| SegmentProblem::Unaddressable {
                what: "the offset",
                value: offset,
            })?;
            let map = map_raw(obj.raw_fd(), size, writable)?;
            let copy = copy_header(&map, base, size - offset)?;
            let fields = header::parse_header(&copy, size - offset)?;
            Ok(Segment {
                map: Arc::new(map),
                base,
                fields,
                name: name.to_string(),
                backing: Backing::Anon(Arc::new(obj)),
                writable,
                unlink_on_drop: AtomicBool::new(false),
            })
        };
        open().map_err(|p| p.at(name))
    }

    /// The anonymous object the segment lives in, if it is anonymous.
    pub(crate) fn anon(&self) -> Option<&Arc<AnonObject>> {
        match &self.backing {
            Backing::Anon(obj) => Some(obj),
            _ => None,
        }
    }

    /// The transport of the segment.
    pub fn transport(&self) -> Transport {
        match self.backing {
            Backing::Anon(_) => Transport::Anonymous,
            _ => Transport::Named,
        }
    }

    /// Where the segment's header starts in its object: 0, or a pool slot's offset in
    /// its arena.
    pub fn offset(&self) -> u64 {
        self.base as u64
    }

    /// The segment's key: what RELEASE names and the ledger files it under — the wire
    /// name, with `@` and the offset in hex for a slot of an arena
    /// (docs/PROTOCOL.md §5.7).
    pub fn key(&self) -> String {
        if self.base == 0 {
            self.wire_name()
        } else {
            format!("{}@{:x}", self.name, self.base)
        }
    }

    /// Opens an existing segment by name, read-only or read-write, and validates it
    /// completely (owner, mode, size, then the header) before anything else uses it.
    /// The opener does not own it: it is not unlinked when dropped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with the first check that
    /// failed, in the order of `docs/SEGMENT_FORMAT.md`.
    pub fn open(name: &str, writable: bool) -> Result<Segment> {
        Segment::open_with(Backing::Shm, name, writable)
    }

    /// As [`Segment::open`], for a segment made by [`Segment::create_in`] in `dir`.
    ///
    /// # Errors
    ///
    /// As [`Segment::open`].
    pub fn open_in(dir: &Path, name: &str, writable: bool) -> Result<Segment> {
        Segment::open_with(Backing::Dir(dir.to_path_buf()), name, writable)
    }

    fn open_with(backing: Backing, name: &str, writable: bool) -> Result<Segment> {
        let open = || -> std::result::Result<Segment, SegmentProblem> {
            check_name(name)?;
            let file = backing.open(name, writable)?;
            let size = check_file(&file)?;
            let map = map_file(&file, size, writable)?;
            let copy = copy_header(&map, 0, size)?;
            let fields = header::parse_header(&copy, size)?;
            Ok(Segment {
                map: Arc::new(map),
                base: 0,
                fields,
                name: name.to_string(),
                backing,
                writable,
                unlink_on_drop: AtomicBool::new(false),
            })
        };
        open().map_err(|p| p.at(name))
    }

    /// The segment's name, with its leading slash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What names the segment on the wire: its name for POSIX shared memory, the full
    /// path of its file for a segment in a backing directory (docs/PROTOCOL.md §5.5).
    pub fn wire_name(&self) -> String {
        match &self.backing {
            Backing::Shm | Backing::Anon(_) => self.name.clone(),
            Backing::Dir(dir) => Backing::path(dir, &self.name)
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// The header as validated at creation or opening. `generation`, `state` and
    /// `owner_pid` are that moment's values; the accessors read the live ones.
    #[allow(dead_code)]
    pub(crate) fn fields(&self) -> &HeaderFields {
        &self.fields
    }

    /// The array's layout.
    pub fn layout(&self) -> &Layout {
        &self.fields.layout
    }

    /// The array's metadata.
    pub fn meta(&self) -> &Meta {
        &self.fields.meta
    }

    /// The start of the data area (page-aligned). See the type's `# Safety` section
    /// before turning it into a reference; on a read-only segment, writing through it
    /// faults.
    pub fn data_ptr(&self) -> *mut u8 {
        // In bounds: header_len + data_len ≤ the mapping's length (validated), so this is
        // at most one past the end; wrapping_add needs no unsafe for that.
        self.map
            .as_mut_ptr()
            .wrapping_add(self.base + self.fields.header_len as usize)
    }

    /// Bytes of the data area (at least [`Layout::extent`]).
    pub fn data_len(&self) -> usize {
        // Fits: the data area lies inside the mapping, whose length is a usize.
        self.fields.data_len as usize
    }

    /// True when mapped read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// True when dropping this handle unlinks the segment.
    pub fn unlinks_on_drop(&self) -> bool {
        self.unlink_on_drop.load(Ordering::Relaxed)
    }

    /// Decides whether dropping this handle unlinks the segment: true for its owner.
    /// Ownership moves between processes only with a message that says so.
    pub fn set_unlink_on_drop(&self, unlink: bool) {
        self.unlink_on_drop.store(unlink, Ordering::Relaxed);
    }

    /// Removes the segment's name now; the mapping stays valid until drop, and drop
    /// no longer unlinks.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::NotFound`] when the name is already gone, or
    /// [`SegmentProblem::Os`].
    pub fn unlink(&self) -> Result<()> {
        self.unlink_on_drop.store(false, Ordering::Relaxed);
        self.backing
            .unlink(&self.name)
            .map_err(|p| p.at(&self.name))
    }

    /// The generation counter (live).
    pub fn generation(&self) -> u64 {
        load_u64(atomic_u64(&self.map, self.base + OFF_GENERATION))
    }

    /// Adds one to the generation counter and returns the new value.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::ReadOnly`] on a read-only mapping.
    pub fn bump_generation(&self) -> Result<u64> {
        self.check_writable()?;
        let previous =
            atomic_u64(&self.map, self.base + OFF_GENERATION).fetch_add(1, Ordering::AcqRel);
        Ok(previous.wrapping_add(1))
    }

    /// The advisory state word (live): [`STATE_OWNED`], [`STATE_SHARED`], ….
    pub fn state(&self) -> u32 {
        load_u32(atomic_u32(&self.map, self.base + OFF_STATE))
    }

    /// A handle on the segment's state word, for whoever records what is handed out
    /// (the ledger); None for a read-only mapping.
    pub(crate) fn state_word(&self) -> Option<StateWord> {
        self.writable.then(|| StateWord {
            map: Arc::clone(&self.map),
            off: self.base + OFF_STATE,
        })
    }

    /// Sets the advisory state word.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::ReadOnly`] on a read-only mapping.
    pub fn set_state(&self, state: u32) -> Result<()> {
        self.check_writable()?;
        atomic_u32(&self.map, self.base + OFF_STATE).store(state, Ordering::Release);
        Ok(())
    }

    /// The pid of the process that will unlink the segment (live).
    pub fn owner_pid(&self) -> u32 {
        load_u32(atomic_u32(&self.map, self.base + OFF_OWNER_PID))
    }

    /// Records the pid of the process that will unlink the segment.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::ReadOnly`] on a read-only mapping.
    pub fn set_owner_pid(&self, pid: u32) -> Result<()> {
        self.check_writable()?;
        atomic_u32(&self.map, self.base + OFF_OWNER_PID).store(pid, Ordering::Release);
        Ok(())
    }

    /// Replaces the metadata block in place, when the new block fits the header.
    ///
    /// Meant for the owner before the segment is handed out. While the block is
    /// rewritten the version word is 0, so an opener that starts meanwhile is refused
    /// ([`SegmentProblem::NotInitialised`] or [`SegmentProblem::HeaderChanged`]). An
    /// opener whose copy spans the whole rewrite cannot tell (the version is 1 again
    /// at both ends), so metadata must not change while the segment is shared.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::ReadOnly`] on a read-only mapping, [`SegmentProblem::Meta`]
    /// for invalid metadata, [`SegmentProblem::MetaLen`] when it does not fit.
    pub fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        self.check_writable()?;
        let block = meta
            .encode(self.fields.layout.ndim())
            .map_err(|p| p.at(&self.name))?;
        let room = self.fields.header_len as usize - FIXED_LEN;
        if block.len() > room {
            return Err(SegmentProblem::MetaLen {
                meta_len: block.len() as u64,
                header_len: self.fields.header_len,
            }
            .at(&self.name));
        }
        let version = atomic_u32(&self.map, self.base + OFF_VERSION);
        version.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        let base = self.map.as_mut_ptr().wrapping_add(self.base);
        // SAFETY: the mapping is writable (checked above) and at least base + header_len
        // bytes long. The writes cover [FIXED_LEN, header_len) and the meta_len word at
        // OFF_META_LEN: inside the header, disjoint from the atomic words and the data,
        // and from the heap buffers they copy from. Other processes only read these
        // bytes, and openers refuse the header until the version is restored below.
        unsafe {
            ptr::copy_nonoverlapping(block.as_ptr(), base.add(FIXED_LEN), block.len());
            ptr::write_bytes(base.add(FIXED_LEN + block.len()), 0, room - block.len());
            ptr::copy_nonoverlapping(
                (block.len() as u32).to_le_bytes().as_ptr(),
                base.add(OFF_META_LEN),
                4,
            );
        }
        version.store(VERSION, Ordering::Release);
        self.fields.meta = meta.clone();
        Ok(())
    }

    /// Rewrites the header for a new use of this segment as a pool slot: `layout` and
    /// `meta` replace the old ones, the pool-slot flag is set, and the generation is
    /// bumped; the data area and its size stay. Returns the new generation.
    ///
    /// The owner calls it only while nobody else holds a reference to the segment: a
    /// peer that keeps the segment mapped re-reads the header when a reference of the
    /// new generation arrives (docs/SEGMENT_FORMAT.md §5).
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::ReadOnly`] on a read-only mapping; [`SegmentProblem::Extent`]
    /// when `layout` does not fit the data area; as [`Segment::set_meta`] for `meta`.
    pub fn reuse_as(&mut self, layout: &Layout, meta: &Meta) -> Result<u64> {
        self.check_writable()?;
        let fields = HeaderFields {
            layout: layout.clone(),
            meta: meta.clone(),
            pool_slot: true,
            ..self.fields.clone()
        };
        let bytes = header::encode_header(&fields).map_err(|p| p.at(&self.name))?;
        let version = atomic_u32(&self.map, self.base + OFF_VERSION);
        version.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        let base = self.map.as_mut_ptr().wrapping_add(self.base);
        // Everything but the version word and the atomic words (generation, state,
        // owner_pid), which keep their live values.
        for (start, end) in [
            (0, OFF_VERSION),
            (OFF_VERSION + 4, OFF_GENERATION),
            (OFF_OWNER_PID + 4, bytes.len()),
        ] {
            // SAFETY: the mapping is writable (checked above) and at least base +
            // header_len = base + bytes.len() bytes long (encode_header kept this
            // segment's header_len);
            // [start, end) lies inside it, outside the atomic words, and does not
            // overlap the heap buffer `bytes`. Peers only read these bytes, and refuse
            // the header until the version is restored below.
            unsafe {
                ptr::copy_nonoverlapping(bytes.as_ptr().add(start), base.add(start), end - start);
            }
        }
        version.store(VERSION, Ordering::Release);
        let generation = self.bump_generation()?;
        self.fields = HeaderFields {
            generation,
            ..fields
        };
        Ok(generation)
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(SegmentProblem::ReadOnly.at(&self.name))
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // The mapping is unmapped when `map` drops, after this; unlinking first is fine,
        // the object lives until its last mapping goes.
        if self.unlink_on_drop.load(Ordering::Relaxed) {
            if matches!(self.backing, Backing::Anon(_))
                && self.writable
                && !self.fields.pool_slot
                && self.fields.creator_pid != std::process::id()
            {
                // The owner's last act on another process's object: the worker that
                // made it and kept its mapping may now reuse it for its next array
                // (§10). The ledger drops an adopted object only once nothing of it
                // is out (`Holding::drop_array`).
                atomic_u32(&self.map, self.base + OFF_STATE).store(STATE_FREE, Ordering::Release);
            }
            let _ = self.backing.unlink(&self.name);
        }
    }
}

/// A pool arena: one anonymous object holding a size class's slots at fixed offsets,
/// mapped once; each slot is a complete segment (docs/SEGMENT_FORMAT.md §3.3).
pub(crate) struct Arena {
    obj: Arc<AnonObject>,
    map: Arc<MmapRaw>,
    /// A slot's layout before its first use: its data area as bytes.
    layout: Layout,
    /// Bytes per slot: the header page and the data, rounded up to a page.
    slot_size: usize,
    slots: usize,
    reserved: bool,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("name", &self.obj.name())
            .field("slot_size", &self.slot_size)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Arena {
    fn create(
        name: String,
        layout: Layout,
        slots: usize,
        reserve_all: bool,
    ) -> std::result::Result<Arena, SegmentProblem> {
        let plan = Plan::new(&layout, &Meta::default())?;
        let total = plan
            .len
            .checked_mul(slots)
            .filter(|t| i64::try_from(*t).is_ok());
        let total = total.ok_or(SegmentProblem::Overflow {
            what: "the arena size",
        })?;
        let obj = AnonObject::create(&name, total as u64)?;
        obj.seal()?;
        if reserve_all {
            obj.reserve(0, total as u64)?;
        }
        let mut options = MmapOptions::new();
        options.len(total);
        if reserve_all {
            options.populate();
        }
        let map = options.map_raw(obj.raw_fd()).map_err(|e| io("mmap", e))?;
        Ok(Arena {
            obj: Arc::new(obj),
            map: Arc::new(map),
            layout,
            slot_size: plan.len,
            slots,
            reserved: reserve_all,
        })
    }

    /// Makes slot `k`: reserves its range (unless the arena was reserved whole), maps
    /// its pages, writes and stamps its header.
    ///
    /// # Errors
    ///
    /// [`SegmentProblem::NoSpace`] when its memory cannot be reserved.
    pub(crate) fn slot(&self, k: usize) -> Result<Segment> {
        let make = || -> std::result::Result<Segment, SegmentProblem> {
            assert!(k < self.slots, "slot {k} of an arena of {}", self.slots);
            // Slot headers carry the pool-slot flag from the start (§3.3): readers that
            // walk an arena (`pixgate ls`) go on from slot to slot while it is there.
            let mut plan = Plan::new(&self.layout, &Meta::default())?;
            plan.fields.pool_slot = true;
            plan.header = header::encode_header(&plan.fields)?;
            let base = k * self.slot_size;
            if !self.reserved {
                self.obj.reserve(base as u64, self.slot_size as u64)?;
                populate(&self.map, base, self.slot_size);
            }
            // No other process has the arena's descriptor before its first slot is
            // handed out, and a peer maps a slot only after a reference to it, which
            // comes after this: nothing else writes these bytes yet.
            write_stamped(&self.map, base, &plan.header);
            Ok(Segment {
                map: Arc::clone(&self.map),
                base,
                fields: plan.fields,
                name: self.obj.name().to_string(),
                backing: Backing::Anon(Arc::clone(&self.obj)),
                writable: true,
                unlink_on_drop: AtomicBool::new(false),
            })
        };
        make().map_err(|p| p.at(self.obj.name()))
    }
}

/// Faults in `len` bytes of `map` at `base` for writing, so that the first use of a slot
/// does not pay for it page by page (best effort: `MADV_POPULATE_WRITE`, Linux 5.14).
fn populate(map: &MmapRaw, base: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        assert!(base.checked_add(len).is_some_and(|end| end <= map.len()));
        // SAFETY: the range lies inside the mapping (asserted) and starts on a page
        // boundary; MADV_POPULATE_WRITE only faults pages in, changing no contents.
        let _ = unsafe {
            libc::madvise(
                map.as_mut_ptr().add(base).cast(),
                len,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (map, base, len);
}

/// The state word of a writable segment's header, kept apart from the segment (the
/// mapping stays while the handle does).
pub(crate) struct StateWord {
    map: Arc<MmapRaw>,
    off: usize,
}

impl StateWord {
    /// Stores `state` ([`STATE_OWNED`], [`STATE_SHARED`], …).
    pub(crate) fn set(&self, state: u32) {
        atomic_u32(&self.map, self.off).store(state, Ordering::Release);
    }
}

/// What a new segment will hold: its header fields and bytes, and its size.
struct Plan {
    fields: HeaderFields,
    header: Vec<u8>,
    /// The segment's size: header and data, rounded up to a page.
    size: u64,
    /// The same as a `usize` (it is addressable and fits an `off_t`).
    len: usize,
}

impl Plan {
    fn new(layout: &Layout, meta: &Meta) -> std::result::Result<Plan, SegmentProblem> {
        let (_, extent) = layout.check()?;
        let meta_len = meta.encode(layout.ndim())?.len();
        let pid = std::process::id();
        let fields = HeaderFields {
            layout: layout.clone(),
            meta: meta.clone(),
            header_len: header::header_len_for(meta_len)?,
            data_len: extent,
            creator_pid: pid,
            creator_start: own_start_time(),
            generation: 0,
            state: STATE_OWNED,
            owner_pid: pid,
            pool_slot: false,
        };
        let header = header::encode_header(&fields)?;
        let size = u64::from(fields.header_len)
            .checked_add(fields.data_len)
            .and_then(|n| n.checked_next_multiple_of(PAGE as u64))
            .ok_or(SegmentProblem::Overflow {
                what: "the segment size",
            })?;
        let len = usize::try_from(size)
            .ok()
            .filter(|_| i64::try_from(size).is_ok())
            .ok_or(SegmentProblem::Unaddressable {
                what: "the segment size",
                value: size,
            })?;
        Ok(Plan {
            fields,
            header,
            size,
            len,
        })
    }
}

/// Writes a new segment's header at `base` of a fresh mapping, then stamps the version
/// (docs/SEGMENT_FORMAT.md §7). The caller guarantees that no other process writes those
/// bytes yet.
fn write_stamped(map: &MmapRaw, base: usize, header: &[u8]) {
    assert!(
        base.checked_add(header.len())
            .is_some_and(|end| end <= map.len())
    );
    // SAFETY: the range [base, base + header.len()) lies inside the mapping (asserted),
    // which is readable and writable, and does not overlap the heap buffer `header`.
    // Nothing else writes it (the caller's guarantee), and openers refuse the header
    // while the version word is still 0.
    unsafe {
        ptr::copy_nonoverlapping(header.as_ptr(), map.as_mut_ptr().add(base), header.len());
    }
    // The sync point: every header byte is in place before the version says so.
    atomic_u32(map, base + OFF_VERSION).store(VERSION, Ordering::Release);
}

/// Reserves `size` bytes of backing memory so that a full file system fails here with
/// ENOSPC rather than later with SIGBUS.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn reserve(file: &File, size: u64) -> std::result::Result<(), SegmentProblem> {
    let len = size as libc::off_t; // size ≤ i64::MAX, checked by the caller
    match nix::fcntl::posix_fallocate(file, 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSPC) => Err(SegmentProblem::NoSpace { needed: size }),
        Err(e) => Err(os("posix_fallocate", e)),
    }
}

/// Shared-memory objects cannot be reserved on this platform; `ftruncate` only.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn reserve(_file: &File, _size: u64) -> std::result::Result<(), SegmentProblem> {
    Ok(())
}

/// Step 1 of the validation order: owner, mode, size. Returns the size.
fn check_file(file: &File) -> std::result::Result<u64, SegmentProblem> {
    check_metadata(&file.metadata().map_err(|e| io("fstat", e))?)
}

/// As [`check_file`], on what `fstat` returned for the object.
fn check_metadata(meta: &std::fs::Metadata) -> std::result::Result<u64, SegmentProblem> {
    let expected = nix::unistd::geteuid().as_raw();
    if meta.uid() != expected {
        return Err(SegmentProblem::Owner {
            uid: meta.uid(),
            expected,
        });
    }
    if !meta.file_type().is_file() || meta.mode() & 0o077 != 0 {
        return Err(SegmentProblem::Mode { mode: meta.mode() });
    }
    if meta.len() < PAGE as u64 {
        return Err(SegmentProblem::TooSmall {
            size: meta.len(),
            needed: PAGE as u64,
        });
    }
    Ok(meta.len())
}

fn map_file(
    file: &File,
    size: u64,
    writable: bool,
) -> std::result::Result<MmapRaw, SegmentProblem> {
    map_raw(file.as_raw_fd(), size, writable)
}

fn map_raw(
    fd: std::os::fd::RawFd,
    size: u64,
    writable: bool,
) -> std::result::Result<MmapRaw, SegmentProblem> {
    let len = usize::try_from(size).map_err(|_| SegmentProblem::Unaddressable {
        what: "the segment size",
        value: size,
    })?;
    let mut options = MmapOptions::new();
    options.len(len);
    let map = if writable {
        options.map_raw(fd)
    } else {
        options.map_raw_read_only(fd)
    };
    map.map_err(|e| io("mmap", e))
}

/// Copies the header at `base` out of a mapping holding at least one page from there
/// (`file_size` is the object's size less `base`): the version is loaded first
/// (acquire), the atomic words are loaded atomically, everything else is copied, and
/// the version is checked again afterwards.
fn copy_header(
    map: &MmapRaw,
    base: usize,
    file_size: u64,
) -> std::result::Result<Vec<u8>, SegmentProblem> {
    let version = atomic_u32(map, base + OFF_VERSION);
    let before = load_u32(version);
    if before == 0 {
        return Err(SegmentProblem::NotInitialised);
    }
    let mut word = [0u8; 4];
    read_mapped(map, base + OFF_HEADER_LEN, &mut word);
    let header_len = u64::from(u32::from_le_bytes(word));
    // A bad header_len is reported by the parser; copy one page to let it see it.
    let len = if (PAGE as u64..=file_size).contains(&header_len) {
        header_len as usize
    } else {
        PAGE
    };
    let mut copy = vec![0u8; len];
    // Peers write the words in [OFF_GENERATION, OFF_META_LEN) atomically: load them so.
    read_mapped(map, base, &mut copy[..OFF_GENERATION]);
    read_mapped(map, base + OFF_META_LEN, &mut copy[OFF_META_LEN..]);
    let generation = load_u64(atomic_u64(map, base + OFF_GENERATION));
    copy[OFF_GENERATION..OFF_STATE].copy_from_slice(&generation.to_le_bytes());
    let state = load_u32(atomic_u32(map, base + OFF_STATE));
    copy[OFF_STATE..OFF_OWNER_PID].copy_from_slice(&state.to_le_bytes());
    let owner = load_u32(atomic_u32(map, base + OFF_OWNER_PID));
    copy[OFF_OWNER_PID..OFF_META_LEN].copy_from_slice(&owner.to_le_bytes());
    fence(Ordering::Acquire);
    if version.load(Ordering::Relaxed) != before {
        return Err(SegmentProblem::HeaderChanged);
    }
    Ok(copy)
}

/// Unlinks the segment `name` that the worker `owner` moved to this process and this
/// process did not adopt (it refused or dropped the reference): the worker gave up its
/// ownership, so nobody else would remove it. Only a regular file of this uid with a
/// pixgate name whose header, magic intact, records `owner` as its owner is removed;
/// anything else (a segment a hostile worker named that is not its own) stays. Returns
/// whether it was unlinked.
pub(crate) fn unlink_abandoned(name: &str, owner: u32) -> bool {
    let check = || -> std::result::Result<bool, SegmentProblem> {
        check_name(name)?;
        let file = Backing::Shm.open(name, false)?;
        check_file(&file)?;
        let map = MmapOptions::new()
            .len(PAGE)
            .map_raw_read_only(&file)
            .map_err(|e| io("mmap", e))?;
        let mut magic = [0u8; 8];
        read_mapped(&map, 0, &mut magic);
        Ok(magic == MAGIC && load_u32(atomic_u32(&map, OFF_OWNER_PID)) == owner)
    };
    matches!(check(), Ok(true)) && Backing::Shm.unlink(name).is_ok()
}

/// The creator fields of the header at `base` that failed validation, if its magic is
/// intact.
fn raw_creator(map: &MmapRaw, base: usize) -> Option<(u32, u64)> {
    let mut head = [0u8; OFF_GENERATION];
    read_mapped(map, base, &mut head);
    if head[..8] != MAGIC {
        return None;
    }
    let pid = u32::from_le_bytes(head[OFF_CREATOR_PID..OFF_CREATOR_START].try_into().ok()?);
    let start = u64::from_le_bytes(head[OFF_CREATOR_START..OFF_GENERATION].try_into().ok()?);
    Some((pid, start))
}

/// Copies `dst.len()` bytes at offset `off` out of the mapping.
///
/// Panics (an internal invariant, not input) if the range is not inside the mapping.
fn read_mapped(map: &MmapRaw, off: usize, dst: &mut [u8]) {
    assert!(
        off.checked_add(dst.len())
            .is_some_and(|end| end <= map.len())
    );
    // SAFETY: the source range lies inside the mapping (asserted), which stays mapped
    // and readable while `map` lives; `dst` is an exclusive borrow of this process's own
    // memory, so the ranges do not overlap (safe code never holds a slice over the
    // mapping). Another process may write the source bytes meanwhile; the copy then
    // holds arbitrary values, which is why every caller validates what it copied and
    // no reference into the mapping is made.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) }
}

/// The header word at `off` as an atomic.
///
/// Panics (an internal invariant, not input) if `off` is not 4-aligned inside the
/// mapping.
fn atomic_u32(map: &MmapRaw, off: usize) -> &AtomicU32 {
    assert!(off % 4 == 0 && off + 4 <= map.len());
    // SAFETY: the mapping starts on a page boundary, so base + off is 4-aligned, and it
    // is in bounds (asserted); the reference lives no longer than `map`. Other
    // processes access these words only atomically (the format says so), and this
    // process only through atomics, so sharing them as `&AtomicU32` is sound. On a
    // read-only mapping only loads happen (the writers check `writable`), and those are
    // plain loads (see `load_u32`).
    unsafe { &*map.as_ptr().add(off).cast::<AtomicU32>() }
}

/// The header word at `off` as a 64-bit atomic; as [`atomic_u32`], 8-aligned.
fn atomic_u64(map: &MmapRaw, off: usize) -> &AtomicU64 {
    assert!(off % 8 == 0 && off + 8 <= map.len());
    // SAFETY: as in `atomic_u32`, with 8-byte alignment (page-aligned base, offset a
    // multiple of 8).
    unsafe { &*map.as_ptr().add(off).cast::<AtomicU64>() }
}

/// An acquire load that also works on read-only memory: a relaxed load (a plain `mov`
/// at register width, which Rust guarantees works on read-only memory) then an acquire
/// fence.
fn load_u32(a: &AtomicU32) -> u32 {
    let v = a.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

fn load_u64(a: &AtomicU64) -> u64 {
    let v = a.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

fn own_start_time() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| process_start_time(std::process::id()).unwrap_or(0))
}
