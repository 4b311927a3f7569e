//! Serving one request: a write becomes a command submitted to the log, a read a query run under
//! the lease (or stale); log errors become the protocol's [`ServerError`]s.

use super::machine::DatabaseMachine;
use super::Shared;
use crate::command::{Command, MultiOp};
use crate::database::Database;
use crate::protocol::{
    Consistency, MasterHint, Query, ReadReply, Request, Response, ServerError, Unavailable,
};
use crate::reply::{QueryError, Rejection, Reply};
use crate::types::{RequestSeq, SessionId};
use paxos_core::NodeId;
use replicated_log::{ReadError, SubmitError};

impl Shared {
    /// The response to a request other than `Subscribe`; `None` when fault injection drops it.
    pub(crate) async fn handle(&self, request: Request) -> Option<Response> {
        let response = match request {
            Request::OpenSession { lease_ms } => self.open_session(lease_ms).await,
            Request::KeepAlive { session } => self.keep_alive(session).await,
            Request::CloseSession { session } => self.close_session(session).await,
            Request::MultiOp { session, seq, op } => {
                let response = self.multi_op(session, seq, op).await;
                if response.is_ok() && self.drop_reply() {
                    return None;
                }
                response
            }
            Request::Read { query, consistency } => self.read(query, consistency).await,
            Request::Subscribe { .. } | Request::Admin(_) => Err(ServerError::BadRequest {
                why: "subscriptions and admin requests are served on their own streams".to_string(),
            }),
        };
        Some(response.unwrap_or_else(Response::Error))
    }

    async fn open_session(&self, lease_ms: Option<u64>) -> Result<Response, ServerError> {
        let now_ms = self.clock.now_ms();
        match self
            .submit(Command::OpenSession { now_ms, lease_ms })
            .await?
        {
            Reply::SessionOpened {
                session,
                lease_until_ms,
                lease_remaining_ms,
            } => Ok(Response::SessionOpened {
                session,
                lease_ms: lease_ms.unwrap_or(self.lease_ms_default),
                lease_until_ms,
                lease_remaining_ms,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn keep_alive(&self, session: SessionId) -> Result<Response, ServerError> {
        let now_ms = self.clock.now_ms();
        match self.submit(Command::KeepAlive { session, now_ms }).await? {
            Reply::KeptAlive {
                lease_until_ms,
                lease_remaining_ms,
            } => Ok(Response::KeptAlive {
                lease_until_ms,
                lease_remaining_ms,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn close_session(&self, session: SessionId) -> Result<Response, ServerError> {
        match self.submit(Command::CloseSession { session }).await? {
            Reply::SessionClosed => Ok(Response::SessionClosed),
            other => Err(unexpected(other)),
        }
    }

    async fn multi_op(
        &self,
        session: SessionId,
        seq: RequestSeq,
        op: MultiOp,
    ) -> Result<Response, ServerError> {
        #[cfg(feature = "planted-bugs")]
        if self.planted.ack_writes_before_commit {
            if let Some(reply) = self.ack_before_commit(session, seq, &op).await {
                return Ok(Response::MultiOp(reply));
            }
        }
        match self.submit(Command::MultiOp { session, seq, op }).await? {
            Reply::MultiOp(reply) => Ok(Response::MultiOp(reply)),
            other => Err(unexpected(other)),
        }
    }

    /// The planted bug `ack_writes_before_commit`: a master answers a plain `Set` as done as soon
    /// as it has handed the command to the log, without waiting for it to be chosen.
    #[cfg(feature = "planted-bugs")]
    async fn ack_before_commit(
        &self,
        session: SessionId,
        seq: RequestSeq,
        op: &MultiOp,
    ) -> Option<crate::reply::MultiOpReply> {
        use crate::command::Op;
        use crate::reply::{Branch, MultiOpReply, OpOutput, OpResult};
        let [Op::Set { contents, .. }] = op.top.as_slice() else {
            return None;
        };
        if !op.guard.is_empty() || !op.fop.is_empty() || self.tenure_starting() {
            return None;
        }
        let status = self.log.status().await?;
        if status.role != replicated_log::Role::Master {
            return None;
        }
        let checksum = crate::content_checksum(contents);
        let log = self.log.clone();
        let command = Command::MultiOp {
            session,
            seq,
            op: op.clone(),
        };
        tokio::spawn(async move {
            let _ = log.submit(command.encode()).await;
        });
        Some(MultiOpReply {
            branch: Branch::Top,
            guards: Vec::new(),
            ops: vec![OpResult::Done(OpOutput::Set {
                content_generation: 0,
                checksum,
            })],
        })
    }

    async fn read(&self, query: Query, consistency: Consistency) -> Result<Response, ServerError> {
        let answer = move |machine: &DatabaseMachine| {
            let db = machine.database();
            (db.applied(), answer_query(db, &query))
        };
        #[cfg(feature = "planted-bugs")]
        let consistency = if self.planted.stale_linearizable_reads {
            Consistency::Stale
        } else {
            consistency
        };
        let answered = match consistency {
            Consistency::Linearizable => self.log.read(answer).await,
            Consistency::Stale => self.log.read_stale(answer).await,
        };
        let (applied, result) = answered.map_err(|error| self.read_error(error))?;
        Ok(Response::Read { applied, result })
    }

    /// Before a subscription: a session the master (under its lease) does not know is refused,
    /// so a client learns its session ended. A follower, which may lag, subscribes anything.
    pub(crate) async fn check_subscription(&self, session: SessionId) -> Result<(), ServerError> {
        let known = self
            .log
            .read(move |m: &DatabaseMachine| m.database().session(session).is_some())
            .await;
        match known {
            Ok(false) => Err(ServerError::Rejected(Rejection::SessionUnknown(session))),
            Ok(true) | Err(ReadError::NotMaster { .. }) | Err(ReadError::NoLease) => Ok(()),
            Err(ReadError::ShuttingDown) => Err(ServerError::ShuttingDown),
        }
    }

    /// Submits `command` and answers the database's reply; a database rejection becomes
    /// `ServerError::Rejected`.
    pub(crate) async fn submit(&self, command: Command) -> Result<Reply, ServerError> {
        if self.tenure_starting() {
            return Err(ServerError::Unavailable(Unavailable::TenureStarting));
        }
        let committed = self
            .log
            .submit(command.encode())
            .await
            .map_err(|error| self.submit_error(error))?;
        match committed.output.reply {
            Reply::Rejected(rejection) => Err(ServerError::Rejected(rejection)),
            reply => Ok(reply),
        }
    }

    pub(crate) fn submit_error(&self, error: SubmitError) -> ServerError {
        match error {
            SubmitError::NotMaster { hint } => self.not_master(hint),
            SubmitError::EpochChanged | SubmitError::Timeout => ServerError::OutcomeUnknown {
                why: error.to_string(),
            },
            SubmitError::Refused(why) => ServerError::Unavailable(Unavailable::Refused { why }),
            SubmitError::ShuttingDown => ServerError::ShuttingDown,
        }
    }

    pub(crate) fn read_error(&self, error: ReadError) -> ServerError {
        match error {
            ReadError::NotMaster { hint } => self.not_master(hint),
            ReadError::NoLease => ServerError::Unavailable(Unavailable::NoLease),
            ReadError::ShuttingDown => ServerError::ShuttingDown,
        }
    }

    /// A redirect: who this replica believes is master, and where clients reach it.
    pub(crate) fn not_master(&self, hint: Option<NodeId>) -> ServerError {
        ServerError::NotMaster {
            master: hint.map(|node| MasterHint {
                node: node.0,
                address: self.client_addresses.get(&node).copied(),
            }),
        }
    }
}

fn answer_query(db: &Database, query: &Query) -> Result<ReadReply, QueryError> {
    match query {
        Query::Get(path) => db.get(path).map(ReadReply::Node),
        Query::Stat(path) => db.stat(path).map(ReadReply::Stat),
        Query::Children(path) => db.children(path).map(ReadReply::Children),
        Query::CheckSequencer(sequencer) => Ok(ReadReply::Sequencer(db.check_sequencer(sequencer))),
        Query::Lock(path) => {
            let lock = db.lock(path)?;
            let instance = db.stat(path)?.instance;
            Ok(ReadReply::Lock { lock, instance })
        }
        Query::Session(session) => Ok(ReadReply::Session(db.session(*session))),
    }
}

/// A reply of the wrong kind for the command: a bug between server and database.
fn unexpected(reply: Reply) -> ServerError {
    panic!("the database answered a command with the wrong kind of reply: {reply:?}")
}
