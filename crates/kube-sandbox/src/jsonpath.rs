//! The subset of Kubernetes JSONPath that printer columns use:
//! `.a.b`, `.a[0].b`, `.a[*]`, `['k.e.y']`, `.a\.b` and filters like
//! `.status.conditions[?(@.type=="Ready")].status`.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid JSONPath {path:?}: {detail}")]
pub struct JsonPathError {
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Filter {
        path: Vec<String>,
        op: FilterOp,
        value: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterOp {
    Eq,
    Ne,
    Exists,
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    pub fn parse(input: &str) -> Result<JsonPath, JsonPathError> {
        let err = |detail: String| JsonPathError {
            path: input.to_string(),
            detail,
        };
        let mut s = input.trim();
        if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            s = inner.trim();
        }
        let s = s.strip_prefix('$').unwrap_or(s);
        let chars: Vec<char> = s.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    i += 1;
                    let mut name = String::new();
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        if chars[i] == '\\' && i + 1 < chars.len() {
                            i += 1;
                        }
                        name.push(chars[i]);
                        i += 1;
                    }
                    if name.is_empty() {
                        if i == chars.len() && steps.is_empty() {
                            break; // "." alone means the whole object
                        }
                        return Err(err(format!("empty field name at offset {i}")));
                    }
                    steps.push(if name == "*" {
                        Step::Wildcard
                    } else {
                        Step::Field(name)
                    });
                }
                '[' => {
                    let close =
                        find_bracket_end(&chars, i).ok_or_else(|| err("unclosed '['".into()))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    steps.push(parse_bracket(inner.trim()).map_err(err)?);
                    i = close + 1;
                }
                c => {
                    return Err(err(format!(
                        "unexpected {c:?} at offset {i}; paths start with '.'"
                    )));
                }
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path selects, in document order.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in cur {
                match step {
                    Step::Field(name) => {
                        if let Some(x) = v.get(name) {
                            next.push(x);
                        }
                    }
                    Step::Index(i) => {
                        if let Some(a) = v.as_array() {
                            let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                            if idx >= 0
                                && let Some(x) = a.get(idx as usize)
                            {
                                next.push(x);
                            }
                        }
                    }
                    Step::Wildcard => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter { path, op, value } => {
                        if let Some(a) = v.as_array() {
                            for item in a {
                                let got = path.iter().try_fold(item, |acc, f| acc.get(f));
                                let keep = match op {
                                    FilterOp::Exists => got.is_some(),
                                    FilterOp::Eq => got == Some(value),
                                    FilterOp::Ne => got.is_some_and(|g| g != value),
                                };
                                if keep {
                                    next.push(item);
                                }
                            }
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }
}

fn find_bracket_end(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(name) = unquote(inner) {
        return Ok(Step::Field(name.to_string()));
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
        let filter = filter.trim();
        let (lhs, op, rhs) = if let Some(i) = filter.find("==") {
            (&filter[..i], FilterOp::Eq, Some(&filter[i + 2..]))
        } else if let Some(i) = filter.find("!=") {
            (&filter[..i], FilterOp::Ne, Some(&filter[i + 2..]))
        } else {
            (filter, FilterOp::Exists, None)
        };
        let lhs = lhs.trim();
        let rel = lhs
            .strip_prefix("@.")
            .ok_or_else(|| format!("filter {filter:?} must compare a field of '@'"))?;
        let path = rel.split('.').map(str::to_string).collect();
        let value = match rhs.map(str::trim) {
            None => Value::Null,
            Some(r) => match unquote(r) {
                Some(s) => Value::String(s.to_string()),
                None => serde_json::from_str(r).map_err(|_| {
                    format!("filter value {r:?} is neither quoted nor a JSON literal")
                })?,
            },
        };
        return Ok(Step::Filter { path, op, value });
    }
    inner
        .parse::<i64>()
        .map(Step::Index)
        .map_err(|_| format!("unsupported subscript [{inner}]; use an index, '*', a quoted key or ?(@.field==\"value\")"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "metadata": {"name": "n", "annotations": {"cert-manager.io/issuer-name": "ca"}},
            "spec": {"issuerRef": {"name": "ca-issuer"}, "list": [{"b": 1}, {"b": 2}]},
            "status": {"conditions": [
                {"type": "Approved", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "Pending"}
            ]}
        })
    }

    fn find(path: &str) -> Vec<Value> {
        JsonPath::parse(path)
            .unwrap()
            .find(&doc())
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn dotted_fields() {
        assert_eq!(find(".spec.issuerRef.name"), vec![json!("ca-issuer")]);
        assert_eq!(find("{.metadata.name}"), vec![json!("n")]);
        assert_eq!(find("$.metadata.name"), vec![json!("n")]);
        assert!(find(".spec.missing.name").is_empty());
    }

    #[test]
    fn indexes_and_wildcards() {
        assert_eq!(find(".spec.list[0].b"), vec![json!(1)]);
        assert_eq!(find(".spec.list[-1].b"), vec![json!(2)]);
        assert!(find(".spec.list[5].b").is_empty());
        assert_eq!(find(".spec.list[*].b"), vec![json!(1), json!(2)]);
    }

    #[test]
    fn escaped_and_quoted_keys() {
        assert_eq!(
            find(r".metadata.annotations.cert-manager\.io/issuer-name"),
            vec![json!("ca")]
        );
        assert_eq!(
            find(".metadata.annotations['cert-manager.io/issuer-name']"),
            vec![json!("ca")]
        );
    }

    #[test]
    fn filters() {
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("False")]
        );
        assert_eq!(
            find(".status.conditions[?(@.type=='Approved')].status"),
            vec![json!("True")]
        );
        assert!(find(r#".status.conditions[?(@.type=="Denied")].status"#).is_empty());
        assert_eq!(
            find(r#".status.conditions[?(@.type!="Ready")].type"#),
            vec![json!("Approved")]
        );
        assert_eq!(
            find(".status.conditions[?(@.reason)].type"),
            vec![json!("Ready")]
        );
        assert_eq!(find(".spec.list[?(@.b==2)].b"), vec![json!(2)]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["spec", ".a[", ".a[x]", ".a..b", ".a[?(type==1)]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
