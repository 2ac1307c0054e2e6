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
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Algorithm {
                text: text.to_owned(),
            })?;
        let wrong = || DigestError::Hex {
            text: text.to_owned(),
        };
        if hex.len() != 64 {
            return Err(wrong());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = nibble(pair[0]).ok_or_else(wrong)? << 4 | nibble(pair[1]).ok_or_else(wrong)?;
        }
        Ok(Digest(out))
    }
}

/// The value of a lowercase hex digit.
fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `sha256:` before the digits (another algorithm, or none).
    #[error("`{text}` is not a sha256 digest (sha256:<64 hex digits>)")]
    Algorithm {
        /// The digest as written.
        text: String,
    },
    /// After `sha256:`, not 64 lowercase hex digits.
    #[error("`{text}` is not a sha256 digest: 64 lowercase hex digits after `sha256:`")]
    Hex {
        /// The digest as written.
        text: String,
    },
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
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let owned = || text.to_owned();
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| ReferenceError::Scheme { text: owned() })?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| ReferenceError::NoRepository { text: owned() })?;
        check_registry(registry).map_err(|error| ReferenceError::Registry {
            text: owned(),
            error,
        })?;
        let (name, digest) = match path.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (path, None),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (name, None),
        };
        if !is_repository(repository) {
            return Err(ReferenceError::Repository {
                text: owned(),
                repository: repository.to_owned(),
            });
        }
        if let Some(tag) = tag.filter(|tag| !is_tag(tag)) {
            return Err(ReferenceError::Tag {
                text: owned(),
                tag: tag.to_owned(),
            });
        }
        if tag.is_none() && digest.is_none() {
            return Err(ReferenceError::Unversioned { text: owned() });
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

/// Why a reference was refused. Each names the reference as written (`text`), but for a
/// malformed digest, which names the digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// No `oci://` in front.
    #[error("`{text}` does not start with {SCHEME}")]
    Scheme {
        /// The reference as written.
        text: String,
    },
    /// No `/` after the registry.
    #[error("`{text}`: no repository after the registry")]
    NoRepository {
        /// The reference as written.
        text: String,
    },
    /// The registry is no `HOST[:PORT]`.
    #[error("`{text}`: {error}")]
    Registry {
        /// The reference as written.
        text: String,
        /// What is wrong with the registry.
        error: RegistryHostError,
    },
    /// The digest after `@` is no sha256 digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The repository breaks the distribution spec's grammar.
    #[error(
        "`{text}`: `{repository}` is not a repository name (lowercase letters, digits, `._-` inside, `/` between parts)"
    )]
    Repository {
        /// The reference as written.
        text: String,
        /// The repository as written.
        repository: String,
    },
    /// The tag breaks the distribution spec's grammar.
    #[error(
        "`{text}`: `{tag}` is not a tag (up to 128 of letters, digits, `._-`, not starting with `.` or `-`)"
    )]
    Tag {
        /// The reference as written.
        text: String,
        /// The tag as written.
        tag: String,
    },
    /// Neither a tag nor a digest: which version is meant is left unsaid.
    #[error("`{text}`: name a tag (`:TAG`) or pin a digest (`@sha256:...`)")]
    Unversioned {
        /// The reference as written.
        text: String,
    },
}

/// Checks a registry as references and logins name it: `HOST` or `HOST:PORT`, where `HOST` is
/// a name (letters, digits, `.` and `-`), an IPv4 address, or an IPv6 address in brackets.
pub fn check_registry(registry: &str) -> Result<(), RegistryHostError> {
    let (name, port) = split_registry(registry);
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(inside) => {
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(RegistryHostError::Brackets {
                    registry: registry.to_owned(),
                    inside: inside.to_owned(),
                    port: port.map(str::to_owned),
                });
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
    if !name_ok {
        return Err(RegistryHostError::Host {
            registry: registry.to_owned(),
        });
    }
    if !port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) {
        return Err(RegistryHostError::Port {
            registry: registry.to_owned(),
        });
    }
    Ok(())
}

/// Why a registry's `HOST[:PORT]` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryHostError {
    /// Brackets around what is no IPv6 address; the message shows it written without them.
    #[error(
        "`{registry}`: brackets hold an IPv6 address, and `{inside}` is not one (an IPv4 address or a name goes without them: `{inside}{}`)",
        .port.as_ref().map(|p| format!(":{p}")).unwrap_or_default()
    )]
    Brackets {
        /// The registry as written.
        registry: String,
        /// What the brackets hold.
        inside: String,
        /// The port as written after the brackets, if any.
        port: Option<String>,
    },
    /// The host is empty or has characters no name or IPv4 address has.
    #[error("`{registry}` is not a registry host[:port]")]
    Host {
        /// The registry as written.
        registry: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("`{registry}` is not a registry host[:port]")]
    Port {
        /// The registry as written.
        registry: String,
    },
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

/// Whether `repo` is path components of lowercase letters and digits, joined by `.`, `_`,
/// `__` or `-`s (the distribution spec's grammar).
pub(crate) fn is_repository(repo: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    repo.len() <= 255 && repo.split('/').all(component_ok)
}

/// Whether `tag` is up to 128 of letters, digits and `._-`, starting with neither `.` nor `-`.
pub(crate) fn is_tag(tag: &str) -> bool {
    let first_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
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
    fn each_refusal_says_what_is_wrong_and_names_the_text() {
        let text = |t: &str| t.to_owned();
        let d = format!("sha256:{}", "ab".repeat(32));
        let cases: [(&str, ReferenceError, &str); 11] = [
            (
                "http://r/p:t",
                ReferenceError::Scheme {
                    text: text("http://r/p:t"),
                },
                "`http://r/p:t` does not start with oci://",
            ),
            (
                "oci://r",
                ReferenceError::NoRepository {
                    text: text("oci://r"),
                },
                "`oci://r`: no repository after the registry",
            ),
            (
                "oci:///p:t",
                ReferenceError::Registry {
                    text: text("oci:///p:t"),
                    error: RegistryHostError::Host { registry: text("") },
                },
                "`oci:///p:t`: `` is not a registry host[:port]",
            ),
            (
                "oci://r:0/p:t",
                ReferenceError::Registry {
                    text: text("oci://r:0/p:t"),
                    error: RegistryHostError::Port {
                        registry: text("r:0"),
                    },
                },
                "`oci://r:0/p:t`: `r:0` is not a registry host[:port]",
            ),
            (
                "oci://[127.0.0.1]:5000/p:t",
                ReferenceError::Registry {
                    text: text("oci://[127.0.0.1]:5000/p:t"),
                    error: RegistryHostError::Brackets {
                        registry: text("[127.0.0.1]:5000"),
                        inside: text("127.0.0.1"),
                        port: Some(text("5000")),
                    },
                },
                "`oci://[127.0.0.1]:5000/p:t`: `[127.0.0.1]:5000`: brackets hold an IPv6 address, and `127.0.0.1` is not one (an IPv4 address or a name goes without them: `127.0.0.1:5000`)",
            ),
            (
                "oci://[r]/p:t",
                ReferenceError::Registry {
                    text: text("oci://[r]/p:t"),
                    error: RegistryHostError::Brackets {
                        registry: text("[r]"),
                        inside: text("r"),
                        port: None,
                    },
                },
                "`oci://[r]/p:t`: `[r]`: brackets hold an IPv6 address, and `r` is not one (an IPv4 address or a name goes without them: `r`)",
            ),
            (
                "oci://r/p@md5:00",
                ReferenceError::Digest(DigestError::Algorithm {
                    text: text("md5:00"),
                }),
                "`md5:00` is not a sha256 digest (sha256:<64 hex digits>)",
            ),
            (
                "oci://r/p@sha256:abc",
                ReferenceError::Digest(DigestError::Hex {
                    text: text("sha256:abc"),
                }),
                "`sha256:abc` is not a sha256 digest: 64 lowercase hex digits after `sha256:`",
            ),
            (
                "oci://r/P:t",
                ReferenceError::Repository {
                    text: text("oci://r/P:t"),
                    repository: text("P"),
                },
                "`oci://r/P:t`: `P` is not a repository name (lowercase letters, digits, `._-` inside, `/` between parts)",
            ),
            (
                "oci://r/p:-t",
                ReferenceError::Tag {
                    text: text("oci://r/p:-t"),
                    tag: text("-t"),
                },
                "`oci://r/p:-t`: `-t` is not a tag (up to 128 of letters, digits, `._-`, not starting with `.` or `-`)",
            ),
            (
                "oci://r/p",
                ReferenceError::Unversioned {
                    text: text("oci://r/p"),
                },
                "`oci://r/p`: name a tag (`:TAG`) or pin a digest (`@sha256:...`)",
            ),
        ];
        for (bad, error, message) in cases {
            let got = Reference::parse(bad).unwrap_err();
            assert_eq!(got, error, "{bad}");
            assert_eq!(got.to_string(), message, "{bad}");
        }
        for bad in [
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}0", "ab".repeat(32)),
            format!("sha256:{}é", "ab".repeat(31)),
        ] {
            assert_eq!(
                Digest::parse(&bad),
                Err(DigestError::Hex { text: bad.clone() }),
                "{bad}"
            );
        }
        assert_eq!(
            Digest::parse(&d).map(|d| d.to_string()),
            Ok(d.clone()),
            "a digest reads back as written"
        );
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
