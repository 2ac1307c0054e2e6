//! Builds the default policy module (`guest/component`) for wasm32-wasip2 and leaves it in
//! OUT_DIR, where `src/lib.rs` embeds it. The guest is a workspace of its own with its own
//! release profile.

#![allow(clippy::expect_used)] // a build script fails by panicking, with its message

use std::env;
use std::path::PathBuf;

include!("guest_build.rs");

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the repository root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in [
        "guest/component/src",
        "guest/component/Cargo.toml",
        "guest/policy/src",
        "guest/policy/Cargo.toml",
        "wit",
        "host/guest_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=FLOWGATE_GUEST_TARGET_DIR");
    // Shared between builds of the host (debug, release, test): the guest is always release.
    let target_dir = env::var_os("FLOWGATE_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("guest"));
    let built = build_guest(
        &root,
        "guest/component",
        &[],
        &target_dir,
        "flowgate_guest.wasm",
    );
    std::fs::copy(&built, out_dir.join("flowgate_guest.wasm"))
        .unwrap_or_else(|e| panic!("copying {} into OUT_DIR: {e}", built.display()));
}
