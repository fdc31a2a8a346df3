//! Readers for fields of request bodies and stored objects, which are plain
//! JSON here. A missing field and one of the wrong type read as empty:
//! validation, not reading, is where such a field is refused.

use serde_json::Value;

/// The strings of the array `v`. Entries that are not strings are passed
/// over; a missing field, or one that is not an array, reads as no strings.
pub fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::string_list;
    use serde_json::json;

    #[test]
    fn reads_the_strings_and_passes_over_the_rest() {
        let v = json!({"a": ["x", 1, "y", null], "n": "x", "e": []});
        assert_eq!(string_list(v.get("a")), ["x", "y"]);
        assert!(string_list(v.get("n")).is_empty());
        assert!(string_list(v.get("e")).is_empty());
        assert!(string_list(v.get("missing")).is_empty());
    }
}
