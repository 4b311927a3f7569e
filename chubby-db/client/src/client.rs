//! [`Client`]: one session with the cluster, and the calls made under it.

use crate::config::ClientConfig;
use crate::error::Error;
use crate::events::{self, Dispatch, Watch};
use crate::link::Link;
use crate::lock::{self, LockGuard};
use crate::session::{self, Expiry, LeaseView, SessionState};
use chubby_proto::limits::SESSION_REPLIES_MAX;
use chubby_proto::{
    Consistency, LockMode, MultiOp, MultiOpReply, NodeKind, NodePath, NodeStat, NodeView, Op,
    OpOutput, OpResult, Query, QueryError, ReadReply, Rejection, Request, RequestSeq, Response,
    Sequencer, ServerError, SessionId, WatchKinds,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// The reply to a MultiOp: the branch that ran, each guard test's result and each op's result.
pub type MultiOpResult = MultiOpReply;

/// A client of a chubby-db cluster, holding one session.
///
/// Every call finds the master (following redirects), and retries across connection failures
/// and fail-overs until [`crate::Timeouts::request`]; MultiOps are retried with their original
/// request number, so each applies at most once. In the background the client keeps the session
/// alive, reports its [`SessionState`], and keeps the session's event stream open.
///
/// Dropping the client closes its session in the background (best effort); [`Client::close`]
/// closes it and waits; [`Client::abandon`] walks away without closing, as a crash would.
#[derive(Debug)]
pub struct Client {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// A node to create; see [`Client::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    kind: NodeKind,
    ephemeral: bool,
    contents: Vec<u8>,
    lock_delay: Option<Duration>,
}

impl Create {
    /// A permanent file with these contents.
    pub fn file(contents: impl Into<Vec<u8>>) -> Create {
        Create {
            kind: NodeKind::File,
            ephemeral: false,
            contents: contents.into(),
            lock_delay: None,
        }
    }

    /// A permanent directory.
    pub fn directory() -> Create {
        Create {
            kind: NodeKind::Directory,
            ephemeral: false,
            contents: Vec::new(),
            lock_delay: None,
        }
    }

    /// Deleted when this client's session ends (closed or expired). Files only.
    pub fn ephemeral(mut self) -> Create {
        self.ephemeral = true;
        self
    }

    /// How long the node's lock stays unavailable after a holder's session expires (at most
    /// 60 s; the database's default otherwise).
    pub fn lock_delay(mut self, delay: Duration) -> Create {
        self.lock_delay = Some(delay);
        self
    }

    fn into_op(self, path: NodePath) -> Op {
        Op::Create {
            path,
            kind: self.kind,
            ephemeral: self.ephemeral,
            contents: self.contents,
            lock_delay_ms: self
                .lock_delay
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// What `set` and a successful compare-and-set leave behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub content_generation: u64,
    pub checksum: u64,
}

/// The outcome of [`Client::compare_and_set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The generation matched and the contents were replaced.
    Swapped(Written),
    /// Someone wrote first: the node as it is now, to retry from.
    Conflict(NodeView),
}

/// Anything that names a node: `&str`, `String`, [`NodePath`].
pub trait IntoPath {
    fn into_path(self) -> Result<NodePath, Error>;
}

impl IntoPath for &str {
    fn into_path(self) -> Result<NodePath, Error> {
        Ok(NodePath::new(self)?)
    }
}

impl IntoPath for String {
    fn into_path(self) -> Result<NodePath, Error> {
        Ok(NodePath::new(&self)?)
    }
}

impl IntoPath for &String {
    fn into_path(self) -> Result<NodePath, Error> {
        Ok(NodePath::new(self)?)
    }
}

impl IntoPath for NodePath {
    fn into_path(self) -> Result<NodePath, Error> {
        Ok(self)
    }
}

impl IntoPath for &NodePath {
    fn into_path(self) -> Result<NodePath, Error> {
        Ok(self.clone())
    }
}

impl Client {
    /// Finds the master among `config.replicas` (following redirects), opens a session, and
    /// starts keeping it alive.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        if let Some(why) = config.invalid() {
            return Err(Error::Config(why));
        }
        let endpoint = crate::tls::client_endpoint(&config)?;
        let link = Link::new(
            endpoint,
            config.cluster,
            config.replicas.clone(),
            config.timeouts.clone(),
        );

        let lease_ms = config
            .lease
            .map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX));
        let sent = Instant::now();
        let (session, lease, remaining) = match link.call(&Request::OpenSession { lease_ms }).await
        {
            Ok(Response::SessionOpened {
                session,
                lease_ms,
                lease_remaining_ms,
                ..
            }) => (
                session,
                Duration::from_millis(lease_ms),
                Duration::from_millis(lease_remaining_ms),
            ),
            Ok(Response::Error(ServerError::Rejected(rejection))) => {
                link.close();
                return Err(Error::Rejected(rejection));
            }
            Ok(other) => {
                link.close();
                return Err(unexpected(&other));
            }
            Err(error) => {
                link.close();
                return Err(error);
            }
        };
        let lease = if lease.is_zero() {
            config.lease_or_default()
        } else {
            lease
        };
        let inner = Arc::new(Inner {
            link,
            session,
            seqs: SeqWindow::default(),
            state: watch::Sender::new(SessionState::Safe),
            lease: Mutex::new(LeaseView {
                lease,
                expires_at: sent + remaining,
            }),
            dispatch: Mutex::new(Dispatch::default()),
            abandoned: AtomicBool::new(false),
            grace: config.timeouts.grace,
        });
        let interval = config.timeouts.keep_alive_interval.unwrap_or(lease / 3);
        let tasks = vec![
            tokio::spawn(session::keep_alive(inner.clone(), interval)),
            tokio::spawn(session::monitor(inner.clone())),
            tokio::spawn(events::subscription(inner.clone())),
        ];
        tracing::debug!(%session, "session opened");
        Ok(Client { inner, tasks })
    }

    /// The session this client holds.
    pub fn session(&self) -> SessionId {
        self.inner.session
    }

    /// The session's state as it changes: `Safe`, `Jeopardy` (lease at risk), `Expired`,
    /// `Closed`.
    pub fn session_state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    /// A node's stat and contents, linearizably (from the master under its lease).
    pub async fn get(&self, path: impl IntoPath) -> Result<NodeView, Error> {
        let path = path.into_path()?;
        match self
            .inner
            .read(Query::Get(path), Consistency::Linearizable)
            .await?
        {
            ReadReply::Node(view) => Ok(view),
            other => Err(unexpected_read(&other)),
        }
    }

    /// A node's stat and contents from whichever replica the client reaches: possibly stale,
    /// never from the future.
    pub async fn get_stale(&self, path: impl IntoPath) -> Result<NodeView, Error> {
        let path = path.into_path()?;
        match self
            .inner
            .read(Query::Get(path), Consistency::Stale)
            .await?
        {
            ReadReply::Node(view) => Ok(view),
            other => Err(unexpected_read(&other)),
        }
    }

    pub async fn stat(&self, path: impl IntoPath) -> Result<NodeStat, Error> {
        let path = path.into_path()?;
        match self
            .inner
            .read(Query::Stat(path), Consistency::Linearizable)
            .await?
        {
            ReadReply::Stat(stat) => Ok(stat),
            other => Err(unexpected_read(&other)),
        }
    }

    /// A directory's children, in path order.
    pub async fn list(&self, path: impl IntoPath) -> Result<Vec<NodePath>, Error> {
        let path = path.into_path()?;
        match self
            .inner
            .read(Query::Children(path), Consistency::Linearizable)
            .await?
        {
            ReadReply::Children(children) => Ok(children),
            other => Err(unexpected_read(&other)),
        }
    }

    /// Replaces a file's contents.
    pub async fn set(
        &self,
        path: impl IntoPath,
        contents: impl Into<Vec<u8>>,
    ) -> Result<Written, Error> {
        let op = Op::Set {
            path: path.into_path()?,
            contents: contents.into(),
        };
        match self.inner.run_op(op).await? {
            OpOutput::Set {
                content_generation,
                checksum,
            } => Ok(Written {
                content_generation,
                checksum,
            }),
            other => Err(unexpected_output(&other)),
        }
    }

    /// Creates a node; answers its instance number.
    pub async fn create(&self, path: impl IntoPath, node: Create) -> Result<u64, Error> {
        let op = node.into_op(path.into_path()?);
        match self.inner.run_op(op).await? {
            OpOutput::Created { instance } => Ok(instance),
            other => Err(unexpected_output(&other)),
        }
    }

    /// Deletes a node (it must have no children and a free lock).
    pub async fn delete(&self, path: impl IntoPath) -> Result<(), Error> {
        let op = Op::Delete {
            path: path.into_path()?,
        };
        match self.inner.run_op(op).await? {
            OpOutput::Deleted => Ok(()),
            other => Err(unexpected_output(&other)),
        }
    }

    /// Runs a transaction [PML 5.6]: every guard test is evaluated; if all hold `top` runs,
    /// otherwise `fop`, atomically. The reply reports each guard's result and each op's; an op
    /// that failed rolled its branch back (`reply.committed()` is false). A request the database
    /// refuses as a whole (limits) is `Err(Rejected)`.
    pub async fn multi_op(&self, op: MultiOp) -> Result<MultiOpResult, Error> {
        self.inner.multi_op(op).await
    }

    /// Replaces `path`'s contents if its content generation is still `generation`; otherwise
    /// answers the node as it is now.
    pub async fn compare_and_set(
        &self,
        path: impl IntoPath,
        generation: u64,
        contents: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome, Error> {
        let op = MultiOp::compare_and_set(path.into_path()?, generation, contents.into());
        let reply = self.inner.multi_op(op).await?;
        match reply.ops.into_iter().next() {
            Some(OpResult::Done(OpOutput::Set {
                content_generation,
                checksum,
            })) => Ok(CasOutcome::Swapped(Written {
                content_generation,
                checksum,
            })),
            Some(OpResult::Done(OpOutput::Read(view))) => Ok(CasOutcome::Conflict(view)),
            Some(OpResult::Failed(error)) => Err(Error::Op(error)),
            other => Err(Error::Protocol(format!(
                "unexpected compare-and-set result {other:?}"
            ))),
        }
    }

    /// Acquires `path`'s lock in `mode`, waiting in the lock's fair (FIFO) queue as long as it
    /// takes. Dropping the future before the grant withdraws the request.
    pub async fn lock(&self, path: impl IntoPath, mode: LockMode) -> Result<LockGuard, Error> {
        lock::lock(&self.inner, path.into_path()?, mode).await
    }

    /// Acquires `path`'s lock in `mode` only if it can be granted right now; otherwise
    /// `Err(Op(LockBusy))` or `Err(Op(LockDelayed { until_ms }))` (see [`Error::is_lock_busy`]).
    pub async fn try_lock(&self, path: impl IntoPath, mode: LockMode) -> Result<LockGuard, Error> {
        lock::try_lock(&self.inner, path.into_path()?, mode).await
    }

    /// `Ok` while `sequencer`'s grant is still held; `Err(SequencerInvalid(why))` once it is not.
    /// What a downstream server calls before acting on a request that carries a sequencer.
    pub async fn check_sequencer(&self, sequencer: &Sequencer) -> Result<(), Error> {
        let query = Query::CheckSequencer(sequencer.clone());
        match self.inner.read(query, Consistency::Linearizable).await? {
            ReadReply::Sequencer(Ok(())) => Ok(()),
            ReadReply::Sequencer(Err(why)) => Err(Error::SequencerInvalid(why)),
            other => Err(unexpected_read(&other)),
        }
    }

    /// Watches `path` (which need not exist) for the `kinds` of events; the events arrive on the
    /// returned [`Watch`] in log order. Dropping it ends the watch.
    pub async fn watch(&self, path: impl IntoPath, kinds: WatchKinds) -> Result<Watch, Error> {
        let path = path.into_path()?;
        if kinds.is_empty() {
            return Err(Error::Config("watch for no kind of event".to_string()));
        }
        let (id, receiver, union) = self.inner.dispatch().add_watch(&path, kinds);
        let op = Op::Watch {
            path: path.clone(),
            kinds: union,
        };
        let watch = Watch {
            inner: Arc::downgrade(&self.inner),
            path,
            id,
            receiver,
        };
        match self.inner.run_op(op).await? {
            OpOutput::Watching => Ok(watch),
            other => Err(unexpected_output(&other)),
        }
    }

    /// Closes the session (its locks are released without lock-delay and its ephemeral nodes
    /// deleted) and stops the client.
    pub async fn close(mut self) -> Result<(), Error> {
        self.inner.check_alive()?;
        let request = Request::CloseSession {
            session: self.inner.session,
        };
        let answer = self.inner.link.call(&request).await;
        self.inner.set_over(SessionState::Closed);
        self.stop();
        match answer? {
            Response::SessionClosed
            | Response::Error(ServerError::Rejected(Rejection::SessionUnknown(_))) => Ok(()),
            Response::Error(error) => Err(self.inner.server_error(error)),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the client without closing its session, as if the process had crashed: no more
    /// KeepAlives, no releases. The master expires the session after its lease; its locks go
    /// into lock-delay and its ephemeral nodes are deleted.
    pub fn abandon(mut self) {
        self.inner.abandoned.store(true, Ordering::SeqCst);
        self.stop();
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if self.inner.abandoned.load(Ordering::SeqCst) || self.inner.state().is_over() {
            self.inner.link.close();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let inner = &self.inner;
        if inner.abandoned.load(Ordering::SeqCst) || inner.state().is_over() {
            inner.link.close();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = inner.clone();
        runtime.spawn(async move {
            let request = Request::CloseSession {
                session: inner.session,
            };
            let _ = inner.link.call(&request).await;
            inner.set_over(SessionState::Closed);
            inner.link.close();
        });
    }
}

/// What the client's tasks, guards and watches share.
pub(crate) struct Inner {
    pub(crate) link: Link,
    session: SessionId,
    seqs: SeqWindow,
    state: watch::Sender<SessionState>,
    lease: Mutex<LeaseView>,
    dispatch: Mutex<Dispatch>,
    /// Set by `abandon`: nothing more is sent on the session's behalf.
    abandoned: AtomicBool,
    grace: Duration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("session", &self.session)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(crate) fn session(&self) -> SessionId {
        self.session
    }

    pub(crate) fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    pub(crate) fn lease(&self) -> LeaseView {
        *self.lease.lock().expect("lease lock")
    }

    pub(crate) fn dispatch(&self) -> MutexGuard<'_, Dispatch> {
        self.dispatch.lock().expect("dispatch lock")
    }

    /// A KeepAlive sent at `sent` was acknowledged with `remaining` of lease.
    pub(crate) fn renew(&self, sent: Instant, remaining: Duration) {
        let view = {
            let mut lease = self.lease.lock().expect("lease lock");
            lease.expires_at = lease.expires_at.max(sent + remaining);
            *lease
        };
        self.set_state(view.judge(Instant::now(), self.grace));
    }

    /// Moves to `judged` unless the session is already over.
    pub(crate) fn set_state(&self, judged: SessionState) {
        self.state.send_if_modified(|state| {
            if state.is_over() || *state == judged {
                return false;
            }
            if judged != SessionState::Safe {
                tracing::warn!(session = %self.session, ?judged, "session state");
            }
            *state = judged;
            true
        });
    }

    pub(crate) fn expire(&self, why: Expiry) {
        self.set_over(SessionState::Expired(why));
    }

    fn set_over(&self, over: SessionState) {
        assert!(over.is_over(), "set_over with a live state");
        self.state.send_if_modified(|state| {
            if state.is_over() {
                return false;
            }
            *state = over;
            true
        });
    }

    /// Resolves once the session is over.
    pub(crate) async fn over(&self) {
        let mut states = self.state.subscribe();
        let _ = states.wait_for(|s| s.is_over()).await;
    }

    /// The error every call answers once the session is over.
    pub(crate) fn over_error(&self) -> Error {
        match self.state() {
            SessionState::Closed => Error::Closed,
            _ => Error::SessionExpired,
        }
    }

    fn check_alive(&self) -> Result<(), Error> {
        if self.abandoned.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if self.state().is_over() {
            return Err(self.over_error());
        }
        Ok(())
    }

    pub(crate) async fn multi_op(&self, op: MultiOp) -> Result<MultiOpReply, Error> {
        self.check_alive()?;
        let permit = self.seqs.acquire().await;
        let request = Request::MultiOp {
            session: self.session,
            seq: permit.seq,
            op,
        };
        let response = self.link.call(&request).await;
        drop(permit);
        match response? {
            Response::MultiOp(reply) => Ok(reply),
            Response::Error(error) => Err(self.server_error(error)),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs one op as a MultiOp of its own; its failure is the call's error.
    pub(crate) async fn run_op(&self, op: Op) -> Result<OpOutput, Error> {
        let reply = self.multi_op(MultiOp::new().then(op)).await?;
        match reply.ops.into_iter().next() {
            Some(OpResult::Done(output)) => Ok(output),
            Some(OpResult::Failed(error)) => Err(Error::Op(error)),
            other => Err(Error::Protocol(format!("unexpected op result {other:?}"))),
        }
    }

    pub(crate) async fn read(
        &self,
        query: Query,
        consistency: Consistency,
    ) -> Result<ReadReply, Error> {
        self.check_alive()?;
        match self
            .link
            .call(&Request::Read { query, consistency })
            .await?
        {
            Response::Read {
                result: Ok(reply), ..
            } => Ok(reply),
            Response::Read {
                result: Err(QueryError::NodeAbsent(path)),
                ..
            } => Err(Error::NotFound(path)),
            Response::Read {
                result: Err(QueryError::NotADirectory(path)),
                ..
            } => Err(Error::NotADirectory(path)),
            Response::Error(error) => Err(self.server_error(error)),
            other => Err(unexpected(&other)),
        }
    }

    /// The sequencer of this session's hold on `path` in `mode`, if it holds it; `None` while it
    /// still waits; `LockWaitCancelled` if it does neither.
    pub(crate) async fn held_sequencer(
        &self,
        path: &NodePath,
        mode: LockMode,
    ) -> Result<Option<Sequencer>, Error> {
        let (lock, instance) = match self
            .read(Query::Lock(path.clone()), Consistency::Linearizable)
            .await
        {
            Ok(ReadReply::Lock { lock, instance }) => (lock, instance),
            Ok(other) => return Err(unexpected_read(&other)),
            Err(Error::NotFound(path)) => return Err(Error::LockWaitCancelled(path)),
            Err(error) => return Err(error),
        };
        let held = lock
            .holders
            .iter()
            .find(|(session, held_mode, _)| *session == self.session && *held_mode == mode);
        if let Some((_, _, lock_generation)) = held {
            return Ok(Some(Sequencer {
                path: path.clone(),
                instance,
                mode,
                lock_generation: *lock_generation,
            }));
        }
        if lock
            .waiters
            .iter()
            .any(|(session, _)| *session == self.session)
        {
            return Ok(None);
        }
        Err(Error::LockWaitCancelled(path.clone()))
    }

    /// Releases (or withdraws a wait for) `path`'s lock in the background, best effort.
    pub(crate) fn release_in_background(self: &Arc<Inner>, path: NodePath) {
        if self.abandoned.load(Ordering::SeqCst) || self.state().is_over() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            if let Err(error) = inner.run_op(Op::Release { path: path.clone() }).await {
                tracing::debug!(%path, %error, "background release failed");
            }
        });
    }

    /// Tells the server the kinds still watched on `path` (nothing: the watch is removed).
    pub(crate) fn update_server_watch(self: &Arc<Inner>, path: NodePath, kinds: WatchKinds) {
        if self.abandoned.load(Ordering::SeqCst) || self.state().is_over() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let _ = inner.run_op(Op::Watch { path, kinds }).await;
        });
    }

    /// A server error that no retry fixes, as the client's error.
    pub(crate) fn server_error(&self, error: ServerError) -> Error {
        match error {
            ServerError::Rejected(Rejection::SessionUnknown(_)) => {
                self.expire(Expiry::ByMaster);
                Error::SessionExpired
            }
            ServerError::Rejected(Rejection::SeqForgotten { .. }) => Error::OutcomeUnknown,
            ServerError::Rejected(rejection) => Error::Rejected(rejection),
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// Hands out request numbers so that every outstanding request stays within the database's
/// reply cache: a new number is at most `SESSION_REPLIES_MAX - 1` above the lowest outstanding
/// one, so however the requests complete, a retried one is always among the highest
/// `SESSION_REPLIES_MAX` numbers the session has used, and its reply is remembered.
#[derive(Debug, Default)]
struct SeqWindow {
    state: Mutex<SeqState>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct SeqState {
    next: u64,
    /// Invariant: every element is below `next` and at least `next - SESSION_REPLIES_MAX`.
    outstanding: BTreeSet<u64>,
}

/// An outstanding request number; dropping it frees its place in the window.
struct SeqPermit<'a> {
    window: &'a SeqWindow,
    seq: RequestSeq,
}

impl SeqWindow {
    async fn acquire(&self) -> SeqPermit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("seq lock");
                let lowest = state.outstanding.first().copied().unwrap_or(state.next);
                if state.next < lowest + SESSION_REPLIES_MAX as u64 {
                    let seq = state.next;
                    state.next += 1;
                    state.outstanding.insert(seq);
                    return SeqPermit {
                        window: self,
                        seq: RequestSeq(seq),
                    };
                }
            }
            freed.await;
        }
    }
}

impl Drop for SeqPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.window.state.lock().expect("seq lock");
        state.outstanding.remove(&self.seq.0);
        drop(state);
        self.window.freed.notify_waiters();
    }
}

fn unexpected(response: &Response) -> Error {
    Error::Protocol(format!("unexpected response {response:?}"))
}

fn unexpected_read(reply: &ReadReply) -> Error {
    Error::Protocol(format!("unexpected read reply {reply:?}"))
}

fn unexpected_output(output: &OpOutput) -> Error {
    Error::Protocol(format!("unexpected op output {output:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_numbers_stay_within_the_reply_cache() {
        let window = SeqWindow::default();
        let first = window.acquire().await;
        let mut later = Vec::new();
        for _ in 1..SESSION_REPLIES_MAX {
            later.push(window.acquire().await);
        }
        // With the lowest still outstanding, the window is full.
        let blocked = tokio::time::timeout(Duration::from_millis(20), window.acquire()).await;
        assert!(blocked.is_err());
        // Completing later numbers does not help: the lowest still bounds the window.
        later.clear();
        let blocked = tokio::time::timeout(Duration::from_millis(20), window.acquire()).await;
        assert!(blocked.is_err());
        assert_eq!(first.seq, RequestSeq(0));
        drop(first);
        let next = window.acquire().await;
        assert_eq!(next.seq, RequestSeq(SESSION_REPLIES_MAX as u64));
    }
}
