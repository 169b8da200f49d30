//! `portcullis token`: a new random proxy token and the `sha256:` line the policy lists for it.

use std::io::{self, Write};

use crate::policy::TokenDigest;

/// Bytes of entropy in a token.
const TOKEN_BYTES: usize = 32;

/// Prints a new token (64 hex digits: safe in a URL's user info, a header
/// and an environment variable) on the first line and its `sha256:` digest
/// on the second; says on `err` which goes where.
pub fn run(out: &mut impl Write, err: &mut impl Write) -> io::Result<i32> {
    let mut bytes = [0u8; TOKEN_BYTES];
    if let Err(e) = getrandom::fill(&mut bytes) {
        writeln!(
            err,
            "portcullis: the OS random number generator failed: {e}"
        )?;
        return Ok(super::exit::USAGE);
    }
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let digest = TokenDigest::of(token.as_bytes()).to_selector();
    writeln!(out, "{token}\n{digest}")?;
    writeln!(
        err,
        "give the first line to the client as its proxy password (HTTPS_PROXY=http://NAME:TOKEN@HOST:PORT);\nlist the second in its `tokens:`"
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_a_fresh_token_and_its_digest() {
        let run_once = || {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            assert_eq!(run(&mut out, &mut err).unwrap(), 0);
            String::from_utf8(out).unwrap()
        };
        let first = run_once();
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 2, "{first}");
        assert_eq!(lines[0].len(), 64);
        assert!(lines[0].bytes().all(|b| b.is_ascii_hexdigit()));
        let digest = TokenDigest::parse_selector(lines[1]).unwrap();
        assert_eq!(digest, TokenDigest::of(lines[0].as_bytes()));
        assert_ne!(run_once(), first, "each run makes a new token");
    }
}
