//! The session's event stream and what the client does with each event.
//!
//! One background task keeps a subscription open on the replica the client talks to (it follows
//! the link when the link moves after a fail-over) and resumes after the last event it saw, so
//! events arrive once each, in log order. [`Dispatch`] routes each event: lock grants and
//! cancellations to the `lock()` call waiting for them, lost locks to their guard, the session's
//! expiry to the session state, and the rest to the [`Watch`]es of the node they concern.
//!
//! A `MasterChanged` event, or a server that cannot replay everything since the last event seen
//! (`Subscribed { missed: true }`), means events may have been lost: every watch is told (the
//! `MasterChanged` event itself, or [`WatchEvent::Missed`]) and every waiting `lock()` re-reads
//! the lock.

use crate::client::Inner;
use crate::link::read_frame;
use crate::session::Expiry;
use chubby_proto::protocol::encode_frame;
use chubby_proto::{
    Event, EventId, EventKind, NodePath, Rejection, Request, Response, Sequencer, ServerError,
    WatchKinds,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Pause before subscribing again after the stream ended or failed.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

/// What a [`Watch`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// An event on the watched node, in log order (`event.id` increases).
    Event(Event),
    /// Events may have been lost (the replica the client reached could not replay them all):
    /// re-read what matters.
    Missed,
}

/// Routes events to the parts of the client waiting for them.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    /// The newest event delivered; the subscription resumes after it.
    pub last_seen: Option<EventId>,
    watches: BTreeMap<NodePath, Vec<WatchEntry>>,
    waiters: BTreeMap<NodePath, mpsc::UnboundedSender<LockSignal>>,
    /// The "lost" flag of each held lock's guard.
    held: BTreeMap<NodePath, Arc<AtomicBool>>,
    next_watch: u64,
}

#[derive(Debug)]
struct WatchEntry {
    id: u64,
    kinds: WatchKinds,
    sender: mpsc::UnboundedSender<WatchEvent>,
}

/// What a waiting `lock()` hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LockSignal {
    Granted(Sequencer),
    Cancelled,
    /// Events may have been lost: read the lock to learn whether it was granted.
    Recheck,
}

impl Dispatch {
    /// Delivers one event (once: events at or before `last_seen` are dropped). Answers whether
    /// the event expired the session.
    pub fn deliver(&mut self, event: Event) -> bool {
        if self.last_seen.is_some_and(|seen| event.id <= seen) {
            return false;
        }
        self.last_seen = Some(event.id);
        match &event.kind {
            EventKind::LockGranted(sequencer) => self.signal(
                &sequencer.path.clone(),
                LockSignal::Granted(sequencer.clone()),
            ),
            EventKind::LockWaitCancelled { path } => {
                self.signal(&path.clone(), LockSignal::Cancelled)
            }
            EventKind::LockLost { path } => {
                if let Some(lost) = self.held.get(path) {
                    lost.store(true, Ordering::SeqCst);
                }
            }
            EventKind::SessionExpired => return true,
            EventKind::MasterChanged { .. } => {
                self.tell_every_watch(WatchEvent::Event(event.clone()));
                self.recheck_waiters();
            }
            _ => self.route_to_watches(event),
        }
        false
    }

    /// The server could not replay every event since `last_seen`.
    pub fn missed(&mut self) {
        self.tell_every_watch(WatchEvent::Missed);
        self.recheck_waiters();
    }

    fn route_to_watches(&mut self, event: Event) {
        let (path, wants): (NodePath, fn(WatchKinds) -> bool) = match &event.kind {
            EventKind::NodeCreated { path, .. }
            | EventKind::ContentsChanged { path, .. }
            | EventKind::NodeDeleted { path, .. } => (path.clone(), |k| k.contents),
            EventKind::ChildAdded { path } | EventKind::ChildRemoved { path } => {
                let Some(parent) = path.parent() else { return };
                (parent, |k| k.children)
            }
            EventKind::LockAcquired { path, .. } => (path.clone(), |k| k.lock_acquired),
            EventKind::LockConflict { path, .. } => (path.clone(), |k| k.lock_conflict),
            _ => return,
        };
        if let Some(entries) = self.watches.get_mut(&path) {
            entries.retain(|entry| {
                !wants(entry.kinds) || entry.sender.send(WatchEvent::Event(event.clone())).is_ok()
            });
        }
    }

    fn tell_every_watch(&mut self, item: WatchEvent) {
        for entries in self.watches.values_mut() {
            entries.retain(|entry| entry.sender.send(item.clone()).is_ok());
        }
    }

    fn signal(&mut self, path: &NodePath, signal: LockSignal) {
        if let Some(waiter) = self.waiters.get(path) {
            if waiter.send(signal).is_err() {
                self.waiters.remove(path);
            }
        }
    }

    fn recheck_waiters(&mut self) {
        self.waiters
            .retain(|_, waiter| waiter.send(LockSignal::Recheck).is_ok());
    }

    /// Registers a local watch; answers its id, its receiver, and the union of the kinds
    /// watched on `path` (what the server must watch).
    pub fn add_watch(
        &mut self,
        path: &NodePath,
        kinds: WatchKinds,
    ) -> (u64, mpsc::UnboundedReceiver<WatchEvent>, WatchKinds) {
        let id = self.next_watch;
        self.next_watch += 1;
        let (sender, receiver) = mpsc::unbounded_channel();
        self.watches
            .entry(path.clone())
            .or_default()
            .push(WatchEntry { id, kinds, sender });
        (id, receiver, self.watched_kinds(path))
    }

    /// Removes a local watch; answers the kinds still watched on `path`.
    pub fn remove_watch(&mut self, path: &NodePath, id: u64) -> WatchKinds {
        if let Some(entries) = self.watches.get_mut(path) {
            entries.retain(|entry| entry.id != id);
            if entries.is_empty() {
                self.watches.remove(path);
            }
        }
        self.watched_kinds(path)
    }

    fn watched_kinds(&self, path: &NodePath) -> WatchKinds {
        let mut union = WatchKinds::default();
        for entry in self.watches.get(path).into_iter().flatten() {
            union.contents |= entry.kinds.contents;
            union.children |= entry.kinds.children;
            union.lock_acquired |= entry.kinds.lock_acquired;
            union.lock_conflict |= entry.kinds.lock_conflict;
        }
        union
    }

    pub fn add_waiter(&mut self, path: &NodePath) -> mpsc::UnboundedReceiver<LockSignal> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.waiters.insert(path.clone(), sender);
        receiver
    }

    pub fn remove_waiter(&mut self, path: &NodePath) {
        self.waiters.remove(path);
    }

    pub fn add_held(&mut self, path: &NodePath) -> Arc<AtomicBool> {
        let lost = Arc::new(AtomicBool::new(false));
        self.held.insert(path.clone(), lost.clone());
        lost
    }

    pub fn remove_held(&mut self, path: &NodePath) {
        self.held.remove(path);
    }
}

/// A stream of the events of one watched node; see [`crate::Client::watch`]. Dropping it removes
/// the watch (best effort).
#[derive(Debug)]
pub struct Watch {
    pub(crate) inner: Weak<Inner>,
    pub(crate) path: NodePath,
    pub(crate) id: u64,
    pub(crate) receiver: mpsc::UnboundedReceiver<WatchEvent>,
}

impl Watch {
    /// The next event, in log order; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.receiver.recv().await
    }

    /// The next event if one is already here.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.receiver.try_recv().ok()
    }

    pub fn path(&self) -> &NodePath {
        &self.path
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let remaining = inner.dispatch().remove_watch(&self.path, self.id);
        inner.update_server_watch(self.path.clone(), remaining);
    }
}

/// Keeps the session's event stream open until the session is over.
pub(crate) async fn subscription(inner: Arc<Inner>) {
    let mut moves = inner.link.moves();
    loop {
        if inner.state().is_over() {
            return;
        }
        match subscribe_once(&inner, &mut moves).await {
            Ok(()) => {}
            Err(why) => tracing::debug!(%why, "event stream interrupted"),
        }
        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
    }
}

/// One subscription: until the stream ends, fails, or the link moves to another replica.
async fn subscribe_once(
    inner: &Inner,
    moves: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    let connection = inner.link.event_connection().await?;
    moves.mark_unchanged();
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let request = Request::Subscribe {
        session: inner.session(),
        after: inner.dispatch().last_seen,
    };
    let frame = encode_frame(&request).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match read_frame::<Response>(&mut recv).await? {
        Response::Subscribed { missed } => {
            if missed {
                inner.dispatch().missed();
            }
        }
        Response::Error(ServerError::Rejected(Rejection::SessionUnknown(_))) => {
            inner.expire(Expiry::ByMaster);
            return Ok(());
        }
        other => return Err(format!("subscription refused: {other:?}")),
    }
    loop {
        let event = tokio::select! {
            event = read_frame::<Event>(&mut recv) => event?,
            _ = moves.changed() => return Ok(()),
        };
        let expired = inner.dispatch().deliver(event);
        if expired {
            inner.expire(Expiry::ByMaster);
            return Ok(());
        }
    }
}
