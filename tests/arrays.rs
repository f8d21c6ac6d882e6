//! Shared arrays crossing to a real CPython worker and back, without copies.

mod common;

use std::time::{Duration, Instant};

use common::{T, assert_no_segments, gateway, serial};
use ndarray::{ArrayD, IxDyn};
use num_complex::Complex;
use pixgate::{Element, ErrorKind, Gateway, SharedArray, Value};

/// The worker doubles every array it is lent (inverts bools) and gives it back; shared
/// arrays it only
/// reads and answers with their sum; moved arrays it returns doubled as a new array.
const SERVER: &str = r#"
import numpy as np
for msg in channel:
    kind, arr = msg
    if kind == "double":
        if arr.dtype == np.bool_:
            np.logical_not(arr, out=arr)
        else:
            arr *= 2
        channel.send(("done", arr))
    elif kind == "sum":
        channel.send(("sum", float(np.asarray(arr, dtype=np.complex128).sum().real)))
        del arr
    elif kind == "write":
        try:
            arr[...] = 1
            channel.send(("wrote", None))
        except ValueError as e:
            channel.send(("refused", str(e)))
    elif kind == "echo":
        channel.send(("echo", arr))
    del msg, arr  # let go of it now: a shared or lent array is released when collected
"#;

fn ask(ch: &pixgate::Channel, kind: &str, v: Value) -> (String, Value) {
    ch.send(Value::Tuple(vec![Value::from(kind), v])).unwrap();
    let reply = ch.receive_timeout(T).unwrap();
    let t = reply.as_seq().unwrap().to_vec();
    (t[0].as_str().unwrap().to_string(), t[1].clone())
}

fn wait_released<E: Element>(a: &SharedArray<E>) {
    let t = Instant::now();
    while (a.is_lent() || a.peer_shares() > 0) && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!a.is_lent() && a.peer_shares() == 0, "not released: {a:?}");
}

fn double_round_trip<E>(values: Vec<E>, doubled: impl Fn(E) -> E)
where
    E: Element + PartialEq + std::fmt::Debug,
{
    let gw = gateway();
    let ch = gw.remote_exec(SERVER).unwrap();
    let n = values.len();
    let src = ArrayD::from_shape_vec(IxDyn(&[n]), values.clone()).unwrap();
    let mut a = SharedArray::<E>::from_ndarray(&src).unwrap();
    let lent = a.lend().unwrap();
    assert!(a.view().is_err(), "a lent array cannot be read");
    let (kind, back) = ask(&ch, "double", lent);
    assert_eq!(kind, "done");
    assert!(matches!(back, Value::Array(_)));
    // Sending it back released it.
    assert!(!a.is_lent());
    let want: Vec<E> = values.iter().map(|&v| doubled(v)).collect();
    assert_eq!(a.view().unwrap().iter().copied().collect::<Vec<_>>(), want);
    drop(a);
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn every_dtype_is_lent_doubled_in_place_and_given_back() {
    let _serial = serial();
    double_round_trip(vec![0u8, 1, 100], |v| v.wrapping_mul(2));
    double_round_trip(vec![0u16, 7, 30000], |v| v.wrapping_mul(2));
    double_round_trip(vec![1u32, 1 << 30], |v| v.wrapping_mul(2));
    double_round_trip(vec![3u64, 1 << 62], |v| v.wrapping_mul(2));
    double_round_trip(vec![-3i8, 60], |v| v.wrapping_mul(2));
    double_round_trip(vec![-3i16, 600], |v| v.wrapping_mul(2));
    double_round_trip(vec![-3i32, 1 << 29], |v| v.wrapping_mul(2));
    double_round_trip(vec![-3i64, 1 << 61], |v| v.wrapping_mul(2));
    double_round_trip(vec![half::f16::from_f32(1.5)], |v| {
        half::f16::from_f32(v.to_f32() * 2.0)
    });
    double_round_trip(vec![1.25f32, -0.5], |v| v * 2.0);
    double_round_trip(vec![1.25f64, -1e300], |v| v * 2.0);
    double_round_trip(vec![Complex::new(1.0f32, -2.0)], |v| v * 2.0);
    double_round_trip(vec![Complex::new(1.0f64, 3.0)], |v| v * 2.0);
    // Bools are inverted instead.
    double_round_trip(vec![true, false], |v| !v);
}

#[test]
fn shared_arrays_are_read_only_in_python_and_readable_in_rust_meanwhile() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(SERVER).unwrap();
    let mut a = SharedArray::<u16>::zeros(&[2, 3]).unwrap();
    a.view_mut().unwrap().fill(5);
    let r = a.share().unwrap();
    // Rust keeps reading while the share is out, but cannot write.
    assert_eq!(a.view().unwrap().sum(), 30);
    assert!(matches!(
        a.view_mut().unwrap_err().kind(),
        ErrorKind::Busy(_)
    ));
    let (kind, msg) = ask(&ch, "write", r);
    assert_eq!(kind, "refused", "{msg}");
    assert!(msg.as_str().unwrap().contains("read-only"), "{msg}");
    // The bytes are unchanged, and the share is released when Python lets go.
    wait_released(&a);
    assert_eq!(a.view().unwrap().sum(), 30);
    a.view_mut().unwrap().fill(1);
    let (kind, sum) = ask(&ch, "sum", a.share().unwrap());
    assert_eq!((kind.as_str(), sum.as_f64()), ("sum", Some(6.0)));
    wait_released(&a);
    drop(a);
    drop(ch);
    drop(gw);
    assert_no_segments();
}

#[test]
fn python_made_arrays_move_to_the_host_with_metadata() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            r#"
import pixgate, numpy as np
a = pixgate.zeros((2, 3, 4), "uint16", dims=("z", "y", "x"), meta={"scale": [2.0, 0.5, 0.5], "units": ["um", "um", "um"], "name": "stack", "attrs": {"objective": "60x"}})
a[...] = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
channel.send(a)
channel.send(np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2])   # plain, strided: copied
"#,
        )
        .unwrap();
    let a = SharedArray::<u16>::from_value(ch.receive_timeout(T).unwrap()).unwrap();
    assert_eq!(a.shape(), &[2, 3, 4]);
    assert_eq!(
        a.view().unwrap().iter().map(|&v| v as u32).sum::<u32>(),
        (0..24).sum()
    );
    let m = a.meta();
    assert_eq!(
        m.dims.as_deref(),
        Some(&["z".to_string(), "y".into(), "x".into()][..])
    );
    assert_eq!(m.scale.as_deref(), Some(&[2.0, 0.5, 0.5][..]));
    assert_eq!(m.name.as_deref(), Some("stack"));
    assert_eq!(m.attrs, vec![("objective".to_string(), Value::from("60x"))]);
    let b = SharedArray::<f32>::from_value(ch.receive_timeout(T).unwrap()).unwrap();
    assert_eq!(b.shape(), &[2, 2]);
    assert_eq!(
        b.view().unwrap().iter().copied().collect::<Vec<_>>(),
        [0.0, 2.0, 3.0, 5.0]
    );
    // The host owns them now: they go when the arrays are dropped, even after the
    // worker is gone.
    gw.exit(T).unwrap();
    assert!(common::segment_exists(a.name()));
    let name = a.name().to_string();
    drop((a, b));
    assert!(!common::segment_exists(&name));
    assert_no_segments();
}

#[test]
fn wrong_dtype_or_stale_reference_is_refused() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec("import pixgate\nchannel.send(pixgate.zeros((3,), 'int32'))")
        .unwrap();
    let v = ch.receive_timeout(T).unwrap();
    let err = SharedArray::<f32>::from_value(v.clone()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Convert(_)), "{err:?}");
    assert!(err.to_string().contains("<i4"), "{err}");
    // The right type still takes it (and owns and unlinks it).
    let a = SharedArray::<i32>::from_value(v).unwrap();
    drop(a);
    let err = SharedArray::<i32>::from_value(Value::from(3)).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Convert(_)));
    drop(gw);
    assert_no_segments();
}

#[test]
fn odd_shapes_cross_both_ways() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(SERVER).unwrap();
    for shape in [vec![], vec![0, 5], vec![1; 32], vec![3, 0, 2]] {
        let mut a = SharedArray::<i16>::zeros(&shape).unwrap();
        if !a.view().unwrap().is_empty() {
            a.view_mut().unwrap().fill(21);
        }
        let (kind, back) = ask(&ch, "double", a.lend().unwrap());
        assert_eq!(kind, "done");
        assert!(matches!(back, Value::Array(_)));
        let v = a.view().unwrap();
        assert_eq!(v.shape(), &shape[..]);
        assert!(v.iter().all(|&x| x == 42), "{shape:?}");
    }
    let (kind, echoed) = ask(
        &ch,
        "echo",
        SharedArray::<u8>::zeros(&[4])
            .unwrap()
            .into_value()
            .unwrap(),
    );
    assert_eq!(kind, "echo");
    // A moved array comes back moved again: the host owns it once more.
    let back = SharedArray::<u8>::from_value(echoed).unwrap();
    assert_eq!(back.shape(), &[4]);
    drop(back);
    drop(gw);
    assert_no_segments();
}

#[test]
fn a_stack_larger_than_4_gib_crosses_and_is_modified_in_place() {
    let _serial = serial();
    let n: usize = (4 << 30) + 4096 * 3 + 7;
    let gw: Gateway = gateway();
    // By value over ssh the 4 GiB cross twice (there and back), at ssh's speed.
    let wait = if common::over_ssh() { 600 } else { 30 };
    let ch = gw
        .remote_exec(&format!(
            "arr = channel.receive({wait})\narr[0] = 1\narr[2**32 + 5] = 2\narr[-1] = 3\nchannel.send(arr)"
        ))
        .unwrap();
    let mut a = SharedArray::<u8>::zeros(&[n]).unwrap();
    ch.send(a.lend().unwrap()).unwrap();
    ch.receive_timeout(Duration::from_secs(2 * wait)).unwrap();
    let v = a.view().unwrap();
    assert_eq!((v[0], v[(1 << 32) + 5], v[n - 1], v[12345]), (1, 2, 3, 0));
    drop(v);
    drop(a);
    drop(gw);
    assert_no_segments();
}

#[test]
fn a_worker_unlinks_what_it_owns_when_its_host_is_killed() {
    let _serial = serial();
    let (mut host, line) = common::host_running(
        "owner",
        "import pixgate, pixgate._array as pa, time\na = pixgate.zeros((1 << 20,), 'uint8')\nchannel.send(pa.segment_of(a)[0].name)\ntime.sleep(60)",
    );
    let name = line.trim().trim_matches('\'').to_string();
    assert!(common::segment_exists(&name), "{name}");
    host.kill().unwrap();
    host.wait().unwrap();
    let t = Instant::now();
    while common::segment_exists(&name) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!common::segment_exists(&name), "{name} outlived its owner");
    eprintln!(
        "worker's segment gone {:?} after its host was killed",
        t.elapsed()
    );
}

#[test]
fn metadata_set_in_rust_reaches_numpy_and_xarray() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            r#"
import pixgate
arr = channel.receive(10)
m = pixgate.meta(arr)
try:
    x = pixgate.to_xarray(arr)
    xr = (list(x.dims), [float(v) for v in x.coords["x"].values], x.attrs.get("name"))
except ImportError as e:
    xr = str(e)
channel.send((m, xr))
del arr
"#,
        )
        .unwrap();
    let mut a = SharedArray::<f32>::zeros(&[2, 3]).unwrap();
    a.set_meta(pixgate::Meta {
        dims: Some(vec!["y".into(), "x".into()]),
        scale: Some(vec![0.5, 0.25]),
        units: Some(vec!["um".into(), "um".into()]),
        channel_names: None,
        name: Some("plane".into()),
        attrs: vec![("exposure_ms".into(), Value::Float(12.5))],
    })
    .unwrap();
    ch.send(a.share().unwrap()).unwrap();
    let reply = ch.receive_timeout(T).unwrap();
    let t = reply.as_seq().unwrap();
    let m = &t[0];
    assert_eq!(m.get("name").and_then(Value::as_str), Some("plane"));
    assert_eq!(
        m.get("attrs")
            .and_then(|a| a.get("exposure_ms"))
            .and_then(Value::as_f64),
        Some(12.5)
    );
    match &t[1] {
        Value::Str(msg) => {
            // xarray needs pandas, which has no build for PyPy: there its absence is
            // expected, and said; anywhere else strict mode wants it.
            let interpreter = gw.info().interpreter();
            assert!(
                std::env::var_os("PIXGATE_TEST_STRICT").is_none()
                    || interpreter.to_lowercase().contains("pypy"),
                "xarray missing: {msg}"
            );
            eprintln!("arrays: the xarray part NOT RUN on {interpreter}: {msg}");
        }
        xr => {
            let xr = xr.as_seq().unwrap();
            assert_eq!(xr[0], Value::List(vec!["y".into(), "x".into()]));
            assert_eq!(
                xr[1],
                Value::List(vec![0.0.into(), 0.25.into(), 0.5.into()])
            );
            assert_eq!(xr[2].as_str(), Some("plane"));
        }
    }
    wait_released(&a);
    drop(a);
    drop(gw);
    assert_no_segments();
}

#[test]
fn arrays_nest_inside_lists_tuples_and_dicts_both_ways() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            r#"
import numpy as np, pixgate
msg = channel.receive(10)
a = msg["frames"][0]
b = msg["frames"][1][1]
channel.send({"sums": [int(a.sum()), int(b.sum())], "out": [pixgate.full((2,), 7, "int32"), (np.arange(3, dtype=np.int32),)]})
del msg, a, b
"#,
        )
        .unwrap();
    let mut a = SharedArray::<i32>::zeros(&[4]).unwrap();
    a.view_mut().unwrap().fill(2);
    let mut b = SharedArray::<i32>::zeros(&[3]).unwrap();
    b.view_mut().unwrap().fill(5);
    let msg = Value::dict([(
        "frames",
        Value::List(vec![
            a.share().unwrap(),
            Value::Tuple(vec![Value::None, b.share().unwrap()]),
        ]),
    )]);
    ch.send(msg).unwrap();
    let reply = ch.receive_timeout(T).unwrap();
    assert_eq!(
        reply.get("sums"),
        Some(&Value::List(vec![Value::Int(8), Value::Int(15)]))
    );
    let out = reply.get("out").unwrap().as_seq().unwrap();
    let full = SharedArray::<i32>::from_value(out[0].clone()).unwrap();
    let arange = SharedArray::<i32>::from_value(out[1].as_seq().unwrap()[0].clone()).unwrap();
    assert_eq!(
        full.view().unwrap().iter().copied().collect::<Vec<_>>(),
        [7, 7]
    );
    assert_eq!(
        arange.view().unwrap().iter().copied().collect::<Vec<_>>(),
        [0, 1, 2]
    );
    wait_released(&a);
    wait_released(&b);
    drop((a, b, full, arange));
    drop(gw);
    assert_no_segments();
}

#[test]
fn every_dtype_made_in_python_moves_to_the_host_with_its_values() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            r#"
import numpy as np, pixgate
for name in ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
             "int64", "float16", "float32", "float64", "complex64", "complex128"]:
    a = pixgate.empty((3,), name)
    a[...] = np.array([1, 0, 1]).astype(name) if name == "bool" else np.array([1, -2, 3]).astype(name)
    channel.send(a)
"#,
        )
        .unwrap();
    fn take<E: Element + Copy>(ch: &pixgate::Channel) -> Vec<E> {
        let a = SharedArray::<E>::from_value(ch.receive_timeout(T).unwrap()).unwrap();
        let v: Vec<E> = a.view().unwrap().iter().copied().collect();
        v
    }
    assert_eq!(take::<bool>(&ch), [true, false, true]);
    assert_eq!(take::<u8>(&ch), [1, 254, 3]);
    assert_eq!(take::<u16>(&ch), [1, 65534, 3]);
    assert_eq!(take::<u32>(&ch), [1, u32::MAX - 1, 3]);
    assert_eq!(take::<u64>(&ch), [1, u64::MAX - 1, 3]);
    assert_eq!(take::<i8>(&ch), [1, -2, 3]);
    assert_eq!(take::<i16>(&ch), [1, -2, 3]);
    assert_eq!(take::<i32>(&ch), [1, -2, 3]);
    assert_eq!(take::<i64>(&ch), [1, -2, 3]);
    assert_eq!(
        take::<half::f16>(&ch),
        [1.0f32, -2.0, 3.0].map(half::f16::from_f32)
    );
    assert_eq!(take::<f32>(&ch), [1.0, -2.0, 3.0]);
    assert_eq!(take::<f64>(&ch), [1.0, -2.0, 3.0]);
    assert_eq!(
        take::<Complex<f32>>(&ch),
        [1.0f32, -2.0, 3.0].map(|r| Complex::new(r, 0.0))
    );
    assert_eq!(
        take::<Complex<f64>>(&ch),
        [1.0f64, -2.0, 3.0].map(|r| Complex::new(r, 0.0))
    );
    ch.wait_close(Some(T)).unwrap();
    drop(gw);
    assert_no_segments();
}

/// Shapes that must cross exactly as they are: 0-d, zero-size axes, 32 dimensions.
const SHAPES: &[&[usize]] = &[
    &[],
    &[1],
    &[0],
    &[0, 3],
    &[3, 0],
    &[3, 0, 2],
    &[2, 3],
    &[1; 32],
    &[
        2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 3,
    ],
];

/// Reports every array it receives (its shape and its values in C order, as Python
/// sees them), then gives a lent one back incremented, a moved one back incremented
/// (moved again), and lets a shared one go.
const SHAPE_SERVER: &str = r#"
import numpy as np
for kind, arr in channel:
    channel.send((list(arr.shape), arr.ndim, [int(x) for x in arr.reshape(-1)]))
    if kind == "shared":
        del arr
        continue
    arr += 1
    channel.send(arr)
    del arr
"#;

fn numbered(shape: &[usize]) -> SharedArray<u16> {
    let mut a = SharedArray::<u16>::zeros(shape).unwrap();
    for (i, x) in a.view_mut().unwrap().iter_mut().enumerate() {
        *x = i as u16 + 1;
    }
    a
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_seq()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn every_shape_crosses_to_python_exactly_shared_lent_and_moved() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw.remote_exec(SHAPE_SERVER).unwrap();
    for &shape in SHAPES {
        let count: usize = shape.iter().product();
        let want: Vec<i64> = (1..=count as i64).collect();
        let plus_one: Vec<u16> = (2..=count as u16 + 1).collect();
        for kind in ["shared", "lent", "moved"] {
            let mut a = numbered(shape);
            let r = match kind {
                "shared" => a.share().unwrap(),
                "lent" => a.lend().unwrap(),
                _ => numbered(shape).into_value().unwrap(),
            };
            ch.send(Value::Tuple(vec![kind.into(), r])).unwrap();
            let seen = ch.receive_timeout(T).unwrap();
            let seen = seen.as_seq().unwrap();
            let dims: Vec<usize> = ints(&seen[0]).iter().map(|&n| n as usize).collect();
            assert_eq!(dims, shape, "{kind} {shape:?}: the shape Python sees");
            assert_eq!(
                seen[1].as_i64(),
                Some(shape.len() as i64),
                "{kind} {shape:?}"
            );
            assert_eq!(
                ints(&seen[2]),
                want,
                "{kind} {shape:?}: the values Python sees"
            );
            match kind {
                "shared" => wait_released(&a),
                "lent" => {
                    let back = ch.receive_timeout(T).unwrap();
                    assert!(matches!(back, Value::Array(_)));
                    assert!(!a.is_lent());
                    let v = a.view().unwrap();
                    assert_eq!(v.shape(), shape, "lent {shape:?} after the round trip");
                    assert_eq!(v.iter().copied().collect::<Vec<_>>(), plus_one);
                }
                _ => {
                    let b = SharedArray::<u16>::from_value(ch.receive_timeout(T).unwrap()).unwrap();
                    assert_eq!(b.shape(), shape, "moved {shape:?} back");
                    let v = b.view().unwrap();
                    assert_eq!(v.shape(), shape);
                    assert_eq!(v.iter().copied().collect::<Vec<_>>(), plus_one);
                }
            }
        }
    }
    ch.close().unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn every_shape_made_in_python_reaches_the_host_exactly() {
    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            r#"
import numpy as np, pixgate
base = np.arange(1, 7, dtype=np.uint16)
shared = pixgate.asarray(base)
made = pixgate.empty((), "uint16")
made[...] = 9
cases = [
    ("plain 0-d", np.array(5, dtype=np.uint16)),
    ("0-d view of a plain array", base[4, ...]),
    ("0-d view of a shared array", shared[2, ...]),
    ("0-d view of a 2-d array", base.reshape(2, 3)[1, 2, ...]),
    ("pixgate.empty(())", made),
    ("pixgate.full(())", pixgate.full((), 4, "uint16")),
    ("plain (0, 3)", np.zeros((0, 3), np.uint16)),
    ("plain (3, 0, 2)", np.zeros((3, 0, 2), np.uint16)),
    ("plain (0,)", np.zeros((0,), np.uint16)),
    ("pixgate (0, 3)", pixgate.zeros((0, 3), "uint16")),
    ("pixgate (3, 0, 2)", pixgate.zeros((3, 0, 2), "uint16")),
    ("plain 32 ones", np.full((1,) * 32, 7, np.uint16)),
    ("pixgate 32 ones", pixgate.full((1,) * 32, 8, "uint16")),
    ("plain 32-d, Fortran order", np.array(base.reshape((2,) + (1,) * 30 + (3,)), order="F")),
    ("plain (1,)", np.array([6], np.uint16)),
    ("a shared array, whole: moves", shared),
    ("the same array again: copied", shared),
]
for label, a in cases:
    channel.send((label, list(a.shape), [int(x) for x in a.reshape(-1)], a))
"#,
        )
        .unwrap();
    // Every case is checked before the test fails, so that one report lists them all.
    let mut wrong = Vec::new();
    for _ in 0..17 {
        let item = ch.receive_timeout(T).unwrap();
        let t = item.as_seq().unwrap();
        let label = t[0].as_str().unwrap().to_string();
        let shape: Vec<usize> = ints(&t[1]).iter().map(|&n| n as usize).collect();
        let values: Vec<u16> = ints(&t[2]).iter().map(|&n| n as u16).collect();
        let a = match SharedArray::<u16>::from_value(t[3].clone()) {
            Ok(a) => a,
            Err(e) => {
                wrong.push(format!("{label}: {e}"));
                continue;
            }
        };
        let v = a.view().unwrap();
        let got: Vec<u16> = v.iter().copied().collect();
        if a.shape() != shape || v.shape() != shape || got != values {
            wrong.push(format!(
                "{label}: shape {:?}, values {got:?}; sent as {shape:?}, {values:?}",
                a.shape()
            ));
        }
    }
    assert!(wrong.is_empty(), "arrived wrong:\n{}", wrong.join("\n"));
    ch.wait_close(Some(T)).unwrap();
    gw.exit(T).unwrap();
    assert_no_segments();
}

#[test]
fn from_slice_and_from_vec_copy_in_c_order_and_check_the_shape() {
    let _serial = serial();
    let a = SharedArray::from_slice(&[1u16, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.view().unwrap()[[1, 2]], 6);
    let b = SharedArray::from_vec((0..24).map(f64::from).collect(), &[2, 3, 4]).unwrap();
    assert_eq!(b.view().unwrap()[[1, 2, 3]], 23.0);
    let z = SharedArray::<u8>::from_vec(vec![], &[0, 5]).unwrap();
    assert_eq!(z.shape(), &[0, 5]);
    for shape in [&[4, 2][..], &[7], &[usize::MAX, 3]] {
        let err = SharedArray::from_slice(&[1u8, 2, 3, 4, 5, 6, 7, 8, 9], shape).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidArgument(_)), "{err}");
    }
    // The worker sees the same elements.
    let gw = gateway();
    let ch = gw
        .remote_exec("a = channel.receive()\nchannel.send(a.tolist())")
        .unwrap();
    ch.send(a.share().unwrap()).unwrap();
    let got = ch.receive_timeout(T).unwrap();
    assert_eq!(got.to_string(), "[[1, 2, 3], [4, 5, 6]]");
    drop(ch);
    gw.exit(T).unwrap();
    drop((a, b, z));
    assert_no_segments();
}

#[test]
fn wait_released_returns_once_the_worker_lets_go_and_times_out_while_it_holds() {
    let _serial = serial();
    let gw = gateway();
    let mut a = SharedArray::<i32>::zeros(&[8]).unwrap();
    let ch = gw
        .remote_exec(
            "a = channel.receive()\na[:] = 7\nchannel.receive()\ndel a\nchannel.send('gone')",
        )
        .unwrap();
    ch.send(a.lend().unwrap()).unwrap();
    let t = Instant::now();
    let err = ch
        .wait_released(&a, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(a.view_mut().is_err(), "still lent");
    ch.send(Value::from("let go")).unwrap();
    ch.wait_released(&a, T).unwrap();
    assert_eq!(a.view_mut().unwrap().sum(), 56);
    assert_eq!(ch.receive_timeout(T).unwrap().as_str(), Some("gone"));
    // Never sent: returns at once.
    let b = SharedArray::<u8>::zeros(&[2]).unwrap();
    ch.wait_released(&b, Duration::from_millis(1)).unwrap();
    drop(ch);
    gw.exit(T).unwrap();
    drop((a, b));
    assert_no_segments();
}

#[test]
fn receive_as_takes_structs_vecs_and_dicts_of_arrays_and_names_the_failing_key() {
    use std::collections::HashMap;

    #[derive(serde::Deserialize)]
    struct Result {
        labels: SharedArray<u16>,
        stats: Vec<SharedArray<f64>>,
        count: i64,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        labels: SharedArray<f32>,
    }

    let _serial = serial();
    let gw = gateway();
    let ch = gw
        .remote_exec(
            "import numpy as np, pixgate\n\
             def mk(a):\n    s = pixgate.empty(a.shape, a.dtype); s[...] = a; return s\n\
             channel.send({'labels': mk(np.arange(6, dtype=np.uint16).reshape(2, 3)),\n\
                           'stats': [mk(np.zeros(3)), mk(np.ones(4))], 'count': 3})\n\
             channel.send({'x': mk(np.arange(3.0)), 'y': mk(np.full(3, 2.0))})\n\
             channel.send({'labels': mk(np.zeros(2, np.uint16))})",
        )
        .unwrap();
    let r: Result = ch.receive_as(Some(T)).unwrap();
    assert_eq!(r.labels.shape(), &[2, 3]);
    assert_eq!(r.labels.view().unwrap()[[1, 2]], 5);
    assert_eq!(r.stats.len(), 2);
    assert_eq!(r.stats[1].view().unwrap().sum(), 4.0);
    assert_eq!(r.count, 3);
    let columns: HashMap<String, SharedArray<f64>> = ch.receive_as(Some(T)).unwrap();
    assert_eq!(columns["y"].view().unwrap().sum(), 6.0);
    let err = ch.receive_as::<Wrong>(Some(T)).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Convert(_)), "{err}");
    assert!(err.to_string().contains("field \"labels\""), "{err}");
    // Any other serde format cannot make a SharedArray.
    let bad: std::result::Result<SharedArray<u8>, _> =
        serde::de::Deserialize::deserialize(serde::de::value::UnitDeserializer::<
            serde::de::value::Error,
        >::new());
    assert!(bad.unwrap_err().to_string().contains("pixgate Value"));
    drop(ch);
    gw.exit(T).unwrap();
    drop((r, columns));
    assert_no_segments();
}
