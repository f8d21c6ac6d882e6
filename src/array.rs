//! Shared arrays: n-dimensional arrays in named shared memory that cross to Python
//! without a copy.
//!
//! # Rationale
//!
//! Rust's borrow rules say that while someone may write memory, nobody else reads it.
//! A [`SharedArray`] extends that rule to the worker process on the other end of a
//! channel:
//!
//! - [`SharedArray::share`] hands the worker a **read-only** reference. The worker maps
//!   the segment read-only (numpy cannot re-enable writes on it), and Rust may keep
//!   reading, but not writing, until every share is released.
//! - [`SharedArray::lend`] hands the worker a **writable** reference. From that call on,
//!   Rust can neither read nor write the array until the worker releases it; `lend`
//!   takes `&mut self`, so no view made before it can still be alive.
//! - A **split lend** (crate-internal, made by [`Group::map_planes`](crate::Group::map_planes))
//!   hands one writable reference to each of several workers at once, each told the
//!   range it writes. The array counts every part, and Rust can neither read nor write
//!   it until the last part is released; the caller holds `&mut` to the array for the
//!   whole time, as with `lend`.
//! - [`SharedArray::into_value`] **moves** the array: ownership (and the duty to unlink
//!   the segment) passes to the receiver.
//!
//! Typed views ([`SharedArray::view`], [`SharedArray::view_mut`]) are `ndarray` views
//! that borrow the array, and are only handed out while the peer's access allows them.
//! Safe Rust therefore never holds a slice over bytes the other process may write.
//!
//! The worker releases a share or lend by a RELEASE message when its numpy array is
//! garbage-collected, or by sending the array back; the channel layer applies those to
//! the array's state (a process-wide registry keyed by segment name).
//!
//! # Limitations
//!
//! - The peer's access changes when the reference is *made*, not when it is sent: a
//!   reference made and never sent keeps the array marked until the process ends.
//! - A worker that dies releases everything only it held: a lent array becomes usable
//!   again with whatever the worker had written (possibly half of it), a pool slot goes
//!   back to its pool. Of an array that other live workers were sent too, only the
//!   references made *for* the dead worker (a group's shares and split-lend parts, which
//!   record their gateway) are released; a plain share sent to several workers stays
//!   counted until each releases it, since the registry cannot tell whose it was.
//! - The parts of a split lend are separated by agreement, not by the mapping: every
//!   worker maps the whole array writable, and keeping to its own range is the duty of
//!   the code that writes (pixgate's group harness, or a caller's cooperating code).
//! - The guarantee holds against a cooperating helper. A hostile process of the same
//!   user can map any segment it can name; segments are mode 0600, so other users cannot.
//!
//! A view cannot outlive its array:
//!
//! ```compile_fail,E0597
//! use pixgate::SharedArray;
//! let view = {
//!     let a = SharedArray::<u16>::zeros(&[4]).unwrap();
//!     a.view().unwrap()
//! }; // `a` is dropped here while `view` borrows it
//! ```
//!
//! Lending needs exclusive access, so a live view forbids it:
//!
//! ```compile_fail,E0502
//! use pixgate::SharedArray;
//! let mut a = SharedArray::<u16>::zeros(&[4]).unwrap();
//! let v = a.view().unwrap();
//! let r = a.lend();
//! drop(v);
//! ```

use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

use crate::error::{Error, ErrorKind, Result};
use crate::header::{DType, Layout, Meta};
use crate::inbox::Shared;
use crate::output::lock;
use crate::pool::PoolShared;
use crate::segment::Segment;
use crate::value::{Access, ArrayRef, Value};

mod sealed {
    pub trait Sealed {}
}

/// Element types a [`SharedArray`] can hold: numpy's bool, integer, float and complex
/// types. Sealed: every implementor is plain data, valid for every bit pattern except
/// `bool`, whose bytes are checked before a view exists.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The numpy dtype of this type.
    const DTYPE: DType;
    /// True when `bytes` holds only valid values of this type.
    #[doc(hidden)]
    fn bytes_valid(bytes: &[u8]) -> bool {
        let _ = bytes;
        true
    }
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    )*};
}

element! {
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    half::f16 => F16, f32 => F32, f64 => F64,
    num_complex::Complex<f32> => C64, num_complex::Complex<f64> => C128,
}

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn bytes_valid(bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| b <= 1)
    }
}

/// What the peer may currently do with an array this process holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerAccess {
    /// Read-only references not yet released.
    pub(crate) shares: u32,
    /// Writable references not yet released: 1 for a lend, one per worker for a split
    /// lend (each writing its own part).
    pub(crate) lent: u32,
    /// The segment's generation; a release naming another one is stale.
    pub(crate) generation: u64,
}

/// The registry's record of one array.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) access: PeerAccess,
    /// The gateways whose workers were sent a shared or lent reference: they may keep
    /// the segment mapped until told it is gone.
    pub(crate) peers: Vec<Weak<Shared>>,
    /// References made for a known gateway (a share or part of a split lend made by a
    /// [`Group`](crate::Group)), counted in `access` too: a release from that gateway
    /// settles its own part, and its death releases exactly its parts.
    parts: Vec<(Weak<Shared>, Access)>,
    /// A pool slot whose handle was dropped while the peer held it: it goes back to its
    /// pool when the peer releases it.
    orphan: Option<(Segment, Arc<PoolShared>)>,
}

type Registry = Mutex<HashMap<String, Arc<Mutex<Held>>>>;

/// Segment name → peer access of the arrays this process holds.
static REGISTRY: LazyLock<Registry> = LazyLock::new(Default::default);

fn new_held(generation: u64) -> Arc<Mutex<Held>> {
    Arc::new(Mutex::new(Held {
        access: PeerAccess {
            generation,
            ..PeerAccess::default()
        },
        peers: Vec::new(),
        parts: Vec::new(),
        orphan: None,
    }))
}

fn register(name: &str, generation: u64) -> Arc<Mutex<Held>> {
    let held = new_held(generation);
    lock(&REGISTRY).insert(name.to_string(), Arc::clone(&held));
    held
}

/// Registers an array adopted from a reference, unless this process already holds an
/// array on that segment: a second `SharedArray` over the same memory would have access
/// bookkeeping of its own, so safe code could hold a mutable and a shared view of the
/// same bytes at once (a cloned moved reference adopted twice, or a worker naming one of
/// this process's arrays in a reference). Returns None in that case.
fn register_adopted(name: &str, generation: u64) -> Option<Arc<Mutex<Held>>> {
    let mut reg = lock(&REGISTRY);
    if reg.contains_key(name) {
        return None;
    }
    let held = new_held(generation);
    reg.insert(name.to_string(), Arc::clone(&held));
    Some(held)
}

/// Records that the shared and lent arrays in `v` were sent to the worker of `peer`,
/// which keeps them mapped until the array is dropped here (see [`SharedArray`]'s
/// `Drop`).
pub(crate) fn note_sent(v: &Value, peer: &Arc<Shared>) {
    v.for_each_array(|r| {
        if r.access == Access::Moved {
            return;
        }
        let Some(entry) = lock(&REGISTRY).get(&r.name).cloned() else {
            return;
        };
        let mut held = lock(&entry);
        if !held
            .peers
            .iter()
            .any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(peer)))
        {
            held.peers.retain(|p| p.strong_count() > 0);
            held.peers.push(Arc::downgrade(peer));
        }
    });
}

/// Applies a release from the peer: one share, or one writable reference, of the named
/// segment. `from` is the gateway whose worker sent it: a part made for that gateway
/// (see `Held::parts`) is settled first, else a reference made for no gateway in
/// particular. Returns false when the name or generation is unknown, or nothing of that
/// access is held (a stale, repeated or forged release).
pub(crate) fn release(name: &str, generation: u64, what: Access, from: Option<&Shared>) -> bool {
    let Some(entry) = lock(&REGISTRY).get(name).cloned() else {
        return false;
    };
    let back = {
        let mut held = lock(&entry);
        if held.access.generation != generation {
            return false;
        }
        let own = from.and_then(|p| {
            held.parts
                .iter()
                .position(|(q, a)| *a == what && std::ptr::eq(q.as_ptr(), p))
        });
        let known = held.parts.iter().filter(|(_, a)| *a == what).count() as u32;
        let total = match what {
            Access::Shared => held.access.shares,
            Access::Lent => held.access.lent,
            Access::Moved => return false,
        };
        match own {
            Some(i) => {
                held.parts.swap_remove(i);
            }
            // Every reference out was made for some other gateway: not this sender's.
            None if total > known => {}
            None => return false,
        }
        match what {
            Access::Shared => held.access.shares -= 1,
            _ => held.access.lent -= 1,
        }
        take_orphan(&mut held)
    };
    if let Some(((seg, pool), peers)) = back {
        unregister(name, &entry);
        pool.put_back(seg, peers);
    }
    true
}

/// Takes a reference made for `peer` back when it was never delivered (its send
/// failed). Does nothing if the worker's death already released it.
pub(crate) fn revoke(name: &str, generation: u64, what: Access, peer: &Shared) {
    let Some(entry) = lock(&REGISTRY).get(name).cloned() else {
        return;
    };
    let back = {
        let mut held = lock(&entry);
        let own = held
            .parts
            .iter()
            .position(|(q, a)| *a == what && std::ptr::eq(q.as_ptr(), peer));
        if held.access.generation != generation || own.is_none() {
            return;
        }
        release_parts(
            &mut held,
            |q, a| *a == what && std::ptr::eq(q.as_ptr(), peer),
            1,
        );
        take_orphan(&mut held)
    };
    if let Some(((seg, pool), peers)) = back {
        unregister(name, &entry);
        pool.put_back(seg, peers);
    }
}

/// Removes up to `limit` parts matching `which`, and counts each as released.
fn release_parts(held: &mut Held, which: impl Fn(&Weak<Shared>, &Access) -> bool, limit: usize) {
    let mut left = limit;
    let access = &mut held.access;
    held.parts.retain(|(q, a)| {
        if left == 0 || !which(q, a) {
            return true;
        }
        left -= 1;
        match a {
            Access::Shared => access.shares = access.shares.saturating_sub(1),
            _ => access.lent = access.lent.saturating_sub(1),
        }
        false
    });
}

/// A pool slot dropped while out goes back once nothing is out any more.
/// A pool slot on its way back to its pool, with the gateways that keep it mapped.
type Homecoming = ((Segment, Arc<PoolShared>), Vec<Weak<Shared>>);

fn take_orphan(held: &mut Held) -> Option<Homecoming> {
    if held.access.shares == 0 && held.access.lent == 0 {
        held.orphan
            .take()
            .map(|o| (o, std::mem::take(&mut held.peers)))
    } else {
        None
    }
}

/// The worker of `peer` is gone: whatever only it could hold is released (a lent array
/// becomes usable again, its contents as the worker left them; a pool slot goes back),
/// and so are the parts made for it (its share of a group's input, its part of a split
/// lend), while the other workers' parts stay out.
pub(crate) fn peer_gone(peer: &Shared) {
    let entries: Vec<(String, Arc<Mutex<Held>>)> = lock(&REGISTRY)
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect();
    for (name, entry) in entries {
        let back = {
            let mut held = lock(&entry);
            let ours = held.peers.iter().any(|p| std::ptr::eq(p.as_ptr(), peer));
            let others = held
                .peers
                .iter()
                .any(|p| !std::ptr::eq(p.as_ptr(), peer) && p.strong_count() > 0);
            if ours && !others {
                // Nobody else was sent it: everything out was this worker's.
                held.access.shares = 0;
                held.access.lent = 0;
                held.parts.clear();
            } else {
                release_parts(&mut held, |q, _| std::ptr::eq(q.as_ptr(), peer), usize::MAX);
            }
            take_orphan(&mut held)
        };
        if let Some(((seg, pool), peers)) = back {
            unregister(&name, &entry);
            pool.put_back(seg, peers);
        }
    }
}

/// The slots of `pool` whose handles were dropped while a worker held them: taken out
/// of the registry, for the pool to remove when it closes.
pub(crate) fn take_orphans_of(pool: &PoolShared) -> Vec<(Segment, Vec<Weak<Shared>>)> {
    let entries: Vec<(String, Arc<Mutex<Held>>)> = lock(&REGISTRY)
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect();
    let mut out = Vec::new();
    for (name, entry) in entries {
        let taken = {
            let mut held = lock(&entry);
            if held
                .orphan
                .as_ref()
                .is_some_and(|(_, p)| std::ptr::eq(Arc::as_ptr(p), pool))
            {
                held.orphan
                    .take()
                    .map(|(seg, _)| (seg, std::mem::take(&mut held.peers)))
            } else {
                None
            }
        };
        if let Some(t) = taken {
            unregister(&name, &entry);
            out.push(t);
        }
    }
    out
}

/// True while the peer holds the named segment at `generation` (a share or the lend).
pub(crate) fn is_out(name: &str, generation: u64) -> bool {
    let Some(entry) = lock(&REGISTRY).get(name).cloned() else {
        return false;
    };
    let held = lock(&entry);
    held.access.generation == generation && (held.access.shares > 0 || held.access.lent > 0)
}

fn unregister(name: &str, entry: &Arc<Mutex<Held>>) {
    let mut reg = lock(&REGISTRY);
    if reg.get(name).is_some_and(|a| Arc::ptr_eq(a, entry)) {
        reg.remove(name);
    }
}

/// An n-dimensional array of `T` in a named shared-memory segment.
///
/// Dropping it unmaps the segment and, if this process owns it, unlinks it.
pub struct SharedArray<T: Element> {
    /// Taken only by `drop`.
    seg: ManuallyDrop<Segment>,
    access: Arc<Mutex<Held>>,
    /// The pool this array's segment belongs to, if it is a pool slot.
    home: Option<Arc<PoolShared>>,
    _t: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArray")
            .field("name", &self.seg.name())
            .field("dtype", &T::DTYPE)
            .field("shape", &self.seg.layout().shape)
            .field("peer", &lock(&self.access).access)
            .finish()
    }
}

impl<T: Element> SharedArray<T> {
    /// A new zero-filled array in C order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`] when the shape is invalid (more than 32 axes, byte size
    /// overflow) or the segment cannot be created (no space in /dev/shm).
    pub fn zeros(shape: &[usize]) -> Result<SharedArray<T>> {
        Self::with_layout(Layout::c_order(T::DTYPE, shape)?, &Meta::default())
    }

    /// A new zero-filled array with explicit byte strides (each a multiple of the
    /// element size, none negative).
    ///
    /// # Errors
    ///
    /// As [`SharedArray::zeros`].
    pub fn zeros_strided(shape: &[usize], strides: &[usize]) -> Result<SharedArray<T>> {
        Self::with_layout(Layout::strided(T::DTYPE, shape, strides)?, &Meta::default())
    }

    fn with_layout(layout: Layout, meta: &Meta) -> Result<SharedArray<T>> {
        let seg = Segment::create(&layout, meta)?;
        let access = register(&seg.wire_name(), seg.generation());
        Ok(SharedArray {
            seg: ManuallyDrop::new(seg),
            access,
            home: None,
            _t: PhantomData,
        })
    }

    /// A new array holding a copy of `a` (in C order).
    ///
    /// # Errors
    ///
    /// As [`SharedArray::zeros`].
    pub fn from_ndarray<S, D>(a: &ndarray::ArrayBase<S, D>) -> Result<SharedArray<T>>
    where
        S: ndarray::Data<Elem = T>,
        D: ndarray::Dimension,
    {
        let mut out = Self::zeros(a.shape())?;
        out.view_mut()?.assign(&a.view().into_dyn());
        Ok(out)
    }

    /// Takes an array that arrived in a value: a moved reference makes this process the
    /// owner; a shared reference is mapped read-only and stays the sender's.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Convert`] when the value is no array, its dtype is not `T` or its
    /// generation is not the segment's; [`ErrorKind::Segment`] when the segment fails
    /// validation; [`ErrorKind::Busy`] when this process already holds an array on that
    /// segment (one it shared or lent, coming back, or a moved reference adopted
    /// before): each segment has one handle here, so that its access bookkeeping is one.
    pub fn from_value(v: Value) -> Result<SharedArray<T>> {
        match v {
            Value::Array(r) => Self::from_ref(&r),
            other => Err(Error::new(ErrorKind::Convert(format!(
                "expected an array, got {}",
                other.type_name()
            )))),
        }
    }

    fn from_ref(r: &ArrayRef) -> Result<SharedArray<T>> {
        let writable = r.access != Access::Shared;
        let seg = Segment::open(&r.name, writable)?;
        let dtype = seg.layout().dtype;
        if dtype != T::DTYPE {
            return Err(Error::new(ErrorKind::Convert(format!(
                "array {} holds {dtype}, expected {}",
                r.name,
                T::DTYPE
            ))));
        }
        if seg.generation() != r.generation {
            return Err(Error::new(ErrorKind::Convert(format!(
                "array {} is at generation {}, the reference names {}",
                r.name,
                seg.generation(),
                r.generation
            ))));
        }
        // Before the header is touched: a segment held already stays as it is. Two
        // handles on one segment would let one view it while the other is lent.
        let access = register_adopted(&seg.wire_name(), seg.generation()).ok_or_else(|| {
            Error::new(ErrorKind::Busy(format!(
                "array {} is already held by this process; an array is adopted once",
                r.name
            )))
        })?;
        if r.access == Access::Moved {
            let adopt = || -> Result<()> {
                seg.set_owner_pid(std::process::id())?;
                seg.set_state(crate::segment::STATE_OWNED)
            };
            if let Err(e) = adopt() {
                unregister(&seg.wire_name(), &access);
                return Err(e);
            }
            seg.set_unlink_on_drop(true);
        }
        Ok(SharedArray {
            seg: ManuallyDrop::new(seg),
            access,
            home: None,
            _t: PhantomData,
        })
    }

    /// An array in a pool slot: `seg` was just rewritten for `T` and this use.
    pub(crate) fn in_slot(seg: Segment, peers: Vec<Weak<Shared>>, home: Arc<PoolShared>) -> Self {
        let access = register(&seg.wire_name(), seg.generation());
        lock(&access).peers = peers;
        SharedArray {
            seg: ManuallyDrop::new(seg),
            access,
            home: Some(home),
            _t: PhantomData,
        }
    }

    /// The segment's generation: it changes with each use of a pool slot (and with new
    /// metadata), and a reference names the generation it was made at.
    pub fn generation(&self) -> u64 {
        self.seg.generation()
    }

    /// The segment's name (`/pxg-…`). A pool slot in a backing directory is the file of
    /// that name in the directory.
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    /// The name references carry: the name, or the file's path for a segment in a
    /// backing directory.
    pub(crate) fn wire_name(&self) -> String {
        self.seg.wire_name()
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.seg.layout().shape
    }

    /// The byte strides.
    pub fn strides(&self) -> &[usize] {
        &self.seg.layout().strides
    }

    /// The number of axes.
    pub fn ndim(&self) -> usize {
        self.seg.layout().shape.len()
    }

    /// The metadata stored in the segment's header.
    pub fn meta(&self) -> &Meta {
        self.seg.meta()
    }

    /// Axis names, if set.
    pub fn dims(&self) -> Option<&[String]> {
        self.seg.meta().dims.as_deref()
    }

    /// Replaces the metadata (dims, scale, units, channel names, name, attrs).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`] when it does not fit the header or is inconsistent with the
    /// shape (e.g. `dims` of the wrong length); an error also while the peer holds the
    /// array.
    pub fn set_meta(&mut self, meta: Meta) -> Result<()> {
        self.check(|a| a.shares == 0 && a.lent == 0, "change the metadata of")?;
        self.seg.set_meta(&meta)?;
        // A worker that kept the segment mapped re-reads the header of a reference of a
        // new generation.
        lock(&self.access).access.generation = self.seg.bump_generation()?;
        Ok(())
    }

    /// Sets the axis names.
    ///
    /// # Errors
    ///
    /// As [`SharedArray::set_meta`].
    pub fn set_dims(&mut self, dims: &[&str]) -> Result<()> {
        let mut meta = self.seg.meta().clone();
        meta.dims = Some(dims.iter().map(|d| d.to_string()).collect());
        self.set_meta(meta)
    }

    /// What the peer currently holds of this array.
    pub fn peer_shares(&self) -> u32 {
        lock(&self.access).access.shares
    }

    /// True while the array is lent to the peer.
    pub fn is_lent(&self) -> bool {
        lock(&self.access).access.lent > 0
    }

    fn check(&self, ok: impl Fn(&PeerAccess) -> bool, what: &str) -> Result<()> {
        let a = lock(&self.access).access;
        if ok(&a) {
            return Ok(());
        }
        let held = if a.lent > 1 {
            format!("lent to {} workers at once (writable, in parts)", a.lent)
        } else if a.lent == 1 {
            "lent to the peer (writable)".to_string()
        } else {
            format!("shared with the peer ({} read-only references)", a.shares)
        };
        Err(Error::new(ErrorKind::Busy(format!(
            "cannot {what} array {}: it is {held}",
            self.seg.name()
        ))))
    }

    fn check_elements(&self) -> Result<()> {
        if T::DTYPE == DType::Bool {
            let len = self.seg.data_len();
            // SAFETY: the data area is `data_len` bytes of the mapping (validated at
            // open/create); the caller checked that the peer cannot write it now.
            let bytes = unsafe { std::slice::from_raw_parts(self.seg.data_ptr(), len) };
            if !T::bytes_valid(bytes) {
                return Err(Error::new(ErrorKind::Convert(format!(
                    "bool array {} holds bytes other than 0 and 1",
                    self.seg.name()
                ))));
            }
        }
        Ok(())
    }

    fn element_strides(&self) -> Result<Vec<usize>> {
        let size = std::mem::size_of::<T>();
        self.strides()
            .iter()
            .map(|&s| {
                if s % size == 0 {
                    Ok(s / size)
                } else {
                    Err(Error::new(ErrorKind::Convert(format!(
                        "byte stride {s} is not a multiple of the element size {size}"
                    ))))
                }
            })
            .collect()
    }

    /// A read-only view.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the array is lent to the peer; [`ErrorKind::Convert`]
    /// for a bool array holding bytes other than 0 and 1, or strides that are not whole
    /// elements.
    pub fn view(&self) -> Result<ArrayViewD<'_, T>> {
        self.check(|a| a.lent == 0, "read")?;
        self.check_elements()?;
        let strides = self.element_strides()?;
        let shape = IxDyn(self.shape()).strides(IxDyn(&strides));
        // SAFETY: the segment's layout was validated (every element lies inside the data
        // area, which is mapped and aligned to a page); `T` is valid for every bit
        // pattern present (checked above for bool); the peer holds no write access (not
        // lent), and it cannot obtain one while this view borrows `self`, because
        // `lend` needs `&mut self`.
        Ok(unsafe { ArrayViewD::from_shape_ptr(shape, self.seg.data_ptr() as *const T) })
    }

    /// A writable view.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the peer holds any reference; [`ErrorKind::Convert`] as
    /// for [`SharedArray::view`]; [`ErrorKind::Segment`] for a read-only mapping.
    pub fn view_mut(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        self.check(|a| a.shares == 0 && a.lent == 0, "write")?;
        if !self.seg.is_writable() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "array {} was shared with this process read-only",
                self.seg.name()
            ))));
        }
        self.check_elements()?;
        let strides = self.element_strides()?;
        let shape = IxDyn(self.shape()).strides(IxDyn(&strides));
        if !distinct_elements(self.shape(), &strides) {
            return Err(Error::new(ErrorKind::Convert(format!(
                "strides {:?} make elements of array {} overlap; no writable view",
                self.strides(),
                self.seg.name()
            ))));
        }
        // SAFETY: as in `view`; moreover the peer holds no reference at all, so nothing
        // else reads or writes these bytes while this view borrows `self` mutably, and
        // `distinct_elements` (checked above) guarantees no two indices reach the same
        // element, as a mutable view requires.
        Ok(unsafe { ArrayViewMutD::from_shape_ptr(shape, self.seg.data_ptr() as *mut T) })
    }

    fn reference(&self, access: Access) -> Value {
        Value::Array(ArrayRef {
            name: self.seg.wire_name(),
            generation: self.seg.generation(),
            access,
        })
    }

    /// A read-only reference for the peer. Rust may keep reading; writing waits until the
    /// peer releases it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the array is lent.
    pub fn share(&self) -> Result<Value> {
        self.check(|a| a.lent == 0, "share")?;
        lock(&self.access).access.shares += 1;
        Ok(self.reference(Access::Shared))
    }

    /// A writable reference for the peer. Rust cannot read or write the array until the
    /// peer releases it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the peer holds any reference, or when this process
    /// maps the array read-only.
    pub fn lend(&mut self) -> Result<Value> {
        self.check(|a| a.shares == 0 && a.lent == 0, "lend")?;
        if !self.seg.is_writable() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "array {} was shared with this process read-only",
                self.seg.name()
            ))));
        }
        lock(&self.access).access.lent = 1;
        Ok(self.reference(Access::Lent))
    }

    /// A read-only reference made for the worker of `peer`: counted like a share, and
    /// released by that worker's RELEASE or by its death, whoever else holds the array.
    pub(crate) fn share_to(&self, peer: &Arc<Shared>) -> Result<Value> {
        self.check(|a| a.lent == 0, "share")?;
        let mut held = lock(&self.access);
        held.access.shares += 1;
        held.parts.push((Arc::downgrade(peer), Access::Shared));
        drop(held);
        Ok(self.reference(Access::Shared))
    }

    /// A *split lend*: one writable reference for each gateway in `peers`, made at once.
    /// Each worker is to write only its own part of the array (the caller tells it which;
    /// the code that writes is the caller's, so this is cooperative). Rust can neither
    /// read nor write the array until every part is released, by the worker's RELEASE or
    /// its death.
    pub(crate) fn lend_split(&mut self, peers: &[&Arc<Shared>]) -> Result<Vec<Value>> {
        self.check(|a| a.shares == 0 && a.lent == 0, "lend")?;
        if !self.seg.is_writable() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "array {} was shared with this process read-only",
                self.seg.name()
            ))));
        }
        let n = u32::try_from(peers.len())
            .map_err(|_| Error::new(ErrorKind::Busy("too many parts for one lend".into())))?;
        let mut held = lock(&self.access);
        held.access.lent = n;
        for p in peers {
            held.parts.push((Arc::downgrade(p), Access::Lent));
        }
        drop(held);
        Ok(peers.iter().map(|_| self.reference(Access::Lent)).collect())
    }

    /// Moves the array into a value: the receiver becomes its owner and unlinks it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the peer holds a reference (moving it would leave them
    /// a mapping of a segment whose owner changed under them), and for a pool slot.
    pub fn into_value(self) -> Result<Value> {
        self.check(|a| a.shares == 0 && a.lent == 0, "move")?;
        if self.home.is_some() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "array {} is a pool slot, which stays in its pool: lend or share it",
                self.seg.name()
            ))));
        }
        let v = self.reference(Access::Moved);
        // The receiver unlinks it now; this process only unmaps.
        self.seg.set_unlink_on_drop(false);
        Ok(v)
    }
}

/// True when no two indices of `shape` reach the same element under `strides` (in
/// elements): sorted by stride, each axis must step past everything the smaller axes
/// span. Sufficient, and exact for layouts numpy produces.
fn distinct_elements(shape: &[usize], strides: &[usize]) -> bool {
    let mut axes: Vec<(usize, usize)> = shape
        .iter()
        .zip(strides)
        .filter(|(n, _)| **n > 1)
        .map(|(&n, &s)| (s, n))
        .collect();
    if shape.contains(&0) {
        return true;
    }
    axes.sort_unstable();
    let mut span = 1usize;
    for (stride, n) in axes {
        if stride < span {
            return false;
        }
        span = match stride.checked_mul(n - 1).and_then(|x| x.checked_add(span)) {
            Some(s) => s,
            None => return false,
        };
    }
    true
}

impl<T: Element> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: `seg` is taken here only, and `self` is not used after `drop`.
        let seg = unsafe { ManuallyDrop::take(&mut self.seg) };
        let peers = {
            let mut held = lock(&self.access);
            if let Some(pool) = &self.home {
                if held.access.shares > 0 || held.access.lent > 0 {
                    // The peer still holds it: it returns to the pool on release.
                    held.orphan = Some((seg, Arc::clone(pool)));
                    return;
                }
                let peers = std::mem::take(&mut held.peers);
                drop(held);
                unregister(&seg.wire_name(), &self.access);
                pool.put_back(seg, peers);
                return;
            }
            std::mem::take(&mut held.peers)
        };
        unregister(&seg.wire_name(), &self.access);
        forget_everywhere(seg, peers);
    }
}

/// Drops a segment that workers may keep mapped: unlinks it first (if this process owns
/// it), so that no reference still on its way can map it anew, then tells them it is
/// gone; their mappings, and the memory, go when their last array of it does.
pub(crate) fn forget_everywhere(seg: Segment, peers: Vec<Weak<Shared>>) {
    if peers.is_empty() {
        return;
    }
    if seg.unlinks_on_drop() {
        let _ = seg.unlink();
    }
    for peer in peers.iter().filter_map(Weak::upgrade) {
        peer.forget(&seg.wire_name());
    }
}

#[cfg(test)]
mod tests {
    use super::distinct_elements;

    #[test]
    fn releases_must_name_what_is_held() {
        use super::{Access, register, release};
        let name = "/pxg-0-release-test";
        let access = register(name, 5);
        access.lock().unwrap().access.shares = 1;
        assert!(!release(name, 4, Access::Shared, None), "stale generation");
        assert!(!release(name, 5, Access::Lent, None), "nothing lent");
        assert!(
            !release("/pxg-0-unknown", 5, Access::Shared, None),
            "unknown name"
        );
        assert!(release(name, 5, Access::Shared, None));
        assert!(!release(name, 5, Access::Shared, None), "released twice");
        super::REGISTRY.lock().unwrap().remove(name);
    }

    #[test]
    fn a_segment_is_adopted_once_per_process() {
        use super::{register_adopted, unregister};
        let name = "/pxg-0-adopt-once-test";
        let first = register_adopted(name, 1).expect("first adoption");
        assert!(register_adopted(name, 1).is_none(), "adopted twice");
        assert!(register_adopted(name, 2).is_none(), "other generation");
        unregister(name, &first);
        let again = register_adopted(name, 1).expect("free again once dropped");
        unregister(name, &again);
    }

    #[test]
    fn overlapping_strides_are_detected() {
        assert!(distinct_elements(&[2, 3], &[3, 1]));
        assert!(distinct_elements(&[3, 2], &[1, 3]));
        assert!(distinct_elements(&[2, 3], &[6, 2]));
        assert!(distinct_elements(&[1, 5], &[0, 1]));
        assert!(distinct_elements(&[0, 5], &[0, 0]));
        assert!(distinct_elements(&[], &[]));
        assert!(!distinct_elements(&[2, 2], &[1, 1]));
        assert!(!distinct_elements(&[3], &[0]));
        assert!(!distinct_elements(&[2, 3], &[2, 1]));
    }
}
