//! A connection's place in the admission counts ([`crate::state::admission`]), given back when
//! dropped: shared by the transports that accept (QUIC, TCP).

use std::sync::{Arc, Mutex};

use crate::state::admission::Admission;

/// A place an accepted connection holds in the admission counts: its handshake's, or its own
/// (until it closes). Given back when dropped, whatever way the connection ends.
pub(crate) struct Slot {
    admission: Arc<Mutex<Admission>>,
    pub(crate) source: std::net::IpAddr,
    kind: SlotKind,
}

pub(crate) enum SlotKind {
    Handshake,
    Connection,
}

impl Slot {
    pub(crate) fn new(admission: &Arc<Mutex<Admission>>, source: std::net::IpAddr, kind: SlotKind) -> Self {
        Self { admission: admission.clone(), source, kind }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut admission = self.admission.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.kind {
            SlotKind::Handshake => admission.handshake_done(self.source),
            SlotKind::Connection => admission.closed(self.source),
        }
    }
}
