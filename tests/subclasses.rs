//! Values of subclasses of builtin types sent by remote code arrive as their base type,
//! next to numpy scalars (numbers) and a numpy array (a reference, through the array
//! layer's hooks), in one container.

mod common;

use common::{T, assert_no_segments, gateway};
use pixgate::{SharedArray, Value};

const SEND_SUBCLASSES: &str = r#"
import collections, enum
import numpy as np

class Color(enum.IntEnum):
    RED = 3

class Flag(enum.IntFlag):
    A = 1
    B = 4

class Name(str):
    pass

class Ratio(float):
    pass

class Items(list):
    pass

Point = collections.namedtuple("Point", "x y")
ordered = collections.OrderedDict(b=1, a=2)
channel.send([
    Color.RED, Flag.A | Flag.B, True, Name("n"), Ratio(0.25), Items([1, Name("i")]),
    Point(1, 2), ordered, {Color.RED: Name("v")},
    np.float64(1.5), np.int32(-7), np.uint64(2**63), np.bool_(False), np.str_("s"),
    np.arange(6, dtype=np.uint16).reshape(2, 3),
])
"#;

#[test]
fn subclasses_arrive_as_their_base_type_and_arrays_as_references() {
    let gw = gateway();
    let ch = gw.remote_exec(SEND_SUBCLASSES).unwrap();
    let mut received = ch.receive_timeout(T).unwrap();
    let Value::List(items) = &mut received else {
        panic!("expected a list, got {received}");
    };
    let array = items.pop().expect("the array");
    let want = vec![
        Value::Int(3),
        Value::Int(5),
        Value::Bool(true),
        Value::from("n"),
        Value::Float(0.25),
        Value::List(vec![1.into(), "i".into()]),
        Value::Tuple(vec![1.into(), 2.into()]),
        Value::dict([("b", 1), ("a", 2)]),
        Value::Dict(vec![(Value::Int(3), Value::from("v"))]),
        Value::Float(1.5),
        Value::Int(-7),
        Value::from(1u64 << 63),
        Value::Bool(false),
        Value::from("s"),
    ];
    assert_eq!(*items, want);
    let a = SharedArray::<u16>::from_value(array).unwrap();
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(
        a.view().unwrap().iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    ch.wait_close(Some(T)).unwrap();
    drop(a);
    drop(ch);
    drop(gw);
    assert_no_segments();
}
