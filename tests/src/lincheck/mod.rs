//! Checkers for client histories recorded against a real cluster (the real-process fault
//! harness): linearizability of a key-value store with reads, writes, compare-and-set and
//! MultiOp-style transactions; exclusivity of a lock as seen by a fenced downstream resource;
//! durability of acknowledged writes. What each one proves and how it is tested:
//! `docs/testing.md`.
//!
//! ```
//! use tests::lincheck::{check, Budget, History, Input, Output, Verdict};
//! use std::time::Duration;
//!
//! let mut history = History::new();
//! let key = "x".to_string();
//! let write = history.call(1, 0, Input::Write { key: key.clone(), value: Some(b"1".to_vec()) });
//! history.returned(write, 10, Output::Written);
//! // A read that starts after the write returned must see it.
//! let read = history.call(2, 20, Input::Read { key });
//! history.returned(read, 30, Output::Read(None));
//! let verdict = check(&history, Budget::time(Duration::from_secs(10)));
//! assert!(matches!(verdict, Verdict::NotLinearizable(_)));
//! ```

mod durability;
mod history;
mod locks;
mod search;

pub use durability::{check_durability, KeyWrite, LostWrite};
pub use history::{
    Completion, Guard, History, Input, Key, OpId, Operation, Output, Time, Txn, TxnOp, Value,
};
pub use locks::{check_fenced_log, FencedWrite, LockViolation};
pub use search::{check, partition, Budget, Part, Verdict, Witness};
