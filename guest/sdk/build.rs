//! Reads the WIT package's version from `wit/policy.wit`, so that it is written in one place.

fn main() {
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/policy.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text =
        std::fs::read_to_string(&wit).unwrap_or_else(|e| panic!("reading {}: {e}", wit.display()));
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package flowgate:policy@"))
        .and_then(|v| v.strip_suffix(';'))
        .unwrap_or_else(|| {
            panic!(
                "{} names no `package flowgate:policy@VERSION;`",
                wit.display()
            )
        });
    println!("cargo:rustc-env=FLOWGATE_WIT_VERSION={version}");
}
