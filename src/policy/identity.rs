//! Who is asking: the caller's credentials (source address, certificate
//! names, proxy token, VPC endpoint) and the client selectors that match them.
//!
//! Spellings, shared by the policy file, the audit `identity` and `explain`:
//! a URI SAN as written (`spiffe://acme.internal/ns/payments/sa/api`),
//! `dns:NAME` for a DNS SAN, `cn:TEXT` for the subject common name,
//! `token:USER` for a proxy token (the user name sent with it, never the
//! token; `token:sha256:` and the digest's first 12 hex digits when it came
//! without a user name), and the VPC endpoint id itself (`vpce-0a1b2c3d4e5f67890`).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One name a verified client certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CertName {
    /// A URI subject alternative name, e.g. a SPIFFE ID.
    Uri(String),
    /// A DNS subject alternative name, lowercase.
    Dns(String),
    /// The subject common name.
    Cn(String),
}

impl CertName {
    /// Parses a `certificates:` selector: `dns:NAME`, `cn:TEXT` or a URI
    /// (`scheme://…`). `Err` says what is wrong.
    pub fn parse_selector(text: &str) -> Result<CertName, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("dns:") {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            return match super::Host::parse(&name) {
                Ok(super::Host::Name(_)) => Ok(CertName::Dns(name)),
                _ => Err(format!("`{text}`: `dns:` must be followed by a DNS name")),
            };
        }
        if let Some(cn) = text.strip_prefix("cn:") {
            return if cn.is_empty() {
                Err(format!(
                    "`{text}`: `cn:` must be followed by the common name"
                ))
            } else {
                Ok(CertName::Cn(cn.to_string()))
            };
        }
        match text.split_once("://") {
            Some((scheme, rest)) if is_scheme(scheme) && !rest.is_empty() => {
                Ok(CertName::Uri(text.to_string()))
            }
            _ => Err(format!(
                "`{text}` is not a certificate selector: write a URI SAN (`spiffe://…`), `dns:NAME` or `cn:NAME`"
            )),
        }
    }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Uri(u) => f.write_str(u),
            CertName::Dns(d) => write!(f, "dns:{d}"),
            CertName::Cn(c) => write!(f, "cn:{c}"),
        }
    }
}

/// The SHA-256 digest of a proxy token: all the policy stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest as a reviewer sees it: `sha256:` and its first 12 hex digits.
    pub fn short(&self) -> String {
        let hex: String = self.0[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}…")
    }

    /// The digest of `token`.
    pub fn of(token: &[u8]) -> TokenDigest {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Parses a `tokens:` selector, `sha256:` and 64 hex digits.
    pub fn parse_selector(text: &str) -> Result<TokenDigest, String> {
        let text = text.trim();
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(format!(
                "`{text}` is not a token digest: write `sha256:` and the 64 hex digits of the token's SHA-256"
            ));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`{text}`: a SHA-256 digest is 64 hex digits, this one has {} characters",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
        }
        Ok(TokenDigest(out))
    }

    /// Whether `self` is any of `list`, in time that depends only on the
    /// length of `list`: no early exit, byte comparisons in constant time.
    fn is_in(&self, list: &[TokenDigest]) -> bool {
        let hit = (list.iter()).fold(subtle::Choice::from(0), |acc, d| acc | d.0.ct_eq(&self.0));
        hit.into()
    }

    /// `sha256:` and the hex digest, the spelling of the policy file.
    pub fn to_selector(&self) -> String {
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Never prints the digest: it identifies a secret.
impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// A token a request presented: the user name sent with it and its digest
/// (the token itself is dropped as soon as it is hashed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedToken {
    /// The Basic user name (empty for `Bearer`): names the credential in the audit log.
    pub user: String,
    /// SHA-256 of the token.
    pub digest: TokenDigest,
}

/// Parses a `vpc_endpoints:` selector: `vpce-` and 8 or 17 hex digits, lowercased.
pub fn parse_vpc_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let ok = text.strip_prefix("vpce-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{text}` is not a VPC endpoint id: `vpce-` and 8 or 17 hex digits, e.g. `vpce-0a1b2c3d4e5f67890`"
        ))
    }
}

/// Everything the proxy knows about who sent a request. Listeners build
/// one per decision; `From<IpAddr>` makes a caller known by address only.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The client's address (from the connection, or its PROXY protocol header).
    pub addr: IpAddr,
    /// The names of the verified client certificate (`--listen-tls`); empty otherwise.
    pub certificate: &'a [CertName],
    /// The proxy token the request presented.
    pub token: Option<&'a PresentedToken>,
    /// The VPC endpoint the connection came through (PROXY protocol v2, AWS TLV).
    pub vpc_endpoint: Option<&'a str>,
}

impl From<IpAddr> for Caller<'static> {
    fn from(addr: IpAddr) -> Self {
        Caller {
            addr,
            certificate: &[],
            token: None,
            vpc_endpoint: None,
        }
    }
}

impl Caller<'_> {
    /// The credentials presented, in words for a refusal (never the token).
    pub fn describe(&self) -> String {
        let mut out = format!("source {}", self.addr.to_canonical());
        if let Some(name) = self.certificate.first() {
            out.push_str(&format!(", certificate {name}"));
        }
        if let Some(t) = self.token {
            out.push_str(&format!(", token of user `{}`", t.user));
        }
        if let Some(v) = self.vpc_endpoint {
            out.push_str(&format!(", VPC endpoint {v}"));
        }
        out
    }
}

/// An owned [`Caller`]: what a connection or request presented, kept for
/// as long as it lasts (a tunnel is decided again on reload).
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The client's address.
    pub addr: IpAddr,
    /// The names of the verified client certificate; empty without one.
    pub certificate: Arc<[CertName]>,
    /// The proxy token the request presented.
    pub token: Option<PresentedToken>,
    /// The VPC endpoint the connection came through.
    pub vpc_endpoint: Option<Arc<str>>,
}

impl From<IpAddr> for Credentials {
    fn from(addr: IpAddr) -> Self {
        Credentials {
            addr,
            certificate: Arc::from([]),
            token: None,
            vpc_endpoint: None,
        }
    }
}

impl<'a> From<&'a Credentials> for Caller<'a> {
    fn from(c: &'a Credentials) -> Self {
        Caller {
            addr: c.addr,
            certificate: &c.certificate,
            token: c.token.as_ref(),
            vpc_endpoint: c.vpc_endpoint.as_deref(),
        }
    }
}

impl Credentials {
    /// Which kinds of credential were presented: certificate, token, VPC
    /// endpoint (the order of [`Decision::used`](super::Decision::used)).
    pub fn presented(&self) -> [bool; 3] {
        [
            !self.certificate.is_empty(),
            self.token.is_some(),
            self.vpc_endpoint.is_some(),
        ]
    }
}

/// The kind of credential that names a client, for `client_auth_total`'s `method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A verified client certificate.
    Certificate,
    /// A proxy token.
    Token,
    /// A VPC endpoint id.
    VpcEndpoint,
}

/// The credential that matched a client: the audit `identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// What kind of credential it is.
    pub kind: Credential,
    /// Its spelling (see the module documentation).
    pub name: String,
}

/// How a client is recognised: every kind it lists must match (AND), any
/// value within a kind will do (OR). An empty list means the kind is not used.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Source ranges.
    pub sources: Vec<IpNet>,
    /// Certificate names (`--listen-tls`).
    pub certificates: Vec<CertName>,
    /// Digests of proxy tokens.
    pub tokens: Vec<TokenDigest>,
    /// VPC endpoint ids, lowercase.
    pub vpc_endpoints: Vec<String>,
}

impl Selectors {
    /// Whether no kind is listed (a `check` error: such a client matches everyone).
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
            && self.certificates.is_empty()
            && self.tokens.is_empty()
            && self.vpc_endpoints.is_empty()
    }

    /// `None` when `caller` does not match; else the credential that named
    /// it (`None` inside when the source alone did). With several kinds
    /// listed, the certificate names the caller before the token, the token
    /// before the endpoint.
    pub fn matches(&self, caller: &Caller<'_>) -> Option<Option<Identity>> {
        if self.is_empty() {
            return None;
        }
        if !self.sources.is_empty() {
            let addr = caller.addr.to_canonical();
            if !self.sources.iter().any(|n| n.contains(&addr)) {
                return None;
            }
        }
        let mut identity = None;
        if !self.vpc_endpoints.is_empty() {
            let v = caller.vpc_endpoint?;
            let hit = self
                .vpc_endpoints
                .iter()
                .find(|e| e.eq_ignore_ascii_case(v))?;
            identity = Some(Identity {
                kind: Credential::VpcEndpoint,
                name: hit.clone(),
            });
        }
        if !self.tokens.is_empty() {
            let t = caller.token?;
            if !t.digest.is_in(&self.tokens) {
                return None;
            }
            identity = Some(Identity {
                kind: Credential::Token,
                name: match t.user.as_str() {
                    // `Bearer`, or Basic without a user name: the digest's start names it.
                    "" => format!("token:{}", t.digest.short()),
                    user => format!("token:{user}"),
                },
            });
        }
        if !self.certificates.is_empty() {
            let hit = (caller.certificate.iter()).find(|n| self.certificates.contains(n))?;
            identity = Some(Identity {
                kind: Credential::Certificate,
                name: hit.to_string(),
            });
        }
        Some(identity)
    }

    /// Whether the client lists selectors of `kind` (so a match used that credential).
    pub fn uses(&self, kind: Credential) -> bool {
        match kind {
            Credential::Certificate => !self.certificates.is_empty(),
            Credential::Token => !self.tokens.is_empty(),
            Credential::VpcEndpoint => !self.vpc_endpoints.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: &str, secret: &str) -> PresentedToken {
        PresentedToken {
            user: user.into(),
            digest: TokenDigest::of(secret.as_bytes()),
        }
    }

    #[test]
    fn certificate_selectors_parse_or_say_why() {
        let ok = [
            (
                "spiffe://acme.internal/ns/payments/sa/api",
                CertName::Uri("spiffe://acme.internal/ns/payments/sa/api".into()),
            ),
            (
                "dns:Payments.Internal.",
                CertName::Dns("payments.internal".into()),
            ),
            ("cn:payments", CertName::Cn("payments".into())),
        ];
        for (text, want) in ok {
            assert_eq!(CertName::parse_selector(text), Ok(want), "{text}");
        }
        for bad in [
            "payments",
            "ou:payments",
            "dns:",
            "dns:bad..name",
            "cn:",
            "://x",
            "1x://y",
            "spiffe://",
        ] {
            assert!(CertName::parse_selector(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn token_selectors_are_sha256_and_64_hex() {
        let d = TokenDigest::of(b"s3cret");
        assert_eq!(TokenDigest::parse_selector(&d.to_selector()), Ok(d));
        let upper = d.to_selector().to_uppercase().replace("SHA256:", "sha256:");
        assert_eq!(TokenDigest::parse_selector(&upper), Ok(d));
        for bad in [
            "s3cret",
            "sha256:abc",
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "a".repeat(65)),
            &format!("sha1:{}", "a".repeat(40)),
        ] {
            assert!(TokenDigest::parse_selector(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn vpc_endpoint_ids_are_vpce_and_8_or_17_hex() {
        assert_eq!(
            parse_vpc_endpoint("vpce-0A1b2c3d4e5f67890"),
            Ok("vpce-0a1b2c3d4e5f67890".into())
        );
        assert_eq!(
            parse_vpc_endpoint("vpce-0a1b2c3d"),
            Ok("vpce-0a1b2c3d".into())
        );
        for bad in [
            "vpce-0a1b2c3",
            "vpce-0a1b2c3d4e5f6789",
            "vpce-0a1b2c3d4e5f678901",
            "vpce-0a1b2c3z",
            "vpc-0a1b2c3d",
            "",
        ] {
            assert!(parse_vpc_endpoint(bad).is_err(), "{bad} parsed");
        }
    }

    /// Named rows: (what it means, selectors, caller) -> identity, or `None` for no match.
    #[test]
    fn kinds_combine_with_and_values_with_or() {
        let sel = Selectors {
            sources: vec!["10.0.1.0/24".parse().unwrap()],
            certificates: vec![],
            tokens: vec![TokenDigest::of(b"a"), TokenDigest::of(b"b")],
            vpc_endpoints: vec![],
        };
        let good = token("payments", "b");
        let bad = token("payments", "c");
        let inside: IpAddr = "10.0.1.7".parse().unwrap();
        let outside: IpAddr = "10.0.2.7".parse().unwrap();
        let caller = |addr, token| Caller {
            addr,
            certificate: &[],
            token,
            vpc_endpoint: None,
        };
        let rows: [(&str, Caller<'_>, Option<Option<&str>>); 4] = [
            (
                "source and second token: match, named by the token",
                caller(inside, Some(&good)),
                Some(Some("token:payments")),
            ),
            ("source without a token", caller(inside, None), None),
            (
                "source with an unknown token",
                caller(inside, Some(&bad)),
                None,
            ),
            (
                "good token from another source",
                caller(outside, Some(&good)),
                None,
            ),
        ];
        for (what, caller, want) in rows {
            let got = sel.matches(&caller);
            let got = got.as_ref().map(|i| i.as_ref().map(|i| i.name.as_str()));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn certificates_and_endpoints_name_the_caller() {
        let names = [
            CertName::Cn("payments".into()),
            CertName::Uri("spiffe://acme.internal/ns/payments/sa/api".into()),
        ];
        let sel = Selectors {
            certificates: vec![CertName::Uri(
                "spiffe://acme.internal/ns/payments/sa/api".into(),
            )],
            vpc_endpoints: vec!["vpce-0a1b2c3d4e5f67890".into()],
            ..Selectors::default()
        };
        let mut caller = Caller {
            addr: "192.0.2.1".parse().unwrap(),
            certificate: &names,
            token: None,
            vpc_endpoint: Some("vpce-0a1b2c3d4e5f67890"),
        };
        let id = sel.matches(&caller).unwrap().unwrap();
        assert_eq!(id.kind, Credential::Certificate, "the certificate names it");
        assert_eq!(id.name, "spiffe://acme.internal/ns/payments/sa/api");
        caller.vpc_endpoint = Some("vpce-0a1b2c3d4e5f67891");
        assert_eq!(sel.matches(&caller), None, "another endpoint");
        caller.vpc_endpoint = None;
        assert_eq!(sel.matches(&caller), None, "no endpoint (no PROXY header)");
        let only_vpce = Selectors {
            vpc_endpoints: vec!["vpce-0a1b2c3d".into()],
            ..Selectors::default()
        };
        caller.vpc_endpoint = Some("VPCE-0A1B2C3D");
        let id = only_vpce.matches(&caller).unwrap().unwrap();
        assert_eq!(
            (id.kind, id.name.as_str()),
            (Credential::VpcEndpoint, "vpce-0a1b2c3d")
        );
        // A URI SAN spelt like a DNS selector is still a URI: kinds never mix.
        let tricky = [CertName::Uri("dns:payments.internal".into())];
        let dns = Selectors {
            certificates: vec![CertName::Dns("payments.internal".into())],
            ..Selectors::default()
        };
        caller.certificate = &tricky;
        assert_eq!(dns.matches(&caller), None);
        assert_eq!(
            Selectors::default().matches(&caller),
            None,
            "no selector matches nobody"
        );
    }

    #[test]
    fn a_digest_never_prints() {
        let t = token("u", "s3cret");
        assert!(!format!("{t:?}").contains(&TokenDigest::of(b"s3cret").to_selector()[7..]));
    }
}
