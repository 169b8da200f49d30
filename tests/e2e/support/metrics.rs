//! Reading the proxy's OpenMetrics text: samples by name and labels, in any label order.

/// One sample line of the metrics text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        (self.labels.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample named exactly `name` (any label order).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    (text.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|s| s.name == name)
        .collect()
}

/// The sum of the samples `name` whose labels include every pair of `labels`; `None` when
/// no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = (samples(text, name).into_iter())
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
}

/// Parses `name{k="v",...} value [timestamp] [# exemplar]` or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}
