//! Finding segments through `/proc` (Linux), for `pixgate ls` and `pixgate inspect`.
//!
//! An anonymous object has no name in any directory (docs/SEGMENT_FORMAT.md §2): it
//! exists while some process holds a descriptor or a mapping of it. `/proc/PID/fd`
//! shows each descriptor as a link `/memfd:pxg-… (deleted)`, and `/proc/PID/maps` each
//! mapping with the same text and the object's device and inode. One pass over the
//! processes of the caller's effective uid collects, per object (device and inode), the
//! processes that hold it, the processes that map it, and the paths it can be opened
//! through. Descriptors and mappings of named segments (`/dev/shm/pxg-…`) are collected
//! in the same pass, so that `ls` shows who holds and maps those too.
//!
//! Nothing here writes, opens or keeps anything: links are read and their targets
//! `stat`ed. A process that ends during the scan contributes what was read before it
//! ended, and a descriptor closed meanwhile is skipped; the caller opens the objects
//! afterwards and treats every failure there as an outcome too.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::info::Holder;
use super::{Transport, check_name};

/// An object's identity: the device (as `/proc/PID/maps` prints it) and the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ObjectId {
    major: u64,
    minor: u64,
    ino: u64,
}

impl ObjectId {
    /// The identity of the object `meta` describes (from `stat` or `fstat`).
    pub(super) fn of(meta: &std::fs::Metadata) -> ObjectId {
        let dev = meta.dev();
        ObjectId {
            // u32 on Linux, i32 on macOS (where nothing is listed through /proc).
            #[allow(clippy::unnecessary_cast)]
            major: libc::major(dev as _) as u64,
            #[allow(clippy::unnecessary_cast)]
            minor: libc::minor(dev as _) as u64,
            ino: meta.ino(),
        }
    }
}

/// One object found in `/proc`.
#[derive(Debug)]
pub(super) struct Seen {
    pub(super) transport: Transport,
    /// `/pxg-…`, from the first link or mapping that named it.
    pub(super) name: String,
    /// The descriptors of it, sorted.
    pub(super) holders: Vec<Holder>,
    /// The processes that map it, sorted.
    pub(super) mapped_by: Vec<u32>,
    /// `/proc/PID/fd/N` of each holder, in the order found.
    pub(super) fd_paths: Vec<PathBuf>,
    /// `/proc/PID/map_files/START-END` of one mapping per mapper (anonymous objects
    /// only): a way in when nobody holds a descriptor (opening these needs
    /// `CAP_SYS_ADMIN`).
    pub(super) map_paths: Vec<PathBuf>,
}

impl Seen {
    pub(super) fn new(transport: Transport, name: String) -> Seen {
        Seen {
            transport,
            name,
            holders: Vec::new(),
            mapped_by: Vec::new(),
            fd_paths: Vec::new(),
            map_paths: Vec::new(),
        }
    }
}

/// What one pass over `/proc` found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    objects: HashMap<ObjectId, Seen>,
}

impl Scan {
    /// Scans the descriptors and mappings of every process of the caller's effective
    /// uid, keeping the objects whose name (`/pxg-…`) `want` accepts. Processes whose
    /// `/proc` entries cannot be read (gone, or not dumpable) are skipped.
    pub(super) fn run(want: &dyn Fn(&str) -> bool) -> Scan {
        let mut scan = Scan::default();
        let euid = nix::unistd::geteuid().as_raw();
        let Ok(proc) = std::fs::read_dir("/proc") else {
            return scan;
        };
        for entry in proc.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // The directory of a process belongs to its effective uid.
            if !std::fs::metadata(entry.path()).is_ok_and(|m| m.uid() == euid) {
                continue;
            }
            scan.descriptors(pid, want);
            scan.mappings(pid, want);
        }
        for seen in scan.objects.values_mut() {
            seen.holders.sort_unstable();
            seen.mapped_by.sort_unstable();
        }
        scan
    }

    /// The object with this identity, if the scan found it.
    pub(super) fn get(&self, id: &ObjectId) -> Option<&Seen> {
        self.objects.get(id)
    }

    /// The anonymous objects found, in no particular order.
    pub(super) fn anonymous(&self) -> impl Iterator<Item = (&ObjectId, &Seen)> {
        self.objects
            .iter()
            .filter(|(_, s)| s.transport == Transport::Anonymous)
    }

    fn descriptors(&mut self, pid: u32, want: &dyn Fn(&str) -> bool) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return;
        };
        for entry in fds.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let Ok(link) = std::fs::read_link(&path) else {
                continue;
            };
            let Some((transport, name)) = object_name(link.as_os_str().as_bytes()) else {
                continue;
            };
            if !want(&name) {
                continue;
            }
            // `stat` follows the link to the object itself. The descriptor may have
            // been closed, or its number reused for another object, since the link was
            // read (a process that opens and closes descriptors quickly, such as
            // another `pixgate ls`): the link is read again, and the identity counts
            // for this name only if the same link stood on both sides of the `stat`.
            // The opener checks the identity again.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if std::fs::read_link(&path).ok().as_ref() != Some(&link) {
                continue;
            }
            let seen = self
                .objects
                .entry(ObjectId::of(&meta))
                .or_insert_with(|| Seen::new(transport, name));
            seen.holders.push(Holder { pid, fd });
            seen.fd_paths.push(path);
        }
    }

    fn mappings(&mut self, pid: u32, want: &dyn Fn(&str) -> bool) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        for line in maps.lines().filter(|l| l.contains("pxg-")) {
            let Some(mapping) = Mapping::parse(line) else {
                continue;
            };
            let Some((transport, name)) = object_name(mapping.path.as_bytes()) else {
                continue;
            };
            if !want(&name) {
                continue;
            }
            let seen = self
                .objects
                .entry(mapping.id)
                .or_insert_with(|| Seen::new(transport, name));
            if !seen.mapped_by.contains(&pid) {
                seen.mapped_by.push(pid);
                if transport == Transport::Anonymous {
                    seen.map_paths
                        .push(format!("/proc/{pid}/map_files/{}", mapping.range).into());
                }
            }
        }
    }
}

/// The segment a descriptor link or a mapping's path names: `/memfd:pxg-… (deleted)`
/// for an anonymous object, `/dev/shm/pxg-…` for a named one; the name must have
/// exactly the form of docs/SEGMENT_FORMAT.md §2. A named segment that was unlinked
/// (`… (deleted)`) is in no directory any more and is not reported.
fn object_name(link: &[u8]) -> Option<(Transport, String)> {
    let link = std::str::from_utf8(link).ok()?;
    let (transport, bare) = if let Some(rest) = link.strip_prefix("/memfd:") {
        (Transport::Anonymous, rest.strip_suffix(" (deleted)")?)
    } else {
        (Transport::Named, link.strip_prefix("/dev/shm/")?)
    };
    let name = format!("/{bare}");
    check_name(&name).ok()?;
    Some((transport, name))
}

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    /// `START-END` in hex, as `/proc/PID/map_files` names it.
    range: &'a str,
    id: ObjectId,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    /// Parses `START-END PERMS OFFSET MAJOR:MINOR INODE   PATH`.
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let _perms = fields.next()?;
        let _offset = fields.next()?;
        let (major, minor) = fields.next()?.split_once(':')?;
        let ino = fields.next()?.parse().ok()?;
        let path = fields.next()?.trim_start();
        Some(Mapping {
            range,
            id: ObjectId {
                major: u64::from_str_radix(major, 16).ok()?,
                minor: u64::from_str_radix(minor, 16).ok()?,
                ino,
            },
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_anonymous_and_named_segments_of_the_exact_form_only() {
        let anon = Some((
            Transport::Anonymous,
            "/pxg-1a2b-0123456789abcdef".to_string(),
        ));
        let named = Some((Transport::Named, "/pxg-1a2b-0123456789abcdef".to_string()));
        for (link, expected) in [
            ("/memfd:pxg-1a2b-0123456789abcdef (deleted)", anon),
            ("/dev/shm/pxg-1a2b-0123456789abcdef", named),
            // An unlinked named segment is in no directory any more.
            ("/dev/shm/pxg-1a2b-0123456789abcdef (deleted)", None),
            // A memfd is always "(deleted)"; anything else is not one.
            ("/memfd:pxg-1a2b-0123456789abcdef", None),
            ("/memfd:pxg-1a2b-0123456789ABCDEF (deleted)", None),
            ("/memfd:pxg-1a2b-0123 (deleted)", None),
            ("/memfd:other (deleted)", None),
            ("/memfd:pxg-123456789-0123456789abcdef (deleted)", None),
            ("/tmp/pxg-1a2b-0123456789abcdef", None),
            ("socket:[12345]", None),
            ("", None),
        ] {
            assert_eq!(object_name(link.as_bytes()), expected, "{link:?}");
        }
        assert_eq!(object_name(b"/memfd:pxg-\xff (deleted)"), None);
    }

    #[test]
    fn maps_lines_give_range_device_inode_and_path() {
        let line = "7f12a000-7f12c000 r--s 00000000 00:01 2087    \
                    /memfd:pxg-1a2b-0123456789abcdef (deleted)";
        assert_eq!(
            Mapping::parse(line),
            Some(Mapping {
                range: "7f12a000-7f12c000",
                id: ObjectId {
                    major: 0,
                    minor: 1,
                    ino: 2087
                },
                path: "/memfd:pxg-1a2b-0123456789abcdef (deleted)",
            })
        );
        let named = "7f12a000-7f12c000 rw-s 00000000 fd:1a 99 /dev/shm/pxg-1-0123456789abcdef";
        let m = Mapping::parse(named).unwrap();
        assert_eq!((m.id.major, m.id.minor, m.id.ino), (0xfd, 0x1a, 99));
        for bad in [
            "",
            "7f12a000-7f12c000 r--s 00000000",
            "7f12a000-7f12c000 r--s 00000000 0001 2087 /x",
            "7f12a000-7f12c000 r--s 00000000 00:01 x /x",
            "7f12a000-7f12c000 r--s 00000000 zz:01 1 /x",
        ] {
            assert_eq!(Mapping::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_scan_finds_this_process_holding_and_mapping_its_anonymous_segment() {
        use crate::header::{DType, Layout, Meta};
        let seg = super::super::Segment::create_anonymous(
            &Layout::c_order(DType::U8, &[10]).unwrap(),
            &Meta::default(),
        )
        .unwrap();
        let name = seg.name().to_string();
        let scan = Scan::run(&|n| n == name);
        let found: Vec<&Seen> = scan.anonymous().map(|(_, s)| s).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        let me = std::process::id();
        assert_eq!(found[0].name, name);
        assert_eq!(found[0].mapped_by, [me]);
        let fd = seg.anon().map(|o| o.raw_fd()).unwrap();
        // Other tests listing at the same time may hold it for a moment too.
        assert!(
            found[0].holders.contains(&Holder { pid: me, fd }),
            "{found:?}"
        );
        drop(seg);
        assert_eq!(Scan::run(&|n| n == name).anonymous().count(), 0);
    }
}
