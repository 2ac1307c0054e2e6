//! Builds each variant of `guest/testing`, and the example module of `guest/examples`, for
//! wasm32-wasip2 the way `host/build.rs` builds the default guest, and leaves them in OUT_DIR
//! for `src/lib.rs` to embed.

#![allow(clippy::expect_used)] // a build script fails by panicking, with its message

use std::env;
use std::path::PathBuf;

include!("../guest_build.rs");

const VARIANTS: [&str; 7] = ["honest-v2", "trap", "spin", "hog", "short", "null", "wrong"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in [
        "guest/testing/src",
        "guest/testing/Cargo.toml",
        "guest/examples/deny-list/src",
        "guest/examples/deny-list/Cargo.toml",
        "guest/component/src/convert.rs",
        "guest/policy/src",
        "wit",
        "host/guest_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // One target dir for all variants: only the guest crate itself differs between them.
    let target_dir = root.join("target/guest-testing");
    for variant in VARIANTS {
        let built = build_guest(
            &root,
            "guest/testing",
            &[variant],
            &target_dir,
            "flowgate_testing_guest.wasm",
        );
        std::fs::copy(&built, out_dir.join(format!("{variant}.wasm")))
            .expect("copying a test guest into OUT_DIR");
    }
    // The example module of guest/examples, as an author would build it.
    let built = build_guest(
        &root,
        "guest/examples/deny-list",
        &[],
        &root.join("target/guest-examples"),
        "flowgate_deny_list.wasm",
    );
    std::fs::copy(&built, out_dir.join("deny-list.wasm"))
        .expect("copying the example module into OUT_DIR");
}
