//! The event hub of one replica: the events the database produced here, per session, for the
//! client streams attached to this replica.
//!
//! Every replica applies every command, so every replica sees every session's events. The hub
//! keeps the latest [`SESSION_EVENTS_BUFFERED_MAX`] of each live session, which lets a client that
//! lost its stream (its connection dropped, or the master failed over) resume on any replica after
//! the last event it saw, including the fail-over's own `MasterChanged` event. What the hub cannot
//! replay (events from before this process started applying or restored a snapshot, or dropped
//! from a full buffer) it says it missed, and the client re-reads.
//!
//! Delivery never blocks the log: `publish` runs inside `StateMachine::apply`, takes one short
//! lock, and hands each event to the session's subscriber with `try_send`. A subscriber too slow to
//! keep up is dropped (its stream ends) and resumes from the buffer when it subscribes again.

use crate::event::Event;
use crate::limits::SESSION_EVENTS_BUFFERED_MAX;
use crate::types::{EventId, SessionId, Slot};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Events queued to one subscriber before it counts as too slow and is dropped.
pub(crate) const SUBSCRIBER_QUEUE_EVENTS_MAX: usize = 1024;

/// One replica's per-session event buffers and the subscribers attached to them.
#[derive(Debug, Default)]
pub struct EventHub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    /// The first slot applied since the process started or the state was restored or reset:
    /// events of earlier slots may be missing here. `None` until something is applied.
    complete_from: Option<Slot>,
    sessions: BTreeMap<SessionId, SessionEvents>,
    next_subscriber: u64,
    /// Set by `close`: no new subscribers.
    closed: bool,
}

#[derive(Debug, Default)]
struct SessionEvents {
    /// Invariant: ids strictly increase; at most `SESSION_EVENTS_BUFFERED_MAX` events.
    buffer: VecDeque<Event>,
    /// The newest event dropped from the front of a full buffer.
    dropped_through: Option<EventId>,
    subscriber: Option<Subscriber>,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Event>,
}

/// What a new subscriber gets: whether it may have missed events, the events to replay, and the
/// live ones from then on.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub id: u64,
    pub missed: bool,
    pub replay: Vec<Event>,
    pub live: mpsc::Receiver<Event>,
}

impl EventHub {
    pub fn new() -> EventHub {
        EventHub::default()
    }

    /// Called by the state machine after applying a command at `slot`: buffers and delivers its
    /// events, then forgets the sessions the command ended (their last events are delivered first,
    /// and dropping the subscriber ends its stream).
    pub(crate) fn publish(&self, slot: Slot, events: &[Event], ended: &[SessionId]) {
        let mut state = self.state.lock().expect("event hub lock");
        state.complete_from.get_or_insert(slot);
        for event in events {
            let session = state.sessions.entry(event.session).or_default();
            session.push(event.clone());
        }
        for session in ended {
            state.sessions.remove(session);
        }
    }

    /// The replica's state jumped (snapshot restored, or reset for a rebuild): the buffers no
    /// longer line up with it. Subscribers are dropped; they resubscribe and are told they missed
    /// events.
    pub(crate) fn discontinuity(&self) {
        let mut state = self.state.lock().expect("event hub lock");
        state.complete_from = None;
        state.sessions.clear();
    }

    /// Attaches a subscriber to `session`, replacing any earlier one (whose stream ends).
    pub(crate) fn subscribe(
        &self,
        session: SessionId,
        after: Option<EventId>,
    ) -> Option<Subscription> {
        let mut state = self.state.lock().expect("event hub lock");
        if state.closed {
            return None;
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        let complete_from = state.complete_from;
        let events = state.sessions.entry(session).or_default();
        let missed = match after {
            None => events.dropped_through.is_some(),
            Some(after) => {
                events
                    .dropped_through
                    .is_some_and(|dropped| dropped > after)
                    || complete_from.is_none_or(|from| after.slot < from)
            }
        };
        let replay = events
            .buffer
            .iter()
            .filter(|e| after.is_none_or(|after| e.id > after))
            .cloned()
            .collect();
        let (sender, live) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS_MAX);
        events.subscriber = Some(Subscriber { id, sender });
        Some(Subscription {
            id,
            missed,
            replay,
            live,
        })
    }

    /// Detaches subscriber `id` of `session` if it is still the current one.
    pub(crate) fn unsubscribe(&self, session: SessionId, id: u64) {
        let mut state = self.state.lock().expect("event hub lock");
        if let Some(events) = state.sessions.get_mut(&session) {
            if events.subscriber.as_ref().is_some_and(|s| s.id == id) {
                events.subscriber = None;
                if events.buffer.is_empty() && events.dropped_through.is_none() {
                    state.sessions.remove(&session);
                }
            }
        }
    }

    /// Ends every stream and refuses new subscribers: the server is stopping.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock().expect("event hub lock");
        state.closed = true;
        for events in state.sessions.values_mut() {
            events.subscriber = None;
        }
    }
}

impl SessionEvents {
    fn push(&mut self, event: Event) {
        assert!(
            self.buffer.back().is_none_or(|last| last.id < event.id),
            "events of a session arrive in log order"
        );
        if self.buffer.len() == SESSION_EVENTS_BUFFERED_MAX {
            let dropped = self.buffer.pop_front().expect("a full buffer has a front");
            self.dropped_through = Some(dropped.id);
        }
        if let Some(subscriber) = &self.subscriber {
            // A full queue means the client does not keep up; a closed one that it left. Either
            // way it resumes from the buffer when it subscribes again.
            if subscriber.sender.try_send(event.clone()).is_err() {
                self.subscriber = None;
            }
        }
        self.buffer.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(session: u64, slot: u64, index: u64) -> Event {
        Event {
            id: EventId {
                slot: Slot(slot),
                index,
            },
            session: SessionId(session),
            kind: EventKind::SessionExpired,
        }
    }

    #[test]
    fn a_subscriber_gets_the_replay_then_live_events_in_order() {
        let hub = EventHub::new();
        hub.publish(Slot(1), &[event(1, 1, 0), event(2, 1, 1)], &[]);
        hub.publish(Slot(2), &[event(1, 2, 0)], &[]);
        let mut sub = hub
            .subscribe(SessionId(1), Some(event(1, 1, 0).id))
            .unwrap();
        assert!(!sub.missed);
        assert_eq!(sub.replay, vec![event(1, 2, 0)]);
        hub.publish(Slot(3), &[event(1, 3, 0)], &[]);
        assert_eq!(sub.live.try_recv().unwrap(), event(1, 3, 0));
    }

    #[test]
    fn resuming_from_before_what_the_hub_saw_is_reported_missed() {
        let hub = EventHub::new();
        hub.publish(Slot(5), &[event(1, 5, 0)], &[]);
        let early = hub
            .subscribe(SessionId(1), Some(event(1, 4, 0).id))
            .unwrap();
        assert!(early.missed);
        let fresh = hub.subscribe(SessionId(1), None).unwrap();
        assert!(!fresh.missed);
        hub.discontinuity();
        let after = hub
            .subscribe(SessionId(1), Some(event(1, 5, 0).id))
            .unwrap();
        assert!(after.missed, "a restored replica cannot replay");
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_says_so() {
        let hub = EventHub::new();
        for slot in 1..=(SESSION_EVENTS_BUFFERED_MAX as u64 + 1) {
            hub.publish(Slot(slot), &[event(1, slot, 0)], &[]);
        }
        let sub = hub
            .subscribe(SessionId(1), Some(event(1, 0, 0).id))
            .unwrap();
        assert!(sub.missed);
        assert_eq!(sub.replay.len(), SESSION_EVENTS_BUFFERED_MAX);
        let caught_up = hub
            .subscribe(SessionId(1), Some(event(1, 1, 0).id))
            .unwrap();
        assert!(!caught_up.missed);
    }

    #[test]
    fn ending_a_session_delivers_its_last_events_then_ends_the_stream() {
        let hub = EventHub::new();
        hub.publish(Slot(1), &[], &[]);
        let mut sub = hub.subscribe(SessionId(1), None).unwrap();
        hub.publish(Slot(2), &[event(1, 2, 0)], &[SessionId(1)]);
        assert_eq!(sub.live.try_recv().unwrap(), event(1, 2, 0));
        assert!(matches!(
            sub.live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_slow_subscriber_is_dropped_and_resumes_from_the_buffer() {
        let hub = EventHub::new();
        hub.publish(Slot(1), &[], &[]);
        let mut sub = hub.subscribe(SessionId(1), None).unwrap();
        let total = SUBSCRIBER_QUEUE_EVENTS_MAX as u64 + 1;
        for slot in 2..2 + total {
            hub.publish(Slot(slot), &[event(1, slot, 0)], &[]);
        }
        let mut seen = Vec::new();
        while let Ok(e) = sub.live.try_recv() {
            seen.push(e);
        }
        assert_eq!(seen.len(), SUBSCRIBER_QUEUE_EVENTS_MAX);
        let resumed = hub
            .subscribe(SessionId(1), Some(seen.last().unwrap().id))
            .unwrap();
        assert!(!resumed.missed);
        assert_eq!(resumed.replay, vec![event(1, 1 + total, 0)]);
    }
}
