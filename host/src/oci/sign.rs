//! The signing side of cosign signatures: private keys in the cosign format (read and
//! generated), the simple-signing payload, signatures added to a module's signature manifest
//! in its registry (and verified there once written), and detached signatures of module
//! files.
//!
//! A private key file is a PEM block labelled `ENCRYPTED COSIGN PRIVATE KEY` (or `ENCRYPTED
//! SIGSTORE PRIVATE KEY`) whose body is JSON: the scrypt parameters and salt, the NaCl
//! secretbox nonce, and the secretbox (XSalsa20-Poly1305, its 16-byte tag first) of the
//! PKCS#8 DER of an ECDSA P-256 key, sealed with the 32 bytes scrypt derives from the
//! passphrase. Only N = 2^15, 2^16 or 2^17 with r = 8 and p = 1 is read, and that is checked
//! before scrypt runs: a file cannot make the reader spend more than an N = 2^17 derivation
//! (128 MiB of memory).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde::Deserialize;
use serde_json::{Value, json};

use super::registry::OCI_MANIFEST;
use super::{
    COSIGN_TYPE, Digest, OciError, Reference, Registry, SIGNATURE_ANNOTATION, SIMPLE_SIGNING,
    SignatureError, SignatureLimits, Signer, Trust, TrustedKey, signature_tag,
};

/// The PEM label of a private key as cosign and skopeo write it; what `keygen` writes.
pub const COSIGN_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The PEM label current sigstore libraries write; read too.
pub const SIGSTORE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The largest private key file read, in bytes (a P-256 key is about 650).
pub const MAX_PRIVATE_KEY_FILE: u64 = 16 << 10;
/// The largest passphrase file read, in bytes.
pub const MAX_PASSPHRASE_FILE: u64 = 4 << 10;
/// The scrypt work factors read (log2 N); every reader takes the first, which is written.
const LOG_N: [u8; 3] = [15, 16, 17];
/// scrypt's block size and parallelism, the only ones read and the ones written.
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// The salt written, and the range of lengths read, in bytes.
const SALT_BYTES: usize = 32;
const SALT_READ: std::ops::RangeInclusive<usize> = 16..=64;
/// The secretbox nonce, in bytes.
const NONCE_BYTES: usize = 24;
/// The secretbox tag, in bytes.
const TAG_BYTES: usize = 16;
/// The longest sealed key read, in bytes (a P-256 PKCS#8 key sealed is about 155).
const MAX_CIPHERTEXT: usize = 1024;
/// The media type of a signature manifest's config.
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Why a private key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateKeyError {
    /// The file could not be read.
    #[error("{name}: {message}")]
    Read {
        /// The file.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The file is larger than [`MAX_PRIVATE_KEY_FILE`]: refused before it is read whole.
    #[error("{name}: over the limit of {limit} bytes for a private key file")]
    TooLarge {
        /// The file.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// A PEM block with another label.
    #[error(
        "{name}: a PEM `{label}`: expected `{COSIGN_KEY_LABEL}` or `{SIGSTORE_KEY_LABEL}` (keys are read encrypted only; `flowgate keygen` makes one)"
    )]
    Label {
        /// The file.
        name: String,
        /// The label found.
        label: String,
    },
    /// Not the cosign format: the PEM framing, the JSON, or one of its members.
    #[error("{name}: not an encrypted cosign private key: {message}")]
    Format {
        /// The file.
        name: String,
        /// Where and what.
        message: String,
    },
    /// Key derivation parameters other than those read: refused before scrypt runs.
    #[error(
        "{name}: kdf {message}: only scrypt with N = 32768, 65536 or 131072, r = 8 and p = 1 is read (refused before deriving anything)"
    )]
    Kdf {
        /// The file.
        name: String,
        /// The parameter and its value.
        message: String,
    },
    /// The secretbox does not open: a wrong passphrase, or a file altered.
    #[error("{name}: decryption failed: a wrong passphrase, or the file was altered")]
    Decryption {
        /// The file.
        name: String,
    },
    /// The decrypted key is not an ECDSA P-256 PKCS#8 key.
    #[error("{name}: the decrypted key is not an ECDSA P-256 PKCS#8 private key: {message}")]
    NotP256 {
        /// The file.
        name: String,
        /// What the parser said.
        message: String,
    },
}

/// Why a passphrase file was not read.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The file could not be read.
    #[error("{name}: {message}")]
    Read {
        /// The file.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Larger than [`MAX_PASSPHRASE_FILE`].
    #[error("{name}: over the limit of {limit} bytes for a passphrase file")]
    TooLarge {
        /// The file.
        name: String,
        /// The limit.
        limit: u64,
    },
}

/// Why a key pair, or a file created anew with [`create_new`], was not written.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A file to be created already exists (or is a symbolic link): nothing is overwritten.
    #[error("{path}: already exists: refused (nothing is overwritten)")]
    Exists {
        /// The file.
        path: String,
    },
    /// A file could not be written.
    #[error("{path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// An empty passphrase would leave the key as good as unencrypted.
    #[error("an empty passphrase: refused (the private key is stored encrypted with it)")]
    EmptyPassphrase,
    /// The system's random source failed, or an encoding did.
    #[error("making the key: {0}")]
    Internal(String),
}

/// Why a module was not signed in its registry.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The registry failed or refused a request.
    #[error(transparent)]
    Registry(#[from] OciError),
    /// The reference's host would be read as a Docker Hub namespace in the signed identity.
    #[error(
        "{reference}: the registry host `{host}` has neither `.` nor `:` and is not `localhost`, so a signed identity naming it would be read as a Docker Hub repository: give the host with its domain or port"
    )]
    Identity {
        /// The reference.
        reference: String,
        /// Its host.
        host: String,
    },
    /// The tag `sha256-<hex>.sig` holds something that is not an OCI image manifest of
    /// signatures: it is left as it is.
    #[error(
        "{reference}: the signature manifest `{tag}` is not one flowgate can add to ({message}): it is left as it is and nothing is signed"
    )]
    Existing {
        /// The module's reference.
        reference: String,
        /// The tag.
        tag: String,
        /// What is wrong with it.
        message: String,
    },
    /// The signature manifest already holds as many signature layers as a verifier reads.
    #[error(
        "{reference}: the signature manifest `{tag}` holds {count} signature layers; one more would pass the {limit} a verifier reads: nothing is signed"
    )]
    Full {
        /// The module's reference.
        reference: String,
        /// The tag.
        tag: String,
        /// How many it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The signature manifest read back does not hold the signature just written (another
    /// signer wrote the tag at the same time, or the registry did not keep it).
    #[error(
        "{reference}: the signature manifest `{tag}` read back does not hold the signature just written ({payload}): sign again"
    )]
    NotStored {
        /// The module's reference.
        reference: String,
        /// The tag.
        tag: String,
        /// The payload's digest.
        payload: Digest,
    },
    /// The signature was written but does not verify with the key's public half.
    #[error("the signature was written but does not verify: {0}")]
    Verify(#[source] Box<SignatureError>),
}

/// Why a module file was not signed.
#[derive(Debug, thiserror::Error)]
pub enum DetachedError {
    /// The file could not be read.
    #[error("{name}: {message}")]
    Read {
        /// The file.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The file's name is not UTF-8 text (it is the signed identity).
    #[error("{name}: the file name is not UTF-8 text, and it is the identity signed")]
    Name {
        /// The file.
        name: String,
    },
}

/// A private signing key: ECDSA P-256, named by the file it came from.
pub struct SigningKey {
    name: String,
    key: p256::ecdsa::SigningKey,
    public: TrustedKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The JSON inside a private key's PEM block (every member required, no other).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kdf: SealedKdf,
    cipher: SealedCipher,
    ciphertext: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedKdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

/// Kept as JSON values so that any value, even one no integer type holds, is refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: Value,
    r: Value,
    p: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedCipher {
    name: String,
    nonce: String,
}

impl SigningKey {
    /// A new key from the system's random source.
    pub fn generate(name: &str) -> Result<SigningKey, KeygenError> {
        // A random scalar is valid but for zero or one at least the group order, which 32
        // random bytes are with a probability of about 2^-32; a few tries are plenty.
        for _ in 0..8 {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(&mut bytes[..])
                .map_err(|e| KeygenError::Internal(e.to_string()))?;
            if let Ok(key) = p256::ecdsa::SigningKey::from_bytes(&(*bytes).into()) {
                return SigningKey::new(name, key)
                    .map_err(|e| KeygenError::Internal(e.to_string()));
            }
        }
        Err(KeygenError::Internal(
            "the random source gave no valid P-256 scalar in 8 tries".into(),
        ))
    }

    fn new(name: &str, key: p256::ecdsa::SigningKey) -> Result<SigningKey, String> {
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let public = TrustedKey::from_pem(name, &pem).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            name: name.to_owned(),
            key,
            public,
        })
    }

    /// The key in the file at `path` (at most [`MAX_PRIVATE_KEY_FILE`] bytes), decrypted with
    /// `passphrase`, named by its path.
    pub fn read(path: &Path, passphrase: &[u8]) -> Result<SigningKey, PrivateKeyError> {
        let name = path.display().to_string();
        let read = |e: std::io::Error| PrivateKeyError::Read {
            name: name.clone(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_PRIVATE_KEY_FILE.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_PRIVATE_KEY_FILE {
            return Err(PrivateKeyError::TooLarge {
                name,
                limit: MAX_PRIVATE_KEY_FILE,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| PrivateKeyError::Format {
            name: name.clone(),
            message: "not text".into(),
        })?;
        SigningKey::from_pem(&name, &text, passphrase)
    }

    /// The key in the PEM `text`, named `name`, decrypted with `passphrase`.
    pub fn from_pem(
        name: &str,
        text: &str,
        passphrase: &[u8],
    ) -> Result<SigningKey, PrivateKeyError> {
        let format = |message: String| PrivateKeyError::Format {
            name: name.to_owned(),
            message,
        };
        let (label, body) = pem_block(text).map_err(format)?;
        if label != COSIGN_KEY_LABEL && label != SIGSTORE_KEY_LABEL {
            return Err(PrivateKeyError::Label {
                name: name.to_owned(),
                label: label.to_owned(),
            });
        }
        let sealed: Sealed = serde_json::from_slice(&body)
            .map_err(|e| format(format!("the PEM body's JSON: {e}")))?;
        let kdf = |message: String| PrivateKeyError::Kdf {
            name: name.to_owned(),
            message,
        };
        if sealed.kdf.name != "scrypt" {
            return Err(kdf(format!("name `{}`", shown(&sealed.kdf.name))));
        }
        let params = &sealed.kdf.params;
        let log_n = params
            .n
            .as_u64()
            .and_then(|n| LOG_N.into_iter().find(|&l| 1u64 << l == n))
            .ok_or_else(|| kdf(format!("scrypt N = {}", shown(&params.n.to_string()))))?;
        if params.r.as_u64() != Some(u64::from(SCRYPT_R)) {
            return Err(kdf(format!("scrypt r = {}", shown(&params.r.to_string()))));
        }
        if params.p.as_u64() != Some(u64::from(SCRYPT_P)) {
            return Err(kdf(format!("scrypt p = {}", shown(&params.p.to_string()))));
        }
        if sealed.cipher.name != "nacl/secretbox" {
            return Err(format(format!(
                "cipher.name `{}`: expected `nacl/secretbox`",
                shown(&sealed.cipher.name)
            )));
        }
        let salt = decode_field("kdf.salt", &sealed.kdf.salt, SALT_READ).map_err(format)?;
        let nonce = decode_field(
            "cipher.nonce",
            &sealed.cipher.nonce,
            NONCE_BYTES..=NONCE_BYTES,
        )
        .map_err(format)?;
        let ciphertext = decode_field(
            "ciphertext",
            &sealed.ciphertext,
            TAG_BYTES + 1..=MAX_CIPHERTEXT,
        )
        .map_err(format)?;
        let box_key = derive(passphrase, &salt, log_n).map_err(format)?;
        let nonce: [u8; NONCE_BYTES] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| format("cipher.nonce is not 24 bytes".into()))?;
        let der = Zeroizing::new(
            XSalsa20Poly1305::new(&(*box_key).into())
                .decrypt(&nonce.into(), ciphertext.as_slice())
                .map_err(|_| PrivateKeyError::Decryption {
                    name: name.to_owned(),
                })?,
        );
        let not_p256 = |message: String| PrivateKeyError::NotP256 {
            name: name.to_owned(),
            message,
        };
        let secret = p256::SecretKey::from_pkcs8_der(&der).map_err(|e| not_p256(e.to_string()))?;
        SigningKey::new(name, p256::ecdsa::SigningKey::from(secret)).map_err(not_p256)
    }

    /// The key sealed with `passphrase` as `keygen` writes it: a PEM
    /// `ENCRYPTED COSIGN PRIVATE KEY`, scrypt N = 32768, r = 8, p = 1, a random 32-byte salt
    /// and 24-byte nonce.
    pub fn encrypted_pem(&self, passphrase: &[u8]) -> Result<Zeroizing<String>, KeygenError> {
        let internal = KeygenError::Internal;
        let mut salt = [0u8; SALT_BYTES];
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut salt).map_err(|e| internal(e.to_string()))?;
        getrandom::getrandom(&mut nonce).map_err(|e| internal(e.to_string()))?;
        let box_key = derive(passphrase, &salt, LOG_N[0]).map_err(internal)?;
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| internal(e.to_string()))?;
        let sealed = XSalsa20Poly1305::new(&(*box_key).into())
            .encrypt(&nonce.into(), der.as_bytes())
            .map_err(|_| internal("the secretbox failed".into()))?;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = json!({
            "kdf": {
                "name": "scrypt",
                "params": {"N": 1u32 << LOG_N[0], "r": SCRYPT_R, "p": SCRYPT_P},
                "salt": b64(&salt),
            },
            "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
            "ciphertext": b64(&sealed),
        });
        Ok(Zeroizing::new(pem(
            COSIGN_KEY_LABEL,
            body.to_string().as_bytes(),
        )))
    }

    /// The public half as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> Result<String, KeygenError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeygenError::Internal(e.to_string()))
    }

    /// The public half, named as this key is, as a verifier trusts it.
    pub fn public(&self) -> &TrustedKey {
        &self.public
    }

    /// The name it was given (its file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the public half's SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> Digest {
        self.public.fingerprint()
    }

    /// The ECDSA P-256 signature of SHA-256(`payload`), ASN.1 DER.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = self.key.sign(payload);
        signature.to_der().as_bytes().to_vec()
    }
}

/// scrypt(`passphrase`, `salt`, N = 2^`log_n`, r = 8, p = 1), 32 bytes.
fn derive(passphrase: &[u8], salt: &[u8], log_n: u8) -> Result<Zeroizing<[u8; 32]>, String> {
    let params = scrypt::Params::new(log_n, SCRYPT_R, SCRYPT_P, 32).map_err(|e| e.to_string())?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, &mut key[..]).map_err(|e| e.to_string())?;
    Ok(key)
}

/// The label and decoded body of the one PEM block `text` holds (whitespace around it only;
/// no PEM headers), at most [`MAX_PRIVATE_KEY_FILE`] bytes of body.
fn pem_block(text: &str) -> Result<(&str, Vec<u8>), String> {
    let mut lines = text.trim().lines().map(str::trim_end);
    let first = lines.next().unwrap_or_default();
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("no PEM `-----BEGIN ...-----` line at its start")?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        if line.contains(':') {
            return Err("a PEM header line: none is read".into());
        }
        body.push_str(line.trim_start());
    }
    if !ended {
        return Err(format!("no `{end}` line"));
    }
    if lines.next().is_some() {
        return Err(format!("more after the `{end}` line"));
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    Ok((label, body))
}

/// A PEM block of `bytes` under `label`, in lines of 64 characters.
fn pem(label: &str, bytes: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A base64 member of a key file, decoded: its text bounded before it is decoded, and its
/// length in `range`.
fn decode_field(
    member: &str,
    text: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<Vec<u8>, String> {
    // Padded base64 of `n` bytes is 4 * ceil(n / 3) characters.
    let longest = range.end().div_ceil(3).saturating_mul(4);
    if text.len() > longest {
        return Err(format!(
            "{member} is {} characters, more than {longest}",
            text.len()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{member} is not base64: {e}"))?;
    if !range.contains(&bytes.len()) {
        return Err(format!(
            "{member} is {} bytes, not {}",
            bytes.len(),
            if range.start() == range.end() {
                range.start().to_string()
            } else {
                format!("{} to {}", range.start(), range.end())
            }
        ));
    }
    Ok(bytes)
}

/// At most 64 characters of `text`, for a message.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The passphrase in the file at `path`: its first line, without the line's end (`\n` or
/// `\r\n`), as skopeo reads `--sign-passphrase-file`. The file is at most
/// [`MAX_PASSPHRASE_FILE`] bytes.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    let name = path.display().to_string();
    let read = |e: std::io::Error| PassphraseError::Read {
        name: name.clone(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PASSPHRASE_FILE.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE {
        return Err(PassphraseError::TooLarge {
            name,
            limit: MAX_PASSPHRASE_FILE,
        });
    }
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Zeroizing::new(line.to_vec()))
}

/// The two files `keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The encrypted private key, `PREFIX.key`.
    pub private: PathBuf,
    /// The public key, `PREFIX.pub`.
    pub public: PathBuf,
    /// The public key's fingerprint.
    pub fingerprint: Digest,
}

/// Makes a key pair: `PREFIX.key`, the private key sealed with `passphrase` (mode 0600), and
/// `PREFIX.pub`, its public half (mode 0644). Each is created anew, never through a symbolic
/// link; when either exists nothing is written.
pub fn keygen(prefix: &Path, passphrase: &[u8]) -> Result<KeyFiles, KeygenError> {
    if passphrase.is_empty() {
        return Err(KeygenError::EmptyPassphrase);
    }
    let with = |ext: &str| {
        let mut path = prefix.as_os_str().to_owned();
        path.push(ext);
        PathBuf::from(path)
    };
    let (private, public) = (with(".key"), with(".pub"));
    for path in [&private, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(KeygenError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    let key = SigningKey::generate(&private.display().to_string())?;
    let sealed = key.encrypted_pem(passphrase)?;
    let public_pem = key.public_pem()?;
    create_new(&private, sealed.as_bytes(), 0o600)?;
    if let Err(e) = create_new(&public, public_pem.as_bytes(), 0o644) {
        // Only the file made just now is taken back.
        let _ = std::fs::remove_file(&private);
        return Err(e);
    }
    Ok(KeyFiles {
        private,
        public,
        fingerprint: key.fingerprint(),
    })
}

/// Creates `path` with `bytes` and `mode` (less the umask), failing if anything (a symbolic
/// link included) is there; the bytes are on disk when it returns.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeygenError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeygenError::Exists { path: name.clone() },
            _ => KeygenError::Write {
                path: name.clone(),
                message: e.to_string(),
            },
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| KeygenError::Write {
            path: name,
            message: e.to_string(),
        })
}

/// The cosign simple-signing payload for the manifest `digest` signed as `identity`, made
/// now: see [`payload_at`].
pub fn payload(identity: &str, digest: &Digest) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    payload_at(identity, digest, now)
}

/// The cosign simple-signing payload, its members sorted as skopeo writes them:
/// `{"critical":{"identity":{"docker-reference":IDENTITY},"image":{"docker-manifest-digest":DIGEST},"type":"cosign container image signature"},"optional":{"creator":"flowgate VERSION","timestamp":UNIX}}`.
pub fn payload_at(identity: &str, digest: &Digest, timestamp: u64) -> Vec<u8> {
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": COSIGN_TYPE,
        },
        "optional": {
            "creator": concat!("flowgate ", env!("CARGO_PKG_VERSION")),
            "timestamp": timestamp,
        },
    });
    payload.to_string().into_bytes()
}

/// A detached signature file's contents: `{"payload":B64,"signature":B64}` and a newline,
/// each standard padded base64 (the payload's bytes; the ASN.1 DER signature).
pub fn detached(payload: &[u8], signature_der: &[u8]) -> Vec<u8> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "{{\"payload\":\"{}\",\"signature\":\"{}\"}}\n",
        b64(payload),
        b64(signature_der)
    )
    .into_bytes()
}

/// A module file signed: what the signature file holds, and what it signs.
#[derive(Debug, Clone)]
pub struct DetachedSignature {
    /// The signature file's contents ([`detached`]).
    pub bytes: Vec<u8>,
    /// The SHA-256 of the module file.
    pub digest: Digest,
    /// The identity signed: the file's name.
    pub identity: String,
}

/// Signs the module file at `path`: a payload naming the SHA-256 of its bytes as the
/// manifest digest and its file name (the last component of the path) as the identity.
pub fn sign_file(path: &Path, key: &SigningKey) -> Result<DetachedSignature, DetachedError> {
    use sha2::Digest as _;
    let name = path.display().to_string();
    let identity = path
        .file_name()
        .ok_or_else(|| DetachedError::Read {
            name: name.clone(),
            message: "not a file name".into(),
        })?
        .to_str()
        .ok_or_else(|| DetachedError::Name { name: name.clone() })?
        .to_owned();
    let mut file = std::fs::File::open(path).map_err(|e| DetachedError::Read {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| DetachedError::Read {
        name,
        message: e.to_string(),
    })?;
    let digest = Digest(hasher.finalize().into());
    let payload = payload(&identity, &digest);
    let signature = key.sign(&payload);
    Ok(DetachedSignature {
        bytes: detached(&payload, &signature),
        digest,
        identity,
    })
}

/// A module signed in its registry.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The module's reference pinned to its manifest digest.
    pub reference: Reference,
    /// The identity signed.
    pub identity: String,
    /// The digest of the payload written.
    pub payload: Digest,
    /// The signature manifest written.
    pub signature_manifest: Digest,
    /// The signature layers it holds, the new one last.
    pub layers: usize,
    /// What the verifier found afterwards, trusting the key's public half alone.
    pub signer: Signer,
}

/// The identity a module at `r` whose manifest has `digest` is signed as:
/// `HOST[:PORT]/REPO:TAG` when `r` has a tag, else `HOST[:PORT]/REPO@sha256:...`.
pub fn identity(r: &Reference, digest: &Digest) -> String {
    match &r.tag {
        Some(tag) => format!("{}/{}:{tag}", r.registry, r.repository),
        None => format!("{}/{}@{digest}", r.registry, r.repository),
    }
}

/// Signs the module `r` names in its registry with `key`, as skopeo and cosign do: the
/// manifest's digest resolved, the payload uploaded, and a layer carrying its signature
/// appended to the signature manifest `sha256-<hex>.sig` (made when there is none; one that is
/// not an OCI image manifest is left alone and signing refused), whose config is rewritten to
/// list every layer. Then the signature manifest is read back and the module verified with
/// the key's public half.
pub fn sign(registry: &Registry, r: &Reference, key: &SigningKey) -> Result<Signed, SignError> {
    let (host, _) = super::reference::split_registry(&r.registry);
    if !(host.contains('.')
        || r.registry.contains(':')
        || host == "localhost"
        || host.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(SignError::Identity {
            reference: r.to_string(),
            host: r.registry.clone(),
        });
    }
    let limits = SignatureLimits::default();
    let (_, digest) = registry.manifest(r)?;
    let pinned = r.pinned(digest);
    let tag = signature_tag(&digest);
    let existing = |message: String| SignError::Existing {
        reference: pinned.to_string(),
        tag: tag.clone(),
        message,
    };
    let what = "GET signature manifest";
    let mut layers = match registry.manifest_any(r, what, &tag, limits.manifest_bytes)? {
        Some(bytes) => existing_layers(&bytes).map_err(existing)?,
        None => Vec::new(),
    };
    let signatures = layers
        .iter()
        .filter(|l| l["mediaType"].as_str() == Some(SIMPLE_SIGNING))
        .count();
    if signatures >= limits.layers {
        return Err(SignError::Full {
            reference: pinned.to_string(),
            tag,
            count: signatures,
            limit: limits.layers,
        });
    }

    let identity = identity(r, &digest);
    let payload = payload(&identity, &digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    let payload_digest = registry.upload(r, &payload)?;
    layers.push(json!({
        "mediaType": SIMPLE_SIGNING,
        "digest": payload_digest.to_string(),
        "size": payload.len(),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }));
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = registry.upload(r, config.as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": IMAGE_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers,
    })
    .to_string();
    let written = registry.put_manifest(r, &tag, manifest.as_bytes(), OCI_MANIFEST)?;

    // Read back: a registry that kept something else, or a signer that wrote the tag at the
    // same time, leaves the module without this signature.
    let stored = registry
        .manifest_any(r, what, &tag, limits.manifest_bytes)?
        .map(|bytes| existing_layers(&bytes).unwrap_or_default())
        .unwrap_or_default();
    let held = stored.iter().any(|l| {
        l["digest"].as_str() == Some(payload_digest.to_string().as_str())
            && l["annotations"][SIGNATURE_ANNOTATION].as_str() == Some(signature.as_str())
    });
    if !held {
        return Err(SignError::NotStored {
            reference: pinned.to_string(),
            tag,
            payload: payload_digest,
        });
    }
    let signer = Trust::new(vec![key.public().clone()])
        .verify(registry, r, digest)
        .map_err(|e| SignError::Verify(Box::new(e)))?;
    Ok(Signed {
        reference: pinned,
        identity,
        payload: payload_digest,
        signature_manifest: written,
        layers: stored.len(),
        signer,
    })
}

/// The layers of an existing signature manifest, kept as they are, or why it is not one a
/// signature may be added to: it must be an OCI image manifest (schemaVersion 2, its
/// `mediaType` the OCI image manifest's) whose layers are descriptors.
fn existing_layers(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let manifest: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if manifest["schemaVersion"].as_u64() != Some(2) {
        return Err("not schemaVersion 2".into());
    }
    let media = manifest["mediaType"].as_str().unwrap_or_default();
    if media != OCI_MANIFEST {
        return Err(format!(
            "a manifest of type {media:?}, not an OCI image manifest ({OCI_MANIFEST})"
        ));
    }
    let Some(layers) = manifest["layers"].as_array() else {
        return Err("no layers".into());
    };
    for (i, layer) in layers.iter().enumerate() {
        let good = layer["mediaType"].is_string()
            && layer["size"].is_u64()
            && layer["digest"]
                .as_str()
                .is_some_and(|d| Digest::parse(d).is_ok());
        if !good {
            return Err(format!(
                "layer {i} is not a descriptor (mediaType, a sha256 digest, size)"
            ));
        }
    }
    Ok(layers.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_compact_json_with_members_sorted() {
        let digest = Digest([0xab; 32]);
        let payload = payload_at("127.0.0.1:5000/p/f:v1", &digest, 1796506492);
        let expected = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/p/f:v1"}},"image":{{"docker-manifest-digest":"sha256:{}"}},"type":"cosign container image signature"}},"optional":{{"creator":"flowgate {}","timestamp":1796506492}}}}"#,
            "ab".repeat(32),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(payload).unwrap(), expected);
    }

    #[test]
    fn detached_signatures_are_two_members_and_a_newline() {
        assert_eq!(
            detached(b"{}", &[0x30, 0x06]),
            b"{\"payload\":\"e30=\",\"signature\":\"MAY=\"}\n"
        );
    }

    #[test]
    fn pem_blocks_are_framed_strictly() {
        let good = "-----BEGIN X-----\nAAEC\nAw==\n-----END X-----\n";
        assert_eq!(pem_block(good).unwrap(), ("X", vec![0, 1, 2, 3]));
        assert_eq!(pem_block(&pem("X", &[0, 1, 2, 3])).unwrap().1, [0, 1, 2, 3]);
        for bad in [
            "",
            "AAEC",
            "-----BEGIN X-----\nAAEC\n",
            "-----BEGIN X-----\nAAEC\n-----END Y-----\n",
            "-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\nAAEC\n-----END X-----\n",
            "-----BEGIN X-----\nAA!C\n-----END X-----\n",
            "-----BEGIN X-----\nAAEC\n-----END X-----\nmore",
        ] {
            assert!(pem_block(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_members_are_bounded_before_they_are_decoded() {
        assert_eq!(decode_field("m", "AAEC", 3..=3).unwrap(), [0, 1, 2]);
        assert!(decode_field("m", "AAEC", 4..=8).is_err());
        assert!(decode_field("m", &"A".repeat(1 << 20), 1..=64).is_err());
        assert!(decode_field("m", "AAE", 1..=64).is_err());
    }
}
