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

/// Builds the packages `packages` of the guest workspace (`guest/`) into `target_dir`, and
/// returns the path of each one's `.wasm`, in order.
fn build_guests(root: &std::path::Path, packages: &[&str], target_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join("guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // The outer build's flags are for the host, not the guest.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS"] {
        command.env_remove(var);
    }
    let status = command.status().expect("could not start cargo to build the guests");
    assert!(status.success(), "building the guests {packages:?} failed");
    packages
        .iter()
        .map(|p| target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", p.replace('-', "_"))))
        .collect()
}

/// Everything a guest build depends on, for `rerun-if-changed`.
fn watch_guests(root: &std::path::Path) {
    for watched in ["guest", "policy/src", "policy/Cargo.toml", "wit", "host/guest_build.rs", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
}

/// The guests' target dir: shared by every build of the host (the guests are always release).
fn guest_target_dir(root: &std::path::Path) -> std::path::PathBuf {
    println!("cargo:rerun-if-env-changed=FLOWGATE_GUEST_TARGET_DIR");
    std::env::var_os("FLOWGATE_GUEST_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("guest"))
}
