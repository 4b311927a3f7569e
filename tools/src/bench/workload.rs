//! One worker's closed loop: pick a key, run the workload's request, record its latency.

use super::{BenchOptions, Tally, Workload};
use chubby_client::{CasOutcome, Client, LockMode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

pub(crate) fn file_path(prefix: &str, key: usize) -> String {
    format!("{prefix}/k{key:08}")
}

pub(crate) fn lock_path(prefix: &str, key: usize) -> String {
    format!("{prefix}/lock{key:04}")
}

/// What every worker reads: the options, the precomputed paths and the value written.
pub(crate) struct Shared {
    workload: Workload,
    read_percent: u8,
    files: Vec<String>,
    locks: Vec<String>,
    value: Vec<u8>,
    /// `cas`: the content generation each file is believed to have (0: unknown). Shared by all
    /// workers, so a guard fails only when another worker really wrote first.
    generations: Vec<AtomicU64>,
}

impl Shared {
    pub fn new(options: &BenchOptions) -> Shared {
        let generations = if options.workload == Workload::Cas {
            (0..options.keys).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        };
        Shared {
            workload: options.workload,
            read_percent: options.read_percent,
            files: (0..options.keys)
                .map(|k| file_path(&options.prefix, k))
                .collect(),
            locks: (0..options.lock_keys)
                .map(|k| lock_path(&options.prefix, k))
                .collect(),
            value: vec![b'w'; options.value_bytes],
            generations,
        }
    }
}

/// A session holds a lock at most once, so the workers sharing a session take turns on each
/// lock; the contention measured is between sessions.
pub(crate) struct SessionLocks {
    turns: Vec<Mutex<()>>,
}

impl SessionLocks {
    pub fn new(count: usize) -> SessionLocks {
        SessionLocks {
            turns: (0..count).map(|_| Mutex::new(())).collect(),
        }
    }
}

pub(crate) struct Worker {
    pub index: usize,
    pub client: Arc<Client>,
    pub locks: Arc<SessionLocks>,
    pub shared: Arc<Shared>,
    pub measure_from: Instant,
    pub deadline: Instant,
    /// Ops counted so far, for the progress bar.
    pub counted: Arc<AtomicU64>,
}

/// What one request came to.
enum Outcome {
    Done,
    Conflict,
    Failed(String),
}

impl Worker {
    pub async fn run(self) -> Tally {
        let mut tally = Tally::new();
        let mut random = SplitMix(0x9e37_79b9_7f4a_7c15 ^ self.index as u64);
        loop {
            let started = Instant::now();
            if started >= self.deadline {
                break;
            }
            let outcome = self.one(&mut random).await;
            let measured = started >= self.measure_from;
            match outcome {
                Outcome::Failed(why) => {
                    if measured {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(why);
                    }
                    // A failure that comes back at once (a closed session) must not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Outcome::Done | Outcome::Conflict if measured => {
                    let micros = started.elapsed().as_micros() as u64;
                    let _ = tally.histogram.record(micros.max(1));
                    if matches!(outcome, Outcome::Conflict) {
                        tally.cas_conflicts += 1;
                    }
                    self.counted.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Done | Outcome::Conflict => {}
            }
        }
        tally
    }

    async fn one(&self, random: &mut SplitMix) -> Outcome {
        let shared = &*self.shared;
        let key = random.below(shared.files.len().max(1));
        match shared.workload {
            Workload::Set => self.set(key).await,
            Workload::Get => self.get(key, false).await,
            Workload::GetStale => self.get(key, true).await,
            Workload::Cas => self.cas(key).await,
            Workload::Lock => self.lock(random.below(shared.locks.len())).await,
            Workload::Mixed => {
                if random.below(100) < usize::from(shared.read_percent) {
                    self.get(key, false).await
                } else {
                    self.set(key).await
                }
            }
        }
    }

    async fn set(&self, key: usize) -> Outcome {
        let path = self.shared.files[key].as_str();
        match self.client.set(path, self.shared.value.clone()).await {
            Ok(_) => Outcome::Done,
            Err(error) => Outcome::Failed(format!("set {path}: {error}")),
        }
    }

    async fn get(&self, key: usize, stale: bool) -> Outcome {
        let path = self.shared.files[key].as_str();
        let read = if stale {
            self.client.get_stale(path).await
        } else {
            self.client.get(path).await
        };
        match read {
            Ok(_) => Outcome::Done,
            Err(error) => Outcome::Failed(format!("get {path}: {error}")),
        }
    }

    async fn cas(&self, key: usize) -> Outcome {
        let shared = &*self.shared;
        let path = shared.files[key].as_str();
        let expected = shared.generations[key].load(Ordering::Relaxed);
        let swapped = self
            .client
            .compare_and_set(path, expected, shared.value.clone())
            .await;
        match swapped {
            Ok(CasOutcome::Swapped(written)) => {
                shared.generations[key].fetch_max(written.content_generation, Ordering::Relaxed);
                Outcome::Done
            }
            Ok(CasOutcome::Conflict(view)) => {
                shared.generations[key].fetch_max(view.stat.content_generation, Ordering::Relaxed);
                Outcome::Conflict
            }
            Err(error) => Outcome::Failed(format!("cas {path}: {error}")),
        }
    }

    async fn lock(&self, key: usize) -> Outcome {
        let path = self.shared.locks[key].as_str();
        let _turn = self.locks.turns[key].lock().await;
        let guard = match self.client.lock(path, LockMode::Exclusive).await {
            Ok(guard) => guard,
            Err(error) => return Outcome::Failed(format!("lock {path}: {error}")),
        };
        match guard.release().await {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Failed(format!("release {path}: {error}")),
        }
    }
}

/// A small seeded generator (SplitMix64): each worker's key sequence is reproducible.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `bound` (which is small next to 2^64).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}
