//! The real-process fault harness: three or five real `chubbyd` processes on loopback, each
//! behind a fault-injecting UDP proxy, real clients through the client crate recording every
//! operation, nemeses (kill -9, SIGSTOP, partitions, loss and delay, clock skew, disk damage
//! with rebuild, membership changes), and the `lincheck` checkers over what the clients saw.
//! Run it with the `fault` binary; what it proves and how: `docs/testing.md`.

pub mod cluster;
pub mod nemesis;
pub mod proxy;
pub mod run;
pub mod workload;
