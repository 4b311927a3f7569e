//! `chubby-bench` against a real three-replica cluster in this process (QUIC, fresh certificates,
//! real data directories): each workload runs briefly without errors and does what it says. No
//! figure is checked: speed belongs to `bench/side-by-side.sh`, not to tests.

use chubby_client::{Client, ClientConfig};
use chubby_db::testing::{TestCluster, TestOptions, TEST_CLIENTS};
use clap::Parser;
use tools::bench::{self, BenchOptions, Workload};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    options: BenchOptions,
}

fn options(workload: Workload) -> BenchOptions {
    let mut options = Cli::parse_from([
        "chubby-bench",
        "--clients",
        "2",
        "-c",
        "4",
        "--value-bytes",
        "100",
        "--keys",
        "16",
        "--lock-keys",
        "2",
        "--read-percent",
        "50",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
    ])
    .options;
    options.workload = workload;
    options
}

fn config(cluster: &TestCluster) -> ClientConfig {
    ClientConfig::from_cert_dir(
        cluster.client_addresses(),
        cluster.cluster_id(),
        &cluster.certs_dir(),
        Some(TEST_CLIENTS[0]),
    )
    .expect("client certificates")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_without_errors() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let config = config(&cluster);
    let workloads = [
        Workload::Set,
        Workload::Get,
        Workload::GetStale,
        Workload::Cas,
        Workload::Lock,
        Workload::Mixed,
    ];
    for workload in workloads {
        let options = options(workload);
        let report = bench::run(config.clone(), &options, false)
            .await
            .unwrap_or_else(|e| panic!("{workload:?}: {e}"));
        assert_eq!(report.errors, 0, "{workload:?}: {:?}", report.first_error);
        assert_eq!(report.workload, workload);
        assert_eq!(report.concurrency, 4);
        assert!(report.latency_ms_p50 <= report.latency_ms_max);
        let json = serde_json::to_value(&report).expect("a report serializes");
        assert!(json["ops_per_second"].is_number(), "{json}");
        assert!(report.text().contains("ops/s"));
    }

    // The files hold values of the requested size, and every worker wrote at least once (each
    // starts an op before the deadline): generations sum to at least the workers' count above
    // the one each file was created with.
    let client = Client::connect(config).await.expect("client connects");
    let mut writes = 0;
    for key in 0..16 {
        let view = client
            .get(format!("/bench/k{key:08}"))
            .await
            .expect("a populated file");
        assert_eq!(view.contents.len(), 100);
        writes += view.stat.content_generation - 1;
    }
    assert!(writes >= 4, "{writes} sets recorded");
    client.close().await.expect("close");
    cluster.shutdown().await;
}

#[test]
fn bad_options_are_refused() {
    let mut options = options(Workload::Set);
    assert!(options.invalid().is_none());
    options.prefix = "/".into();
    assert!(options.invalid().is_some());
    let mut options = self::options(Workload::Mixed);
    options.read_percent = 101;
    assert!(options.invalid().is_some());
    let mut options = self::options(Workload::Get);
    options.concurrency = 0;
    assert!(options.invalid().is_some());
}
