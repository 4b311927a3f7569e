//! The server over real QUIC: three replicas in one process with fresh certificates, clients
//! through `chubby-client` (and raw protocol requests where the test needs to see the wire).

mod cluster;

use chubby_client::{Client, Create, Error, EventKind, WatchEvent, WatchKinds};
use chubby_db::protocol::encode_frame;
use chubby_db::protocol::{
    Consistency, MasterHint, Query, ReadReply, Request, Response, ServerError,
};
use chubby_db::server::DatabaseMachine;
use chubby_db::testing::{wait_for, TestCluster, TestOptions};
use chubby_db::NodePath;
use cluster::{client, config, config_for, raw_exchange, raw_request};
use std::sync::Arc;
use std::time::Duration;

fn p(path: &str) -> NodePath {
    NodePath::new(path).unwrap()
}

/// The master commits the write but its reply is lost; the master's log is then shut down. The
/// client retries with the same request number at the new master and gets the remembered reply
/// from the replicated reply cache: a create applied twice would answer `AlreadyExists`. The client also hears the
/// fail-over's `MasterChanged` event on its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_across_a_forced_fail_over_applies_exactly_once() {
    let mut cluster = TestCluster::start(TestOptions::default()).await;
    let alice = Arc::new(client(&cluster, "alice", Duration::from_secs(3)).await);
    let mut watch = alice.watch("/once", WatchKinds::ALL).await.unwrap();
    let old_master = cluster.master().await;
    cluster.server(old_master).drop_multi_op_replies(1);

    let writer = alice.clone();
    let write =
        tokio::spawn(async move { writer.create("/once", Create::file(b"x".to_vec())).await });
    let on_old_master = cluster.server(old_master).log().clone();
    wait_for("the write to be applied on the master", || async {
        on_old_master
            .read_stale(|m: &DatabaseMachine| m.database().stat(&p("/once")).ok())
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(!write.is_finished(), "the reply was dropped");
    // The reply was dropped; now the master's log goes away before the client retries there.
    on_old_master.shutdown().await;
    cluster.stop(old_master).await;
    let instance = write
        .await
        .unwrap()
        .expect("the retried create gets the remembered reply, not AlreadyExists");

    let new_master = cluster.master().await;
    assert_ne!(new_master, old_master);
    let stat = alice.stat("/once").await.unwrap();
    assert_eq!(stat.instance, instance);
    assert_eq!(stat.content_generation, 1);
    // A second, new write still works after the fail-over.
    assert_eq!(
        alice
            .set("/once", b"y".to_vec())
            .await
            .unwrap()
            .content_generation,
        2
    );

    // The creation, then the fail-over's MasterChanged (an extra election may add another).
    let mut kinds = Vec::new();
    let created_then_failed_over = |kinds: &[EventKind]| {
        let created = kinds
            .iter()
            .position(|k| matches!(k, EventKind::NodeCreated { .. }));
        created.is_some_and(|at| {
            kinds[at..]
                .iter()
                .any(|k| matches!(k, EventKind::MasterChanged { .. }))
        })
    };
    while !created_then_failed_over(&kinds) {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
            Ok(Some(WatchEvent::Event(event))) => kinds.push(event.kind),
            Ok(Some(WatchEvent::Missed)) => panic!("the new master replays the session's events"),
            other => panic!("no fail-over event on the watch: {other:?} after {kinds:?}"),
        }
    }
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 2);
    assert!(digests.values().all(|d| Some(d) == digests.values().next()));
    drop(watch);
    Arc::try_unwrap(alice).unwrap().close().await.unwrap();
    cluster.shutdown().await;
}

/// A client that stops keeping its session alive loses it: the master's tick expires it through
/// the log, so every replica deletes its ephemeral node at the same slot and the replicas'
/// digests agree. A watcher hears the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_deletes_its_ephemeral_node_on_every_replica_identically() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", Duration::from_secs(1)).await;
    let bob = client(&cluster, "bob", Duration::from_secs(10)).await;
    let alice_session = alice.session();
    let instance = alice
        .create("/member", Create::file(b"alice".to_vec()).ephemeral())
        .await
        .unwrap();
    let mut watch = bob.watch("/member", WatchKinds::ALL).await.unwrap();
    let everywhere = |present: bool| {
        let cluster = &cluster;
        async move {
            wait_for("every replica to agree on /member", || async {
                let seen = cluster.read_each(|db| db.stat(&p("/member")).is_ok()).await;
                seen.values().all(|s| *s == present).then_some(())
            })
            .await
        }
    };
    everywhere(true).await;

    alice.abandon();
    everywhere(false).await;
    let sessions = cluster
        .read_each(move |db| db.session(alice_session).is_none())
        .await;
    assert!(sessions.values().all(|gone| *gone), "{sessions:?}");
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    assert!(
        digests.values().all(|d| Some(d) == digests.values().next()),
        "{digests:?}"
    );

    let deleted = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    match deleted {
        Ok(Some(WatchEvent::Event(event))) => assert_eq!(
            event.kind,
            EventKind::NodeDeleted {
                path: p("/member"),
                instance
            }
        ),
        other => panic!("expected the deletion event, got {other:?}"),
    }
    assert!(matches!(bob.get("/member").await, Err(Error::NotFound(_))));
    bob.close().await.unwrap();
    cluster.shutdown().await;
}

/// A follower refuses a linearizable read with a redirect naming the master and its client
/// address, serves a stale one itself, and a client given only the follower's address follows
/// the redirect. Bytes that are not a request get their stream reset and harm nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_linearizable_reads_and_the_client_follows() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let master = cluster.master().await;
    let follower = cluster.follower().await;
    let read = |consistency| Request::Read {
        query: Query::Get(p("/")),
        consistency,
    };
    match raw_request(&cluster, follower, &read(Consistency::Linearizable)).await {
        Response::Error(ServerError::NotMaster {
            master: Some(MasterHint { node, address }),
        }) => {
            assert_eq!(node, master.0);
            assert_eq!(address, Some(cluster.client_address(master)));
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    match raw_request(&cluster, follower, &read(Consistency::Stale)).await {
        Response::Read {
            result: Ok(ReadReply::Node(view)),
            ..
        } => assert_eq!(view.stat.kind, chubby_db::NodeKind::Directory),
        other => panic!("a follower serves stale reads, got {other:?}"),
    }
    let mut oversized = encode_frame(&read(Consistency::Stale)).unwrap();
    oversized[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    for garbage in [vec![], vec![3, 0, 0, 0, 0xff, 0xff, 0xff], oversized] {
        let answer = raw_exchange(&cluster, follower, &garbage).await;
        assert!(answer.is_err(), "garbage {garbage:?} answered {answer:?}");
    }
    match raw_request(&cluster, master, &read(Consistency::Linearizable)).await {
        Response::Read { result: Ok(_), .. } => {}
        other => panic!("the master serves linearizable reads, got {other:?}"),
    }

    let only_follower = vec![cluster.client_address(follower)];
    let config = config_for(
        &cluster,
        only_follower,
        Some("carol"),
        Duration::from_secs(5),
    );
    let carol = Client::connect(config)
        .await
        .expect("connects through the redirect");
    carol
        .create("/via-redirect", Create::file(b"ok".to_vec()))
        .await
        .unwrap();
    assert_eq!(&*carol.get("/via-redirect").await.unwrap().contents, b"ok");
    carol.close().await.unwrap();
    cluster.shutdown().await;
}

/// Client certificates are required by default: a client without one is refused at the TLS
/// handshake, with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_by_default() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let anonymous = config(&cluster, None, Duration::from_secs(5));
    match Client::connect(anonymous).await {
        Err(Error::Refused { why }) => assert!(why.contains("no certificates"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A client with a certificate is served.
    let alice = client(&cluster, "alice", Duration::from_secs(5)).await;
    alice.close().await.unwrap();
    cluster.shutdown().await;
}

/// ...and accepted when the operator allows clients without certificates explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_served_when_the_server_allows_it() {
    let options = TestOptions {
        allow_clients_without_certificate: true,
        ..TestOptions::default()
    };
    let cluster = TestCluster::start(options).await;
    let anonymous = Client::connect(config(&cluster, None, Duration::from_secs(5)))
        .await
        .expect("anonymous clients allowed");
    anonymous
        .create("/anonymous", Create::file(Vec::new()))
        .await
        .unwrap();
    anonymous.close().await.unwrap();
    cluster.shutdown().await;
}
