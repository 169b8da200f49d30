//! A template as CloudFormation would deploy it for given parameters: the
//! values checked against `AllowedValues` and `AllowedPattern` and the
//! template's `Rules`, the conditions evaluated, `Fn::If` replaced by
//! the branch taken, `AWS::NoValue` dropped, resources and outputs whose
//! condition is false removed, and `Ref` to a parameter or a pseudo parameter
//! (in [`PSEUDO`]'s account and region) replaced by its value, in `Fn::Sub`
//! too when every name it uses is one. Enough of CloudFormation to check what
//! a parameter switches on and off; anything else stays as written.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

/// The pseudo parameters of the account and region the tests deploy to.
pub(crate) const PSEUDO: [(&str, &str); 5] = [
    ("AWS::AccountId", "123456789012"),
    ("AWS::Partition", "aws"),
    ("AWS::Region", "eu-west-1"),
    ("AWS::StackName", "egress"),
    ("AWS::URLSuffix", "amazonaws.com"),
];

/// The template resolved with `given` parameters (the others take their
/// `Default`; a parameter with neither is an error). Panics, as
/// CloudFormation refuses the stack, on any of [`refusals`].
pub(crate) fn deploy(template: &Value, given: &[(&str, &str)]) -> Value {
    let mut stack = Stack::new(template, given);
    let refused = stack.refusals();
    assert!(refused.is_empty(), "CloudFormation refuses: {refused:?}");
    stack.resolve()
}

/// Why CloudFormation would refuse the stack with `given` parameters: a
/// value its parameter does not allow, and the `AssertDescription` of every
/// failing assertion of the template's `Rules`.
pub(crate) fn refusals(template: &Value, given: &[(&str, &str)]) -> Vec<String> {
    Stack::new(template, given).refusals()
}

struct Stack<'a> {
    template: &'a Value,
    params: HashMap<String, Value>,
    conditions: HashMap<String, bool>,
    /// Values their parameter does not allow.
    disallowed: Vec<String>,
}

impl<'a> Stack<'a> {
    fn new(template: &'a Value, given: &[(&str, &str)]) -> Self {
        let declared = template["Parameters"].as_object().expect("Parameters");
        for (name, _) in given {
            assert!(declared.contains_key(*name), "no parameter {name}");
        }
        let mut params = HashMap::new();
        let mut disallowed = Vec::new();
        for (name, p) in declared {
            let text = match given.iter().find(|(n, _)| n == name) {
                Some((_, v)) => (*v).to_owned(),
                None => match &p["Default"] {
                    Value::String(s) => s.clone(),
                    Value::Null => panic!("parameter {name} has no default and was not given"),
                    other => other.to_string(),
                },
            };
            if let Some(allowed) = p["AllowedValues"].as_array() {
                let text_of = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                if !allowed.iter().any(|v| text_of(v) == text) {
                    disallowed.push(format!("{name}: {text:?} is not in AllowedValues"));
                }
            }
            if let Some(pattern) = p["AllowedPattern"].as_str() {
                // The whole value must match, as in CloudFormation.
                let whole = Regex::new(&format!("^(?:{pattern})$")).expect("AllowedPattern");
                if !whole.is_match(&text) {
                    disallowed.push(format!("{name}: {text:?} does not match AllowedPattern"));
                }
            }
            let ty = p["Type"].as_str().unwrap_or_default();
            let value = if ty == "CommaDelimitedList" || ty.starts_with("List<") {
                Value::Array(text.split(',').map(|s| Value::from(s.trim())).collect())
            } else {
                Value::String(text)
            };
            params.insert(name.clone(), value);
        }
        for (name, value) in PSEUDO {
            params.insert(name.to_owned(), Value::from(value));
        }
        Stack {
            template,
            params,
            conditions: HashMap::new(),
            disallowed,
        }
    }

    /// The values not allowed, then the `AssertDescription` of each failing
    /// assertion of a rule that applies.
    fn refusals(&mut self) -> Vec<String> {
        let mut broken = self.disallowed.clone();
        let rules = self.template["Rules"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (name, rule) in &rules {
            if let Some(c) = rule.get("RuleCondition")
                && !self.truth(c)
            {
                continue;
            }
            for a in rule["Assertions"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: Assertions"))
            {
                if !self.truth(&a["Assert"]) {
                    let why = a["AssertDescription"].as_str().unwrap_or(name);
                    broken.push(why.to_owned());
                }
            }
        }
        broken
    }

    /// The template as deployed (see the module's documentation).
    fn resolve(mut self) -> Value {
        let template = self.template;
        let mut out = Map::new();
        for (key, section) in template.as_object().expect("a template") {
            let resolved = match key.as_str() {
                "Resources" | "Outputs" => {
                    let mut kept = Map::new();
                    for (id, item) in section.as_object().expect(key) {
                        let wanted = match item["Condition"].as_str() {
                            Some(c) => self.condition(c),
                            None => true,
                        };
                        if wanted {
                            kept.insert(id.clone(), self.value(item).unwrap_or(Value::Null));
                        }
                    }
                    Value::Object(kept)
                }
                _ => section.clone(),
            };
            out.insert(key.clone(), resolved);
        }
        out.insert(
            "Conditions".into(),
            Value::Object(
                (template["Conditions"].as_object().into_iter().flatten())
                    .map(|(name, _)| (name.clone(), Value::from(self.condition(name))))
                    .collect(),
            ),
        );
        Value::Object(out)
    }

    fn condition(&mut self, name: &str) -> bool {
        if let Some(&known) = self.conditions.get(name) {
            return known;
        }
        let expr = &self.template["Conditions"][name];
        assert!(!expr.is_null(), "no condition {name}");
        let result = self.truth(expr);
        self.conditions.insert(name.to_owned(), result);
        result
    }

    fn truth(&mut self, expr: &Value) -> bool {
        let (function, args) = single(expr).unwrap_or_else(|| panic!("not a condition: {expr}"));
        let list = || {
            args.as_array()
                .unwrap_or_else(|| panic!("{function}: {args}"))
        };
        match function {
            "Condition" => self.condition(args.as_str().expect("a condition name")),
            "Fn::Not" => !self.truth(&list()[0]),
            "Fn::And" => list().iter().all(|c| self.truth(c)),
            "Fn::Or" => list().iter().any(|c| self.truth(c)),
            "Fn::Equals" => {
                let [a, b] = list().as_slice() else {
                    panic!("Fn::Equals takes two values: {args}")
                };
                self.value(a) == self.value(b)
            }
            other => panic!("{other} is not a condition function"),
        }
    }

    /// The node resolved; `None` for `AWS::NoValue`.
    fn value(&mut self, node: &Value) -> Option<Value> {
        if let Some((function, args)) = single(node) {
            match function {
                "Ref" if args == "AWS::NoValue" => return None,
                "Ref" => {
                    if let Some(v) = self.params.get(args.as_str().unwrap_or_default()) {
                        return Some(v.clone());
                    }
                }
                "Fn::If" => {
                    let [c, then, other] = args.as_array().expect("Fn::If").as_slice() else {
                        panic!("Fn::If takes three values: {args}")
                    };
                    let c = c.as_str().expect("a condition name");
                    return if self.condition(c) {
                        self.value(then)
                    } else {
                        self.value(other)
                    };
                }
                "Fn::Sub" => {
                    if let Some(s) = args.as_str().and_then(|text| self.substitute(text)) {
                        return Some(Value::String(s));
                    }
                }
                "Fn::Join" => {
                    let joined = self.value(args).and_then(|a| {
                        let [sep, parts] = a.as_array()?.as_slice() else {
                            return None;
                        };
                        let parts: Option<Vec<&str>> =
                            parts.as_array()?.iter().map(Value::as_str).collect();
                        Some(parts?.join(sep.as_str()?))
                    });
                    if let Some(s) = joined {
                        return Some(Value::String(s));
                    }
                }
                _ => {}
            }
        }
        Some(match node {
            Value::Array(items) => {
                Value::Array(items.iter().filter_map(|i| self.value(i)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.value(v)?)))
                    .collect(),
            ),
            other => other.clone(),
        })
    }

    /// `Fn::Sub`'s string with each `${Name}` replaced, when every name is a
    /// parameter or pseudo parameter with a string value.
    fn substitute(&self, text: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}')? + start;
            let name = &rest[start + 2..end];
            out.push_str(self.params.get(name)?.as_str()?);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// `{"Name": args}`: an intrinsic function or `Condition`, with its arguments.
fn single(node: &Value) -> Option<(&str, &Value)> {
    let map = node.as_object()?;
    let (key, args) = map.iter().next()?;
    let intrinsic = key == "Ref" || key == "Condition" || key.starts_with("Fn::");
    (map.len() == 1 && intrinsic).then_some((key.as_str(), args))
}
