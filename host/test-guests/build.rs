//! Builds each variant of `guest/testing` for wasm32-wasip2, the way `host/build.rs` builds
//! the default guest, and leaves them in OUT_DIR for `src/lib.rs` to embed.

#![allow(clippy::expect_used)] // a build script fails by panicking, with its message

use std::env;
use std::path::PathBuf;
use std::process::Command;

const VARIANTS: [&str; 5] = ["honest-v2", "trap", "spin", "hog", "short"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in [
        "guest/testing/src",
        "guest/testing/Cargo.toml",
        "guest/policy/src",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for variant in VARIANTS {
        // One target dir for all variants: only the guest crate itself differs between them.
        let target_dir = root.join("target/guest-testing");
        let status = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "--features",
                variant,
                "--manifest-path",
            ])
            .arg(root.join("guest/testing/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_MAKEFLAGS")
            .status()
            .expect("could not start cargo to build a test guest");
        assert!(
            status.success(),
            "building the `{variant}` test guest failed"
        );
        let built = target_dir.join("wasm32-wasip2/release/flowgate_testing_guest.wasm");
        std::fs::copy(&built, out_dir.join(format!("{variant}.wasm")))
            .expect("copying a test guest into OUT_DIR");
    }
}
