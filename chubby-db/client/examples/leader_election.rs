//! Leader election and a fenced write, against a three-replica cluster started in this process
//! (real QUIC with mutual TLS on loopback, fresh certificates in a temporary directory).
//!
//! ```sh
//! cargo run -p chubby-client --example leader_election
//! ```
//!
//! Two candidates race for an exclusive lock. The winner announces itself in an ephemeral file
//! and writes to a downstream store, sending its sequencer with every write; the store checks the
//! sequencer with the cluster before it applies a write. Then the leader's process "crashes": its
//! session expires, the lock waits out its lock-delay, the other candidate takes over, and the
//! old leader's late write is refused by the store because its sequencer no longer validates.

use chubby_client::{Client, ClientConfig, Create, Error, LockGuard, LockMode, OpError, Sequencer};
use chubby_db::testing::{TestCluster, TestOptions};
use std::sync::Mutex;
use std::time::Duration;

/// A downstream service that only accepts writes from the current lock holder.
struct FencedStore {
    /// The store's own client, used to check sequencers.
    chubby: Client,
    log: Mutex<Vec<String>>,
}

impl FencedStore {
    async fn write(&self, sequencer: &Sequencer, value: &str) -> Result<(), Error> {
        self.chubby.check_sequencer(sequencer).await?;
        self.log.lock().unwrap().push(value.to_string());
        Ok(())
    }
}

fn config(cluster: &TestCluster, name: &str) -> Result<ClientConfig, Error> {
    Ok(ClientConfig::from_cert_dir(
        cluster.client_addresses(),
        cluster.cluster_id(),
        &cluster.certs_dir(),
        Some(name),
    )?
    .with_lease(Duration::from_secs(1)))
}

/// Takes the leader lock (waiting as long as it takes) and announces the new leader.
async fn become_leader(client: &Client, name: &str) -> Result<LockGuard, Error> {
    let guard = client
        .lock("/service/leader-lock", LockMode::Exclusive)
        .await?;
    match client
        .create(
            "/service/leader",
            Create::file(name.as_bytes().to_vec()).ephemeral(),
        )
        .await
    {
        Ok(_) => {}
        // The previous leader's ephemeral file may linger until its session expires.
        Err(Error::Op(OpError::AlreadyExists)) => {
            client
                .set("/service/leader", name.as_bytes().to_vec())
                .await?;
        }
        Err(error) => return Err(error),
    }
    println!("{name} is leader with {:?}", guard.sequencer());
    Ok(guard)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let store = FencedStore {
        chubby: Client::connect(config(&cluster, "carol")?).await?,
        log: Mutex::new(Vec::new()),
    };
    store.chubby.create("/service", Create::directory()).await?;
    store
        .chubby
        .create(
            "/service/leader-lock",
            Create::file(Vec::new()).lock_delay(Duration::from_secs(1)),
        )
        .await?;

    let alice = Client::connect(config(&cluster, "alice")?).await?;
    let bob = Client::connect(config(&cluster, "bob")?).await?;
    // Alice gets there first; Bob queues behind her.
    let alice_guard = become_leader(&alice, "alice").await?;
    let bob_campaign = tokio::spawn(async move {
        let guard = become_leader(&bob, "bob").await;
        (bob, guard)
    });

    let old_sequencer = alice_guard.sequencer().clone();
    store.write(&old_sequencer, "alice: 1").await?;
    store.write(&old_sequencer, "alice: 2").await?;

    println!("alice crashes (no KeepAlives, no release)");
    alice.abandon();
    drop(alice_guard);
    let (bob, bob_guard) = bob_campaign.await?;
    let bob_guard = bob_guard?;
    store.write(bob_guard.sequencer(), "bob: 1").await?;

    // A write alice sent before she crashed arrives late: the store refuses it.
    match store.write(&old_sequencer, "alice: late").await {
        Err(Error::SequencerInvalid(why)) => println!("late write from alice refused: {why:?}"),
        other => panic!("the late write must be refused, got {other:?}"),
    }
    let leader = bob.get("/service/leader").await?;
    println!(
        "leader file: {:?}; store log: {:?}",
        String::from_utf8_lossy(&leader.contents),
        store.log.lock().unwrap()
    );

    bob_guard.release().await?;
    bob.close().await?;
    store.chubby.close().await?;
    cluster.shutdown().await;
    Ok(())
}
