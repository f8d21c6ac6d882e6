//! Anonymous segments (docs/SEGMENT_FORMAT.md §3.2): created sealed, reached only
//! through descriptors, gone when the last holder lets go.
#![cfg(target_os = "linux")]

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
    let _serial = serial();
    let seg = Segment::create_anonymous(&layout(), &Meta::default()).unwrap();
    assert_eq!(seg.transport(), Transport::Anonymous);
    let name = seg.name().to_string();
    assert!(name.starts_with("/pxg-"));
    assert!(!std::path::Path::new(&format!("/dev/shm{name}")).exists());
    // Its own descriptor and the read-only one made ahead for a first share.
    assert_eq!(memfds_named(&name), 2);
    assert!(mapped(&name));
    assert_eq!(seg.layout().shape, vec![3, 4, 5]);
    drop(seg);
    assert_eq!(memfds_named(&name), 0);
    assert!(!mapped(&name));
}

#[test]
fn an_anonymous_segment_cannot_be_resized_by_anyone() {
    let _serial = serial();
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

// --- with a real worker ------------------------------------------------------------

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{T, assert_no_segments, gateway, serial};
use pixgate::{FrameStream, Gateway, OutputMode, Pool, SharedArray, StreamMode, Value};

/// Remote code that opens, through `/proc`, every anonymous pixgate object the host (the
/// pid it receives) holds, and tries to shrink and grow each: what another process of
/// the user could do. Answers `[(object, [outcome of each try])]`.
const RESIZER: &str = r#"
import errno, os
host = channel.receive()
found = []
for entry in sorted(os.listdir(f"/proc/{host}/fd")):
    path = f"/proc/{host}/fd/{entry}"
    try:
        target = os.readlink(path)
    except OSError:
        continue
    if not target.startswith("/memfd:pxg-"):
        continue
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    outcomes = []
    for length in (0, size // 2, size - 4096, size + 4096, 1 << 40):
        try:
            os.ftruncate(fd, length)
            outcomes.append("resized")
        except OSError as e:
            outcomes.append(errno.errorcode[e.errno])
    os.close(fd)
    found.append((target, outcomes))
channel.send(found)
"#;

/// Holds what it receives until told to drop it; moves a new array to the host on
/// "make"; reports the permissions of its mappings of anonymous objects on "maps".
const HOLDER: &str = r#"
import pixgate
held = []
for item in channel:
    if isinstance(item, str) and item == "make":
        a = pixgate.full((64, 64), 3, dtype="uint16")
        channel.send(a)
        del a
    elif isinstance(item, str) and item == "maps":
        with open("/proc/self/maps") as f:
            channel.send([l.split()[1] + " " + l.split()[-2] for l in f if "/memfd:pxg-" in l])
    elif isinstance(item, str) and item == "drop":
        held.clear()
        channel.send("dropped")
    else:
        held.append(item)
        channel.send("held")
    del item
"#;

#[test]
fn no_process_can_resize_shared_lent_moved_or_pool_memory() {
    let _serial = serial();
    let gw = gateway();
    let holder = gw.remote_exec(HOLDER).unwrap();
    let ask = |v: Value| {
        holder.send(v).unwrap();
        holder.receive_timeout(T).unwrap()
    };
    let mut shared = SharedArray::<u16>::zeros(&[256, 256]).unwrap();
    shared.view_mut().unwrap().fill(1);
    let mut lent = SharedArray::<f32>::zeros(&[1000]).unwrap();
    lent.view_mut().unwrap().fill(2.0);
    let pool = Pool::builder().class(1 << 16).slots(2).build().unwrap();
    let mut frame = pool.take::<u8>(&[1 << 16]).unwrap();
    frame.view_mut().unwrap().fill(4);
    assert_eq!(ask(shared.share().unwrap()).as_str(), Some("held"));
    assert_eq!(ask(lent.lend().unwrap()).as_str(), Some("held"));
    assert_eq!(ask(frame.lend().unwrap()).as_str(), Some("held"));
    let moved = SharedArray::<u16>::from_value(ask("make".into())).unwrap();

    let resizer = gw.remote_exec(RESIZER).unwrap();
    resizer.send(std::process::id()).unwrap();
    let found = resizer.receive_timeout(T).unwrap();
    let found = found.as_seq().unwrap();
    // Three arrays of this process, the pool's arena, the array moved here.
    assert!(found.len() >= 4, "{found:?}");
    for entry in found {
        let pair = entry.as_seq().unwrap();
        let outcomes: Vec<&str> = pair[1]
            .as_seq()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(
            outcomes.iter().all(|o| *o == "EPERM"),
            "{}: {outcomes:?}",
            pair[0]
        );
    }
    // Every byte is still there to read.
    assert!(shared.view().unwrap().iter().all(|&x| x == 1));
    assert!(moved.view().unwrap().iter().all(|&x| x == 3));
    assert_eq!(ask("drop".into()).as_str(), Some("dropped"));
    common::wait_until(|| !lent.is_lent() && !frame.is_lent(), "given back");
    assert!(lent.view().unwrap().iter().all(|&x| x == 2.0));
    assert!(frame.view().unwrap().iter().all(|&x| x == 4));
    drop((shared, lent, frame, pool, moved));
    holder.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_read_only_share_is_mapped_read_only_by_the_worker() {
    let _serial = serial();
    let gw = gateway();
    assert_eq!(gw.transport(), Transport::Anonymous);
    let holder = gw.remote_exec(HOLDER).unwrap();
    let a = SharedArray::<u8>::zeros(&[4096 * 4]).unwrap();
    let mut b = SharedArray::<u8>::zeros(&[4096 * 4]).unwrap();
    holder.send(a.share().unwrap()).unwrap();
    holder.receive_timeout(T).unwrap();
    holder.send(b.lend().unwrap()).unwrap();
    holder.receive_timeout(T).unwrap();
    holder.send("maps").unwrap();
    let maps = holder.receive_timeout(T).unwrap();
    let maps: Vec<&str> = maps
        .as_seq()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let perms = |name: &str| {
        let label = format!("/memfd:{}", name.trim_start_matches('/'));
        maps.iter()
            .filter(|l| l.ends_with(&label))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(perms(a.name()), vec!["r--s".to_string()], "{maps:?}");
    assert_eq!(perms(b.name()), vec!["rw-s".to_string()], "{maps:?}");
    holder.send("drop").unwrap();
    holder.receive_timeout(T).unwrap();
    holder.close().unwrap();
    gw.exit(T).unwrap();
    drop((a, b));
    assert_no_segments();
}

/// The access mode (`O_ACCMODE` bits) descriptor `fd` of this process was opened with.
fn access_mode(fd: i32) -> i32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("a flags line");
    i32::from_str_radix(flags.trim(), 8).unwrap() & libc::O_ACCMODE
}

/// A one-off array holds a second, read-only descriptor of its object from its creation
/// until its first handoff, which lets it go whatever its kind (the share passes it);
/// no more than `PREPARED_READ_ONLY_MAX` such descriptors are open at once.
#[test]
fn a_read_only_descriptor_is_made_ahead_only_for_a_few_arrays_and_only_until_a_handoff() {
    use pixgate::segment::PREPARED_READ_ONLY_MAX;
    let _serial = serial();
    let gw = gateway();
    let holder = gw.remote_exec(HOLDER).unwrap();
    let fds = |a: &SharedArray<u8>| common::memfd_fds(a.name());
    let batch: Vec<SharedArray<u8>> = (0..3 * PREPARED_READ_ONLY_MAX)
        .map(|_| SharedArray::<u8>::zeros(&[4096]).unwrap())
        .collect();
    for (i, a) in batch.iter().enumerate() {
        let held = fds(a);
        if i < PREPARED_READ_ONLY_MAX {
            assert_eq!(held.len(), 2, "array {i}: {held:?}");
            let modes: Vec<i32> = held.iter().map(|&fd| access_mode(fd)).collect();
            assert!(modes.contains(&libc::O_RDWR), "array {i}: {modes:?}");
            assert!(modes.contains(&libc::O_RDONLY), "array {i}: {modes:?}");
        } else {
            assert_eq!(held.len(), 1, "array {i}: {held:?}");
        }
    }
    // The first handoff lets the extra descriptor go: a share passes it, a lend drops it.
    let mut batch = batch.into_iter();
    let shared = batch.next().unwrap();
    let mut lent = batch.next().unwrap();
    holder.send(shared.share().unwrap()).unwrap();
    assert_eq!(holder.receive_timeout(T).unwrap().as_str(), Some("held"));
    holder.send(lent.lend().unwrap()).unwrap();
    assert_eq!(holder.receive_timeout(T).unwrap().as_str(), Some("held"));
    assert_eq!(fds(&shared).len(), 1);
    assert_eq!(access_mode(fds(&shared)[0]), libc::O_RDWR);
    assert_eq!(fds(&lent).len(), 1);
    // A later array takes a freed place; the worker mapped the share read-only.
    let later = SharedArray::<u8>::zeros(&[4096]).unwrap();
    assert_eq!(fds(&later).len(), 2);
    holder.send("maps").unwrap();
    let maps = holder.receive_timeout(T).unwrap();
    let label = format!("/memfd:{}", shared.name().trim_start_matches('/'));
    let perms: Vec<&str> = maps
        .as_seq()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|l| l.ends_with(&label))
        .collect();
    assert!(
        perms.iter().all(|l| l.starts_with("r--s")) && !perms.is_empty(),
        "{perms:?}"
    );
    holder.send("drop").unwrap();
    holder.receive_timeout(T).unwrap();
    common::wait_until(|| !lent.is_lent(), "given back");
    holder.close().unwrap();
    gw.exit(T).unwrap();
    drop((shared, lent, later, batch));
    assert_no_segments();
}

/// Re-runs `name` in a fresh copy of this test binary with `env` set, under `wrap` (a
/// command line that ends by running the program given after it), within `limit`.
fn in_child(name: &str, env: (&str, &str), wrap: &[&str], limit: Duration) {
    let exe = std::env::current_exe().unwrap();
    let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
    args.push(exe.to_string_lossy().into_owned());
    args.extend(["--exact", name, "--nocapture", "--test-threads=1"].map(String::from));
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .env(env.0, env.1)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-run the test binary");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!("{name} in a child ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{name} in a child failed: {status}");
}

const SCENARIO: &str = "PIXGATE_ANONYMOUS_SCENARIO";

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Descriptors per gateway stay bounded however many frames and arrays cross: run under
/// `RLIMIT_NOFILE` 64, for host and worker alike.
#[test]
fn a_hundred_thousand_frames_cross_under_a_low_descriptor_limit() {
    if std::env::var(SCENARIO).is_err() {
        in_child(
            "a_hundred_thousand_frames_cross_under_a_low_descriptor_limit",
            (SCENARIO, "frames"),
            &[],
            Duration::from_secs(600),
        );
        return;
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 64)
        .expect("lower RLIMIT_NOFILE");
    let gw = Gateway::builder(&common::spec(""))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("a gateway under 64 descriptors");
    assert_eq!(gw.transport(), Transport::Anonymous);
    let ch = gw
        .remote_exec(
            "import pixgate\nn = 0\nfor f in pixgate.frames(channel):\n    n += int(f[0])\nchannel.send(n)",
        )
        .unwrap();
    let pool = Pool::builder().class(4096).slots(8).build().unwrap();
    let mut stream = FrameStream::new(&ch, &pool, StreamMode::Pipelined(4)).timeout(T);
    let frames = std::env::var("PIXGATE_ANONYMOUS_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000u64);
    let mut seen = (0, 0);
    for i in 0..frames {
        let mut f = stream.frame::<u8>(&[4096]).unwrap();
        f.view_mut().unwrap().fill((i % 2) as u8);
        stream.send(f).unwrap();
        if i == 1000 {
            seen = (fds_of(std::process::id()), fds_of(gw.pid()));
        }
    }
    stream.finish().unwrap();
    ch.close().unwrap();
    assert_eq!(
        ch.receive_timeout(T).unwrap().as_i64(),
        Some((frames / 2) as i64)
    );
    let now = (fds_of(std::process::id()), fds_of(gw.pid()));
    println!(
        "descriptors after 1000 frames: host {}, worker {}; after {frames}: host {}, worker {}",
        seen.0, seen.1, now.0, now.1
    );
    assert!(now.0 <= seen.0 && now.1 <= seen.1, "{seen:?} → {now:?}");
    // One-off arrays too: each holds a descriptor only while it lives.
    let one = gw
        .remote_exec("for a in channel:\n    channel.send(int(a.sum()))")
        .unwrap();
    for i in 0..5000u32 {
        let mut a = SharedArray::<u32>::zeros(&[16]).unwrap();
        a.view_mut().unwrap().fill(i);
        one.send(a.share().unwrap()).unwrap();
        assert_eq!(
            one.receive_timeout(T).unwrap().as_i64(),
            Some(16 * i64::from(i))
        );
    }
    // Without reference counting (PyPy) the mapping of an array the worker dropped
    // keeps its descriptor (Python before 3.13 holds one per mmap) until the collector
    // runs; the helper collects when they pass a quarter of the limit. That is the bound
    // there; CPython frees at once.
    let lazy = if gw.info().interpreter().starts_with("cpython") {
        0
    } else {
        64 / 4
    };
    let after = (fds_of(std::process::id()), fds_of(gw.pid()));
    println!(
        "descriptors after 5000 one-off arrays: host {}, worker {} (bound {} + {lazy})",
        after.0,
        after.1,
        seen.1 + 1
    );
    assert!(
        after.0 <= seen.0 + 1 && after.1 <= seen.1 + 1 + lazy,
        "{seen:?} → {after:?}"
    );
    drop(stream);
    drop(pool);
    one.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

/// Where /dev/shm holds 16 MiB (as in a container), a 1 GiB array still crosses.
#[test]
fn a_gibibyte_crosses_where_dev_shm_holds_sixteen_mebibytes() {
    if std::env::var(SCENARIO).is_err() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("PIXGATE_TEST_STRICT").is_err(),
                "needs root to mount a tmpfs in a private mount namespace"
            );
            eprintln!("NOT RUN: needs root to mount a tmpfs in a private mount namespace");
            return;
        }
        in_child(
            "a_gibibyte_crosses_where_dev_shm_holds_sixteen_mebibytes",
            (SCENARIO, "tiny-shm"),
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs -o size=16m,mode=1777 pixgate-tiny /dev/shm && exec \"$@\"",
                "sh",
            ],
            Duration::from_secs(300),
        );
        return;
    }
    let fs = nix::sys::statvfs::statvfs("/dev/shm").unwrap();
    let total = fs.blocks() * fs.fragment_size();
    assert!(total <= 16 << 20, "/dev/shm holds {total} bytes here");
    // Named, it cannot even be made.
    let err = SharedArray::<u8>::zeros_in(Transport::Named, &[1 << 30]).unwrap_err();
    assert!(err.to_string().contains("no space"), "{err}");
    let gw = gateway();
    let ch = gw
        .remote_exec("a = channel.receive()\na[::4096] = 7\ns = int(a[::4096].sum())\ndel a\nchannel.send(s)")
        .unwrap();
    let mut big = SharedArray::<u8>::zeros(&[1 << 30]).unwrap();
    ch.send(big.lend().unwrap()).unwrap();
    let pages = (1u64 << 30) / 4096;
    assert_eq!(
        ch.receive_timeout(Duration::from_secs(120))
            .unwrap()
            .as_i64(),
        Some(7 * pages as i64)
    );
    common::wait_until(|| !big.is_lent(), "the lend given back");
    let v = big.view().unwrap();
    assert_eq!((v[0], v[1], v[4096], v[(1 << 30) - 4096]), (7, 0, 7, 7));
    drop(v);
    drop(big);
    gw.exit(T).unwrap();
    assert_no_segments();
}
