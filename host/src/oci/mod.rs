//! Policy modules as OCI artifacts in an ordinary registry: references (`oci://...`), a
//! client that pulls by tag or digest and verifies every byte, and pushes in the CNCF Wasm
//! layout.

mod cache;
mod reference;
mod registry;

pub use cache::Cache;

pub use reference::{
    Digest, DigestError, Reference, ReferenceError, RegistryHostError, SCHEME, check_registry,
    is_loopback,
};
pub use registry::{OciError, Pulled, Registry, RegistryOptions, WASM_CONFIG, WASM_LAYER};
