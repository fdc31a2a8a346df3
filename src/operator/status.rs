//! `cert-csi status`: every volume on this node, from the node plugin's own
//! state files (`<data root>/volumes/<id>/state.json`). No API call and no
//! key: the state never holds one, and the tmpfs is not read.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};
use thiserror::Error;

use crate::store::{RequestPhase, Store, StoreError, VolumeState};
use crate::volume::attributes::kubelet;

#[derive(Debug, Error)]
pub enum StatusError {
    #[error(
        "--data-root {path}: no cert-csi state there ({why}); give the node plugin's --data-root (the chart's default is /var/lib/cert-csi)"
    )]
    NoDataRoot { path: PathBuf, why: String },
    #[error("reading the volume states under {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// One volume as `status` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub volume_id: String,
    /// `<namespace>/<name>` of the pod, when the kubelet passed it.
    pub pod: Option<String>,
    pub request: Option<String>,
    /// `issued`, `pending`, `deferred` (mounted before its gates passed), or
    /// `none` before the first request.
    pub phase: &'static str,
    pub not_after: Option<SystemTime>,
    pub next_renewal: Option<SystemTime>,
    pub renewal_attempts: u32,
    pub last_error: Option<String>,
    pub adopted: bool,
}

impl Row {
    pub fn of(state: &VolumeState) -> Row {
        let field = |k: &str| state.context.get(k).filter(|v| !v.is_empty());
        let time = |t: Option<jiff::Timestamp>| t.map(SystemTime::from);
        Row {
            volume_id: state.volume_id.clone(),
            pod: match (field(kubelet::POD_NAMESPACE), field(kubelet::POD_NAME)) {
                (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
                _ => None,
            },
            request: state
                .request
                .as_ref()
                .map(|r| format!("{}/{}", r.namespace, r.name)),
            phase: match state.request.as_ref().map(|r| r.phase) {
                Some(RequestPhase::Issued) => "issued",
                Some(RequestPhase::Pending) => "pending",
                // Mounted empty (--continue-on-not-ready), gates not passed.
                None if state.deferred => "deferred",
                None => "none",
            },
            not_after: time(state.not_after),
            next_renewal: time(state.next_renewal),
            renewal_attempts: state.renewal_attempts,
            last_error: state.last_error.clone(),
            adopted: state.adopted.is_some(),
        }
    }
}

/// Every volume under `data_root`, sorted by pod then volume id. Creates
/// nothing: a directory that is not a data root is an error.
pub fn rows(data_root: &Path) -> Result<Vec<Row>, StatusError> {
    let volumes = data_root.join("volumes");
    if let Err(e) = std::fs::metadata(&volumes).and_then(|m| {
        if m.is_dir() {
            Ok(())
        } else {
            Err(std::io::Error::other("volumes is not a directory"))
        }
    }) {
        return Err(StatusError::NoDataRoot {
            path: data_root.to_path_buf(),
            why: format!("{}: {e}", volumes.display()),
        });
    }
    let read = |source| StatusError::Read {
        path: data_root.to_path_buf(),
        source,
    };
    let store = Store::open(data_root).map_err(read)?;
    let mut rows: Vec<Row> = store.list().map_err(read)?.iter().map(Row::of).collect();
    rows.sort_by(|a, b| (&a.pod, &a.volume_id).cmp(&(&b.pod, &b.volume_id)));
    Ok(rows)
}

/// A table for people.
pub fn render_text(rows: &[Row], now: SystemTime) -> String {
    let when = |t: Option<SystemTime>| {
        t.map(|t| format!("{} ({})", super::rfc3339(t), super::relative(t, now)))
            .unwrap_or_else(|| "-".into())
    };
    let mut table = vec![[
        "POD".to_owned(),
        "VOLUME".into(),
        "REQUEST".into(),
        "EXPIRES".into(),
        "NEXT RENEWAL".into(),
        "LAST ERROR".into(),
    ]];
    for r in rows {
        let error = match (&r.last_error, r.renewal_attempts) {
            (Some(e), n) => format!("{e} (attempt {n})"),
            (None, _) => "-".into(),
        };
        table.push([
            r.pod.clone().unwrap_or_else(|| "-".into()),
            r.volume_id.clone(),
            r.request
                .as_ref()
                .map(|q| format!("{q} ({})", r.phase))
                .unwrap_or_else(|| "-".into()),
            when(r.not_after),
            when(r.next_renewal),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} volume(s)\n", rows.len()));
    out
}

/// The same as JSON, times in RFC 3339.
pub fn render_json(rows: &[Row]) -> Value {
    let time = |t: Option<SystemTime>| t.map(super::rfc3339);
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "volumeId": r.volume_id,
                    "pod": r.pod,
                    "request": r.request,
                    "phase": r.phase,
                    "notAfter": time(r.not_after),
                    "nextRenewal": time(r.next_renewal),
                    "renewalAttempts": r.renewal_attempts,
                    "lastError": r.last_error,
                    "adopted": r.adopted,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn state() -> VolumeState {
        let mut context = BTreeMap::new();
        context.insert(kubelet::POD_NAME.to_owned(), "web-0".to_owned());
        context.insert(kubelet::POD_NAMESPACE.to_owned(), "shop".to_owned());
        let mut s = VolumeState::new("csi-abc", "/t", context, "fp");
        s.request = Some(crate::store::RequestRef {
            namespace: "shop".into(),
            name: "csi-abc-2".into(),
            phase: RequestPhase::Pending,
        });
        s.not_after = Some(jiff::Timestamp::from_second(2_000_000).unwrap());
        s.renewal_attempts = 3;
        s.last_error = Some("the request was denied: policy".into());
        s
    }

    #[test]
    fn a_row_names_the_pod_request_and_last_error() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_996_400);
        let rows = [Row::of(&state())];
        let text = render_text(&rows, now);
        assert!(text.contains("shop/web-0"), "{text}");
        assert!(text.contains("shop/csi-abc-2 (pending)"), "{text}");
        assert!(text.contains("1970-01-24T03:33:20Z (in 1h0m)"), "{text}");
        assert!(
            text.contains("the request was denied: policy (attempt 3)"),
            "{text}"
        );
        assert!(text.ends_with("1 volume(s)\n"));
        let json = render_json(&rows);
        assert_eq!(json[0]["pod"], "shop/web-0");
        assert_eq!(json[0]["notAfter"], "1970-01-24T03:33:20Z");
        assert_eq!(json[0]["nextRenewal"], Value::Null);
        assert_eq!(json[0]["renewalAttempts"], 3);
    }

    #[test]
    fn a_directory_without_state_is_an_error_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let err = rows(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("--data-root") && err.contains("no cert-csi state"),
            "{err}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
