//! Generates the remote-hypervisor protocol (`proto/remote.proto`, service
//! `hypervisor.Hypervisor`) into `OUT_DIR` with the pure-Rust `ttrpc-codegen`.

use std::{fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/remote.proto");
    Codegen::new()
        .out_dir(&out)
        .inputs(["proto/remote.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            gen_mod: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(true))
        .run()
        .expect("ttrpc codegen failed");
    // The generated `mod.rs` starts with inner attributes, which `include!` rejects.
    let mod_rs = out.join("mod.rs");
    let text = fs::read_to_string(&mod_rs).expect("generated mod.rs");
    let cleaned: String = text
        .lines()
        .filter(|l| !l.starts_with("#!["))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&mod_rs, cleaned).expect("rewrite mod.rs");
}
