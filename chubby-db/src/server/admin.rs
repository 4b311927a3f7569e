//! Operator requests ([`AdminRequest`]): membership, snapshot save and online restore, and the
//! consistency check. Only a connection that presented the cluster's `client-admin` certificate
//! may send them; anyone else gets [`AdminRefusal::NotAdmin`]. Requests that need the master
//! answer `NotMaster` (a redirect) elsewhere, like client writes.

use super::machine::DatabaseMachine;
use super::wire::{write_frame, WireError};
use super::{respond, Shared};
use crate::admin::{
    AdminRefusal, AdminRequest, AdminResponse, CheckReport, Member, MembersReport, ReplicaStatus,
    CHECK_TIMEOUT_MS_MAX, RESTORE_SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES,
};
use crate::command::Command;
use crate::hash::Fnv1a;
use crate::protocol::{Response, ServerError};
use crate::reply::Reply;
use paxos_core::NodeId;
use replicated_log::{Role, Status, SubmitError};
use std::time::Duration;

/// The identity (see `client_identity`) allowed to send admin requests.
pub(crate) const ADMIN_IDENTITY: &str = "client-admin";

/// Serves one admin request on its stream and finishes it.
pub(crate) async fn serve(
    shared: &Shared,
    identity: &str,
    request: AdminRequest,
    mut send: quinn::SendStream,
) {
    if identity != ADMIN_IDENTITY {
        tracing::warn!(%identity, request = request.kind(), "admin request refused: not the admin certificate");
        let refusal = AdminRefusal::NotAdmin {
            identity: identity.to_string(),
        };
        respond(&mut send, &Response::Admin(AdminResponse::Refused(refusal))).await;
        return;
    }
    tracing::info!(request = request.kind(), "admin request");
    let answer = match request {
        AdminRequest::SnapshotSave => match shared.snapshot_bytes().await {
            Ok((slot, digest, bytes)) => {
                stream_snapshot(&mut send, slot, digest, &bytes).await;
                return;
            }
            Err(error) => Err(error),
        },
        AdminRequest::Members => shared.members().await,
        AdminRequest::ReplicaStatus => shared.replica_status().await,
        AdminRequest::AddLearner { node, peer } => shared.add_learner(node, peer).await,
        AdminRequest::Promote { node } => shared.promote(node).await,
        AdminRequest::Remove { node } => shared.remove(node).await,
        AdminRequest::Restore { snapshot, force } => shared.restore(snapshot, force).await,
        AdminRequest::Check { timeout_ms } => shared.check(timeout_ms).await,
    };
    let response = match answer {
        Ok(admin) => Response::Admin(admin),
        Err(error) => Response::Error(error),
    };
    respond(&mut send, &response).await;
}

/// `SnapshotBegin`, then the bytes in chunks, then the end of the stream.
async fn stream_snapshot(send: &mut quinn::SendStream, slot: u64, digest: u64, bytes: &[u8]) {
    let mut checksum = Fnv1a::new();
    checksum.update(bytes);
    let begin = AdminResponse::SnapshotBegin {
        slot,
        bytes: bytes.len() as u64,
        checksum: checksum.finish(),
        digest,
    };
    let mut written: Result<(), WireError> = write_frame(send, &Response::Admin(begin)).await;
    for chunk in bytes.chunks(SNAPSHOT_CHUNK_BYTES) {
        if written.is_err() {
            break;
        }
        let chunk = Response::Admin(AdminResponse::SnapshotChunk(chunk.to_vec()));
        written = write_frame(send, &chunk).await;
    }
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => tracing::warn!(%error, "snapshot stream not delivered"),
    }
}

impl Shared {
    /// The log's status, or `ShuttingDown` once it stopped.
    async fn status(&self) -> Result<Status, ServerError> {
        self.log.status().await.ok_or(ServerError::ShuttingDown)
    }

    /// The status, if this replica is master; a redirect otherwise.
    async fn master_status(&self) -> Result<Status, ServerError> {
        let status = self.status().await?;
        if status.role != Role::Master {
            return Err(self.not_master(status.master.filter(|m| *m != status.node)));
        }
        Ok(status)
    }

    async fn members(&self) -> Result<AdminResponse, ServerError> {
        let status = self.master_status().await?;
        let member = |node: &NodeId, voter: bool| Member {
            node: node.0,
            voter,
            peer: status.peers.get(node).copied(),
            client: self.client_addresses.get(node).copied(),
        };
        let members = status
            .voters
            .iter()
            .map(|n| member(n, true))
            .chain(status.learners.iter().map(|n| member(n, false)))
            .collect();
        Ok(AdminResponse::Members(MembersReport {
            master: status.node.0,
            chosen_through: status.chosen_through,
            applied_through: status.applied_through,
            members,
        }))
    }

    async fn replica_status(&self) -> Result<AdminResponse, ServerError> {
        let status = self.status().await?;
        let role = match status.role {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Master => "master",
        };
        Ok(AdminResponse::ReplicaStatus(ReplicaStatus {
            node: status.node.0,
            role: role.to_string(),
            master: status.master.map(|n| n.0),
            lease: status.lease,
            rebuilding: status.rebuilding,
            chosen_through: status.chosen_through,
            applied_through: status.applied_through,
            voters: status.voters.iter().map(|n| n.0).collect(),
            learners: status.learners.iter().map(|n| n.0).collect(),
        }))
    }

    async fn add_learner(
        &self,
        node: u64,
        peer: std::net::SocketAddr,
    ) -> Result<AdminResponse, ServerError> {
        let status = self.master_status().await?;
        let id = NodeId(node);
        if status.voters.contains(&id) || status.learners.contains(&id) || node == 0 {
            return Ok(refused(AdminRefusal::AlreadyMember { node }));
        }
        self.membership_answer(self.log.add_learner(id, peer).await)
    }

    async fn promote(&self, node: u64) -> Result<AdminResponse, ServerError> {
        let status = self.master_status().await?;
        let id = NodeId(node);
        if status.voters.contains(&id) {
            return Ok(refused(AdminRefusal::AlreadyVoter { node }));
        }
        if !status.learners.contains(&id) {
            return Ok(refused(AdminRefusal::UnknownNode { node }));
        }
        self.membership_answer(self.log.promote(id).await)
    }

    async fn remove(&self, node: u64) -> Result<AdminResponse, ServerError> {
        let status = self.master_status().await?;
        let id = NodeId(node);
        let voter = status.voters.contains(&id);
        if !voter && !status.learners.contains(&id) {
            return Ok(refused(AdminRefusal::UnknownNode { node }));
        }
        if voter && status.voters.len() <= 1 {
            return Ok(refused(AdminRefusal::LastVoter { node }));
        }
        self.membership_answer(self.log.remove(id).await)
    }

    /// A membership change's outcome: chosen, refused by the log (typed), or a server error.
    fn membership_answer(
        &self,
        result: Result<paxos_core::Slot, SubmitError>,
    ) -> Result<AdminResponse, ServerError> {
        match result {
            Ok(slot) => Ok(AdminResponse::MembershipChanged { slot: slot.0 }),
            Err(SubmitError::Refused(why)) => Ok(refused(AdminRefusal::Membership { why })),
            Err(error) => Err(self.submit_error(error)),
        }
    }

    /// A snapshot of the database under the master's lease: (slot, digest, bytes).
    async fn snapshot_bytes(&self) -> Result<(u64, u64, Vec<u8>), ServerError> {
        let snapshot = self
            .log
            .read(|machine: &DatabaseMachine| machine.database().snapshot())
            .await
            .map_err(|error| self.read_error(error))?;
        let (slot, digest) = (snapshot.applied().0, snapshot.digest());
        let written = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            snapshot.write_to(&mut bytes).map(|()| bytes)
        })
        .await;
        match written {
            Ok(Ok(bytes)) => Ok((slot, digest, bytes)),
            Ok(Err(error)) => Err(ServerError::BadRequest {
                why: format!("writing the snapshot failed: {error}"),
            }),
            Err(error) => Err(ServerError::BadRequest {
                why: format!("the snapshot task failed: {error}"),
            }),
        }
    }

    async fn restore(&self, snapshot: Vec<u8>, force: bool) -> Result<AdminResponse, ServerError> {
        if snapshot.len() > RESTORE_SNAPSHOT_BYTES_MAX {
            return Ok(refused(AdminRefusal::SnapshotTooLarge {
                bytes: snapshot.len() as u64,
                max: RESTORE_SNAPSHOT_BYTES_MAX as u64,
            }));
        }
        self.master_status().await?;
        match self.submit(Command::Restore { snapshot, force }).await? {
            Reply::Restored(report) => Ok(AdminResponse::Restored(report)),
            Reply::RestoreRefused(refusal) => Ok(refused(refusal)),
            other => Err(ServerError::BadRequest {
                why: format!("the database answered a restore with {other:?}"),
            }),
        }
    }

    async fn check(&self, timeout_ms: u64) -> Result<AdminResponse, ServerError> {
        if timeout_ms == 0 || timeout_ms > CHECK_TIMEOUT_MS_MAX {
            return Ok(refused(AdminRefusal::BadRequest {
                why: format!("the check timeout must be 1..={CHECK_TIMEOUT_MS_MAX} ms"),
            }));
        }
        let report = self
            .log
            .check(Duration::from_millis(timeout_ms))
            .await
            .map_err(|error| self.submit_error(error))?;
        Ok(AdminResponse::Check(CheckReport {
            slot: report.slot,
            voters: report.voters.iter().map(|n| n.0).collect(),
            digests: report.digests.iter().map(|(n, d)| (n.0, *d)).collect(),
            complete: report.complete,
        }))
    }
}

fn refused(refusal: AdminRefusal) -> AdminResponse {
    AdminResponse::Refused(refusal)
}
