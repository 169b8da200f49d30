//! Known paste, file-sharing, request-capture and tunnel services: a suggestion
//! that allows one is flagged, and no wildcard is ever written over one.
//!
//! Traffic to these in a report-mode log is as likely to be a leak (or a
//! developer's one-off) as a dependency, so `suggest` never lets one pass
//! unremarked. The list is the one place they are named; the docs
//! (docs/report-mode.md) repeat it.

use super::collapse::Dest;
use crate::policy::pattern::is_strictly_below;

/// One flagged service: the domain (it and every name below it) and what it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Flagged {
    /// The domain, matched with every name below it.
    pub domain: &'static str,
    /// What it is, for the comment: "a paste site", ...
    pub what: &'static str,
}

const PASTE: &str = "a paste site";
const FILES: &str = "a file-sharing service";
const CAPTURE: &str = "a request-capture service";
const TUNNEL: &str = "a tunnel to anyone's machine";

/// The services flagged, by domain.
pub const FLAGGED: &[Flagged] = &[
    Flagged {
        domain: "pastebin.com",
        what: PASTE,
    },
    Flagged {
        domain: "gist.github.com",
        what: PASTE,
    },
    Flagged {
        domain: "gist.githubusercontent.com",
        what: PASTE,
    },
    Flagged {
        domain: "hastebin.com",
        what: PASTE,
    },
    Flagged {
        domain: "paste.ee",
        what: PASTE,
    },
    Flagged {
        domain: "dpaste.com",
        what: PASTE,
    },
    Flagged {
        domain: "dpaste.org",
        what: PASTE,
    },
    Flagged {
        domain: "termbin.com",
        what: PASTE,
    },
    Flagged {
        domain: "transfer.sh",
        what: FILES,
    },
    Flagged {
        domain: "file.io",
        what: FILES,
    },
    Flagged {
        domain: "0x0.st",
        what: FILES,
    },
    Flagged {
        domain: "anonfiles.com",
        what: FILES,
    },
    Flagged {
        domain: "webhook.site",
        what: CAPTURE,
    },
    Flagged {
        domain: "requestbin.com",
        what: CAPTURE,
    },
    Flagged {
        domain: "requestbin.net",
        what: CAPTURE,
    },
    Flagged {
        domain: "pipedream.net",
        what: CAPTURE,
    },
    Flagged {
        domain: "ngrok.io",
        what: TUNNEL,
    },
    Flagged {
        domain: "ngrok.app",
        what: TUNNEL,
    },
    Flagged {
        domain: "ngrok.dev",
        what: TUNNEL,
    },
    Flagged {
        domain: "ngrok-free.app",
        what: TUNNEL,
    },
    Flagged {
        domain: "ngrok-free.dev",
        what: TUNNEL,
    },
];

/// The flagged service `dest` reaches, if any: a name at or below a listed
/// domain, or a wildcard that matches one.
pub fn flagged(dest: &Dest) -> Option<&'static Flagged> {
    FLAGGED.iter().find(|f| match dest {
        Dest::Name(n) => n == f.domain || is_strictly_below(n, f.domain),
        Dest::Wildcard(s) => s == f.domain || covers(s, f.domain) || is_strictly_below(s, f.domain),
        Dest::Ip(_) => false,
    })
}

/// Whether `*.parent` would match a flagged service (or names below one).
pub(super) fn covers_flagged(parent: &str) -> bool {
    FLAGGED
        .iter()
        .any(|f| covers(parent, f.domain) || parent == f.domain || covers(f.domain, parent))
}

/// Whether `*.suffix` matches `domain`.
fn covers(suffix: &str, domain: &str) -> bool {
    is_strictly_below(domain, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_below_and_wildcards_over_a_flagged_domain_are_flagged() {
        let name = |n: &str| flagged(&Dest::Name(n.into())).map(|f| f.domain);
        assert_eq!(name("pastebin.com"), Some("pastebin.com"));
        assert_eq!(name("www.pastebin.com"), Some("pastebin.com"));
        assert_eq!(name("abc.eu.ngrok.io"), Some("ngrok.io"));
        assert_eq!(name("gist.github.com"), Some("gist.github.com"));
        assert_eq!(name("api.github.com"), None);
        assert_eq!(name("notpastebin.com"), None);
        let wild = |s: &str| flagged(&Dest::Wildcard(s.into())).map(|f| f.domain);
        assert_eq!(wild("github.com"), Some("gist.github.com"));
        assert_eq!(wild("ngrok.io"), Some("ngrok.io"));
        assert_eq!(wild("eu.ngrok.io"), Some("ngrok.io"));
        assert_eq!(wild("example.com"), None);
        assert!(covers_flagged("github.com"));
        assert!(covers_flagged("ngrok.io"));
        assert!(!covers_flagged("stripe.com"));
        assert!(flagged(&Dest::Ip("203.0.113.7".parse().unwrap())).is_none());
    }
}
