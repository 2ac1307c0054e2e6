//! What is not a flowgate module is refused with a clear message, and a configuration the
//! module refuses comes back with its field and value.

use flowgate_host::wasm::WasmPolicy;
use flowgate_host::{DEFAULT_MODULE, ModuleError, StartError};
use wasm_encoder::{
    Component, ComponentExportKind, ComponentExportSection, ComponentInstanceSection,
};

/// A component whose only export is an empty instance named `name`.
fn component_exporting(name: &str) -> Vec<u8> {
    let mut component = Component::new();
    let mut instances = ComponentInstanceSection::new();
    instances.export_items(Vec::<(&str, ComponentExportKind, u32)>::new());
    component.section(&instances);
    let mut exports = ComponentExportSection::new();
    exports.export(name, ComponentExportKind::Instance, 0, None);
    component.section(&exports);
    component.finish()
}

fn refusal(bytes: &[u8]) -> ModuleError {
    match crate::runtime().load(bytes) {
        Ok(_) => panic!("a module that must be refused was loaded"),
        Err(e) => e,
    }
}

#[test]
fn not_wasm() {
    for bytes in [&b""[..], b"hello, world", b"\0asm"] {
        let e = refusal(bytes);
        assert!(matches!(e, ModuleError::NotWasm), "{e}");
        assert!(e.to_string().contains("not a WebAssembly file"));
    }
}

#[test]
fn core_module_not_component() {
    let e = refusal(b"\0asm\x01\0\0\0");
    assert!(matches!(e, ModuleError::CoreModule), "{e}");
    assert!(e.to_string().contains("not a component"));
}

#[test]
fn invalid_component() {
    let e = refusal(b"\0asm\x0d\0\x01\0\x07\x05garbage");
    assert!(matches!(e, ModuleError::Invalid(_)), "{e}");
}

#[test]
fn wrong_world() {
    let e = refusal(&component_exporting("example:other/thing@1.0.0"));
    assert!(matches!(e, ModuleError::WrongWorld(_)), "{e}");
    assert!(
        e.to_string()
            .contains("does not export `flowgate:policy/filter`")
            && e.to_string().contains("example:other/thing@1.0.0"),
        "{e}"
    );
    let empty = Component::new().finish();
    assert!(matches!(refusal(&empty), ModuleError::WrongWorld(_)));
}

#[test]
fn wrong_major_version() {
    let e = refusal(&component_exporting("flowgate:policy/filter@1.0.0"));
    assert!(matches!(e, ModuleError::IncompatibleVersion { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("exports `flowgate:policy/filter@1.0.0`"),
        "{e}"
    );
    // A module built against the previous minor versions: before `explain` existed, before
    // each address of a packed record had its family (it would mis-judge packets whose
    // addresses are of different families), before packed batches came as columns (it
    // would read a batch as records), before instances could hand their state over, and
    // before the host could vouch for a state (a 0.5 module's `adopt-state` has no `vouched`).
    for old in ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"] {
        let e = refusal(&component_exporting(&format!(
            "flowgate:policy/filter@{old}"
        )));
        assert!(matches!(e, ModuleError::IncompatibleVersion { .. }), "{e}");
    }
}

#[test]
fn right_name_wrong_functions() {
    let e = refusal(&component_exporting("flowgate:policy/filter@0.6.0"));
    assert!(matches!(e, ModuleError::WrongShape(_)), "{e}");
}

#[test]
fn precompiled_artifacts_from_outside() {
    let runtime = crate::runtime();
    let artifact = runtime
        .engine()
        .precompile_component(DEFAULT_MODULE)
        .unwrap();
    assert!(matches!(
        runtime.load(&artifact),
        Err(ModuleError::Precompiled)
    ));
}

#[test]
fn config_error_surfaces_with_field_and_value() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let config = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 0}\n";
    match WasmPolicy::new(&runtime, &module, config) {
        Err(StartError::Config(e)) => {
            assert_eq!(e.object.as_deref(), Some("VPCInfo `a`"));
            assert_eq!(e.field.as_deref(), Some("spec.vni"));
            assert_eq!(e.value.as_deref(), Some("0"));
            assert!(e.message.contains("1 to 16777215"), "{}", e.message);
        }
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("VNI 0 was accepted"),
    }
    let e = WasmPolicy::new(&runtime, &module, "kind: [").err().unwrap();
    assert!(e.to_string().contains("not valid YAML"), "{e}");
}

/// The default module imports only what Rust's std for wasm32-wasip2 pulls in (and the
/// type-only `flowgate:policy/types`); the host answers `insecure-seed` with a constant and
/// makes everything else trap, so the guest has no filesystem, network or clock.
#[test]
fn default_module_imports_nothing_but_std_wasi() {
    let runtime = crate::runtime();
    let component = wasmtime::component::Component::new(runtime.engine(), DEFAULT_MODULE).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(runtime.engine())
        .map(|(n, _)| n.to_owned())
        .collect();
    eprintln!("imports of the default module: {imports:#?}");
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:random/insecure-seed@"))
    );
    for import in &imports {
        let allowed = import.starts_with("flowgate:policy/types@")
            || ["wasi:cli/", "wasi:io/", "wasi:random/insecure-seed@"]
                .iter()
                .any(|p| import.starts_with(p));
        assert!(allowed, "unexpected import {import}");
    }
}
