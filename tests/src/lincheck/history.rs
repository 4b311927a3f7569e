//! What a client history records: per operation, who called it, when, what it asked, and when
//! and with what it returned (or that its outcome is unknown).

use std::collections::BTreeSet;
use std::fmt;

/// A key of the store: a register, or a file of the lock service.
pub type Key = String;
/// A stored value. `None` in the types below is "absent" (never written, or deleted).
pub type Value = Vec<u8>;
/// When an event happened, in any unit that one clock (the harness's) measures for every client:
/// nanoseconds since the harness started, say. Only the order matters.
pub type Time = u64;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Reads one key.
    Read { key: Key },
    /// Writes one key; `None` deletes it.
    Write { key: Key, value: Option<Value> },
    /// Compare-and-set: if the key holds `expected` (`None`: absent), it becomes `new`.
    Cas {
        key: Key,
        expected: Option<Value>,
        new: Option<Value>,
    },
    /// A MultiOp-style transaction over any number of keys.
    Txn(Txn),
}

/// A transaction [PML 5.6]: if every guard holds, run `then`, otherwise run `otherwise`; the
/// branch runs atomically, its reads seeing its own earlier writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub guards: Vec<Guard>,
    pub then: Vec<TxnOp>,
    pub otherwise: Vec<TxnOp>,
}

/// Holds when `key`'s value is `equals` (`None`: the key is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub key: Key,
    pub equals: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Read(Key),
    /// `None` deletes.
    Write(Key, Option<Value>),
}

/// What a completed operation answered. Its variant must match the input's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Read(Option<Value>),
    Written,
    /// Whether the compare-and-set swapped.
    Cas(bool),
    /// Whether the guards held, and what the reads of the branch that ran returned, in order.
    Txn {
        held: bool,
        reads: Vec<Option<Value>>,
    },
}

/// How an operation ended, as far as its client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Returned {
        at: Time,
        output: Output,
    },
    /// The client never learned the outcome (a timeout, a lost connection, a crash): the operation
    /// may have taken effect at any point after its call, or never. A retry still in flight may
    /// apply it even after the client gave up, so no return time bounds it.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (process) that called it: only for reports.
    pub client: u64,
    pub call: Time,
    pub input: Input,
    pub completion: Completion,
}

/// The operations clients performed, in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Operation>,
}

/// Index of an operation in [`History::ops`].
pub type OpId = usize;

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Records a call; complete it later with [`History::returned`] or leave it unknown.
    pub fn call(&mut self, client: u64, at: Time, input: Input) -> OpId {
        self.ops.push(Operation {
            client,
            call: at,
            input,
            completion: Completion::Unknown,
        });
        self.ops.len() - 1
    }

    /// Records the return of a call.
    pub fn returned(&mut self, op: OpId, at: Time, output: Output) {
        let operation = &mut self.ops[op];
        assert!(
            operation.completion == Completion::Unknown,
            "operation {op} returned twice"
        );
        operation.completion = Completion::Returned { at, output };
    }

    /// Adds a whole operation; returns its id.
    pub fn push(&mut self, operation: Operation) -> OpId {
        self.ops.push(operation);
        self.ops.len() - 1
    }

    /// Panics on a history no harness should produce: a return before its call, or an output of
    /// another kind than the input.
    pub fn assert_well_formed(&self) {
        for (id, op) in self.ops.iter().enumerate() {
            let Completion::Returned { at, output } = &op.completion else {
                continue;
            };
            assert!(*at >= op.call, "operation {id} returns before its call");
            let matches = match (&op.input, output) {
                (Input::Read { .. }, Output::Read(_))
                | (Input::Write { .. }, Output::Written)
                | (Input::Cas { .. }, Output::Cas(_)) => true,
                (Input::Txn(txn), Output::Txn { held, reads }) => {
                    let branch = if *held { &txn.then } else { &txn.otherwise };
                    let expected = branch
                        .iter()
                        .filter(|op| matches!(op, TxnOp::Read(_)))
                        .count();
                    reads.len() == expected
                }
                _ => false,
            };
            assert!(
                matches,
                "operation {id}: output {output:?} does not answer {:?}",
                op.input
            );
        }
    }
}

impl Input {
    /// Every key the operation touches.
    pub fn keys(&self) -> BTreeSet<&Key> {
        match self {
            Input::Read { key } | Input::Write { key, .. } | Input::Cas { key, .. } => {
                BTreeSet::from([key])
            }
            Input::Txn(txn) => {
                let guards = txn.guards.iter().map(|guard| &guard.key);
                let ops = txn.then.iter().chain(&txn.otherwise).map(|op| match op {
                    TxnOp::Read(key) | TxnOp::Write(key, _) => key,
                });
                guards.chain(ops).collect()
            }
        }
    }
}

/// Values as text when they are printable, in hex otherwise.
pub(crate) struct ShowValue<'a>(pub &'a Option<Value>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if text.chars().all(|c| !c.is_control()) => write!(f, "{text:?}"),
                _ => {
                    f.write_str("0x")?;
                    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
                }
            },
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.input {
            Input::Read { key } => write!(f, "read {key}")?,
            Input::Write { key, value } => write!(f, "write {key} := {}", ShowValue(value))?,
            Input::Cas { key, expected, new } => {
                write!(f, "cas {key} {} -> {}", ShowValue(expected), ShowValue(new))?
            }
            Input::Txn(txn) => write!(f, "txn {txn:?}")?,
        }
        match &self.completion {
            Completion::Unknown => write!(f, " [{}, ?) outcome unknown", self.call),
            Completion::Returned { at, output } => {
                write!(f, " [{}, {at}] -> ", self.call)?;
                match output {
                    Output::Read(value) => write!(f, "{}", ShowValue(value)),
                    Output::Written => f.write_str("ok"),
                    Output::Cas(swapped) => {
                        write!(f, "{}", if *swapped { "swapped" } else { "failed" })
                    }
                    Output::Txn { held, reads } => {
                        write!(f, "{} reads [", if *held { "then" } else { "otherwise" })?;
                        for (i, read) in reads.iter().enumerate() {
                            let sep = if i == 0 { "" } else { ", " };
                            write!(f, "{sep}{}", ShowValue(read))?;
                        }
                        f.write_str("]")
                    }
                }
            }
        }
    }
}
