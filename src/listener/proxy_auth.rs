//! `Proxy-Authorization`: the proxy token a request presents, hashed at once.
//! The header is never logged, audited or forwarded (`forward` strips it).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::PROXY_AUTHORIZATION;

use crate::policy::{PresentedToken, TokenDigest};

/// A header value longer than this is refused without being decoded.
pub(super) const MAX_HEADER_BYTES: usize = 4096;

/// The longest user name kept for the audit `identity`; longer ones are cut.
const MAX_USER_CHARS: usize = 64;

/// The challenge sent with `407`, so that clients which only send
/// credentials when asked (Java, some libraries) retry with them.
pub(super) const CHALLENGE: &str = "Basic realm=\"portcullis\"";

/// The token in `headers`: `Ok(None)` when there is no header, `Err` (a
/// cause that quotes nothing the client sent) when it is malformed:
/// several headers, too long, an unknown scheme, bad base64, no password.
pub(super) fn presented(headers: &HeaderMap) -> Result<Option<PresentedToken>, &'static str> {
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Proxy-Authorization header");
    }
    let value = value.as_bytes();
    if value.len() > MAX_HEADER_BYTES {
        return Err("Proxy-Authorization header over 4096 bytes");
    }
    let value = std::str::from_utf8(value).map_err(|_| "Proxy-Authorization is not ASCII")?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(' ') {
            return Err("Proxy-Authorization: Bearer without a token");
        }
        return Ok(Some(PresentedToken {
            user: String::new(),
            digest: TokenDigest::of(rest.as_bytes()),
        }));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("Proxy-Authorization scheme is neither Basic nor Bearer");
    }
    let decoded = STANDARD
        .decode(rest)
        .map_err(|_| "Proxy-Authorization: Basic credentials are not base64")?;
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Err("Proxy-Authorization: Basic credentials have no `user:password` colon");
    };
    let (user, token) = (&decoded[..colon], &decoded[colon + 1..]);
    if token.is_empty() {
        return Err("Proxy-Authorization: Basic credentials have an empty password (the token)");
    }
    let user: String = String::from_utf8_lossy(user)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_CHARS)
        .collect();
    Ok(Some(PresentedToken {
        user,
        digest: TokenDigest::of(token),
    }))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(values: &[&str]) -> Result<Option<PresentedToken>, &'static str> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(PROXY_AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        presented(&h)
    }

    fn token(user: &str, secret: &str) -> Option<PresentedToken> {
        Some(PresentedToken {
            user: user.into(),
            digest: TokenDigest::of(secret.as_bytes()),
        })
    }

    #[test]
    fn basic_and_bearer_give_the_token_and_the_user() {
        let basic = format!("Basic {}", STANDARD.encode("payments:s3cret:with:colons"));
        assert_eq!(
            parse(&[&basic]),
            Ok(token("payments", "s3cret:with:colons"))
        );
        let lower = format!("basic {}", STANDARD.encode(":s3cret"));
        assert_eq!(parse(&[&lower]), Ok(token("", "s3cret")));
        assert_eq!(parse(&["Bearer s3cret"]), Ok(token("", "s3cret")));
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn malformed_headers_are_refused_without_quoting_them() {
        let long = format!("Bearer {}", "a".repeat(MAX_HEADER_BYTES));
        let no_colon = format!("Basic {}", STANDARD.encode("payments"));
        let no_password = format!("Basic {}", STANDARD.encode("payments:"));
        let rows: [(&str, Vec<&str>); 7] = [
            ("bad base64", vec!["Basic !!!not-base64"]),
            ("over 4 KiB", vec![&long]),
            ("unknown scheme", vec!["Digest username=\"x\""]),
            ("bearer without a token", vec!["Bearer"]),
            ("no colon", vec![&no_colon]),
            ("empty password", vec![&no_password]),
            ("two headers", vec!["Bearer a", "Bearer b"]),
        ];
        for (what, values) in rows {
            let err = parse(&values).expect_err(what);
            assert!(
                !err.contains("payments") && !err.contains("aaaa"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn user_names_are_cut_and_cleaned() {
        let user = format!("a\u{7}b{}", "x".repeat(100));
        let basic = format!("Basic {}", STANDARD.encode(format!("{user}:t")));
        let got = parse(&[&basic]).unwrap().unwrap();
        assert!(got.user.starts_with("abx"), "{}", got.user);
        assert_eq!(got.user.chars().count(), MAX_USER_CHARS);
    }

    proptest::proptest! {
        /// Whatever bytes a client sends, the parser answers without panicking,
        /// and an error never quotes them.
        #[test]
        fn any_header_value_is_parsed_or_refused(value in proptest::collection::vec(0x20u8..0x7f, 0..64)) {
            let text = String::from_utf8(value).unwrap();
            for prefixed in [text.clone(), format!("Basic {text}"), format!("Bearer {text}")] {
                if let Ok(v) = HeaderValue::from_str(&prefixed) {
                    let mut h = HeaderMap::new();
                    h.insert(PROXY_AUTHORIZATION, v);
                    if let Err(why) = presented(&h) {
                        proptest::prop_assert!(text.len() < 4 || !why.contains(&text));
                    }
                }
            }
        }
    }
}
