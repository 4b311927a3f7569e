//! The nemeses: what the harness does to the cluster, each drawn from the run's seed. A round runs
//! one fault, or two at once when the run combines them, then heals everything.

use super::cluster::Cluster;
use super::proxy::LinkFault;
use paxos_core::rng::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Every kind of fault the harness injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// kill -9 a replica (the master half the time), restart it after a while.
    Kill,
    /// SIGSTOP a replica (the master most of the time), SIGCONT it after a while: a paused master
    /// must not serve reads once its lease ran out elsewhere.
    Pause,
    /// Network partitions through the proxies: the master isolated, a random minority cut off, a
    /// bridge (two sides that both reach one node), one-way cuts.
    Partition,
    /// Message loss and delay on every link.
    Flaky,
    /// A replica restarted with its clock running fast or slow (within the drift bound).
    Clock,
    /// Damage to a stopped replica's files, detected at restart and repaired by rebuild.
    Corrupt,
    /// Adding a new replica as a non-voting member, promoting it, removing an old one.
    Membership,
}

pub const ALL: [Nemesis; 7] = [
    Nemesis::Kill,
    Nemesis::Pause,
    Nemesis::Partition,
    Nemesis::Flaky,
    Nemesis::Clock,
    Nemesis::Corrupt,
    Nemesis::Membership,
];

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Flaky => "flaky",
            Nemesis::Clock => "clock",
            Nemesis::Corrupt => "corrupt",
            Nemesis::Membership => "membership",
        }
    }

    pub fn by_name(name: &str) -> Option<Nemesis> {
        ALL.into_iter().find(|n| n.name() == name)
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one corruption drill did and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Drill {
    pub node: u64,
    /// What was damaged: `wal-flip`, `snapshot-flip`, `truncate`, `wipe`.
    pub damage: String,
    /// Which file, and where.
    pub detail: String,
    /// `restart` (chubbyd finds the damage itself) or `chubbyctl-rebuild`.
    pub repair: String,
    pub incarnation_before: u64,
    pub incarnation_after: Option<u64>,
    /// Seen rebuilding (non-voting) before it voted again.
    pub seen_rebuilding: bool,
    pub voting_again: bool,
    pub seconds: f64,
    /// Why the drill failed, if it did.
    pub failure: Option<String>,
}

/// What the nemesis did in one round, for the log and the summary.
#[derive(Debug, Default)]
pub struct RoundFaults {
    pub injected: Vec<String>,
    pub drills: Vec<Drill>,
    /// Problems a nemesis found that are violations (a drill that did not end voting).
    pub problems: Vec<String>,
}

/// The nemesis state across rounds.
#[derive(Debug)]
pub struct Nemeses {
    pub enabled: Vec<Nemesis>,
    /// Two faults at once in some rounds.
    pub combine: bool,
    rng: Rng,
    /// Faults injected so far, by kind.
    pub counts: BTreeMap<String, u64>,
    /// Spare node ids (certificates made, never members yet).
    spares: Vec<u64>,
    /// The clock drift bound every replica is started with; clock skew stays within it.
    pub drift_ppm: u64,
    /// Scale of fault durations (1.0 for the soak; shorter for the CI suite).
    pub scale: f64,
    /// Drills so far: the kinds of damage take turns, so a short run sees each.
    drills: u64,
    /// Every partition cuts the master off from its peers (clients still reach it), for at
    /// least 4 s: the targeted scenario of a teeth run.
    pub isolate_master: bool,
}

impl Nemeses {
    pub fn new(
        enabled: Vec<Nemesis>,
        combine: bool,
        seed: u64,
        spares: Vec<u64>,
        drift_ppm: u64,
    ) -> Nemeses {
        Nemeses {
            enabled,
            combine,
            rng: Rng::new(seed ^ 0x4e45_4d45_5349_5321),
            counts: BTreeMap::new(),
            spares,
            drift_ppm,
            scale: 1.0,
            drills: 0,
            isolate_master: false,
        }
    }

    fn count(&mut self, kind: &str) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        let ms = low + self.rng.below(high - low + 1);
        Duration::from_millis((ms as f64 * self.scale) as u64)
    }

    /// A node to hurt: the master with probability `master_per_cent`, else any running one.
    fn victim(&mut self, cluster: &mut Cluster, master_per_cent: u64) -> Option<u64> {
        let running = cluster.running();
        if running.is_empty() {
            return None;
        }
        if self.rng.below(100) < master_per_cent {
            if let Some(master) = cluster.master() {
                return Some(master);
            }
        }
        Some(running[self.rng.below(running.len() as u64) as usize])
    }

    /// Runs one round's faults (blocking; the clients keep running meanwhile) and heals them.
    pub fn round(&mut self, cluster: &mut Cluster) -> RoundFaults {
        let mut faults = RoundFaults::default();
        // A calm start: the clients work before the fault comes.
        std::thread::sleep(self.millis(1_000, 3_000));
        if self.enabled.is_empty() {
            std::thread::sleep(self.millis(3_000, 6_000));
            return faults;
        }
        let first = self.enabled[self.rng.below(self.enabled.len() as u64) as usize];
        let second = if self.combine && self.enabled.len() > 1 && self.rng.below(3) == 0 {
            let other = self.enabled[self.rng.below(self.enabled.len() as u64) as usize];
            // Two faults of the background kind at once; drills and membership run alone.
            let alone = [Nemesis::Corrupt, Nemesis::Membership];
            (other != first && !alone.contains(&other) && !alone.contains(&first)).then_some(other)
        } else {
            None
        };
        match second {
            None => self.fault(first, cluster, &mut faults),
            Some(second) => {
                // The network faults go underneath, the process fault on top.
                let (under, over) = if matches!(first, Nemesis::Partition | Nemesis::Flaky) {
                    (first, second)
                } else {
                    (second, first)
                };
                if matches!(under, Nemesis::Partition | Nemesis::Flaky) {
                    let heal = self.network(under, cluster, &mut faults);
                    self.fault(over, cluster, &mut faults);
                    std::thread::sleep(heal);
                    cluster.net.heal();
                } else {
                    self.fault(under, cluster, &mut faults);
                    self.fault(over, cluster, &mut faults);
                }
            }
        }
        faults
    }

    fn fault(&mut self, kind: Nemesis, cluster: &mut Cluster, faults: &mut RoundFaults) {
        match kind {
            Nemesis::Kill => self.kill(cluster, faults, false),
            Nemesis::Clock => self.kill(cluster, faults, true),
            Nemesis::Pause => self.pause(cluster, faults),
            Nemesis::Partition | Nemesis::Flaky => {
                let hold = self.network(kind, cluster, faults);
                std::thread::sleep(hold);
                cluster.net.heal();
            }
            Nemesis::Corrupt => self.corrupt(cluster, faults),
            Nemesis::Membership => self.membership(cluster, faults),
        }
    }

    fn kill(&mut self, cluster: &mut Cluster, faults: &mut RoundFaults, clock: bool) {
        let Some(node) = self.victim(cluster, 50) else {
            return;
        };
        let kind = if clock { "clock" } else { "kill" };
        if cluster.kill(node).is_err() {
            return;
        }
        self.count(kind);
        let down = self.millis(500, 5_000);
        std::thread::sleep(down);
        let mut what = format!("kill -9 node {node}, restart after {down:?}");
        if clock {
            let bound = (self.drift_ppm * 9 / 10) as i64;
            let ppm = self.rng.below(2 * bound as u64 + 1) as i64 - bound;
            if let Some(spec) = cluster.nodes.get_mut(&node) {
                spec.clock_rate_ppm = ppm;
            }
            what = format!("{what} with its clock {ppm:+} ppm");
        }
        if let Err(why) = cluster.spawn(node) {
            faults
                .problems
                .push(format!("restart of node {node}: {why}"));
        }
        faults.injected.push(what);
    }

    fn pause(&mut self, cluster: &mut Cluster, faults: &mut RoundFaults) {
        let Some(node) = self.victim(cluster, 70) else {
            return;
        };
        if cluster.pause(node).is_err() {
            return;
        }
        self.count("pause");
        let paused = self.millis(1_000, 6_000);
        std::thread::sleep(paused);
        let _ = cluster.resume(node);
        faults
            .injected
            .push(format!("SIGSTOP node {node} for {paused:?}"));
    }

    /// Sets a network fault and returns how long to hold it.
    fn network(
        &mut self,
        kind: Nemesis,
        cluster: &mut Cluster,
        faults: &mut RoundFaults,
    ) -> Duration {
        let members: Vec<u64> = cluster.members.clone();
        let hold = self.millis(2_000, 8_000);
        if kind == Nemesis::Flaky {
            let loss = (5 + self.rng.below(20)) as f64 / 100.0;
            let delay = Duration::from_millis(1 + self.rng.below(30));
            let jitter = Duration::from_millis(self.rng.below(20));
            for &a in &members {
                for &b in &members {
                    if a != b {
                        cluster.net.set_link(
                            a,
                            b,
                            LinkFault {
                                cut: false,
                                loss,
                                delay,
                                jitter,
                            },
                        );
                    }
                }
            }
            self.count("flaky");
            faults.injected.push(format!(
                "every link: {:.0}% loss, {delay:?} delay ± {jitter:?}, for {hold:?}",
                loss * 100.0
            ));
            return hold;
        }
        let master = cluster.master();
        let mut shuffled = members.clone();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            shuffled.swap(i, j);
        }
        let variant = if self.isolate_master {
            0
        } else {
            self.rng.below(4)
        };
        let hold = if self.isolate_master {
            hold.max(Duration::from_secs(4))
        } else {
            hold
        };
        let (what, kind) = match variant {
            0 => {
                let alone = master.unwrap_or(shuffled[0]);
                let rest: Vec<u64> = members.iter().copied().filter(|n| *n != alone).collect();
                cluster.net.partition(&[alone], &rest);
                (
                    format!("node {alone} (master {master:?}) cut off from {rest:?}"),
                    "partition-isolate",
                )
            }
            1 => {
                let minority = shuffled.len().saturating_sub(1) / 2;
                let (a, b) = shuffled.split_at(minority.max(1));
                cluster.net.partition(a, b);
                (format!("{a:?} | {b:?}"), "partition-split")
            }
            2 => {
                // A bridge: two sides that cannot talk, and one node that reaches both.
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                cluster.net.partition(a, b);
                (
                    format!("{a:?} | {b:?}, node {bridge} bridging"),
                    "partition-bridge",
                )
            }
            _ => {
                // One way: the master's messages reach nobody, or nobody's reach the master.
                let node = master.unwrap_or(shuffled[0]);
                let outbound = self.rng.below(2) == 0;
                for &other in members.iter().filter(|n| **n != node) {
                    let (from, to) = if outbound {
                        (node, other)
                    } else {
                        (other, node)
                    };
                    cluster.net.set_link(
                        from,
                        to,
                        LinkFault {
                            cut: true,
                            ..LinkFault::default()
                        },
                    );
                }
                let direction = if outbound { "from" } else { "to" };
                (
                    format!("one way: nothing {direction} node {node}"),
                    "partition-one-way",
                )
            }
        };
        self.count(kind);
        faults.injected.push(format!("{what} for {hold:?}"));
        hold
    }

    fn corrupt(&mut self, cluster: &mut Cluster, faults: &mut RoundFaults) {
        let Some(node) = self.victim(cluster, 30) else {
            return;
        };
        let started = Instant::now();
        let Some(before) = cluster.status(node).and_then(|s| s["incarnation"].as_u64()) else {
            return;
        };
        // Stop it: either a crash or a clean stop.
        let stopped = if self.rng.below(2) == 0 {
            cluster.kill(node)
        } else {
            cluster.stop(node)
        };
        if stopped.is_err() {
            return;
        }
        let data_dir = cluster.nodes[&node].data_dir.clone();
        let snapshots = cluster.files(node, "snapshot-");
        let segments: Vec<_> = cluster
            .files(node, "wal-")
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        let choice = self.drills % 4;
        self.drills += 1;
        // In turn: a flipped byte in a log segment, a truncated file, a flipped byte in a
        // snapshot, the whole directory gone (a flip in a snapshot needs one: a log segment
        // stands in until the first snapshot is taken).
        let (damage, detail) = match choice {
            2 if !snapshots.is_empty() => {
                let path = &snapshots[0];
                (
                    "snapshot-flip".to_string(),
                    self.flip_until_detected(cluster, node, path, 0.0, 1.0),
                )
            }
            1 => {
                let target = snapshots.first().or(segments.first()).cloned();
                match target {
                    Some(path) => ("truncate".to_string(), self.truncate(cluster, node, &path)),
                    None => ("wipe".to_string(), wipe(&data_dir)),
                }
            }
            3 => ("wipe".to_string(), wipe(&data_dir)),
            _ => match segments.first() {
                Some(path) => (
                    "wal-flip".to_string(),
                    self.flip_until_detected(cluster, node, path, 0.0, 0.5),
                ),
                None => ("wipe".to_string(), wipe(&data_dir)),
            },
        };
        self.count(&format!("corrupt-{damage}"));
        let via_tool = self.rng.below(2) == 0;
        let mut drill = Drill {
            node,
            damage,
            detail,
            repair: if via_tool {
                "chubbyctl-rebuild"
            } else {
                "restart"
            }
            .to_string(),
            incarnation_before: before,
            incarnation_after: None,
            seen_rebuilding: false,
            voting_again: false,
            seconds: 0.0,
            failure: None,
        };
        let timeout = Duration::from_secs(120);
        if via_tool {
            match cluster.rebuild(node, timeout) {
                Ok(report) => {
                    drill.incarnation_after = report["incarnation"].as_u64();
                    // `chubbyctl rebuild` exits 0 only after it watched the replica catch up as
                    // a non-voting member and then vote (its progress bar is that watch).
                    drill.seen_rebuilding = true;
                }
                Err(why) => drill.failure = Some(why),
            }
        } else if let Err(why) = cluster.spawn(node) {
            drill.failure = Some(why);
        }
        if drill.failure.is_none() {
            // Watch it: rebuilding (non-voting), then voting under a new incarnation.
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = cluster.status(node) {
                    let incarnation = status["incarnation"].as_u64().unwrap_or(0);
                    if status["rebuilding"] == true || status["voting"] == false {
                        drill.seen_rebuilding = true;
                    }
                    if status["voting"] == true && incarnation > before {
                        drill.incarnation_after = Some(incarnation);
                        drill.voting_again = true;
                        break;
                    }
                }
                if !cluster.is_running(node) {
                    drill.failure = Some(format!(
                        "node {node} exited after the damage; see {}",
                        cluster.dir.join(format!("node-{node}.log")).display()
                    ));
                    break;
                }
                if Instant::now() > deadline {
                    drill.failure = Some(format!(
                        "node {node} did not vote again under a new incarnation within {timeout:?}"
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if drill.voting_again && !drill.seen_rebuilding {
            drill.failure = Some("voted again without being seen rebuilding".to_string());
        }
        drill.seconds = started.elapsed().as_secs_f64();
        if let Some(why) = &drill.failure {
            faults.problems.push(format!(
                "corruption drill on node {node} ({}): {why}",
                drill.damage
            ));
        }
        faults.injected.push(format!(
            "{} of node {node} ({}), repaired by {}: {}",
            drill.damage,
            drill.detail,
            drill.repair,
            if drill.voting_again {
                "voting again"
            } else {
                "FAILED"
            }
        ));
        faults.drills.push(drill);
    }

    /// Flips a byte of `path` between the fractions `from` and `to` of its written bytes until
    /// `chubbyctl verify` reports the directory damaged (a flip in padding is harmless).
    fn flip_until_detected(
        &mut self,
        cluster: &Cluster,
        node: u64,
        path: &Path,
        from: f64,
        to: f64,
    ) -> String {
        let Ok(mut bytes) = std::fs::read(path) else {
            return format!("{} unreadable", path.display());
        };
        let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let low = ((written as f64 * from) as usize).max(512.min(written));
        let high = ((written as f64 * to) as usize).max(low + 1);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut tries = 0;
        loop {
            tries += 1;
            let at = low + self.rng.below((high - low) as u64) as usize;
            if at >= bytes.len() {
                return format!("{name}: empty");
            }
            bytes[at] ^= 1 << self.rng.below(8);
            if std::fs::write(path, &bytes).is_err() {
                return format!("{name}: cannot write");
            }
            if verify_damaged(cluster, node) || tries >= 64 {
                return format!("{name} byte {at} ({tries} flips until verify saw it)");
            }
        }
    }

    fn truncate(&mut self, cluster: &Cluster, node: u64, path: &Path) -> String {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(path) else {
            return format!("{name} unreadable");
        };
        let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let keep = self.rng.below((written / 2).max(1) as u64) as usize;
        let _ = std::fs::write(path, &bytes[..keep]);
        let seen = verify_damaged(cluster, node);
        format!("{name} cut to {keep} of {written} written bytes (verify saw it: {seen})")
    }

    fn membership(&mut self, cluster: &mut Cluster, faults: &mut RoundFaults) {
        let Some(new) = self.spares.first().copied() else {
            return;
        };
        let handle = tokio::runtime::Handle::current();
        let admin = match cluster.admin() {
            Ok(admin) => admin,
            Err(why) => {
                faults.problems.push(format!("membership: {why}"));
                return;
            }
        };
        let peer = cluster.nodes[&new].proxy_peer;
        let client = cluster.nodes[&new].client;
        let added = handle.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), admin.add_learner(new, peer)).await
        });
        match added {
            Ok(Ok(_)) => {}
            other => {
                // Not chosen (no master for a while): try again in a later round.
                faults
                    .injected
                    .push(format!("add node {new}: not done ({other:?})"));
                admin.close();
                return;
            }
        }
        self.spares.remove(0);
        self.count("membership-add");
        cluster.set_joining(new, true);
        cluster.members.push(new);
        if let Err(why) = cluster.spawn(new) {
            faults
                .problems
                .push(format!("start of joining node {new}: {why}"));
            admin.close();
            return;
        }
        let mut what = format!("added node {new} as non-voting");
        // Promote once it caught up (the admin API asks the learner itself).
        let deadline = Instant::now() + Duration::from_secs(60);
        let promoted = loop {
            let rule = chubby_client::admin::PromoteRule::CaughtUp {
                lag_slots_max: 1_000,
                learner_client: Some(client),
            };
            let result = handle.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), admin.promote(new, rule)).await
            });
            if let Ok(Ok(_)) = result {
                break true;
            }
            if Instant::now() > deadline {
                faults.problems.push(format!(
                    "node {new} could not be promoted within 60 s: {result:?}"
                ));
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if promoted {
            self.count("membership-promote");
            what.push_str(", promoted");
            // Remove an old voter that is not the master, for good.
            let master = cluster.master();
            let candidates: Vec<u64> = cluster
                .members
                .iter()
                .copied()
                .filter(|n| *n != new && Some(*n) != master)
                .collect();
            if let Some(&old) =
                candidates.get(self.rng.below(candidates.len().max(1) as u64) as usize)
            {
                // The promotion must take effect before the next change: retry a while.
                let deadline = Instant::now() + Duration::from_secs(20);
                let removed = loop {
                    let result = handle.block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), admin.remove(old)).await
                    });
                    match result {
                        Ok(Ok(_)) => break Ok(()),
                        other if Instant::now() > deadline => break Err(format!("{other:?}")),
                        _ => std::thread::sleep(Duration::from_millis(300)),
                    }
                };
                match removed {
                    Ok(()) => {
                        self.count("membership-remove");
                        cluster.members.retain(|n| *n != old);
                        let _ = cluster.kill(old);
                        what.push_str(&format!(", removed node {old}"));
                    }
                    Err(why) => what.push_str(&format!(", removal of node {old} not done ({why})")),
                }
            }
        }
        admin.close();
        faults.injected.push(what);
    }
}

/// Deletes a data directory whole.
fn wipe(data_dir: &Path) -> String {
    let _ = std::fs::remove_dir_all(data_dir);
    "data directory deleted".to_string()
}

/// `chubbyctl verify --data-dir`: exit 1 means it found damage.
fn verify_damaged(cluster: &Cluster, node: u64) -> bool {
    Command::new(&cluster.bins.chubbyctl)
        .arg("verify")
        .arg("--data-dir")
        .arg(&cluster.nodes[&node].data_dir)
        .output()
        .is_ok_and(|out| out.status.code() == Some(1))
}
