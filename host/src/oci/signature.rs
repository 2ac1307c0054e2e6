//! Cosign signatures of modules in a registry, verified as skopeo's `sigstoreSigned` policy
//! with `signedIdentity: matchRepository` verifies them: a module's signatures are the layers
//! of the OCI image manifest tagged `sha256-<hex>.sig` beside it in its own repository, each
//! an `application/vnd.dev.cosign.simplesigning.v1+json` payload blob carrying its ECDSA
//! P-256 signature (ASN.1 DER, base64) in the `dev.cosignproject.cosign/signature`
//! annotation. One layer that verifies with a trusted key, over a payload of the cosign
//! container-image type naming the module's manifest digest and its repository, is enough.
//!
//! Everything read is bounded ([`SignatureLimits`], [`MAX_KEY_FILE`]), and everything the
//! registry serves is untrusted until a signature over it verifies: a payload is parsed only
//! after its signature verified with a trusted key, and then strictly (unknown or repeated
//! members refused).

use std::path::Path;

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use serde::Deserialize;
use serde_json::Value;

use super::cache::SignedRecord;
use super::reference::{check_registry, is_repository, is_tag};
use super::registry::OCI_MANIFEST;
use super::{Cache, Digest, OciError, Pulled, Reference, Registry};
use crate::setting::Setting;

/// The media type of a signature layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation of a signature layer that holds its signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign container-image signature payload.
pub const COSIGN_TYPE: &str = "cosign container image signature";
/// The largest public key file read, in bytes (a P-256 `PUBLIC KEY` PEM is 178).
pub const MAX_KEY_FILE: u64 = 16 << 10;
/// The longest signature annotation decoded: an ASN.1 DER ECDSA P-256 signature is at most 72
/// bytes, 96 in base64.
const MAX_SIGNATURE_TEXT: usize = 128;

/// The tag of the signature manifest of the manifest `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", crate::hex(&digest.0))
}

/// Bounds on what a verification reads from a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureLimits {
    /// The largest signature manifest read, in bytes.
    pub manifest_bytes: u64,
    /// The most signature layers a signature manifest may hold; one holding more is refused
    /// before any payload is fetched.
    pub layers: usize,
    /// The largest signature payload read, in bytes (skopeo writes about 300).
    pub payload_bytes: u64,
}

impl Default for SignatureLimits {
    fn default() -> Self {
        SignatureLimits {
            manifest_bytes: 1 << 20,
            layers: 32,
            payload_bytes: 64 << 10,
        }
    }
}

/// A public key trusted to sign modules: ECDSA P-256, named by the file it came from, with
/// its fingerprint (the SHA-256 of its SubjectPublicKeyInfo DER, as
/// `openssl pkey -pubin -outform DER | sha256sum` computes it).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    name: String,
    key: VerifyingKey,
    fingerprint: Digest,
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{name}: {message}")]
    Read {
        /// The file.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The file is larger than [`MAX_KEY_FILE`]: refused before it is read whole.
    #[error("{name}: over the limit of {limit} bytes for a public key file")]
    TooLarge {
        /// The file.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// Not one PEM `PUBLIC KEY` holding an ECDSA P-256 SubjectPublicKeyInfo.
    #[error(
        "{name}: not a PEM `PUBLIC KEY` of an ECDSA P-256 key (SubjectPublicKeyInfo, as `openssl pkey -pubout` and cosign write it): {message}"
    )]
    NotP256 {
        /// The file.
        name: String,
        /// What the parser said.
        message: String,
    },
}

impl TrustedKey {
    /// The key in the PEM `text`, named `name`.
    pub fn from_pem(name: &str, text: &str) -> Result<TrustedKey, KeyError> {
        let not = |message: String| KeyError::NotP256 {
            name: name.to_owned(),
            message,
        };
        let public =
            p256::PublicKey::from_public_key_pem(text.trim()).map_err(|e| not(e.to_string()))?;
        let der = public.to_public_key_der().map_err(|e| not(e.to_string()))?;
        Ok(TrustedKey {
            name: name.to_owned(),
            key: VerifyingKey::from(public),
            fingerprint: Digest::of(der.as_bytes()),
        })
    }

    /// The key in the file at `path`, at most [`MAX_KEY_FILE`] bytes, named by its path.
    pub fn read(path: &Path) -> Result<TrustedKey, KeyError> {
        use std::io::Read as _;
        let name = path.display().to_string();
        let read = |e: std::io::Error| KeyError::Read {
            name: name.clone(),
            message: e.to_string(),
        };
        let file = open_regular(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(KeyError::TooLarge {
                name,
                limit: MAX_KEY_FILE,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| KeyError::NotP256 {
            name: name.clone(),
            message: "not text".into(),
        })?;
        TrustedKey::from_pem(&name, &text)
    }

    /// The name it was given (its file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of its SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> Digest {
        self.fingerprint
    }
}

/// Signatures made for one place accepted for a module pulled from another, as skopeo's
/// `remapIdentity` does for mirrors: a module whose repository (`HOST[:PORT]/REPO`) is
/// `prefix`, or under it (`prefix/...`), is expected to be signed as the same name with
/// `signed_prefix` in place of `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRemap {
    prefix: String,
    signed_prefix: String,
}

/// Why an identity remap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemapError {
    /// Not `PREFIX=SIGNED_PREFIX`.
    #[error("`{text}`: expected PREFIX=SIGNED_PREFIX, each HOST[:PORT] or HOST[:PORT]/REPO")]
    Form {
        /// The remap as written.
        text: String,
    },
    /// A prefix that is neither `HOST[:PORT]` nor `HOST[:PORT]/REPO`.
    #[error("`{prefix}` is not a registry or repository prefix (HOST[:PORT] or HOST[:PORT]/REPO)")]
    Prefix {
        /// The prefix as written.
        prefix: String,
    },
}

impl IdentityRemap {
    /// Signatures for `signed_prefix` accepted for modules under `prefix`.
    pub fn new(prefix: &str, signed_prefix: &str) -> Result<IdentityRemap, RemapError> {
        for p in [prefix, signed_prefix] {
            let (host, path) = match p.split_once('/') {
                Some((host, path)) => (host, Some(path)),
                None => (p, None),
            };
            if check_registry(host).is_err() || !path.is_none_or(is_repository) {
                return Err(RemapError::Prefix {
                    prefix: p.to_owned(),
                });
            }
        }
        Ok(IdentityRemap {
            prefix: explicit_name(prefix),
            signed_prefix: explicit_name(signed_prefix),
        })
    }

    /// Reads `PREFIX=SIGNED_PREFIX`.
    pub fn parse(text: &str) -> Result<IdentityRemap, RemapError> {
        let (prefix, signed) = text.split_once('=').ok_or_else(|| RemapError::Form {
            text: text.to_owned(),
        })?;
        IdentityRemap::new(prefix, signed)
    }

    /// `name` with the prefix replaced, when it is the prefix or under it.
    fn apply(&self, name: &str) -> Option<String> {
        let rest = name.strip_prefix(&self.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", self.signed_prefix))
    }
}

/// Who signed a module: the trusted key that verified, and what it signed. Only a
/// verification makes one ([`Trust::pull`], [`Trust::verify`], [`Trust::verify_detached`]),
/// and nothing changes it afterwards (its fields are read through its methods), so a `Signer`
/// handed to the gateway is a signature checked. One [`Trust::pull`] made also names the
/// SHA-256 of the module it pulled: only such a one vouches for a pulled module's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    key: String,
    fingerprint: Digest,
    identity: String,
    digest: Digest,
    layer: Option<usize>,
    detached: bool,
    module_sha256: Option<Digest>,
}

impl Signer {
    /// The key's name (its file).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's fingerprint: the SHA-256 of its SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> Digest {
        self.fingerprint
    }

    /// The identity the payload names (`docker-reference`), as signed.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// What the signature is over: a registry module's manifest digest, or a local module's
    /// own SHA-256 for a detached signature.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The signature layer that verified (from 0); `None` for a detached signature, and for a
    /// module the cache stood in for (its signer checked when it was pulled).
    pub fn layer(&self) -> Option<usize> {
        self.layer
    }

    /// Whether it is a detached signature, of a local module's own bytes.
    pub fn detached(&self) -> bool {
        self.detached
    }

    /// The SHA-256 of the module bytes a verified pull brought ([`Trust::pull`]), or of the
    /// local module a detached signature is for: the bytes this signer vouches for. `None`
    /// for a signer [`Trust::verify`] made, which saw no module bytes.
    pub fn module_sha256(&self) -> Option<Digest> {
        self.module_sha256
    }
}

flowgate_policy::labels! {
    /// The result of a signature check, for counters and logs.
    pub enum SignatureCheck {
        /// A trusted key signed the module for its repository.
        Signed => "signed",
        /// No signature manifest, or one without signature layers.
        Unsigned => "unsigned",
        /// No signature verifies with a trusted key: made by another key, or the payload or
        /// the signature altered (ECDSA cannot tell these apart).
        Untrusted => "untrusted",
        /// A trusted signature for another repository.
        OtherRepository => "other-repository",
        /// A trusted signature for another manifest digest.
        OtherDigest => "other-digest",
        /// A signature manifest, layer, signature or payload that does not parse.
        Malformed => "malformed",
        /// More than a limit of [`SignatureLimits`] allows.
        OverLimit => "over-limit",
        /// The registry could not be reached or failed (5xx), or answered otherwise than
        /// asked: the check may succeed later.
        Registry => "registry",
        /// A local module without a signature, let in by `--allow-unsigned-local`.
        UnsignedAllowed => "unsigned-allowed",
    }
}

/// Why a signed pull failed: the registry, or the module's signatures.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry failed, or what it served failed a check.
    #[error(transparent)]
    Registry(OciError),
    /// The module's signatures were refused.
    #[error(transparent)]
    Signature(SignatureError),
}

impl PullError {
    /// Whether the registry could not be reached or failed (the cache may stand in).
    pub fn unreachable(&self) -> bool {
        match self {
            PullError::Registry(e) => e.unreachable(),
            PullError::Signature(SignatureError {
                reason: Refusal::Registry(e),
                ..
            }) => e.unreachable(),
            PullError::Signature(_) => false,
        }
    }

    /// The setting that may let the module through, as [`OciError::setting`] and
    /// [`SignatureError::setting`] say.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            PullError::Registry(e) => e.setting(),
            PullError::Signature(e) => e.setting(),
        }
    }
}

/// A module refused for its signatures: the reference, the manifest digest, and why.
#[derive(Debug, thiserror::Error)]
#[error("{reference} ({digest}): signature refused: {reason}")]
pub struct SignatureError {
    /// The module's reference, as pulled.
    pub reference: String,
    /// The module's manifest digest.
    pub digest: Digest,
    /// Why.
    pub reason: Refusal,
}

impl SignatureError {
    /// Whether the signatures could not be read for the registry's failing (not for what
    /// they are): the check may succeed later.
    pub fn is_registry(&self) -> bool {
        self.check() == SignatureCheck::Registry
    }

    /// What kind of refusal this is.
    pub fn check(&self) -> SignatureCheck {
        self.reason.check()
    }

    /// The setting that may let the module through: a remap, when a trusted key signed it
    /// for another repository (a mirror); the registry's, when reading the signatures failed
    /// for one.
    pub fn setting(&self) -> Option<Setting> {
        match &self.reason {
            Refusal::Registry(e) => e.setting(),
            Refusal::Layers {
                check: SignatureCheck::OtherRepository,
                ..
            } => Some(Setting::IdentityRemap),
            _ => None,
        }
    }
}

/// Why a module's signatures were refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The repository holds no signature manifest for the digest.
    #[error("unsigned: the repository holds no signature manifest `{tag}`")]
    Unsigned {
        /// The tag looked for.
        tag: String,
    },
    /// The signature manifest holds no signature layer.
    #[error("unsigned: the signature manifest `{tag}` holds no {SIMPLE_SIGNING} layer")]
    NoSignatures {
        /// Its tag.
        tag: String,
    },
    /// The signature manifest could not be read.
    #[error("the signature manifest could not be read: {0}")]
    Registry(#[source] OciError),
    /// The signature manifest is not an OCI image manifest.
    #[error("malformed signature manifest `{tag}`: {message}")]
    Manifest {
        /// Its tag.
        tag: String,
        /// What is wrong with it.
        message: String,
    },
    /// More signature layers than [`SignatureLimits::layers`].
    #[error(
        "the signature manifest `{tag}` holds {count} signature layers, over the limit of {limit}: none is tried"
    )]
    TooManyLayers {
        /// Its tag.
        tag: String,
        /// How many it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A local module without its detached signature file.
    #[error("unsigned: no detached signature `{file}` beside it")]
    NoDetached {
        /// The file looked for.
        file: String,
    },
    /// A detached signature file that could not be read, is over its limit, or is not the
    /// detached format.
    #[error("the detached signature `{file}`: {message}")]
    DetachedFile {
        /// The file.
        file: String,
        /// What is wrong with it.
        message: String,
        /// Whether it is over a limit (else unreadable or malformed).
        over_limit: bool,
    },
    /// A detached signature that is not a good signature of the module.
    #[error("the detached signature `{file}`: {why}")]
    Detached {
        /// The file.
        file: String,
        /// Why.
        why: LayerRefusal,
    },
    /// No layer holds a good signature; each layer's reason, by its place among the layers.
    #[error("{}: {}", summary(*.check), layer_list(.layers))]
    Layers {
        /// The kind of refusal, from the layer that got furthest.
        check: SignatureCheck,
        /// Each signature layer's place in the manifest and its reason.
        layers: Vec<(usize, LayerRefusal)>,
    },
}

/// What a kind of refusal means, in a few words.
fn summary(check: SignatureCheck) -> &'static str {
    match check {
        SignatureCheck::Signed => "signed",
        SignatureCheck::Unsigned => "unsigned",
        SignatureCheck::Untrusted => {
            "no signature verifies with a trusted key (unknown key or bad signature)"
        }
        SignatureCheck::OtherRepository => "signed for another repository",
        SignatureCheck::OtherDigest => "signed for another manifest digest",
        SignatureCheck::Malformed => "malformed signature",
        SignatureCheck::OverLimit => "a signature over a limit",
        SignatureCheck::Registry => "the signatures could not be read",
        SignatureCheck::UnsignedAllowed => "unsigned, let in for development",
    }
}

fn layer_list(layers: &[(usize, LayerRefusal)]) -> String {
    layers
        .iter()
        .map(|(i, why)| format!("layer {i}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Refusal {
    /// What kind of refusal this is.
    pub fn check(&self) -> SignatureCheck {
        match self {
            Refusal::Unsigned { .. }
            | Refusal::NoSignatures { .. }
            | Refusal::NoDetached { .. } => SignatureCheck::Unsigned,
            Refusal::DetachedFile {
                over_limit: true, ..
            } => SignatureCheck::OverLimit,
            Refusal::DetachedFile { .. } => SignatureCheck::Malformed,
            Refusal::Detached { why, .. } => why.check(),
            Refusal::Registry(e) => registry_check(e),
            Refusal::Manifest { .. } => SignatureCheck::Malformed,
            Refusal::TooManyLayers { .. } => SignatureCheck::OverLimit,
            Refusal::Layers { check, .. } => *check,
        }
    }
}

/// The kind of a failure to read from the registry.
fn registry_check(e: &OciError) -> SignatureCheck {
    match e {
        OciError::OverLimit { .. } | OciError::TooLarge { .. } => SignatureCheck::OverLimit,
        _ => SignatureCheck::Registry,
    }
}

/// Why one signature layer is not a good signature.
#[derive(Debug, thiserror::Error)]
pub enum LayerRefusal {
    /// No signature annotation, or not a string.
    #[error("no {SIGNATURE_ANNOTATION} annotation")]
    NoSignature,
    /// The annotation is not base64 of an ASN.1 DER ECDSA signature.
    #[error("the signature is not an ASN.1 DER ECDSA P-256 signature in base64: {0}")]
    Encoding(String),
    /// The payload could not be fetched, or failed its size or digest.
    #[error("the payload could not be read: {0}")]
    Payload(#[source] OciError),
    /// The signature verifies with no trusted key.
    #[error(
        "the signature verifies with no trusted key (another key made it, or it or the payload was altered)"
    )]
    Untrusted,
    /// A trusted key signed a payload that does not parse as a cosign container-image
    /// signature.
    #[error("the payload signed by {key} is malformed: {message}")]
    Malformed {
        /// The key that signed it.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A trusted key signed another manifest digest.
    #[error("{key} signed the manifest {signed}, not this one")]
    OtherDigest {
        /// The key.
        key: String,
        /// The digest it signed.
        signed: String,
    },
    /// A trusted key signed the module for another repository.
    #[error("{key} signed it as {identity}, in the repository {signed}; {expected} was expected")]
    OtherRepository {
        /// The key.
        key: String,
        /// The identity signed.
        identity: String,
        /// Its repository.
        signed: String,
        /// The repository the module was pulled from, remapped.
        expected: String,
    },
}

impl LayerRefusal {
    fn check(&self) -> SignatureCheck {
        match self {
            LayerRefusal::NoSignature | LayerRefusal::Encoding(_) => SignatureCheck::Malformed,
            // A payload that fails its descriptor (its digest, its size) or a descriptor
            // that does not parse.
            LayerRefusal::Payload(OciError::Refused(..)) => SignatureCheck::Malformed,
            LayerRefusal::Payload(e) => registry_check(e),
            LayerRefusal::Untrusted => SignatureCheck::Untrusted,
            LayerRefusal::Malformed { .. } => SignatureCheck::Malformed,
            LayerRefusal::OtherDigest { .. } => SignatureCheck::OtherDigest,
            LayerRefusal::OtherRepository { .. } => SignatureCheck::OtherRepository,
        }
    }

    /// How far the layer got, to say why a module was refused when every layer failed: a
    /// registry that failed first (the layer might have been good), then what a trusted key
    /// signed, then an untrusted signature, then what never got to a signature check.
    fn rank(&self) -> u8 {
        match self {
            LayerRefusal::Payload(e) if e.unreachable() => 6,
            LayerRefusal::OtherRepository { .. } => 5,
            LayerRefusal::OtherDigest { .. } => 4,
            LayerRefusal::Malformed { .. } => 3,
            LayerRefusal::Untrusted => 2,
            LayerRefusal::Payload(_) => 1,
            LayerRefusal::NoSignature | LayerRefusal::Encoding(_) => 0,
        }
    }
}

/// What a module must carry: a signature by one of the keys, for its own repository (or the
/// one a remap names), read within the limits.
#[derive(Debug, Clone)]
pub struct Trust {
    keys: Vec<TrustedKey>,
    remaps: Vec<IdentityRemap>,
    limits: SignatureLimits,
}

impl Trust {
    /// Signatures by any of `keys` (none: nothing verifies), no remap, default limits.
    pub fn new(keys: Vec<TrustedKey>) -> Trust {
        Trust {
            keys,
            remaps: Vec::new(),
            limits: SignatureLimits::default(),
        }
    }

    /// With `remap` too; of several that match a repository, the longest prefix applies.
    pub fn remap(mut self, remap: IdentityRemap) -> Trust {
        self.remaps.push(remap);
        self
    }

    /// With `limits`.
    pub fn limits(mut self, limits: SignatureLimits) -> Trust {
        self.limits = limits;
        self
    }

    /// The keys trusted.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The repository a signature for the module at `r` must name: `HOST[:PORT]/REPO`, its
    /// host as the reference gives it (in lower case), after the longest matching remap.
    pub fn expected_repository(&self, r: &Reference) -> String {
        let name = explicit_name(&format!("{}/{}", r.registry, r.repository));
        self.remaps
            .iter()
            .filter_map(|m| m.apply(&name).map(|n| (m.prefix.len(), n)))
            .max_by_key(|(len, _)| *len)
            .map_or(name, |(_, n)| explicit_name(&n))
    }

    /// Verifies the signatures of the module at `r` whose manifest has `digest` (what the
    /// registry served for `r`, hashed): returns who signed it, or why it is refused.
    pub fn verify(
        &self,
        registry: &Registry,
        r: &Reference,
        digest: Digest,
    ) -> Result<Signer, SignatureError> {
        let refuse = |reason| SignatureError {
            reference: r.to_string(),
            digest,
            reason,
        };
        let tag = signature_tag(&digest);
        let bytes = registry
            .manifest_named(
                r,
                "GET signature manifest",
                &tag,
                self.limits.manifest_bytes,
            )
            .map_err(|e| refuse(Refusal::Registry(e)))?
            .ok_or_else(|| refuse(Refusal::Unsigned { tag: tag.clone() }))?;
        let layers = signature_layers(&bytes).map_err(|message| {
            refuse(Refusal::Manifest {
                tag: tag.clone(),
                message,
            })
        })?;
        if layers.is_empty() {
            return Err(refuse(Refusal::NoSignatures { tag }));
        }
        if layers.len() > self.limits.layers {
            return Err(refuse(Refusal::TooManyLayers {
                tag,
                count: layers.len(),
                limit: self.limits.layers,
            }));
        }
        let expected = self.expected_repository(r);
        let mut refused = Vec::new();
        for (place, layer) in layers {
            match self.layer(registry, r, &digest, &expected, &layer) {
                Ok((key, identity)) => {
                    return Ok(Signer {
                        key: key.name.clone(),
                        fingerprint: key.fingerprint,
                        identity,
                        digest,
                        layer: Some(place),
                        detached: false,
                        module_sha256: None,
                    });
                }
                Err(why) => refused.push((place, why)),
            }
        }
        let check = refused
            .iter()
            .max_by_key(|(_, why)| why.rank())
            .map_or(SignatureCheck::Unsigned, |(_, why)| why.check());
        Err(refuse(Refusal::Layers {
            check,
            layers: refused,
        }))
    }

    /// Pulls the module `r` names once a trusted key's signature over its manifest digest
    /// verifies: the manifest is resolved and hashed, its signatures checked, and then the
    /// module pulled by that digest, so that a tag that moves in between cannot bring other
    /// bytes. `cache`, as for [`Registry::pull_or_cached`], keeps what is pulled with its
    /// signer, and stands in when the registry is unreachable only for a module whose
    /// remembered signer is a key trusted now, for this repository. The flag says whether
    /// the cache stood in.
    pub fn pull(
        &self,
        registry: &Registry,
        r: &Reference,
        cache: Option<&Cache>,
    ) -> Result<(Pulled, Signer, bool), PullError> {
        let cached = |e: PullError| match cache {
            Some(cache) if e.unreachable() => self.cached(cache, r).ok_or(e),
            _ => Err(e),
        };
        let digest = match registry.manifest(r) {
            Ok((_, digest)) => digest,
            Err(e) => return cached(PullError::Registry(e)),
        };
        let mut signer = match self.verify(registry, r, digest) {
            Ok(signer) => signer,
            Err(e) => return cached(PullError::Signature(e)),
        };
        let pinned = r.pinned(digest);
        let pulled = match registry.pull(&pinned) {
            Ok(pulled) => pulled,
            Err(e) => return cached(PullError::Registry(e)),
        };
        signer.module_sha256 = Some(Digest::of(&pulled.module));
        if let Some(cache) = cache {
            let record = SignedRecord {
                fingerprint: signer.fingerprint,
                identity: signer.identity.clone(),
            };
            if let Err(e) = cache
                .store(r, &pulled.manifest, &pulled.module)
                .and_then(|()| cache.store_signer(&pulled.manifest, &record))
            {
                tracing::warn!(error = %e, "the pulled module could not be cached");
            }
        }
        Ok((pulled, signer, false))
    }

    /// The module the cache holds for `r`, with its signer, when the signer it remembers is
    /// a key trusted now and the identity it signed is `r`'s repository (after the remaps).
    fn cached(&self, cache: &Cache, r: &Reference) -> Option<(Pulled, Signer, bool)> {
        let (manifest, module) = cache.load(r)?;
        let refuse = |why: String| {
            tracing::warn!(
                event = "pull",
                reference = %r,
                manifest = %manifest,
                "the registry is unreachable, and the module cached for {r} ({manifest}) is not used: {why}"
            );
        };
        let Some(record) = cache.load_signer(&manifest) else {
            refuse(
                "no signer is recorded for it (it was cached by a pull that checked no signatures)"
                    .into(),
            );
            return None;
        };
        let Some(key) = self
            .keys
            .iter()
            .find(|k| k.fingerprint == record.fingerprint)
        else {
            refuse(format!(
                "it was signed by {}, not a key trusted now",
                record.fingerprint
            ));
            return None;
        };
        let expected = self.expected_repository(r);
        match normalized_name(&record.identity) {
            Ok(name) if name == expected => {}
            _ => {
                refuse(format!(
                    "it was signed as {}, not for {expected}",
                    record.identity
                ));
                return None;
            }
        }
        tracing::warn!(
            event = "pull",
            reference = %r,
            manifest = %manifest,
            key = %key.name,
            "the registry is unreachable or failing: using the module cached for {r} ({manifest}), signed by {}",
            key.name
        );
        let signer = Signer {
            key: key.name.clone(),
            fingerprint: key.fingerprint,
            identity: record.identity,
            digest: manifest,
            layer: None,
            detached: false,
            module_sha256: Some(Digest::of(&module)),
        };
        let pulled = Pulled {
            module,
            manifest,
            layout: "cache",
        };
        Some((pulled, signer, true))
    }

    /// One signature layer: its signature decoded, its payload fetched, the signature
    /// verified with each trusted key, then the payload checked. Returns the key and the
    /// identity signed.
    fn layer(
        &self,
        registry: &Registry,
        r: &Reference,
        digest: &Digest,
        expected: &str,
        layer: &Value,
    ) -> Result<(&TrustedKey, String), LayerRefusal> {
        let text = layer["annotations"][SIGNATURE_ANNOTATION]
            .as_str()
            .ok_or(LayerRefusal::NoSignature)?;
        let signature = decode_signature(text).map_err(LayerRefusal::Encoding)?;
        let payload = registry
            .blob(r, layer, self.limits.payload_bytes)
            .map_err(LayerRefusal::Payload)?;
        let (key, signed) = self.signed_by(&payload, &signature, digest)?;
        let name =
            normalized_name(&signed.identity).map_err(|message| LayerRefusal::Malformed {
                key: key.name.clone(),
                message: format!("the identity `{}`: {message}", signed.identity),
            })?;
        if name != expected {
            return Err(LayerRefusal::OtherRepository {
                key: key.name.clone(),
                identity: signed.identity,
                signed: name,
                expected: expected.to_owned(),
            });
        }
        Ok((key, signed.identity))
    }
}

impl Trust {
    /// The trusted key that made `signature` over `payload`, and what the payload signs,
    /// which must be `digest` with the cosign container-image type.
    fn signed_by(
        &self,
        payload: &[u8],
        signature: &Signature,
        digest: &Digest,
    ) -> Result<(&TrustedKey, Signed), LayerRefusal> {
        let key = self
            .keys
            .iter()
            .find(|k| k.key.verify(payload, signature).is_ok())
            .ok_or(LayerRefusal::Untrusted)?;
        let signed = parse_payload(payload).map_err(|message| LayerRefusal::Malformed {
            key: key.name.clone(),
            message,
        })?;
        if signed.digest != digest.to_string() {
            return Err(LayerRefusal::OtherDigest {
                key: key.name.clone(),
                signed: signed.digest,
            });
        }
        Ok((key, signed))
    }

    /// The refusal of a local module (`module`, named `name`) whose detached signature file
    /// `file_name` could not be read.
    pub fn unreadable_detached(
        name: &str,
        module: &[u8],
        file_name: &str,
        e: &std::io::Error,
    ) -> SignatureError {
        SignatureError {
            reference: name.to_owned(),
            digest: Digest::of(module),
            reason: Refusal::DetachedFile {
                file: file_name.to_owned(),
                message: format!("unreadable: {e}"),
                over_limit: false,
            },
        }
    }

    /// Verifies the detached signature of a local module (`module`, named `name`): the text
    /// of its signature file `file` (named `file_name`), or `None` when there is none. The
    /// payload must name the module's own SHA-256; its identity is not a repository and is
    /// not checked (the digest binds the signature to these bytes).
    pub fn verify_detached(
        &self,
        name: &str,
        module: &[u8],
        file_name: &str,
        file: Option<&[u8]>,
    ) -> Result<Signer, SignatureError> {
        let digest = Digest::of(module);
        let refuse = |reason| SignatureError {
            reference: name.to_owned(),
            digest,
            reason,
        };
        let malformed = |message: String| {
            refuse(Refusal::DetachedFile {
                file: file_name.to_owned(),
                message,
                over_limit: false,
            })
        };
        let file = file.ok_or_else(|| {
            refuse(Refusal::NoDetached {
                file: file_name.to_owned(),
            })
        })?;
        if file.len() as u64 > MAX_DETACHED_FILE {
            return Err(refuse(Refusal::DetachedFile {
                file: file_name.to_owned(),
                message: format!(
                    "{} bytes, over the limit of {MAX_DETACHED_FILE}",
                    file.len()
                ),
                over_limit: true,
            }));
        }
        let detached: DetachedFile = serde_json::from_slice(file)
            .map_err(|e| malformed(format!("not the detached format ({DETACHED_FORM}): {e}")))?;
        let payload_limit = usize::try_from(self.limits.payload_bytes).unwrap_or(usize::MAX);
        // Base64 takes 4 characters for every 3 bytes: a longer text holds a payload over
        // the limit, refused before it is decoded.
        if detached.payload.len() / 4 > payload_limit / 3 + 1 {
            return Err(refuse(Refusal::DetachedFile {
                file: file_name.to_owned(),
                message: format!(
                    "a payload over the limit of {} bytes",
                    self.limits.payload_bytes
                ),
                over_limit: true,
            }));
        }
        let payload = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(&detached.payload)
                .map_err(|e| malformed(format!("the payload is not base64: {e}")))?
        };
        let why = |why| {
            refuse(Refusal::Detached {
                file: file_name.to_owned(),
                why,
            })
        };
        let signature =
            decode_signature(&detached.signature).map_err(|e| why(LayerRefusal::Encoding(e)))?;
        let (key, signed) = self.signed_by(&payload, &signature, &digest).map_err(why)?;
        Ok(Signer {
            key: key.name.clone(),
            fingerprint: key.fingerprint,
            identity: signed.identity,
            digest,
            layer: None,
            detached: true,
            module_sha256: Some(digest),
        })
    }
}

/// The detached signature format, for errors.
const DETACHED_FORM: &str = r#"one JSON object {"payload": BASE64, "signature": BASE64}, as `flowgate sign --detached` writes it"#;

/// A detached signature file: the payload and its signature, each in standard base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachedFile {
    payload: String,
    signature: String,
}

/// The largest detached signature file read, in bytes (one is about 700).
pub const MAX_DETACHED_FILE: u64 = 64 << 10;

/// Where a local module's detached signature is: its path with `.sig` added
/// (`filter.wasm.sig`).
pub fn detached_path(module: &Path) -> std::path::PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

/// Reads the detached signature file of the module at `module`, at most
/// [`MAX_DETACHED_FILE`] bytes (one byte more tells a longer one): `None` when there is none.
/// It must be a regular file: opening never waits (on a FIFO, say).
pub fn read_detached(module: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let file = match open_regular(&detached_path(module)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DETACHED_FILE + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Opens `path` for reading without waiting (on a FIFO, say): it must be a regular file.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The signature layers of a signature manifest (others are skipped), each with its place
/// among all its layers; an error when it is not an OCI image manifest.
fn signature_layers(bytes: &[u8]) -> Result<Vec<(usize, Value)>, String> {
    let mut manifest: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if manifest["schemaVersion"].as_u64() != Some(2) {
        return Err("not schemaVersion 2".into());
    }
    let media = manifest["mediaType"].as_str().unwrap_or_default();
    if media != OCI_MANIFEST {
        return Err(format!(
            "a manifest of type {media:?}: expected an OCI image manifest ({OCI_MANIFEST})"
        ));
    }
    let Some(Value::Array(layers)) = manifest.get_mut("layers").map(Value::take) else {
        return Err("no layers".into());
    };
    Ok(layers
        .into_iter()
        .enumerate()
        .filter(|(_, layer)| layer["mediaType"].as_str() == Some(SIMPLE_SIGNING))
        .collect())
}

/// Decodes a signature annotation: standard base64 (padded) of an ASN.1 DER signature.
fn decode_signature(text: &str) -> Result<Signature, String> {
    use base64::Engine as _;
    if text.len() > MAX_SIGNATURE_TEXT {
        return Err(format!(
            "{} characters, more than the {MAX_SIGNATURE_TEXT} a signature takes",
            text.len()
        ));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64: {e}"))?;
    Signature::from_der(&der).map_err(|_| {
        format!(
            "{} bytes that are not an ASN.1 DER ECDSA signature (raw r||s is refused)",
            der.len()
        )
    })
}

/// What a payload signs.
struct Signed {
    digest: String,
    identity: String,
}

/// The payload's members, exactly (serde refuses unknown and repeated ones).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    optional: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    r#type: String,
    image: Image,
    identity: Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// Parses a payload as skopeo does: exactly `critical` and `optional`; `critical` exactly
/// `type` (the cosign container-image type), `image` (`docker-manifest-digest`) and
/// `identity` (`docker-reference`); `optional` an object or null, whose `timestamp`, when
/// present, is an integer.
fn parse_payload(bytes: &[u8]) -> Result<Signed, String> {
    let payload: Payload = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if payload.critical.r#type != COSIGN_TYPE {
        return Err(format!(
            "the type is `{}`, not `{COSIGN_TYPE}`",
            payload.critical.r#type
        ));
    }
    match &payload.optional {
        Value::Null => {}
        Value::Object(members) => {
            if let Some(t) = members.get("timestamp")
                && t.as_i64().is_none()
            {
                return Err(format!("optional.timestamp is {t}, not an integer"));
            }
        }
        other => return Err(format!("optional is {other}, not an object")),
    }
    Ok(Signed {
        digest: payload.critical.image.docker_manifest_digest,
        identity: payload.critical.identity.docker_reference,
    })
}

/// `HOST[:PORT][/REPO]` whose host is given (never taken for a Docker Hub namespace, as Docker
/// would take a host without `.` or `:`), with the host in lower case and Docker Hub's names
/// as Docker normalizes them (`index.docker.io` is `docker.io`, where a one-part repository is
/// under `library/`).
fn explicit_name(name: &str) -> String {
    let (host, path) = match name.split_once('/') {
        Some((host, path)) => (host.to_ascii_lowercase(), Some(path)),
        None => (name.to_ascii_lowercase(), None),
    };
    let host = if host == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        host
    };
    match path {
        Some(path) if host == "docker.io" && !path.contains('/') => {
            format!("{host}/library/{path}")
        }
        Some(path) => format!("{host}/{path}"),
        None => host,
    }
}

/// The repository a Docker reference (`[HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`) names,
/// normalized as Docker's `ParseNormalizedNamed` does: no host is `docker.io` (and a
/// one-part repository there is under `library/`), `index.docker.io` is `docker.io`, and the
/// host is compared without regard to case.
fn normalized_name(reference: &str) -> Result<String, String> {
    if reference.len() > 512 {
        return Err("longer than 512 characters".into());
    }
    let name = match reference.split_once('@') {
        Some((name, digest)) => {
            Digest::parse(digest).map_err(|e| e.to_string())?;
            name
        }
        None => reference,
    };
    let name = match name.rsplit_once(':') {
        Some((before, tag)) if !tag.contains('/') => {
            if !is_tag(tag) {
                return Err(format!("`{tag}` is not a tag"));
            }
            before
        }
        _ => name,
    };
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_ascii_lowercase(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let host = if host == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        host
    };
    let path = if host == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    check_registry(&host).map_err(|e| e.to_string())?;
    if !is_repository(&path) {
        return Err(format!("`{path}` is not a repository name"));
    }
    Ok(format!("{host}/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_as_docker_references_do() {
        for (reference, name) in [
            (
                "127.0.0.1:29810/policies/filter:v1",
                "127.0.0.1:29810/policies/filter",
            ),
            (
                "127.0.0.1:29810/policies/filter",
                "127.0.0.1:29810/policies/filter",
            ),
            (
                &*format!("Registry.Example/p/q:t@sha256:{}", "ab".repeat(32)),
                "registry.example/p/q",
            ),
            ("localhost/p", "localhost/p"),
            ("busybox", "docker.io/library/busybox"),
            ("index.docker.io/busybox:1", "docker.io/library/busybox"),
            ("policies/filter:v1", "docker.io/policies/filter"),
        ] {
            assert_eq!(
                normalized_name(reference).as_deref(),
                Ok(name),
                "{reference}"
            );
        }
        for bad in [
            "",
            "r.example/P",
            "r.example/p:-t",
            "r.example/p@sha256:00",
            "r.example/p//q",
            "bad host/p",
            "r.example:0/p",
        ] {
            assert!(normalized_name(bad).is_err(), "{bad}");
        }
        assert!(normalized_name(&"a".repeat(600)).is_err());
    }

    #[test]
    fn the_expected_repository_has_the_host_the_reference_gives() {
        let r = |text: &str| Reference::parse(text).unwrap();
        let trust = Trust::new(Vec::new());
        for (reference, name) in [
            (
                "oci://myregistry/policies/filter:v1",
                "myregistry/policies/filter",
            ),
            (
                "oci://Registry.Example:5000/p:v1",
                "registry.example:5000/p",
            ),
            (
                "oci://index.docker.io/filter:v1",
                "docker.io/library/filter",
            ),
        ] {
            assert_eq!(trust.expected_repository(&r(reference)), name);
        }
        // A signature naming `myregistry/...` names Docker Hub's namespace, not that host.
        assert_eq!(
            normalized_name("myregistry/policies/filter:v1").as_deref(),
            Ok("docker.io/myregistry/policies/filter")
        );
        let trust = trust
            .remap(IdentityRemap::parse("MIRROR.example/team=origin.example").unwrap())
            .remap(IdentityRemap::parse("mirror.example=elsewhere.example").unwrap());
        assert_eq!(
            trust.expected_repository(&r("oci://mirror.example/team/filter:v1")),
            "origin.example/filter"
        );
        assert_eq!(
            trust.expected_repository(&r("oci://mirror.example/other/filter:v1")),
            "elsewhere.example/other/filter"
        );
    }

    #[test]
    fn remaps_replace_a_prefix_on_a_path_boundary_only() {
        let m = IdentityRemap::parse("127.0.0.1:5000=127.0.0.1:29810").unwrap();
        assert_eq!(
            m.apply("127.0.0.1:5000/policies/filter").as_deref(),
            Some("127.0.0.1:29810/policies/filter")
        );
        assert_eq!(m.apply("127.0.0.1:50001/policies/filter"), None);
        let m = IdentityRemap::parse("mirror.example/team=origin.example/other").unwrap();
        assert_eq!(
            m.apply("mirror.example/team/filter").as_deref(),
            Some("origin.example/other/filter")
        );
        assert_eq!(
            m.apply("mirror.example/team").as_deref(),
            Some("origin.example/other")
        );
        assert_eq!(m.apply("mirror.example/teams/filter"), None);
        for bad in ["no-equals", "=x.example", "x.example=", "a b=c", "h/P=h/p"] {
            assert!(IdentityRemap::parse(bad).is_err(), "{bad}");
        }
    }

    fn payload(critical: &str, optional: &str) -> Vec<u8> {
        format!(r#"{{"critical":{critical},"optional":{optional}}}"#).into_bytes()
    }

    const CRITICAL: &str = r#"{"identity":{"docker-reference":"h:1/p:v1"},"image":{"docker-manifest-digest":"sha256:00"},"type":"cosign container image signature"}"#;

    #[test]
    fn payloads_parse_strictly() {
        for optional in ["{}", "null", r#"{"timestamp":1796507401,"creator":"x"}"#] {
            let signed = parse_payload(&payload(CRITICAL, optional)).unwrap();
            assert_eq!(
                (signed.digest.as_str(), signed.identity.as_str()),
                ("sha256:00", "h:1/p:v1")
            );
        }
        let extra = CRITICAL.replace(r#""type""#, r#""extra":1,"type""#);
        let twice = CRITICAL.replace(
            r#""type""#,
            r#""type":"cosign container image signature","type""#,
        );
        let other_type = CRITICAL.replace("cosign container image", "something else");
        let no_identity = r#"{"image":{"docker-manifest-digest":"sha256:00"},"type":"cosign container image signature"}"#;
        let image_extra = CRITICAL.replace(
            r#""docker-manifest-digest""#,
            r#""x":"y","docker-manifest-digest""#,
        );
        let bad: Vec<Vec<u8>> = vec![
            br#"{"critical":{}}"#.to_vec(),
            format!(r#"{{"critical":{CRITICAL}}}"#).into_bytes(),
            format!(r#"{{"critical":{CRITICAL},"optional":{{}},"more":1}}"#).into_bytes(),
            payload(&extra, "{}"),
            payload(&twice, "{}"),
            payload(&other_type, "{}"),
            payload(no_identity, "{}"),
            payload(&image_extra, "{}"),
            payload(CRITICAL, r#"{"timestamp":"1796507401"}"#),
            payload(CRITICAL, r#"{"timestamp":1.5}"#),
            payload(CRITICAL, "[]"),
            b"not json".to_vec(),
            b"".to_vec(),
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        ];
        for b in bad {
            assert!(
                parse_payload(&b).is_err(),
                "{}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn signatures_are_der_in_padded_standard_base64() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let good = "MEUCIQC/n180n9TOMRuV5rrnpNqWcOfnHFsXhRQnvgp16fgDfAIgVL9AZDuRXQk+7xSDB62Bs526fT9VuZUVjQCwMySLiSk=";
        assert!(decode_signature(good).is_ok());
        let der = base64::engine::general_purpose::STANDARD
            .decode(good)
            .unwrap();
        let raw = Signature::from_der(&der).unwrap().to_bytes();
        for bad in [
            good.trim_end_matches('='),
            &good.replace('+', "-"),
            "!!!",
            &b64(&raw),
            &b64(&der[..der.len() - 1]),
            &"A".repeat(4096),
        ] {
            assert!(decode_signature(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_files_hold_one_p256_public_key() {
        let trusted = include_str!("../../../fixtures/signing/trusted.pub");
        let key = TrustedKey::from_pem("trusted.pub", trusted).unwrap();
        assert_eq!(key.name(), "trusted.pub");
        for bad in [
            "",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            &trusted.replace("PUBLIC KEY", "PRIVATE KEY"),
            &trusted.replace("MFkw", "MFkx"),
        ] {
            assert!(TrustedKey::from_pem("k", bad).is_err(), "{bad}");
        }
    }
}
