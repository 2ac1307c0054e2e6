//! Builds the default policy module (`guest/component`) for wasm32-wasip2 and leaves it in
//! OUT_DIR, where `src/lib.rs` embeds it. The guest is a workspace of its own with its own
//! release profile, built by a nested cargo into its own target dir: the outer cargo holds the
//! build lock of ours.

#![allow(clippy::expect_used)] // a build script fails by panicking, with its message

use std::env;
use std::path::PathBuf;
use std::process::Command;

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
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=FLOWGATE_GUEST_TARGET_DIR");

    // Shared between builds of the host (debug, release, test): the guest is always release.
    let target_dir = env::var_os("FLOWGATE_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("guest"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("guest/component/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host, not the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("could not start cargo to build the guest");
    assert!(
        status.success(),
        "building the guest component (guest/component) failed"
    );
    let built = target_dir.join("wasm32-wasip2/release/flowgate_guest.wasm");
    std::fs::copy(&built, out_dir.join("flowgate_guest.wasm"))
        .unwrap_or_else(|e| panic!("copying {} into OUT_DIR: {e}", built.display()));
}
