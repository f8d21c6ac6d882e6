//! Who holds which array: the process-wide ledger of the references made of this
//! process's arrays, and the tickets that make each reference a single-use capability.
//!
//! Every [`SharedArray`](crate::SharedArray) has an [`Entry`] here, keyed by the name
//! its references carry. The entry lists the references made of the array and not yet
//! settled, one [`Record`] each: *pending* from the moment `share`, `lend` or
//! `into_value` makes it until a send uses it, then *sent* to one gateway until that
//! gateway's worker gives it back (RELEASE, or the array sent back on a channel) or
//! dies. What views the array may hand out follows from its records; the borrow checker
//! covers the part inside this process (the array module says how).
//!
//! A reference in a [`Value`] carries a [`Ticket`], shared by its clones:
//!
//! - a share or lend (`Out`) names its record. A send marks it sent to the gateway it
//!   goes to; a second send of it (or of a clone) finds it sent and fails. Dropping the
//!   last clone of a reference that was never sent removes its record, so nothing
//!   changes hands that did not cross.
//! - a move (`Move`) owns the segment until it is sent; dropped unsent, it unlinks it.
//! - a moved reference that arrived from a worker (`Incoming`) unlinks its segment when
//!   it is dropped without being adopted: the worker gave ownership up, and the host
//!   refused or ignored the array.
//!
//! A reference without a ticket (decoded from bytes by [`loads`](crate::loads), or a
//! shared or lent one that came back from a worker) only describes an array and cannot
//! be sent.
//!
//! Gateways and pools are seen through two small traits, [`Peer`] and [`SlotHome`], so
//! that this module depends on neither the channel layer nor the pool. Lock order: an
//! entry's lock may be held while the ledger's map is locked, never the reverse, and no
//! lock of this module is held while a peer or a pool is called.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::output::lock;
pub(crate) use crate::peer::{Peer, PeerKey, PeerRef, key_of};
use crate::segment::{AnonObject, Segment, StateWord};
use crate::value::{Access, ArrayRef, Value};

/// Where a pool slot goes back to.
pub(crate) trait SlotHome: Send + Sync {
    /// Takes the slot back, with the gateways that may keep it mapped.
    fn put_back(&self, seg: Segment, peers: Vec<PeerRef>);
}

/// Where a reference is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Made and not sent; `only` is the gateway it was made for, if any (a group's).
    Pending { only: Option<PeerKey> },
    /// Sent to this gateway, not yet given back.
    Sent(PeerKey),
}

/// One reference of an array that is not settled yet.
#[derive(Debug)]
struct Record {
    id: u64,
    access: Access,
    generation: u64,
    state: State,
    /// The gateway it was made for (kept when a failed send takes it back).
    only: Option<PeerKey>,
}

/// The ledger's record of one array of this process.
pub(crate) struct Entry {
    name: String,
    records: Vec<Record>,
    next_id: u64,
    /// Gateways that were sent a shared or lent reference: they may keep the segment
    /// mapped until told it is gone.
    peers: Vec<PeerRef>,
    /// A pool slot whose handle was dropped while references were out: it goes back to
    /// its pool when the last one is settled. Also (no home) a worker's anonymous
    /// object the host adopted and dropped while references were out: it is dropped
    /// when the last one is settled, which writes it free for its creator to reuse.
    parked: Option<(Segment, Option<Arc<dyn SlotHome>>)>,
    /// False once the array is gone (dropped, moved away, or its pool closed): its
    /// pending references can no longer be sent.
    live: bool,
    /// The object of an anonymous segment, whose descriptor a send may pass.
    anon: Option<Arc<AnonObject>>,
    /// The header's state word, kept to what is out (docs/SEGMENT_FORMAT.md §5), for
    /// `pixgate ls`; None for an array mapped read-only here.
    state: Option<StateWord>,
    /// Where the data area lies in the object (offset, length): what a by-value
    /// worker's WRITE_BACK may write, while a lend to it is out.
    data: (u64, u64),
}

type Ledger = Mutex<HashMap<String, Arc<Mutex<Entry>>>>;

static LEDGER: LazyLock<Ledger> = LazyLock::new(Default::default);

/// What the peers of an array hold of it: references made and not settled, sent or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Read-only references.
    pub(crate) shares: u32,
    /// Writable references: 1 for a lend, one per worker for a split lend.
    pub(crate) lent: u32,
    /// A move on its way out.
    pub(crate) moving: bool,
}

impl Counts {
    pub(crate) fn none(&self) -> bool {
        self.shares == 0 && self.lent == 0 && !self.moving
    }
}

/// The handle a [`SharedArray`](crate::SharedArray) keeps on its entry.
pub(crate) struct Holding(Arc<Mutex<Entry>>);

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = lock(&self.0);
        f.debug_struct("Holding")
            .field("counts", &e.counts())
            .field("records", &e.records)
            .finish()
    }
}

fn new_entry(seg: &Segment) -> Arc<Mutex<Entry>> {
    Arc::new(Mutex::new(Entry {
        name: seg.key(),
        records: Vec::new(),
        next_id: 0,
        peers: Vec::new(),
        parked: None,
        live: true,
        anon: seg.anon().cloned(),
        state: seg.state_word(),
        data: (
            seg.offset() + u64::from(seg.fields().header_len),
            seg.data_len() as u64,
        ),
    }))
}

/// Registers an array this process made on `seg` (a new segment, or a pool slot's new
/// use), filed under the segment's key.
pub(crate) fn register(seg: &Segment, peers: Vec<PeerRef>) -> Holding {
    let name = seg.key();
    let entry = new_entry(seg);
    lock(&entry).peers = peers;
    lock(&LEDGER).insert(name, Arc::clone(&entry));
    Holding(entry)
}

/// Registers an array adopted from a reference, unless this process already holds an
/// array on that segment: a second `SharedArray` over the same memory would keep
/// records of its own, so safe code could hold a mutable and a shared view of the same
/// bytes at once (a cloned moved reference adopted twice, or a worker naming one of this
/// process's arrays in a reference). Returns None in that case.
pub(crate) fn register_adopted(seg: &Segment) -> Option<Holding> {
    let name = seg.key();
    let mut ledger = lock(&LEDGER);
    if ledger.contains_key(&name) {
        return None;
    }
    let entry = new_entry(seg);
    ledger.insert(name, Arc::clone(&entry));
    Some(Holding(entry))
}

/// True while this process holds an array on the segment `name`.
pub(crate) fn is_held(name: &str) -> bool {
    lock(&LEDGER).contains_key(name)
}

fn find(name: &str) -> Option<Arc<Mutex<Entry>>> {
    lock(&LEDGER).get(name).cloned()
}

/// Removes `entry` from the ledger, if it is still the one registered under its name.
fn unregister(e: &mut Entry, entry: &Arc<Mutex<Entry>>) {
    e.live = false;
    let mut ledger = lock(&LEDGER);
    if ledger.get(&e.name).is_some_and(|a| Arc::ptr_eq(a, entry)) {
        ledger.remove(&e.name);
    }
}

impl Entry {
    /// Writes what is out into the header's state word: lent wins over shared, shared
    /// over moved, and owned when nothing is.
    fn publish(&self) {
        let Some(word) = &self.state else {
            return;
        };
        let mut c = Counts::default();
        for r in self
            .records
            .iter()
            .filter(|r| matches!(r.state, State::Sent(_)))
        {
            match r.access {
                Access::Shared => c.shares += 1,
                Access::Lent => c.lent += 1,
                Access::Moved => c.moving = true,
            }
        }
        word.set(if c.lent > 0 {
            crate::segment::STATE_LENT
        } else if c.shares > 0 {
            crate::segment::STATE_SHARED
        } else if c.moving {
            crate::segment::STATE_MOVED
        } else {
            crate::segment::STATE_OWNED
        });
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.records {
            match r.access {
                Access::Shared => c.shares += 1,
                Access::Lent => c.lent += 1,
                Access::Moved => c.moving = true,
            }
        }
        c
    }

    fn add_record(&mut self, access: Access, generation: u64, only: Option<PeerKey>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.records.push(Record {
            id,
            access,
            generation,
            state: State::Pending { only },
            only,
        });
        id
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.records.iter().position(|r| r.id == id)
    }

    fn note_peer(&mut self, peer: &PeerRef) {
        if !self.peers.iter().any(|p| p.key == peer.key) {
            self.peers.retain(|p| p.weak.strong_count() > 0);
            self.peers.push(peer.clone());
        }
    }

    /// The parked pool slot, once nothing is out any more: taken out of the ledger.
    fn unpark(&mut self, entry: &Arc<Mutex<Entry>>) -> Option<Homecoming> {
        if !self.records.is_empty() || self.parked.is_none() {
            return None;
        }
        let (seg, home) = self.parked.take()?;
        let peers = std::mem::take(&mut self.peers);
        unregister(self, entry);
        Some((seg, home, peers))
    }
}

/// A parked segment whose references are all settled, with the gateways that keep it
/// mapped: a pool slot on its way back to its pool, or an adopted object to drop.
type Homecoming = (Segment, Option<Arc<dyn SlotHome>>, Vec<PeerRef>);

fn go_home(back: Option<Homecoming>) {
    match back {
        Some((seg, Some(home), peers)) => home.put_back(seg, peers),
        Some((seg, None, peers)) => forget_everywhere(seg, peers),
        None => {}
    }
}

/// What became of an array's segment when its handle was dropped.
pub(crate) enum Dropped {
    /// Parked in the ledger until the references out are settled.
    Parked,
    /// A pool slot with nothing out: back to its pool now.
    Home(Segment, Arc<dyn SlotHome>, Vec<PeerRef>),
    /// Anything else: gone, with the gateways to tell.
    Gone(Segment, Vec<PeerRef>),
}

impl Holding {
    /// What the peers hold of the array.
    pub(crate) fn counts(&self) -> Counts {
        lock(&self.0).counts()
    }

    /// Makes a reference of `access` at `generation` if `allowed` says the current
    /// counts permit it; `only` restricts it to one gateway. Returns its ticket, or the
    /// counts that forbade it.
    pub(crate) fn make(
        &self,
        access: Access,
        generation: u64,
        only: Option<PeerKey>,
        allowed: impl FnOnce(&Counts) -> bool,
    ) -> std::result::Result<Arc<Ticket>, Counts> {
        Ok(self
            .make_many(access, generation, &[only], allowed)?
            .remove(0))
    }

    /// As [`Holding::make`], several references at once (a split lend), all or none.
    pub(crate) fn make_many(
        &self,
        access: Access,
        generation: u64,
        only: &[Option<PeerKey>],
        allowed: impl FnOnce(&Counts) -> bool,
    ) -> std::result::Result<Vec<Arc<Ticket>>, Counts> {
        let mut e = lock(&self.0);
        let counts = e.counts();
        if !allowed(&counts) {
            return Err(counts);
        }
        Ok(only
            .iter()
            .map(|&o| {
                let id = e.add_record(access, generation, o);
                Arc::new(Ticket {
                    kind: Kind::Out {
                        entry: Arc::clone(&self.0),
                        id,
                    },
                })
            })
            .collect())
    }

    /// Makes the move of an array whose handle is going away: the ticket takes the
    /// segment, and unlinks it unless it is sent. The entry stays in the ledger while
    /// the move is on its way, so that no reference can make this process adopt the
    /// segment a second time meanwhile. Fails while any other
    /// reference is out (the segment then stays where it was).
    pub(crate) fn make_move(
        &self,
        seg: &mut Option<Segment>,
    ) -> std::result::Result<Arc<Ticket>, Counts> {
        let mut e = lock(&self.0);
        let counts = e.counts();
        let Some(taken) = seg.take().filter(|_| counts.none()) else {
            return Err(counts);
        };
        let id = e.add_record(Access::Moved, taken.generation(), None);
        Ok(Arc::new(Ticket {
            kind: Kind::Move {
                entry: Arc::clone(&self.0),
                id,
                seg: Box::new(Mutex::new(Some(taken))),
            },
        }))
    }

    /// Takes an entry registered by [`register_adopted`] out of the ledger again, before
    /// any reference was made of it.
    pub(crate) fn forget_unused(self) {
        let mut e = lock(&self.0);
        unregister(&mut e, &self.0);
    }

    /// Takes care of the segment when the array's handle is dropped. A pool slot with
    /// references out is parked until they are settled, and so is a worker's anonymous
    /// object adopted here, whose creator reuses it once it is dropped
    /// (docs/SEGMENT_FORMAT.md §10); everything else leaves the ledger now. Pending
    /// references of a dropped array other than a pool slot can no longer be sent.
    pub(crate) fn drop_array(&self, seg: Segment, home: Option<Arc<dyn SlotHome>>) -> Dropped {
        let mut e = lock(&self.0);
        match home {
            Some(home) if !e.records.is_empty() => {
                e.parked = Some((seg, Some(home)));
                Dropped::Parked
            }
            Some(home) => {
                let peers = std::mem::take(&mut e.peers);
                unregister(&mut e, &self.0);
                e.anon = None;
                Dropped::Home(seg, home, peers)
            }
            None if !e.records.is_empty()
                && seg.anon().is_some()
                && seg.unlinks_on_drop()
                && seg.fields().creator_pid != std::process::id() =>
            {
                // A worker's object, adopted here, that a peer still maps for a share
                // or lend: its creator may reuse it only once nobody does (§10). Kept
                // until the last reference is settled, then dropped, which writes it
                // free; its pending references can no longer be sent.
                e.live = false;
                e.anon = None;
                e.parked = Some((seg, None));
                Dropped::Parked
            }
            None => {
                let peers = std::mem::take(&mut e.peers);
                // A release under way from a peer finds the name forgotten, not missing.
                let name = seg.wire_name();
                for peer in peers.iter().filter_map(PeerRef::upgrade) {
                    peer.forgetting(&name);
                }
                unregister(&mut e, &self.0);
                // Its pending references can no longer be sent, and nobody reads the
                // state word of a dropped array: they need not keep its mapping, nor an
                // anonymous object (and its memory), alive.
                e.anon = None;
                e.state = None;
                Dropped::Gone(seg, peers)
            }
        }
    }
}

/// The capability behind a reference; see the module docs.
pub(crate) struct Ticket {
    kind: Kind,
}

enum Kind {
    /// A share or lend; its record is in `entry`.
    Out { entry: Arc<Mutex<Entry>>, id: u64 },
    /// A move; the segment is here until it is sent.
    Move {
        entry: Arc<Mutex<Entry>>,
        id: u64,
        seg: Box<Mutex<Option<Segment>>>,
    },
    /// A reference from the worker with this pid: a moved one (unlinked or closed
    /// unless adopted), or one that came with a descriptor.
    Incoming {
        name: String,
        pid: u32,
        adopted: AtomicBool,
        /// The descriptor of an anonymous segment, until it is adopted.
        fd: Mutex<Option<OwnedFd>>,
        moved: bool,
        anonymous: bool,
    },
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Out { id, .. } => write!(f, "Ticket::Out({id})"),
            Kind::Move { id, .. } => write!(f, "Ticket::Move({id})"),
            Kind::Incoming { name, pid, .. } => write!(f, "Ticket::Incoming({name}, {pid})"),
        }
    }
}

fn refused(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Reference(format!(
        "reference to array {name} cannot be sent: {reason}"
    )))
}

impl Ticket {
    /// A ticket for a reference that arrived from the worker `pid`: moved, or with the
    /// descriptor of an anonymous segment.
    pub(crate) fn incoming(
        name: &str,
        pid: u32,
        moved: bool,
        anonymous: bool,
        fd: Option<OwnedFd>,
    ) -> Arc<Ticket> {
        Arc::new(Ticket {
            kind: Kind::Incoming {
                name: name.to_string(),
                pid,
                adopted: AtomicBool::new(false),
                fd: Mutex::new(fd),
                moved,
                anonymous,
            },
        })
    }

    /// The anonymous object a share, lend or move of this process refers to.
    fn anon(&self) -> Option<Arc<AnonObject>> {
        match &self.kind {
            Kind::Out { entry, .. } => lock(entry).anon.clone(),
            Kind::Move { seg, .. } => lock(seg).as_ref().and_then(|s| s.anon().cloned()),
            Kind::Incoming { .. } => None,
        }
    }

    /// For a reference that came with a descriptor: takes it (once).
    pub(crate) fn take_fd(&self) -> Option<OwnedFd> {
        match &self.kind {
            Kind::Incoming { fd, .. } => lock(fd).take(),
            _ => None,
        }
    }

    /// For a reference that came with a descriptor: a duplicate of it, which leaves the
    /// ticket's own for a later adoption if this one is refused (a wrong element type,
    /// a stale generation), as a named segment stays to be opened again.
    pub(crate) fn copy_fd(&self) -> std::io::Result<Option<OwnedFd>> {
        match &self.kind {
            Kind::Incoming { fd, .. } => lock(fd).as_ref().map(OwnedFd::try_clone).transpose(),
            _ => Ok(None),
        }
    }

    pub(crate) fn is_sendable(&self) -> bool {
        match &self.kind {
            Kind::Out { entry, id } | Kind::Move { entry, id, .. } => {
                let e = lock(entry);
                e.live
                    && e.position(*id)
                        .is_some_and(|i| matches!(e.records[i].state, State::Pending { .. }))
            }
            Kind::Incoming { .. } => false,
        }
    }

    /// Marks the reference as sent to `peer`, if it may be.
    fn send(&self, name: &str, peer: &PeerRef) -> Result<()> {
        let (entry, id) = match &self.kind {
            Kind::Out { entry, id } | Kind::Move { entry, id, .. } => (entry, *id),
            Kind::Incoming { .. } => {
                return Err(refused(
                    name,
                    "it was moved here by a worker; adopt it with SharedArray::from_value, \
                     then share, lend or move the array",
                ));
            }
        };
        let mut e = lock(entry);
        let Some(i) = e.position(id) else {
            return Err(refused(
                name,
                "it was sent already (each share, lend or move sends once)",
            ));
        };
        if !e.live {
            return Err(refused(name, "the array was dropped before it was sent"));
        }
        match e.records[i].state {
            State::Pending { only: Some(k) } if k != peer.key => {
                Err(refused(name, "it was made for another gateway"))
            }
            State::Pending { .. } => {
                e.records[i].state = State::Sent(peer.key);
                e.publish();
                if e.records[i].access == Access::Moved {
                    // Out of the ledger from now on: the receiver may send it back.
                    unregister(&mut e, entry);
                } else {
                    e.note_peer(peer);
                }
                Ok(())
            }
            State::Sent(_) => Err(refused(
                name,
                "it was sent already (each share, lend or move sends once)",
            )),
        }
    }

    /// The send did not happen after all: the reference is pending again.
    fn unsend(&self) {
        match &self.kind {
            Kind::Out { entry, id } => {
                let mut e = lock(entry);
                if let Some(i) = e.position(*id) {
                    let only = e.records[i].only;
                    e.records[i].state = State::Pending { only };
                    e.publish();
                }
            }
            Kind::Move { entry, id, .. } => {
                let mut e = lock(entry);
                if let Some(i) = e.position(*id) {
                    e.records[i].state = State::Pending { only: None };
                }
                e.live = true;
                lock(&LEDGER).insert(e.name.clone(), Arc::clone(entry));
            }
            Kind::Incoming { .. } => {}
        }
    }

    /// The send happened: a move hands its segment over (this process only unmaps it).
    fn sent(&self) {
        if let Kind::Move { entry, id, seg } = &self.kind {
            {
                let mut e = lock(entry);
                if let Some(i) = e.position(*id) {
                    e.records.remove(i);
                }
            }
            if let Some(seg) = lock(seg).take() {
                seg.set_unlink_on_drop(false);
            }
        }
    }

    /// For an incoming moved reference: claims the adoption. False when it was adopted
    /// already, or the reference is of another kind.
    pub(crate) fn adopt(&self) -> bool {
        match &self.kind {
            Kind::Incoming { adopted, .. } => !adopted.swap(true, Ordering::AcqRel),
            _ => false,
        }
    }

    /// For an incoming moved reference: the adoption failed after [`Ticket::adopt`]
    /// claimed it, so dropping the reference unlinks the segment after all.
    pub(crate) fn unadopt(&self) {
        if let Kind::Incoming { adopted, .. } = &self.kind {
            adopted.store(false, Ordering::Release);
        }
    }

    /// For an incoming moved reference: the pid of the worker that sent it.
    pub(crate) fn sender(&self) -> Option<u32> {
        match self.kind {
            Kind::Incoming { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Out { entry, id } => {
                let back = {
                    let mut e = lock(entry);
                    match e.position(*id) {
                        Some(i) if matches!(e.records[i].state, State::Pending { .. }) => {
                            e.records.remove(i);
                            e.unpark(entry)
                        }
                        _ => None,
                    }
                };
                go_home(back);
            }
            Kind::Move { entry, id, seg } => {
                let mut e = lock(entry);
                if let Some(i) = e.position(*id) {
                    e.records.remove(i);
                    unregister(&mut e, entry);
                }
                drop(e);
                // Never sent: still this process's, so dropping it unlinks it.
                drop(lock(seg).take());
            }
            Kind::Incoming {
                name,
                pid,
                adopted,
                fd,
                moved,
                anonymous,
            } => {
                // An anonymous segment's descriptor closes with the ticket: its memory
                // goes once the worker lets go too. A named one is unlinked.
                drop(lock(fd).take());
                if *moved && !*anonymous && !adopted.load(Ordering::Acquire) && !is_held(name) {
                    crate::segment::unlink_abandoned(name, *pid);
                }
            }
        }
    }
}

/// The references of one value on their way to a gateway: marked sent when made, taken
/// back unless [`Sending::done`] is called (the write failed, or never happened).
#[derive(Debug)]
pub(crate) struct Sending<'v> {
    tickets: Vec<Arc<Ticket>>,
    /// The references to anonymous segments, with their objects.
    anonymous: Vec<(&'v ArrayRef, Arc<AnonObject>)>,
    done: bool,
}

impl<'v> Sending<'v> {
    /// True when the value refers to anonymous segments.
    pub(crate) fn has_anonymous(&self) -> bool {
        !self.anonymous.is_empty()
    }

    /// The references to anonymous segments, with their objects.
    pub(crate) fn anonymous(&self) -> impl Iterator<Item = (&'v ArrayRef, Arc<AnonObject>)> + '_ {
        self.anonymous.iter().map(|(r, o)| (*r, Arc::clone(o)))
    }

    /// The frame was written: moves hand their segments over.
    pub(crate) fn done(mut self) {
        self.done = true;
        for t in &self.tickets {
            t.sent();
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            for t in &self.tickets {
                t.unsend();
            }
        }
    }
}

/// Marks every reference in `value` as sent to `peer`, all or none. Call it before the
/// frame is written (a worker may answer before the write returns), then
/// [`Sending::done`] once it is.
///
/// # Errors
///
/// [`ErrorKind::Reference`] for a reference that was not made by share, lend or
/// into_value in this process, was sent before (or a clone of it was), was made for
/// another gateway, whose array was dropped, or that occurs twice in `value`. Nothing
/// is marked then.
pub(crate) fn send<'v>(value: &'v Value, peer: &PeerRef) -> Result<Sending<'v>> {
    let mut refs: Vec<&ArrayRef> = Vec::new();
    value.for_each_array(|r| refs.push(r));
    let mut out = Sending {
        tickets: Vec::with_capacity(refs.len()),
        anonymous: Vec::new(),
        done: false,
    };
    for r in refs {
        let Some(t) = r.ticket() else {
            return Err(refused(
                r.name(),
                "it was not made by share, lend or into_value in this process \
                 (decoded from bytes, or given back by a worker)",
            ));
        };
        if out.tickets.iter().any(|u| Arc::ptr_eq(u, t)) {
            return Err(refused(
                r.name(),
                "the same reference occurs twice in one value",
            ));
        }
        t.send(r.name(), peer)?;
        out.tickets.push(Arc::clone(t));
        if r.transport() == crate::segment::Transport::Anonymous {
            match t.anon() {
                Some(obj) => out.anonymous.push((r, obj)),
                None => {
                    return Err(refused(r.name(), "its anonymous segment is gone"));
                }
            }
        }
    }
    Ok(out)
}

/// Applies a release from the worker of `from`: one reference of `access` to the
/// named segment at `generation`, sent to that worker. Returns false when nothing
/// matches (a stale, repeated or forged release).
pub(crate) fn release(name: &str, generation: u64, access: Access, from: PeerKey) -> bool {
    let Some(entry) = find(name) else {
        return false;
    };
    let back = {
        let mut e = lock(&entry);
        let Some(i) = e.records.iter().position(|r| {
            r.access == access && r.generation == generation && r.state == State::Sent(from)
        }) else {
            return false;
        };
        e.records.remove(i);
        e.publish();
        e.unpark(&entry)
    };
    go_home(back);
    true
}

/// Applies a WRITE_BACK from the by-value worker of `from`: `bytes` at `offset` of the
/// data area of the array filed under `key`, which must be lent to that worker at
/// `generation` (docs/PROTOCOL.md §4.14). Rust holds no view of a lent array, so writing
/// its memory now races with nothing of this process.
///
/// # Errors
///
/// A description of what does not match (unknown array, no such lend, bytes outside
/// the data area); nothing is written then.
pub(crate) fn write_back(
    key: &str,
    generation: u64,
    from: PeerKey,
    offset: u64,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    let entry = find(key).ok_or_else(|| format!("write-back to unknown array {key}"))?;
    let e = lock(&entry);
    let lent = e.records.iter().any(|r| {
        r.access == Access::Lent && r.generation == generation && r.state == State::Sent(from)
    });
    if !lent {
        return Err(format!(
            "write-back to array {key} at generation {generation}, which is not lent to \
             this gateway"
        ));
    }
    let (start, len) = e.data;
    if offset
        .checked_add(bytes.len() as u64)
        .is_none_or(|end| end > len)
    {
        return Err(format!(
            "write-back of {} bytes at {offset} runs past the {len} bytes of array {key}",
            bytes.len()
        ));
    }
    let Some(anon) = &e.anon else {
        return Err(format!("write-back to array {key}, which is not anonymous"));
    };
    let file = anon.file().map_err(|p| p.to_string())?;
    crate::byvalue::write_at(&file, bytes, start + offset)
        .map_err(|err| format!("write-back to array {key}: {err}"))
}

/// The worker of `peer` is gone: everything sent to it is released (a lent array
/// becomes usable again, its contents as the worker left them; a pool slot goes back).
pub(crate) fn peer_gone(peer: PeerKey) {
    let entries: Vec<Arc<Mutex<Entry>>> = lock(&LEDGER).values().cloned().collect();
    for entry in entries {
        let back = {
            let mut e = lock(&entry);
            let before = e.records.len();
            e.records.retain(|r| r.state != State::Sent(peer));
            if e.records.len() == before {
                continue;
            }
            e.publish();
            e.unpark(&entry)
        };
        go_home(back);
    }
}

/// True while a reference to the named segment at `generation` is out (pending or
/// sent).
pub(crate) fn is_out(name: &str, generation: u64) -> bool {
    find(name).is_some_and(|entry| {
        lock(&entry)
            .records
            .iter()
            .any(|r| r.generation == generation)
    })
}

/// The parked slots of the pool `home` (by address): taken out of the ledger, for the
/// pool to remove when it closes. Their references out can no longer be settled.
pub(crate) fn take_parked_of(home: usize) -> Vec<(Segment, Vec<PeerRef>)> {
    let entries: Vec<Arc<Mutex<Entry>>> = lock(&LEDGER).values().cloned().collect();
    let mut out = Vec::new();
    for entry in entries {
        let mut e = lock(&entry);
        let mine = e.parked.as_ref().is_some_and(|(_, h)| {
            h.as_ref()
                .is_some_and(|h| Arc::as_ptr(h).cast::<()>() as usize == home)
        });
        if mine {
            let (seg, _) = e.parked.take().expect("checked");
            let peers = std::mem::take(&mut e.peers);
            unregister(&mut e, &entry);
            out.push((seg, peers));
        }
    }
    out
}

/// Drops a segment that workers may keep mapped: unlinks it first (if this process owns
/// it), so that no reference still on its way can map it anew, then tells them it is
/// gone; their mappings, and the memory, go when their last array of it does.
pub(crate) fn forget_everywhere(seg: Segment, peers: Vec<PeerRef>) {
    // An anonymous object tells its peers itself, when its last handle goes (a pool
    // arena outlives each of its slots).
    if peers.is_empty() || seg.transport() == crate::segment::Transport::Anonymous {
        return;
    }
    if seg.unlinks_on_drop() {
        let _ = seg.unlink();
    }
    let name = seg.wire_name();
    for peer in peers.iter().filter_map(PeerRef::upgrade) {
        peer.forget(&name);
    }
}

/// Takes in the references of a value that arrived from the worker `pid` (gateway
/// `from`): a reference that came with a descriptor (token not 0) takes it from
/// `take_fd`; a moved one gets a ticket that unlinks (named) or closes (anonymous) its
/// segment unless it is adopted; a shared or lent one without a descriptor names an
/// array of this process that the worker gives back, which releases it (once per
/// reference).
///
/// # Errors
///
/// What `take_fd` reports for a descriptor that cannot be had; the value is then
/// unusable, and the descriptors taken so far close with it.
pub(crate) fn receive(
    value: &mut Value,
    pid: u32,
    from: PeerKey,
    mut take_fd: impl FnMut(u64) -> std::result::Result<OwnedFd, String>,
) -> std::result::Result<(), String> {
    let mut failed = None;
    value.for_each_array_mut(|r| {
        let fd = match r.token() {
            0 => None,
            token => match take_fd(token) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    failed.get_or_insert(format!("array {}: {e}", r.name()));
                    return;
                }
            },
        };
        let anonymous = r.transport() == crate::segment::Transport::Anonymous;
        match r.access() {
            Access::Moved => r.set_ticket(Ticket::incoming(r.name(), pid, true, anonymous, fd)),
            _ if fd.is_some() => {
                r.set_ticket(Ticket::incoming(r.name(), pid, false, anonymous, fd))
            }
            access => {
                release(&r.key(), r.generation(), access, from);
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway as the ledger sees it; FORGET goes nowhere.
    struct Gw;

    impl Peer for Gw {
        fn forget(&self, _name: &str) {}
    }

    fn segment() -> Segment {
        let layout = crate::header::Layout::c_order(crate::header::DType::U8, &[8]).unwrap();
        Segment::create_anonymous(&layout, &crate::header::Meta::default()).unwrap()
    }

    fn reference(n: &str, access: Access, t: Arc<Ticket>) -> Value {
        Value::Array(ArrayRef::with_ticket(
            n.to_string(),
            5,
            access,
            crate::value::Place::Named,
            t,
        ))
    }

    fn drop_entry(h: Holding) {
        let mut e = lock(&h.0);
        unregister(&mut e, &h.0);
    }

    #[test]
    fn releases_must_name_what_was_sent_to_that_gateway() {
        let seg = segment();
        let n = seg.key();
        let h = register(&seg, Vec::new());
        let (a, b) = (Arc::new(Gw), Arc::new(Gw));
        let (pa, pb) = (PeerRef::new(&a), PeerRef::new(&b));
        let t = h.make(Access::Shared, 5, None, |_| true).unwrap();
        let v = reference(&n, Access::Shared, t);
        assert!(
            !release(&n, 5, Access::Shared, pa.key),
            "pending: not out yet"
        );
        assert_eq!(
            seg.state(),
            crate::segment::STATE_OWNED,
            "made, not handed out"
        );
        send(&v, &pa).unwrap().done();
        assert_eq!(seg.state(), crate::segment::STATE_SHARED);
        assert!(!release(&n, 4, Access::Shared, pa.key), "stale generation");
        assert!(!release(&n, 5, Access::Lent, pa.key), "nothing lent");
        assert!(!release(&n, 5, Access::Shared, pb.key), "sent to another");
        assert!(
            !release("/pxg-0-unknown", 5, Access::Shared, pa.key),
            "unknown"
        );
        assert_eq!(h.counts().shares, 1);
        assert!(release(&n, 5, Access::Shared, pa.key));
        assert_eq!(seg.state(), crate::segment::STATE_OWNED, "back");
        assert!(!release(&n, 5, Access::Shared, pa.key), "released twice");
        assert!(h.counts().none());
        drop(v);
        drop_entry(h);
    }

    #[test]
    fn a_reference_is_sent_once_and_taken_back_unless_it_was() {
        let seg = segment();
        let n = seg.key();
        let h = register(&seg, Vec::new());
        let g = Arc::new(Gw);
        let p = PeerRef::new(&g);
        let t = h.make(Access::Lent, 5, None, Counts::none).unwrap();
        let v = reference(&n, Access::Lent, t);
        // A send whose write fails is taken back: the reference can go again.
        drop(send(&v, &p).unwrap());
        assert!(matches!(&v, Value::Array(r) if r.is_sendable()));
        send(&v, &p).unwrap().done();
        assert_eq!(seg.state(), crate::segment::STATE_LENT);
        let err = send(&v.clone(), &p).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Reference(_)), "{err}");
        assert!(h.make(Access::Shared, 5, None, |c| c.lent == 0).is_err());
        peer_gone(p.key);
        assert!(h.counts().none(), "the worker's death gave it back");
        drop(v);
        drop_entry(h);
    }

    #[test]
    fn a_reference_made_for_one_gateway_cannot_go_to_another() {
        let seg = segment();
        let n = seg.key();
        let h = register(&seg, Vec::new());
        let (a, b) = (Arc::new(Gw), Arc::new(Gw));
        let (pa, pb) = (PeerRef::new(&a), PeerRef::new(&b));
        let t = h.make(Access::Shared, 5, Some(pa.key), |_| true).unwrap();
        let v = reference(&n, Access::Shared, t);
        let err = send(&v, &pb).unwrap_err();
        assert!(err.to_string().contains("another gateway"), "{err}");
        send(&v, &pa).unwrap().done();
        peer_gone(pb.key);
        assert_eq!(
            h.counts().shares,
            1,
            "another worker's death changes nothing"
        );
        peer_gone(pa.key);
        assert!(h.counts().none());
        drop(v);
        drop_entry(h);
    }

    #[test]
    fn a_segment_is_adopted_once_per_process() {
        let seg = segment();
        let first = register_adopted(&seg).expect("first adoption");
        assert!(register_adopted(&seg).is_none(), "adopted twice");
        first.forget_unused();
        let again = register_adopted(&seg).expect("free again once dropped");
        drop_entry(again);
    }
}
