//! An in-memory network: a hub that hands out one [`MemTransport`] per node and delivers through
//! the nodes' tokio channels, with knobs to lose messages and to partition nodes.
//!
//! Delivery is immediate (`try_send` into the receiver's inbound channel) so per-pair order is
//! kept; a full inbound channel drops, as a slow QUIC peer would. Nothing here uses wall time.

use super::metrics::{bump, Counters};
use super::{InboundSender, SnapshotSource, Transport, TransportError, TransportMetrics};
use crate::wire::{Inbound, PeerMessage};
use paxos_core::{NodeId, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

/// The hub. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    nodes: BTreeMap<NodeId, MemNode>,
    /// Directed links that lose everything: `(from, to)`.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    loss: Option<Loss>,
    /// Bumped by every `join`, so a transport handed out before a node rejoined (restarted) is
    /// recognised as stale and sends nothing.
    generation: u64,
}

struct MemNode {
    generation: u64,
    inbound: InboundSender,
    snapshots: Arc<dyn SnapshotSource>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for MemNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNode")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Random loss of each message with probability `per_million / 1e6`, from a seeded xorshift.
#[derive(Debug)]
struct Loss {
    per_million: u32,
    rng: u64,
}

impl Loss {
    fn drops(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) < u64::from(self.per_million)
    }
}

impl MemState {
    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        !self.isolated.contains(&from)
            && !self.isolated.contains(&to)
            && !self.blocked.contains(&(from, to))
    }
}

impl MemNetwork {
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    /// Registers `node` and returns its transport. Joining again (a restart) replaces the earlier
    /// registration; the earlier transport can no longer send.
    pub fn join(
        &self,
        node: NodeId,
        inbound: InboundSender,
        snapshots: Arc<dyn SnapshotSource>,
    ) -> MemTransport {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        let counters = Arc::new(Counters::default());
        let entry = MemNode {
            generation,
            inbound,
            snapshots,
            counters: counters.clone(),
        };
        state.nodes.insert(node, entry);
        MemTransport {
            node,
            generation,
            network: self.clone(),
            counters,
        }
    }

    /// Unregisters `node` (a crash): messages to and from it are dropped until it joins again.
    pub fn leave(&self, node: NodeId) {
        self.lock().nodes.remove(&node);
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) {
        self.lock().isolated.insert(node);
    }

    /// Undoes [`MemNetwork::isolate`] and every block touching `node`.
    pub fn heal(&self, node: NodeId) {
        let mut state = self.lock();
        state.isolated.remove(&node);
        state
            .blocked
            .retain(|&(from, to)| from != node && to != node);
    }

    /// Drops everything from `from` to `to` (one direction only).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Blocks every link between a node of `side_a` and a node of `side_b`, both ways.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut state = self.lock();
        for &a in side_a {
            for &b in side_b {
                state.blocked.insert((a, b));
                state.blocked.insert((b, a));
            }
        }
    }

    /// Removes every partition, block and isolation (loss stays as set).
    pub fn heal_all(&self) {
        let mut state = self.lock();
        state.blocked.clear();
        state.isolated.clear();
    }

    /// Loses each message with `probability` (0.0 to 1.0), deterministically from `seed`.
    pub fn set_loss(&self, probability: f64, seed: u64) {
        assert!(
            (0.0..=1.0).contains(&probability),
            "loss probability {probability} outside [0, 1]"
        );
        let per_million = (probability * 1_000_000.0).round() as u32;
        // xorshift must not start at zero.
        let rng = seed | 1;
        self.lock().loss = (per_million > 0).then_some(Loss { per_million, rng });
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One node's endpoint on a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    node: NodeId,
    generation: u64,
    network: MemNetwork,
    counters: Arc<Counters>,
}

impl MemTransport {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Message counters of this node (`bytes_*` stay zero: nothing is encoded).
    pub fn metrics(&self) -> TransportMetrics {
        self.counters.snapshot()
    }

    fn current(&self, state: &MemState) -> bool {
        state
            .nodes
            .get(&self.node)
            .is_some_and(|entry| entry.generation == self.generation)
    }
}

impl Transport for MemTransport {
    /// Leaves the network, as [`MemNetwork::leave`], unless the node has rejoined since.
    fn close(&self) {
        let mut state = self.network.lock();
        if self.current(&state) {
            state.nodes.remove(&self.node);
        }
    }

    fn send(&self, to: NodeId, message: PeerMessage) {
        let mut state = self.network.lock();
        let delivered = self.current(&state)
            && to != self.node
            && state.reachable(self.node, to)
            && !state.loss.as_mut().is_some_and(Loss::drops)
            && state.nodes.get(&to).is_some_and(|peer| {
                let inbound = Inbound {
                    from: self.node,
                    message,
                };
                let accepted = peer.inbound.try_send(inbound).is_ok();
                if accepted {
                    bump(&peer.counters.messages_received, 1);
                }
                accepted
            });
        if delivered {
            bump(&self.counters.messages_sent, 1);
        } else {
            bump(&self.counters.messages_dropped, 1);
        }
    }

    fn fetch_snapshot(
        &self,
        from: NodeId,
        min_slot: Slot,
        dest: PathBuf,
    ) -> Pin<Box<dyn Future<Output = Result<u64, TransportError>> + Send + 'static>> {
        let source = {
            let state = self.network.lock();
            if !self.current(&state) {
                Err(TransportError::ShutDown)
            } else if !state.reachable(self.node, from) || !state.reachable(from, self.node) {
                Err(TransportError::Unreachable {
                    peer: from,
                    why: "partitioned".to_string(),
                })
            } else {
                match state.nodes.get(&from) {
                    Some(peer) => Ok((peer.snapshots.clone(), peer.counters.clone())),
                    None => Err(TransportError::UnknownPeer(from)),
                }
            }
        };
        let counters = self.counters.clone();
        Box::pin(async move {
            let (snapshots, peer_counters) = source?;
            let Some(path) = snapshots.snapshot_file(min_slot) else {
                return Err(TransportError::NoSnapshot {
                    peer: from,
                    min_slot,
                });
            };
            let bytes = tokio::fs::copy(&path, &dest)
                .await
                .map_err(|source| TransportError::Io { path, source })?;
            bump(&peer_counters.snapshots_served, 1);
            bump(&peer_counters.snapshot_bytes_sent, bytes);
            bump(&counters.snapshots_fetched, 1);
            bump(&counters.snapshot_bytes_received, bytes);
            Ok(bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::NoSnapshots;
    use crate::wire::ClusterId;
    use tokio::sync::mpsc;

    fn query() -> PeerMessage {
        PeerMessage::IdentityQuery {
            cluster: ClusterId(1),
        }
    }

    #[test]
    fn delivery_partitions_loss_and_restart() {
        let network = MemNetwork::new();
        let (tx1, _rx1) = mpsc::channel(64);
        let (tx2, mut rx2) = mpsc::channel(2048);
        let one = network.join(NodeId(1), tx1, Arc::new(NoSnapshots));
        let _two = network.join(NodeId(2), tx2, Arc::new(NoSnapshots));

        one.send(NodeId(2), query());
        assert_eq!(rx2.try_recv().unwrap().from, NodeId(1));

        network.block(NodeId(1), NodeId(2));
        one.send(NodeId(2), query());
        assert!(rx2.try_recv().is_err());
        network.heal(NodeId(2));
        one.send(NodeId(2), query());
        assert!(rx2.try_recv().is_ok());

        network.set_loss(0.5, 42);
        for _ in 0..1000 {
            one.send(NodeId(2), query());
        }
        let mut received = 0;
        while rx2.try_recv().is_ok() {
            received += 1;
        }
        assert!((350..650).contains(&received), "{received} of 1000");
        network.set_loss(0.0, 0);

        // node 1 restarts: the old transport is stale.
        let (tx1b, _rx1b) = mpsc::channel(64);
        let one_again = network.join(NodeId(1), tx1b, Arc::new(NoSnapshots));
        one.send(NodeId(2), query());
        assert!(rx2.try_recv().is_err());
        one_again.send(NodeId(2), query());
        assert!(rx2.try_recv().is_ok());

        // Closing the stale transport does not unregister the restarted node; closing the
        // current one does.
        one.close();
        one_again.send(NodeId(2), query());
        assert!(rx2.try_recv().is_ok());
        one_again.close();
        one_again.send(NodeId(2), query());
        assert!(rx2.try_recv().is_err());
        assert_eq!(one.metrics().messages_sent, 2 + received);
    }
}
