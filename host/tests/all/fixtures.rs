//! Every fixture case through the real component (packed and typed calls) and through the
//! native library, each checked against the expected verdicts or refusal.

use flowgate_host::wasm::WasmPolicy;
use flowgate_host::{DEFAULT_MODULE, NativePolicy, Policy, StartError};
use flowgate_policy::Verdict;
use flowgate_policy::cases::Case;

fn cases() -> Vec<Case> {
    let cases = Case::load_all(&crate::repo().join("fixtures/cases")).unwrap();
    assert!(cases.len() >= 11, "the bundled cases are missing");
    cases
}

fn judge_with(policy: &mut dyn Policy, packets: &[flowgate_policy::Packet]) -> Vec<Verdict> {
    let mut out = vec![Verdict::default(); packets.len()];
    policy.judge(packets, &mut out).unwrap();
    out
}

#[test]
fn every_case_through_the_component() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let problems = match WasmPolicy::new(&runtime, &module, &case.config) {
            Err(StartError::Config(e)) => case.check_error(Some(&e)),
            Err(e) => vec![format!("the module failed: {e}")],
            Ok(mut policy) => {
                let catalog = policy.catalog().clone();
                let mut problems =
                    case.check_verdicts(&catalog, |packets| judge_with(&mut policy, packets));
                let typed = case.check_verdicts(&catalog, |packets| {
                    let mut out = vec![Verdict::default(); packets.len()];
                    policy.judge_typed(packets, &mut out).unwrap();
                    out
                });
                problems.extend(typed.into_iter().map(|p| format!("typed call: {p}")));
                problems
            }
        };
        failures.extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_case_through_the_native_library() {
    let mut failures = Vec::new();
    for case in cases() {
        let problems = match NativePolicy::new(&case.config, None) {
            Err(e) => case.check_error(Some(&e)),
            Ok(mut policy) => {
                let catalog = policy.catalog().clone();
                case.check_verdicts(&catalog, |packets| judge_with(&mut policy, packets))
            }
        };
        failures.extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
