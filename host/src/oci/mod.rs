//! Policy modules as OCI artifacts in an ordinary registry: references (`oci://...`), a
//! client that pulls by tag or digest and verifies every byte, and pushes in the CNCF Wasm
//! layout; cosign signatures of modules, made with private keys and verified against trusted keys.

mod cache;
mod reference;
mod registry;
mod sign;
mod signature;

pub use cache::Cache;

pub use reference::{
    Digest, DigestError, Reference, ReferenceError, RegistryHostError, SCHEME, check_registry,
    is_loopback,
};
pub use registry::{
    OCI_MANIFEST, OciError, Pulled, Registry, RegistryOptions, WASM_CONFIG, WASM_LAYER,
};
pub use sign::{
    COSIGN_KEY_LABEL, DetachedError, DetachedSignature, KeyFiles, KeygenError, MAX_PASSPHRASE_FILE,
    MAX_PRIVATE_KEY_FILE, PassphraseError, PrivateKeyError, SIGSTORE_KEY_LABEL, SignError, Signed,
    SigningKey, create_new, detached, identity, keygen, payload, payload_at, read_passphrase_file,
    sign, sign_file,
};
pub use signature::{
    COSIGN_TYPE, IdentityRemap, KeyError, LayerRefusal, MAX_DETACHED_FILE, MAX_KEY_FILE, PullError,
    Refusal, RemapError, SIGNATURE_ANNOTATION, SIMPLE_SIGNING, SignatureCheck, SignatureError,
    SignatureLimits, Signer, Trust, TrustedKey, detached_path, read_detached, signature_tag,
};
