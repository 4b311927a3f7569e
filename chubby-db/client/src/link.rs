//! The client's link to the cluster: one QUIC connection at a time, to the replica believed to be
//! master, and the retry loop every request goes through.
//!
//! A request is encoded once and sent unchanged on every attempt (a MultiOp keeps its request
//! number, so the database applies it at most once). An attempt that fails on the connection, or
//! an answer that says "not here" or "not now", leads to another attempt, after a backoff, until
//! the request's deadline:
//!
//! - `NotMaster` with the master's address: connect there next (a redirect);
//! - `NotMaster` without one, `ShuttingDown`, or a broken connection: try the next replica;
//! - `Unavailable` or `OutcomeUnknown`: the same replica again.
//!
//! A TLS refusal ends the request at once: every replica would refuse the same certificate.

use crate::config::Timeouts;
use crate::error::Error;
use chubby_proto::limits::FRAME_HEADER_BYTES;
use chubby_proto::protocol::{decode_payload, encode_frame, payload_length};
use chubby_proto::{Request, Response, ServerError};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First and largest pause between attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a replica that could not be reached is passed over when picking the next one.
const UNREACHABLE_PENALTY: Duration = Duration::from_secs(1);

pub(crate) struct Link {
    endpoint: quinn::Endpoint,
    /// The name sent in the TLS handshake (the verifier checks the replica's own name instead).
    server_name: String,
    replicas: Vec<SocketAddr>,
    timeouts: Timeouts,
    state: Mutex<LinkState>,
    /// Bumped each time the link moves to a new connection, so the event stream follows it.
    moved: watch::Sender<u64>,
}

#[derive(Default)]
struct LinkState {
    current: Option<quinn::Connection>,
    /// Where the last redirect pointed.
    redirect: Option<SocketAddr>,
    /// Round-robin position in `replicas`.
    next: usize,
    unreachable_until: BTreeMap<SocketAddr, Instant>,
    generation: u64,
}

/// Why one attempt failed.
pub(crate) enum AttemptError {
    /// Try again (maybe elsewhere); the text is for the final error.
    Transient(String),
    /// Stop: the connection was refused at the TLS level.
    Refused(String),
}

impl Link {
    pub fn new(
        endpoint: quinn::Endpoint,
        cluster: u64,
        replicas: Vec<SocketAddr>,
        timeouts: Timeouts,
    ) -> Link {
        Link {
            endpoint,
            server_name: format!("chubby.{}", crate::tls::cluster_domain(cluster)),
            replicas,
            timeouts,
            state: Mutex::new(LinkState::default()),
            moved: watch::Sender::new(0),
        }
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Sends `request` until it is answered, within the request timeout.
    pub async fn call(&self, request: &Request) -> Result<Response, Error> {
        self.call_until(request, Instant::now() + self.timeouts.request)
            .await
    }

    /// Sends `request` until it is answered or `deadline` passes.
    pub async fn call_until(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, Error> {
        let frame = encode_frame(request).map_err(|e| Error::Protocol(format!("request: {e}")))?;
        let mut backoff = BACKOFF_MIN;
        loop {
            let why = match self.attempt(&frame, deadline).await {
                Ok(Response::Error(error)) if error.retryable() => {
                    self.on_refusal(&error);
                    error.to_string()
                }
                Ok(response) => return Ok(response),
                Err(AttemptError::Refused(why)) => return Err(Error::Refused { why }),
                Err(AttemptError::Transient(why)) => why,
            };
            tracing::debug!(request = request.kind(), %why, "attempt failed; retrying");
            if Instant::now() + backoff >= deadline {
                return Err(Error::Unavailable { why });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn attempt(&self, frame: &[u8], deadline: Instant) -> Result<Response, AttemptError> {
        let connection = self.connection().await?;
        let budget = self
            .timeouts
            .attempt
            .min(deadline.saturating_duration_since(Instant::now()));
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(frame).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_frame::<Response>(&mut recv).await
        };
        let outcome = tokio::time::timeout(budget, exchange).await;
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(why)) => Err(self.connection_failed(&connection, why)),
            Err(_) => Err(self.connection_failed(&connection, "attempt timed out".to_string())),
        }
    }

    /// After a failed exchange: forget the connection if it is closed, and classify the failure.
    fn connection_failed(&self, connection: &quinn::Connection, why: String) -> AttemptError {
        match connection.close_reason() {
            Some(reason) => {
                self.drop_connection(connection);
                classify(&reason)
            }
            None => AttemptError::Transient(why),
        }
    }

    /// The current connection, or a new one to the next candidate replica.
    async fn connection(&self) -> Result<quinn::Connection, AttemptError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let address = self.next_candidate();
        let connecting = self
            .endpoint
            .connect(address, &self.server_name)
            .map_err(|e| AttemptError::Transient(format!("{address}: {e}")))?;
        let connection = match tokio::time::timeout(self.timeouts.connect, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                self.mark_unreachable(address);
                return Err(match classify(&error) {
                    AttemptError::Refused(why) => {
                        AttemptError::Refused(format!("{address}: {why}"))
                    }
                    AttemptError::Transient(why) => {
                        AttemptError::Transient(format!("{address}: {why}"))
                    }
                });
            }
            Err(_) => {
                self.mark_unreachable(address);
                return Err(AttemptError::Transient(format!(
                    "{address}: connect timed out"
                )));
            }
        };
        let mut state = self.state.lock().expect("link lock");
        state.current = Some(connection.clone());
        state.generation += 1;
        self.moved.send_replace(state.generation);
        Ok(connection)
    }

    /// The connection requests go over now, if it is open.
    fn current(&self) -> Option<quinn::Connection> {
        let mut state = self.state.lock().expect("link lock");
        match &state.current {
            Some(connection) if connection.close_reason().is_none() => Some(connection.clone()),
            Some(_) => {
                state.current = None;
                None
            }
            None => None,
        }
    }

    /// The redirect target if there is one, else the next replica not recently unreachable.
    fn next_candidate(&self) -> SocketAddr {
        let mut state = self.state.lock().expect("link lock");
        if let Some(address) = state.redirect.take() {
            return address;
        }
        let now = Instant::now();
        let count = self.replicas.len();
        for _ in 0..count {
            let address = self.replicas[state.next % count];
            state.next = (state.next + 1) % count;
            if state
                .unreachable_until
                .get(&address)
                .is_none_or(|until| *until <= now)
            {
                return address;
            }
        }
        let address = self.replicas[state.next % count];
        state.next = (state.next + 1) % count;
        address
    }

    fn mark_unreachable(&self, address: SocketAddr) {
        let mut state = self.state.lock().expect("link lock");
        state
            .unreachable_until
            .insert(address, Instant::now() + UNREACHABLE_PENALTY);
    }

    /// Acts on an answer that says "not here" or "not now".
    fn on_refusal(&self, error: &ServerError) {
        match error {
            ServerError::NotMaster { master } => {
                let current = self.current();
                if let Some(connection) = &current {
                    self.drop_connection(connection);
                }
                let mut state = self.state.lock().expect("link lock");
                state.redirect = master.and_then(|hint| hint.address).filter(|address| {
                    current
                        .as_ref()
                        .is_none_or(|c| c.remote_address() != *address)
                });
            }
            ServerError::ShuttingDown => {
                if let Some(connection) = self.current() {
                    self.drop_connection(&connection);
                }
            }
            _ => {}
        }
    }

    fn drop_connection(&self, connection: &quinn::Connection) {
        let mut state = self.state.lock().expect("link lock");
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.stable_id() == connection.stable_id())
        {
            state.current = None;
            connection.close(0u32.into(), b"moving to another replica");
        }
    }

    /// A connection for the event stream: the one requests use, or a new one.
    pub async fn event_connection(&self) -> Result<quinn::Connection, String> {
        self.connection().await.map_err(|error| match error {
            AttemptError::Transient(why) | AttemptError::Refused(why) => why,
        })
    }

    /// Tells when the link moves to another connection.
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Closes every connection (the client is done).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"client closed");
    }
}

/// A closed connection is a TLS refusal if its error code is a TLS alert (QUIC's crypto error
/// range, 0x100 to 0x1ff) or the server's "unknown identity" close; anything else is transient.
fn classify(error: &quinn::ConnectionError) -> AttemptError {
    let tls_alert = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) if tls_alert(e.code) => {
            AttemptError::Refused(format!("TLS: {e}"))
        }
        quinn::ConnectionError::ConnectionClosed(close) if tls_alert(close.error_code) => {
            AttemptError::Refused(format!("the server refused the TLS handshake: {close}"))
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == UNKNOWN_IDENTITY.into() =>
        {
            AttemptError::Refused(format!(
                "the server does not accept this certificate: {close}"
            ))
        }
        other => AttemptError::Transient(other.to_string()),
    }
}

/// The server's close code for a certificate that names no identity of the cluster.
const UNKNOWN_IDENTITY: u32 = 2;

/// Reads one frame, checking its length before allocating for it.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    read_exact(recv, &mut header).await?;
    let length = payload_length(header).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; length];
    read_exact(recv, &mut payload).await?;
    decode_payload(&payload).map_err(|e| e.to_string())
}

async fn read_exact(recv: &mut quinn::RecvStream, buffer: &mut [u8]) -> Result<(), String> {
    recv.read_exact(buffer).await.map_err(|error| match error {
        quinn::ReadExactError::FinishedEarly(_) => {
            "stream finished before a whole frame".to_string()
        }
        quinn::ReadExactError::ReadError(error) => error.to_string(),
    })
}
