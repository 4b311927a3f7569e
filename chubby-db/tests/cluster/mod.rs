//! Helpers for the server tests: clients of a `TestCluster`, and a raw protocol exchange.
#![allow(dead_code)]

use chubby_client::{Client, ClientConfig, Timeouts};
use chubby_db::protocol::{decode_frame, encode_frame, Request, Response, ALPN};
use chubby_db::testing::{TestCluster, TEST_CLUSTER};
use paxos_core::NodeId;
use replicated_log::tls;
use std::net::SocketAddr;
use std::time::Duration;

/// Timeouts short enough for tests on loopback.
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_secs(2),
        request: Duration::from_secs(20),
        keep_alive_interval: None,
        grace: Duration::from_secs(10),
    }
}

/// A client configuration for `name` (no certificate for `None`), listing every replica.
pub fn config(cluster: &TestCluster, name: Option<&str>, lease: Duration) -> ClientConfig {
    config_for(cluster, cluster.client_addresses(), name, lease)
}

pub fn config_for(
    cluster: &TestCluster,
    replicas: Vec<SocketAddr>,
    name: Option<&str>,
    lease: Duration,
) -> ClientConfig {
    let mut config =
        ClientConfig::from_cert_dir(replicas, cluster.cluster_id(), &cluster.certs_dir(), name)
            .expect("client certificates")
            .with_lease(lease);
    config.timeouts = test_timeouts();
    config
}

pub async fn client(cluster: &TestCluster, name: &str, lease: Duration) -> Client {
    Client::connect(config(cluster, Some(name), lease))
        .await
        .expect("client connects")
}

/// Sends one request to `node` over a fresh connection as client `alice`, and reads the answer.
pub async fn raw_request(cluster: &TestCluster, node: NodeId, request: &Request) -> Response {
    let bytes = raw_exchange(cluster, node, &encode_frame(request).unwrap())
        .await
        .expect("an answer");
    let (response, used) = decode_frame::<Response>(&bytes).unwrap();
    assert_eq!(used, bytes.len());
    response
}

/// Writes `bytes` on one stream to `node` as client `alice` and reads what comes back.
pub async fn raw_exchange(
    cluster: &TestCluster,
    node: NodeId,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let certs = cluster.certs_dir();
    let material = tls::load_client_material(&certs, TEST_CLUSTER, "alice").unwrap();
    let quic = tls::quic_client_config(&material.ca, Some(&material.identity), ALPN).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quic);
    let server_name = tls::node_dns_name(TEST_CLUSTER, node);
    let connection = endpoint
        .connect(cluster.client_address(node), &server_name)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 22).await.map_err(|e| e.to_string());
    connection.close(0u32.into(), b"done");
    answer
}
