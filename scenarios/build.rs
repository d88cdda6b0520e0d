//! Embeds the bundled scenario library (`library/`) in the crate: `$OUT_DIR/library.rs` lists
//! every `.yaml`/`.yml` file under it (any case, recursively, sorted) as `(relative path,
//! include_str!(...))`, so an installed or copied `kata-sim` runs the library it was built with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(_)
                if path.is_file()
                    && path.extension().is_some_and(|x| {
                        x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml")
                    }) =>
            {
                out.push(path);
            }
            _ => {}
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let library = manifest.join("library");
    // A directory: cargo reruns this when any file under it changes, appears or goes.
    println!("cargo::rerun-if-changed=library");
    let mut files = Vec::new();
    walk(&library, &mut files);
    files.sort();
    let mut code = String::from("&[\n");
    for f in &files {
        let rel = f.strip_prefix(&library).expect("found under the library");
        let _ = writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            rel.to_string_lossy(),
            f.to_string_lossy()
        );
    }
    code.push_str("]\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("library.rs"), code).expect("writing $OUT_DIR/library.rs");
}
