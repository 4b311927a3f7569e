//! Writes the seed corpus: every target's generated seeds into `corpus/<target>/seed-<name>`.
//! Files fuzzing added (hash names) are left alone; stale seeds are replaced.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = fuzz::log_targets::seeds()
        .into_iter()
        .chain(fuzz::db_targets::seeds());
    let mut written = 0;
    for (target, name, bytes) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        written += 1;
    }
    for (target, _) in fuzz::targets() {
        std::fs::create_dir_all(root.join(target))?;
    }
    println!("wrote {written} seed files under {}", root.display());
    Ok(())
}
