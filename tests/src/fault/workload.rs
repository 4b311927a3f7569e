//! Clients of the real cluster, through the client crate, recording every operation's call and
//! completion for the checkers: registers (read, write, compare-and-set), MultiOp transactions,
//! and lock holders writing to a fenced downstream resource.
//!
//! The store the checkers see: key `k` is the file `/fault/<k>`, created empty before the run; an
//! empty file reads as "absent", so a delete is a write of nothing. Every written value is unique
//! (`<client>.<n>`), so a read names the write it saw.

use crate::lincheck::{
    Completion, FencedWrite, Guard, History, Input, Key, Operation, Output, Time, Txn, TxnOp, Value,
};
use chubby_client::{Client, ClientConfig, Create, Error, SessionState, Timeouts};
use chubby_proto::{Branch, LockMode, MultiOp, NodePath, Op, OpError, OpOutput, OpResult, Test};
use paxos_core::rng::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many clients of each kind, and over which keys.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Clients reading, writing and compare-and-setting single registers.
    pub register_clients: u64,
    /// Clients that only read the registers (a cache, a monitor): they stay on a replica for as
    /// long as it answers, so they are the ones that see a replica that answers when it must not.
    pub reader_clients: u64,
    pub register_keys: u64,
    /// Clients running MultiOp transactions over the transaction keys (kept apart from the
    /// registers so that the checker's per-key partitions stay small).
    pub txn_clients: u64,
    pub txn_keys: u64,
    /// Clients taking the exclusive lock and writing to the fenced resource while they hold it.
    pub lock_clients: u64,
    /// Pause between a client's operations.
    pub think: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions {
            register_clients: 4,
            reader_clients: 2,
            register_keys: 6,
            txn_clients: 2,
            txn_keys: 3,
            lock_clients: 3,
            think: Duration::from_millis(10),
        }
    }
}

impl WorkloadOptions {
    pub fn register_key(i: u64) -> Key {
        format!("r{i}")
    }

    pub fn txn_key(i: u64) -> Key {
        format!("t{i}")
    }

    /// Every key of the store.
    pub fn keys(&self) -> Vec<Key> {
        (0..self.register_keys)
            .map(Self::register_key)
            .chain((0..self.txn_keys).map(Self::txn_key))
            .collect()
    }
}

pub const LOCK_PATH: &str = "/fault/lock";
/// The lock node's lock-delay: long enough to cover a holder that lost its session without
/// noticing (its lease view already ended, and it stops writing in jeopardy), short enough for
/// the lock to change hands a few times in a short run.
pub const LOCK_DELAY: Duration = Duration::from_secs(3);

pub fn path_of(key: &str) -> NodePath {
    NodePath::new(&format!("/fault/{key}")).expect("a valid path")
}

fn as_value(contents: &[u8]) -> Option<Value> {
    (!contents.is_empty()).then(|| contents.to_vec())
}

/// How clients are configured: short attempts, so a client fails over while a master is paused
/// or cut off, and a lease short enough that sessions do expire under long faults.
pub fn client_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        attempt: Duration::from_millis(1_500),
        request: Duration::from_secs(8),
        keep_alive_interval: None,
        grace: Duration::from_secs(6),
    }
}

/// What the clients did, in harness time (nanoseconds since the recorder was made).
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    /// Operations of the current round (taken by the round's check).
    ops: Mutex<Vec<Operation>>,
    /// Every write the fenced resource accepted, in order.
    pub fenced: Mutex<Vec<FencedWrite>>,
    /// What the lock clients did (grants, releases, errors), for a report on a lock violation.
    pub lock_events: Mutex<Vec<String>>,
    pub counters: Counters,
    /// Set while clients must not start operations (a round is being quiesced and checked).
    hold: AtomicBool,
    /// Operations in flight.
    in_flight: AtomicU64,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub unknown: AtomicU64,
    /// Failed for sure (nothing applied): not part of the history.
    pub failed: AtomicU64,
    pub sessions: AtomicU64,
    pub lock_grants: AtomicU64,
    pub fenced_writes: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
            fenced: Mutex::new(Vec::new()),
            lock_events: Mutex::new(Vec::new()),
            counters: Counters::default(),
            hold: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn lock_event(&self, client: u64, what: String) {
        let at = self.now();
        self.lock_events
            .lock()
            .expect("lock events")
            .push(format!("{at:>15} client {client}: {what}"));
    }

    pub fn now(&self) -> Time {
        self.origin.elapsed().as_nanos() as Time
    }

    pub fn push(&self, op: Operation) {
        match op.completion {
            Completion::Returned { .. } => &self.counters.ok,
            Completion::Unknown => &self.counters.unknown,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.ops.lock().expect("recorder").push(op);
    }

    /// The operations recorded since the last call.
    pub fn take_round(&self) -> History {
        History {
            ops: std::mem::take(&mut *self.ops.lock().expect("recorder")),
        }
    }

    /// Clients finish what they are doing and start nothing new until [`Recorder::release`].
    /// Returns once nothing is in flight (or after `timeout`, with what is still in flight).
    pub async fn hold(&self, timeout: Duration) -> u64 {
        self.hold.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let in_flight = self.in_flight.load(Ordering::SeqCst);
            if in_flight == 0 || Instant::now() > deadline {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits while held; false once stopped.
    async fn may_start(&self) -> bool {
        while self.hold.load(Ordering::SeqCst) {
            if self.stopped() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !self.stopped()
    }
}

/// Counts an operation in flight for as long as it lives.
struct InFlight<'a>(&'a Recorder);

impl<'a> InFlight<'a> {
    fn new(recorder: &'a Recorder) -> InFlight<'a> {
        recorder.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(recorder)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a failed write surely did nothing (true) or may have taken effect (false).
fn surely_not_applied(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidPath(_)
            | Error::Rejected(_)
            | Error::Refused { .. }
            | Error::Config(_)
            | Error::Op(_)
            | Error::NotFound(_)
    )
}

/// Whether the client is done for and a new one must connect.
fn client_is_over(error: &Error) -> bool {
    matches!(error, Error::SessionExpired | Error::Closed)
}

/// Connects a client, retrying until it works or the run stops.
async fn connect(config: &ClientConfig, recorder: &Recorder) -> Option<Client> {
    loop {
        if recorder.stopped() {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(10), Client::connect(config.clone())).await {
            Ok(Ok(client)) => {
                recorder.counters.sessions.fetch_add(1, Ordering::Relaxed);
                return Some(client);
            }
            Ok(Err(error)) => tracing::debug!(%error, "connect failed"),
            Err(_) => tracing::debug!("connect timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the store's files and the lock node, empty (a retry finds them there).
pub async fn create_store(config: &ClientConfig, options: &WorkloadOptions) -> Result<(), String> {
    let client = Client::connect(config.clone())
        .await
        .map_err(|e| format!("cannot connect to set up the store: {e}"))?;
    let mut nodes: Vec<(NodePath, Create)> =
        vec![(NodePath::new("/fault").expect("valid"), Create::directory())];
    for key in options.keys() {
        nodes.push((path_of(&key), Create::file(Vec::new())));
    }
    nodes.push((
        NodePath::new(LOCK_PATH).expect("valid"),
        Create::file(Vec::new()).lock_delay(LOCK_DELAY),
    ));
    for (path, node) in nodes {
        match client.create(path.clone(), node).await {
            Ok(_) | Err(Error::Op(OpError::AlreadyExists)) => {}
            Err(error) => return Err(format!("cannot create {path}: {error}")),
        }
    }
    let _ = client.close().await;
    Ok(())
}

/// Reads every key once, linearizably, with a fresh client: the values a round ends with.
pub async fn read_all(
    config: &ClientConfig,
    keys: &[Key],
    timeout: Duration,
) -> Result<BTreeMap<Key, Option<Value>>, String> {
    let deadline = Instant::now() + timeout;
    let mut values = BTreeMap::new();
    let mut client: Option<Client> = None;
    for key in keys {
        loop {
            if Instant::now() > deadline {
                return Err(format!("could not read {key} within {timeout:?}"));
            }
            if client.is_none() {
                client = Client::connect(config.clone()).await.ok();
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let c = client.as_ref().expect("connected");
            match c.get(path_of(key)).await {
                Ok(view) => {
                    values.insert(key.clone(), as_value(&view.contents));
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, key, "final read failed");
                    if client_is_over(&error) {
                        client = None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Some(client) = client {
        let _ = client.close().await;
    }
    Ok(values)
}

/// Starts every client task; they run until [`Recorder::stop`].
pub fn spawn_clients(
    config: &ClientConfig,
    options: &WorkloadOptions,
    seed: u64,
    recorder: &Arc<Recorder>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut id: u64 = 0;
    let mut next = |kind: Kind| {
        id += 1;
        let config = config.clone();
        let options = options.clone();
        let recorder = recorder.clone();
        let rng = Rng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tokio::spawn(async move {
            match kind {
                Kind::Register | Kind::Reader | Kind::Txn => {
                    data_client(id, kind, config, options, rng, recorder).await
                }
                Kind::Lock => lock_client(id, config, rng, recorder).await,
            }
        })
    };
    for _ in 0..options.register_clients {
        tasks.push(next(Kind::Register));
    }
    for _ in 0..options.reader_clients {
        tasks.push(next(Kind::Reader));
    }
    for _ in 0..options.txn_clients {
        tasks.push(next(Kind::Txn));
    }
    for _ in 0..options.lock_clients {
        tasks.push(next(Kind::Lock));
    }
    tasks
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Register,
    Reader,
    Txn,
    Lock,
}

fn pick<'a>(rng: &mut Rng, items: &'a [Key]) -> &'a Key {
    &items[rng.below(items.len() as u64) as usize]
}

/// A value no other write uses.
fn fresh(client: u64, counter: &mut u64) -> Value {
    *counter += 1;
    format!("{client}.{counter}").into_bytes()
}

/// A value to compare against: usually one recently seen, sometimes absent or made up.
fn guess(rng: &mut Rng, seen: &BTreeMap<Key, Option<Value>>, key: &Key) -> Option<Value> {
    match rng.below(5) {
        0 => None,
        1 => Some(b"nobody.0".to_vec()),
        _ => seen.get(key).cloned().flatten(),
    }
}

async fn data_client(
    id: u64,
    kind: Kind,
    config: ClientConfig,
    options: WorkloadOptions,
    mut rng: Rng,
    recorder: Arc<Recorder>,
) {
    let keys: Vec<Key> = match kind {
        Kind::Register | Kind::Reader => (0..options.register_keys)
            .map(WorkloadOptions::register_key)
            .collect(),
        _ => (0..options.txn_keys)
            .map(WorkloadOptions::txn_key)
            .collect(),
    };
    let mut counter = 0;
    let mut seen: BTreeMap<Key, Option<Value>> = BTreeMap::new();
    'session: loop {
        let Some(client) = connect(&config, &recorder).await else {
            return;
        };
        loop {
            if !recorder.may_start().await {
                let _ = client.close().await;
                return;
            }
            let input = match kind {
                Kind::Reader => Input::Read {
                    key: pick(&mut rng, &keys).clone(),
                },
                Kind::Register => {
                    let key = pick(&mut rng, &keys).clone();
                    match rng.below(10) {
                        0..=3 => Input::Read { key },
                        4..=6 => Input::Write {
                            value: if rng.below(8) == 0 {
                                None
                            } else {
                                Some(fresh(id, &mut counter))
                            },
                            key,
                        },
                        _ => Input::Cas {
                            expected: guess(&mut rng, &seen, &key),
                            new: Some(fresh(id, &mut counter)),
                            key,
                        },
                    }
                }
                _ => Input::Txn(random_txn(&mut rng, &keys, &seen, id, &mut counter)),
            };
            let flight = InFlight::new(&recorder);
            let call = recorder.now();
            let result = run(&client, &input).await;
            let at = recorder.now();
            drop(flight);
            let over = match result {
                Ok(output) => {
                    remember(&mut seen, &input, &output);
                    recorder.push(Operation {
                        client: id,
                        call,
                        input,
                        completion: Completion::Returned { at, output },
                    });
                    false
                }
                Err(error) => {
                    let read_only = matches!(input, Input::Read { .. });
                    if read_only || surely_not_applied(&error) {
                        recorder.counters.failed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        recorder.push(Operation {
                            client: id,
                            call,
                            input,
                            completion: Completion::Unknown,
                        });
                    }
                    client_is_over(&error)
                }
            };
            if over {
                client.abandon();
                continue 'session;
            }
            tokio::time::sleep(options.think).await;
        }
    }
}

fn random_txn(
    rng: &mut Rng,
    keys: &[Key],
    seen: &BTreeMap<Key, Option<Value>>,
    id: u64,
    counter: &mut u64,
) -> Txn {
    let mut txn = Txn::default();
    for _ in 0..rng.below(3) {
        let key = pick(rng, keys).clone();
        txn.guards.push(Guard {
            equals: guess(rng, seen, &key),
            key,
        });
    }
    for branch in [&mut txn.then, &mut txn.otherwise] {
        for _ in 0..rng.below(4) {
            let key = pick(rng, keys).clone();
            branch.push(if rng.below(2) == 0 {
                TxnOp::Read(key)
            } else {
                TxnOp::Write(key, Some(fresh(id, counter)))
            });
        }
    }
    txn
}

fn remember(seen: &mut BTreeMap<Key, Option<Value>>, input: &Input, output: &Output) {
    match (input, output) {
        (Input::Read { key }, Output::Read(value)) => {
            seen.insert(key.clone(), value.clone());
        }
        (Input::Write { key, value }, _) => {
            seen.insert(key.clone(), value.clone());
        }
        (Input::Cas { key, new, .. }, Output::Cas(true)) => {
            seen.insert(key.clone(), new.clone());
        }
        (Input::Txn(txn), Output::Txn { held, reads }) => {
            let branch = if *held { &txn.then } else { &txn.otherwise };
            let mut reads = reads.iter();
            for op in branch {
                match op {
                    TxnOp::Read(key) => {
                        if let Some(value) = reads.next() {
                            seen.insert(key.clone(), value.clone());
                        }
                    }
                    TxnOp::Write(key, value) => {
                        seen.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => {}
    }
}

fn contents(value: &Option<Value>) -> Vec<u8> {
    value.clone().unwrap_or_default()
}

fn txn_op(op: &TxnOp) -> Op {
    match op {
        TxnOp::Read(key) => Op::Read { path: path_of(key) },
        TxnOp::Write(key, value) => Op::Set {
            path: path_of(key),
            contents: contents(value),
        },
    }
}

/// Runs one operation; `Err` only when the client does not know the outcome or it surely failed.
async fn run(client: &Client, input: &Input) -> Result<Output, Error> {
    match input {
        Input::Read { key } => {
            let view = client.get(path_of(key)).await?;
            Ok(Output::Read(as_value(&view.contents)))
        }
        Input::Write { key, value } => {
            client.set(path_of(key), contents(value)).await?;
            Ok(Output::Written)
        }
        Input::Cas { key, expected, new } => {
            let op = MultiOp::new()
                .guard(Test::ContentsEqual {
                    path: path_of(key),
                    contents: contents(expected),
                })
                .then(Op::Set {
                    path: path_of(key),
                    contents: contents(new),
                });
            let reply = client.multi_op(op).await?;
            if !reply.committed() {
                return Err(Error::Protocol(format!("a cas op failed: {reply:?}")));
            }
            Ok(Output::Cas(reply.branch == Branch::Top))
        }
        Input::Txn(txn) => {
            let mut op = MultiOp::new();
            for guard in &txn.guards {
                op = op.guard(Test::ContentsEqual {
                    path: path_of(&guard.key),
                    contents: contents(&guard.equals),
                });
            }
            for then in &txn.then {
                op = op.then(txn_op(then));
            }
            for otherwise in &txn.otherwise {
                op = op.otherwise(txn_op(otherwise));
            }
            let reply = client.multi_op(op).await?;
            if !reply.committed() {
                return Err(Error::Protocol(format!(
                    "a transaction op failed: {reply:?}"
                )));
            }
            let reads = reply
                .ops
                .iter()
                .filter_map(|result| match result {
                    OpResult::Done(OpOutput::Read(view)) => Some(as_value(&view.contents)),
                    _ => None,
                })
                .collect();
            Ok(Output::Txn {
                held: reply.branch == Branch::Top,
                reads,
            })
        }
    }
}

/// Takes the lock, and while it holds it and its session is `Safe`, writes to the fenced
/// resource a few times; then releases it.
async fn lock_client(id: u64, config: ClientConfig, mut rng: Rng, recorder: Arc<Recorder>) {
    let path = NodePath::new(LOCK_PATH).expect("valid");
    'session: loop {
        let Some(client) = connect(&config, &recorder).await else {
            return;
        };
        let state = client.session_state();
        loop {
            if !recorder.may_start().await {
                let _ = client.close().await;
                return;
            }
            let flight = InFlight::new(&recorder);
            let acquired = tokio::time::timeout(
                Duration::from_secs(5),
                client.lock(path.clone(), LockMode::Exclusive),
            )
            .await;
            drop(flight);
            let guard = match acquired {
                Ok(Ok(guard)) => guard,
                Ok(Err(error)) => {
                    if client_is_over(&error) {
                        client.abandon();
                        continue 'session;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => continue,
            };
            recorder
                .counters
                .lock_grants
                .fetch_add(1, Ordering::Relaxed);
            let generation = guard.sequencer().lock_generation;
            for _ in 0..1 + rng.below(5) {
                // The check and the write are one step: nothing else runs between them on this
                // task, and the resource's log is ordered by its mutex.
                {
                    let session = *state.borrow();
                    let safe = session == SessionState::Safe && !guard.is_lost();
                    if !safe {
                        recorder.lock_event(
                            id,
                            format!(
                                "stops writing under {generation}: session {session:?}, lost {}",
                                guard.is_lost()
                            ),
                        );
                        break;
                    }
                    let mut fenced = recorder.fenced.lock().expect("fenced");
                    fenced.push(FencedWrite {
                        at: recorder.now(),
                        client: id,
                        generation,
                    });
                }
                recorder
                    .counters
                    .fenced_writes
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5 + rng.below(40))).await;
            }
            let released = tokio::time::timeout(Duration::from_secs(5), guard.release()).await;
            if let Ok(Err(error)) = released {
                if client_is_over(&error) {
                    client.abandon();
                    continue 'session;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
        }
    }
}
