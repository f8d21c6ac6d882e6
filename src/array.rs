//! Shared arrays: n-dimensional arrays in shared memory that cross to Python without a
//! copy. The access rules are documented on [`SharedArray`], where users read them;
//! the bookkeeping behind them lives in `crate::lease`.

use std::marker::PhantomData;
use std::sync::Arc;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

use crate::error::{Error, ErrorKind, Result};
use crate::header::{DType, Layout, Meta};
use crate::lease::{self, Counts, Dropped, Holding, PeerKey, PeerRef, SlotHome};
use crate::segment::Segment;
use crate::segment::Transport;
use crate::value::{Access, ArrayRef, Place, Value};

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

/// An n-dimensional array of `T` in a shared-memory segment, which a worker maps as a
/// numpy array without a copy.
///
/// Dropping it unmaps the segment and, if this process owns it, unlinks it.
///
/// # Sharing, lending and moving
///
/// Rust's borrow rules say that while someone may write memory, nobody else reads it.
/// A `SharedArray` extends that rule to the worker process on the other end of a
/// channel:
///
/// - [`share`](SharedArray::share) makes a **read-only** reference. The worker maps the
///   segment read-only (numpy cannot re-enable writes on it), and Rust may keep reading,
///   but not writing, until every share is given back.
/// - [`lend`](SharedArray::lend) makes a **writable** reference. From that call on,
///   Rust can neither read nor write the array until the worker gives it back; `lend`
///   takes `&mut self`, so no view made before it can still be alive.
/// - A **split lend** (made by [`Group::map_planes`](crate::Group::map_planes)) makes
///   one writable reference for each of several workers at once, each told the range it
///   writes. Rust can neither read nor write the array until the last part is back.
/// - [`into_value`](SharedArray::into_value) **moves** the array: ownership (and the
///   duty to unlink the segment) passes to the receiver.
///
/// Typed views ([`view`](SharedArray::view), [`view_mut`](SharedArray::view_mut)) are
/// `ndarray` views that borrow the array, and are only handed out while no reference
/// allows the peer to write (for `view`) or to access the array at all (for
/// `view_mut`). Safe Rust therefore never holds a slice over bytes the other process may
/// write.
///
/// # References are single-use
///
/// A reference ([`ArrayRef`], inside a [`Value`]) is a capability, not a description:
///
/// - Only `share`, `lend` and `into_value` make a reference that can be sent. Its
///   fields are private; a reference decoded from bytes ([`loads`](crate::loads)) or
///   received from a worker cannot be sent.
/// - Each send uses one reference up. A value may be cloned, but the clones are the
///   same reference: sending one of them a second time, or a clone after the original,
///   fails with [`ErrorKind::Reference`] **before anything is written**, and so does a
///   value holding the same reference twice. Make one reference per send.
/// - The array's state follows what was really sent. From the moment a reference is
///   made, the array counts it (so that no view made before the send can be alive when
///   the worker gets access); a reference that is dropped without being sent, or whose
///   send fails, is taken back, and the array is as it was before it was made. A sent
///   reference counts until the worker it went to gives it back (RELEASE when its numpy
///   array is garbage-collected, or by sending it back, or
///   `pixgate.release`) or dies.
/// - A reference made for one worker of a [`Group`](crate::Group) cannot be sent to
///   another.
/// - Dropping the array makes its unsent references unusable (sending one fails). A
///   pool slot is the exception: it waits, parked, until its references are settled,
///   then goes back to its pool.
/// - A moved reference that arrives from a worker is the host's to adopt with
///   [`from_value`](SharedArray::from_value). If the host refuses it (wrong dtype,
///   stale generation, a damaged header) or drops it unadopted, its segment is unlinked
///   at once: the worker gave it up, and nobody else would remove it.
///
/// ```
/// # fn main() -> pixgate::Result<()> {
/// use pixgate::{ErrorKind, SharedArray};
/// let mut a = SharedArray::<u16>::zeros(&[4])?;
/// let r = a.lend()?;
/// assert!(a.view().is_err(), "lent: no view until the reference is given back");
/// drop(r); // never sent: taken back
/// a.view_mut()?.fill(7);
/// # Ok(())
/// # }
/// ```
///
/// # Limitations
///
/// - A worker that dies gives back everything sent to it: a lent array becomes usable
///   again with whatever the worker had written (possibly half of it), a pool slot goes
///   back to its pool.
/// - The parts of a split lend are separated by agreement, not by the mapping: every
///   worker maps the whole array writable, and keeping to its own range is the duty of
///   the code that writes (pixgate's group harness, or a caller's cooperating code).
/// - The guarantee holds against a cooperating helper. A hostile process of the same
///   user can map any segment it can name; segments are mode 0600, so other users
///   cannot.
///
/// A view cannot outlive its array:
///
/// ```compile_fail,E0597
/// use pixgate::SharedArray;
/// let view = {
///     let a = SharedArray::<u16>::zeros(&[4]).unwrap();
///     a.view().unwrap()
/// }; // `a` is dropped here while `view` borrows it
/// ```
///
/// Lending needs exclusive access, so a live view forbids it:
///
/// ```compile_fail,E0502
/// use pixgate::SharedArray;
/// let mut a = SharedArray::<u16>::zeros(&[4]).unwrap();
/// let v = a.view().unwrap();
/// let r = a.lend();
/// drop(v);
/// ```
///
/// A reference has no public fields to forge one with:
///
/// ```compile_fail,E0451
/// use pixgate::{Access, ArrayRef};
/// let forged = ArrayRef { name: "/pxg-1-0000000000000000".into(), generation: 0, access: Access::Lent };
/// ```
pub struct SharedArray<T: Element> {
    /// None only after `into_value` handed the segment to its reference.
    seg: Option<Segment>,
    holding: Holding,
    /// The pool this array's segment belongs to, if it is a pool slot.
    home: Option<Arc<dyn SlotHome>>,
    _t: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArray")
            .field("name", &self.seg().name())
            .field("dtype", &T::DTYPE)
            .field("shape", &self.seg().layout().shape)
            .field("peer", &self.holding.counts())
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
        Self::zeros_in(Transport::from_env(), shape)
    }

    /// A new zero-filled array in C order, in a segment of the given transport: anonymous
    /// (reached only through descriptors; the default on Linux and macOS) or named (for
    /// gateways with `transport=named`, such as Jython workers).
    ///
    /// # Errors
    ///
    /// As [`SharedArray::zeros`].
    pub fn zeros_in(transport: Transport, shape: &[usize]) -> Result<SharedArray<T>> {
        Self::with_layout(
            transport,
            Layout::c_order(T::DTYPE, shape)?,
            &Meta::default(),
        )
    }

    /// A new zero-filled array with explicit byte strides (each a multiple of the
    /// element size, none negative).
    ///
    /// # Errors
    ///
    /// As [`SharedArray::zeros`].
    pub fn zeros_strided(shape: &[usize], strides: &[usize]) -> Result<SharedArray<T>> {
        Self::with_layout(
            Transport::from_env(),
            Layout::strided(T::DTYPE, shape, strides)?,
            &Meta::default(),
        )
    }

    fn with_layout(transport: Transport, layout: Layout, meta: &Meta) -> Result<SharedArray<T>> {
        let seg = Segment::create_with_transport(transport, &layout, meta)?;
        let holding = lease::register(&seg, Vec::new());
        Ok(SharedArray {
            seg: Some(seg),
            holding,
            home: None,
            _t: PhantomData,
        })
    }

    /// A new array of the default transport holding a copy of `data`, in C order, with
    /// the given shape.
    ///
    /// ```
    /// # fn main() -> pixgate::Result<()> {
    /// let a = pixgate::SharedArray::from_slice(&[1u16, 2, 3, 4, 5, 6], &[2, 3])?;
    /// assert_eq!(a.view()?[[1, 0]], 4);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) when the
    /// shape does not hold exactly `data.len()` elements; otherwise as
    /// [`SharedArray::zeros`].
    pub fn from_slice(data: &[T], shape: &[usize]) -> Result<SharedArray<T>> {
        let count = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n == data.len());
        if count.is_none() {
            return Err(crate::Error::new(crate::ErrorKind::InvalidArgument(
                format!(
                    "shape {shape:?} does not hold the {} elements given",
                    data.len()
                ),
            )));
        }
        let mut out = Self::zeros(shape)?;
        out.view_mut()?
            .as_slice_mut()
            .expect("a new array is C-contiguous")
            .copy_from_slice(data);
        Ok(out)
    }

    /// As [`SharedArray::from_slice`], taking the elements by value (they are copied
    /// into shared memory either way: a `Vec`'s heap memory cannot be shared).
    ///
    /// # Errors
    ///
    /// As [`SharedArray::from_slice`].
    pub fn from_vec(data: Vec<T>, shape: &[usize]) -> Result<SharedArray<T>> {
        Self::from_slice(&data, shape)
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

    /// Takes an array that arrived in a value: a moved reference from a worker makes
    /// this process the owner; a shared reference is mapped read-only and stays the
    /// sender's.
    ///
    /// A moved reference that is refused here (any error below) has its segment
    /// unlinked when `v` is dropped, which this call does: see
    /// [References are single-use](SharedArray#references-are-single-use).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Convert`] when the value is no array, its dtype is not `T` or its
    /// generation is not the segment's; [`ErrorKind::Segment`] when the segment fails
    /// validation; [`ErrorKind::Busy`] when this process already holds an array on that
    /// segment (one it shared or lent, coming back, or a moved reference adopted
    /// before): each segment has one handle here, so that its bookkeeping is one;
    /// [`ErrorKind::Reference`] for a moved reference that did not come from a worker
    /// (decoded from bytes).
    pub fn from_value(v: Value) -> Result<SharedArray<T>> {
        match &v {
            Value::Array(r) => Self::from_ref(r),
            other => Err(Error::new(ErrorKind::Convert(format!(
                "expected an array, got {}",
                other.type_name()
            )))),
        }
    }

    fn from_ref(r: &ArrayRef) -> Result<SharedArray<T>> {
        let moved = r.access() == Access::Moved;
        let ticket = r.ticket().filter(|t| t.sender().is_some());
        if moved && ticket.is_none() {
            return Err(Error::new(ErrorKind::Reference(format!(
                "moved reference to array {} did not come from a worker; only a reference \
                 received on a channel can be adopted",
                r.name()
            ))));
        }
        let already = || {
            Error::new(ErrorKind::Busy(format!(
                "array {} is already held by this process; an array is adopted once",
                r.name()
            )))
        };
        let writable = r.access() != Access::Shared;
        let seg = match r.place() {
            Place::Named => Segment::open(r.name(), writable)?,
            Place::Anonymous { offset } => match ticket
                .map(|t| t.copy_fd())
                .transpose()
                .map_err(|e| Error::io(format!("adopting array {}", r.key()), e))?
                .flatten()
            {
                Some(fd) => Segment::from_descriptor(fd, r.name(), offset, writable)?,
                // A reference without a descriptor names what this process holds (an
                // array coming back), or nothing it can map.
                None if lease::is_held(&r.key()) => return Err(already()),
                None => {
                    return Err(Error::new(ErrorKind::Reference(format!(
                        "reference to anonymous array {} came without a descriptor (or \
                         its descriptor was taken by an earlier adoption)",
                        r.key()
                    ))));
                }
            },
        };
        let dtype = seg.layout().dtype;
        if dtype != T::DTYPE {
            return Err(Error::new(ErrorKind::Convert(format!(
                "array {} holds {dtype}, expected {}",
                r.name(),
                T::DTYPE
            ))));
        }
        if seg.generation() != r.generation() {
            return Err(Error::new(ErrorKind::Convert(format!(
                "array {} is at generation {}, the reference names {}",
                r.name(),
                seg.generation(),
                r.generation()
            ))));
        }
        // Before the header is touched: a segment held already stays as it is. Two
        // handles on one segment would let one view it while the other is lent.
        if let Some(t) = ticket {
            if !t.adopt() {
                return Err(already());
            }
        }
        let Some(holding) = lease::register_adopted(&seg) else {
            if let Some(t) = ticket {
                t.unadopt();
            }
            return Err(already());
        };
        // A worker gives away only what it owns: a moved reference naming another
        // process's segment adopts nothing.
        if let Some(sender) = ticket.and_then(|t| t.sender()) {
            if seg.owner_pid() != sender {
                holding.forget_unused();
                if let Some(t) = ticket {
                    t.unadopt();
                }
                return Err(Error::new(ErrorKind::Reference(format!(
                    "moved reference to array {} names a segment owned by pid {}, not by \
                     the worker (pid {sender}) that moved it",
                    r.name(),
                    seg.owner_pid()
                ))));
            }
        }
        let array = SharedArray {
            seg: Some(seg),
            holding,
            home: None,
            _t: PhantomData,
        };
        if moved {
            let seg = array.seg();
            let adopt = || -> Result<()> {
                seg.set_owner_pid(std::process::id())?;
                seg.set_state(crate::segment::STATE_OWNED)
            };
            if let Err(e) = adopt() {
                if let Some(t) = ticket {
                    t.unadopt();
                }
                // Not ours after all: the reference's drop decides about the segment.
                return Err(e);
            }
            seg.set_unlink_on_drop(true);
        }
        // Adopted: the reference's own descriptor is not needed any more.
        if let Some(t) = ticket {
            drop(t.take_fd());
        }
        Ok(array)
    }

    /// An array in a pool slot: `seg` was just rewritten for `T` and this use.
    pub(crate) fn in_slot(seg: Segment, peers: Vec<PeerRef>, home: Arc<dyn SlotHome>) -> Self {
        let holding = lease::register(&seg, peers);
        SharedArray {
            seg: Some(seg),
            holding,
            home: Some(home),
            _t: PhantomData,
        }
    }

    fn seg(&self) -> &Segment {
        self.seg
            .as_ref()
            .expect("the segment leaves only with into_value, which consumes the array")
    }

    /// The segment's generation: it changes with each use of a pool slot (and with new
    /// metadata), and a reference names the generation it was made at.
    pub fn generation(&self) -> u64 {
        self.seg().generation()
    }

    /// The transport of the array's segment.
    pub fn transport(&self) -> Transport {
        self.seg().transport()
    }

    /// The segment's name (`/pxg-…`). A pool slot in a backing directory is the file of
    /// that name in the directory; an anonymous segment has no file: the name is its
    /// identity (and shows in `/proc/PID/fd` as `/memfd:pxg-…`).
    pub fn name(&self) -> &str {
        self.seg().name()
    }

    /// The name references carry: the name, or the file's path for a segment in a
    /// backing directory.
    pub(crate) fn wire_name(&self) -> String {
        self.seg().wire_name()
    }

    /// The key the ledger files the array under, and RELEASE names it by.
    pub(crate) fn key(&self) -> String {
        self.seg().key()
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.seg().layout().shape
    }

    /// The byte strides.
    pub fn strides(&self) -> &[usize] {
        &self.seg().layout().strides
    }

    /// The number of axes.
    pub fn ndim(&self) -> usize {
        self.seg().layout().shape.len()
    }

    /// The metadata stored in the segment's header.
    pub fn meta(&self) -> &Meta {
        self.seg().meta()
    }

    /// Axis names, if set.
    pub fn dims(&self) -> Option<&[String]> {
        self.seg().meta().dims.as_deref()
    }

    /// Replaces the metadata (dims, scale, units, channel names, name, attrs).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`] when it does not fit the header or is inconsistent with the
    /// shape (e.g. `dims` of the wrong length); [`ErrorKind::Busy`] while a reference
    /// to the array is out.
    pub fn set_meta(&mut self, meta: Meta) -> Result<()> {
        self.check(Counts::none, "change the metadata of")?;
        let seg = self.seg.as_mut().expect("present until into_value");
        seg.set_meta(&meta)?;
        // A worker that kept the segment mapped re-reads the header of a reference of a
        // new generation.
        seg.bump_generation()?;
        Ok(())
    }

    /// Sets the axis names.
    ///
    /// # Errors
    ///
    /// As [`SharedArray::set_meta`].
    pub fn set_dims(&mut self, dims: &[&str]) -> Result<()> {
        let mut meta = self.seg().meta().clone();
        meta.dims = Some(dims.iter().map(|d| d.to_string()).collect());
        self.set_meta(meta)
    }

    /// Read-only references to the array that are out: made and not given back
    /// (pending or sent).
    pub fn peer_shares(&self) -> u32 {
        self.holding.counts().shares
    }

    /// True while a writable reference to the array is out (pending or sent).
    pub fn is_lent(&self) -> bool {
        self.holding.counts().lent > 0
    }

    fn busy(&self, what: &str, c: &Counts) -> Error {
        let held = if c.lent > 1 {
            format!("lent to {} workers at once (writable, in parts)", c.lent)
        } else if c.lent == 1 {
            "lent to the peer (writable)".to_string()
        } else {
            format!("shared with the peer ({} read-only references)", c.shares)
        };
        Error::new(ErrorKind::Busy(format!(
            "cannot {what} array {}: it is {held}",
            self.seg().name()
        )))
    }

    fn check(&self, ok: impl Fn(&Counts) -> bool, what: &str) -> Result<()> {
        let c = self.holding.counts();
        if ok(&c) {
            Ok(())
        } else {
            Err(self.busy(what, &c))
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.seg().is_writable() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Busy(format!(
                "array {} was shared with this process read-only",
                self.seg().name()
            ))))
        }
    }

    fn check_elements(&self) -> Result<()> {
        if T::DTYPE == DType::Bool {
            let len = self.seg().data_len();
            // SAFETY: the data area is `data_len` bytes of the mapping (validated at
            // open/create); the caller checked that the peer cannot write it now.
            let bytes = unsafe { std::slice::from_raw_parts(self.seg().data_ptr(), len) };
            if !T::bytes_valid(bytes) {
                return Err(Error::new(ErrorKind::Convert(format!(
                    "bool array {} holds bytes other than 0 and 1",
                    self.seg().name()
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
        self.check(|c| c.lent == 0, "read")?;
        self.check_elements()?;
        let strides = self.element_strides()?;
        let shape = IxDyn(self.shape()).strides(IxDyn(&strides));
        // SAFETY: the segment's layout was validated (every element lies inside the data
        // area, which is mapped and aligned to a page); `T` is valid for every bit
        // pattern present (checked above for bool); no writable reference is out (not
        // lent), and none can be made while this view borrows `self`, because `lend`
        // needs `&mut self`.
        Ok(unsafe { ArrayViewD::from_shape_ptr(shape, self.seg().data_ptr() as *const T) })
    }

    /// A writable view.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while any reference to the array is out, or when this
    /// process maps it read-only; [`ErrorKind::Convert`] as for [`SharedArray::view`].
    pub fn view_mut(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        self.check(Counts::none, "write")?;
        self.check_writable()?;
        self.check_elements()?;
        let strides = self.element_strides()?;
        let shape = IxDyn(self.shape()).strides(IxDyn(&strides));
        if !distinct_elements(self.shape(), &strides) {
            return Err(Error::new(ErrorKind::Convert(format!(
                "strides {:?} make elements of array {} overlap; no writable view",
                self.strides(),
                self.seg().name()
            ))));
        }
        // SAFETY: as in `view`; moreover no reference at all is out, so nothing else
        // reads or writes these bytes while this view borrows `self` mutably (a
        // reference can only be made through `&self` or `&mut self`, which the view
        // borrows), and `distinct_elements` (checked above) guarantees no two indices
        // reach the same element, as a mutable view requires.
        Ok(unsafe { ArrayViewMutD::from_shape_ptr(shape, self.seg().data_ptr() as *mut T) })
    }

    fn reference(&self, access: Access, ticket: Arc<lease::Ticket>) -> Value {
        Value::Array(ArrayRef::with_ticket(
            self.wire_name(),
            self.generation(),
            access,
            self.place(),
            ticket,
        ))
    }

    fn place(&self) -> Place {
        match self.seg().transport() {
            Transport::Anonymous | Transport::ByValue => Place::Anonymous {
                offset: self.seg().offset(),
            },
            Transport::Named => Place::Named,
        }
    }

    /// A read-only reference for the peer, to send once. Rust may keep reading; writing
    /// waits until the peer gives it back (or the reference is dropped unsent).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while the array is lent.
    pub fn share(&self) -> Result<Value> {
        self.share_for(None)
    }

    fn share_for(&self, only: Option<PeerKey>) -> Result<Value> {
        let ticket = self
            .holding
            .make(Access::Shared, self.generation(), only, |c| {
                c.lent == 0 && !c.moving
            })
            .map_err(|c| self.busy("share", &c))?;
        Ok(self.reference(Access::Shared, ticket))
    }

    /// A writable reference for the peer, to send once. Rust cannot read or write the
    /// array until the peer gives it back (or the reference is dropped unsent).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while any reference is out, or when this process maps the
    /// array read-only.
    pub fn lend(&mut self) -> Result<Value> {
        self.check_writable()?;
        let ticket = self
            .holding
            .make(Access::Lent, self.generation(), None, Counts::none)
            .map_err(|c| self.busy("lend", &c))?;
        Ok(self.reference(Access::Lent, ticket))
    }

    /// A read-only reference that only the worker of `peer` may be sent.
    pub(crate) fn share_to(&self, peer: PeerKey) -> Result<Value> {
        self.share_for(Some(peer))
    }

    /// A *split lend*: one writable reference for each gateway in `peers`, made at once,
    /// each sendable to its own gateway only. Each worker is to write only its own part
    /// of the array (the caller tells it which; the code that writes is the caller's, so
    /// this is cooperative). Rust can neither read nor write the array until every part
    /// is given back, by the worker's RELEASE or its death.
    pub(crate) fn lend_split(&mut self, peers: &[PeerKey]) -> Result<Vec<Value>> {
        self.check_writable()?;
        let only: Vec<Option<PeerKey>> = peers.iter().map(|&k| Some(k)).collect();
        let tickets = self
            .holding
            .make_many(Access::Lent, self.generation(), &only, Counts::none)
            .map_err(|c| self.busy("lend", &c))?;
        Ok(tickets
            .into_iter()
            .map(|t| self.reference(Access::Lent, t))
            .collect())
    }

    /// Moves the array into a value: the receiver becomes its owner and unlinks it.
    /// Until the value is sent, the segment stays this process's: dropping the value
    /// unsent unlinks it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Busy`] while a reference is out (moving it would leave the peer a
    /// mapping of a segment whose owner changed under it), and for a pool slot.
    pub fn into_value(mut self) -> Result<Value> {
        self.check(Counts::none, "move")?;
        if self.home.is_some() {
            return Err(Error::new(ErrorKind::Busy(format!(
                "array {} is a pool slot, which stays in its pool: lend or share it",
                self.name()
            ))));
        }
        let (name, generation, place) = (self.wire_name(), self.generation(), self.place());
        match self.holding.make_move(&mut self.seg) {
            Ok(ticket) => Ok(Value::Array(ArrayRef::with_ticket(
                name,
                generation,
                Access::Moved,
                place,
                ticket,
            ))),
            Err(counts) => Err(self.busy("move", &counts)),
        }
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
        // Gone with `into_value`: the reference owns the segment now.
        let Some(seg) = self.seg.take() else {
            return;
        };
        match self.holding.drop_array(seg, self.home.clone()) {
            Dropped::Parked => {}
            Dropped::Home(seg, home, peers) => home.put_back(seg, peers),
            Dropped::Gone(seg, peers) => lease::forget_everywhere(seg, peers),
        }
    }
}

/// A moved array inside a value a worker sent becomes an owned `SharedArray` when the
/// value is converted with [`from_value`](crate::from_value) or
/// [`Channel::receive_as`](crate::Channel::receive_as): struct fields, `Vec`s and maps of
/// arrays (a dict of numpy columns) included. The rules of
/// [`SharedArray::from_value`] apply; an element type other than `T` fails naming the
/// field. Only pixgate's own `Value` can produce an array: any other serde format
/// gets an error.
impl<'de, T: Element> serde::Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ArrayVisitor<T>(PhantomData<T>);

        impl<T: Element> serde::de::Visitor<'_> for ArrayVisitor<T> {
            type Value = SharedArray<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of {}", T::DTYPE)
            }

            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
                let v = crate::serde_value::take_array()
                    .ok_or_else(|| E::custom("a SharedArray comes only from a pixgate Value"))?;
                SharedArray::from_value(v).map_err(|e| E::custom(e.to_string()))
            }
        }

        d.deserialize_newtype_struct(crate::serde_value::ARRAY_MARKER, ArrayVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::distinct_elements;

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
