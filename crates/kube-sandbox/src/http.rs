//! HTTP: routes Kubernetes API paths to the verbs, negotiates JSON, Table
//! and PartialObjectMetadata answers, and streams watches.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::RequestRecord;
use super::admission::{self, Attributes, HookKind, Operation, Review, Webhook};
use super::auth::{self, UserInfo};
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

/// A Service a test made reachable: (namespace, name, port).
pub type ServiceKey = (String, String, u16);

pub struct Shared {
    pub store: Store,
    pub log: Mutex<VecDeque<RequestRecord>>,
    pub cancel: CancellationToken,
    pub addr: String,
    pub tokens: auth::Tokens,
    /// Every webhook of every stored configuration, mutating ones first,
    /// each kind in configuration-name order. Rebuilt after each write to a
    /// configuration, so a write elsewhere only reads this list.
    pub webhooks: RwLock<Arc<Vec<Webhook>>>,
    /// Serializes rebuilds of `webhooks`, so the last rebuild sees the last write.
    pub webhooks_rebuild: Mutex<()>,
    pub services: Mutex<HashMap<ServiceKey, SocketAddr>>,
}

impl Shared {
    pub fn new(store: Store, addr: String) -> Shared {
        Shared {
            store,
            log: Mutex::new(VecDeque::new()),
            cancel: CancellationToken::new(),
            addr,
            tokens: auth::Tokens::default(),
            webhooks: RwLock::new(Arc::new(Vec::new())),
            webhooks_rebuild: Mutex::new(()),
            services: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, r: RequestRecord) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(r);
    }

    fn webhooks(&self) -> Arc<Vec<Webhook>> {
        self.webhooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the stored webhook configurations.
    fn rebuild_webhooks(&self) {
        let _one_at_a_time = self
            .webhooks_rebuild
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        for (plural, kind) in [
            ("mutatingwebhookconfigurations", HookKind::Mutating),
            ("validatingwebhookconfigurations", HookKind::Validating),
        ] {
            let def = self
                .store
                .lookup(admission::GROUP, "v1", plural)
                .expect("webhook configurations are built-in resources");
            let page = self
                .store
                .list(
                    &def,
                    None,
                    &LabelSelector::default(),
                    &FieldSelector::default(),
                    None,
                    None,
                )
                .expect("an unpaged list without selectors cannot fail");
            for o in &page.items {
                all.extend(admission::webhooks_of(kind, &o.value()));
            }
        }
        *self.webhooks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
    }

    fn resolve_service(&self, ns: &str, name: &str, port: u16) -> Option<SocketAddr> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(ns.to_string(), name.to_string(), port))
            .copied()
    }
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
    let user = match auth::authenticate(&headers, &shared.tokens, &shared.store) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };

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
        user: user.username.clone(),
        groups: user.groups.clone(),
        verb: verb.to_string(),
        group: group.clone(),
        resource: plural.clone(),
        subresource: sub.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
    });
    if group.is_empty() && plural == "serviceaccounts" && sub.as_deref() == Some("token") {
        return token_request(&shared, &method, namespace.as_deref(), name.as_deref(), req).await;
    }
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
    let w = Write {
        t: &target,
        q: &query,
        headers: &headers,
        body: &body,
        format,
    };
    let result = match verb {
        "get" => get(&shared, &target, format),
        "list" => list(&shared, &target, &query, format),
        "watch" => return watch(&shared, target, &query, format),
        // Writes pay for admission only while some webhook is configured.
        "create" | "update" | "patch" | "delete" if !shared.webhooks().is_empty() => {
            admitted(&shared, verb, &w, &user).await
        }
        "create" | "update" | "patch" | "delete" => plain_write(&shared, verb, &w),
        "deletecollection" => delete_collection(&shared, &target, &query, &body),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{method} is not supported on {path}"
        ))),
    };
    if result.is_ok() && target.def.group == admission::GROUP && verb != "get" && verb != "list" {
        shared.rebuild_webhooks();
    }
    result.unwrap_or_else(|e| error_response(&e))
}

/// `POST .../namespaces/{ns}/serviceaccounts/{name}/token`.
async fn token_request(
    shared: &Shared,
    method: &Method,
    namespace: Option<&str>,
    name: Option<&str>,
    req: Request,
) -> Response {
    let (Some(ns), Some(name)) = (namespace, name) else {
        return error_response(&ApiError::NoRoute);
    };
    if method != Method::POST {
        return error_response(&ApiError::MethodNotAllowed(format!(
            "{method} is not supported on serviceaccounts/token; POST a TokenRequest"
        )));
    }
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) if b.is_empty() => Bytes::from_static(b"{}"),
        Ok(b) => b,
        Err(_) => {
            return error_response(&ApiError::BadRequest(format!(
                "the request body is larger than {MAX_BODY} bytes"
            )));
        }
    };
    let result = write_body(&headers, &body).and_then(|v| {
        auth::token_request(
            &shared.store,
            &shared.tokens,
            ns,
            name,
            &v,
            SystemTime::now(),
        )
    });
    match result {
        Ok(v) => value_response(StatusCode::CREATED, &v),
        Err(e) => error_response(&e),
    }
}

/// One write request, as parsed by `handle`.
struct Write<'a> {
    t: &'a Target,
    q: &'a Query,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    format: Format,
}

/// A write without admission.
fn plain_write(shared: &Shared, verb: &str, w: &Write<'_>) -> Result<Response, ApiError> {
    match verb {
        "create" => create(shared, w.t, w.q, w.headers, w.body, w.format),
        "update" => update(shared, w.t, w.q, w.headers, w.body, w.format),
        "patch" => patch(shared, w.t, w.q, w.headers, w.body, w.format),
        _ => delete(shared, w.t, w.q, w.body, w.format),
    }
}

/// How many times an unconditional write is re-run through admission when
/// another writer got in between, as the real server's update loop does.
const ADMISSION_ATTEMPTS: usize = 8;

fn attributes(t: &Target, operation: Operation) -> Attributes<'_> {
    Attributes {
        group: &t.def.group,
        version: &t.version,
        resource: &t.def.plural,
        subresource: t.subresource.as_deref(),
        operation,
        namespaced: t.def.namespaced,
    }
}

fn matching(hooks: &[Webhook], a: &Attributes<'_>) -> Vec<usize> {
    hooks
        .iter()
        .enumerate()
        .filter(|(_, h)| h.rules_match(a))
        .map(|(i, _)| i)
        .collect()
}

/// The labels a namespaceSelector is matched against: the Namespace's own
/// for a Namespace, its namespace's for a namespaced object, none otherwise.
fn namespace_labels(shared: &Shared, t: &Target, obj: &Value) -> Option<BTreeMap<String, String>> {
    if t.def.plural == "namespaces" && t.def.group.is_empty() {
        return Some(admission::labels_of(obj));
    }
    let ns = t.namespace.as_deref().filter(|_| t.def.namespaced)?;
    let def = shared
        .store
        .lookup("", "v1", "namespaces")
        .expect("namespaces are a built-in resource");
    Some(
        shared
            .store
            .get(&def, None, ns)
            .map(|o| admission::labels_of(&o.value()))
            .unwrap_or_default(),
    )
}

/// The webhooks (of one kind) whose rules and selectors select this write.
fn selected<'h>(
    hooks: &'h [Webhook],
    idx: &[usize],
    kind: HookKind,
    object: Option<&Value>,
    old: Option<&Value>,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> Vec<&'h Webhook> {
    idx.iter()
        .map(|i| &hooks[*i])
        .filter(|h| h.kind == kind && h.selectors_match(object, old, ns_labels))
        .collect()
}

fn options(kind: &str, q: &Query) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(fm) = q.get("fieldManager") {
        o["fieldManager"] = json!(fm);
    }
    if dry_run(q) {
        o["dryRun"] = json!(["All"]);
    }
    o
}

/// A write with admission: mutating webhooks, the server's own checks,
/// validating webhooks, then the commit of exactly what was approved.
async fn admitted(
    shared: &Arc<Shared>,
    verb: &str,
    w: &Write<'_>,
    user: &UserInfo,
) -> Result<Response, ApiError> {
    let hooks = shared.webhooks();
    let considered: &[Operation] = match verb {
        "create" => &[Operation::Create],
        "update" => &[Operation::Update],
        // A server-side apply may create.
        "patch" => &[Operation::Update, Operation::Create],
        _ => &[Operation::Delete],
    };
    if !considered
        .iter()
        .any(|op| hooks.iter().any(|h| h.rules_match(&attributes(w.t, *op))))
    {
        return plain_write(shared, verb, w);
    }
    let resolve = |ns: &str, name: &str, port: u16| shared.resolve_service(ns, name, port);
    match verb {
        "create" => {
            if w.t.name.is_some() {
                return plain_write(shared, verb, w);
            }
            let mut obj = write_body(w.headers, w.body)?;
            ops::normalize(&w.t.def, &w.t.version, w.t.namespace.as_deref(), &mut obj)?;
            admit_create(shared, w, obj, user, &hooks, &resolve).await
        }
        "delete" => admit_delete(shared, w, user, &hooks, &resolve).await,
        _ => admit_update(shared, verb, w, user, &hooks, &resolve).await,
    }
}

async fn admit_create(
    shared: &Shared,
    w: &Write<'_>,
    mut obj: Value,
    user: &UserInfo,
    hooks: &[Webhook],
    resolve: admission::Resolver<'_>,
) -> Result<Response, ApiError> {
    let t = w.t;
    let ns = t.namespace.as_deref();
    let idx = matching(hooks, &attributes(t, Operation::Create));
    let name = |v: &Value| {
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let first_name = name(&obj);
    let mut review = Review {
        group: &t.def.group,
        version: &t.version,
        kind: &t.def.kind,
        resource: &t.def.plural,
        subresource: t.subresource.as_deref(),
        namespace: ns,
        name: &first_name,
        operation: Operation::Create,
        user,
        old_object: None,
        dry_run: dry_run(w.q),
        options: options("CreateOptions", w.q),
    };
    let labels = namespace_labels(shared, t, &obj);
    let mutating = selected(
        hooks,
        &idx,
        HookKind::Mutating,
        Some(&obj),
        None,
        labels.as_ref(),
    );
    if !mutating.is_empty() {
        admission::mutate(&mutating, &review, &mut obj, resolve).await?;
        ops::normalize(&t.def, &t.version, ns, &mut obj)?;
    }
    let opts = write_opts(w.q);
    let checked = shared.store.create(
        &t.def,
        &t.version,
        ns,
        obj,
        ops::WriteOpts {
            dry_run: true,
            ..opts
        },
    )?;
    let final_name = name(&checked);
    review.name = &final_name;
    let labels = namespace_labels(shared, t, &checked);
    let validating = selected(
        hooks,
        &idx,
        HookKind::Validating,
        Some(&checked),
        None,
        labels.as_ref(),
    );
    admission::validate(&validating, &review, Some(&checked), resolve).await?;
    if opts.dry_run {
        return Ok(object_response(
            t,
            StatusCode::CREATED,
            checked,
            w.format,
            w.q,
        ));
    }
    let created = shared.store.create(
        &t.def,
        &t.version,
        ns,
        checked,
        ops::WriteOpts {
            preserve_system_fields: true,
            ..opts
        },
    )?;
    Ok(object_response(
        t,
        StatusCode::CREATED,
        created,
        w.format,
        w.q,
    ))
}

/// The body of a PUT, or a PATCH's kind and document.
enum Proposed {
    Put(Value),
    Patch(PatchKind, Value),
}

async fn admit_update(
    shared: &Shared,
    verb: &str,
    w: &Write<'_>,
    user: &UserInfo,
    hooks: &[Webhook],
    resolve: admission::Resolver<'_>,
) -> Result<Response, ApiError> {
    let t = w.t;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or_default();
    let status_only = t.subresource.as_deref() == Some("status");
    let opts = write_opts(w.q);
    let dry = ops::WriteOpts {
        dry_run: true,
        ..opts
    };
    let proposed = if verb == "update" {
        Proposed::Put(write_body(w.headers, w.body)?)
    } else {
        let (kind, yaml) = patch_kind(t, w.q, w.headers)?;
        Proposed::Patch(kind, parse_body(w.body, yaml)?)
    };
    let doc = match &proposed {
        Proposed::Put(v) | Proposed::Patch(_, v) => v,
    };
    // A write that names a resourceVersion must fail on a conflict; one that
    // does not is retried, as the real server retries it internally.
    let pinned = doc
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let idx = matching(hooks, &attributes(t, Operation::Update));
    for _ in 0..ADMISSION_ATTEMPTS {
        let (candidate, created) = match &proposed {
            Proposed::Put(v) => (
                shared
                    .store
                    .update(&t.def, &t.version, ns, name, v.clone(), status_only, dry)?,
                false,
            ),
            Proposed::Patch(kind, v) => shared.store.patch(
                &t.def,
                &t.version,
                ns,
                name,
                *kind,
                v.clone(),
                status_only,
                dry,
            )?,
        };
        if created {
            return admit_create(shared, w, candidate, user, hooks, resolve).await;
        }
        if idx.is_empty() {
            return plain_write(shared, verb, w);
        }
        let old = shared.store.get(&t.def, ns, name)?;
        let mut obj = present_value(&t.def, &t.version, candidate);
        if obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(old.rv.to_string().as_str())
        {
            // Another write landed between the dry run and the read.
            continue;
        }
        let old_v = present_value(&t.def, &t.version, old.value());
        let review = Review {
            group: &t.def.group,
            version: &t.version,
            kind: &t.def.kind,
            resource: &t.def.plural,
            subresource: t.subresource.as_deref(),
            namespace: ns,
            name,
            operation: Operation::Update,
            user,
            old_object: Some(&old_v),
            dry_run: opts.dry_run,
            options: options("UpdateOptions", w.q),
        };
        let labels = namespace_labels(shared, t, &obj);
        let mutating = selected(
            hooks,
            &idx,
            HookKind::Mutating,
            Some(&obj),
            Some(&old_v),
            labels.as_ref(),
        );
        if !mutating.is_empty() {
            let before = obj.clone();
            admission::mutate(&mutating, &review, &mut obj, resolve).await?;
            if obj != before {
                ops::normalize(&t.def, &t.version, ns, &mut obj)?;
                obj = match shared
                    .store
                    .update(&t.def, &t.version, ns, name, obj, status_only, dry)
                {
                    Ok(v) => present_value(&t.def, &t.version, v),
                    Err(ApiError::Conflict { .. }) if !pinned => continue,
                    Err(e) => return Err(e),
                };
            }
        }
        let validating = selected(
            hooks,
            &idx,
            HookKind::Validating,
            Some(&obj),
            Some(&old_v),
            labels.as_ref(),
        );
        admission::validate(&validating, &review, Some(&obj), resolve).await?;
        if opts.dry_run {
            return Ok(object_response(t, StatusCode::OK, obj, w.format, w.q));
        }
        match shared
            .store
            .update(&t.def, &t.version, ns, name, obj, status_only, opts)
        {
            Ok(v) => return Ok(object_response(t, StatusCode::OK, v, w.format, w.q)),
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        group: t.def.group.clone(),
        resource: t.def.plural.clone(),
        name: name.to_string(),
    })
}

async fn admit_delete(
    shared: &Shared,
    w: &Write<'_>,
    user: &UserInfo,
    hooks: &[Webhook],
    resolve: admission::Resolver<'_>,
) -> Result<Response, ApiError> {
    let t = w.t;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or_default();
    let old = present_value(
        &t.def,
        &t.version,
        shared.store.get(&t.def, ns, name)?.value(),
    );
    let mut opts = if w.body.is_empty() {
        json!({})
    } else {
        parse_body(w.body, false)?
    };
    opts["kind"] = json!("DeleteOptions");
    opts["apiVersion"] = json!("meta.k8s.io/v1");
    let idx = matching(hooks, &attributes(t, Operation::Delete));
    let review = Review {
        group: &t.def.group,
        version: &t.version,
        kind: &t.def.kind,
        resource: &t.def.plural,
        subresource: t.subresource.as_deref(),
        namespace: ns,
        name,
        operation: Operation::Delete,
        user,
        old_object: Some(&old),
        dry_run: delete_opts(w.q, w.body)?.dry_run,
        options: opts,
    };
    let labels = namespace_labels(shared, t, &old);
    // A deletion has no object to patch: mutating webhooks can only refuse,
    // and they are asked before the validating ones.
    for kind in [HookKind::Mutating, HookKind::Validating] {
        let hs = selected(hooks, &idx, kind, None, Some(&old), labels.as_ref());
        admission::validate(&hs, &review, None, resolve).await?;
    }
    delete(shared, t, w.q, w.body, w.format)
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
        ..Default::default()
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
    let (kind, yaml) = patch_kind(t, q, headers)?;
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

/// The patch flavour from the Content-Type, and whether its body is YAML.
fn patch_kind(t: &Target, q: &Query, headers: &HeaderMap) -> Result<(PatchKind, bool), ApiError> {
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
    Ok((kind, yaml))
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
