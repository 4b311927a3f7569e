//! `chubby-bench`: closed-loop load against a running chubby cluster, through the client crate.
//! Connection settings as `chubbyctl` (CHUBBY_CLUSTER, CHUBBY_CERTS, CHUBBY_ENDPOINTS,
//! CHUBBY_CLIENT); the workloads and how they are counted are in `tools::bench`.

use clap::Parser;
use std::process::ExitCode;
use tools::bench::{self, BenchOptions};
use tools::client_commands::Connection;

#[derive(Parser, Debug)]
#[command(
    name = "chubby-bench",
    about = "Load a chubby cluster: set, get, get-stale, cas, lock or mixed, closed loop",
    long_about = "Connects --clients sessions to the cluster, creates the files under --prefix, then \
                  keeps --concurrency requests in flight (one per worker) for --warmup and \
                  --duration seconds and prints ops/s, latency percentiles and errors. Every op \
                  started in the measured window counts, even one that ends after it."
)]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    options: BenchOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&cli, error.to_string()),
    };
    let config = match cli.connection.client_config() {
        Ok(config) => config,
        Err(error) => return fail(&cli, error),
    };
    match runtime.block_on(bench::run(config, &cli.options, !cli.json)) {
        Ok(report) if cli.json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.text());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&cli, error),
    }
}

fn fail(cli: &Cli, error: String) -> ExitCode {
    if cli.json {
        println!("{}", serde_json::json!({ "error": error }));
    } else {
        eprintln!("chubby-bench: {error}");
    }
    ExitCode::from(2)
}
