//! Transport counters: atomics bumped by the tasks, read as a [`TransportMetrics`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since the transport started. Every counter only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportMetrics {
    /// Messages written to a peer's stream, and their frame bytes.
    pub messages_sent: u64,
    pub bytes_sent: u64,
    /// Messages read from peers and handed to the inbound channel, and their frame bytes.
    pub messages_received: u64,
    pub bytes_received: u64,
    /// Messages `send` gave up on: unknown peer or this node itself, full queue, peer unreachable,
    /// too large to frame, or lost with a failed stream.
    pub messages_dropped: u64,
    /// Frames from an authenticated peer that did not decode (oversized, undecodable); each
    /// closes its stream.
    pub decode_errors: u64,
    /// Incoming connections or streams refused: failed handshake (no or foreign certificate, wrong
    /// ALPN), or a hello naming another cluster or a node the certificate does not prove.
    pub connections_refused: u64,
    /// Connections made to a peer after an earlier connection to it was lost or failed.
    pub reconnects: u64,
    /// Snapshot files served to peers, and fetched from peers (complete and verified).
    pub snapshots_served: u64,
    pub snapshots_fetched: u64,
    pub snapshot_bytes_sent: u64,
    pub snapshot_bytes_received: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub decode_errors: AtomicU64,
    pub connections_refused: AtomicU64,
    pub reconnects: AtomicU64,
    pub snapshots_served: AtomicU64,
    pub snapshots_fetched: AtomicU64,
    pub snapshot_bytes_sent: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
}

/// Adds `n` to a counter. Relaxed: counters order nothing.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> TransportMetrics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportMetrics {
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            messages_dropped: get(&self.messages_dropped),
            decode_errors: get(&self.decode_errors),
            connections_refused: get(&self.connections_refused),
            reconnects: get(&self.reconnects),
            snapshots_served: get(&self.snapshots_served),
            snapshots_fetched: get(&self.snapshots_fetched),
            snapshot_bytes_sent: get(&self.snapshot_bytes_sent),
            snapshot_bytes_received: get(&self.snapshot_bytes_received),
        }
    }
}
