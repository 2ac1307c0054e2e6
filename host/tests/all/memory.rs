//! What a worker costs in memory: a gateway's resident memory with 2 and with 16 workers, after
//! three swaps of a gateway-shaped configuration of 5,000 peerings, measured on `flowgate serve`
//! itself. Each worker beyond the first must cost at most [`MOST_PER_WORKER`]: a worker holds its
//! instance's copy of the table, while the parse, the validation and the build happen once a
//! release and the previous release's instances are let go.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The most resident memory a worker beyond the first may add.
const MOST_PER_WORKER: u64 = 8 << 20;

fn flowgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(args)
        .current_dir(crate::repo())
        .output()
        .unwrap()
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

struct Serving {
    child: Child,
    admin: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowgate serve` with `workers` on `dir`'s generated workload, its admin API up.
fn serve(dir: &Path, workers: u32) -> Serving {
    let socket = crate::socket_path(&format!("memory-{workers}"));
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let admin = format!("unix:{}", socket.display());
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([
            "serve",
            "--workers",
            &workers.to_string(),
            "--rate",
            "20000",
        ])
        .args(["--duration", "600", "--admin", &admin])
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--packets")
        .arg(dir.join("packets.jsonl"))
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/memory-cache"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serving = Serving { child, admin };
    let up = (0..2400).any(|_| {
        if flowgate(&["status", "--admin", &serving.admin])
            .status
            .success()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(up, "the gateway's admin API came up");
    serving
}

/// Resident memory of a gateway with `workers` after three configuration swaps.
fn after_three_swaps(dir: &Path, workers: u32) -> u64 {
    let serving = serve(dir, workers);
    let config = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    for swap in 1..=3 {
        let file = dir.join(format!("config-{workers}-{swap}.yaml"));
        std::fs::write(&file, format!("{config}\n# swap {swap}\n")).unwrap();
        let out = flowgate(&[
            "swap",
            "--config",
            file.to_str().unwrap(),
            "--admin",
            &serving.admin,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Workers let the previous release go at their next batch.
    std::thread::sleep(Duration::from_millis(500));
    resident(serving.child.id())
}

#[test]
fn each_worker_beyond_the_first_costs_at_most_8_mib_after_three_swaps() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("memory-workload");
    let out = flowgate(&[
        "gen",
        "--shape",
        "gateway",
        "--peerings",
        "5000",
        "--packets",
        "20000",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let two = after_three_swaps(&dir, 2);
    let sixteen = after_three_swaps(&dir, 16);
    let per_worker = sixteen.saturating_sub(two) / 14;
    eprintln!(
        "resident after three swaps: 2 workers {} MiB, 16 workers {} MiB: {} KiB a worker",
        two >> 20,
        sixteen >> 20,
        per_worker >> 10
    );
    assert!(
        per_worker <= MOST_PER_WORKER,
        "a worker costs {} KiB (2 workers: {} MiB, 16: {} MiB)",
        per_worker >> 10,
        two >> 20,
        sixteen >> 20
    );
}
