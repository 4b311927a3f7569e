//! Clients of an in-process test cluster (`chubby_db::testing`).
#![allow(dead_code)]

use chubby_client::{Client, ClientConfig, Timeouts};
use chubby_db::testing::TestCluster;
use std::time::Duration;

pub fn config(cluster: &TestCluster, name: &str, lease: Duration) -> ClientConfig {
    let mut config = ClientConfig::from_cert_dir(
        cluster.client_addresses(),
        cluster.cluster_id(),
        &cluster.certs_dir(),
        Some(name),
    )
    .expect("client certificates")
    .with_lease(lease);
    config.timeouts = Timeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_secs(2),
        request: Duration::from_secs(20),
        keep_alive_interval: None,
        grace: Duration::from_secs(10),
    };
    config
}

pub async fn client(cluster: &TestCluster, name: &str, lease: Duration) -> Client {
    Client::connect(config(cluster, name, lease))
        .await
        .expect("client connects")
}
