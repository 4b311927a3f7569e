//! Keeping the session alive, and telling the application how safe it is.
//!
//! The client sends a KeepAlive every third of the lease. The master answers how long the lease
//! lasts from when it stamped the request; the client adds that to the instant it *sent* the
//! request, which gives a local view of the lease that ends no later than the master's.
//!
//! From that view, a monitor derives the [`SessionState`]:
//!
//! - `Safe` while more than a third of the lease is left;
//! - `Jeopardy` once less is left with no KeepAlive acknowledged (two in a row went
//!   unanswered): the session may still be alive, and a new master extends every lease when it
//!   takes over, but work that relies on a lock should pause;
//! - `Expired` when the master says so (an `SessionExpired` event, or `SessionUnknown` to a
//!   request), or when the local lease plus the grace period has passed without contact.

use crate::client::Inner;
use chubby_proto::{Rejection, Request, Response, ServerError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How safe the session is; watch it with [`crate::Client::session_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// A KeepAlive was acknowledged recently.
    Safe,
    /// No KeepAlive acknowledged for a while: the lease is at risk. Pause work that depends on
    /// holding a lock until the state is `Safe` again (or check sequencers downstream).
    Jeopardy,
    /// The session is over; its locks and ephemeral nodes are gone (or will be when the master
    /// notices). Every call answers `Error::SessionExpired`.
    Expired(Expiry),
    /// The client closed the session.
    Closed,
}

/// Why the session is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The master expired it (or no longer knows it).
    ByMaster,
    /// No KeepAlive was acknowledged for the whole local lease and the grace period after it.
    LeaseLapsed,
}

impl SessionState {
    pub fn is_over(self) -> bool {
        matches!(self, SessionState::Expired(_) | SessionState::Closed)
    }
}

/// The client's conservative view of its lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseView {
    pub lease: Duration,
    /// Invariant: no later than when the master would expire the session without a KeepAlive.
    pub expires_at: Instant,
}

impl LeaseView {
    /// The state this view gives at `now`.
    pub fn judge(&self, now: Instant, grace: Duration) -> SessionState {
        if now + self.lease / 3 < self.expires_at {
            SessionState::Safe
        } else if now < self.expires_at + grace {
            SessionState::Jeopardy
        } else {
            SessionState::Expired(Expiry::LeaseLapsed)
        }
    }
}

/// Sends a KeepAlive every `interval` until the session is over.
pub(crate) async fn keep_alive(inner: Arc<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if inner.state().is_over() {
            return;
        }
        let sent = Instant::now();
        // Keep trying until the monitor would give the session up anyway.
        let deadline = inner.lease().expires_at + inner.grace();
        let request = Request::KeepAlive {
            session: inner.session(),
        };
        let answer = inner
            .link
            .call_until(&request, deadline.max(sent + inner.link.timeouts().attempt))
            .await;
        match answer {
            Ok(Response::KeptAlive {
                lease_remaining_ms, ..
            }) => inner.renew(sent, Duration::from_millis(lease_remaining_ms)),
            Ok(Response::Error(ServerError::Rejected(Rejection::SessionUnknown(_)))) => {
                inner.expire(Expiry::ByMaster);
                return;
            }
            Ok(other) => tracing::warn!(?other, "unexpected answer to a KeepAlive"),
            Err(error) => tracing::debug!(%error, "KeepAlive not acknowledged"),
        }
    }
}

/// Re-derives the session state from the lease view as time passes.
pub(crate) async fn monitor(inner: Arc<Inner>) {
    let step =
        (inner.lease().lease / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::time::sleep(step).await;
        if inner.state().is_over() {
            return;
        }
        let judged = inner.lease().judge(Instant::now(), inner.grace());
        inner.set_state(judged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_then_jeopardy_then_lapsed() {
        let start = Instant::now();
        let view = LeaseView {
            lease: Duration::from_secs(3),
            expires_at: start + Duration::from_secs(3),
        };
        let grace = Duration::from_secs(5);
        assert_eq!(view.judge(start, grace), SessionState::Safe);
        assert_eq!(
            view.judge(start + Duration::from_millis(2_500), grace),
            SessionState::Jeopardy
        );
        assert_eq!(
            view.judge(start + Duration::from_secs(7), grace),
            SessionState::Jeopardy
        );
        assert_eq!(
            view.judge(start + Duration::from_secs(8), grace),
            SessionState::Expired(Expiry::LeaseLapsed)
        );
    }
}
