//! A resource policy judged as IAM would for one request: the statements
//! whose principal, action, resource and conditions all apply, an explicit
//! deny winning over any allow. Only what the templates' bucket policies use
//! (principals by ARN or `*`, `*` and `?` wildcards, the `Bool`, `String`
//! and `Arn` condition operators on `aws:PrincipalArn` and
//! `aws:SecureTransport`); anything else panics rather than guess.

use serde_json::Value;

/// A request as the policy sees it.
pub(crate) struct Request<'a> {
    pub(crate) principal: &'a str,
    pub(crate) action: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) tls: bool,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// An explicit deny: nothing else can allow it.
    Denied,
    /// Allowed by the policy itself.
    Allowed,
    /// Up to the principal's own IAM policies.
    Silent,
}

/// `*` and `?` wildcards, as IAM matches actions, resources and ARNs.
fn glob(pattern: &str, text: &str) -> bool {
    let re = regex::escape(pattern)
        .replace(r"\*", ".*")
        .replace(r"\?", ".");
    regex::Regex::new(&format!("^{re}$"))
        .unwrap()
        .is_match(text)
}

/// A string or a list of strings.
pub(crate) fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_else(|| panic!("not resolved: {i}")))
            .collect(),
        other => panic!("not resolved: {other}"),
    }
}

fn condition_holds(condition: &Value, r: &Request) -> bool {
    let Some(operators) = condition.as_object() else {
        return true;
    };
    operators.iter().all(|(operator, keys)| {
        keys.as_object().unwrap().iter().all(|(key, wanted)| {
            let actual = match key.as_str() {
                "aws:PrincipalArn" => r.principal.to_owned(),
                "aws:SecureTransport" => r.tls.to_string(),
                other => panic!("the judge does not know the condition key {other}"),
            };
            let any = |f: &dyn Fn(&str) -> bool| strings(wanted).into_iter().any(f);
            match operator.as_str() {
                "Bool" | "StringEquals" => any(&|w| w == actual),
                "StringNotEquals" => !any(&|w| w == actual),
                "ArnEquals" | "ArnLike" => any(&|w| glob(w, &actual)),
                "ArnNotEquals" | "ArnNotLike" => !any(&|w| glob(w, &actual)),
                other => panic!("the judge does not know the condition operator {other}"),
            }
        })
    })
}

fn statement_applies(s: &Value, r: &Request) -> bool {
    let principal = match &s["Principal"] {
        Value::String(p) if p == "*" => true,
        p => strings(&p["AWS"]).contains(&r.principal),
    };
    principal
        && strings(&s["Action"]).iter().any(|a| glob(a, r.action))
        && strings(&s["Resource"]).iter().any(|p| glob(p, r.resource))
        && condition_holds(&s["Condition"], r)
}

/// What the bucket policy says about `r`: an explicit deny wins.
pub(crate) fn judge(policy: &Value, r: &Request) -> Verdict {
    let statements = policy["Statement"].as_array().expect("Statement");
    for s in statements {
        assert!(
            s["NotPrincipal"].is_null() && s["NotAction"].is_null() && s["NotResource"].is_null(),
            "the judge does not read Not* elements: {s}"
        );
    }
    let applying: Vec<&Value> = statements
        .iter()
        .filter(|s| statement_applies(s, r))
        .collect();
    if applying.iter().any(|s| s["Effect"] == "Deny") {
        Verdict::Denied
    } else if applying.iter().any(|s| s["Effect"] == "Allow") {
        Verdict::Allowed
    } else {
        Verdict::Silent
    }
}

/// A request over TLS.
pub(crate) fn request<'a>(principal: &'a str, action: &'a str, resource: &'a str) -> Request<'a> {
    Request {
        principal,
        action,
        resource,
        tls: true,
    }
}
