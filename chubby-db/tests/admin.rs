//! Admin requests through the server and `chubby_client::Admin`, on in-process clusters over QUIC:
//! only the admin certificate is served; membership refusals are typed (the last voter, unknown
//! nodes, voters promoted again); a check runs on a follower's redirect; a restore through the log
//! ends a live client's session and leaves every replica with the same digest.

use chubby_client::admin::{Admin, AdminError, AdminRefusal, PromoteRule};
use chubby_client::{Client, ClientConfig, Create, SessionState};
use chubby_db::testing::{wait_for, TestCluster, TestOptions};
use std::time::Duration;

fn config(cluster: &TestCluster, name: &str) -> ClientConfig {
    ClientConfig::from_cert_dir(
        cluster.client_addresses(),
        cluster.cluster_id(),
        &cluster.certs_dir(),
        Some(name),
    )
    .unwrap()
}

fn refusal(result: Result<impl std::fmt::Debug, AdminError>) -> AdminRefusal {
    match result {
        Err(AdminError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_certificate_is_served_and_refusals_are_typed() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = Admin::new(config(&cluster, "alice")).unwrap();
    match refusal(alice.members().await) {
        AdminRefusal::NotAdmin { identity } => assert_eq!(identity, "client-alice"),
        other => panic!("{other:?}"),
    }

    let admin = Admin::new(config(&cluster, "admin")).unwrap();
    let members = admin.members().await.unwrap();
    assert_eq!(members.members.len(), 3);
    assert!(members
        .members
        .iter()
        .all(|m| m.voter && m.client.is_some()));
    assert_eq!(
        refusal(admin.promote(2, PromoteRule::Force).await),
        AdminRefusal::AlreadyVoter { node: 2 }
    );
    assert_eq!(
        refusal(admin.promote(9, PromoteRule::Force).await),
        AdminRefusal::UnknownNode { node: 9 }
    );
    assert_eq!(
        refusal(admin.remove(9).await),
        AdminRefusal::UnknownNode { node: 9 }
    );
    assert_eq!(
        refusal(admin.add_learner(1, "127.0.0.1:9".parse().unwrap()).await),
        AdminRefusal::AlreadyMember { node: 1 }
    );
    let oversized = vec![0; chubby_client::admin::RESTORE_SNAPSHOT_BYTES_MAX + 1];
    assert!(matches!(
        refusal(admin.restore(oversized, true).await),
        AdminRefusal::SnapshotTooLarge { .. }
    ));

    // Asked through a follower only, the check is redirected to the master.
    let follower = cluster.follower().await;
    let mut through_follower = config(&cluster, "admin");
    through_follower.replicas = vec![cluster.client_address(follower)];
    let admin = Admin::new(through_follower).unwrap();
    let report = admin.check(Duration::from_secs(10)).await.unwrap();
    assert!(report.agree(), "{report:?}");
    assert_eq!(report.voters, vec![1, 2, 3]);
    let status = admin
        .replica_status(cluster.client_address(follower))
        .await
        .unwrap();
    assert_eq!(status.node, follower.0);
    assert_eq!(status.role, "follower");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_cannot_be_removed() {
    let cluster = TestCluster::start(TestOptions {
        replicas: 1,
        ..TestOptions::default()
    })
    .await;
    let admin = Admin::new(config(&cluster, "admin")).unwrap();
    assert_eq!(
        refusal(admin.remove(1).await),
        AdminRefusal::LastVoter { node: 1 }
    );
    let report = admin.check(Duration::from_secs(5)).await.unwrap();
    assert!(report.complete && report.agree(), "{report:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_through_the_log_ends_live_sessions_and_replicas_agree() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let admin = Admin::new(config(&cluster, "admin")).unwrap();
    let writer = Client::connect(config(&cluster, "alice")).await.unwrap();
    writer
        .create("/kept", Create::file(b"backed up".to_vec()))
        .await
        .unwrap();
    let saved = admin.snapshot_save().await.unwrap();
    assert!(saved.slot > 0);
    writer.set("/kept", b"later".to_vec()).await.unwrap();
    let holder = writer
        .lock("/kept", chubby_client::LockMode::Exclusive)
        .await
        .unwrap();
    let sequencer = holder.sequencer().clone();

    assert_eq!(
        refusal(admin.restore(saved.bytes.clone(), false).await),
        AdminRefusal::NotEmpty { nodes: 1 }
    );
    let report = admin.restore(saved.bytes, true).await.unwrap();
    assert_eq!(report.sessions_ended, 1);

    // The writer's session ended with the restore: its state says so.
    let mut state = writer.session_state();
    wait_for("the session to end", || {
        let current = *state.borrow_and_update();
        async move { matches!(current, SessionState::Expired(_)).then_some(()) }
    })
    .await;
    let reader = Client::connect(config(&cluster, "bob")).await.unwrap();
    assert_eq!(
        &reader.get("/kept").await.unwrap().contents[..],
        b"backed up"
    );
    assert!(reader.check_sequencer(&sequencer).await.is_err());
    // Every replica applied the same restore (and what followed): the same digest everywhere.
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    let first = digests.values().next().copied();
    assert!(digests.values().all(|d| Some(*d) == first), "{digests:?}");
    let check = admin.check(Duration::from_secs(10)).await.unwrap();
    assert!(check.agree(), "{check:?}");
    drop(holder);
    reader.close().await.unwrap();
    cluster.shutdown().await;
}
