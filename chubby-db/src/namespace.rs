//! The namespace ops: create, set, delete, read, watch; and node removal, shared by `Delete` and
//! the end of an ephemeral node's session.

use crate::command::{NodeKind, WatchKinds};
use crate::database::Database;
use crate::event::EventKind;
use crate::hash::content_checksum;
use crate::limits::{LOCK_DELAY_MS_MAX, MULTIOP_READ_BYTES_MAX, SESSION_WATCHES_MAX};
use crate::path::NodePath;
use crate::reply::{NodeView, OpError, OpOutput};
use crate::state::{Index, LockState, Node};
use crate::types::SessionId;
use std::sync::Arc;

/// The fields of an `Op::Create`.
pub(crate) struct CreateArgs<'a> {
    pub path: &'a NodePath,
    pub kind: NodeKind,
    pub ephemeral: bool,
    pub contents: &'a [u8],
    pub lock_delay_ms: Option<u64>,
}

impl Database {
    pub(crate) fn op_create(
        &mut self,
        session: SessionId,
        args: CreateArgs<'_>,
    ) -> Result<OpOutput, OpError> {
        let path = args.path;
        if self.state.nodes.contains_key(path) {
            return Err(OpError::AlreadyExists);
        }
        let parent = path.parent().expect("the root always exists");
        match self.state.nodes.get(&parent) {
            None => return Err(OpError::ParentAbsent),
            Some(p) if p.kind != NodeKind::Directory => return Err(OpError::ParentNotDirectory),
            Some(p) if p.ephemeral_owner.is_some() => return Err(OpError::ParentEphemeral),
            Some(_) => {}
        }
        if args.kind == NodeKind::Directory && !args.contents.is_empty() {
            return Err(OpError::NotAFile);
        }
        self.check_contents(args.contents)?;
        let lock_delay_ms = args
            .lock_delay_ms
            .unwrap_or(self.state.config.lock_delay_ms_default);
        if lock_delay_ms > LOCK_DELAY_MS_MAX {
            return Err(OpError::LockDelayTooLong {
                lock_delay_ms,
                max: LOCK_DELAY_MS_MAX,
            });
        }
        let instance = self.take_instance();
        let node = Node {
            kind: args.kind,
            ephemeral_owner: args.ephemeral.then_some(session),
            instance,
            content_generation: 1,
            lock_generation: 0,
            lock_delay_ms,
            checksum: content_checksum(args.contents),
            contents: Arc::from(args.contents),
        };
        self.put_node(path, Some(Arc::new(node)));
        let created = EventKind::NodeCreated {
            path: path.clone(),
            instance,
        };
        self.notify(path, |k| k.contents, created);
        let added = EventKind::ChildAdded { path: path.clone() };
        self.notify(&parent, |k| k.children, added);
        Ok(OpOutput::Created { instance })
    }

    pub(crate) fn op_set(&mut self, path: &NodePath, contents: &[u8]) -> Result<OpOutput, OpError> {
        let Some(old) = self.state.nodes.get(path).cloned() else {
            return Err(OpError::NodeAbsent);
        };
        if old.kind != NodeKind::File {
            return Err(OpError::NotAFile);
        }
        self.check_contents(contents)?;
        let node = Node {
            content_generation: old.content_generation.saturating_add(1),
            checksum: content_checksum(contents),
            contents: Arc::from(contents),
            ..(*old).clone()
        };
        let (content_generation, checksum) = (node.content_generation, node.checksum);
        self.put_node(path, Some(Arc::new(node)));
        let changed = EventKind::ContentsChanged {
            path: path.clone(),
            content_generation,
            checksum,
        };
        self.notify(path, |k| k.contents, changed);
        Ok(OpOutput::Set {
            content_generation,
            checksum,
        })
    }

    pub(crate) fn op_delete(&mut self, path: &NodePath) -> Result<OpOutput, OpError> {
        if path.is_root() {
            return Err(OpError::IsRoot);
        }
        if !self.state.nodes.contains_key(path) {
            return Err(OpError::NodeAbsent);
        }
        if self.has_children(path) {
            return Err(OpError::NotEmpty);
        }
        if self.state.locks.contains_key(path) {
            let lock = self.lock_state(path);
            let delayed = lock.delay_until_ms.is_some_and(|t| self.delay_active(t));
            if lock.holders != crate::state::Holders::Free || !lock.waiters.is_empty() || delayed {
                return Err(OpError::Locked);
            }
        }
        self.remove_node(path);
        Ok(OpOutput::Deleted)
    }

    pub(crate) fn op_read(
        &mut self,
        path: &NodePath,
        read_bytes: &mut usize,
    ) -> Result<OpOutput, OpError> {
        let Some(node) = self.state.nodes.get(path) else {
            return Err(OpError::NodeAbsent);
        };
        let total = *read_bytes + node.contents.len();
        if total > MULTIOP_READ_BYTES_MAX {
            return Err(OpError::ReadTooLarge {
                max: MULTIOP_READ_BYTES_MAX,
            });
        }
        *read_bytes = total;
        Ok(OpOutput::Read(NodeView {
            stat: node.stat(),
            contents: node.contents.clone(),
        }))
    }

    pub(crate) fn op_watch(
        &mut self,
        session: SessionId,
        path: &NodePath,
        kinds: WatchKinds,
    ) -> Result<OpOutput, OpError> {
        let is_new = !self.state.watches.contains_key(&(path.clone(), session));
        if is_new
            && !kinds.is_empty()
            && Index::of(&self.index.watches, session).len() >= SESSION_WATCHES_MAX
        {
            return Err(OpError::TooManyWatches {
                max: SESSION_WATCHES_MAX,
            });
        }
        self.put_watch(path, session, kinds);
        Ok(OpOutput::Watching)
    }

    /// Deletes a leaf node whatever its lock: holders lose the lock, waiters are dropped (each
    /// told so), and any lock-delay goes with the node (a re-created node is a new instance, so
    /// old sequencers cannot validate against it).
    pub(crate) fn remove_node(&mut self, path: &NodePath) {
        assert!(!self.has_children(path), "removing a node with children");
        if self.state.locks.contains_key(path) {
            let lock = self.lock_state(path);
            for holder in lock.holder_sessions() {
                self.emit(holder, EventKind::LockLost { path: path.clone() });
            }
            for waiter in &lock.waiters {
                let cancelled = EventKind::LockWaitCancelled { path: path.clone() };
                self.emit(waiter.session, cancelled);
            }
            self.put_lock(path, LockState::idle());
        }
        let instance = self.state.nodes[path].instance;
        self.put_node(path, None);
        let deleted = EventKind::NodeDeleted {
            path: path.clone(),
            instance,
        };
        self.notify(path, |k| k.contents, deleted);
        let parent = path.parent().expect("the root is never removed");
        let removed = EventKind::ChildRemoved { path: path.clone() };
        self.notify(&parent, |k| k.children, removed);
    }

    fn check_contents(&self, contents: &[u8]) -> Result<(), OpError> {
        let max = self.state.config.contents_bytes_max as usize;
        if contents.len() > max {
            return Err(OpError::ContentsTooLarge {
                bytes: contents.len(),
                max,
            });
        }
        Ok(())
    }
}
