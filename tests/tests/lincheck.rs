//! The checkers of `tests::lincheck`, checked: known-good and known-bad histories, agreement with
//! a brute-force reference on small random histories, random linearizable histories that must
//! pass, random mutations that must mostly be caught, and budgets that answer Unknown.

use paxos_core::rng::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::lincheck::{
    check, check_durability, check_fenced_log, partition, Budget, Completion, FencedWrite, Guard,
    History, Input, KeyWrite, LockViolation, Operation, Output, Txn, TxnOp, Value, Verdict,
};

fn val(text: &str) -> Option<Value> {
    Some(text.as_bytes().to_vec())
}

fn read(key: &str) -> Input {
    Input::Read { key: key.into() }
}

fn write(key: &str, value: &str) -> Input {
    Input::Write {
        key: key.into(),
        value: val(value),
    }
}

fn cas(key: &str, expected: Option<Value>, new: &str) -> Input {
    Input::Cas {
        key: key.into(),
        expected,
        new: val(new),
    }
}

fn op(client: u64, call: u64, ret: u64, input: Input, output: Output) -> Operation {
    Operation {
        client,
        call,
        input,
        completion: Completion::Returned { at: ret, output },
    }
}

fn unknown(client: u64, call: u64, input: Input) -> Operation {
    Operation {
        client,
        call,
        input,
        completion: Completion::Unknown,
    }
}

fn history(ops: Vec<Operation>) -> History {
    History { ops }
}

const BUDGET: Budget = Budget {
    time: Some(Duration::from_secs(60)),
    steps: None,
};

fn assert_linearizable(history: &History) {
    let verdict = check(history, BUDGET);
    assert_eq!(verdict, Verdict::Linearizable, "{history:#?}");
}

fn assert_not_linearizable(history: &History) -> tests::lincheck::Witness {
    match check(history, BUDGET) {
        Verdict::NotLinearizable(witness) => {
            // The explanation names every operation it lists.
            let text = witness.explain(history);
            assert!(text.contains(&format!("#{}", witness.stuck)), "{text}");
            witness
        }
        other => panic!("expected NotLinearizable, got {other:?} for {history:#?}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&history(vec![
        op(1, 0, 1, read("x"), Output::Read(None)),
        op(1, 2, 3, write("x", "a"), Output::Written),
        op(2, 4, 5, read("x"), Output::Read(val("a"))),
        op(2, 6, 7, cas("x", val("a"), "b"), Output::Cas(true)),
        op(1, 8, 9, cas("x", val("a"), "c"), Output::Cas(false)),
        op(1, 10, 11, read("x"), Output::Read(val("b"))),
    ]));
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // The read overlaps the write: it may see the old or the new value.
    for seen in [None, val("a")] {
        assert_linearizable(&history(vec![
            op(1, 0, 10, write("x", "a"), Output::Written),
            op(2, 5, 15, read("x"), Output::Read(seen)),
        ]));
    }
    // Two overlapping writes, then reads that agree on which came last.
    for last in ["a", "b"] {
        assert_linearizable(&history(vec![
            op(1, 0, 10, write("x", "a"), Output::Written),
            op(2, 0, 10, write("x", "b"), Output::Written),
            op(3, 20, 21, read("x"), Output::Read(val(last))),
            op(4, 22, 23, read("x"), Output::Read(val(last))),
        ]));
    }
    // Operations that merely touch (a return and a call at the same instant) are concurrent.
    assert_linearizable(&history(vec![
        op(1, 0, 10, write("x", "a"), Output::Written),
        op(2, 10, 12, read("x"), Output::Read(None)),
    ]));
}

#[test]
fn unknown_outcomes_may_or_may_not_take_effect() {
    // The write timed out; a later read sees it: it took effect.
    assert_linearizable(&history(vec![
        unknown(1, 0, write("x", "a")),
        op(2, 100, 101, read("x"), Output::Read(val("a"))),
    ]));
    // Or no one ever sees it: it never took effect.
    assert_linearizable(&history(vec![
        unknown(1, 0, write("x", "a")),
        op(2, 100, 101, read("x"), Output::Read(None)),
        op(2, 102, 103, read("x"), Output::Read(None)),
    ]));
    // It may even take effect long after its client gave up (a retry in flight).
    assert_linearizable(&history(vec![
        unknown(1, 0, write("x", "a")),
        op(2, 100, 101, read("x"), Output::Read(None)),
        op(2, 200, 201, read("x"), Output::Read(val("a"))),
    ]));
    // An unknown compare-and-set applies only if its condition held when it took effect.
    assert_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        unknown(2, 2, cas("x", val("a"), "b")),
        op(3, 10, 11, read("x"), Output::Read(val("b"))),
    ]));
    // But it cannot produce a value it would not write.
    assert_not_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        unknown(2, 2, cas("x", val("z"), "b")),
        op(3, 10, 11, read("x"), Output::Read(val("b"))),
    ]));
    // Once seen, an unknown write cannot be unseen unless something overwrote it.
    assert_not_linearizable(&history(vec![
        unknown(1, 0, write("x", "a")),
        op(2, 100, 101, read("x"), Output::Read(val("a"))),
        op(2, 102, 103, read("x"), Output::Read(None)),
    ]));
    // Unknown reads constrain nothing.
    assert_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        unknown(2, 2, read("x")),
    ]));
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    let h = history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(1, 2, 3, write("x", "b"), Output::Written),
        op(2, 4, 5, read("x"), Output::Read(val("a"))),
    ]);
    let witness = assert_not_linearizable(&h);
    assert_eq!(witness.keys, vec!["x".to_string()]);
    assert_eq!(witness.longest_prefix, vec![0, 1]);
    assert_eq!(witness.stuck, 2);
    assert_eq!(witness.pending, vec![2]);
}

#[test]
fn lost_update_via_compare_and_set_is_caught() {
    // B's CAS succeeded after A's write returned; a later read sees A's value again.
    assert_not_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(2, 2, 3, cas("x", val("a"), "b"), Output::Cas(true)),
        op(3, 4, 5, read("x"), Output::Read(val("a"))),
    ]));
    // A CAS that failed although the value it expected was there.
    assert_not_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(2, 2, 3, cas("x", val("a"), "b"), Output::Cas(false)),
    ]));
}

#[test]
fn two_cas_from_the_same_old_value_cannot_both_succeed() {
    let h = history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(2, 2, 10, cas("x", val("a"), "b"), Output::Cas(true)),
        op(3, 3, 11, cas("x", val("a"), "c"), Output::Cas(true)),
    ]);
    let witness = assert_not_linearizable(&h);
    assert_eq!(witness.longest_prefix.len(), 2, "{witness:?}");
    assert!(witness.pending.contains(&witness.stuck));
    // With one of them failing, it is fine.
    assert_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(2, 2, 10, cas("x", val("a"), "b"), Output::Cas(true)),
        op(3, 3, 11, cas("x", val("a"), "c"), Output::Cas(false)),
    ]));
}

#[test]
fn a_read_of_a_value_never_written_is_caught() {
    let witness = assert_not_linearizable(&history(vec![
        op(1, 0, 1, write("x", "a"), Output::Written),
        op(1, 0, 1, write("y", "q"), Output::Written),
        op(2, 0, 5, read("x"), Output::Read(val("never"))),
    ]));
    assert_eq!(witness.keys, vec!["x".to_string()]);
    assert_eq!(witness.stuck, 2);
}

fn txn(guards: &[(&str, Option<Value>)], then: Vec<TxnOp>, otherwise: Vec<TxnOp>) -> Input {
    Input::Txn(Txn {
        guards: guards
            .iter()
            .map(|(key, equals)| Guard {
                key: key.to_string(),
                equals: equals.clone(),
            })
            .collect(),
        then,
        otherwise,
    })
}

fn t_write(key: &str, value: &str) -> TxnOp {
    TxnOp::Write(key.into(), val(value))
}

fn t_read(key: &str) -> TxnOp {
    TxnOp::Read(key.into())
}

#[test]
fn transactions_are_atomic_across_keys() {
    let both = |x: &str, y: &str| txn(&[], vec![t_write("x", x), t_write("y", y)], vec![]);
    let read_both = || txn(&[], vec![t_read("x"), t_read("y")], vec![]);
    let reads = |x: Option<Value>, y: Option<Value>| Output::Txn {
        held: true,
        reads: vec![x, y],
    };
    let written = Output::Txn {
        held: true,
        reads: vec![],
    };
    // A concurrent reader sees all of the transaction or none of it.
    for seen in [(None, None), (val("1"), val("1"))] {
        assert_linearizable(&history(vec![
            op(1, 0, 10, both("1", "1"), written.clone()),
            op(2, 5, 15, read_both(), reads(seen.0, seen.1)),
        ]));
    }
    // Never half of it.
    let witness = assert_not_linearizable(&history(vec![
        op(1, 0, 10, both("1", "1"), written.clone()),
        op(2, 5, 15, read_both(), reads(val("1"), None)),
    ]));
    assert_eq!(witness.keys, vec!["x".to_string(), "y".to_string()]);
    // Single-key reads of the same keys are in the same part and must agree with it too.
    assert_not_linearizable(&history(vec![
        op(1, 0, 10, both("1", "1"), written.clone()),
        op(2, 11, 12, read("x"), Output::Read(val("1"))),
        op(2, 13, 14, read("y"), Output::Read(None)),
    ]));
    // Guards decide the branch; the otherwise branch reads.
    let guarded = txn(
        &[("x", val("1")), ("y", None)],
        vec![t_write("y", "2"), t_read("y")],
        vec![t_read("x")],
    );
    assert_linearizable(&history(vec![
        op(1, 0, 1, write("x", "1"), Output::Written),
        op(
            2,
            2,
            3,
            guarded.clone(),
            Output::Txn {
                held: true,
                reads: vec![val("2")],
            },
        ),
        op(
            2,
            4,
            5,
            guarded.clone(),
            Output::Txn {
                held: false,
                reads: vec![val("1")],
            },
        ),
    ]));
    // The second one cannot hold too: y is no longer absent.
    assert_not_linearizable(&history(vec![
        op(1, 0, 1, write("x", "1"), Output::Written),
        op(
            2,
            2,
            3,
            guarded.clone(),
            Output::Txn {
                held: true,
                reads: vec![val("2")],
            },
        ),
        op(
            2,
            4,
            5,
            guarded,
            Output::Txn {
                held: true,
                reads: vec![val("2")],
            },
        ),
    ]));
}

#[test]
fn keys_are_checked_apart_unless_a_transaction_ties_them() {
    let h = history(vec![
        op(1, 0, 1, write("a", "1"), Output::Written),
        op(1, 0, 1, write("b", "1"), Output::Written),
        op(1, 0, 1, write("c", "1"), Output::Written),
        op(
            2,
            2,
            3,
            txn(&[("a", val("1"))], vec![t_write("b", "2")], vec![]),
            Output::Txn {
                held: true,
                reads: vec![],
            },
        ),
        unknown(3, 4, read("d")),
    ]);
    let parts = partition(&h);
    let keys: Vec<Vec<String>> = parts.iter().map(|p| p.keys.clone()).collect();
    assert_eq!(
        keys,
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["c".to_string()]
        ]
    );
    assert_eq!(parts[0].ops, vec![0, 1, 3]);
    assert_linearizable(&h);
}

// ---------------------------------------------------------------------------------------------
// Random histories: a sequential store run, stretched over overlapping intervals.

/// A small store, written independently of the checker's model, for generation and for the
/// brute-force reference.
#[derive(Clone, Default)]
struct Store(BTreeMap<String, Option<Value>>);

impl Store {
    fn get(&self, key: &str) -> Option<Value> {
        self.0.get(key).cloned().flatten()
    }

    /// Runs `input`; returns its output.
    fn run(&mut self, input: &Input) -> Output {
        match input {
            Input::Read { key } => Output::Read(self.get(key)),
            Input::Write { key, value } => {
                self.0.insert(key.clone(), value.clone());
                Output::Written
            }
            Input::Cas { key, expected, new } => {
                let swapped = self.get(key) == *expected;
                if swapped {
                    self.0.insert(key.clone(), new.clone());
                }
                Output::Cas(swapped)
            }
            Input::Txn(txn) => {
                let held = txn.guards.iter().all(|g| self.get(&g.key) == g.equals);
                let mut reads = Vec::new();
                for op in if held { &txn.then } else { &txn.otherwise } {
                    match op {
                        TxnOp::Read(key) => reads.push(self.get(key)),
                        TxnOp::Write(key, value) => {
                            self.0.insert(key.clone(), value.clone());
                        }
                    }
                }
                Output::Txn { held, reads }
            }
        }
    }
}

struct Shape {
    ops: usize,
    keys: u64,
    /// Distinct values per key: few make histories ambiguous (harder), many make them easy.
    values: u64,
    /// How far a call or return may lie from the linearization point (points are 10 apart).
    spread: u64,
    unknown_per_million: u64,
    txns: bool,
}

fn random_value(rng: &mut Rng, shape: &Shape) -> Option<Value> {
    if rng.chance(100_000) {
        None
    } else {
        val(&format!("v{}", rng.below(shape.values)))
    }
}

fn random_input(rng: &mut Rng, shape: &Shape, store: &Store) -> Input {
    let key = |rng: &mut Rng| format!("k{}", rng.below(shape.keys));
    let kinds = if shape.txns { 5 } else { 4 };
    match rng.below(kinds) {
        0 | 1 => Input::Read { key: key(rng) },
        2 => Input::Write {
            key: key(rng),
            value: random_value(rng, shape),
        },
        3 => {
            let k = key(rng);
            // Half the time expect what is there, so that some swaps succeed.
            let expected = if rng.chance(500_000) {
                store.get(&k)
            } else {
                random_value(rng, shape)
            };
            Input::Cas {
                key: k,
                expected,
                new: random_value(rng, shape),
            }
        }
        _ => {
            let guards = (0..rng.below(3))
                .map(|_| {
                    let k = key(rng);
                    let equals = if rng.chance(600_000) {
                        store.get(&k)
                    } else {
                        random_value(rng, shape)
                    };
                    Guard { key: k, equals }
                })
                .collect();
            let branch = |rng: &mut Rng| -> Vec<TxnOp> {
                (0..1 + rng.below(3))
                    .map(|_| {
                        if rng.chance(500_000) {
                            TxnOp::Read(key(rng))
                        } else {
                            TxnOp::Write(key(rng), random_value(rng, shape))
                        }
                    })
                    .collect()
            };
            let then = branch(rng);
            let otherwise = branch(rng);
            Input::Txn(Txn {
                guards,
                then,
                otherwise,
            })
        }
    }
}

/// A linearizable history: operation `i` takes effect at time `100 + 10 i` on a sequential store
/// and its call and return are drawn around that point. An operation whose outcome is made
/// unknown takes effect or not, by a coin.
fn linearizable_history(seed: u64, shape: &Shape) -> History {
    let mut rng = Rng::new(seed);
    let mut store = Store::default();
    let mut ops = Vec::new();
    for i in 0..shape.ops {
        let point = 100 + 10 * i as u64;
        let input = random_input(&mut rng, shape, &store);
        let call = point - rng.below(shape.spread + 1);
        let ret = point + rng.below(shape.spread + 1);
        let client = i as u64 % 7;
        if rng.chance(shape.unknown_per_million) {
            if rng.chance(500_000) {
                store.run(&input);
            }
            ops.push(unknown(client, call, input));
        } else {
            let output = store.run(&input);
            ops.push(op(client, call, ret, input, output));
        }
    }
    // The checker must not depend on the order operations are listed in.
    for i in (1..ops.len()).rev() {
        ops.swap(i, rng.below(i as u64 + 1) as usize);
    }
    history(ops)
}

/// Changes the output of one completed operation, if it has an output that can change. Returns
/// whether it did.
fn mutate(history: &mut History, rng: &mut Rng, shape: &Shape) -> bool {
    let i = rng.below(history.ops.len() as u64) as usize;
    let Completion::Returned { output, .. } = &mut history.ops[i].completion else {
        return false;
    };
    let fresh = |rng: &mut Rng, old: &Option<Value>| loop {
        let candidate = random_value(rng, shape);
        if candidate != *old {
            return candidate;
        }
    };
    match output {
        Output::Read(value) => *value = fresh(rng, value),
        Output::Cas(swapped) => *swapped = !*swapped,
        Output::Txn { reads, .. } if !reads.is_empty() => {
            let j = rng.below(reads.len() as u64) as usize;
            reads[j] = fresh(rng, &reads[j]);
        }
        Output::Txn { .. } | Output::Written => return false,
    }
    true
}

/// The reference: tries every subset of the unknown-outcome operations and every order of the
/// chosen ones that respects real time. Only for a handful of operations.
fn brute_force(history: &History) -> bool {
    let ops = &history.ops;
    let unknown: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].completion == Completion::Unknown)
        .collect();
    assert!(ops.len() <= 8);
    for mask in 0..1u32 << unknown.len() {
        let chosen: Vec<usize> = (0..ops.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        if orders_exist(ops, &chosen, &mut Vec::new(), &Store::default()) {
            return true;
        }
    }
    false
}

fn orders_exist(ops: &[Operation], left: &[usize], placed: &mut Vec<usize>, store: &Store) -> bool {
    if left.is_empty() {
        return true;
    }
    for (n, &i) in left.iter().enumerate() {
        // `i` may come next only if nothing left returned before it was called.
        let blocked = left.iter().any(|&j| match &ops[j].completion {
            Completion::Returned { at, .. } => j != i && *at < ops[i].call,
            Completion::Unknown => false,
        });
        if blocked {
            continue;
        }
        let mut next = store.clone();
        let output = next.run(&ops[i].input);
        if let Completion::Returned { output: seen, .. } = &ops[i].completion {
            if *seen != output {
                continue;
            }
        }
        let rest: Vec<usize> = left[..n].iter().chain(&left[n + 1..]).copied().collect();
        placed.push(i);
        if orders_exist(ops, &rest, placed, &next) {
            return true;
        }
        placed.pop();
    }
    false
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let shape = Shape {
        ops: 7,
        keys: 2,
        values: 3,
        spread: 25,
        unknown_per_million: 200_000,
        txns: true,
    };
    let (mut good, mut bad) = (0, 0);
    for seed in 0..1500 {
        let mut h = linearizable_history(seed, &shape);
        let mut rng = Rng::new(seed ^ 0x5eed);
        if seed % 2 == 1 {
            mutate(&mut h, &mut rng, &shape);
        }
        let expected = brute_force(&h);
        let verdict = check(&h, BUDGET);
        match (&verdict, expected) {
            (Verdict::Linearizable, true) => good += 1,
            (Verdict::NotLinearizable(_), false) => bad += 1,
            _ => panic!(
                "seed {seed}: checker says {verdict:?}, brute force says {expected} for {h:#?}"
            ),
        }
    }
    // Both kinds occur often enough for the agreement to mean something.
    eprintln!("brute force agreement: {good} linearizable, {bad} not");
    assert!(good > 300 && bad > 150, "good {good}, bad {bad}");
}

#[test]
fn random_linearizable_histories_pass() {
    let shapes = [
        Shape {
            ops: 300,
            keys: 3,
            values: 4,
            spread: 30,
            unknown_per_million: 50_000,
            txns: false,
        },
        Shape {
            ops: 200,
            keys: 4,
            values: 3,
            spread: 25,
            unknown_per_million: 50_000,
            txns: true,
        },
        Shape {
            ops: 120,
            keys: 1,
            values: 2,
            spread: 40,
            unknown_per_million: 100_000,
            txns: false,
        },
    ];
    for (s, shape) in shapes.iter().enumerate() {
        for seed in 0..40 {
            let h = linearizable_history(1000 * s as u64 + seed, shape);
            let verdict = check(&h, BUDGET);
            assert_eq!(verdict, Verdict::Linearizable, "shape {s} seed {seed}");
        }
    }
}

#[test]
fn random_mutations_are_mostly_caught() {
    let shape = Shape {
        ops: 40,
        keys: 2,
        values: 6,
        spread: 25,
        unknown_per_million: 30_000,
        txns: true,
    };
    let (mut mutated, mut caught) = (0, 0);
    for seed in 0..400 {
        let mut h = linearizable_history(seed, &shape);
        let mut rng = Rng::new(seed.wrapping_mul(31));
        if !mutate(&mut h, &mut rng, &shape) {
            continue;
        }
        mutated += 1;
        match check(&h, BUDGET) {
            Verdict::NotLinearizable(_) => caught += 1,
            Verdict::Linearizable => {}
            Verdict::Unknown { .. } => panic!("seed {seed}: out of budget on 40 operations"),
        }
    }
    // A mutation can land on an answer some other order explains (a read concurrent with the
    // write of the value it now returns), so not all are caught; most must be.
    eprintln!("mutations caught: {caught} of {mutated}");
    assert!(mutated > 250, "{mutated}");
    assert!(
        caught * 100 >= mutated * 80,
        "caught only {caught} of {mutated}"
    );
}

/// Many concurrent writes, then a read of a value none wrote: not linearizable, but the search
/// must try many subsets before it can say so.
fn hard_history(writes: u64) -> History {
    let mut ops: Vec<Operation> = (0..writes)
        .map(|i| op(i, 0, 100, write("x", &format!("w{i}")), Output::Written))
        .collect();
    ops.push(op(99, 200, 201, read("x"), Output::Read(val("never"))));
    history(ops)
}

#[test]
fn an_exhausted_budget_answers_unknown_never_linearizable() {
    let h = hard_history(12);
    assert!(matches!(
        check(&h, Budget::UNLIMITED),
        Verdict::NotLinearizable(_)
    ));
    for budget in [Budget::steps(1_000), Budget::time(Duration::ZERO)] {
        match check(&h, budget) {
            Verdict::Unknown { undecided } => assert_eq!(undecided, vec![vec!["x".to_string()]]),
            other => panic!("{budget:?}: expected Unknown, got {other:?}"),
        }
    }
    // A part decided as not linearizable is reported even if another ran out of budget first.
    let mut two = hard_history(12);
    two.ops.push(op(1, 0, 1, write("y", "a"), Output::Written));
    two.ops.push(op(1, 2, 3, read("y"), Output::Read(None)));
    assert!(matches!(
        check(&two, Budget::steps(5_000)),
        Verdict::NotLinearizable(_) | Verdict::Unknown { .. }
    ));
    let only_y = history(two.ops[two.ops.len() - 2..].to_vec());
    assert!(matches!(
        check(&only_y, Budget::steps(5_000)),
        Verdict::NotLinearizable(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// The lock checker.

fn fenced(entries: &[(u64, u64)]) -> Vec<FencedWrite> {
    entries
        .iter()
        .enumerate()
        .map(|(i, &(client, generation))| FencedWrite {
            at: i as u64,
            client,
            generation,
        })
        .collect()
}

#[test]
fn lock_checker_accepts_handovers() {
    // Client 1 holds grant 3, then client 2 grant 5, then client 1 again under grant 8.
    let log = fenced(&[(1, 3), (1, 3), (2, 5), (2, 5), (1, 8)]);
    assert_eq!(check_fenced_log(&log), vec![]);
    assert_eq!(check_fenced_log(&[]), vec![]);
}

#[test]
fn lock_checker_reports_two_holders_and_generations_going_back() {
    // Two clients under one grant.
    let log = fenced(&[(1, 3), (2, 3), (2, 3)]);
    assert_eq!(
        check_fenced_log(&log),
        vec![LockViolation::SharedGrant {
            generation: 3,
            first: 0,
            second: 1
        }]
    );
    // The old holder writes again after the new one started.
    let log = fenced(&[(1, 3), (2, 5), (1, 3)]);
    assert_eq!(
        check_fenced_log(&log),
        vec![LockViolation::GenerationWentBack {
            earlier: 1,
            later: 2
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// The durability checker.

fn kw(key: &str, value: &str, call: u64, acked: Option<u64>) -> KeyWrite {
    KeyWrite {
        key: key.into(),
        value: val(value),
        call,
        acked,
    }
}

#[test]
fn durability_checker_accepts_the_last_acknowledged_or_a_later_unknown_write() {
    let writes = vec![
        kw("a", "1", 0, Some(1)),
        kw("a", "2", 2, Some(3)),
        kw("b", "1", 0, Some(10)),
        kw("b", "2", 5, Some(12)), // concurrent with b := 1: either may be last
        kw("c", "1", 0, Some(1)),
        kw("c", "2", 2, None), // unknown: may or may not have happened
        kw("d", "1", 0, None), // never acknowledged: nothing to keep
    ];
    for (b, c) in [("1", "1"), ("2", "2")] {
        let final_read = BTreeMap::from([
            ("a".to_string(), val("2")),
            ("b".to_string(), val(b)),
            ("c".to_string(), val(c)),
        ]);
        assert_eq!(check_durability(&writes, &final_read), vec![]);
    }
}

#[test]
fn durability_checker_reports_lost_acknowledged_writes() {
    let writes = vec![
        kw("a", "1", 0, Some(1)),
        kw("a", "2", 2, Some(3)),
        kw("b", "1", 0, Some(1)),
    ];
    // a went back to an overwritten value; b is gone.
    let final_read = BTreeMap::from([("a".to_string(), val("1")), ("b".to_string(), None)]);
    let lost = check_durability(&writes, &final_read);
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert_eq!((lost[0].key.as_str(), lost[0].acknowledged), ("a", 1));
    assert_eq!((lost[1].key.as_str(), lost[1].acknowledged), ("b", 2));
    assert!(lost[0].to_string().contains("acknowledged write #1 lost"));
}
