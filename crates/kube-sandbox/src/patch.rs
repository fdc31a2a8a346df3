//! Patch formats the sandbox accepts (pure functions on JSON values).

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the JSON patch must be an array of operations, got {0}")]
    NotAnArray(String),
    #[error("JSON patch operation {index}: {detail}")]
    Operation { index: usize, detail: String },
    #[error("JSON patch operation {index}: test failed: {path:?} is not {expected}")]
    TestFailed {
        index: usize,
        path: String,
        expected: String,
    },
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, and
/// anything else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (k, v) in patch_map {
        if v.is_null() {
            target_map.remove(k);
        } else {
            merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Splits an RFC 6901 pointer into unescaped tokens.
fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} must be empty or start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if token == "-" && allow_end {
        return Ok(len);
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let i: usize = if valid {
        token
            .parse()
            .map_err(|_| format!("bad array index {token:?}"))?
    } else {
        return Err(format!("bad array index {token:?}"));
    };
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds (length {len})"));
    }
    Ok(i)
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("path segment {t:?} does not exist"))?,
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("path segment {t:?} is inside a scalar")),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(path)?;
    let mut cur = doc;
    for t in &tokens {
        cur = match cur {
            Value::Object(m) => m
                .get(t)
                .ok_or_else(|| format!("path {path:?} does not exist"))?,
            Value::Array(a) => &a[array_index(t, a.len(), false)?],
            _ => return Err(format!("path {path:?} does not exist")),
        };
    }
    Ok(cur.clone())
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => {
            return Err(format!(
                "cannot add {path:?}: parent is not an object or array"
            ));
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(path)?;
    let (last, parents) = tokens
        .split_last()
        .ok_or("cannot remove the whole document")?;
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("cannot remove {path:?}: it does not exist")),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!(
            "cannot remove {path:?}: parent is not an object or array"
        )),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::NotAnArray(patch.to_string()))?;
    for (index, op) in ops.iter().enumerate() {
        let err = |detail: String| PatchError::Operation { index, detail };
        let field = |name: &str| -> Result<&str, PatchError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Operation {
                    index,
                    detail: format!("missing string field {name:?}"),
                })
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| err("missing field \"value\"".into()))
        };
        match field("op")? {
            "add" => add(doc, path, value()?).map_err(err)?,
            "remove" => {
                remove(doc, path).map_err(err)?;
            }
            "replace" => {
                remove(doc, path).map_err(err)?;
                add(doc, path, value()?).map_err(err)?;
            }
            "move" => {
                let from = field("from")?;
                if path.starts_with(&format!("{from}/")) {
                    return Err(err(format!(
                        "cannot move {from:?} into its own child {path:?}"
                    )));
                }
                let v = remove(doc, from).map_err(err)?;
                add(doc, path, v).map_err(err)?;
            }
            "copy" => {
                let v = get(doc, field("from")?).map_err(err)?;
                add(doc, path, v).map_err(err)?;
            }
            "test" => {
                let expected = value()?;
                if get(doc, path).map_err(err)? != expected {
                    return Err(PatchError::TestFailed {
                        index,
                        path: path.to_string(),
                        expected: expected.to_string(),
                    });
                }
            }
            other => {
                return Err(err(format!(
                    "unknown op {other:?}; use add, remove, replace, move, copy or test"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        // The table of examples from RFC 7386, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"a": {"b": [1, 2]}, "c": "x", "d/e": 1, "f~g": 2});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/a/b/1", "value": 9},
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "remove", "path": "/d~1e"},
                {"op": "test", "path": "/f~0g", "value": 2},
                {"op": "copy", "from": "/c", "path": "/h"},
                {"op": "move", "from": "/f~0g", "path": "/a/i"},
                {"op": "add", "path": "/a/b/0", "value": 0}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"a": {"b": [0, 1, 9, 2, 3], "i": 2}, "c": "y", "h": "y"})
        );
    }

    #[test]
    fn json_patch_errors() {
        let doc = json!({"a": [1]});
        let bad = [
            json!({"op": "add"}),
            json!([{"op": "remove", "path": "/missing"}]),
            json!([{"op": "replace", "path": "/missing", "value": 1}]),
            json!([{"op": "add", "path": "/a/5", "value": 1}]),
            json!([{"op": "add", "path": "/a/01", "value": 1}]),
            json!([{"op": "add", "path": "/x/y", "value": 1}]),
            json!([{"op": "test", "path": "/a/0", "value": 2}]),
            json!([{"op": "frob", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "move", "from": "/a", "path": "/a/0"}]),
            json!([{"op": "add", "path": "/b"}]),
        ];
        for p in bad {
            let mut d = doc.clone();
            assert!(json_patch(&mut d, &p).is_err(), "{p}");
        }
        let mut d = doc.clone();
        assert!(matches!(
            json_patch(&mut d, &json!([{"op": "test", "path": "/a/0", "value": 2}])),
            Err(PatchError::TestFailed { index: 0, .. })
        ));
    }
}
