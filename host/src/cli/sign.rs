//! The signing commands: `keygen`, `sign` (in a registry, or `--detached` for a module file),
//! and the signing half of `push --sign-key`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use flowgate_host::oci::{self, Reference, Registry, SigningKey};
use p256::elliptic_curve::zeroize::Zeroizing;

use super::*;

impl PassphraseArgs {
    /// The passphrase: the first line of --passphrase-file, else the variable
    /// --passphrase-env names.
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>> {
        if let Some(path) = &self.passphrase_file {
            return Ok(oci::read_passphrase_file(path)?);
        }
        match std::env::var_os(&self.passphrase_env) {
            Some(value) => Ok(Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(
                value,
            ))),
            None => bail!(
                "no passphrase: give --passphrase-file FILE, or set the environment variable {} (another variable is named with --passphrase-env)",
                self.passphrase_env
            ),
        }
    }
}

/// The private key at `path`, decrypted with the passphrase `passphrase` gives.
pub fn read_key(path: &Path, passphrase: &PassphraseArgs) -> Result<SigningKey> {
    let passphrase = passphrase.read()?;
    Ok(SigningKey::read(path, &passphrase)?)
}

impl KeygenArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let passphrase = self.passphrase.read()?;
        let files = oci::keygen(&self.prefix, &passphrase)?;
        outln!(
            "{}: private key, encrypted (scrypt N=32768 r=8 p=1, nacl/secretbox)",
            files.private.display()
        )?;
        outln!(
            "{}: public key, fingerprint {}",
            files.public.display(),
            files.fingerprint
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

impl SignArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let key = read_key(&self.key, &self.passphrase)?;
        if self.detached {
            return sign_detached(Path::new(&self.target), &key, self.force);
        }
        let reference = Reference::parse(&self.target).map_err(anyhow::Error::msg)?;
        let registry = Registry::new(REGISTRY.get().cloned().unwrap_or_default());
        sign_in_registry(&registry, &reference, &key)
    }
}

/// Signs the module `reference` names and prints what the verifier found afterwards.
pub fn sign_in_registry(
    registry: &Registry,
    reference: &Reference,
    key: &SigningKey,
) -> Result<ExitCode> {
    // A registry's error as itself, so that the hint for the setting behind it is given.
    let signed = oci::sign(registry, reference, key).map_err(|e| match e {
        oci::SignError::Registry(e) => anyhow::Error::new(e),
        e => anyhow::Error::new(e),
    })?;
    tracing::info!(
        event = "sign",
        reference = %signed.reference,
        identity = %signed.identity,
        payload = %signed.payload,
        signature_manifest = %signed.signature_manifest,
        layers = signed.layers,
        "signed {}",
        signed.reference
    );
    outln!(
        "{}: signed by {} ({}) as {}",
        signed.reference,
        key.name(),
        key.fingerprint(),
        signed.identity
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `flowgate sign --detached`: the signature of the module file at `module` into
/// `MODULE.sig`, created anew (mode 0644 less the umask, never through a symbolic link), or
/// with `force` replacing what is there whole.
fn sign_detached(module: &Path, key: &SigningKey, force: bool) -> Result<ExitCode> {
    let signature = oci::sign_file(module, key)?;
    let mut path = module.as_os_str().to_owned();
    path.push(".sig");
    let path = PathBuf::from(path);
    if force {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let writing = || format!("writing {}", path.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".flowgate-sig")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .with_context(writing)?;
        std::io::Write::write_all(&mut tmp, &signature.bytes).with_context(writing)?;
        tmp.as_file().sync_all().with_context(writing)?;
        tmp.persist(&path).with_context(writing)?;
    } else {
        match oci::create_new(&path, &signature.bytes, 0o644) {
            Err(oci::KeygenError::Exists { path }) => {
                bail!("{path}: already exists: refused (--force replaces it)")
            }
            other => other?,
        }
    }
    outln!(
        "{}: {} ({}) signed by {} ({}) as {}",
        path.display(),
        module.display(),
        signature.digest,
        key.name(),
        key.fingerprint(),
        signature.identity
    )?;
    Ok(ExitCode::SUCCESS)
}
