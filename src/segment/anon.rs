//! Anonymous objects: the memory of the anonymous transport (docs/SEGMENT_FORMAT.md §3.2).
//!
//! On Linux an anonymous object is a `memfd`: it has no name in any directory, its size
//! is sealed before any other process sees it, and it is freed by the kernel when the
//! last descriptor and mapping of it are gone. Other processes reach it only through a
//! descriptor this process passes them. On macOS it is a POSIX shared-memory object
//! unlinked right after creation (it cannot be sealed there).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use crate::output::lock;
use crate::peer::{PeerKey, PeerRef};
use crate::problem::{SegmentProblem, io, os};

/// One anonymous object, shared by the segments that live in it (one, or a pool
/// arena's slots). Dropping the last handle closes the descriptor and tells the gateways
/// that map it that it is gone (FORGET), so that their mappings go too.
pub(crate) struct AnonObject {
    fd: OwnedFd,
    /// `/pxg-<pid hex>-<16 hex digits>`: the object's identity on the wire.
    name: String,
    /// The gateways a descriptor of it was sent to, and with which access.
    delivered: Mutex<Vec<Delivery>>,
    /// A read-only descriptor made at creation for the first handoff, if it is a share
    /// ([`AnonObject::prepare_read_only`]); let go at the first handoff of any kind.
    prepared: Mutex<Option<Prepared>>,
}

/// The most read-only descriptors made ahead that may be open at once in this process.
/// On Linux, a one-off anonymous array holds, from its creation until its first handoff,
/// a second descriptor of its object, opened read-only: a first share passes it, so the
/// reopen through `/proc` is not on the way to the worker. After the first handoff of
/// any kind, the array holds one descriptor. Arrays made and shared one at a time need one;
/// arrays made in a batch beyond it reopen at their first share instead. Kept small:
/// every descriptor counts against `RLIMIT_NOFILE`, which bounds the live arrays, and
/// this keeps the extra ones a constant whatever their number.
pub const PREPARED_READ_ONLY_MAX: usize = 4;

/// How many [`Prepared`] descriptors are open in this process.
static PREPARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A read-only descriptor made ahead, counted in [`PREPARED`] while it exists.
struct Prepared(Option<OwnedFd>);

impl Drop for Prepared {
    fn drop(&mut self) {
        PREPARED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Delivery {
    peer: PeerRef,
    read_only: bool,
    writable: bool,
}

impl std::fmt::Debug for AnonObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnonObject")
            .field("fd", &self.fd.as_raw_fd())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the object can never be made executable.
#[cfg(target_os = "linux")]
const MFD_NOEXEC_SEAL: u32 = 0x0008;

/// `memfd_create` for the object `name` (its label is the name without the slash),
/// close-on-exec and sealable, with `MFD_NOEXEC_SEAL` when the kernel accepts it (Linux
/// 6.3 on). Returns the descriptor and whether `MFD_NOEXEC_SEAL` was accepted.
#[cfg(target_os = "linux")]
fn memfd(name: &str) -> Result<(OwnedFd, bool), SegmentProblem> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let label = name.trim_start_matches('/');
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let made = match memfd_create(label, flags | MFdFlags::from_bits_retain(MFD_NOEXEC_SEAL)) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(label, flags).map(|fd| (fd, false)),
        other => other.map(|fd| (fd, true)),
    };
    made.map_err(|e| match e {
        nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE => SegmentProblem::Descriptors {
            message: e.desc().to_string(),
        },
        e => os("memfd_create", e),
    })
}

/// Step 0 of the validation (docs/SEGMENT_FORMAT.md §8), in part: the object is sealed
/// against shrinking and growing, so no mapping of it can fault past its end. Nothing
/// to check where objects cannot be sealed (macOS).
pub(super) fn check_sealed(file: &File) -> Result<(), SegmentProblem> {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).map_err(|e| os("F_GET_SEALS", e))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
            return Err(SegmentProblem::NotSealed {
                seals: seals.bits() as u32,
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// What this system offers the anonymous transport, as [`probe_anonymous`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnonymousSupport {
    /// Objects are `memfd`s, sealed against shrinking and growing (Linux); otherwise
    /// POSIX shared-memory objects unlinked right after creation, which cannot be
    /// sealed (macOS).
    pub memfd: bool,
    /// The kernel accepted `MFD_NOEXEC_SEAL` (Linux 6.3 on): the objects can never be
    /// made executable. Without it they are made without the flag.
    pub noexec_seal: bool,
}

/// Whether arrays of the anonymous transport ([`Transport::Anonymous`](super::Transport))
/// can be made on this system, and how they are protected: makes one anonymous object
/// of a page as a segment would be made (docs/SEGMENT_FORMAT.md §3.2: `memfd_create`,
/// mode 0400, size, seals) and checks that the seals hold: `ftruncate` is refused and
/// the size stays. The object goes before this returns. A program can call it before
/// it chooses a transport; `pixgate doctor` prints it as its memfd line.
///
/// # Errors
///
/// [`ErrorKind::Segment`](crate::ErrorKind::Segment) with the step that failed:
/// [`SegmentProblem::Os`] for a system call,
/// [`SegmentProblem::Descriptors`] when no descriptor is left,
/// [`SegmentProblem::NotSealed`] when the seals did not take or do not hold.
pub fn probe_anonymous() -> crate::Result<AnonymousSupport> {
    const PROBE: &str = "/pxg-probe";
    let page = super::PAGE as u64;
    #[cfg(target_os = "linux")]
    let run = || -> Result<AnonymousSupport, SegmentProblem> {
        let (fd, noexec_seal) = memfd(PROBE)?;
        let obj = AnonObject::sized(fd, PROBE, page)?;
        obj.seal()?;
        check_sealed(&obj.file()?)?;
        let shrunk = obj.file()?.set_len(0);
        if shrunk.is_ok() || obj.size()? != page {
            return Err(SegmentProblem::NotSealed { seals: 0 });
        }
        Ok(AnonymousSupport {
            memfd: true,
            noexec_seal,
        })
    };
    #[cfg(not(target_os = "linux"))]
    let run = || -> Result<AnonymousSupport, SegmentProblem> {
        let obj = AnonObject::create(&super::new_name(), page)?;
        drop(obj);
        Ok(AnonymousSupport {
            memfd: false,
            noexec_seal: false,
        })
    };
    run().map_err(|p| p.at(PROBE))
}

impl AnonObject {
    /// Creates an object of `size` bytes, mode 0400, not yet reserved or sealed
    /// (docs/SEGMENT_FORMAT.md §3.2, steps 1–3).
    #[cfg(target_os = "linux")]
    pub(crate) fn create(name: &str, size: u64) -> Result<AnonObject, SegmentProblem> {
        let (fd, _) = memfd(name)?;
        AnonObject::sized(fd, name, size)
    }

    /// macOS: a shared-memory object made under `name` and unlinked at once.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create(name: &str, size: u64) -> Result<AnonObject, SegmentProblem> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let fd = nix::sys::mman::shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| os("shm_open", e))?;
        let _ = nix::sys::mman::shm_unlink(name);
        AnonObject::sized(fd, name, size)
    }

    fn sized(fd: OwnedFd, name: &str, size: u64) -> Result<AnonObject, SegmentProblem> {
        let file = File::from(fd);
        // Read-only for everyone but root: a read-only descriptor passed to a peer
        // cannot be reopened writable through /proc.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o400))
                .map_err(|e| io("fchmod", e))?;
        }
        file.set_len(size).map_err(|e| io("ftruncate", e))?;
        Ok(AnonObject {
            fd: OwnedFd::from(file),
            name: name.to_string(),
            delivered: Mutex::new(Vec::new()),
            prepared: Mutex::new(None),
        })
    }

    /// Makes the read-only descriptor that a first share passes, now rather than at the
    /// share: the reopen through `/proc` is then not on the way to the worker
    /// (docs/ARCHITECTURE.md, *A first handoff runs cold*). Only while fewer than
    /// [`PREPARED_READ_ONLY_MAX`] are open in this process; a failure (no descriptor left) leaves
    /// the reopen to the share, which reports it. Call it once the object is sealed.
    pub(crate) fn prepare_read_only(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::sync::atomic::Ordering;
            if PREPARED.fetch_add(1, Ordering::Relaxed) >= PREPARED_READ_ONLY_MAX {
                PREPARED.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            // Counted from here on: dropping it uncounts it, made or not.
            let prepared = Prepared(reopen_read_only(self.fd.as_raw_fd()).ok());
            if prepared.0.is_some() {
                *lock(&self.prepared) = Some(prepared);
            }
        }
    }

    /// Reserves `len` bytes at `offset`, so that running out of memory is an error here
    /// rather than a fault at the first write (step 4).
    pub(crate) fn reserve(&self, offset: u64, len: u64) -> Result<(), SegmentProblem> {
        #[cfg(target_os = "linux")]
        {
            let (off, len) = (offset as libc::off_t, len as libc::off_t);
            match nix::fcntl::posix_fallocate(self.fd.as_fd(), off, len) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::ENOSPC | nix::errno::Errno::ENOMEM) => {
                    Err(SegmentProblem::NoSpace { needed: len as u64 })
                }
                Err(e) => Err(os("fallocate", e)),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (offset, len);
            Ok(())
        }
    }

    /// Seals the object's size (step 6): from now on nobody can shrink or grow it, nor
    /// add seals.
    pub(crate) fn seal(&self) -> Result<(), SegmentProblem> {
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::{FcntlArg, SealFlag, fcntl};
            let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
            fcntl(self.fd.as_fd(), FcntlArg::F_ADD_SEALS(seals))
                .map_err(|e| os("F_ADD_SEALS", e))?;
        }
        Ok(())
    }

    /// Takes in a descriptor a peer sent for the segment at `offset` of the object
    /// `name`, after step 0 of the validation (docs/SEGMENT_FORMAT.md §8): a regular
    /// file of this uid with no group or other access, sealed against shrinking and
    /// growing, opened with the access needed, holding at least a page from `offset`.
    /// Returns the object and its size.
    pub(crate) fn received(
        fd: OwnedFd,
        name: &str,
        offset: u64,
        writable: bool,
    ) -> Result<(AnonObject, u64), SegmentProblem> {
        let file = File::from(fd);
        let size = super::check_file(&file)?;
        check_sealed(&file)?;
        let mode = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| os("F_GETFL", e))?;
        if writable && mode & libc::O_ACCMODE != libc::O_RDWR {
            return Err(SegmentProblem::ReadOnlyDescriptor);
        }
        if offset % super::PAGE as u64 != 0
            || offset
                .checked_add(super::PAGE as u64)
                .is_none_or(|end| end > size)
        {
            return Err(SegmentProblem::Offset { offset, size });
        }
        Ok((
            AnonObject {
                fd: OwnedFd::from(file),
                name: name.to_string(),
                delivered: Mutex::new(Vec::new()),
                prepared: Mutex::new(None),
            },
            size,
        ))
    }

    /// The object's size in bytes.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn size(&self) -> Result<u64, SegmentProblem> {
        nix::sys::stat::fstat(self.fd.as_fd())
            .map(|st| st.st_size as u64)
            .map_err(|e| os("fstat", e))
    }

    pub(crate) fn file(&self) -> Result<File, SegmentProblem> {
        self.fd
            .try_clone()
            .map(File::from)
            .map_err(|e| io("dup", e))
    }

    /// The descriptor, for mapping.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// The object's name, `/pxg-…`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A descriptor to pass to a peer: a duplicate for writable access, else one opened
    /// read-only, so that the peer cannot map the object writable (the one made at
    /// creation, if it is still there). The descriptor made ahead goes either way:
    /// after the first handoff the object holds one descriptor.
    pub(crate) fn descriptor(&self, writable: bool) -> std::io::Result<OwnedFd> {
        let prepared = lock(&self.prepared).take();
        if writable {
            return self.fd.try_clone();
        }
        if let Some(fd) = prepared.and_then(|mut p| p.0.take()) {
            return Ok(fd);
        }
        #[cfg(target_os = "linux")]
        {
            reopen_read_only(self.fd.as_raw_fd())
        }
        // No /proc to reopen through (macOS): the peer gets the object's own access.
        #[cfg(not(target_os = "linux"))]
        {
            self.fd.try_clone()
        }
    }

    /// True when `peer` got a descriptor of the object with exactly this access, and so
    /// maps it that way already: a read-only share needs a read-only mapping, which a
    /// writable one does not give (docs/PROTOCOL.md §5.7).
    pub(crate) fn delivered_to(&self, peer: PeerKey, writable: bool) -> bool {
        lock(&self.delivered)
            .iter()
            .any(|d| d.peer.key == peer && if writable { d.writable } else { d.read_only })
    }

    /// Records that `peer` got a descriptor of the object (and maps it from now on).
    pub(crate) fn note_delivered(&self, peer: &PeerRef, writable: bool) {
        let mut delivered = lock(&self.delivered);
        delivered.retain(|d| d.peer.weak.strong_count() > 0);
        match delivered.iter_mut().find(|d| d.peer.key == peer.key) {
            Some(d) if writable => d.writable = true,
            Some(d) => d.read_only = true,
            None => delivered.push(Delivery {
                peer: peer.clone(),
                read_only: !writable,
                writable,
            }),
        }
    }
}

/// Opens descriptor `fd` of this process anew, read-only, through `/proc/self/fd`.
///
/// The directory is opened once per process (`O_PATH`) and looked up by the number
/// alone, which saves resolving `/proc/self` on every share. A forked child, whose
/// `/proc/self` is another directory, opens its own: a fork handler counts forks, so
/// telling costs no `getpid` per share.
#[cfg(target_os = "linux")]
fn reopen_read_only(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::sync::atomic::{AtomicU64, Ordering};
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static DIR: Mutex<Option<(u64, OwnedFd)>> = Mutex::new(None);
    static HANDLER: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    HANDLER.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic, which is
        // async-signal-safe, as a child's fork handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    let forks = FORKS.load(Ordering::Relaxed);
    let mut dir = lock(&DIR);
    if dir.as_ref().is_none_or(|(f, _)| *f != forks) {
        let d = open(
            "/proc/self/fd",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        *dir = Some((forks, d));
    }
    let (_, d) = dir.as_ref().expect("opened above");
    Ok(openat(
        d,
        fd.to_string().as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

impl Drop for AnonObject {
    fn drop(&mut self) {
        let delivered = std::mem::take(&mut *lock(&self.delivered));
        for peer in delivered.iter().filter_map(|d| d.peer.upgrade()) {
            peer.forget(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child reopens through its own `/proc/self/fd`, not the directory its
    /// parent opened: the child's descriptor number names another object there.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_forked_child_reopens_its_own_descriptor() {
        use nix::sys::stat::fstat;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        let memfd = |label: &str| {
            nix::sys::memfd::memfd_create(label, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .expect("memfd")
        };
        let parent = memfd("fork-test-parent");
        let other = memfd("fork-test-child");
        let raw = parent.as_raw_fd();
        // The parent's directory is opened and kept.
        let first = reopen_read_only(raw).expect("reopen in the parent");
        let parent_ino = fstat(&first).expect("fstat").st_ino;
        let child_ino = fstat(&other).expect("fstat").st_ino;
        // SAFETY: the child only makes system calls and the reopen (which takes a lock no
        // other thread of this test binary holds across a fork: it is held only around
        // an open), then leaves with _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = (|| {
                    // The child's `raw` now names the other object.
                    // SAFETY: `raw` is this process's copy of `parent`, which nothing
                    // else uses in the child; it is replaced, not leaked.
                    if unsafe { libc::dup2(other.as_raw_fd(), raw) } < 0 {
                        return None;
                    }
                    let again = reopen_read_only(raw).ok()?;
                    let ino = fstat(&again).ok()?.st_ino;
                    Some(if ino == child_ino { 0 } else { 1 })
                })()
                .unwrap_or(2);
                // SAFETY: leaves the child at once, running no handler of the parent's.
                unsafe { libc::_exit(code) };
            }
            ForkResult::Parent { child } => {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
                let status = loop {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                        WaitStatus::StillAlive if std::time::Instant::now() < until => {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        WaitStatus::StillAlive => {
                            let _ = nix::sys::signal::kill(child, nix::sys::signal::SIGKILL);
                            let _ = waitpid(child, None);
                            panic!("the forked child did not finish within 20 s");
                        }
                        other => break other,
                    }
                };
                assert_ne!(parent_ino, child_ino);
                assert_eq!(
                    status,
                    WaitStatus::Exited(child, 0),
                    "the child reopened its parent's object (1) or failed (2)"
                );
            }
        }
    }

    #[test]
    fn the_probe_reports_sealed_memfds_on_linux_and_leaves_nothing_behind() {
        let support = probe_anonymous().expect("probe");
        assert_eq!(support.memfd, cfg!(target_os = "linux"));
        assert!(support.memfd || !support.noexec_seal, "{support:?}");
        assert_eq!(probe_anonymous().expect("probe again"), support);
        #[cfg(target_os = "linux")]
        {
            let left: Vec<_> = std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|link| link.to_string_lossy().starts_with("/memfd:pxg-probe"))
                .collect();
            assert!(left.is_empty(), "probe objects still open: {left:?}");
        }
    }
}
