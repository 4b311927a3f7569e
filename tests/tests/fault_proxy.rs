//! The fault-injecting UDP proxy (`tests::fault::proxy`) over real loopback sockets: an echo
//! "replica" (node 3) behind a proxy, and two "peer" sockets registered as nodes 1 and 2.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::fault::proxy::{FaultNet, LinkFault, NetStats, Node, CLIENT};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const REPLICA: Node = 3;

/// Long enough that a datagram that was forwarded has surely arrived on loopback.
const SILENCE: Duration = Duration::from_millis(150);
/// Generous bound for a datagram that must arrive.
const ARRIVAL: Duration = Duration::from_secs(2);

/// An echo replica, two registered peers and one unregistered client, all behind one proxy.
struct Setup {
    net: Arc<FaultNet>,
    proxy: SocketAddr,
    real: SocketAddr,
    echo: JoinHandle<()>,
    /// Datagrams the echo replica received.
    echoed: Arc<AtomicU64>,
    peer1: UdpSocket,
    peer2: UdpSocket,
}

impl Setup {
    async fn new(seed: u64) -> Setup {
        let replica = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let real = replica.local_addr().unwrap();
        let echoed = Arc::new(AtomicU64::new(0));
        let echo = tokio::spawn(echo(replica, Arc::clone(&echoed)));
        let net = FaultNet::new(seed);
        let proxy = net.start_proxy(REPLICA, real).await.unwrap();
        let peer1 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let peer2 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        net.register(1, peer1.local_addr().unwrap());
        net.register(2, peer2.local_addr().unwrap());
        Setup {
            net,
            proxy,
            real,
            echo,
            echoed,
            peer1,
            peer2,
        }
    }

    /// Sends `payload` from `peer` through the proxy and waits up to `wait` for the echo.
    async fn round_trip(
        &self,
        peer: &UdpSocket,
        payload: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        peer.send_to(payload, self.proxy).await.unwrap();
        receive(peer, self.proxy, wait).await
    }

    /// Waits until the echo replica has received `count` datagrams.
    async fn wait_echoed(&self, count: u64) {
        let waited = timeout(ARRIVAL, async {
            while self.echoed.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        waited
            .await
            .expect("the replica did not receive the datagram");
    }
}

/// The echo replica: sends every datagram back to where it came from.
async fn echo(socket: UdpSocket, echoed: Arc<AtomicU64>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((length, source)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        echoed.fetch_add(1, Ordering::Relaxed);
        _ = socket.send_to(&buffer[..length], source).await;
    }
}

/// The next datagram `peer` receives within `wait`; it must come from `proxy`.
async fn receive(peer: &UdpSocket, proxy: SocketAddr, wait: Duration) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 65_536];
    let (length, source) = timeout(wait, peer.recv_from(&mut buffer))
        .await
        .ok()?
        .unwrap();
    assert_eq!(source, proxy, "replies must come from the proxy's address");
    Some(buffer[..length].to_vec())
}

#[tokio::test]
async fn forwards_both_ways_and_keeps_large_datagrams() {
    let setup = Setup::new(1).await;
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"one", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        setup
            .round_trip(&setup.peer2, b"two", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"two"[..])
    );
    // Repeat: the NAT mappings made by the first datagrams are reused.
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"again", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"again"[..])
    );
    let large: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    assert_eq!(
        setup.round_trip(&setup.peer2, &large, ARRIVAL).await,
        Some(large)
    );
    // An unregistered sender is CLIENT, and its traffic flows on healthy links too.
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    assert_eq!(
        setup
            .round_trip(&client, b"client", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"client"[..])
    );
    let stats = setup.net.stats();
    assert_eq!(
        stats.forwarded, 10,
        "five requests and five replies: {stats:?}"
    );
    assert_eq!((stats.dropped, stats.lost, stats.delayed), (0, 0, 0));
}

#[tokio::test]
async fn cut_drops_only_that_senders_datagrams() {
    let setup = Setup::new(2).await;
    setup.net.set_link(1, REPLICA, LinkFault::cut());
    assert_eq!(setup.round_trip(&setup.peer1, b"lost", SILENCE).await, None);
    assert_eq!(
        setup
            .round_trip(&setup.peer2, b"fine", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"fine"[..])
    );
    assert_eq!(
        setup.echoed.load(Ordering::Relaxed),
        1,
        "the cut datagram reached the replica"
    );
    assert_eq!(setup.net.stats().dropped, 1);
}

#[tokio::test]
async fn one_way_cut_drops_only_the_replies() {
    let setup = Setup::new(3).await;
    setup.net.set_link(REPLICA, 1, LinkFault::cut());
    assert_eq!(
        setup.round_trip(&setup.peer1, b"no reply", SILENCE).await,
        None
    );
    // The request itself got through; only the reply toward node 1 was cut.
    setup.wait_echoed(1).await;
    assert_eq!(
        setup
            .round_trip(&setup.peer2, b"reply", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"reply"[..])
    );
    assert_eq!(setup.net.stats().dropped, 1);
    setup.net.clear_link(REPLICA, 1);
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"back", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"back"[..])
    );
}

#[tokio::test]
async fn loss_drops_about_half() {
    let setup = Setup::new(4).await;
    setup.net.set_link(
        1,
        REPLICA,
        LinkFault {
            loss: 0.5,
            ..LinkFault::default()
        },
    );
    let total = 400u64;
    let mut replies = 0u64;
    // Batches keep the socket buffers far from full, so only the proxy loses datagrams.
    for batch in 0..total / 20 {
        for i in 0..20u64 {
            setup
                .peer1
                .send_to(&(batch * 20 + i).to_le_bytes(), setup.proxy)
                .await
                .unwrap();
        }
        let sent = (batch + 1) * 20;
        // Poll briefly: the last datagrams of a batch may yet be lost rather than echoed.
        let deadline = Instant::now() + ARRIVAL;
        while replies + setup.net.stats().lost < sent {
            assert!(
                Instant::now() < deadline,
                "a forwarded datagram was not echoed"
            );
            if receive(&setup.peer1, setup.proxy, Duration::from_millis(5))
                .await
                .is_some()
            {
                replies += 1;
            }
        }
    }
    let NetStats { lost, .. } = setup.net.stats();
    assert_eq!(replies + lost, total);
    assert!(
        (120..=280).contains(&lost),
        "lost {lost} of {total}, expected about half"
    );
    assert_eq!(setup.echoed.load(Ordering::Relaxed), replies);
}

#[tokio::test]
async fn delay_holds_datagrams() {
    let setup = Setup::new(5).await;
    let delay = LinkFault {
        delay: Duration::from_millis(50),
        ..LinkFault::default()
    };
    setup.net.set_link(2, REPLICA, delay);
    let start = Instant::now();
    assert_eq!(
        setup
            .round_trip(&setup.peer2, b"slow", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"slow"[..])
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(45),
        "round trip took {elapsed:?}"
    );
    assert_eq!(setup.net.stats().delayed, 1);
    // Jitter adds at most its bound.
    let jitter = LinkFault {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(20),
        ..LinkFault::default()
    };
    setup.net.set_link(REPLICA, 1, jitter);
    let start = Instant::now();
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"jitter", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"jitter"[..])
    );
    assert!(start.elapsed() >= Duration::from_millis(9));
}

#[tokio::test]
async fn partition_then_heal() {
    let setup = Setup::new(6).await;
    setup.net.partition(&[1, 2], &[REPLICA]);
    assert!(setup.net.link(REPLICA, 2).cut && setup.net.link(1, REPLICA).cut);
    assert!(
        !setup.net.link(CLIENT, REPLICA).cut,
        "the partition cut a link outside it"
    );
    assert_eq!(setup.round_trip(&setup.peer1, b"a", SILENCE).await, None);
    assert_eq!(setup.round_trip(&setup.peer2, b"b", SILENCE).await, None);
    setup.net.heal();
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"a", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        setup
            .round_trip(&setup.peer2, b"b", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"b"[..])
    );
    assert_eq!(setup.net.stats().dropped, 2);
}

#[tokio::test]
async fn survives_replica_restart_on_the_same_port() {
    let Setup {
        net,
        proxy,
        real,
        echo: first,
        echoed,
        peer1,
        ..
    } = Setup::new(7).await;
    let round_trip = |payload: &'static [u8], wait| {
        let peer1 = &peer1;
        async move {
            peer1.send_to(payload, proxy).await.unwrap();
            receive(peer1, proxy, wait).await
        }
    };
    assert_eq!(
        round_trip(b"up", ARRIVAL).await.as_deref(),
        Some(&b"up"[..])
    );
    // Kill the replica: its socket closes, and sends to its port are refused meanwhile.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(round_trip(b"down", SILENCE).await, None);
    assert_eq!(round_trip(b"down again", SILENCE).await, None);
    // Restart it on the same real port; the proxy and its NAT mapping carry on.
    let replica = UdpSocket::bind(real).await.unwrap();
    tokio::spawn(echo(replica, Arc::clone(&echoed)));
    assert_eq!(
        round_trip(b"back up", ARRIVAL).await.as_deref(),
        Some(&b"back up"[..])
    );
    // Two round trips and the two requests sent while it was down (a refused send still counts).
    assert_eq!(net.stats().forwarded, 6, "{:?}", net.stats());
}

#[tokio::test]
async fn shutdown_stops_forwarding() {
    let setup = Setup::new(8).await;
    assert_eq!(
        setup
            .round_trip(&setup.peer1, b"on", ARRIVAL)
            .await
            .as_deref(),
        Some(&b"on"[..])
    );
    setup.net.shutdown();
    // Give the proxy tasks a moment to see the signal.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(setup.round_trip(&setup.peer1, b"off", SILENCE).await, None);
    assert_eq!(setup.echoed.load(Ordering::Relaxed), 1);
    setup.echo.abort();
}
