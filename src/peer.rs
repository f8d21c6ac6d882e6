//! Gateways as the layers below the channel layer see them: an identity and a way to
//! tell the worker that a segment is gone. The ledger (`crate::lease`) records which
//! gateway a reference went to, and an anonymous object (`crate::segment`) which
//! gateways hold a mapping of it, without either depending on the channel layer.

use std::sync::{Arc, Weak};

/// A gateway, as the layers below the channel layer see it.
pub(crate) trait Peer: Send + Sync {
    /// The segment that references named `name` is gone: the worker drops any mapping
    /// it keeps of it (FORGET).
    fn forget(&self, name: &str);

    /// The segment `name` is about to go: a release of it that arrives from now on is
    /// one that was under way, not a worker naming something it never had. Said before
    /// the ledger lets go of it, so that no release falls between the two.
    fn forgetting(&self, _name: &str) {}
}

/// The identity of a gateway: the address of its shared state.
pub(crate) type PeerKey = usize;

/// The key of `p`, which must be the data of the `Arc` its [`PeerRef`]s were made from.
pub(crate) fn key_of<P>(p: &P) -> PeerKey {
    std::ptr::from_ref(p) as usize
}

/// A gateway a reference went to.
#[derive(Clone)]
pub(crate) struct PeerRef {
    pub(crate) key: PeerKey,
    pub(crate) weak: Weak<dyn Peer>,
}

impl PeerRef {
    pub(crate) fn new<P: Peer + 'static>(p: &Arc<P>) -> PeerRef {
        let weak: Weak<dyn Peer> = Arc::downgrade(p) as Weak<dyn Peer>;
        PeerRef {
            key: key_of(&**p),
            weak,
        }
    }

    /// The gateway, while it exists.
    pub(crate) fn upgrade(&self) -> Option<Arc<dyn Peer>> {
        self.weak.upgrade()
    }
}

impl std::fmt::Debug for PeerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerRef({:#x})", self.key)
    }
}
