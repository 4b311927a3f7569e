//! `Log::check`: a consistency check on demand (PML 6) answers every voter's digest for its slot;
//! a follower refuses with a redirect; a stopped voter makes the report incomplete after the timeout.

mod common;

use common::Cluster;
use replicated_log::SubmitError;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_reports_every_voters_digest_and_they_agree() {
    let mut cluster = Cluster::start(3, 1_000_000).await;
    for i in 0..20u32 {
        cluster.submit(i.to_le_bytes().to_vec()).await;
    }
    let master = cluster.master().await;
    let follower = cluster.other_than(master);
    assert!(matches!(
        cluster.logs[&follower].check(Duration::from_secs(1)).await,
        Err(SubmitError::NotMaster { .. })
    ));

    let report = cluster.logs[&master]
        .check(Duration::from_secs(10))
        .await
        .expect("the master runs the check");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.voters, cluster.members);
    assert_eq!(
        report.digests.keys().copied().collect::<Vec<_>>(),
        cluster.members
    );
    assert!(report.agree(), "{report:?}");
    // The digest is the journal's state right after the check's slot, the same everywhere.
    cluster.converged(paxos_core::Slot(report.slot)).await;

    // A voter that is down cannot report: the answer comes at the timeout, incomplete.
    cluster.stop(follower).await;
    let report = cluster.logs[&master]
        .check(Duration::from_millis(500))
        .await
        .expect("two of three still choose the request");
    assert!(!report.complete, "{report:?}");
    assert!(!report.digests.contains_key(&follower));
    assert!(!report.agree());
}
