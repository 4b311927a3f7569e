//! Replays fuzz inputs through target bodies on stable: the corpus files under `corpus/<target>/`
//! and freshly generated seeds. Shared by the corpus tests of `replicated-log` and `chubby-db`
//! (included by path, like the target files).

use std::path::Path;

/// A target's name (its corpus directory) and body.
pub type Target = (&'static str, fn(&[u8]));
/// A generated input: its target, a name and the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Runs every file under `corpus/<target>/` through its target's body; each target must have a
/// corpus.
pub fn corpus(corpus: &Path, targets: &[Target]) {
    for (target, body) in targets {
        let dir = corpus.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target} has no corpus");
        for file in files {
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
