//! The outgoing half: one task per peer owns the connection to it, drains the peer's send queue
//! into one long-lived unidirectional stream, and reconnects with jittered exponential backoff.

use super::protocol::{
    codes, BootNonce, Hello, StreamKind, CONTROL_FRAME_BYTES_MAX, PROTOCOL_VERSION,
};
use super::QuicLimits;
use crate::tls;
use crate::transport::frame;
use crate::transport::limits::SEND_BATCH_BYTES_MAX;
use crate::transport::metrics::{bump, Counters};
use crate::wire::{ClusterId, PeerMessage};
use paxos_core::NodeId;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Everything the task of one peer owns.
pub(super) struct Link {
    pub local: NodeId,
    pub cluster: ClusterId,
    /// This transport's nonce, sent in every hello.
    pub boot: BootNonce,
    pub peer: NodeId,
    pub addr: SocketAddr,
    pub endpoint: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub limits: QuicLimits,
    pub counters: Arc<Counters>,
    pub queue: mpsc::Receiver<PeerMessage>,
    /// The live connection, for snapshot fetches to open streams on; `None` while disconnected.
    pub connection: watch::Sender<Option<Outbound>>,
}

/// An established outgoing connection. Closing it (as the accept side does when the peer
/// restarted) makes the task reconnect.
#[derive(Clone, Debug)]
pub(super) struct Outbound {
    pub connection: quinn::Connection,
    /// When the handshake completed: a connection older than the peer's current run is stale.
    pub established: Instant,
}

/// Why the message pump stopped.
enum PumpEnd {
    /// The transport dropped the queue's sender: the peer was removed.
    QueueClosed,
    Failed(String),
}

impl Link {
    /// Runs until the peer is removed (its queue closes) or the task is aborted.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(&self.limits, seed(self.local, self.peer));
        let mut lost_before = false;
        loop {
            match self.connect().await {
                Ok(connection) => {
                    if lost_before {
                        bump(&self.counters.reconnects, 1);
                    }
                    tracing::info!(peer = self.peer.0, addr = %self.addr, "connected");
                    backoff.reset();
                    self.connection.send_replace(Some(Outbound {
                        connection: connection.clone(),
                        established: Instant::now(),
                    }));
                    let end = self.pump(&connection).await;
                    self.connection.send_replace(None);
                    match end {
                        PumpEnd::QueueClosed => {
                            connection.close(codes::CLOSED.into(), b"peer removed");
                            return;
                        }
                        PumpEnd::Failed(why) => {
                            tracing::info!(peer = self.peer.0, %why, "connection lost");
                            connection.close(codes::CLOSED.into(), b"stream failed");
                        }
                    }
                }
                Err(why) => {
                    tracing::debug!(peer = self.peer.0, addr = %self.addr, %why, "connect failed");
                }
            }
            lost_before = true;
            if !self.drop_during(backoff.next_delay()).await {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<quinn::Connection, String> {
        let name = tls::node_dns_name(self.cluster, self.peer);
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), self.addr, &name)
            .map_err(|error| error.to_string())?;
        match tokio::time::timeout(self.limits.connect_timeout, connecting).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => Err("handshake timed out".to_string()),
        }
    }

    /// Opens the message stream, says hello, then writes queued messages until something fails.
    async fn pump(&mut self, connection: &quinn::Connection) -> PumpEnd {
        let mut stream = match connection.open_uni().await {
            Ok(stream) => stream,
            Err(error) => return PumpEnd::Failed(error.to_string()),
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster: self.cluster,
            node: self.local,
            boot: self.boot,
            stream: StreamKind::Messages,
        };
        let hello = frame::encode(&hello, CONTROL_FRAME_BYTES_MAX).expect("a hello is small");
        if let Err(error) = stream.write_all(&hello).await {
            return PumpEnd::Failed(error.to_string());
        }
        let mut batch = Vec::new();
        loop {
            let message = tokio::select! {
                message = self.queue.recv() => match message {
                    Some(message) => message,
                    None => {
                        // Best effort: the connection is closed right after.
                        let _ = stream.finish();
                        return PumpEnd::QueueClosed;
                    }
                },
                error = connection.closed() => return PumpEnd::Failed(error.to_string()),
            };
            if batch.capacity() > 4 * SEND_BATCH_BYTES_MAX {
                // One huge message (a promise carrying many values) need not pin its buffer.
                batch = Vec::new();
            }
            batch.clear();
            let mut messages = self.encode(&message, &mut batch);
            // Whatever else is queued goes into the same stream write: one pass through the
            // connection's lock and one wake of its driver for many messages instead of each.
            while batch.len() < SEND_BATCH_BYTES_MAX {
                match self.queue.try_recv() {
                    Ok(message) => messages += self.encode(&message, &mut batch),
                    Err(_) => break,
                }
            }
            if messages == 0 {
                continue;
            }
            if let Err(error) = stream.write_all(&batch).await {
                bump(&self.counters.messages_dropped, messages);
                return PumpEnd::Failed(error.to_string());
            }
            bump(&self.counters.messages_sent, messages);
            bump(&self.counters.bytes_sent, batch.len() as u64);
        }
    }

    /// Appends `message` as a frame to `batch`: 1 when it was, 0 (counted as dropped) when it is
    /// too large to send.
    fn encode(&self, message: &PeerMessage, batch: &mut Vec<u8>) -> u64 {
        match frame::encode_into(message, self.limits.frame_bytes_max, batch) {
            Ok(()) => 1,
            Err(error) => {
                tracing::error!(peer = self.peer.0, %error, "message not sent");
                bump(&self.counters.messages_dropped, 1);
                0
            }
        }
    }

    /// Waits `delay`, dropping (and counting) what is sent to the unreachable peer meanwhile: Paxos
    /// retransmits what matters, and fresh messages are worth more than a backlog. False when the
    /// queue closed.
    async fn drop_during(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                message = self.queue.recv() => match message {
                    Some(_) => bump(&self.counters.messages_dropped, 1),
                    None => return false,
                },
            }
        }
    }
}

/// Exponential backoff from `min` doubling to `max`; each delay is drawn uniformly from the upper
/// half of the current step ("equal jitter").
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
    min: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(limits: &QuicLimits, seed: u64) -> Backoff {
        Backoff {
            step: limits.reconnect_backoff_min,
            min: limits.reconnect_backoff_min,
            max: limits.reconnect_backoff_max,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(self.unit())
    }

    /// A uniform number in [0, 1) from xorshift64.
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs per process and per link: jitter is only useful if peers do not share it.
fn seed(local: NodeId, peer: NodeId) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one((local, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let limits = QuicLimits::default();
        let mut backoff = Backoff::new(&limits, 12345);
        let mut step = limits.reconnect_backoff_min;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(limits.reconnect_backoff_max);
        }
        assert!(backoff.next_delay() <= limits.reconnect_backoff_max);
        backoff.reset();
        assert!(backoff.next_delay() <= limits.reconnect_backoff_min);
    }
}
