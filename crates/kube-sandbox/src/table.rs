//! `meta.k8s.io/v1` Tables, which kubectl asks for on get, list and watch.
//! Without them kubectl silently prints only a NAME column.

use serde_json::{Value, json};

use super::resources::{Builtin, PrinterColumn, ResourceDef};

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Kubernetes' `HumanDuration`, as the real server prints ages.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let rest = d % 365;
        if rest == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{rest}d")
        }
    } else {
        format!("{y}y")
    }
}

/// The age of an RFC 3339 timestamp at `now` (unix seconds), or `<unknown>`.
pub fn age(ts: Option<&str>, now: i64) -> String {
    match ts.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn col(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

fn name_col() -> Value {
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated.",
        0,
    )
}

fn age_col() -> Value {
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    )
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn count(v: &Value, ptr: &str) -> usize {
    match v.pointer(ptr) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// Column definitions and a function producing each row's cells.
fn builtin_columns(b: Builtin) -> Vec<Value> {
    let mut cols = match b {
        Builtin::Namespace => vec![
            name_col(),
            col("Status", "string", "", "The status of the namespace", 0),
        ],
        Builtin::Pod => vec![
            name_col(),
            col(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            col(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                0,
            ),
            col(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted.",
                0,
            ),
        ],
        Builtin::Secret => vec![
            name_col(),
            col("Type", "string", "", "The type of the secret", 0),
            col(
                "Data",
                "string",
                "",
                "The number of entries in the secret",
                0,
            ),
        ],
        Builtin::ConfigMap => vec![
            name_col(),
            col("Data", "string", "", "Number of data in configmap", 0),
        ],
        Builtin::ServiceAccount => vec![
            name_col(),
            col(
                "Secrets",
                "string",
                "",
                "Secrets is a list of the secrets in the same namespace.",
                0,
            ),
        ],
        Builtin::CoreEvent | Builtin::Event => {
            return vec![
                col(
                    "Last Seen",
                    "string",
                    "",
                    "Time when this Event was last observed.",
                    0,
                ),
                col(
                    "Type",
                    "string",
                    "",
                    "Type of this event (Normal, Warning).",
                    0,
                ),
                col("Reason", "string", "", "Why the action was taken.", 0),
                col("Object", "string", "", "The object this Event is about.", 0),
                col(
                    "Message",
                    "string",
                    "",
                    "A human-readable description of the status of this operation.",
                    0,
                ),
            ];
        }
        Builtin::Lease => vec![
            name_col(),
            col("Holder", "string", "", "The holder of the lease.", 0),
        ],
        Builtin::MutatingWebhookConfiguration | Builtin::ValidatingWebhookConfiguration => vec![
            name_col(),
            col(
                "Webhooks",
                "integer",
                "",
                "Webhooks indicates the number of webhooks in this configuration.",
                0,
            ),
        ],
        Builtin::Crd => {
            return vec![
                name_col(),
                col(
                    "Created At",
                    "date",
                    "",
                    "CreationTimestamp of the CustomResourceDefinition",
                    0,
                ),
            ];
        }
    };
    cols.push(age_col());
    cols
}

fn builtin_cells(b: Builtin, v: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(v, "/metadata/name"));
    let created = v
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let age_cell = json!(age(created, now));
    match b {
        Builtin::Namespace => vec![name, json!(s(v, "/status/phase")), age_cell],
        Builtin::Pod => {
            let total = count(v, "/spec/containers");
            let statuses = v
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c["ready"] == json!(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            let status = if v.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                s(v, "/status/phase").to_string()
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age_cell,
            ]
        }
        Builtin::Secret => vec![
            name,
            json!(s(v, "/type")),
            json!(count(v, "/data").to_string()),
            age_cell,
        ],
        Builtin::ConfigMap => {
            let n = count(v, "/data") + count(v, "/binaryData");
            vec![name, json!(n.to_string()), age_cell]
        }
        Builtin::ServiceAccount => vec![name, json!(count(v, "/secrets").to_string()), age_cell],
        Builtin::CoreEvent | Builtin::Event => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/deprecatedLastTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|x| !x.is_empty())
            });
            let (kind_ptr, name_ptr) = if b == Builtin::Event {
                ("/regarding/kind", "/regarding/name")
            } else {
                ("/involvedObject/kind", "/involvedObject/name")
            };
            let object = format!("{}/{}", s(v, kind_ptr).to_ascii_lowercase(), s(v, name_ptr));
            let message = if b == Builtin::Event {
                s(v, "/note")
            } else {
                s(v, "/message")
            };
            vec![
                json!(age(last, now)),
                json!(s(v, "/type")),
                json!(s(v, "/reason")),
                json!(object),
                json!(message),
            ]
        }
        Builtin::Lease => vec![name, json!(s(v, "/spec/holderIdentity")), age_cell],
        Builtin::Crd => vec![name, json!(created.unwrap_or(""))],
        Builtin::MutatingWebhookConfiguration | Builtin::ValidatingWebhookConfiguration => {
            vec![name, json!(count(v, "/webhooks")), age_cell]
        }
    }
}

fn custom_columns(cols: &[PrinterColumn]) -> Vec<Value> {
    let mut out = vec![name_col()];
    if cols.is_empty() {
        out.push(age_col());
    }
    for c in cols {
        out.push(col(
            &c.name,
            &c.type_,
            &c.format,
            &c.description,
            c.priority,
        ));
    }
    out
}

fn custom_cells(cols: &[PrinterColumn], v: &Value, now: i64) -> Vec<Value> {
    let mut cells = vec![json!(s(v, "/metadata/name"))];
    if cols.is_empty() {
        cells.push(json!(age(
            v.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str),
            now
        )));
    }
    for c in cols {
        let found = c.path.find(v);
        let cell = match found.first() {
            None => Value::Null,
            Some(x) if c.type_ == "date" => json!(age(x.as_str(), now)),
            Some(Value::String(x)) => json!(x),
            Some(x @ (Value::Number(_) | Value::Bool(_))) => (*x).clone(),
            Some(x) => json!(x.to_string()),
        };
        cells.push(cell);
    }
    cells
}

fn row_object(v: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(v.clone()),
        IncludeObject::Metadata => Some(partial_metadata(v)),
    }
}

/// The `PartialObjectMetadata` form of an object.
pub fn partial_metadata(v: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": v.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A Table of `objects`; `headers` false leaves out the column definitions
/// (watch events after the first, as the real server does).
pub fn table(
    def: &ResourceDef,
    version: &str,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Value,
    headers: bool,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let printer = def
        .version(version)
        .map(|v| v.columns.as_slice())
        .unwrap_or_default();
    let columns = match def.builtin {
        Some(b) => builtin_columns(b),
        None => custom_columns(printer),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|v| {
            let cells = match def.builtin {
                Some(b) => builtin_cells(b, v, now),
                None => custom_cells(printer, v, now),
            };
            let mut row = json!({"cells": cells});
            if let Some(o) = row_object(v, include) {
                row["object"] = o;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if headers { Value::Array(columns) } else { Value::Null },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{builtins, from_crd};

    #[test]
    fn human_durations_match_kubernetes() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (3000 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn secret_table_has_type_and_data_columns() {
        let secret = builtins()
            .into_iter()
            .find(|d| d.plural == "secrets")
            .unwrap();
        let obj = json!({"metadata": {"name": "s", "namespace": "n", "creationTimestamp": "2000-01-01T00:00:00Z"}, "type": "Opaque", "data": {"a": "", "b": ""}});
        let t = table(
            &secret,
            "v1",
            &[obj],
            IncludeObject::Metadata,
            json!({"resourceVersion": "5"}),
            true,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "Type", "Data", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "s");
        assert_eq!(cells[1], "Opaque");
        assert_eq!(cells[2], "2");
        assert!(cells[3].as_str().unwrap().ends_with('y'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "n");
    }

    #[test]
    fn custom_columns_evaluate_json_paths() {
        let def = from_crd(&json!({
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                        {"name": "Count", "type": "integer", "jsonPath": ".spec.count"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                    ]}]}
        }))
        .unwrap();
        let now_ts = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let obj = json!({"metadata": {"name": "t", "creationTimestamp": now_ts}, "spec": {"count": 3},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let t = table(
            &def,
            "v1",
            &[obj, json!({"metadata": {"name": "u"}})],
            IncludeObject::None,
            json!({}),
            true,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "Ready", "Count", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "True");
        assert_eq!(cells[2], 3);
        assert!(
            ["0s", "1s", "2s"].contains(&cells[3].as_str().unwrap()),
            "{}",
            cells[3]
        );
        assert_eq!(t["rows"][1]["cells"][1], Value::Null);
        assert_eq!(
            t["rows"][1]["cells"][3],
            Value::Null,
            "a missing value prints as <none>"
        );
        assert!(t["rows"][0].get("object").is_none());
        let no_headers = table(&def, "v1", &[], IncludeObject::None, json!({}), false);
        assert!(no_headers["columnDefinitions"].is_null());
    }
}
