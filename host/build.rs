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
    bundle_cases(
        &root.join("fixtures/cases"),
        &out_dir.join("bundled_cases.rs"),
    );
}

/// Writes the conformance cases of `fixtures/cases` as a Rust slice of
/// `(case name, &[(file name, contents)])` for `src/lib.rs` to embed.
fn bundle_cases(dir: &std::path::Path, out: &std::path::Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("reading fixtures/cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    cases.sort();
    let mut code = String::from("&[\n");
    for case in cases {
        println!("cargo:rerun-if-changed={}", case.display());
        let name = case
            .file_name()
            .expect("a case folder has a name")
            .to_string_lossy();
        code += &format!("    ({name:?}, &[\n");
        for file in [
            "config.yaml",
            "packets.jsonl",
            "expected.jsonl",
            "expected-error.json",
        ] {
            let path = case.join(file);
            if path.is_file() {
                code += &format!(
                    "        ({file:?}, include_str!({:?})),\n",
                    path.display().to_string()
                );
            }
        }
        code += "    ]),\n";
    }
    code += "]\n";
    std::fs::write(out, code).expect("writing bundled_cases.rs");
}
