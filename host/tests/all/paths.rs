//! The packed path, the typed path and the native library agree on generated traffic, at
//! several batch sizes; a cached module judges the same as a freshly compiled one.

use flowgate_host::wasm::{Limits, Runtime, WasmPolicy};
use flowgate_host::{DEFAULT_MODULE, NativePolicy, Policy};
use flowgate_policy::Verdict;
use flowgate_policy::synth::{self, Scale};

#[test]
fn packed_typed_and_native_agree() {
    let yaml = synth::config_yaml(Scale::with_peerings(300, 3));
    let native = NativePolicy::new(&yaml, None).unwrap();
    let config = flowgate_policy::parse(&yaml, None).unwrap();
    let packets = synth::packets(&config, 3000, 4);
    let expected: Vec<Verdict> = packets.iter().map(|p| native.table().lookup(p)).collect();

    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut wasm = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
    assert_eq!(wasm.catalog(), native.table().catalog());
    for batch in [1, 7, 256, 3000] {
        let mut packed = vec![Verdict::default(); packets.len()];
        let mut typed = vec![Verdict::default(); packets.len()];
        for (chunk, (p_out, t_out)) in packets
            .chunks(batch)
            .zip(packed.chunks_mut(batch).zip(typed.chunks_mut(batch)))
        {
            wasm.judge(chunk, p_out).unwrap();
            wasm.judge_typed(chunk, t_out).unwrap();
        }
        assert_eq!(packed, expected, "packed, batch {batch}");
        assert_eq!(typed, expected, "typed, batch {batch}");
    }
}

#[test]
fn cached_artifacts_judge_the_same() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config =
        std::fs::read_to_string(crate::repo().join("fixtures/cases/spec-3.1-overlap/config.yaml"))
            .unwrap();
    let mut answers = Vec::new();
    for round in 0..2 {
        let runtime = Runtime::new(Limits::default(), Some(dir.clone())).unwrap();
        let module = runtime.load(DEFAULT_MODULE).unwrap();
        let cached = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("cwasm".as_ref()))
            .count();
        assert_eq!(cached, 1, "round {round}: one artifact in the cache");
        let mut policy = WasmPolicy::new(&runtime, &module, &config).unwrap();
        let p = flowgate_policy::Packet::tcp(
            2,
            "2.0.0.7".parse().unwrap(),
            1,
            "1.0.0.9".parse().unwrap(),
            2,
        );
        let mut out = [Verdict::default()];
        policy.judge(&[p], &mut out).unwrap();
        answers.push(policy.catalog().verdict_text(out[0]));
    }
    assert_eq!(
        answers,
        ["allow-ambiguous([A, C])", "allow-ambiguous([A, C])"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
