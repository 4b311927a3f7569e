//! A fault-injecting UDP proxy for the real-process fault harness, needing no privileges (no
//! `tc`, no iptables): one proxy stands in front of each replica, and every replica is told that
//! its peers live at their proxies' addresses.
//!
//! Contract:
//! - The proxy for node `j` listens on `127.0.0.1:0` and forwards to `real_j`. For each distinct
//!   source address `s` it keeps a NAT mapping: an upstream socket bound to `127.0.0.1:0` through
//!   which it sends to `real_j`; what `real_j` sends back to that upstream socket goes back to `s`
//!   from the listen socket. Mappings live until shutdown (a run has few peers).
//! - A datagram's sender is the node registered for its source address (`CLIENT` when none), so
//!   the toward-replica direction is `from = node of s, to = j` and the reply direction is
//!   `from = j, to = node of s`. Each directed link carries a [`LinkFault`]: cut, random loss,
//!   delay plus uniform jitter (delayed datagrams may be reordered, as UDP allows).
//! - Send and receive errors are ignored and never end a proxy task: a replica may be killed and
//!   restarted on the same real port at any time (`ECONNREFUSED` meanwhile) and the proxy keeps
//!   working.
//! - Loss and jitter draw from one seeded generator shared by all proxies. The draws are seeded
//!   but the run is not replayable: which datagram gets which draw depends on the OS scheduler.
//! - Tasks hold only a weak reference to the [`FaultNet`]; they end on [`FaultNet::shutdown`] or
//!   when the last `Arc<FaultNet>` is dropped.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use paxos_core::rng::Rng;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A replica id as the harness numbers them (1, 2, ...).
pub type Node = u64;

/// The sender of a datagram whose source address no one registered (a client, a stray socket).
pub const CLIENT: Node = 0;

/// The largest UDP payload we carry; a receive buffer this large never truncates a datagram.
const DATAGRAM_BYTES_MAX: usize = 65_535;

/// The fault on one directed link. The default is a healthy link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Drop every datagram.
    pub cut: bool,
    /// Drop each datagram with this probability (0.0 to 1.0).
    pub loss: f64,
    /// Hold each datagram this long before forwarding it.
    pub delay: Duration,
    /// Add a further delay drawn uniformly from `0..=jitter`.
    pub jitter: Duration,
}

impl LinkFault {
    /// A link that drops everything.
    pub fn cut() -> LinkFault {
        LinkFault {
            cut: true,
            ..LinkFault::default()
        }
    }
}

/// Counts of datagrams over all proxies and both directions since the net was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Handed to a socket for sending (after any delay), including sends that then failed.
    pub forwarded: u64,
    /// Dropped because the link was cut.
    pub dropped: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Held for a delay before forwarding (also counted in `forwarded` once sent).
    pub delayed: u64,
    /// Sends the OS refused (for example `ECONNREFUSED` while a replica restarts); ignored.
    pub send_errors: u64,
}

/// What to do with one datagram, decided from its link's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Forward,
    Cut,
    Lose,
    Delay(Duration),
}

/// The state every proxy shares: who sends from where, the link table, the generator, the counters.
#[derive(Debug)]
pub struct FaultNet {
    /// The node that sends from each real address.
    nodes: Mutex<HashMap<SocketAddr, Node>>,
    /// Faults by directed link `(from, to)`; a missing link is healthy.
    links: Mutex<BTreeMap<(Node, Node), LinkFault>>,
    rng: Mutex<Rng>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    delayed: AtomicU64,
    send_errors: AtomicU64,
    /// Set once by `shutdown`; delayed datagrams check it before they are sent.
    stopped: AtomicBool,
    /// Tasks wait on this; it fires on `shutdown` and, as the sender is dropped, when the net is.
    stop: watch::Sender<bool>,
}

impl FaultNet {
    /// A net with every link healthy, drawing loss and jitter from `seed`.
    pub fn new(seed: u64) -> Arc<FaultNet> {
        let (stop, _) = watch::channel(false);
        Arc::new(FaultNet {
            nodes: Mutex::new(HashMap::new()),
            links: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(Rng::new(seed)),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stop,
        })
    }

    /// Tells the net which node sends from `real` (so a proxy can tell senders apart).
    pub fn register(&self, node: Node, real: SocketAddr) {
        assert!(
            node != CLIENT,
            "node 0 is reserved for unregistered senders"
        );
        lock(&self.nodes).insert(real, node);
    }

    /// Starts a proxy for `node` on `127.0.0.1:0` forwarding to `real`; returns its address.
    /// Runs until the net is shut down or dropped. Also registers `node` at `real`.
    pub async fn start_proxy(
        self: &Arc<Self>,
        node: Node,
        real: SocketAddr,
    ) -> io::Result<SocketAddr> {
        self.register(node, real);
        let listen = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let address = listen.local_addr()?;
        let proxy = Proxy {
            net: Arc::downgrade(self),
            node,
            real,
            listen,
            stop: self.stop.subscribe(),
        };
        tokio::spawn(proxy.run_listen());
        Ok(address)
    }

    /// Fault on the directed link `from -> to` (datagrams that `from` sends toward `to`).
    pub fn set_link(&self, from: Node, to: Node, fault: LinkFault) {
        assert!(
            (0.0..=1.0).contains(&fault.loss),
            "loss {} is not a probability",
            fault.loss
        );
        lock(&self.links).insert((from, to), fault);
    }

    /// The directed link `from -> to` back to healthy.
    pub fn clear_link(&self, from: Node, to: Node) {
        lock(&self.links).remove(&(from, to));
    }

    /// The fault now on the directed link `from -> to`.
    pub fn link(&self, from: Node, to: Node) -> LinkFault {
        lock(&self.links)
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    /// Cuts every link between the two groups both ways; other links and the other fields of the
    /// cut links (loss, delay) are unchanged.
    pub fn partition(&self, side_a: &[Node], side_b: &[Node]) {
        let mut links = lock(&self.links);
        for &a in side_a {
            for &b in side_b {
                assert!(a != b, "node {a} is on both sides of the partition");
                links.entry((a, b)).or_default().cut = true;
                links.entry((b, a)).or_default().cut = true;
            }
        }
    }

    /// Every link back to healthy.
    pub fn heal(&self) {
        lock(&self.links).clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops every proxy task; datagrams still held for a delay are dropped. Idempotent.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
    }

    fn node_of(&self, address: SocketAddr) -> Node {
        lock(&self.nodes).get(&address).copied().unwrap_or(CLIENT)
    }

    /// Decides a datagram's fate on `from -> to` and counts the drops.
    fn judge(&self, from: Node, to: Node) -> Verdict {
        let fault = self.link(from, to);
        let verdict = verdict(&fault, &mut lock(&self.rng));
        match verdict {
            Verdict::Forward => {}
            Verdict::Cut => _ = self.dropped.fetch_add(1, Ordering::Relaxed),
            Verdict::Lose => _ = self.lost.fetch_add(1, Ordering::Relaxed),
            Verdict::Delay(_) => _ = self.delayed.fetch_add(1, Ordering::Relaxed),
        }
        verdict
    }
}

/// One proxy: the listen socket clients and peers send to, in front of the replica at `real`.
#[derive(Debug)]
struct Proxy {
    net: Weak<FaultNet>,
    node: Node,
    real: SocketAddr,
    listen: Arc<UdpSocket>,
    stop: watch::Receiver<bool>,
}

impl Proxy {
    /// Forwards what arrives on the listen socket toward the replica, through each source's own
    /// upstream socket.
    async fn run_listen(self) {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut stop = self.stop.clone();
        let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX + 1];
        loop {
            let received = tokio::select! {
                received = self.listen.recv_from(&mut buffer) => received,
                _ = wait_stop(&mut stop) => return,
            };
            // An error here is at worst an ICMP report for an earlier send; the socket still works.
            let Ok((length, source)) = received else {
                continue;
            };
            let Some(net) = self.net.upgrade() else {
                return;
            };
            let upstream = match upstreams.get(&source) {
                Some(upstream) => Arc::clone(upstream),
                None => match self.open_upstream(source).await {
                    Ok(upstream) => Arc::clone(upstreams.entry(source).or_insert(upstream)),
                    Err(_) => continue,
                },
            };
            let from = net.node_of(source);
            let verdict = net.judge(from, self.node);
            forward(&net, verdict, upstream, self.real, &buffer[..length]).await;
        }
    }

    /// Binds the upstream socket for `source` and starts relaying the replica's replies to it.
    async fn open_upstream(&self, source: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let upstream = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let reply = Reply {
            net: self.net.clone(),
            node: self.node,
            real: self.real,
            listen: Arc::clone(&self.listen),
            upstream: Arc::clone(&upstream),
            source,
            stop: self.stop.clone(),
        };
        tokio::spawn(reply.run());
        Ok(upstream)
    }
}

/// The reply half of one NAT mapping: what the replica sends to `upstream` goes back to `source`.
#[derive(Debug)]
struct Reply {
    net: Weak<FaultNet>,
    node: Node,
    real: SocketAddr,
    listen: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    source: SocketAddr,
    stop: watch::Receiver<bool>,
}

impl Reply {
    async fn run(mut self) {
        let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX + 1];
        loop {
            let received = tokio::select! {
                received = self.upstream.recv_from(&mut buffer) => received,
                _ = wait_stop(&mut self.stop) => return,
            };
            let Ok((length, sender)) = received else {
                continue;
            };
            // Only the replica knows this port; anything else is stray and not ours to relay.
            if sender != self.real {
                continue;
            }
            let Some(net) = self.net.upgrade() else {
                return;
            };
            // Looked up per datagram: the harness may register the source after traffic starts.
            let to = net.node_of(self.source);
            let verdict = net.judge(self.node, to);
            forward(
                &net,
                verdict,
                Arc::clone(&self.listen),
                self.source,
                &buffer[..length],
            )
            .await;
        }
    }
}

/// Sends `datagram` from `socket` to `target` now, later, or never, as `verdict` says.
async fn forward(
    net: &Arc<FaultNet>,
    verdict: Verdict,
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    datagram: &[u8],
) {
    match verdict {
        Verdict::Cut | Verdict::Lose => {}
        Verdict::Forward => send(net, &socket, target, datagram).await,
        Verdict::Delay(delay) => {
            let net = Arc::downgrade(net);
            let datagram = datagram.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Some(net) = net.upgrade() else { return };
                if !net.stopped.load(Ordering::Relaxed) {
                    send(&net, &socket, target, &datagram).await;
                }
            });
        }
    }
}

/// One send attempt; its error is counted and otherwise ignored.
async fn send(net: &FaultNet, socket: &UdpSocket, target: SocketAddr, datagram: &[u8]) {
    net.forwarded.fetch_add(1, Ordering::Relaxed);
    if socket.send_to(datagram, target).await.is_err() {
        net.send_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pure decision for one datagram on a link with `fault`. Draws from `rng` only for the fields
/// that need it, so a healthy link costs no draws.
fn verdict(fault: &LinkFault, rng: &mut Rng) -> Verdict {
    if fault.cut {
        return Verdict::Cut;
    }
    if fault.loss > 0.0 && unit(rng) < fault.loss {
        return Verdict::Lose;
    }
    let mut delay = fault.delay;
    if !fault.jitter.is_zero() {
        let jitter_nanos = u64::try_from(fault.jitter.as_nanos()).unwrap_or(u64::MAX);
        delay += Duration::from_nanos(rng.below(jitter_nanos.saturating_add(1)));
    }
    if delay.is_zero() {
        Verdict::Forward
    } else {
        Verdict::Delay(delay)
    }
}

/// Uniform in `0.0..1.0` from the top 53 bits of a draw.
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Resolves once the net is shut down or dropped.
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender (the net) is gone, which also means stop.
    _ = stop.wait_for(|stopped| *stopped).await;
}

/// Locks `mutex`, ignoring poisoning: every critical section here is a single map or generator
/// operation that leaves the data whole even if a panic interrupts the holder afterwards.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_link_forwards_without_draws() {
        let mut rng = Rng::new(1);
        let before = rng.clone();
        assert_eq!(verdict(&LinkFault::default(), &mut rng), Verdict::Forward);
        assert_eq!(rng, before);
    }

    #[test]
    fn cut_wins_over_everything() {
        let fault = LinkFault {
            loss: 0.0,
            delay: Duration::from_millis(5),
            ..LinkFault::cut()
        };
        assert_eq!(verdict(&fault, &mut Rng::new(2)), Verdict::Cut);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let fault = LinkFault {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            ..LinkFault::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let Verdict::Delay(delay) = verdict(&fault, &mut rng) else {
                panic!("a delayed link must delay");
            };
            assert!(delay >= Duration::from_millis(10) && delay <= Duration::from_millis(15));
        }
    }

    #[test]
    fn loss_one_loses_all_and_zero_none() {
        let mut rng = Rng::new(4);
        let all = LinkFault {
            loss: 1.0,
            ..LinkFault::default()
        };
        assert!((0..1000).all(|_| verdict(&all, &mut rng) == Verdict::Lose));
        assert!((0..1000).all(|_| verdict(&LinkFault::default(), &mut rng) == Verdict::Forward));
    }
}
