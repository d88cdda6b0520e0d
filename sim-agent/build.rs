//! Generates the Kata agent protocol (protobuf messages and ttrpc stubs) into `OUT_DIR`.
//!
//! The schema lives in `proto/`; the generator is the pure-Rust `ttrpc-codegen`, so no `protoc`
//! binary is needed. Nothing here writes to the source tree.

use std::{fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let protos = [
        "agent.proto",
        "types.proto",
        "oci.proto",
        "csi.proto",
        "health.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    Codegen::new()
        .out_dir(&out)
        .inputs(protos.iter().map(|p| format!("proto/{p}")))
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
