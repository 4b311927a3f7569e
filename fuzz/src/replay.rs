//! Replays fuzz inputs through target bodies on stable: the corpus files under `corpus/<target>/`
//! and freshly generated seeds. Shared by the corpus tests of `replicated-log` and `chubby-db`
//! (included by path, like the target files).

use std::path::Path;

/// A target's name (its corpus directory) and body.
pub type Target = (&'static str, fn(&[u8]));
/// A generated input: its target, a name and the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// The files under `corpus/<target>/`, in name order; each target must have a corpus.
fn corpus_files(corpus: &Path, target: &str) -> Vec<std::path::PathBuf> {
    let dir = corpus.join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{target} has no corpus");
    files
}

/// Runs every file under `corpus/<target>/` through its target's body.
pub fn corpus(corpus: &Path, targets: &[Target]) {
    for (target, body) in targets {
        for file in corpus_files(corpus, target) {
            let bytes = std::fs::read(&file).expect("a corpus file");
            eprintln!("{target}: {}", file.display());
            body(&bytes);
        }
    }
}

/// Runs every generated seed through its target's body; each target must have a seed.
pub fn seeds(targets: &[Target], seeds: Vec<Seed>) {
    for (target, _) in targets {
        assert!(
            seeds.iter().any(|(t, _, _)| t == target),
            "no seed for {target}"
        );
    }
    for (target, name, bytes) in seeds {
        let (_, body) = targets
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a seed of a known target");
        eprintln!("{target}: seed {name}");
        body(&bytes);
    }
}

/// A short mutational fuzz run on stable, without coverage feedback: `per_target` inputs per
/// target, each a corpus file changed by a few random edits (bit flips, byte changes, cuts,
/// duplicated or inserted runs, a splice with another file of the target). The sequence is fixed
/// by `seed`, so a failure replays; the panic names the target, the file and the mutation index.
pub fn mutations(corpus: &Path, targets: &[Target], per_target: usize, seed: u64) {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: enough to pick edits; not the fuzzer's quality, only its habits.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for (target, body) in targets {
        let files = corpus_files(corpus, target);
        let inputs: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).expect("a corpus file"))
            .collect();
        for index in 0..per_target {
            let pick = (next() % inputs.len() as u64) as usize;
            let mut bytes = inputs[pick].clone();
            for _ in 0..1 + next() % 4 {
                let len = bytes.len().max(1) as u64;
                let at = (next() % len) as usize;
                match next() % 6 {
                    0 if !bytes.is_empty() => {
                        let at = at.min(bytes.len() - 1);
                        bytes[at] ^= 1 << (next() % 8);
                    }
                    1 if !bytes.is_empty() => {
                        let at = at.min(bytes.len() - 1);
                        bytes[at] = next() as u8;
                    }
                    2 => bytes.truncate(at),
                    3 if !bytes.is_empty() => {
                        let end = (at + 1 + (next() % 16) as usize).min(bytes.len());
                        let run = bytes[at.min(end)..end].to_vec();
                        bytes.splice(at..at, run);
                    }
                    4 => {
                        let run: Vec<u8> = (0..1 + next() % 8).map(|_| next() as u8).collect();
                        let at = at.min(bytes.len());
                        bytes.splice(at..at, run);
                    }
                    _ => {
                        let other = &inputs[(next() % inputs.len() as u64) as usize];
                        let from = (next() % other.len().max(1) as u64) as usize;
                        bytes.truncate(at);
                        bytes.extend_from_slice(&other[from.min(other.len())..]);
                    }
                }
            }
            let result = std::panic::catch_unwind(|| body(&bytes));
            if result.is_err() {
                panic!(
                    "{target}: mutation {index} of {} (seed {seed}) panicked; input {bytes:?}",
                    files[pick].display()
                );
            }
        }
    }
}
