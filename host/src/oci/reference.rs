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

/// Checks a registry as references and logins name it: `HOST` or `HOST:PORT`, where `HOST` is
/// a name (letters, digits, `.` and `-`), an IPv4 address, or an IPv6 address in brackets.
pub fn check_registry(registry: &str) -> Result<(), String> {
    let (name, port) = split_registry(registry);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(inside) => {
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                return Err(format!(
                    "`{registry}`: brackets hold an IPv6 address, and `{inside}` is not one (an IPv4 address or a name goes without them: `{inside}{port}`)"
                ));
            }
            true
        }
        None => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        }
    };
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(format!("`{registry}` is not a registry host[:port]"))
    }
}

/// `HOST[:PORT]` split into the host (an IPv6 address keeps its brackets) and the port text.
pub(crate) fn split_registry(registry: &str) -> (&str, Option<&str>) {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(end) => {
                let (host, rest) = registry.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    // Text after the brackets that is no port: the whole is no host.
                    None if !rest.is_empty() => (registry, None),
                    None => (host, None),
                }
            }
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

/// Whether `host` (without its port) names this machine's loopback interface by itself,
/// without asking DNS: `localhost` in any case, an IPv6 loopback address in brackets (IPv4
/// mapped ones too), or an IPv4 address in 127.0.0.0/8, also in the short forms the C
/// library's resolver reads as one (`127.1` is 127.0.0.1). Only decimal parts are read, so
/// that every form counted here is read the same way by the resolver that connects.
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inside.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        });
    }
    ipv4(host).is_some_and(|ip| ip.is_loopback())
}

/// An IPv4 address in dotted form, with one to four decimal parts as `inet_aton` reads them
/// (the last part fills the bytes left); no leading zeros, which `inet_aton` reads as octal.
fn ipv4(text: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        if part.is_empty()
            || part.len() > 10
            || !part.bytes().all(|b| b.is_ascii_digit())
            || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        values.push(part.parse::<u64>().ok()?);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 255) {
        return None;
    }
    let room = 8 * (4 - leading.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut address = *last;
    for (i, &v) in leading.iter().enumerate() {
        address |= v << (24 - 8 * i as u32);
    }
    u32::try_from(address).ok().map(std::net::Ipv4Addr::from)
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
        for bad in [
            "oci://[127.0.0.1]:5000/p:t",
            "oci://::1:5000/p:t",
            "oci://[::1/p:t",
            "oci://[::1]x/p:t",
            "oci://[::1]x:5000/p:t",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_by_name_and_by_every_form_of_its_address() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "127.255.255.254",
            "[::1]",
            "[0:0:0:0:0:0:0:1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "localhost.example",
            "128.0.0.1",
            "0127.1",
            "0x7f.1",
            "127.256.0.0.1",
            "4294967296",
            "[::2]",
            "[127.0.0.1]",
            "10.0.0.1",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
        assert_eq!(ipv4("127.1"), Some(std::net::Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(ipv4("10.16777216"), None);
        assert_eq!(
            ipv4("10.65535"),
            Some(std::net::Ipv4Addr::new(10, 0, 255, 255))
        );
    }
}
