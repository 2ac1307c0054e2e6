//! Builds the default policy module (`guest/default`) for wasm32-wasip2 and leaves it in
//! OUT_DIR, where `src/lib.rs` embeds it (the guests are a workspace of their own, with their
//! own release profile); bundles the conformance cases; reads the WIT version from `wit/`.

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
    watch_guests(&root);
    let target_dir = guest_target_dir(&root);
    let built = build_guests(&root, &["flowgate-guest"], &target_dir);
    std::fs::copy(&built[0], out_dir.join("flowgate_guest.wasm"))
        .unwrap_or_else(|e| panic!("copying {} into OUT_DIR: {e}", built[0].display()));
    wit_version(&root);
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

/// Reads the WIT package's version from `wit/policy.wit` into `FLOWGATE_WIT_VERSION`, so that
/// it is written in one place.
fn wit_version(root: &std::path::Path) {
    let wit = root.join("wit/policy.wit");
    let text = std::fs::read_to_string(&wit).expect("reading wit/policy.wit");
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package flowgate:policy@"))
        .and_then(|v| v.strip_suffix(';'))
        .expect("wit/policy.wit names its package `flowgate:policy@VERSION`");
    println!("cargo:rustc-env=FLOWGATE_WIT_VERSION={version}");
}
