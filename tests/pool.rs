//! Pools of reused segments and frame streams, with a real CPython worker.

mod common;

use std::time::{Duration, Instant};

use common::{T, assert_no_segments, gateway, serial};
use pixgate::segment::Transport;
use pixgate::{Channel, ErrorKind, FrameStream, Pool, SharedArray, StreamMode, Value, WhenFull};

/// Answers `(kind, value)` requests about the arrays it is sent.
const PROBE: &str = r#"
import numpy as np
import pixgate
from pixgate import _array
held = []
for kind, arr in channel:
    if kind == "describe":
        seg = _array.segment_of(arr)[0]
        channel.send((arr.dtype.str, list(arr.shape), float(arr.sum()),
                      id(seg.mapping), arr))
        del seg
    elif kind == "hold":
        held.append(arr)
        channel.send(len(held))
    elif kind == "release held":
        pixgate.release(held.pop(0))
        channel.send(len(held))
    elif kind == "release twice":
        try:
            pixgate.release(arr)
            pixgate.release(arr)
            channel.send("released twice")
        except pixgate.ReleaseError as e:
            channel.send("ReleaseError: " + str(e))
    elif kind == "keep":
        channel.send(None)
    del arr
"#;

fn ask(ch: &Channel, kind: &str, v: Value) -> Value {
    ch.send(Value::Tuple(vec![kind.into(), v])).unwrap();
    ch.receive_timeout(T).unwrap()
}

fn free(pool: &Pool) -> usize {
    pool.stats().iter().map(|c| c.free).sum()
}

fn wait_free(pool: &Pool, n: usize) {
    common::wait_until(|| free(pool) == n, &format!("{n} free slots"));
}

#[test]
fn a_reused_slot_has_a_new_generation_and_refuses_stale_references() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let pool = Pool::builder().class(4096).slots(1).build().unwrap();
    assert_eq!(free(&pool), 1, "prefilled");

    let mut a = pool.take::<u16>(&[4, 4]).unwrap();
    a.view_mut().unwrap().fill(2);
    let (name, first_gen) = (a.name().to_string(), a.generation());
    let first = a.lend().unwrap();
    let Value::Array(first_ref) = &first else {
        panic!("a lend is a reference")
    };
    let first_offset = first_ref.offset();
    let r = ask(&ch, "describe", first.clone());
    let r = r.as_seq().unwrap();
    assert_eq!(r[0].as_str(), Some("<u2"));
    assert_eq!(r[2].as_f64(), Some(32.0));
    let mapping = r[3].as_i64().unwrap();
    drop(a);
    assert_eq!(free(&pool), 1, "given back and dropped: in the pool again");

    // The same slot, another type and shape: the worker re-reads the header over the
    // mapping it kept.
    let mut b = pool.take::<f32>(&[2, 3]).unwrap();
    b.view_mut().unwrap().fill(1.5);
    assert_eq!(b.name(), name, "the same slot");
    assert!(b.generation() > first_gen);
    let r = ask(&ch, "describe", b.lend().unwrap());
    let r = r.as_seq().unwrap();
    assert_eq!(r[0].as_str(), Some("<f4"));
    assert_eq!(r[1], Value::List(vec![2.into(), 3.into()]));
    assert_eq!(r[2].as_f64(), Some(9.0));
    assert_eq!(r[3].as_i64(), Some(mapping), "the same mapping");

    // The first use's reference was used up by its send ...
    let other = gw.remote_exec(PROBE).unwrap();
    let err = other
        .send(Value::Tuple(vec!["keep".into(), first]))
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Reference(_)), "{err:?}");
    // ... and a worker that names its generation anyway finds it stale.
    // (By name, or by token 0 and the slot's offset in its arena, as the transport has
    // it.)
    let reference = match b.transport() {
        Transport::Named => format!("_wire.ArrayRef({name:?}, {first_gen}, 1)"),
        Transport::Anonymous | Transport::ByValue => {
            format!("_wire.DescriptorRef({name:?}, 0, {first_offset}, {first_gen}, 1)")
        }
    };
    let stale = gw
        .remote_exec(&format!(
            "from pixgate import _transfer, _wire\n_transfer.install()\n\
             _transfer.import_reference({reference})"
        ))
        .unwrap();
    let err = stale.receive_timeout(T).unwrap_err();
    assert!(err.to_string().contains("stale reference"), "{err}");
    assert!(b.view().unwrap().iter().all(|&x| x == 1.5), "nothing lost");
    drop(b);
    drop(pool);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_slot_comes_back_when_the_worker_releases_it_and_not_twice() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let pool = Pool::builder().class(1 << 16).slots(2).build().unwrap();
    let mut a = pool.take::<u8>(&[100]).unwrap();
    let r = ask(&ch, "release twice", a.lend().unwrap());
    let text = r.as_str().unwrap();
    assert!(
        text.starts_with("ReleaseError:") && text.contains("already released"),
        "{text}"
    );
    drop(a);
    wait_free(&pool, 2);

    // A frame dropped by the host while the worker holds it comes back on release.
    let mut b = pool.take::<u8>(&[100]).unwrap();
    assert_eq!(ask(&ch, "hold", b.lend().unwrap()).as_i64(), Some(1));
    drop(b);
    assert_eq!(free(&pool), 1, "still out");
    assert_eq!(ask(&ch, "release held", Value::None).as_i64(), Some(0));
    wait_free(&pool, 2);

    // Releasing something that is not the host's array is an error too.
    let r = ask(&ch, "release twice", Value::None);
    assert!(r.as_str().unwrap().starts_with("ReleaseError:"));
    drop(pool);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn back_pressure_blocks_then_times_out() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let wait = Duration::from_millis(300);
    let pool = Pool::builder()
        .class(4096)
        .slots(2)
        .when_full(WhenFull::Block(wait))
        .build()
        .unwrap();
    for _ in 0..2 {
        let mut a = pool.take::<u8>(&[10]).unwrap();
        ask(&ch, "hold", a.lend().unwrap());
    }
    let start = Instant::now();
    let err = pool.take::<u8>(&[10]).unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(err.kind(), ErrorKind::PoolExhausted { slots: 2, .. }),
        "{err}"
    );
    assert!(waited >= wait && waited < T, "waited {waited:?}");

    // A release while it waits lets it through.
    std::thread::scope(|s| {
        let taker = s.spawn(|| {
            let start = Instant::now();
            let got = pool.take::<u8>(&[10]);
            (got.is_ok(), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        ask(&ch, "release held", Value::None);
        let (ok, after) = taker.join().unwrap();
        assert!(ok && after < wait, "took {after:?}");
    });

    // With WhenFull::Fail it fails at once.
    let fail = Pool::builder()
        .class(4096)
        .slots(1)
        .when_full(WhenFull::Fail)
        .build()
        .unwrap();
    let _held = fail.take::<u8>(&[1]).unwrap();
    let err = fail.take::<u8>(&[1]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::PoolExhausted { .. }),
        "{err}"
    );
    // An array larger than every class fits none.
    let err = fail.take::<u8>(&[4097]).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::PoolNoClass {
            needs: 4097,
            largest: 4096
        }
    ));
    drop((pool, fail, _held));
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

/// Collects the first element of every frame, releasing each as the loop moves on.
const CONSUMER: &str = r#"
import pixgate
seen = []
for frame in pixgate.frames(channel):
    seen.append(int(frame[0]))
channel.send(seen)
"#;

fn stream_in_order(mode: StreamMode, frames: u32) {
    let gw = gateway();
    let ch = gw.remote_exec(CONSUMER).unwrap();
    let pool = Pool::builder().class(1 << 12).slots(5).build().unwrap();
    let mut stream = FrameStream::new(&ch, &pool, mode).timeout(T);
    for i in 0..frames {
        let mut f = stream.frame::<u32>(&[256]).unwrap();
        f.view_mut().unwrap().fill(i);
        stream.send(f).unwrap();
        assert!(stream.in_flight() <= 4);
    }
    stream.finish().unwrap();
    assert_eq!(stream.sent(), u64::from(frames));
    ch.close().unwrap();
    let seen = ch.receive_timeout(T).unwrap();
    let seen: Vec<i64> = seen
        .as_seq()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(seen, (0..i64::from(frames)).collect::<Vec<_>>());
    let stats = pool.stats();
    assert_eq!((stats[0].free, stats[0].created), (5, 5), "every slot back");
    drop(stream);
    drop(pool);
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_pipelined_stream_of_10000_frames_arrives_complete_and_in_order() {
    let _serial = serial();
    stream_in_order(StreamMode::Pipelined(4), 10_000);
}

#[test]
fn a_lock_step_stream_arrives_complete_and_in_order() {
    let _serial = serial();
    stream_in_order(StreamMode::LockStep, 1_000);
}

#[test]
fn a_stale_wake_up_in_the_consumer_does_not_hold_back_releases() {
    // A wake-up token left in a channel's queue by a lost race made the frame loop think
    // the next frame was there, hold its releases back, and then wait for a frame the
    // host would only send after those releases. Releases now go whenever a receive
    // is about to block, whatever the queue holds.
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "import pixgate\nfrom pixgate import _worker\nn = 0\n\
             for frame in pixgate.frames(channel):\n    n += 1\n    \
             channel._items.put(_worker._WAKE)\nchannel.send(n)",
        )
        .unwrap();
    let pool = Pool::builder().class(1 << 12).slots(5).build().unwrap();
    for mode in [StreamMode::LockStep, StreamMode::Pipelined(4)] {
        let mut stream = FrameStream::new(&ch, &pool, mode).timeout(Duration::from_secs(5));
        for _ in 0..300 {
            let f = stream.frame::<u8>(&[64]).unwrap();
            stream.send(f).unwrap_or_else(|e| panic!("{mode:?}: {e:?}"));
        }
        stream.finish().unwrap();
    }
    ch.close().unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap().as_i64(), Some(600));
    drop(pool);
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_stream_whose_consumer_fails_reports_its_error() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec("import pixgate\nfor f in pixgate.frames(channel):\n    held = f\n    raise ValueError('bad frame')\n")
        .unwrap();
    let pool = Pool::builder().class(4096).slots(2).build().unwrap();
    let mut stream = FrameStream::new(&ch, &pool, StreamMode::LockStep).timeout(T);
    // The first frame may be released before the error closes the channel; a later
    // send or the finish reports it.
    let err = (0..10)
        .find_map(|_| {
            let f = stream.frame::<u8>(&[8]).unwrap();
            stream.send(f).err()
        })
        .or_else(|| stream.finish().err())
        .expect("an error");
    assert!(
        matches!(err.kind(), ErrorKind::Remote(r) if r.message == "bad frame"),
        "{err}"
    );
    // The slot still comes back once the worker lets go of it.
    drop(stream);
    wait_free(&pool, 2);
    // The gateway is intact.
    let echo = gw.remote_exec("channel.send(channel.receive())").unwrap();
    echo.send(5).unwrap();
    assert_eq!(echo.receive_timeout(T).unwrap().as_i64(), Some(5));
    drop(pool);
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn dropping_the_pool_unlinks_its_slots_also_those_in_flight() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let pool = Pool::builder()
        .class(4096)
        .class(1 << 20)
        .slots(2)
        .build()
        .unwrap();
    let mut a: SharedArray<u8> = pool.take(&[5000]).unwrap();
    assert_eq!(pool.stats()[1].free, 1, "the larger class");
    a.view_mut().unwrap().fill(9);
    ask(&ch, "hold", a.lend().unwrap());
    let name = a.name().to_string();
    drop(a);
    drop(pool);
    // Every slot's name is gone, also the one the worker holds (with the anonymous
    // transport: this process holds nothing of the arenas any more) ...
    let ours = format!("pxg-{:x}-", std::process::id());
    let left = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
        .count();
    assert_eq!(left, 0, "nothing of the pool is left in /dev/shm");
    let held = common::anonymous_objects_of("self");
    assert!(
        held.is_empty(),
        "nothing of the pool is held here: {held:?}"
    );
    assert!(
        common::maps_segment(gw.pid(), &name),
        "the worker still maps it"
    );
    // ... while the worker's mapping of it stays valid until it lets go.
    let r = ask(&ch, "release held", Value::None);
    assert_eq!(r.as_i64(), Some(0));
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_worker_that_dies_holding_arrays_gives_them_back() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let pool = Pool::builder().class(4096).slots(1).build().unwrap();
    let mut slot = pool.take::<u8>(&[16]).unwrap();
    ask(&ch, "hold", slot.lend().unwrap());
    drop(slot);
    let mut plain = SharedArray::<u8>::zeros(&[16]).unwrap();
    ask(&ch, "hold", plain.lend().unwrap());
    assert!(plain.view().is_err(), "lent");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(|| !plain.is_lent(), "the lend ended with the worker");
    assert_eq!(plain.view().unwrap().sum(), 0);
    assert_eq!(free(&pool), 1, "the slot is back");
    let err = ch.receive_timeout(T).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WorkerDied(_)), "{err}");
    drop((pool, plain));
    assert_no_segments();
}

#[test]
fn a_pool_in_a_backing_directory_crosses_like_any_other() {
    let _serial = serial();
    let dir = match common::Tmpfs::mount("pxgpool", "size=64m,mode=0700,huge=always") {
        Ok(d) => d,
        Err(e) if std::env::var_os("PIXGATE_TEST_STRICT").is_none() => {
            eprintln!("skipped: a huge-page tmpfs for the backing directory: {e}");
            return;
        }
        Err(e) => panic!("could not mount a huge-page tmpfs (needs root): {e}"),
    };
    let gw = gateway();
    let ch = gw.remote_exec(PROBE).unwrap();
    let pool = Pool::builder()
        .class(4 << 20)
        .slots(2)
        .backing_dir(&dir.0)
        .build()
        .unwrap();
    assert_eq!(dir.entries().len(), 2);
    for round in 0..3u16 {
        let mut a = pool.take::<u16>(&[1024, 1024]).unwrap();
        a.view_mut().unwrap().fill(round);
        let r = ask(&ch, "describe", a.lend().unwrap());
        let r = r.as_seq().unwrap();
        assert_eq!(r[2].as_f64(), Some(f64::from(round) * 1024.0 * 1024.0));
        assert!(!a.is_lent(), "given back");
    }
    // A stream from the directory, too.
    let consumer = gw.remote_exec(CONSUMER).unwrap();
    let mut stream = FrameStream::new(&consumer, &pool, StreamMode::Pipelined(1)).timeout(T);
    for i in 0..20u32 {
        let mut f = stream.frame::<u32>(&[8]).unwrap();
        f.view_mut().unwrap().fill(i);
        stream.send(f).unwrap();
    }
    stream.finish().unwrap();
    drop(stream);
    consumer.close().unwrap();
    let seen = consumer.receive_timeout(T).unwrap();
    assert_eq!(seen.as_seq().unwrap().len(), 20);
    drop(pool);
    assert!(dir.entries().is_empty(), "the pool's files are gone");
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn results_flow_back_through_a_second_pool_in_order() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "import pixgate\nfor frame, out in pixgate.frames(channel):\n    \
             out[...] = frame * 2 + 1\n    channel.send(out)\n",
        )
        .unwrap();
    let frames = Pool::builder().class(4096).slots(4).build().unwrap();
    let results = Pool::builder().class(8192).slots(6).build().unwrap();
    let mut stream = FrameStream::new(&ch, &frames, StreamMode::Pipelined(3)).timeout(T);
    let mut pending = std::collections::VecDeque::new();
    let check = |pending: &mut std::collections::VecDeque<(u32, SharedArray<u32>)>| {
        let back = ch.receive_timeout(T).unwrap();
        let (i, out) = pending.pop_front().unwrap();
        let Value::Array(ref r) = back else {
            panic!("expected the result array, got {back}")
        };
        assert_eq!(r.name(), out.name(), "results in order");
        assert!(!out.is_lent(), "sending it back gave it back");
        assert!(out.view().unwrap().iter().all(|&x| x == 2 * i + 1));
    };
    for i in 0..200u32 {
        let mut f = stream.frame::<u32>(&[64]).unwrap();
        f.view_mut().unwrap().fill(i);
        let mut out = results.take::<u32>(&[64]).unwrap();
        stream.send_with(f, &mut out).unwrap();
        pending.push_back((i, out));
        while pending.len() >= 4 {
            check(&mut pending);
        }
    }
    while !pending.is_empty() {
        check(&mut pending);
    }
    stream.finish().unwrap();
    assert_eq!(frames.stats()[0].free, 4);
    assert_eq!(results.stats()[0].free, results.stats()[0].created);
    drop(stream);
    drop((frames, results));
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn a_slot_lent_by_a_reference_never_sent_goes_with_the_pool() {
    let _serial = serial();
    let pool = Pool::builder().class(4096).slots(2).build().unwrap();
    let mut a = pool.take::<u8>(&[16]).unwrap();
    let never_sent = a.lend().unwrap();
    drop(a);
    assert_eq!(pool.stats()[0].free, 1, "still out: nobody will release it");
    drop(never_sent);
    drop(pool);
    assert_no_segments();
}
