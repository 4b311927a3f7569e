//! Locks: a held lock is a [`LockGuard`] that carries its [`Sequencer`] and releases the lock
//! when dropped (best effort) or explicitly with [`LockGuard::release`].

use crate::client::Inner;
use crate::error::Error;
use crate::events::LockSignal;
use chubby_proto::{LockMode, NodePath, Op, OpOutput, Sequencer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A held lock. The [`Sequencer`] proves it to a downstream server, which checks it with the
/// database (`Client::check_sequencer`) before acting on a request [Chubby 2.4].
///
/// Dropping the guard releases the lock in the background (if a tokio runtime is running); call
/// [`LockGuard::release`] to release it and learn the outcome.
#[derive(Debug)]
pub struct LockGuard {
    inner: Arc<Inner>,
    sequencer: Sequencer,
    lost: Arc<AtomicBool>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(inner: Arc<Inner>, sequencer: Sequencer) -> LockGuard {
        let lost = inner.dispatch().add_held(&sequencer.path);
        LockGuard {
            inner,
            sequencer,
            lost,
            released: false,
        }
    }

    /// The proof of this grant: node, instance, mode and lock generation.
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    pub fn path(&self) -> &NodePath {
        &self.sequencer.path
    }

    pub fn mode(&self) -> LockMode {
        self.sequencer.mode
    }

    /// Whether the lock is known to be gone: its node was deleted under it, or the session is
    /// over. `false` is not a promise (the client may not have heard yet): a downstream server
    /// checks the sequencer.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.inner.state().is_over()
    }

    /// Releases the lock. `Err(Op(NotHolder))`: it was already gone.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.inner.dispatch().remove_held(&self.sequencer.path);
        let path = self.sequencer.path.clone();
        match self.inner.run_op(Op::Release { path }).await? {
            OpOutput::Released | OpOutput::WaitCancelled => Ok(()),
            other => Err(Error::Protocol(format!(
                "unexpected release result {other:?}"
            ))),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.inner.dispatch().remove_held(&self.sequencer.path);
        self.inner
            .release_in_background(self.sequencer.path.clone());
    }
}

/// Withdraws a queued request if the `lock()` future is dropped before it is granted.
struct PendingWait {
    inner: Arc<Inner>,
    path: NodePath,
    armed: bool,
}

impl Drop for PendingWait {
    fn drop(&mut self) {
        self.inner.dispatch().remove_waiter(&self.path);
        if self.armed {
            self.inner.release_in_background(self.path.clone());
        }
    }
}

/// Acquires `path`'s lock in `mode`, waiting in the lock's fair queue if need be.
pub(crate) async fn lock(
    inner: &Arc<Inner>,
    path: NodePath,
    mode: LockMode,
) -> Result<LockGuard, Error> {
    let mut signals = inner.dispatch().add_waiter(&path);
    let mut pending = PendingWait {
        inner: inner.clone(),
        path: path.clone(),
        armed: true,
    };
    let acquire = Op::Acquire {
        path: path.clone(),
        mode,
        wait: true,
    };
    let sequencer = match inner.run_op(acquire).await {
        Ok(OpOutput::Acquired(sequencer)) => sequencer,
        Ok(OpOutput::Queued { .. }) => wait_for_grant(inner, &path, mode, &mut signals).await?,
        Ok(other) => {
            return Err(Error::Protocol(format!(
                "unexpected acquire result {other:?}"
            )))
        }
        Err(error) => {
            // A failed op changed nothing; any other error leaves the request's fate unknown,
            // so the pending wait withdraws it.
            pending.armed = !matches!(error, Error::Op(_));
            return Err(error);
        }
    };
    pending.armed = false;
    drop(pending);
    Ok(LockGuard::new(inner.clone(), sequencer))
}

async fn wait_for_grant(
    inner: &Inner,
    path: &NodePath,
    mode: LockMode,
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<LockSignal>,
) -> Result<Sequencer, Error> {
    loop {
        let signal = tokio::select! {
            signal = signals.recv() => signal,
            _ = inner.over() => None,
        };
        match signal {
            Some(LockSignal::Granted(sequencer)) if sequencer.mode == mode => return Ok(sequencer),
            Some(LockSignal::Granted(_)) => {}
            Some(LockSignal::Cancelled) => return Err(Error::LockWaitCancelled(path.clone())),
            Some(LockSignal::Recheck) => {
                if let Some(sequencer) = inner.held_sequencer(path, mode).await? {
                    return Ok(sequencer);
                }
            }
            None => return Err(inner.over_error()),
        }
    }
}

/// Acquires `path`'s lock in `mode` only if it can be granted now.
pub(crate) async fn try_lock(
    inner: &Arc<Inner>,
    path: NodePath,
    mode: LockMode,
) -> Result<LockGuard, Error> {
    let acquire = Op::Acquire {
        path,
        mode,
        wait: false,
    };
    match inner.run_op(acquire).await? {
        OpOutput::Acquired(sequencer) => Ok(LockGuard::new(inner.clone(), sequencer)),
        other => Err(Error::Protocol(format!(
            "unexpected acquire result {other:?}"
        ))),
    }
}
