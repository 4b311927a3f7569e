//! The master's duties, in one background task per replica that acts only while the replica is
//! master:
//!
//! 1. **Announce the tenure.** The first command it proposes in each new master tenure (a new
//!    epoch in `Log::status`) is `MasterChanged { epoch, now_ms }`: the database extends every
//!    live lease, records the epoch, and tells every session that events may have been missed.
//!    Until it is committed the server answers client writes `TenureStarting`, so they follow it.
//! 2. **Keep time.** Whenever the database's next deadline (`next_deadline_ms`: a lease end or a
//!    lock-delay end) is due on this replica's clock, it proposes `Tick { now_ms }`; session expiry
//!    and the end of lock-delays happen when that tick is applied, on every replica alike.
//!
//! Ticks and the announcement come from this one task in order, so no tick of a tenure precedes
//! its announcement: a new master never expires a session before extending it. A client write
//! that reaches a just-elected master before this task notices the new epoch can precede the
//! announcement; that is harmless, since only a tick expires sessions.
//!
//! When the log stops (`status()` answers `None`), the task stops the client endpoint, so clients
//! move to another replica instead of waiting on one that no longer applies anything.

use super::machine::DatabaseMachine;
use super::{Shared, Tenure};
use crate::command::Command;
use crate::hash::Fnv1a;
use crate::types::Epoch;
use replicated_log::Role;
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    let mut announced: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(status) = shared.log.status().await else {
            tracing::info!("the log stopped: the server stops serving clients");
            shared.stop_serving();
            return;
        };
        let master_of = match (status.role, status.epoch) {
            (Role::Master, Some(epoch)) => Some(epoch),
            _ => None,
        };
        shared.set_tenure(Tenure {
            master_of: master_of.clone(),
            announced: announced.clone(),
        });
        let Some(epoch) = master_of else { continue };
        if announced.as_ref() != Some(&epoch) {
            if announce(&shared, &epoch).await {
                announced = Some(epoch.clone());
                shared.set_tenure(Tenure {
                    master_of: Some(epoch),
                    announced: announced.clone(),
                });
            }
            continue;
        }
        tick_if_due(&shared).await;
    }
}

/// Proposes `MasterChanged` for `epoch`; true once it is committed in that very epoch.
async fn announce(shared: &Shared, epoch: &str) -> bool {
    let command = Command::MasterChanged {
        epoch: tenure_epoch(epoch),
        now_ms: shared.clock.now_ms(),
    };
    match shared.log.submit(command.encode()).await {
        Ok(committed) if committed.epoch.to_string() == epoch => {
            tracing::info!(%epoch, slot = committed.slot.0, "master tenure announced");
            true
        }
        Ok(committed) => {
            tracing::info!(%epoch, chosen_in = %committed.epoch, "tenure announcement chosen in another epoch");
            false
        }
        Err(error) => {
            tracing::debug!(%epoch, %error, "tenure announcement not committed");
            false
        }
    }
}

/// Proposes a `Tick` if the database's next deadline has come on this replica's clock.
async fn tick_if_due(shared: &Shared) {
    let deadline = shared
        .log
        .read_stale(|m: &DatabaseMachine| m.database().next_deadline_ms())
        .await;
    let now_ms = shared.clock.now_ms();
    let Ok(Some(deadline)) = deadline else { return };
    if deadline > now_ms {
        return;
    }
    if let Err(error) = shared.log.submit(Command::Tick { now_ms }.encode()).await {
        tracing::debug!(%error, "tick not committed");
    }
}

/// The database's [`Epoch`] for a tenure the log names `e<round>.<node>`: `round << 20 | node`
/// while the node id fits 20 bits and the round 44, which keeps epochs readable and ordered by
/// round; otherwise (or if the log ever names epochs differently) the FNV-1a 64 of the name. The
/// database only compares epochs for equality, and distinct tenures have distinct names.
pub(crate) fn tenure_epoch(name: &str) -> Epoch {
    const NODE_BITS: u32 = 20;
    let packed = name
        .strip_prefix('e')
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(round, node)| Some((round.parse::<u64>().ok()?, node.parse::<u64>().ok()?)))
        .filter(|(round, node)| *node < 1 << NODE_BITS && *round < 1 << (64 - NODE_BITS))
        .map(|(round, node)| round << NODE_BITS | node);
    Epoch(packed.unwrap_or_else(|| {
        let mut hash = Fnv1a::new();
        hash.update(name.as_bytes());
        hash.finish()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenure_names_map_to_distinct_epochs() {
        assert_eq!(tenure_epoch("e3.2"), Epoch(3 << 20 | 2));
        assert_ne!(tenure_epoch("e3.2"), tenure_epoch("e3.1"));
        assert_ne!(tenure_epoch("e3.2"), tenure_epoch("e4.2"));
        let huge = format!("e1.{}", 1u64 << 20);
        assert_ne!(tenure_epoch(&huge), tenure_epoch("e1.0"));
        assert_eq!(tenure_epoch(&huge), tenure_epoch(&huge));
    }
}
