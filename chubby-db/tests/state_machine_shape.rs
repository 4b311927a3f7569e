//! The database wraps into `replicated-log`'s `StateMachine` trait in a few lines. The trait is
//! copied here (the crate does not depend on the log) so this test breaks if the shapes drift.

use chubby_db::{Applied, Command, Database, Reply};
use std::io::{self, Read, Write};

/// `replicated-log`'s `StateMachine`, with its own `Slot`, copied verbatim (hence the lint).
#[allow(clippy::type_complexity)]
trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    fn apply(&mut self, slot: LogSlot, entry: &[u8]) -> Self::Output;
    fn snapshot(&self) -> Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;
    fn restore(&mut self, snapshot: &mut dyn Read) -> io::Result<()>;
    fn reset(&mut self);
    fn digest(&self) -> u64;
}

#[derive(Clone, Copy)]
struct LogSlot(u64);

struct Db(Database);

impl StateMachine for Db {
    type Output = Applied;
    fn apply(&mut self, slot: LogSlot, entry: &[u8]) -> Applied {
        self.0.apply_bytes(chubby_db::Slot(slot.0), entry)
    }
    fn snapshot(&self) -> chubby_db::SnapshotWriter {
        self.0.snapshot().into_writer()
    }
    fn restore(&mut self, snapshot: &mut dyn Read) -> io::Result<()> {
        Ok(self.0.restore(snapshot)?)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn digest(&self) -> u64 {
        self.0.digest()
    }
}

#[test]
fn the_database_is_a_state_machine() {
    let mut a = Db(Database::new(Default::default()));
    let open = Command::OpenSession {
        now_ms: 1,
        lease_ms: None,
    }
    .encode();
    assert!(matches!(
        a.apply(LogSlot(1), &open).reply,
        Reply::SessionOpened { .. }
    ));
    let write = a.snapshot();
    let mut bytes = Vec::new();
    write(&mut bytes).unwrap();
    let mut b = Db(Database::new(Default::default()));
    b.restore(&mut &bytes[..]).unwrap();
    assert_eq!(a.digest(), b.digest());
    let error = b.restore(&mut &bytes[1..]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    b.reset();
    assert_eq!(b.digest(), Db(Database::new(Default::default())).digest());
}
