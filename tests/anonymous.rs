//! Anonymous segments (docs/SEGMENT_FORMAT.md §3.2): created sealed, reached only
//! through descriptors, gone when the last holder lets go.

mod common;

use std::os::fd::AsRawFd;

use pixgate::segment::{Segment, Transport};
use pixgate::{DType, Layout, Meta};

fn layout() -> Layout {
    Layout::c_order(DType::U16, &[3, 4, 5]).unwrap()
}

/// The memfd links of this process whose name is `name` (without the slash).
fn memfds_named(name: &str) -> usize {
    let want = format!("/memfd:{} (deleted)", name.trim_start_matches('/'));
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy() == want)
        .count()
}

fn mapped(name: &str) -> bool {
    let want = format!("/memfd:{}", name.trim_start_matches('/'));
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.contains(&want))
}

#[test]
fn an_anonymous_segment_has_no_name_in_dev_shm_and_goes_when_dropped() {
    let seg = Segment::create_anonymous(&layout(), &Meta::default()).unwrap();
    assert_eq!(seg.transport(), Transport::Anonymous);
    let name = seg.name().to_string();
    assert!(name.starts_with("/pxg-"));
    assert!(!std::path::Path::new(&format!("/dev/shm{name}")).exists());
    assert_eq!(memfds_named(&name), 1);
    assert!(mapped(&name));
    assert_eq!(seg.layout().shape, vec![3, 4, 5]);
    drop(seg);
    assert_eq!(memfds_named(&name), 0);
    assert!(!mapped(&name));
}

#[test]
fn an_anonymous_segment_cannot_be_resized_by_anyone() {
    let seg = Segment::create_anonymous(&layout(), &Meta::default()).unwrap();
    let name = seg.name().trim_start_matches('/').to_string();
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(&name)))
        .unwrap();
    // Opened again through /proc, as another process of the user could.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fd.path())
        .unwrap();
    for len in [0, 4096, 1 << 30] {
        let err = f.set_len(len).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "set_len({len})");
    }
    let mode = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
    assert_eq!(mode & 7, 7, "shrink, grow and seal seals");
    assert!(f.as_raw_fd() > 2);
}
