//! Replays every committed fuzz corpus entry (`fuzz/corpus/<target>/*`) through the body its
//! fuzz target runs, on the stable toolchain: a crash once found stays fixed.

use std::path::PathBuf;

/// Runs `target`'s body on each file of its corpus; fails naming every file that panics.
fn replay(target: &str) {
    let body = fuzz_bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, body)| *body)
        .unwrap_or_else(|| panic!("no target {target}"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus entries fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        #[test]
        fn every_target_has_a_replay_test() {
            let tested = [$(stringify!($target)),*];
            for (name, _) in fuzz_bodies::TARGETS {
                assert!(tested.contains(name), "no replay test for {name}");
            }
        }
    };
}

replay_tests!(frame, dispatch, handshake, scenario, rule, sh);
