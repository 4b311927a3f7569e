//! The log end to end over real data directories and an in-memory network: bootstrap, commit,
//! lease reads, a replica killed and restarted, catch-up through a snapshot after truncation, and a
//! replica whose disk was wiped rebuilding from its peers.

mod common;

use common::{Cluster, Journal};
use paxos_core::NodeId;
use replicated_log::{ReadError, StartMode, SubmitError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_and_agree() {
    let cluster = Cluster::start(3, 1_000_000).await;
    let mut last = paxos_core::Slot::ZERO;
    for i in 0..50u32 {
        let (slot, position) = cluster.submit(i.to_le_bytes().to_vec()).await;
        assert!(slot > last, "slots increase");
        assert_eq!(position, i as usize, "the output is the journal position");
        last = slot;
    }
    cluster.converged(last).await;
    let master = cluster.master().await;
    let lease_read = cluster.logs[&master]
        .read(|j: &Journal| j.entries.len())
        .await
        .unwrap();
    assert_eq!(lease_read, 50);
    for node in cluster.members.clone() {
        let journal = cluster.journal(node).await;
        let expected: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(
            journal.entries, expected,
            "node {node} applied a different log"
        );
        if node != master {
            let refused = cluster.logs[&node]
                .read(|j: &Journal| j.entries.len())
                .await;
            assert!(
                matches!(refused, Err(ReadError::NotMaster { .. })),
                "a follower must refuse linearizable reads: {refused:?}"
            );
            let refused = cluster.logs[&node].submit(b"x".to_vec()).await;
            assert!(
                matches!(refused, Err(SubmitError::NotMaster { .. })),
                "a follower must refuse submits: {refused:?}"
            );
        }
    }
    let metrics = cluster.logs[&master].metrics().await.unwrap();
    assert!(metrics.fsyncs > 0 && metrics.records_written > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_from_the_log() {
    let mut cluster = Cluster::start(3, 1_000_000).await;
    cluster.submit(b"before".to_vec()).await;
    let master = cluster.master().await;
    let victim = cluster.other_than(master);
    cluster.stop(victim).await;
    let mut last = paxos_core::Slot::ZERO;
    for i in 0..30u32 {
        last = cluster.submit(i.to_le_bytes().to_vec()).await.0;
    }
    cluster.open(victim, StartMode::Bootstrap).await;
    cluster.converged(last).await;
    let journal = cluster.journal(victim).await;
    assert_eq!(journal.entries.len(), 31);
    assert_eq!(journal.entries[0], b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(3, 20).await;
    let master = cluster.master().await;
    let victim = cluster.other_than(master);
    cluster.stop(victim).await;
    let mut last = paxos_core::Slot::ZERO;
    for i in 0..120u32 {
        last = cluster.submit(i.to_le_bytes().to_vec()).await.0;
    }
    // The others have snapshotted and truncated their logs past what the victim has.
    let statuses = cluster.statuses().await;
    assert!(
        statuses.values().all(|s| s.snapshot_slot > 0),
        "snapshots were taken: {statuses:#?}"
    );
    cluster.open(victim, StartMode::Bootstrap).await;
    cluster.converged(last).await;
    let journal = cluster.journal(victim).await;
    let expected: Vec<Vec<u8>> = (0..120u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(journal.entries, expected);
    let metrics = cluster.logs[&victim].metrics().await.unwrap();
    assert!(
        metrics.snapshots_installed >= 1,
        "caught up through a snapshot: {metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_after_enough_bytes_whatever_the_slot_count() {
    // Slots alone would never trigger one here; 16 KiB of values must.
    let cluster = Cluster::start_with_bytes(3, 1_000_000, 16 * 1024).await;
    let mut last = paxos_core::Slot::ZERO;
    for i in 0..40u8 {
        last = cluster.submit(vec![i; 1024]).await.0;
    }
    cluster.converged(last).await;
    // Snapshots are written in the background: give them time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let statuses = cluster.statuses().await;
        if statuses.values().all(|s| s.snapshot_slot > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every replica takes a snapshot after 16 KiB: {statuses:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A few small values are far from 16 KiB: no snapshot yet.
    let cluster = Cluster::start_with_bytes(3, 1_000_000, 16 * 1024).await;
    for i in 0..5u8 {
        last = cluster.submit(vec![i; 16]).await.0;
    }
    cluster.converged(last).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let statuses = cluster.statuses().await;
    assert!(
        statuses.values().all(|s| s.snapshot_slot == 0),
        "no snapshot before 16 KiB: {statuses:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_rebuilds_and_votes_again() {
    let mut cluster = Cluster::start(3, 1_000_000).await;
    for i in 0..10u32 {
        cluster.submit(i.to_le_bytes().to_vec()).await;
    }
    let master = cluster.master().await;
    let victim = cluster.other_than(master);
    cluster.stop(victim).await;
    std::fs::remove_dir_all(cluster.dir(victim)).unwrap();
    cluster.open(victim, StartMode::Bootstrap).await;
    let mut last = paxos_core::Slot::ZERO;
    for i in 10..20u32 {
        last = cluster.submit(i.to_le_bytes().to_vec()).await.0;
    }
    cluster.converged(last).await;
    // It rebuilt under a new incarnation and finished the rebuild (votes again).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = cluster.logs[&victim].status().await.unwrap();
        if !status.rebuilding && status.incarnation > 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rebuild did not finish: {status:#?}"
        );
        cluster.submit(b"more".to_vec()).await;
    }
    let journal = cluster.journal(victim).await;
    assert_eq!(
        &journal.entries[..20],
        &cluster.journal(master).await.entries[..20]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_another_nodes_data_directory() {
    let mut cluster = Cluster::start(3, 1_000_000).await;
    cluster.submit(b"x".to_vec()).await;
    cluster.stop(NodeId(1)).await;
    // Node 4's configuration pointed at node 1's directory.
    let mut config = cluster.config(NodeId(1), StartMode::Bootstrap);
    config.node = NodeId(4);
    config.start = StartMode::Join;
    config.data_dir = cluster.dir(NodeId(1));
    let error = replicated_log::Log::open(
        config,
        Journal::default(),
        replicated_log::storage::FileVfs,
        |inbound, snapshots| {
            Ok(std::sync::Arc::new(
                replicated_log::transport::MemNetwork::new().join(NodeId(4), inbound, snapshots),
            ))
        },
    )
    .await;
    assert!(
        matches!(error, Err(replicated_log::OpenError::Identity(_))),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_replica_and_stopped_says_so() {
    use replicated_log::storage::{FailPoint, MemVfs};
    use std::time::Duration;
    let vfs = MemVfs::new();
    let network = replicated_log::transport::MemNetwork::new();
    let node = NodeId(1);
    let peers = [(node, std::net::SocketAddr::from(([127, 0, 0, 1], 7001)))].into();
    let mut config = replicated_log::LogConfig::new(common::CLUSTER, node, "/data", peers);
    config.tick = Duration::from_millis(5);
    let log = replicated_log::Log::open(config, Journal::default(), vfs.clone(), {
        let network = network.clone();
        move |inbound, snapshots| Ok(std::sync::Arc::new(network.join(node, inbound, snapshots)))
    })
    .await
    .expect("open");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.status().await.is_some_and(|s| s.lease) {
        assert!(std::time::Instant::now() < deadline, "no master");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.submit(b"durable".to_vec())
        .await
        .expect("a submit before the failure");
    // Still running: `stopped` must not complete.
    let early = tokio::time::timeout(Duration::from_millis(200), log.stopped()).await;
    assert!(early.is_err(), "stopped completed while the replica runs");
    vfs.fail_next(FailPoint::SyncData);
    let refused = log.submit(b"never acknowledged".to_vec()).await;
    assert!(
        refused.is_err(),
        "a write whose fsync failed was acknowledged"
    );
    tokio::time::timeout(Duration::from_secs(5), log.stopped())
        .await
        .expect("the replica stops after a failed fsync");
    assert!(
        log.status().await.is_none(),
        "a stopped replica has no status"
    );
}
