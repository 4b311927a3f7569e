//! # chubby-db
//!
//! A Chubby-style lock service and MultiOp database applied from the replicated log.
//!
//! Contract (delivered by the chubby-db issue; this crate is empty until then): a deterministic state
//! machine with a namespace of files and directories, MultiOp transactions (guard / top / fop),
//! sessions with KeepAlive, exclusive and shared locks with sequencers and lock-delay, events, lease
//! reads, snapshots and a digest for the runtime consistency check; its server; and, in a separate
//! client crate, the async client other systems use.
