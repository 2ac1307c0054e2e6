//! The hostile-input suite, caches and files: folders others can write, forged entries,
//! symlinks, temporary files. A second user is `nobody` (uid and gid 65534): the tests that
//! need one run as root and are skipped, with a message, otherwise.

use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flowgate_host::DEFAULT_MODULE;
use flowgate_host::oci::{Cache, Digest, Reference};
use flowgate_host::wasm::{Limits, Runtime};
use flowgate_test_guests as guests;
use sha2::Digest as _;

const NOBODY: u32 = 65534;

/// Whether this test can act as a second user; says why not when it cannot.
fn second_user(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI runs as root, and this test needs a second user"
    );
    eprintln!("skipped: {test} needs root, to act as a second user (uid {NOBODY})");
    false
}

/// A folder of its own for a test, made afresh by the user running the tests, 0755. It is in
/// the system's temporary folder, not below the checkout: `nobody` must reach it, and a
/// checkout may lie below a folder only its owner can enter (`mktemp -d` makes them 0700).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowgate-hostile-cache-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A folder made for `nobody`, mode 0777, as another user leaves one.
fn nobodys_folder(path: &Path) {
    std::fs::create_dir(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// `command` run as `nobody`, with `stdin` written to it; it must succeed.
fn as_nobody(command: &mut Command, stdin: &[u8]) {
    let mut child = command
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "as nobody: {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

/// The file name the artifact cache gives `module`'s compiled entry (the component's sha256
/// and the engine's compatibility hash), as an attacker watching the folder learns it: from
/// a cache of its own that compiled the module once.
fn artifact_entry_name(module: &[u8]) -> String {
    // A folder of its own per call: tests run at once.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch(&format!("learn-name-{n}"));
    let cache = dir.join("cache");
    Runtime::new(Limits::default(), Some(cache.clone()))
        .unwrap()
        .load(module)
        .unwrap();
    let prefix = flowgate_host::hex(&sha256(module));
    let name = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"))
        .expect("the module's compiled entry");
    let _ = std::fs::remove_dir_all(&dir);
    name
}

/// An entry for `module` that holds `impostor`'s compiled artifact instead, sealed as an
/// unkeyed cache seals: sha256(component digest ++ engine hash ++ artifact). Anyone who can
/// read the module and the entry's name can make it.
fn forged_entry(name: &str, module: &[u8], impostor: &[u8]) -> Vec<u8> {
    let engine_hash = name
        .trim_end_matches(".cwasm")
        .rsplit('-')
        .next()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("the engine hash in the entry's name");
    let artifact = Runtime::new(Limits::default(), None)
        .unwrap()
        .engine()
        .precompile_component(impostor)
        .unwrap();
    let mut seal = sha2::Sha256::new();
    seal.update(sha256(module));
    seal.update(engine_hash.to_le_bytes());
    seal.update(&artifact);
    let mut entry = artifact;
    entry.extend_from_slice(&seal.finalize());
    entry
}

/// `flowgate run --json` on the bundled module, configuration and trace, with the artifact
/// cache in `cache` (none: `--no-cache`).
fn run(cache: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command.current_dir(crate::repo()).args(["run", "--json"]);
    match cache {
        Some(dir) => command.env("FLOWGATE_CACHE_DIR", dir),
        None => command.arg("--no-cache"),
    };
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flowgate run: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// The verdicts a run gave, per verdict and drop reason.
fn verdicts(out: &Output) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::json!({"verdicts": json["verdicts"], "drops": json["drops"]})
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cache folder another user made (mode 0777), holding a re-sealed artifact of another
/// module under the bundled module's name, is never read: traffic gets the bundled module's
/// verdicts, and the folder is named in a warning.
#[test]
fn a_cache_folder_another_user_made_is_never_read() {
    if !second_user("a_cache_folder_another_user_made_is_never_read") {
        return;
    }
    let dir = scratch("other-user");
    let cache = dir.join("cache");
    nobodys_folder(&cache);
    let name = artifact_entry_name(DEFAULT_MODULE);
    let forged = forged_entry(&name, DEFAULT_MODULE, guests::NULL);
    as_nobody(
        Command::new("sh")
            .args(["-c", "cat > \"$0\""])
            .arg(cache.join(&name)),
        &forged,
    );
    let clean = run(None);
    let hostile = run(Some(&cache));
    assert_eq!(verdicts(&hostile), verdicts(&clean), "{}", stderr(&hostile));
    assert!(
        stderr(&hostile).contains(&cache.display().to_string()),
        "the refused folder is named: {}",
        stderr(&hostile)
    );
    // Nothing of root's was left in it either.
    let names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from(&name)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An entry in the user's own private cache that the cache did not seal with its key (the
/// unkeyed seal anyone can compute) is ignored with a warning and the module compiled again.
#[test]
fn an_artifact_the_cache_did_not_seal_is_compiled_again() {
    let dir = scratch("unsealed");
    let cache = dir.join("cache");
    let clean = run(Some(&cache));
    let name = artifact_entry_name(DEFAULT_MODULE);
    assert!(cache.join(&name).is_file(), "the first run cached {name}");
    std::fs::write(
        cache.join(&name),
        forged_entry(&name, DEFAULT_MODULE, guests::NULL),
    )
    .unwrap();
    let forged = run(Some(&cache));
    assert_eq!(verdicts(&forged), verdicts(&clean), "{}", stderr(&forged));
    assert!(stderr(&forged).contains("warning:"), "{}", stderr(&forged));
    // And the entry was made anew: the next run reads it without a warning.
    let again = run(Some(&cache));
    assert_eq!(verdicts(&again), verdicts(&clean));
    assert!(!stderr(&again).contains("warning:"), "{}", stderr(&again));
    assert_eq!(verdicts(&clean), verdicts(&run(None)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What each cache writes first, under the names an attacker can predict for this process:
/// symlinks at every such name in `artifacts` (the artifact cache's folder) and
/// `oci` (a module cache's folder, with its `tags` folder).
fn plant_temporary_names(artifacts: &Path, oci: &Path, plant: &dyn Fn(&Path)) {
    let pid = std::process::id();
    let stem = artifact_entry_name(DEFAULT_MODULE).replace(".cwasm", "");
    for n in 0..64 {
        plant(&artifacts.join(format!("{stem}.tmp{pid}-{n}")));
    }
    let (reference, manifest) = oci_entry();
    let hex = &manifest.to_string()["sha256:".len()..];
    plant(&oci.join(format!("{hex}.tmp{pid}")));
    let tag = Digest::of(
        format!(
            "{}/{}:{}",
            reference.registry,
            reference.repository,
            reference.tag.as_deref().unwrap()
        )
        .as_bytes(),
    );
    plant(
        &oci.join("tags")
            .join(format!("{}.tmp{pid}", &tag.to_string()["sha256:".len()..])),
    );
}

fn oci_entry() -> (Reference, Digest) {
    (
        Reference::parse("oci://127.0.0.1:5000/fleet/app:v1").unwrap(),
        Digest::of(b"a manifest"),
    )
}

/// Both caches write an entry of their own, from this process.
fn write_both_caches(artifacts: &Path, oci: &Path) {
    let runtime = Runtime::new(Limits::default(), Some(artifacts.to_owned())).unwrap();
    runtime.load(DEFAULT_MODULE).unwrap();
    let (reference, manifest) = oci_entry();
    let _ = Cache::new(oci.to_owned()).store(&reference, &manifest, DEFAULT_MODULE);
}

/// In folders another user can write, symlinks that user planted at the caches' temporary
/// names never make root write through them: the file they point at keeps its bytes.
#[test]
fn a_symlink_at_a_temporary_name_never_makes_root_overwrite_its_target() {
    if !second_user("a_symlink_at_a_temporary_name_never_makes_root_overwrite_its_target") {
        return;
    }
    let dir = scratch("temp-symlink-other");
    let (artifacts, oci) = (dir.join("artifacts"), dir.join("oci"));
    nobodys_folder(&artifacts);
    nobodys_folder(&oci);
    as_nobody(
        Command::new("mkdir")
            .args(["-m", "0777"])
            .arg(oci.join("tags")),
        b"",
    );
    let victim = dir.join("victim");
    std::fs::write(&victim, b"root's own file").unwrap();
    plant_temporary_names(&artifacts, &oci, &|link| {
        as_nobody(Command::new("ln").arg("-s").arg(&victim).arg(link), b"");
    });
    write_both_caches(&artifacts, &oci);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same in the user's own folders: a temporary file is made afresh, never through a
/// symlink left at a name it might have taken.
#[test]
fn temporary_files_never_follow_symlinks() {
    let dir = scratch("temp-symlink-own");
    let (artifacts, oci) = (dir.join("artifacts"), dir.join("oci"));
    for folder in [&artifacts, &oci, &oci.join("tags")] {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let victim = dir.join("victim");
    std::fs::write(&victim, b"the user's own file").unwrap();
    plant_temporary_names(&artifacts, &oci, &|link| {
        symlink(&victim, link).unwrap();
    });
    write_both_caches(&artifacts, &oci);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the user's own file"
    );
    // Both caches did write their entries, beside the symlinks.
    let runtime = Runtime::new(Limits::default(), Some(artifacts.clone())).unwrap();
    runtime.load(DEFAULT_MODULE).unwrap();
    let (reference, manifest) = oci_entry();
    let (loaded, module) = Cache::new(oci.clone()).load(&reference).unwrap();
    assert_eq!((loaded, module.as_slice()), (manifest, DEFAULT_MODULE));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A module entry sealed as an unkeyed cache seals it: the module, then
/// sha256(manifest digest ++ module).
fn unkeyed_module_entry(manifest: &Digest, module: &[u8]) -> Vec<u8> {
    let mut seal = sha2::Sha256::new();
    seal.update(manifest.0);
    seal.update(module);
    let mut entry = module.to_vec();
    entry.extend_from_slice(&seal.finalize());
    entry
}

/// The module cache likewise: a folder another user made never gives a module, nor does an
/// entry in the user's own folder that the cache did not seal with its key. A gateway whose
/// registry is down then has no module to start from, rather than another user's.
#[test]
fn a_module_cache_entry_the_cache_did_not_seal_is_never_loaded() {
    let dir = scratch("oci-unsealed");
    let (reference, manifest) = oci_entry();
    let pinned = reference.pinned(manifest);
    let own = dir.join("own");
    let cache = Cache::new(own.clone());
    cache.store(&reference, &manifest, DEFAULT_MODULE).unwrap();
    assert_eq!(cache.load(&pinned).unwrap().1, DEFAULT_MODULE);
    let hex = &manifest.to_string()["sha256:".len()..];
    std::fs::write(
        own.join(format!("{hex}.module")),
        unkeyed_module_entry(&manifest, guests::NULL),
    )
    .unwrap();
    assert_eq!(
        cache.load(&pinned),
        None,
        "an unkeyed entry in the user's own cache"
    );
    assert_eq!(cache.load(&reference), None, "by its tag");
    if second_user("a_module_cache_entry_the_cache_did_not_seal_is_never_loaded") {
        let theirs = dir.join("theirs");
        nobodys_folder(&theirs);
        as_nobody(
            Command::new("sh")
                .args(["-c", "cat > \"$0\""])
                .arg(theirs.join(format!("{hex}.module"))),
            &unkeyed_module_entry(&manifest, guests::NULL),
        );
        let cache = Cache::new(theirs.clone());
        assert_eq!(cache.load(&pinned), None, "from another user's folder");
        // Nor is anything written there.
        assert!(cache.store(&reference, &manifest, DEFAULT_MODULE).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The folders above a cache count too: a private cache folder inside a folder another user
/// can write (who could swap it for one of theirs), or reached through a symlink that user
/// made, is not used; a symlink the user made, in a folder only it can write, is followed.
#[test]
fn a_cache_below_a_folder_another_user_can_write_is_not_used() {
    if !second_user("a_cache_below_a_folder_another_user_can_write_is_not_used") {
        return;
    }
    let dir = scratch("parents");
    let shared = dir.join("shared");
    nobodys_folder(&shared);
    let private = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    };
    let entries = |path: &Path| std::fs::read_dir(path).unwrap().count();
    // Root's private folder, inside nobody's.
    let inside = shared.join("cache");
    std::fs::create_dir(&inside).unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A symlink nobody made, to a private folder of root's.
    let target = private("target");
    let link = shared.join("link");
    as_nobody(Command::new("ln").arg("-s").arg(&target).arg(&link), b"");
    let clean = verdicts(&run(None));
    for (cache, holds) in [(&inside, &inside), (&link, &target)] {
        let out = run(Some(cache));
        assert_eq!(verdicts(&out), clean);
        assert!(
            stderr(&out).contains(&shared.display().to_string()),
            "{}: the folder others can write is named: {}",
            cache.display(),
            stderr(&out)
        );
        assert_eq!(entries(holds), 0, "{}: nothing cached", cache.display());
    }
    // A symlink of root's, in root's own folder, to root's private folder: used.
    let target = private("elsewhere");
    let link = dir.join("link");
    symlink(&target, &link).unwrap();
    let out = run(Some(&link));
    assert_eq!(verdicts(&out), clean);
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));
    assert!(entries(&target) > 0, "the artifact was cached");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `replay`'s outputs never share a file, however they are named: `--drops` a dangling
/// symlink to `--out` (directly, through `..`, or through another dangling symlink) is
/// refused and nothing is left behind; existing files named twice are refused unchanged.
#[test]
fn replay_never_loses_the_drops_to_a_symlink() {
    let dir = scratch("replay");
    let input = crate::repo().join("fixtures/pcap/gateway.pcap");
    let config = crate::repo().join("fixtures/pcap/config.yaml");
    let replay = |extra: &[&Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        command
            .current_dir(crate::repo())
            .args(["replay", "--no-cache", "--config"])
            .arg(&config)
            .arg("--pcap")
            .arg(&input);
        for (flag, path) in ["--out", "--drops", "--ambiguous"].iter().zip(extra) {
            command.arg(flag).arg(path);
        }
        command.output().unwrap()
    };
    let out = dir.join("out.pcap");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let cases: [(&str, PathBuf); 3] = [
        ("out.pcap", dir.join("drops.pcap")),
        ("sub/../out.pcap", dir.join("drops-up.pcap")),
        ("hop.pcap", dir.join("drops-hop.pcap")),
    ];
    symlink("out.pcap", dir.join("hop.pcap")).unwrap();
    for (target, drops) in &cases {
        symlink(target, drops).unwrap();
        let result = replay(&[&out, drops]);
        let err = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{target}: {err}");
        assert!(
            err.contains("--drops") && err.contains("is the same file as --out"),
            "{target}: {err}"
        );
        assert!(!out.exists(), "{target}: nothing is left behind");
    }
    // Existing outputs named twice (one through a symlink) keep their bytes.
    std::fs::write(&out, b"an earlier capture").unwrap();
    let ambiguous = dir.join("ambiguous.pcap");
    std::fs::write(&ambiguous, b"another").unwrap();
    let result = replay(&[&ambiguous, &dir.join("drops.pcap"), &out]);
    assert!(!result.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"an earlier capture");
    assert_eq!(std::fs::read(&ambiguous).unwrap(), b"another");
    // Distinct outputs are written, the existing ones from their start.
    std::fs::remove_file(dir.join("drops.pcap")).unwrap();
    let drops = dir.join("drops.pcap");
    let result = replay(&[&out, &drops]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let frames = |path: &Path| {
        let mut reader = flowgate_host::io::pcap::CaptureReader::open(path).unwrap();
        std::iter::from_fn(|| reader.next_frame()).count()
    };
    assert!(frames(&out) > 0 && frames(&drops) > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
