//! Builds the test guests of `guest/testing`, and the example module of `guest/examples`, for
//! wasm32-wasip2 the way `host/build.rs` builds the default guest, and leaves them in OUT_DIR
//! for `src/lib.rs` to embed.

#![allow(clippy::expect_used)] // a build script fails by panicking, with its message

use std::env;
use std::path::PathBuf;

include!("../guest_build.rs");

const VARIANTS: [&str; 11] = [
    "honest-v2",
    "trap",
    "spin",
    "hog",
    "short",
    "null",
    "wrong",
    "unshared",
    "drifting",
    "unknown",
    "garbled",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    watch_guests(&root);
    // The test guests and the example module, in one nested build.
    let mut packages: Vec<String> = VARIANTS
        .iter()
        .map(|v| format!("flowgate-test-{v}"))
        .collect();
    packages.push("flowgate-deny-list".into());
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    let built = build_guests(&root, &names, &guest_target_dir(&root));
    let files = VARIANTS.iter().copied().chain(["deny-list"]);
    for (file, path) in files.zip(built) {
        std::fs::copy(&path, out_dir.join(format!("{file}.wasm")))
            .unwrap_or_else(|e| panic!("copying {} into OUT_DIR: {e}", path.display()));
    }
}
