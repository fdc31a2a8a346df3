//! HTTP: routes Kubernetes API paths to the verbs, negotiates JSON, Table
//! and PartialObjectMetadata answers, and streams watches.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::RequestRecord;
use super::discovery;
use super::error::ApiError;
use super::ops::{self, DeleteOpts, PatchKind, Store};
use super::resources::ResourceDef;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, EventType, Key};
use super::table::{self, IncludeObject};

/// Kubernetes caps request bodies at 3 MiB.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How many request records are kept (oldest dropped first).
const LOG_CAPACITY: usize = 100_000;
/// Watches without `timeoutSeconds` end after this, like the real server's
/// default minimum request timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

pub struct Shared {
    pub store: Store,
    pub log: Mutex<VecDeque<RequestRecord>>,
    pub cancel: CancellationToken,
    pub addr: String,
}

impl Shared {
    fn record(&self, r: RequestRecord) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(r);
    }
}

/// Who is asking. Every request is anonymous for now; bearer-token
/// authentication (ServiceAccount tokens) will plug in here.
fn authenticate(_headers: &HeaderMap) -> String {
    "system:anonymous".to_string()
}

fn json_response(code: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("static headers are valid")
}

fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).expect("JSON values serialize"))
}

fn error_response(e: &ApiError) -> Response {
    value_response(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn text(code: StatusCode, body: &'static str) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("static headers are valid")
}

/// How an answer is shaped, from the Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Table,
    Metadata,
}

fn format_of(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Clients list preferences in order; the first we can serve wins.
    for part in accept.split(',') {
        if part.contains("as=Table") {
            return Format::Table;
        }
        if part.contains("as=PartialObjectMetadata") {
            return Format::Metadata;
        }
        let mime = part.split(';').next().unwrap_or("").trim();
        if mime == "application/json" || mime == "*/*" || mime == "application/*" {
            return Format::Json;
        }
    }
    Format::Json
}

/// A parsed resource path.
struct Target {
    def: Arc<ResourceDef>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion(String, String),
    Resource {
        group: String,
        version: String,
        namespace: Option<String>,
        plural: String,
        name: Option<String>,
        sub: Option<String>,
    },
}

fn parse_route(segs: &[&str]) -> Option<Route> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let s = |x: &&str| x.to_string();
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, sub] if group.is_empty() && (*sub == "status" || *sub == "finalize") => {
            return Some(Route::Resource {
                group,
                version,
                namespace: None,
                plural: "namespaces".into(),
                name: Some(ns.to_string()),
                sub: Some(sub.to_string()),
            });
        }
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        other => (None, other),
    };
    match rest {
        [] if namespace.is_none() => Some(Route::GroupVersion(group, version)),
        [plural] => Some(Route::Resource {
            group,
            version,
            namespace,
            plural: s(plural),
            name: None,
            sub: None,
        }),
        [plural, name] => Some(Route::Resource {
            group,
            version,
            namespace,
            plural: s(plural),
            name: Some(s(name)),
            sub: None,
        }),
        [plural, name, sub] => Some(Route::Resource {
            group,
            version,
            namespace,
            plural: s(plural),
            name: Some(s(name)),
            sub: Some(s(sub)),
        }),
        _ => None,
    }
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let query = parse_query(req.uri().query());
    let headers = req.headers().clone();
    let format = format_of(&headers);

    if method == Method::GET {
        match segs.as_slice() {
            ["version"] => return value_response(StatusCode::OK, &discovery::version()),
            ["healthz" | "readyz" | "livez", ..] => return text(StatusCode::OK, "ok"),
            ["api"] => {
                return value_response(StatusCode::OK, &discovery::api_versions(&shared.addr));
            }
            ["apis"] => {
                let v = shared.store.registry_snapshot(discovery::api_group_list);
                return value_response(StatusCode::OK, &v);
            }
            ["apis", group] => {
                return match shared
                    .store
                    .registry_snapshot(|r| discovery::api_group(r, group))
                {
                    Some(v) => value_response(StatusCode::OK, &v),
                    None => error_response(&ApiError::NoRoute),
                };
            }
            ["openapi", "v3"] => {
                let v = shared.store.registry_snapshot(super::openapi::root);
                return value_response(StatusCode::OK, &v);
            }
            ["openapi", "v3", "api", version] => {
                return match shared
                    .store
                    .registry_snapshot(|r| super::openapi::group_version(r, "", version))
                {
                    Some(v) => value_response(StatusCode::OK, &v),
                    None => error_response(&ApiError::NoRoute),
                };
            }
            ["openapi", "v3", "apis", group, version] => {
                return match shared
                    .store
                    .registry_snapshot(|r| super::openapi::group_version(r, group, version))
                {
                    Some(v) => value_response(StatusCode::OK, &v),
                    None => error_response(&ApiError::NoRoute),
                };
            }
            ["sandbox", "requests"] => {
                let log: Vec<Value> = shared
                    .log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(RequestRecord::to_json)
                    .collect();
                return value_response(StatusCode::OK, &Value::Array(log));
            }
            _ => {}
        }
    }
    let Some(route) = parse_route(&segs) else {
        return error_response(&ApiError::NoRoute);
    };
    let (group, version, namespace, plural, name, sub) = match route {
        Route::GroupVersion(g, v) => {
            if method != Method::GET {
                return error_response(&ApiError::MethodNotAllowed(format!(
                    "{method} is not supported on a discovery document"
                )));
            }
            return match shared
                .store
                .registry_snapshot(|r| discovery::resource_list(r, &g, &v))
            {
                Some(v) => value_response(StatusCode::OK, &v),
                None => error_response(&ApiError::NoRoute),
            };
        }
        Route::Resource {
            group,
            version,
            namespace,
            plural,
            name,
            sub,
        } => (group, version, namespace, plural, name, sub),
    };
    let watching = flag(&query, "watch");
    let verb = match (&method, name.is_some()) {
        (&Method::GET, false) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    };
    shared.record(RequestRecord {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        user: authenticate(&headers),
        verb: verb.to_string(),
        group: group.clone(),
        resource: plural.clone(),
        subresource: sub.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
    });
    let Some(def) = shared.store.lookup(&group, &version, &plural) else {
        return error_response(&ApiError::NoRoute);
    };
    if (namespace.is_some() && !def.namespaced)
        || (name.is_some() && def.namespaced && namespace.is_none())
    {
        return error_response(&ApiError::NoRoute);
    }
    if let Some(s) = &sub
        && !(s == "status" && def.status_subresource)
        && !(s == "finalize" && def.plural == "namespaces")
    {
        return error_response(&ApiError::NoRoute);
    }
    let target = Target {
        def,
        version,
        namespace,
        name,
        subresource: sub,
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&ApiError::BadRequest(format!(
                "the request body is larger than {MAX_BODY} bytes"
            )));
        }
    };
    let result = match verb {
        "get" => get(&shared, &target, format),
        "list" => list(&shared, &target, &query, format),
        "watch" => return watch(&shared, target, &query, format),
        "create" => create(&shared, &target, &query, &headers, &body, format),
        "update" => update(&shared, &target, &query, &headers, &body, format),
        "patch" => patch(&shared, &target, &query, &headers, &body, format),
        "delete" => delete(&shared, &target, &query, &body, format),
        "deletecollection" => delete_collection(&shared, &target, &query, &body),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{method} is not supported on {path}"
        ))),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// The stored bytes as the requested version shows them.
fn present<'a>(def: &ResourceDef, version: &str, json: &'a [u8]) -> Cow<'a, [u8]> {
    if version == def.storage_version {
        return Cow::Borrowed(json);
    }
    let mut v: Value = serde_json::from_slice(json).expect("stored objects are valid JSON");
    v["apiVersion"] = json!(def.api_version(version));
    Cow::Owned(serde_json::to_vec(&v).expect("JSON values serialize"))
}

fn present_value(def: &ResourceDef, version: &str, mut v: Value) -> Value {
    v["apiVersion"] = json!(def.api_version(version));
    v
}

/// One object in the requested format.
fn object_response(
    t: &Target,
    code: StatusCode,
    v: Value,
    format: Format,
    query: &Query,
) -> Response {
    let v = present_value(&t.def, &t.version, v);
    match format {
        Format::Json => value_response(code, &v),
        Format::Metadata => value_response(code, &table::partial_metadata(&v)),
        Format::Table => {
            let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
            let rv = v
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            value_response(
                code,
                &table::table(
                    &t.def,
                    &t.version,
                    &[v],
                    include,
                    json!({"resourceVersion": rv}),
                    true,
                ),
            )
        }
    }
}

fn get(shared: &Shared, t: &Target, format: Format) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let obj = shared.store.get(&t.def, t.namespace.as_deref(), name)?;
    if format == Format::Json {
        return Ok(json_response(
            StatusCode::OK,
            present(&t.def, &t.version, &obj.json).into_owned(),
        ));
    }
    Ok(object_response(
        t,
        StatusCode::OK,
        obj.value(),
        format,
        &Query::new(),
    ))
}

fn selectors(def: &ResourceDef, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        &def.field_labels(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((labels, fields))
}

fn list(shared: &Shared, t: &Target, q: &Query, format: Format) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(&t.def, q)?;
    let limit = match q.get("limit") {
        Some(l) => Some(l.parse::<usize>().map_err(|_| {
            ApiError::BadRequest(format!("limit {l:?} must be a non-negative integer"))
        })?),
        None => None,
    };
    let page = shared.store.list(
        &t.def,
        t.namespace.as_deref(),
        &labels,
        &fields,
        limit,
        q.get("continue").map(String::as_str),
    )?;
    let mut list_meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = &page.continue_token {
        list_meta["continue"] = json!(c);
    }
    match format {
        Format::Table => {
            let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
            let objs: Vec<Value> = page
                .items
                .iter()
                .map(|o| present_value(&t.def, &t.version, o.value()))
                .collect();
            Ok(value_response(
                StatusCode::OK,
                &table::table(&t.def, &t.version, &objs, include, list_meta, true),
            ))
        }
        Format::Metadata => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|o| table::partial_metadata(&o.value()))
                .collect();
            Ok(value_response(
                StatusCode::OK,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "items": items}),
            ))
        }
        Format::Json => {
            // Splice the stored bytes into the list instead of re-encoding.
            let head = json!({"kind": t.def.list_kind, "apiVersion": t.def.api_version(&t.version), "metadata": list_meta});
            let head = serde_json::to_vec(&head).expect("JSON values serialize");
            let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
            let mut out = Vec::with_capacity(head.len() + size + 16);
            out.extend_from_slice(&head[..head.len() - 1]);
            out.extend_from_slice(b",\"items\":[");
            for (i, o) in page.items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&present(&t.def, &t.version, &o.json));
            }
            out.extend_from_slice(b"]}");
            Ok(json_response(StatusCode::OK, out))
        }
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn parse_body(body: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    if yaml {
        serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
    }
}

fn write_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    match content_type(headers).as_str() {
        "application/json" | "" | "*/*" => parse_body(body, false),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_body(body, true),
        "application/vnd.kubernetes.protobuf" => {
            super::protobuf::decode(body).map_err(|e| match e {
                super::protobuf::ProtoError::UnsupportedKind(_) => {
                    ApiError::UnsupportedMediaType(e.to_string())
                }
                _ => ApiError::BadRequest(e.to_string()),
            })
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format ({other}); accepted media types include: application/json, application/yaml"
        ))),
    }
}

fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

fn write_opts(q: &Query) -> ops::WriteOpts {
    ops::WriteOpts {
        dry_run: dry_run(q),
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
    }
}

fn create(
    shared: &Shared,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    format: Format,
) -> Result<Response, ApiError> {
    if t.name.is_some() {
        return Err(ApiError::MethodNotAllowed(
            "POST is not supported on a named object; POST to its collection".into(),
        ));
    }
    if t.def.namespaced && t.namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    let v = write_body(headers, body)?;
    let created =
        shared
            .store
            .create(&t.def, &t.version, t.namespace.as_deref(), v, write_opts(q))?;
    Ok(object_response(t, StatusCode::CREATED, created, format, q))
}

fn update(
    shared: &Shared,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    format: Format,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let v = write_body(headers, body)?;
    let status_only = t.subresource.as_deref() == Some("status");
    let updated = shared.store.update(
        &t.def,
        &t.version,
        t.namespace.as_deref(),
        name,
        v,
        status_only,
        write_opts(q),
    )?;
    Ok(object_response(t, StatusCode::OK, updated, format, q))
}

fn patch(
    shared: &Shared,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    format: Format,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let (kind, yaml) = match content_type(headers).as_str() {
        "application/merge-patch+json" => (PatchKind::Merge, false),
        "application/json-patch+json" => (PatchKind::Json, false),
        "application/strategic-merge-patch+json" => (PatchKind::Strategic, false),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            if q.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::BadRequest(
                    "fieldManager is required for apply requests; pass ?fieldManager=NAME".into(),
                ));
            }
            (PatchKind::Apply, true)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            )));
        }
    };
    if kind == PatchKind::Strategic && t.def.builtin.is_none() {
        return Err(ApiError::UnsupportedMediaType(
            "strategic merge patch is not supported for custom resources; use application/merge-patch+json".into(),
        ));
    }
    let doc = parse_body(body, yaml)?;
    let status_only = t.subresource.as_deref() == Some("status");
    let (v, created) = shared.store.patch(
        &t.def,
        &t.version,
        t.namespace.as_deref(),
        name,
        kind,
        doc,
        status_only,
        write_opts(q),
    )?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(object_response(t, code, v, format, q))
}

fn delete_opts(q: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        propagation: q.get("propagationPolicy").cloned(),
        dry_run: dry_run(q),
        ..Default::default()
    };
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("DeleteOptions body is not valid JSON: {e}"))
        })?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            opts.propagation = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            opts.propagation = Some("Orphan".into());
        }
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            opts.dry_run = true;
        }
    }
    if let Some(p) = &opts.propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "propagationPolicy {p:?} is not one of Orphan, Background, Foreground"
        )));
    }
    Ok(opts)
}

fn delete(
    shared: &Shared,
    t: &Target,
    q: &Query,
    body: &Bytes,
    format: Format,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let opts = delete_opts(q, body)?;
    let v = shared
        .store
        .delete(&t.def, t.namespace.as_deref(), name, &opts)?;
    Ok(object_response(t, StatusCode::OK, v, format, q))
}

fn delete_collection(
    shared: &Shared,
    t: &Target,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if t.def.namespaced && t.namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    let (labels, fields) = selectors(&t.def, q)?;
    let opts = delete_opts(q, body)?;
    let items: Vec<Value> = shared
        .store
        .delete_collection(&t.def, t.namespace.as_deref(), &labels, &fields, &opts)
        .into_iter()
        .map(|v| present_value(&t.def, &t.version, v))
        .collect();
    let rv = shared.store.current_rv().to_string();
    Ok(value_response(
        StatusCode::OK,
        &json!({"kind": t.def.list_kind, "apiVersion": t.def.api_version(&t.version), "metadata": {"resourceVersion": rv}, "items": items}),
    ))
}

/// Per-watch filtering and encoding.
struct Watcher {
    def: Arc<ResourceDef>,
    version: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    format: Format,
    include: IncludeObject,
    headers_sent: bool,
}

impl Watcher {
    fn matches(&self, ns: &str, name: &str, obj: &super::store::Obj) -> bool {
        let key: Key = (ns.to_string(), name.to_string());
        ops::matches(&key, obj, &self.labels, &self.fields)
    }

    /// The event (if any) this change means for this watch.
    fn event(&self, c: &Change) -> Option<EventType> {
        if c.res != self.def.key()
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != &*c.namespace)
        {
            return None;
        }
        let now = self.matches(&c.namespace, &c.name, &c.obj);
        let before = c
            .prev
            .as_ref()
            .is_some_and(|p| self.matches(&c.namespace, &c.name, p));
        match (c.kind, before, now) {
            (EventType::Added, _, true) => Some(EventType::Added),
            (EventType::Modified, true, true) => Some(EventType::Modified),
            (EventType::Modified, false, true) => Some(EventType::Added),
            (EventType::Modified, true, false) => Some(EventType::Deleted),
            (EventType::Deleted, true, _) => Some(EventType::Deleted),
            _ => None,
        }
    }

    fn encode(&mut self, kind: EventType, obj: &super::store::Obj) -> Bytes {
        let object: Vec<u8> = match self.format {
            Format::Json => present(&self.def, &self.version, &obj.json).into_owned(),
            Format::Metadata => serde_json::to_vec(&table::partial_metadata(&obj.value()))
                .expect("JSON values serialize"),
            Format::Table => {
                let v = present_value(&self.def, &self.version, obj.value());
                let rv = json!({"resourceVersion": obj.rv.to_string()});
                let t = table::table(
                    &self.def,
                    &self.version,
                    &[v],
                    self.include,
                    rv,
                    !self.headers_sent,
                );
                self.headers_sent = true;
                serde_json::to_vec(&t).expect("JSON values serialize")
            }
        };
        let mut out = Vec::with_capacity(object.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(&object);
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (kind, api_version) = match self.format {
            Format::Metadata => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
            _ => (self.def.kind.clone(), self.def.api_version(&self.version)),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let ev = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}});
        let mut b = serde_json::to_vec(&ev).expect("JSON values serialize");
        b.push(b'\n');
        Bytes::from(b)
    }
}

fn error_event(e: &ApiError) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
        .expect("JSON values serialize");
    b.push(b'\n');
    Bytes::from(b)
}

fn watch_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

use tokio_stream::StreamExt as _;

fn watch(shared: &Arc<Shared>, t: Target, q: &Query, format: Format) -> Response {
    let (labels, fields) = match selectors(&t.def, q) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let start_rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if send_initial => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error_response(&ApiError::BadRequest(format!(
                    "resourceVersion {s:?} is not a resource version this server issued"
                )));
            }
        },
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let bookmarks = flag(q, "allowWatchBookmarks") && format != Format::Table;
    let mut w = Watcher {
        include: IncludeObject::parse(q.get("includeObject").map(String::as_str)),
        def: t.def,
        version: t.version,
        namespace: t.namespace,
        labels,
        fields,
        format,
        headers_sent: false,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start = match shared.store.watch(&w.def, w.namespace.as_deref(), start_rv) {
        Ok(s) => s,
        Err(e) => {
            // Like the real server: a 200 whose only event is the error.
            let _ = tx.try_send(error_event(&e));
            drop(tx);
            return watch_response(rx);
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut last_rv = start_rv.unwrap_or(0);
        let mut sent_rv = 0u64;
        let mut live = start.rx;
        for c in &start.initial {
            // A snapshot (no resourceVersion) is all ADDED; a resume replays.
            let kind = match start_rv {
                None => w
                    .matches(&c.namespace, &c.name, &c.obj)
                    .then_some(EventType::Added),
                Some(_) => w.event(c),
            };
            if let Some(k) = kind
                && tx.send(w.encode(k, &c.obj)).await.is_err()
            {
                return;
            }
        }
        last_rv = last_rv.max(start.rv);
        if send_initial && bookmarks {
            if tx.send(w.bookmark(last_rv, true)).await.is_err() {
                return;
            }
            sent_rv = last_rv;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if last_rv > sent_rv {
                        if tx.send(w.bookmark(last_rv, false)).await.is_err() {
                            return;
                        }
                        sent_rv = last_rv;
                    }
                }
                got = live.recv() => {
                    let batch: Vec<Arc<Change>> = match got {
                        Ok(c) => vec![c],
                        Err(broadcast::error::RecvError::Lagged(_)) => match shared.store.catch_up(last_rv) {
                            Some((changes, rx)) => {
                                live = rx;
                                changes
                            }
                            None => {
                                let e = ApiError::Expired(format!("too old resource version: {last_rv}; the watch fell behind, list again"));
                                let _ = tx.send(error_event(&e)).await;
                                return;
                            }
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    for c in batch {
                        if c.rv <= last_rv {
                            continue;
                        }
                        last_rv = c.rv;
                        if let Some(k) = w.event(&c)
                            && tx.send(w.encode(k, &c.obj)).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    });
    watch_response(rx)
}
