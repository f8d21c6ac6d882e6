//! A pool of pre-faulted segments, reused for array after array.
//!
//! # Rationale
//!
//! On this kind of machine the cost of handing a fresh array to Python is not copying but
//! the first touch of fresh pages (about 0.8 s per GiB) and, on the worker's side,
//! mapping the segment and faulting its pages into a new page table. A [`Pool`] pays
//! both once per slot: each slot is a segment created at its size class, every page
//! allocated and mapped by the host at creation (as every segment is: `posix_fallocate`,
//! then `MAP_POPULATE`); the worker maps a slot the first time it sees it, populated,
//! and keeps it mapped (docs/SEGMENT_FORMAT.md §5, pool slots). Later uses of the slot
//! cost a header rewrite and the reference on the wire: its name and a new generation.
//!
//! [`Pool::take`] hands out a slot as a [`SharedArray`] of the requested shape. Lend or
//! share it like any other array; when its handle is dropped the slot returns to the
//! pool, at once if the worker holds nothing, else when the worker releases it (RELEASE,
//! or by sending it back). Each use bumps the slot's generation, so a reference or a
//! release from an earlier use is refused.
//!
//! When every slot of the size class is in flight, `take` waits for one
//! ([`WhenFull::Block`], with a time limit) or fails at once ([`WhenFull::Fail`]) with
//! [`ErrorKind::PoolExhausted`].
//!
//! # Limitations
//!
//! - A slot whose handle was dropped while a reference to it is out comes back when that
//!   reference is settled: the worker releases it (or dies), or the reference is dropped
//!   without being sent.
//! - Dropping the pool unlinks all of its slots at once; a worker that still holds one
//!   keeps a valid mapping of it until it lets go (its later release is ignored).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::array::{Element, SharedArray};
use crate::error::{Error, ErrorKind, Result};
use crate::header::{DType, Layout, Meta};
use crate::lease::{PeerRef, SlotHome, forget_everywhere};
use crate::output::lock;
use crate::segment::{Arena, Segment, Transport};

/// What [`Pool::take`] does when every slot of the size class is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait at most this long for a slot to come back, then fail.
    Block(Duration),
    /// Fail at once.
    Fail,
}

/// How a [`Pool`] is made; see [`Pool::builder`].
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    classes: Vec<usize>,
    slots: usize,
    when_full: WhenFull,
    dir: Option<PathBuf>,
    prefill: bool,
    transport: Transport,
}

impl PoolBuilder {
    /// Adds a size class: slots whose data area holds `bytes` bytes. An array goes to
    /// the smallest class it fits.
    pub fn class(mut self, bytes: usize) -> Self {
        self.classes.push(bytes);
        self
    }

    /// Slots per size class (default 4).
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n;
        self
    }

    /// What [`Pool::take`] does when every slot of a class is in flight (default:
    /// block for up to 10 s).
    pub fn when_full(mut self, w: WhenFull) -> Self {
        self.when_full = w;
        self
    }

    /// Creates the slots as files in `dir` (a tmpfs mount, e.g. one with
    /// `huge=always`): named segments, whatever the transport.
    pub fn backing_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How the slots reach the workers (default: [`Transport::from_env`]). With
    /// [`Transport::Anonymous`] each size class is one arena, an anonymous object
    /// holding all its slots, so that a stream of any length costs a gateway at most
    /// two descriptors per class; with [`Transport::Named`] each slot is a named
    /// segment.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Creates and pre-faults every slot now (default), rather than on first demand.
    pub fn prefill(mut self, yes: bool) -> Self {
        self.prefill = yes;
        self
    }

    /// Makes the pool.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Convert`] for no size class, a class of 0 bytes or 0 slots;
    /// [`ErrorKind::Segment`] when a slot cannot be created (no space).
    pub fn build(self) -> Result<Pool> {
        let mut classes = self.classes;
        classes.sort_unstable();
        classes.dedup();
        if classes.is_empty() || classes[0] == 0 || self.slots == 0 {
            return Err(Error::new(ErrorKind::Convert(
                "a pool needs at least one size class of at least one byte, and at least one slot per class"
                    .to_string(),
            )));
        }
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState {
                classes: classes
                    .iter()
                    .map(|&bytes| Class {
                        bytes,
                        free: Vec::new(),
                        created: 0,
                        arena: None,
                        next_index: 0,
                        spare: Vec::new(),
                    })
                    .collect(),
                closed: false,
            }),
            back: Condvar::new(),
            slots: self.slots,
            when_full: self.when_full,
            arenas: self.dir.is_none() && self.transport == Transport::Anonymous,
            prefill: self.prefill,
            dir: self.dir,
        });
        if self.prefill {
            for class in 0..classes.len() {
                for _ in 0..shared.slots {
                    let index = lock(&shared.state).classes[class].index();
                    let seg = shared.new_slot(class, index)?;
                    let mut st = lock(&shared.state);
                    st.classes[class].created += 1;
                    st.classes[class].free.push(Slot {
                        seg,
                        peers: Vec::new(),
                    });
                }
            }
        }
        Ok(Pool {
            handles: Arc::new(Handles { shared }),
        })
    }
}

/// A pool of pre-faulted shared-memory segments in size classes. Cheap to clone (the
/// clones are the same pool); see the module docs.
#[derive(Clone, Debug)]
pub struct Pool {
    handles: Arc<Handles>,
}

/// How full a size class is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per slot.
    pub slot_bytes: usize,
    /// Slots the class may have.
    pub slots: usize,
    /// Slots created so far.
    pub created: usize,
    /// Slots in the pool now (created and not handed out).
    pub free: usize,
}

impl Pool {
    /// A builder with no size class yet, 4 slots per class, blocking up to 10 s when
    /// full, the process's default transport, prefilled.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            classes: Vec::new(),
            slots: 4,
            when_full: WhenFull::Block(Duration::from_secs(10)),
            dir: None,
            prefill: true,
            transport: Transport::from_env(),
        }
    }

    /// An array of `shape` in C order, in a slot of the smallest size class that holds
    /// it. Its contents are whatever the slot's last use left (zeros the first time).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::PoolNoClass`] when no class is large enough;
    /// [`ErrorKind::PoolExhausted`] when every slot of the class is in flight (after
    /// waiting, with [`WhenFull::Block`]); [`ErrorKind::Segment`] for an invalid shape,
    /// or a slot that cannot be created.
    pub fn take<T: Element>(&self, shape: &[usize]) -> Result<SharedArray<T>> {
        self.take_with(&Layout::c_order(T::DTYPE, shape)?, &Meta::default())
    }

    /// As [`Pool::take`], with explicit strides through `layout` (whose dtype must be
    /// `T`'s) and metadata.
    ///
    /// # Errors
    ///
    /// As [`Pool::take`]; [`ErrorKind::Convert`] when `layout`'s dtype is not `T`'s.
    pub fn take_with<T: Element>(&self, layout: &Layout, meta: &Meta) -> Result<SharedArray<T>> {
        if layout.dtype != T::DTYPE {
            return Err(Error::new(ErrorKind::Convert(format!(
                "layout of {} for an array of {}",
                layout.dtype,
                T::DTYPE
            ))));
        }
        let shared = &self.handles.shared;
        let Slot { mut seg, peers } = shared.acquire(layout.extent())?;
        if let Err(e) = seg.reuse_as(layout, meta) {
            shared.put_back_slot(seg, peers);
            return Err(e);
        }
        let home: Arc<dyn SlotHome> = Arc::clone(shared) as Arc<dyn SlotHome>;
        Ok(SharedArray::in_slot(seg, peers, home))
    }

    /// How full each size class is, smallest first.
    pub fn stats(&self) -> Vec<ClassStats> {
        let shared = &self.handles.shared;
        let st = lock(&shared.state);
        st.classes
            .iter()
            .map(|c| ClassStats {
                slot_bytes: c.bytes,
                slots: shared.slots,
                created: c.created,
                free: c.free.len(),
            })
            .collect()
    }
}

/// The pool's handles share one of these; when the last handle goes, the pool closes:
/// every slot is unlinked, also those still in flight.
#[derive(Debug)]
struct Handles {
    shared: Arc<PoolShared>,
}

impl Drop for Handles {
    fn drop(&mut self) {
        // Free slots go now, slots in flight when they come back.
        self.shared.close();
    }
}

/// One slot out of the pool: its segment and the gateways that may keep it mapped.
pub(crate) struct Slot {
    seg: Segment,
    peers: Vec<PeerRef>,
}

struct Class {
    bytes: usize,
    free: Vec<Slot>,
    created: usize,
    /// With the anonymous transport: the object all the class's slots live in, made
    /// with the first slot.
    arena: Option<Arc<Arena>>,
    /// Arena indices never made yet start here; `spare` holds those whose making
    /// failed, to try again.
    next_index: usize,
    spare: Vec<usize>,
}

impl Class {
    /// The arena index for a new slot.
    fn index(&mut self) -> usize {
        self.spare.pop().unwrap_or_else(|| {
            self.next_index += 1;
            self.next_index - 1
        })
    }
}

struct PoolState {
    classes: Vec<Class>,
    closed: bool,
}

/// The pool's state, shared by its handles and by the arrays in its slots.
pub(crate) struct PoolShared {
    state: Mutex<PoolState>,
    back: Condvar,
    slots: usize,
    when_full: WhenFull,
    dir: Option<PathBuf>,
    /// Slots live in one arena per class (anonymous transport, no backing directory).
    arenas: bool,
    prefill: bool,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared")
            .field("slots", &self.slots)
            .field("when_full", &self.when_full)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PoolShared {
    /// Makes the `index`-th slot of `class` (counted from 0).
    fn new_slot(&self, class: usize, index: usize) -> Result<Segment> {
        let bytes = lock(&self.state).classes[class].bytes;
        if self.arenas {
            let arena = {
                let mut st = lock(&self.state);
                match &st.classes[class].arena {
                    Some(a) => Arc::clone(a),
                    None => {
                        let a = Arc::new(Segment::arena(bytes, self.slots, self.prefill)?);
                        st.classes[class].arena = Some(Arc::clone(&a));
                        a
                    }
                }
            };
            return arena.slot(index);
        }
        let layout = Layout::c_order(DType::U8, &[bytes])?;
        let meta = Meta::default();
        match &self.dir {
            Some(dir) => Segment::create_in(dir, &layout, &meta),
            None => Segment::create(&layout, &meta),
        }
    }

    /// A slot of the smallest class holding `needs` bytes: a free one, a new one while
    /// the class has room, else (per `when_full`) one that comes back in time.
    fn acquire(&self, needs: usize) -> Result<Slot> {
        let start = Instant::now();
        let mut st = lock(&self.state);
        let Some(class) = st.classes.iter().position(|c| c.bytes >= needs) else {
            return Err(Error::new(ErrorKind::PoolNoClass {
                needs,
                largest: st.classes.last().map_or(0, |c| c.bytes),
            }));
        };
        loop {
            if let Some(slot) = st.classes[class].free.pop() {
                return Ok(slot);
            }
            if st.classes[class].created < self.slots {
                let index = st.classes[class].index();
                st.classes[class].created += 1;
                drop(st);
                return match self.new_slot(class, index) {
                    Ok(seg) => Ok(Slot {
                        seg,
                        peers: Vec::new(),
                    }),
                    Err(e) => {
                        let mut st = lock(&self.state);
                        st.classes[class].created -= 1;
                        st.classes[class].spare.push(index);
                        Err(e)
                    }
                };
            }
            let limit = match self.when_full {
                WhenFull::Fail => Duration::ZERO,
                WhenFull::Block(d) => d,
            };
            let waited = start.elapsed();
            if waited >= limit {
                return Err(Error::new(ErrorKind::PoolExhausted {
                    slot_bytes: st.classes[class].bytes,
                    slots: self.slots,
                    waited,
                }));
            }
            st = self
                .back
                .wait_timeout(st, limit - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A slot comes back: into its class, or away if the pool is closed.
    fn put_back_slot(&self, seg: Segment, peers: Vec<PeerRef>) {
        let mut st = lock(&self.state);
        if st.closed {
            drop(st);
            forget_everywhere(seg, peers);
            return;
        }
        let len = seg.data_len();
        let Some(class) = st.classes.iter_mut().find(|c| c.bytes == len) else {
            drop(st);
            forget_everywhere(seg, peers);
            return;
        };
        class.free.push(Slot { seg, peers });
        drop(st);
        self.back.notify_all();
    }

    fn close(&self) {
        let free: Vec<Slot> = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            st.closed = true;
            // The arenas live on in the slots still out, and go with the last of them.
            for c in &mut st.classes {
                c.arena = None;
            }
            st.classes
                .iter_mut()
                .flat_map(|c| std::mem::take(&mut c.free))
                .collect()
        };
        for slot in free {
            forget_everywhere(slot.seg, slot.peers);
        }
        // Slots a worker still holds go too: their names now, the memory when the
        // workers let go of their mappings (told by FORGET). A release that comes later
        // finds nothing and is ignored.
        for (seg, peers) in crate::lease::take_parked_of(std::ptr::from_ref(self) as usize) {
            forget_everywhere(seg, peers);
        }
    }
}

impl SlotHome for PoolShared {
    fn put_back(&self, seg: Segment, peers: Vec<PeerRef>) {
        self.put_back_slot(seg, peers);
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        self.close();
    }
}
