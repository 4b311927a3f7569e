//! [`Admin`]: the operator's handle on a cluster: membership, snapshot backup and online
//! restore, and the cross-replica consistency check. It opens no session.
//!
//! Servers take these requests only from the cluster's admin certificate (`client-admin.pem`,
//! `ClientConfig::from_cert_dir(.., Some("admin"))`); any other caller gets
//! [`AdminRefusal::NotAdmin`]. Requests find the master and follow redirects like every other
//! call.

use crate::config::ClientConfig;
use crate::error::Error;
use crate::link::{read_frame, Link};
use chubby_proto::protocol::encode_frame;
use chubby_proto::{Request, Response, ServerError};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use chubby_proto::admin::{
    AdminRefusal, AdminRequest, AdminResponse, CheckReport, Member, MembersReport, ReplicaStatus,
    RestoreReport, CHECK_TIMEOUT_MS_MAX, PROMOTE_LAG_SLOTS_MAX_DEFAULT, RESTORE_SNAPSHOT_BYTES_MAX,
};

/// How long one replica is given to answer a status request.
const REPLICA_STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a snapshot save starts over after the master moved mid-way.
const SNAPSHOT_SAVE_ATTEMPTS_MAX: u32 = 5;
/// An attempt may wait this long beyond a check's own timeout.
const CHECK_SLACK: Duration = Duration::from_secs(15);

/// Why an operator request did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// The cluster could not be reached or answered an error (see [`Error`]).
    Client(Error),
    /// The cluster (or this client, for the promote rule) refused the request; the message says
    /// why and what to do next.
    Refused(AdminRefusal),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Client(error) => write!(f, "{error}"),
            AdminError::Refused(refusal) => write!(f, "refused: {refusal}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<Error> for AdminError {
    fn from(error: Error) -> AdminError {
        AdminError::Client(error)
    }
}

/// When [`Admin::promote`] may make a learner a voter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromoteRule {
    /// Only if the learner, asked directly, has applied within `lag_slots_max` slots of what the
    /// master has chosen. `learner_client` is where to ask it; by default its client address from
    /// the master's configuration.
    CaughtUp {
        lag_slots_max: u64,
        learner_client: Option<SocketAddr>,
    },
    /// Without asking: the operator knows better (the learner may then hold up nothing but its
    /// own vote, since a lagging voter is one of the majority only once it catches up).
    Force,
}

/// A snapshot fetched by [`Admin::snapshot_save`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// The slot the database had applied when the snapshot was taken.
    pub slot: u64,
    /// FNV-1a 64 of `bytes`, as the server computed it and this client checked it.
    pub checksum: u64,
    /// The database digest at `slot`.
    pub digest: u64,
    /// The database snapshot format (magic, version, payload, length, CRC-32).
    pub bytes: Vec<u8>,
}

/// An operator's connection to a cluster. See the module docs.
pub struct Admin {
    link: Link,
    endpoint: quinn::Endpoint,
    config: ClientConfig,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("replicas", &self.config.replicas)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Prepares the connection (no request is sent yet, no session opened).
    pub fn new(mut config: ClientConfig) -> Result<Admin, Error> {
        if let Some(why) = config.invalid() {
            return Err(Error::Config(why));
        }
        // A check waits for the voters' digests; an attempt must outlast it.
        let longest = Duration::from_millis(CHECK_TIMEOUT_MS_MAX) + CHECK_SLACK;
        config.timeouts.attempt = config.timeouts.attempt.max(longest);
        let endpoint = crate::tls::client_endpoint(&config)?;
        let link = Link::new(
            endpoint.clone(),
            config.cluster,
            config.replicas.clone(),
            config.timeouts.clone(),
        );
        Ok(Admin {
            link,
            endpoint,
            config,
        })
    }

    async fn call(&self, request: AdminRequest) -> Result<AdminResponse, AdminError> {
        self.call_until(request, Instant::now() + self.config.timeouts.request)
            .await
    }

    async fn call_until(
        &self,
        request: AdminRequest,
        deadline: Instant,
    ) -> Result<AdminResponse, AdminError> {
        match self
            .link
            .call_until(&Request::Admin(request), deadline)
            .await?
        {
            Response::Admin(AdminResponse::Refused(refusal)) => Err(AdminError::Refused(refusal)),
            Response::Admin(answer) => Ok(answer),
            Response::Error(error) => Err(AdminError::Client(server_error(error))),
            other => Err(unexpected(&other)),
        }
    }

    /// The members as the master sees them: voters and learners, with their addresses.
    pub async fn members(&self) -> Result<MembersReport, AdminError> {
        match self.call(AdminRequest::Members).await? {
            AdminResponse::Members(report) => Ok(report),
            other => Err(unexpected_admin(&other)),
        }
    }

    /// What the replica whose client endpoint is `address` says of itself (asked directly,
    /// within a few seconds; no redirect).
    pub async fn replica_status(&self, address: SocketAddr) -> Result<ReplicaStatus, AdminError> {
        let mut timeouts = self.config.timeouts.clone();
        timeouts.request = REPLICA_STATUS_TIMEOUT;
        timeouts.attempt = REPLICA_STATUS_TIMEOUT;
        timeouts.connect = timeouts.connect.min(REPLICA_STATUS_TIMEOUT);
        let link = Link::new(
            self.endpoint.clone(),
            self.config.cluster,
            vec![address],
            timeouts,
        );
        let answer = link
            .call(&Request::Admin(AdminRequest::ReplicaStatus))
            .await;
        match answer? {
            Response::Admin(AdminResponse::ReplicaStatus(status)) => Ok(status),
            Response::Admin(AdminResponse::Refused(refusal)) => Err(AdminError::Refused(refusal)),
            Response::Error(error) => Err(AdminError::Client(server_error(error))),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds `node` as a non-voting member reachable by its peers at `peer`; answers the slot the
    /// change was chosen at. Start the node with `chubbyd --join`; promote it once caught up.
    pub async fn add_learner(&self, node: u64, peer: SocketAddr) -> Result<u64, AdminError> {
        self.membership(AdminRequest::AddLearner { node, peer })
            .await
    }

    /// Makes a learner a voter, under `rule`; answers the slot the change was chosen at.
    pub async fn promote(&self, node: u64, rule: PromoteRule) -> Result<u64, AdminError> {
        let members = self.members().await?;
        let Some(member) = members.members.iter().find(|m| m.node == node) else {
            return Err(AdminError::Refused(AdminRefusal::UnknownNode { node }));
        };
        if member.voter {
            return Err(AdminError::Refused(AdminRefusal::AlreadyVoter { node }));
        }
        if let PromoteRule::CaughtUp {
            lag_slots_max,
            learner_client,
        } = rule
        {
            let unreachable =
                |why: String| AdminError::Refused(AdminRefusal::LearnerUnreachable { node, why });
            let address = learner_client.or(member.client).ok_or_else(|| {
                unreachable("the master's configuration names no client address for it: pass the learner's client address".to_string())
            })?;
            let status = self
                .replica_status(address)
                .await
                .map_err(|e| unreachable(format!("{address}: {e}")))?;
            if status.node != node {
                return Err(unreachable(format!(
                    "{address} answers as node {}",
                    status.node
                )));
            }
            let lag = members
                .chosen_through
                .saturating_sub(status.applied_through);
            if lag > lag_slots_max {
                return Err(AdminError::Refused(AdminRefusal::LearnerBehind {
                    node,
                    applied: status.applied_through,
                    chosen: members.chosen_through,
                    lag_slots_max,
                }));
            }
        }
        self.membership(AdminRequest::Promote { node }).await
    }

    /// Removes a voter or learner for good; answers the slot the change was chosen at.
    pub async fn remove(&self, node: u64) -> Result<u64, AdminError> {
        self.membership(AdminRequest::Remove { node }).await
    }

    async fn membership(&self, request: AdminRequest) -> Result<u64, AdminError> {
        match self.call(request).await? {
            AdminResponse::MembershipChanged { slot } => Ok(slot),
            other => Err(unexpected_admin(&other)),
        }
    }

    /// A consistent snapshot of the database from the master (taken under its lease), checked
    /// against the checksum the master sent.
    pub async fn snapshot_save(&self) -> Result<SavedSnapshot, AdminError> {
        let deadline = Instant::now() + self.config.timeouts.request;
        let mut last = String::new();
        for _ in 0..SNAPSHOT_SAVE_ATTEMPTS_MAX {
            // Lands the link's connection on the master (following redirects).
            self.members().await?;
            match self.fetch_snapshot(deadline).await {
                Ok(saved) => return Ok(saved),
                Err(Fetch::Fatal(error)) => return Err(error),
                Err(Fetch::Retry(why)) => last = why,
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(AdminError::Client(Error::Unavailable { why: last }))
    }

    async fn fetch_snapshot(&self, deadline: Instant) -> Result<SavedSnapshot, Fetch> {
        let connection = self.link.event_connection().await.map_err(Fetch::Retry)?;
        let frame = encode_frame(&Request::Admin(AdminRequest::SnapshotSave))
            .map_err(|e| Fetch::Fatal(Error::Protocol(e.to_string()).into()))?;
        let exchange = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| Fetch::Retry(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| Fetch::Retry(e.to_string()))?;
            let _ = send.finish();
            let first = read_frame::<Response>(&mut recv)
                .await
                .map_err(Fetch::Retry)?;
            let (slot, bytes, checksum, digest) = match first {
                Response::Admin(AdminResponse::SnapshotBegin {
                    slot,
                    bytes,
                    checksum,
                    digest,
                }) => (slot, bytes, checksum, digest),
                Response::Admin(AdminResponse::Refused(refusal)) => {
                    return Err(Fetch::Fatal(AdminError::Refused(refusal)))
                }
                Response::Error(error) if error.retryable() => {
                    return Err(Fetch::Retry(error.to_string()))
                }
                Response::Error(error) => {
                    return Err(Fetch::Fatal(AdminError::Client(server_error(error))))
                }
                other => return Err(Fetch::Fatal(unexpected(&other))),
            };
            let mut received = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0).min(1 << 30));
            while (received.len() as u64) < bytes {
                match read_frame::<Response>(&mut recv)
                    .await
                    .map_err(Fetch::Retry)?
                {
                    Response::Admin(AdminResponse::SnapshotChunk(chunk)) => {
                        received.extend_from_slice(&chunk)
                    }
                    other => return Err(Fetch::Fatal(unexpected(&other))),
                }
            }
            let mut hasher = chubby_proto::hash::Fnv1a::new();
            hasher.update(&received);
            if received.len() as u64 != bytes || hasher.finish() != checksum {
                return Err(Fetch::Retry(format!(
                    "the snapshot arrived damaged ({} of {bytes} bytes, checksum {:016x} instead of {checksum:016x})",
                    received.len(),
                    hasher.finish()
                )));
            }
            Ok(SavedSnapshot {
                slot,
                checksum,
                digest,
                bytes: received,
            })
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(budget, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Fetch::Fatal(AdminError::Client(Error::Unavailable {
                why: "the snapshot did not arrive within the request timeout".to_string(),
            }))),
        }
    }

    /// Replaces the database with `snapshot` through the log (see
    /// [`AdminRequest::Restore`]). Refused over [`RESTORE_SNAPSHOT_BYTES_MAX`] before sending.
    pub async fn restore(
        &self,
        snapshot: Vec<u8>,
        force: bool,
    ) -> Result<RestoreReport, AdminError> {
        if snapshot.len() > RESTORE_SNAPSHOT_BYTES_MAX {
            return Err(AdminError::Refused(AdminRefusal::SnapshotTooLarge {
                bytes: snapshot.len() as u64,
                max: RESTORE_SNAPSHOT_BYTES_MAX as u64,
            }));
        }
        match self.call(AdminRequest::Restore { snapshot, force }).await? {
            AdminResponse::Restored(report) => Ok(report),
            other => Err(unexpected_admin(&other)),
        }
    }

    /// Runs a consistency check now and waits up to `timeout` for every voter's digest.
    pub async fn check(&self, timeout: Duration) -> Result<CheckReport, AdminError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + timeout + CHECK_SLACK;
        match self
            .call_until(AdminRequest::Check { timeout_ms }, deadline)
            .await?
        {
            AdminResponse::Check(report) => Ok(report),
            other => Err(unexpected_admin(&other)),
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.link.close();
    }
}

/// One snapshot fetch's failure: start over (the master moved), or give up.
enum Fetch {
    Retry(String),
    Fatal(AdminError),
}

/// A server error that is final for an admin request (retryable ones were retried until the
/// deadline by the link).
fn server_error(error: ServerError) -> Error {
    match error {
        ServerError::Rejected(rejection) => Error::Rejected(rejection),
        other if other.retryable() => Error::Unavailable {
            why: other.to_string(),
        },
        other => Error::Protocol(other.to_string()),
    }
}

fn unexpected(response: &Response) -> AdminError {
    AdminError::Client(Error::Protocol(format!("unexpected response {response:?}")))
}

fn unexpected_admin(response: &AdminResponse) -> AdminError {
    AdminError::Client(Error::Protocol(format!(
        "unexpected admin response {response:?}"
    )))
}
