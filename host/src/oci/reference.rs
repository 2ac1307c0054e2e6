//! `oci://HOST[:PORT]/REPO:TAG` and `oci://HOST[:PORT]/REPO@sha256:DIGEST`, checked before
//! anything is sent (a malformed digest makes the reference registry answer 500 with its
//! storage path).

use std::fmt;

/// A sha256 digest, as OCI writes it: `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// Reads `sha256:HEX`.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("`{text}` is not a sha256 digest (sha256:<64 hex digits>)"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "`{text}` is not a sha256 digest: 64 lowercase hex digits after `sha256:`"
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("`{text}` is not a sha256 digest"))?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", crate::hex(&self.0))
    }
}

/// A module in a registry: by tag (which may move) or by digest (which never does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST` or `HOST:PORT`.
    pub registry: String,
    /// The repository, such as `policies/flowgate`.
    pub repository: String,
    /// The tag, when the reference names one.
    pub tag: Option<String>,
    /// The manifest's digest, when the reference pins one.
    pub digest: Option<Digest>,
}

/// The prefix of a reference, where a module path may stand.
pub const SCHEME: &str = "oci://";

impl Reference {
    /// Whether `text` is meant as a reference (it starts with `oci://`).
    pub fn is_reference(text: &str) -> bool {
        text.starts_with(SCHEME)
    }

    /// Reads `oci://HOST[:PORT]/REPO(:TAG|@sha256:DIGEST)`.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("`{text}` does not start with {SCHEME}"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: no repository after the registry"))?;
        check_registry(registry).map_err(|e| format!("`{text}`: {e}"))?;
        let (name, digest) = match path.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (path, None),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (name, None),
        };
        check_repository(repository).map_err(|e| format!("`{text}`: {e}"))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|e| format!("`{text}`: {e}"))?;
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "`{text}`: name a tag (`:TAG`) or pin a digest (`@sha256:...`)"
            ));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The manifest to ask for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The same reference pinned to `digest`.
    pub fn pinned(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn check_registry(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a registry host[:port]"))
    }
}

/// Path components of lowercase letters and digits, joined by `.`, `_`, `__` or `-`s
/// (the distribution spec's grammar).
fn check_repository(repo: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if repo.len() <= 255 && repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "`{repo}` is not a repository name (lowercase letters, digits, `._-` inside, `/` between parts)"
        ))
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let first_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "`{tag}` is not a tag (up to 128 of letters, digits, `._-`, not starting with `.` or `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_by_tag_and_by_digest() {
        let r = Reference::parse("oci://127.0.0.1:5000/policies/flowgate:v1").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.tag.as_deref(),
                r.digest
            ),
            ("127.0.0.1:5000", "policies/flowgate", Some("v1"), None)
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("oci://registry.example/p@{d}")).unwrap();
        assert_eq!(
            (r.tag.clone(), r.digest.map(|d| d.to_string())),
            (None, Some(d.clone()))
        );
        assert_eq!(r.manifest_ref(), d);
        let both = Reference::parse(&format!("oci://r:1/p:t@{d}")).unwrap();
        assert_eq!(both.to_string(), format!("oci://r:1/p:t@{d}"));
    }

    #[test]
    fn malformed_references_are_refused_before_anything_is_sent() {
        for bad in [
            "oci://r/p@sha256:abc",
            "oci://r/p@md5:00",
            "oci://r/P:t",
            "oci://r/p",
            "oci://r/p:-t",
            "oci:///p:t",
            "oci://r:0/p:t",
            "oci://r:99999/p:t",
            "oci://r/p/:t",
            "http://r/p:t",
            "oci://r/p:t/../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(Digest::parse(&format!("sha256:{}", "AB".repeat(32))).is_err());
    }
}
