//! The search: Wing & Gong's backtracking over a linked list of call and return events, with
//! Lowe's memoization of (set of linearized operations, model state), as in porcupine.
//!
//! The history is first cut into independent parts (see [`partition`]); each part is one object
//! whose state is the values of its keys, and is searched on its own: linearizability is local
//! (Herlihy & Wing), so the history is linearizable exactly when every part is.

use super::history::{Completion, History, Input, Key, OpId, Output, Time, TxnOp, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long the checker may search before it gives up and answers [`Verdict::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Wall-clock limit for the whole check.
    pub time: Option<Duration>,
    /// Limit on search steps (one step tries or undoes one operation), over all parts.
    pub steps: Option<u64>,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        time: None,
        steps: None,
    };

    pub fn time(limit: Duration) -> Budget {
        Budget {
            time: Some(limit),
            steps: None,
        }
    }

    pub fn steps(limit: u64) -> Budget {
        Budget {
            time: None,
            steps: Some(limit),
        }
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations of one part respects both real time and the model.
    NotLinearizable(Witness),
    /// The budget ran out before every part was decided (none was found non-linearizable).
    /// Never to be read as a pass.
    Unknown {
        /// The keys of each part left undecided.
        undecided: Vec<Vec<Key>>,
    },
}

/// Why a part is not linearizable: the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    /// The keys of the part (one key unless transactions tie several together).
    pub keys: Vec<Key>,
    /// The longest order of this part's operations the search found that respects real time
    /// and the model.
    pub longest_prefix: Vec<OpId>,
    /// The operation whose return came before any order could place it after `longest_prefix`
    /// (and after every order tried).
    pub stuck: OpId,
    /// The operations called by then and not in `longest_prefix`, `stuck` among them: none of
    /// them can come next.
    pub pending: Vec<OpId>,
}

impl Witness {
    /// A few lines for a human: the part's keys, the order found, and the operations that could
    /// not be placed after it.
    pub fn explain(&self, history: &History) -> String {
        let mut text = format!("not linearizable on keys {:?}\n", self.keys);
        text.push_str("longest valid order found:\n");
        for id in &self.longest_prefix {
            text.push_str(&format!("  #{id} {}\n", history.ops[*id]));
        }
        text.push_str("then none of these could come next:\n");
        for id in &self.pending {
            let mark = if *id == self.stuck {
                " (returned before it could be placed)"
            } else {
                ""
            };
            text.push_str(&format!("  #{id} {}{mark}\n", history.ops[*id]));
        }
        text
    }
}

/// Checks `history` against a key-value store with reads, writes, compare-and-set and
/// transactions. Panics on a malformed history (see [`History::assert_well_formed`]).
pub fn check(history: &History, budget: Budget) -> Verdict {
    history.assert_well_formed();
    let values = Interner::new(history);
    let deadline = budget.time.map(|limit| Instant::now() + limit);
    let mut steps_left = budget.steps.unwrap_or(u64::MAX);
    let mut undecided = Vec::new();
    for part in partition(history) {
        let ops = compile(history, &part, &values);
        let mut search = Search::new(&ops, part.keys.len(), deadline, steps_left);
        let outcome = search.run();
        steps_left = steps_left.saturating_sub(search.steps);
        match outcome {
            Outcome::Linearizable => {}
            Outcome::OutOfBudget => undecided.push(part.keys),
            Outcome::NotLinearizable(deepest) => {
                let to_id = |index: &usize| ops[*index].id;
                return Verdict::NotLinearizable(Witness {
                    keys: part.keys,
                    longest_prefix: deepest.prefix.iter().map(to_id).collect(),
                    stuck: ops[deepest.stuck].id,
                    pending: deepest.pending.iter().map(to_id).collect(),
                });
            }
        }
    }
    if undecided.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Unknown { undecided }
    }
}

/// A set of keys no operation outside it touches, and the operations on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Sorted.
    pub keys: Vec<Key>,
    /// Sorted. Reads whose outcome is unknown are left out: they constrain nothing.
    pub ops: Vec<OpId>,
}

/// Cuts the history into parts: keys are joined (union-find) when one operation touches both,
/// so an operation on a single key stays in that key's part, and a transaction makes the keys it
/// touches one object. Conservative: two keys share a part if any transaction ever tied them.
pub fn partition(history: &History) -> Vec<Part> {
    let mut index: BTreeMap<&Key, usize> = BTreeMap::new();
    for op in &history.ops {
        for key in op.input.keys() {
            let next = index.len();
            index.entry(key).or_insert(next);
        }
    }
    let mut parent: Vec<usize> = (0..index.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for op in &history.ops {
        let keys: Vec<usize> = op.input.keys().into_iter().map(|k| index[k]).collect();
        for pair in keys.windows(2) {
            let (a, b) = (root(&mut parent, pair[0]), root(&mut parent, pair[1]));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut parts: BTreeMap<usize, Part> = BTreeMap::new();
    for (key, i) in &index {
        let r = root(&mut parent, *i);
        let part = parts.entry(r).or_insert_with(|| Part {
            keys: Vec::new(),
            ops: Vec::new(),
        });
        part.keys.push((*key).clone());
    }
    for (id, op) in history.ops.iter().enumerate() {
        let unknown_read =
            matches!(op.input, Input::Read { .. }) && op.completion == Completion::Unknown;
        let Some(first) = op.input.keys().into_iter().next() else {
            continue;
        };
        if !unknown_read {
            let r = root(&mut parent, index[first]);
            parts
                .get_mut(&r)
                .expect("every key has a part")
                .ops
                .push(id);
        }
    }
    parts
        .into_values()
        .filter(|part| !part.ops.is_empty())
        .collect()
}

/// Values as small numbers: 0 is "absent", so a part's state is a short vector of numbers.
struct Interner {
    ids: HashMap<Value, u32>,
}

impl Interner {
    fn new(history: &History) -> Interner {
        let mut ids = HashMap::new();
        let mut add = |value: &Option<Value>| {
            if let Some(value) = value {
                let next = ids.len() as u32 + 1;
                ids.entry(value.clone()).or_insert(next);
            }
        };
        for op in &history.ops {
            match &op.input {
                Input::Read { .. } => {}
                Input::Write { value, .. } => add(value),
                Input::Cas { expected, new, .. } => {
                    add(expected);
                    add(new);
                }
                Input::Txn(txn) => {
                    txn.guards.iter().for_each(|guard| add(&guard.equals));
                    for op in txn.then.iter().chain(&txn.otherwise) {
                        if let TxnOp::Write(_, value) = op {
                            add(value);
                        }
                    }
                }
            }
            if let Completion::Returned { output, .. } = &op.completion {
                match output {
                    Output::Read(value) => add(value),
                    Output::Txn { reads, .. } => reads.iter().for_each(&mut add),
                    Output::Written | Output::Cas(_) => {}
                }
            }
        }
        Interner { ids }
    }

    fn id(&self, value: &Option<Value>) -> u32 {
        value.as_ref().map_or(0, |value| self.ids[value])
    }
}

/// Key positions within a part, values interned.
#[derive(Clone, Debug)]
enum Step {
    Read {
        key: usize,
    },
    Write {
        key: usize,
        value: u32,
    },
    Cas {
        key: usize,
        expected: u32,
        new: u32,
    },
    Txn {
        guards: Vec<(usize, u32)>,
        then: Vec<Micro>,
        otherwise: Vec<Micro>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Micro {
    Read(usize),
    Write(usize, u32),
}

/// What the operation answered; `None` when its outcome is unknown.
#[derive(Clone, Debug)]
enum Answer {
    Read(u32),
    Written,
    Cas(bool),
    Txn { held: bool, reads: Vec<u32> },
}

#[derive(Clone, Debug)]
struct CompiledOp {
    id: OpId,
    call: Time,
    /// `None`: the outcome is unknown; the operation's return is at +infinity.
    ret: Option<Time>,
    step: Step,
    answer: Option<Answer>,
}

fn compile(history: &History, part: &Part, values: &Interner) -> Vec<CompiledOp> {
    let key = |k: &Key| part.keys.binary_search(k).expect("the key is in its part");
    let micro = |op: &TxnOp| match op {
        TxnOp::Read(k) => Micro::Read(key(k)),
        TxnOp::Write(k, v) => Micro::Write(key(k), values.id(v)),
    };
    part.ops
        .iter()
        .map(|&id| {
            let op = &history.ops[id];
            let step = match &op.input {
                Input::Read { key: k } => Step::Read { key: key(k) },
                Input::Write { key: k, value } => Step::Write {
                    key: key(k),
                    value: values.id(value),
                },
                Input::Cas {
                    key: k,
                    expected,
                    new,
                } => Step::Cas {
                    key: key(k),
                    expected: values.id(expected),
                    new: values.id(new),
                },
                Input::Txn(txn) => Step::Txn {
                    guards: txn
                        .guards
                        .iter()
                        .map(|g| (key(&g.key), values.id(&g.equals)))
                        .collect(),
                    then: txn.then.iter().map(micro).collect(),
                    otherwise: txn.otherwise.iter().map(micro).collect(),
                },
            };
            let (ret, answer) = match &op.completion {
                Completion::Unknown => (None, None),
                Completion::Returned { at, output } => {
                    let answer = match output {
                        Output::Read(v) => Answer::Read(values.id(v)),
                        Output::Written => Answer::Written,
                        Output::Cas(swapped) => Answer::Cas(*swapped),
                        Output::Txn { held, reads } => Answer::Txn {
                            held: *held,
                            reads: reads.iter().map(|v| values.id(v)).collect(),
                        },
                    };
                    (Some(*at), Some(answer))
                }
            };
            CompiledOp {
                id,
                call: op.call,
                ret,
                step,
                answer,
            }
        })
        .collect()
}

/// The model: applies `step` to `state` in place and says whether `answer` is what a store in
/// `state` would answer (any answer is fine when it is unknown). On `false`, `state` is garbage.
fn apply(state: &mut [u32], step: &Step, answer: Option<&Answer>) -> bool {
    match (step, answer) {
        (Step::Read { key }, Some(Answer::Read(value))) => state[*key] == *value,
        (Step::Read { .. }, None) => true,
        (Step::Write { key, value }, Some(Answer::Written) | None) => {
            state[*key] = *value;
            true
        }
        (Step::Cas { key, expected, new }, answer) => {
            let swaps = state[*key] == *expected;
            if swaps {
                state[*key] = *new;
            }
            match answer {
                Some(Answer::Cas(swapped)) => *swapped == swaps,
                None => true,
                Some(other) => unreachable!("cas answered {other:?}"),
            }
        }
        (
            Step::Txn {
                guards,
                then,
                otherwise,
            },
            answer,
        ) => {
            let held = guards.iter().all(|(key, value)| state[*key] == *value);
            let branch = if held { then } else { otherwise };
            let mut reads = Vec::new();
            for micro in branch {
                match *micro {
                    Micro::Read(key) => reads.push(state[key]),
                    Micro::Write(key, value) => state[key] = value,
                }
            }
            match answer {
                Some(Answer::Txn {
                    held: answered,
                    reads: answered_reads,
                }) => *answered == held && *answered_reads == reads,
                None => true,
                Some(other) => unreachable!("txn answered {other:?}"),
            }
        }
        (step, answer) => unreachable!("{step:?} answered {answer:?}"),
    }
}

/// One event of the list: the call or the return of operation `op`.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// How far the search got when it had to give up on a part.
#[derive(Clone, Debug)]
struct Deepest {
    prefix: Vec<usize>,
    stuck: usize,
    pending: Vec<usize>,
}

enum Outcome {
    Linearizable,
    NotLinearizable(Deepest),
    OutOfBudget,
}

/// The search over one part. Events live in a vector used as a doubly linked list (index 0 is
/// the head sentinel, `NIL` ends the list), so lifting an operation out and putting it back are
/// O(1) and undo each other exactly (dancing links).
struct Search<'a> {
    ops: &'a [CompiledOp],
    events: Vec<Event>,
    /// Index of each operation's call and return event.
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
    keys: usize,
    deadline: Option<Instant>,
    steps_max: u64,
    steps: u64,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

impl<'a> Search<'a> {
    fn new(
        ops: &'a [CompiledOp],
        keys: usize,
        deadline: Option<Instant>,
        steps_max: u64,
    ) -> Search<'a> {
        // Sort the events by time; at equal times calls come first, so operations that merely
        // touch are concurrent (the checker never reads more order into a history than it has).
        // Unknown outcomes return at +infinity, after everything.
        let mut order: Vec<(Time, bool, usize, bool)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, false, i, true));
            order.push((op.ret.unwrap_or(Time::MAX), true, i, false));
        }
        order.sort_unstable_by_key(|&(time, is_return, op, _)| (time, is_return, op));
        let mut events = Vec::with_capacity(order.len() + 1);
        events.push(Event {
            op: NIL,
            is_call: false,
            prev: NIL,
            next: if order.is_empty() { NIL } else { 1 },
        });
        let mut call_of = vec![0; ops.len()];
        let mut ret_of = vec![0; ops.len()];
        let count = order.len();
        for (i, &(_, _, op, is_call)) in order.iter().enumerate() {
            let at = i + 1;
            if is_call {
                call_of[op] = at;
            } else {
                ret_of[op] = at;
            }
            events.push(Event {
                op,
                is_call,
                prev: i,
                next: if at == count { NIL } else { at + 1 },
            });
        }
        Search {
            ops,
            events,
            call_of,
            ret_of,
            keys,
            deadline,
            steps_max,
            steps: 0,
        }
    }

    fn unlink(&mut self, at: usize) {
        let Event { prev, next, .. } = self.events[at];
        self.events[prev].next = next;
        if next != NIL {
            self.events[next].prev = prev;
        }
    }

    fn relink(&mut self, at: usize) {
        let Event { prev, next, .. } = self.events[at];
        self.events[prev].next = at;
        if next != NIL {
            self.events[next].prev = at;
        }
    }

    /// Takes operation `op` (its call and its return) out of the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.ret_of[op]);
    }

    /// Puts back the operation lifted last.
    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_of[op]);
        self.relink(self.call_of[op]);
    }

    fn out_of_budget(&mut self) -> bool {
        self.steps += 1;
        if self.steps > self.steps_max {
            return true;
        }
        self.steps % 1024 == 0 && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn run(&mut self) -> Outcome {
        let mut known_left = self.ops.iter().filter(|op| op.ret.is_some()).count();
        let mut state = vec![0u32; self.keys];
        let mut linearized = vec![0u64; self.ops.len().div_ceil(64)];
        let mut seen: HashSet<(Vec<u64>, Vec<u32>)> = HashSet::new();
        // The operations linearized so far, in order, with the state before each.
        let mut stack: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut deepest: Option<Deepest> = None;
        let mut at = self.events[HEAD].next;
        loop {
            // Every operation that returned is placed: the ones left have unknown outcomes and
            // may all take effect after everything else, which no one observed.
            if known_left == 0 {
                return Outcome::Linearizable;
            }
            if self.out_of_budget() {
                return Outcome::OutOfBudget;
            }
            assert!(
                at != NIL,
                "a return event ends the list while operations are left"
            );
            let event = self.events[at];
            if event.is_call {
                let op = &self.ops[event.op];
                let mut next_state = state.clone();
                let fits = apply(&mut next_state, &op.step, op.answer.as_ref());
                if fits {
                    let mut next_set = linearized.clone();
                    next_set[event.op / 64] |= 1 << (event.op % 64);
                    if seen.insert((next_set.clone(), next_state.clone())) {
                        stack.push((event.op, std::mem::replace(&mut state, next_state)));
                        linearized = next_set;
                        if op.ret.is_some() {
                            known_left -= 1;
                        }
                        self.lift(event.op);
                        at = self.events[HEAD].next;
                        continue;
                    }
                }
                at = event.next;
            } else if self.ops[event.op].ret.is_none() {
                // Unknown outcomes set no deadline (their returns sort last anyway).
                at = event.next;
            } else {
                // An operation returned before it could be placed: undo the last choice.
                if deepest
                    .as_ref()
                    .is_none_or(|d| stack.len() > d.prefix.len())
                {
                    deepest = Some(self.deepest(&stack, at));
                }
                let Some((op, before)) = stack.pop() else {
                    return Outcome::NotLinearizable(deepest.expect("recorded just above"));
                };
                state = before;
                linearized[op / 64] &= !(1 << (op % 64));
                if self.ops[op].ret.is_some() {
                    known_left += 1;
                }
                self.unlift(op);
                at = self.events[self.call_of[op]].next;
            }
        }
    }

    /// The record of a dead end: the order so far, the operation whose return was reached, and
    /// the operations called before that return and not placed.
    fn deepest(&self, stack: &[(usize, Vec<u32>)], stuck_at: usize) -> Deepest {
        let mut pending = Vec::new();
        let mut at = self.events[HEAD].next;
        while at != NIL && at != stuck_at {
            if self.events[at].is_call {
                pending.push(self.events[at].op);
            }
            at = self.events[at].next;
        }
        Deepest {
            prefix: stack.iter().map(|(op, _)| *op).collect(),
            stuck: self.events[stuck_at].op,
            pending,
        }
    }
}
