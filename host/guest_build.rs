// Shared by `host/build.rs` and `host/test-guests/build.rs` (with `include!`): builds a guest
// crate for wasm32-wasip2 with a nested cargo into a target dir of its own (the outer cargo
// holds the build lock of ours), and returns the path of the `.wasm` it made.

/// Makes sure the toolchain has the wasm32-wasip2 standard library. `rust-toolchain.toml`
/// names the target, but a rustup told not to install by itself (`RUSTUP_AUTO_INSTALL=0`)
/// leaves it out on a fresh machine: then add it here, once.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = std::process::Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    if std::path::Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2").is_dir() {
        return;
    }
    let mut rustup = std::process::Command::new("rustup");
    rustup.args(["target", "add", "wasm32-wasip2"]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    let added = rustup.status().map(|s| s.success()).unwrap_or(false);
    assert!(added, "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed: install it, then build again");
}

/// Builds `guest/<crate_dir>` with `features`; `artifact` is its `.wasm` file name.
fn build_guest(root: &std::path::Path, crate_dir: &str, features: &[&str], target_dir: &std::path::Path, artifact: &str) -> std::path::PathBuf {
    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join(crate_dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    // The outer build's flags are for the host, not the guest.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS"] {
        command.env_remove(var);
    }
    let status = command.status().expect("could not start cargo to build a guest");
    assert!(status.success(), "building the guest {crate_dir} {features:?} failed");
    target_dir.join("wasm32-wasip2/release").join(artifact)
}
