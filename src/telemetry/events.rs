//! Kubernetes Events (`events.k8s.io/v1`) that users read in
//! `kubectl describe` and `kubectl get events`.
//!
//! Two limits keep a failing loop from flooding the API server:
//! - **Series.** The same occurrence (same object, type, reason, action and
//!   note) within a window updates one Event's `series` (count and
//!   lastObservedTime) by PATCH instead of creating another Event.
//! - **A global token bucket.** Every API write takes a token. Without one a
//!   new occurrence is dropped, and a repeat is counted locally and folded
//!   into the next write of its series (or [`EventRecorder::flush`]).
//!
//! Notes are capped at 1 KiB (the API's limit) and refused when they look
//! like key material or a credential, so a careless caller cannot leak one
//! into an object every namespace reader can see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use thiserror::Error;

/// `reportingController` of the node plugin's Events.
pub const NODE_REPORTER: &str = "cert-csi-node";
/// `reportingController` of the controller's Events.
pub const CONTROLLER_REPORTER: &str = "cert-csi-controller";
/// The API server rejects notes longer than this.
pub const MAX_NOTE_BYTES: usize = 1024;
/// The API server rejects reasons and actions longer than this.
const MAX_REASON_CHARS: usize = 128;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[derive(Debug, Error)]
pub enum EventError {
    #[error(
        "event reason {reason:?} is invalid: {problem}; use a short UpperCamelCase word such as IssuanceDenied"
    )]
    InvalidReason {
        reason: String,
        problem: &'static str,
    },
    #[error(
        "event action {action:?} is invalid: {problem}; use a short UpperCamelCase verb such as Issue"
    )]
    InvalidAction {
        action: String,
        problem: &'static str,
    },
    // The note itself is never echoed: it is what must not leak.
    #[error(
        "event note refused: it appears to contain {what}; pass a message without key material or credentials"
    )]
    SensitiveNote { what: &'static str },
    #[error(
        "event regarding reference has no {field}; build it from the object (kind and name, plus namespace for namespaced objects)"
    )]
    IncompleteReference { field: &'static str },
    #[error("the Kubernetes API refused to {verb} Event {namespace}/{name}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What [`EventRecorder::record`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new Event was created.
    Created { namespace: String, name: String },
    /// An existing Event's series was updated to `count` occurrences.
    Updated {
        namespace: String,
        name: String,
        count: i32,
    },
    /// The rate cap held the write back. A repeat of a known series is still
    /// counted and appears in the series' next write.
    Throttled,
}

/// How much an [`EventRecorder`] may write.
#[derive(Clone, Debug)]
pub struct EventLimits {
    /// Repeats within this time of the previous one join its series.
    pub window: Duration,
    /// Writes allowed at once before the rate applies.
    pub burst: u32,
    /// Sustained writes per second.
    pub per_second: f64,
    /// Series remembered at most; the least recently seen is forgotten first.
    pub max_series: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            // client-go's event library keeps a series open for minutes; ten
            // is long enough that a retry loop with backoff stays one Event.
            window: Duration::from_secs(600),
            burst: 25,
            per_second: 1.0,
            max_series: 4096,
        }
    }
}

use crate::ratelimit::TokenBucket;

/// Says why `text` must not go into an Event, or `None` when it may.
/// Heuristic by necessity: it looks for PEM key blocks, bearer tokens, JWTs
/// (service account tokens are JWTs) and `token: <long value>` pairs.
pub fn sensitive_content(text: &str) -> Option<&'static str> {
    if text.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    let lower = text.to_ascii_lowercase();
    if value_after(&lower, "bearer", &[' '], 8) {
        return Some("a bearer token");
    }
    if text
        .split(|c: char| !is_token_char(c) || c == '/' || c == '+')
        .any(|word| word.starts_with("eyJ") && word.matches('.').count() >= 2 && word.len() >= 20)
    {
        return Some("a JSON Web Token");
    }
    if value_after(&lower, "token", &[':', '='], 16) {
        return Some("a token value");
    }
    None
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+/=".contains(c)
}

/// True when some `keyword` in `lower` is followed (after quotes and spaces)
/// by one of `separators` and then a run of at least `min_len` token
/// characters.
fn value_after(lower: &str, keyword: &str, separators: &[char], min_len: usize) -> bool {
    lower.match_indices(keyword).any(|(at, _)| {
        let rest = lower[at + keyword.len()..].trim_start_matches(['"', '\'']);
        let Some(rest) = rest.strip_prefix(separators) else {
            return false;
        };
        let value = rest.trim_start_matches([' ', '"', '\'']);
        value.chars().take_while(|c| is_token_char(*c)).count() >= min_len
    })
}

/// Cuts `note` to at most [`MAX_NOTE_BYTES`] on a character boundary, marking
/// the cut with `...`.
pub fn truncate_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_owned();
    }
    let mut end = MAX_NOTE_BYTES - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

fn check_word(word: &str) -> Result<(), &'static str> {
    if word.is_empty() {
        return Err("it is empty");
    }
    if word.chars().count() > MAX_REASON_CHARS {
        return Err("it is longer than 128 characters");
    }
    if !word.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("it has characters other than ASCII letters and digits");
    }
    Ok(())
}

/// A reference to a Pod, as the node plugin knows it from the volume
/// context (`csi.storage.k8s.io/pod.*`).
pub fn pod_reference(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: uid.map(str::to_owned),
        ..Default::default()
    }
}

/// One series: the same occurrence on the same object.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SeriesKey {
    /// The uid when known; kind/namespace/name otherwise.
    object: String,
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

#[derive(Debug)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last_seen: Instant,
    /// Occurrences counted but not yet written (throttled).
    unwritten: bool,
}

struct State {
    bucket: TokenBucket,
    series: HashMap<SeriesKey, Series>,
}

impl State {
    fn forget_stale(&mut self, window: Duration, now: Instant) {
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last_seen) <= window);
    }

    fn make_room(&mut self, max: usize) {
        while self.series.len() >= max.max(1) {
            let Some(oldest) = self
                .series
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.series.remove(&oldest);
        }
    }
}

/// Writes Events for one component. Cheap to clone; clones share the series
/// and the rate cap.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    reporting_controller: String,
    reporting_instance: String,
    limits: EventLimits,
    // Held across the API call: events are rare by design, and serialising
    // them is what guarantees one Event per series under concurrency.
    state: Arc<tokio::sync::Mutex<State>>,
}

impl EventRecorder {
    /// `reporting_controller` is [`NODE_REPORTER`] or [`CONTROLLER_REPORTER`];
    /// `reporting_instance` the node name or the controller's pod name.
    pub fn new(
        client: kube::Client,
        reporting_controller: impl Into<String>,
        reporting_instance: impl Into<String>,
        limits: EventLimits,
    ) -> Self {
        let state = State {
            bucket: TokenBucket::new(limits.burst, limits.per_second, Instant::now()),
            series: HashMap::new(),
        };
        Self {
            client,
            reporting_controller: reporting_controller.into(),
            reporting_instance: reporting_instance.into(),
            limits,
            state: Arc::new(tokio::sync::Mutex::new(state)),
        }
    }

    /// Records one occurrence about `regarding`.
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<Recorded, EventError> {
        check_word(reason).map_err(|problem| EventError::InvalidReason {
            reason: reason.to_owned(),
            problem,
        })?;
        check_word(action).map_err(|problem| EventError::InvalidAction {
            action: action.to_owned(),
            problem,
        })?;
        if let Some(what) = sensitive_content(note) {
            return Err(EventError::SensitiveNote { what });
        }
        let name = regarding
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or(EventError::IncompleteReference { field: "name" })?;
        let kind = regarding
            .kind
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(EventError::IncompleteReference { field: "kind" })?;
        // Events about cluster-scoped objects live in `default`, as
        // client-go puts them.
        let namespace = regarding
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        let note = truncate_note(note);
        let key = SeriesKey {
            object: match regarding.uid.as_deref().filter(|u| !u.is_empty()) {
                Some(uid) => uid.to_owned(),
                None => format!("{kind}/{namespace}/{name}"),
            },
            type_,
            reason: reason.to_owned(),
            action: action.to_owned(),
            note: note.clone(),
        };

        let mut state = self.state.lock().await;
        let now = Instant::now();
        state.forget_stale(self.limits.window, now);
        if let Some(series) = state.series.get_mut(&key) {
            series.count = series.count.saturating_add(1);
            series.last_seen = now;
            series.unwritten = true;
            let (event_ns, event_name, count) =
                (series.namespace.clone(), series.name.clone(), series.count);
            if !state.bucket.try_take(now) {
                return Ok(Recorded::Throttled);
            }
            match self.patch_series(&event_ns, &event_name, count).await {
                Ok(()) => {
                    if let Some(series) = state.series.get_mut(&key) {
                        series.unwritten = false;
                    }
                    return Ok(Recorded::Updated {
                        namespace: event_ns,
                        name: event_name,
                        count,
                    });
                }
                // The Event expired or was deleted: start a new one with the
                // token already taken.
                Err(EventError::Api {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 => {
                    state.series.remove(&key);
                }
                Err(e) => return Err(e),
            }
        } else if !state.bucket.try_take(now) {
            return Ok(Recorded::Throttled);
        }

        let event = self.new_event(regarding, namespace, name, type_, reason, action, &note);
        let event_name = event.metadata.name.clone().unwrap_or_default();
        kube::Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| EventError::Api {
                verb: "create",
                namespace: namespace.to_owned(),
                name: event_name.clone(),
                source,
            })?;
        state.make_room(self.limits.max_series);
        state.series.insert(
            key,
            Series {
                namespace: namespace.to_owned(),
                name: event_name.clone(),
                count: 1,
                last_seen: now,
                unwritten: false,
            },
        );
        Ok(Recorded::Created {
            namespace: namespace.to_owned(),
            name: event_name,
        })
    }

    /// Records in the background, logging a failure instead of returning it:
    /// for callers (publish, renewal) that must not wait on the Events API.
    pub fn emit(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let recorder = self.clone();
        tokio::spawn(async move {
            match recorder
                .record(&regarding, type_, reason, action, &note)
                .await
            {
                Ok(Recorded::Throttled) => {
                    tracing::debug!(reason, "event held back by the rate cap");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, reason, "cannot record event"),
            }
        });
    }

    /// Writes the counts of series whose last repeats were held back by the
    /// rate cap (for example at shutdown). Still subject to the cap; returns
    /// how many series were written.
    pub async fn flush(&self) -> Result<usize, EventError> {
        let mut state = self.state.lock().await;
        let pending: Vec<(SeriesKey, String, String, i32)> = state
            .series
            .iter()
            .filter(|(_, s)| s.unwritten)
            .map(|(k, s)| (k.clone(), s.namespace.clone(), s.name.clone(), s.count))
            .collect();
        let mut written = 0;
        for (key, namespace, name, count) in pending {
            if !state.bucket.try_take(Instant::now()) {
                break;
            }
            self.patch_series(&namespace, &name, count).await?;
            if let Some(series) = state.series.get_mut(&key) {
                series.unwritten = false;
            }
            written += 1;
        }
        Ok(written)
    }

    async fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
    ) -> Result<(), EventError> {
        let series = EventSeries {
            count,
            last_observed_time: MicroTime(jiff::Timestamp::now()),
        };
        let patch = serde_json::json!({ "series": series });
        kube::Api::<Event>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|source| EventError::Api {
                verb: "patch",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_event(
        &self,
        regarding: &ObjectReference,
        namespace: &str,
        object_name: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(object_name)),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.reporting_controller.clone()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..Default::default()
        }
    }
}

/// `<object>.<hex>`, as client-go names Events; the object part is cut so
/// the name stays under the 253-character limit.
fn event_name(object_name: &str) -> String {
    let prefix: String = object_name.chars().take(200).collect();
    let prefix = prefix.trim_end_matches(['.', '-']);
    let nanos = jiff::Timestamp::now().as_nanosecond();
    let salt: u16 = rand::random();
    format!("{prefix}.{:x}{salt:04x}", nanos.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_notes_are_recognised() {
        // Fake keys, split so the source never holds a PEM key header.
        let pem = concat!(
            "-----BEGIN PRIVATE",
            " KEY-----\nMIIB\n-----END PRIVATE KEY-----"
        );
        assert_eq!(sensitive_content(pem), Some("a private key"));
        let ec = concat!("key: -----BEGIN EC PRIVATE", " KEY-----");
        assert_eq!(sensitive_content(ec), Some("a private key"));
        let jwt = "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl rejected";
        assert_eq!(sensitive_content(jwt), Some("a JSON Web Token"));
        assert_eq!(
            sensitive_content("Authorization: Bearer abcdef0123456789"),
            Some("a bearer token")
        );
        assert_eq!(
            sensitive_content(r#"{"token": "abcdefghijklmnop1234"}"#),
            Some("a token value")
        );
        assert_eq!(
            sensitive_content("serviceAccountToken=abcdefghijklmnop1234"),
            Some("a token value")
        );
        // Ordinary failure messages mention keys and tokens without holding one.
        for fine in [
            "CertificateRequest ns/pod-1 was denied (Denied): issuer not allowed",
            "could not generate the private key: RSA size 1024 is too small",
            "token request failed: audience not allowed",
            "token: expired",
            "bearer token missing",
        ] {
            assert_eq!(sensitive_content(fine), None, "{fine}");
        }
    }

    #[test]
    fn notes_are_cut_to_one_kib_on_a_char_boundary() {
        assert_eq!(truncate_note("short"), "short");
        let exact = "a".repeat(MAX_NOTE_BYTES);
        assert_eq!(truncate_note(&exact), exact);
        // 'é' is two bytes, so byte 1021 falls inside a character.
        let long = "é".repeat(MAX_NOTE_BYTES);
        let cut = truncate_note(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert!(cut.len() > MAX_NOTE_BYTES - 6);
    }

    #[test]
    fn reasons_and_actions_are_checked() {
        assert!(check_word("IssuanceDenied").is_ok());
        assert_eq!(check_word(""), Err("it is empty"));
        assert!(check_word("has space").is_err());
        assert!(check_word(&"A".repeat(129)).is_err());
        assert!(check_word(&"A".repeat(128)).is_ok());
    }

    #[test]
    fn event_names_are_valid_and_bounded() {
        let name = event_name(&"p".repeat(253));
        assert!(name.len() <= 253, "{}", name.len());
        let name = event_name("web-0");
        let (prefix, suffix) = name.split_once('.').unwrap();
        assert_eq!(prefix, "web-0");
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert_ne!(event_name("web-0"), event_name("web-0"));
    }

    #[test]
    fn least_recently_seen_series_is_forgotten_first() {
        let t0 = Instant::now();
        let mut state = State {
            bucket: TokenBucket::new(1, 1.0, t0),
            series: HashMap::new(),
        };
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            state.series.insert(
                SeriesKey {
                    object: (*name).into(),
                    type_: EventType::Warning,
                    reason: "R".into(),
                    action: "A".into(),
                    note: String::new(),
                },
                Series {
                    namespace: "ns".into(),
                    name: (*name).into(),
                    count: 1,
                    last_seen: t0 + Duration::from_secs(i as u64),
                    unwritten: false,
                },
            );
        }
        state.make_room(3);
        let mut left: Vec<_> = state.series.values().map(|s| s.name.clone()).collect();
        left.sort();
        assert_eq!(left, ["b", "c"]);
        state.forget_stale(Duration::from_secs(5), t0 + Duration::from_secs(7));
        let left: Vec<_> = state.series.values().map(|s| s.name.clone()).collect();
        assert_eq!(left, ["c"]);
    }
}
