//! Label and field selectors: parsing (pure) and matching.

use std::collections::BTreeMap;

use super::validation;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid field selector {selector:?}: {detail}")]
    Field { selector: String, detail: String },
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

/// Anything that can answer "what is label `k`?".
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for [(Box<str>, Box<str>)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }
}

impl Requirement {
    pub fn matches(&self, labels: &(impl Labels + ?Sized)) -> bool {
        match self {
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::NotExists(k) => labels.label(k).is_none(),
            Requirement::Equals(k, v) => labels.label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => labels.label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => labels.label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::GreaterThan(k, n) => labels
                .label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels
                .label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        }
    }
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn matches(&self, labels: &(impl Labels + ?Sized)) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Parses the `labelSelector` query syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Vec::new();
        for term in split_top_level(input) {
            let term = term.trim();
            if term.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError::Label(format!(
                    "empty requirement in {input:?}"
                )));
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Reads a `metav1.LabelSelector` object (`matchLabels` and
    /// `matchExpressions`), as webhook configurations carry them. An absent
    /// or empty object matches everything.
    pub fn from_json(v: Option<&serde_json::Value>) -> Result<LabelSelector, SelectorError> {
        use serde_json::Value;
        let mut reqs = Vec::new();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(LabelSelector(reqs));
        };
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                let val = val.as_str().ok_or_else(|| {
                    SelectorError::Label(format!("matchLabels[{k:?}] must be a string"))
                })?;
                reqs.push(Requirement::Equals(check_key(k)?, check_value(val)?));
            }
        }
        for e in v
            .get("matchExpressions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let key = check_key(e.get("key").and_then(Value::as_str).unwrap_or(""))?;
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(check_value)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default();
            let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
            reqs.push(match (op, values.is_empty()) {
                ("In", false) => Requirement::In(key, values),
                ("NotIn", false) => Requirement::NotIn(key, values),
                ("Exists", true) => Requirement::Exists(key),
                ("DoesNotExist", true) => Requirement::NotExists(key),
                ("In" | "NotIn", true) => {
                    return Err(SelectorError::Label(format!(
                        "matchExpressions for key {key:?}: values must be non-empty for operator {op}"
                    )));
                }
                ("Exists" | "DoesNotExist", false) => {
                    return Err(SelectorError::Label(format!(
                        "matchExpressions for key {key:?}: values must be empty for operator {op}"
                    )));
                }
                _ => {
                    return Err(SelectorError::Label(format!(
                        "matchExpressions for key {key:?}: operator {op:?} is not one of In, NotIn, Exists, DoesNotExist"
                    )));
                }
            });
        }
        Ok(LabelSelector(reqs))
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn check_key(key: &str) -> Result<String, SelectorError> {
    let errs = validation::qualified_name(key);
    if errs.is_empty() {
        Ok(key.to_string())
    } else {
        Err(SelectorError::Label(format!(
            "invalid label key {key:?}: {}",
            errs.join("; ")
        )))
    }
}

fn check_value(value: &str) -> Result<String, SelectorError> {
    let errs = validation::label_value(value);
    if errs.is_empty() {
        Ok(value.to_string())
    } else {
        Err(SelectorError::Label(format!(
            "invalid label value: {value:?}: {}",
            errs.join("; ")
        )))
    }
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    if let Some(rest) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(rest.trim())?));
    }
    let key_end = term
        .find(|c: char| c.is_whitespace() || "=!<>(".contains(c))
        .unwrap_or(term.len());
    let key = check_key(&term[..key_end])?;
    let rest = term[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(Requirement::Exists(key));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(Requirement::Equals(key, check_value(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(Requirement::NotEquals(key, check_value(v.trim())?));
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some(v) = rest.strip_prefix(op) {
            let n: i64 = v.trim().parse().map_err(|_| {
                SelectorError::Label(format!(
                    "for 'Gt', 'Lt' operators, the value must be an integer, got {:?}",
                    v.trim()
                ))
            })?;
            return Ok(if gt {
                Requirement::GreaterThan(key, n)
            } else {
                Requirement::LessThan(key, n)
            });
        }
    }
    let (set_op, after) = if let Some(a) = rest.strip_prefix("notin") {
        ("notin", a)
    } else if let Some(a) = rest.strip_prefix("in") {
        ("in", a)
    } else {
        return Err(SelectorError::Label(format!(
            "found {rest:?}, expected one of: '=', '==', '!=', 'in', 'notin', '<', '>' or end of requirement"
        )));
    };
    let after = after.trim();
    let inner = after
        .strip_prefix('(')
        .and_then(|a| a.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError::Label(format!(
                "found {after:?}, expected: '(' values ')' after {set_op:?}"
            ))
        })?;
    let values = inner
        .split(',')
        .map(|v| check_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if set_op == "in" {
        Requirement::In(key, values)
    } else {
        Requirement::NotIn(key, values)
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y`, checking each field
    /// against those the resource supports (as the real server does).
    pub fn parse(input: &str, supported: &[&str]) -> Result<FieldSelector, SelectorError> {
        let mut reqs = Vec::new();
        if input.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for term in split_unescaped(input, ',') {
            let (field, value, equal) = if let Some(i) = find_unescaped(&term, "!=") {
                (&term[..i], &term[i + 2..], false)
            } else if let Some(i) = find_unescaped(&term, "==") {
                (&term[..i], &term[i + 2..], true)
            } else if let Some(i) = find_unescaped(&term, "=") {
                (&term[..i], &term[i + 1..], true)
            } else {
                return Err(SelectorError::Field {
                    selector: input.to_string(),
                    detail: format!("{term:?} has no '=', '==' or '!='"),
                });
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(SelectorError::UnsupportedField(field.to_string()));
            }
            reqs.push(FieldRequirement {
                field: field.to_string(),
                value: unescape(value.trim()),
                equal,
            });
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `lookup` answers a field's value (absent fields compare as "").
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let actual = lookup(&r.field).unwrap_or_default();
            (actual == r.value) == r.equal
        })
    }

    /// The value this selector pins `field` to, if it does (`metadata.name=x`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.equal && r.field == field)
            .map(|r| r.value.as_str())
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            "a=1, b==2,c!=3,d in (x, y),e notin (z),f,!g,h>5,i<7,example.com/j=",
        )
        .unwrap();
        assert_eq!(
            s.0,
            vec![
                Requirement::Equals("a".into(), "1".into()),
                Requirement::Equals("b".into(), "2".into()),
                Requirement::NotEquals("c".into(), "3".into()),
                Requirement::In("d".into(), vec!["x".into(), "y".into()]),
                Requirement::NotIn("e".into(), vec!["z".into()]),
                Requirement::Exists("f".into()),
                Requirement::NotExists("g".into()),
                Requirement::GreaterThan("h".into(), 5),
                Requirement::LessThan("i".into(), 7),
                Requirement::Equals("example.com/j".into(), "".into()),
            ]
        );
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert_eq!(
            LabelSelector::parse("k in(a)").unwrap().0,
            vec![Requirement::In("k".into(), vec!["a".into()])]
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "a=b=c",
            "a in b",
            "a in (b",
            "-a",
            "a,,b",
            "a=(b)",
            "a ~ b",
            "h>x",
            "bad key=1",
            "a=-v",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_semantics() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "10")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("app=web"));
        assert!(!m("app=db"));
        assert!(m("app==web,tier=front"));
        assert!(!m("app=web,tier=back"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= matches when the key is absent");
        assert!(!m("app!=web"));
        assert!(m("tier in (front,back)"));
        assert!(!m("tier in (back)"));
        assert!(!m("missing in (x)"));
        assert!(m("tier notin (back)"));
        assert!(!m("tier notin (front)"));
        assert!(
            m("missing notin (x)"),
            "notin matches when the key is absent"
        );
        assert!(m("app"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>5") && !m("n>10") && m("n<11") && !m("app>1"));
        assert!(m(""));
    }

    #[test]
    fn boxed_pairs_are_labels() {
        let pairs: Vec<(Box<str>, Box<str>)> = vec![("a".into(), "b".into())];
        assert!(
            LabelSelector::parse("a=b")
                .unwrap()
                .matches(pairs.as_slice())
        );
        assert!(
            !LabelSelector::parse("a=c")
                .unwrap()
                .matches(pairs.as_slice())
        );
    }

    #[test]
    fn field_selectors() {
        let supported = ["metadata.name", "metadata.namespace"];
        let s = FieldSelector::parse(
            "metadata.name=a,metadata.namespace!=kube-system",
            &supported,
        )
        .unwrap();
        let look = |name: &'static str, ns: &'static str| {
            move |f: &str| match f {
                "metadata.name" => Some(name.to_string()),
                "metadata.namespace" => Some(ns.to_string()),
                _ => None,
            }
        };
        assert!(s.matches(look("a", "default")));
        assert!(!s.matches(look("b", "default")));
        assert!(!s.matches(look("a", "kube-system")));
        assert_eq!(s.exact("metadata.name"), Some("a"));
        assert_eq!(s.exact("metadata.namespace"), None);
        assert!(
            FieldSelector::parse("metadata.name==a", &supported)
                .unwrap()
                .matches(look("a", "x"))
        );
        assert_eq!(
            FieldSelector::parse("spec.foo=a", &supported),
            Err(SelectorError::UnsupportedField("spec.foo".into()))
        );
        assert!(FieldSelector::parse("metadata.name", &supported).is_err());
        let esc = FieldSelector::parse(r"metadata.name=a\,b", &supported).unwrap();
        assert_eq!(esc.exact("metadata.name"), Some("a,b"));
        assert!(FieldSelector::parse("", &supported).unwrap().is_empty());
    }

    #[test]
    fn json_selectors_match_like_their_query_form() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sel = |v: serde_json::Value| LabelSelector::from_json(Some(&v)).unwrap();
        assert!(sel(serde_json::json!({})).matches(&labels));
        assert!(LabelSelector::from_json(None).unwrap().matches(&labels));
        assert!(sel(serde_json::json!({"matchLabels": {"app": "web"}})).matches(&labels));
        assert!(!sel(serde_json::json!({"matchLabels": {"app": "db"}})).matches(&labels));
        let expr = |op: &str, values: &[&str]| {
            sel(
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}),
            )
        };
        assert!(expr("In", &["front", "back"]).matches(&labels));
        assert!(!expr("NotIn", &["front"]).matches(&labels));
        assert!(expr("Exists", &[]).matches(&labels));
        assert!(!expr("DoesNotExist", &[]).matches(&labels));
        for bad in [
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
            serde_json::json!({"matchLabels": {"a b": "x"}}),
        ] {
            assert!(LabelSelector::from_json(Some(&bad)).is_err(), "{bad}");
        }
    }
}
