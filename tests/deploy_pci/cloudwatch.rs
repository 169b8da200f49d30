//! CloudWatch Logs JSON filter patterns (`{ ($.a = "x") && ($.n > 0) }`), the
//! subset metric filters here use: `&&`, `||`, parentheses, `$.key` selectors,
//! `=` on strings (exact, or a prefix with a trailing `*`) and numbers, and
//! `>`, `<`, `>=`, `<=` on numbers. Anything else is refused rather than
//! guessed at, so a pattern the model does not understand fails the test.
//!
//! As CloudWatch does: an event that is not a JSON object matches no JSON
//! pattern, a selector naming a missing key is false, and a string comparison
//! never matches a number (nor the reverse).

use serde_json::Value;

/// A parsed JSON filter pattern.
#[derive(Debug)]
pub(crate) struct Pattern(Expr);

#[derive(Debug)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare {
        path: Vec<String>,
        op: Op,
        value: Literal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug)]
enum Literal {
    /// The text before a trailing `*`, and whether there was one.
    Str {
        text: String,
        prefix: bool,
    },
    Num(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    LParen,
    RParen,
    And,
    Or,
    Op(Op),
    Selector(Vec<String>),
    Str(String),
    Num(f64),
}

fn tokens(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '{' => (Token::Open, 1),
            '}' => (Token::Close, 1),
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            '&' if next == Some('&') => (Token::And, 2),
            '|' if next == Some('|') => (Token::Or, 2),
            '>' if next == Some('=') => (Token::Op(Op::Ge), 2),
            '<' if next == Some('=') => (Token::Op(Op::Le), 2),
            '>' => (Token::Op(Op::Gt), 1),
            '<' => (Token::Op(Op::Lt), 1),
            '=' => (Token::Op(Op::Eq), 1),
            '$' if next == Some('.') => {
                let end = (i + 2..chars.len())
                    .find(|&j| !(chars[j].is_ascii_alphanumeric() || "_.".contains(chars[j])))
                    .unwrap_or(chars.len());
                let path: String = chars[i + 2..end].iter().collect();
                let path: Vec<String> = path.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!("bad selector at {i}"));
                }
                (Token::Selector(path), end - i)
            }
            '"' => {
                let end = (i + 1..chars.len())
                    .find(|&j| chars[j] == '"')
                    .ok_or("unterminated string")?;
                let text: String = chars[i + 1..end].iter().collect();
                if text.contains('\\') {
                    return Err("escapes in strings are not modelled".into());
                }
                (Token::Str(text), end + 1 - i)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let end = (i + 1..chars.len())
                    .find(|&j| !(chars[j].is_ascii_digit() || chars[j] == '.'))
                    .unwrap_or(chars.len());
                let text: String = chars[i..end].iter().collect();
                let n = text.parse().map_err(|_| format!("bad number {text}"))?;
                (Token::Num(n), end - i)
            }
            other => return Err(format!("`{other}` at {i} is not modelled")),
        };
        out.push(token);
        i += len;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Token::LParen) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::RParen) => Ok(inner),
                    other => Err(format!("expected `)`, found {other:?}")),
                }
            }
            Some(Token::Selector(path)) => {
                let Some(Token::Op(op)) = self.next() else {
                    return Err("expected a comparison after the selector".into());
                };
                let value = match self.next() {
                    Some(Token::Str(text)) if op == Op::Eq => match text.strip_suffix('*') {
                        _ if text.trim_end_matches('*').contains('*') => {
                            return Err(format!("`*` inside \"{text}\" is not modelled"));
                        }
                        Some(stem) => Literal::Str {
                            text: stem.to_owned(),
                            prefix: true,
                        },
                        None => Literal::Str {
                            text,
                            prefix: false,
                        },
                    },
                    Some(Token::Num(n)) => Literal::Num(n),
                    other => return Err(format!("{op:?} cannot take {other:?}")),
                };
                Ok(Expr::Compare { path, op, value })
            }
            other => Err(format!("expected `(` or a selector, found {other:?}")),
        }
    }
}

impl Pattern {
    /// Parses a JSON filter pattern, `{ ... }` included.
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let mut tokens = tokens(pattern)?;
        if tokens.first() != Some(&Token::Open) || tokens.last() != Some(&Token::Close) {
            return Err("a JSON filter pattern is enclosed in { }".into());
        }
        tokens.pop();
        tokens.remove(0);
        let mut parser = Parser { tokens, at: 0 };
        let expr = parser.or()?;
        if parser.at != parser.tokens.len() {
            return Err(format!("trailing {:?}", &parser.tokens[parser.at..]));
        }
        Ok(Pattern(expr))
    }

    /// Whether CloudWatch would count this log event.
    pub(crate) fn matches(&self, event: &str) -> bool {
        match serde_json::from_str::<Value>(event) {
            Ok(v) if v.is_object() => eval(&self.0, &v),
            _ => false,
        }
    }

    /// Every `$.a.b` the pattern reads, as `a.b`.
    pub(crate) fn selectors(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect(&self.0, &mut out);
        out
    }
}

fn collect(expr: &Expr, out: &mut Vec<String>) {
    match expr {
        Expr::And(a, b) | Expr::Or(a, b) => {
            collect(a, out);
            collect(b, out);
        }
        Expr::Compare { path, .. } => out.push(path.join(".")),
    }
}

/// The value at `a.b` in `event`, if any.
pub(crate) fn select<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, key| v.get(key))
}

fn eval(expr: &Expr, event: &Value) -> bool {
    match expr {
        Expr::And(a, b) => eval(a, event) && eval(b, event),
        Expr::Or(a, b) => eval(a, event) || eval(b, event),
        Expr::Compare { path, op, value } => {
            let Some(field) = select(event, &path.join(".")) else {
                return false;
            };
            match (value, field) {
                (Literal::Str { text, prefix }, Value::String(s)) => {
                    if *prefix {
                        s.starts_with(text.as_str())
                    } else {
                        s == text
                    }
                }
                (Literal::Num(n), Value::Number(x)) => {
                    let x = x.as_f64().unwrap_or(f64::NAN);
                    match op {
                        Op::Eq => x == *n,
                        Op::Gt => x > *n,
                        Op::Lt => x < *n,
                        Op::Ge => x >= *n,
                        Op::Le => x <= *n,
                    }
                }
                _ => false,
            }
        }
    }
}

/// What a metric filter adds for a matching event: its `MetricValue`, a
/// number or `$.key`. CloudWatch requires a `$.key` value to be a selector of
/// the pattern, and the event's value there to be a number.
pub(crate) fn metric_value(metric_value: &str, pattern: &Pattern, event: &str) -> f64 {
    let Some(key) = metric_value.strip_prefix("$.") else {
        return metric_value.parse().unwrap_or_else(|_| {
            panic!("MetricValue {metric_value:?} is neither a number nor $.key")
        });
    };
    assert!(
        pattern.selectors().iter().any(|s| s == key),
        "MetricValue {metric_value} is not a selector of the pattern {pattern:?}"
    );
    let event: Value = serde_json::from_str(event).expect("a JSON event");
    select(&event, key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} is not a number in {event}"))
}

#[test]
fn the_model_reads_patterns_as_cloudwatch_documents_them() {
    let p = Pattern::parse(r#"{ ($.event = "policy_reload") && ($.result = "error") }"#).unwrap();
    assert!(p.matches(r#"{"event":"policy_reload","result":"error"}"#));
    assert!(!p.matches(r#"{"event":"policy_reload","result":"ok"}"#));
    assert!(!p.matches(r#"{"event":"policy_reload"}"#));
    assert!(!p.matches("event=policy_reload result=error"));

    let p = Pattern::parse(r#"{ $.message = "audit records lost*" && $.lost > 0 }"#).unwrap();
    assert!(p.matches(r#"{"message":"audit records lost: queue full","lost":3}"#));
    assert!(!p.matches(r#"{"message":"audit records lost: queue full","lost":0}"#));
    assert!(!p.matches(r#"{"message":"audit records lost","lost":"3"}"#));
    assert_eq!(p.selectors(), ["message", "lost"]);

    let p = Pattern::parse(r#"{ $.a.b = 1 || ($.c <= -2.5) }"#).unwrap();
    assert!(p.matches(r#"{"a":{"b":1}}"#));
    assert!(p.matches(r#"{"c":-3}"#));
    assert!(!p.matches(r#"{"a":{"b":"1"},"c":0}"#));

    for bad in [
        r#"$.a = "x""#,
        r#"{ $.a != "x" }"#,
        r#"{ $.a = "x*y" }"#,
        r#"{ $.a = x }"#,
        r#"{ $.a > "x" }"#,
        r#"{ ($.a = 1 }"#,
        r#"{ $.a = 1 $.b = 2 }"#,
        r#"{ $.a IS NULL }"#,
    ] {
        assert!(Pattern::parse(bad).is_err(), "{bad} was accepted");
    }
}
