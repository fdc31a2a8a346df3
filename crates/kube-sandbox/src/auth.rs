//! Who is asking: bearer tokens the sandbox issued through the TokenRequest
//! API (`POST .../serviceaccounts/{name}/token`), and anonymous callers.
//!
//! A request without an `Authorization: Bearer` header is
//! `system:anonymous`, and the sandbox authorizes everything, so the admin
//! kubeconfig it writes carries no credentials at all. A bearer token the
//! sandbox does not know, or one that has expired, or one bound to a Pod that
//! is gone, is refused with 401 as the real server does.
//!
//! Tokens are JWT-shaped (`header.claims.signature`, base64url) so tools
//! that peek at the claims work, but nobody verifies the signature: it is
//! random bytes, and the sandbox's own table is the only source of truth.
//! Tokens are never logged; `Issued` holds no copy of the token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, header};
use rand::Rng as _;
use serde_json::{Value, json};

use super::error::{ApiError, FieldError};
use super::json::string_list;
use super::ops::Store;

pub const ANONYMOUS: &str = "system:anonymous";
/// The audience a token gets when the request names none, like a cluster
/// whose `--api-audiences` is the default.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer written into the claims.
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The real server's floor for `spec.expirationSeconds`.
pub const MIN_EXPIRATION: Duration = Duration::from_secs(600);
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);
/// `spec.expirationSeconds` above this is refused (the real server's limit).
const MAX_EXPIRATION_SECS: i64 = 1 << 32;

/// The authenticated caller, as AdmissionReview's `userInfo` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> UserInfo {
        UserInfo {
            username: ANONYMOUS.into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }

    /// The `authentication.k8s.io/v1` UserInfo object; empty fields are left
    /// out as the real server's encoder does.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.groups.is_empty() {
            v["groups"] = json!(self.groups);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// The Pod a token is bound to; the token dies with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What the sandbox remembers about one token it issued.
#[derive(Debug)]
pub struct Issued {
    pub user: UserInfo,
    pub expires: SystemTime,
    pub pod: Option<BoundPod>,
}

/// Every token the sandbox has issued and not yet forgotten.
#[derive(Default)]
pub struct Tokens {
    map: Mutex<HashMap<String, Arc<Issued>>>,
}

/// What `issue` hands back: the bearer token and when it stops working.
pub struct NewToken {
    pub token: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// RFC 3339 with whole seconds, as the API writes timestamps.
pub fn timestamp(t: SystemTime) -> String {
    let secs = i64::try_from(unix(t)).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The identity a ServiceAccount token authenticates as. `sa` is the stored
/// ServiceAccount; `pod` (with its `spec.nodeName`, if scheduled) the bound
/// Pod; `jti` the token's id.
pub fn service_account_user(
    sa: &Value,
    pod: Option<(&BoundPod, Option<&str>)>,
    jti: &str,
) -> UserInfo {
    let ns = sa
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = sa
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut extra = BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/credential-id".to_string(),
        vec![format!("JTI={jti}")],
    );
    if let Some((p, node)) = pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![p.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            vec![p.uid.clone()],
        );
        if let Some(node) = node.filter(|n| !n.is_empty()) {
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                vec![node.to_string()],
            );
        }
    }
    UserInfo {
        username: format!("system:serviceaccount:{ns}:{name}"),
        uid: sa
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra,
    }
}

impl Tokens {
    /// Mints a token for the stored ServiceAccount `sa`, valid for `ttl`
    /// from `now`, for `audiences`, optionally bound to a Pod.
    pub fn issue(
        &self,
        sa: &Value,
        audiences: &[String],
        ttl: Duration,
        pod: Option<(BoundPod, Option<String>)>,
        now: SystemTime,
    ) -> NewToken {
        let mut rng = rand::rng();
        let jti = {
            let b: [u8; 16] = rng.random();
            hex::encode(b)
        };
        let user =
            service_account_user(sa, pod.as_ref().map(|(p, node)| (p, node.as_deref())), &jti);
        let expires = now + ttl;
        let meta = |k: &str| {
            sa.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut k8s = json!({
            "namespace": meta("namespace"),
            "serviceaccount": {"name": meta("name"), "uid": meta("uid")},
        });
        if let Some((p, _)) = &pod {
            k8s["pod"] = json!({"name": p.name, "uid": p.uid});
        }
        let claims = json!({
            "aud": audiences,
            "exp": unix(expires),
            "iat": unix(now),
            "nbf": unix(now),
            "iss": ISSUER,
            "jti": jti,
            "sub": user.username,
            "kubernetes.io": k8s,
        });
        let signature: [u8; 32] = rng.random();
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"cert-csi-sandbox"}"#),
            b64(&serde_json::to_vec(&claims).expect("JSON values serialize")),
            b64(&signature)
        );
        let issued = Arc::new(Issued {
            user,
            expires,
            pod: pod.map(|(p, _)| p),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Forget expired tokens so the table stays the size of the live set.
        map.retain(|_, i| i.expires > now);
        map.insert(token.clone(), issued);
        NewToken { token, expires }
    }

    /// The record for `token`, if it was issued here and has not expired.
    pub fn lookup(&self, token: &str, now: SystemTime) -> Option<Arc<Issued>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token).filter(|i| i.expires > now).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// The bearer token in the request, if any. An empty token is no token, as
/// on the real server.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Attributes a request to a user, or refuses it with 401.
pub fn authenticate(
    headers: &HeaderMap,
    tokens: &Tokens,
    store: &Store,
) -> Result<UserInfo, ApiError> {
    let Some(token) = bearer(headers) else {
        return Ok(UserInfo::anonymous());
    };
    let issued = tokens
        .lookup(token, SystemTime::now())
        .ok_or(ApiError::Unauthorized)?;
    if let Some(p) = &issued.pod {
        // A bound token stops working when its Pod is deleted (or replaced
        // by a new Pod of the same name).
        let def = store
            .lookup("", "v1", "pods")
            .expect("pods are a built-in resource");
        let alive = store
            .get(&def, Some(&p.namespace), &p.name)
            .ok()
            .is_some_and(|o| {
                let v = o.value();
                v.pointer("/metadata/uid").and_then(Value::as_str) == Some(p.uid.as_str())
                    && v.pointer("/metadata/deletionTimestamp").is_none()
            });
        if !alive {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(issued.user.clone())
}

fn token_request_invalid(name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        group: "authentication.k8s.io".into(),
        kind: "TokenRequest".into(),
        name: name.to_string(),
        causes,
    }
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: checks the
/// TokenRequest, mints the token and answers the TokenRequest with
/// `status.token` and `status.expirationTimestamp`.
pub fn token_request(
    store: &Store,
    tokens: &Tokens,
    ns: &str,
    sa_name: &str,
    body: &Value,
    now: SystemTime,
) -> Result<Value, ApiError> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "TokenRequest"
    {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the expected kind (TokenRequest)"
        )));
    }
    let sa_def = store
        .lookup("", "v1", "serviceaccounts")
        .expect("serviceaccounts are a built-in resource");
    let sa = store.get(&sa_def, Some(ns), sa_name)?.value();
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let mut causes = Vec::new();
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => match v.as_i64() {
            Some(s) if s < MIN_EXPIRATION.as_secs() as i64 => {
                causes.push(FieldError::invalid(
                    "spec.expirationSeconds",
                    s.to_string(),
                    "may not specify a duration less than 10 minutes",
                ));
                DEFAULT_EXPIRATION
            }
            Some(s) if s > MAX_EXPIRATION_SECS => {
                causes.push(FieldError::invalid(
                    "spec.expirationSeconds",
                    s.to_string(),
                    "may not specify a duration larger than 2^32 seconds",
                ));
                DEFAULT_EXPIRATION
            }
            Some(s) => Duration::from_secs(s as u64),
            None => {
                causes.push(FieldError::invalid(
                    "spec.expirationSeconds",
                    v.to_string(),
                    "must be an integer number of seconds",
                ));
                DEFAULT_EXPIRATION
            }
        },
    };
    let mut audiences = string_list(spec.get("audiences"));
    if audiences.is_empty() {
        audiences.push(DEFAULT_AUDIENCE.into());
    }
    let bound_ref = spec.get("boundObjectRef").filter(|v| !v.is_null());
    if let Some(r) = bound_ref {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "Pod" {
            causes.push(FieldError::unsupported(
                "spec.boundObjectRef.kind",
                kind,
                &["Pod".to_string()],
            ));
        }
        match r.get("apiVersion").and_then(Value::as_str) {
            None | Some("v1") => {}
            Some(other) => causes.push(FieldError::invalid(
                "spec.boundObjectRef.apiVersion",
                other,
                "must be v1 for a Pod",
            )),
        }
        if r.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(FieldError::required(
                "spec.boundObjectRef.name",
                "name the Pod the token is bound to",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(token_request_invalid(sa_name, causes));
    }
    let pod = match bound_ref {
        None => None,
        Some(r) => {
            let pod_name = r["name"].as_str().unwrap_or_default();
            let pod_def = store
                .lookup("", "v1", "pods")
                .expect("pods are a built-in resource");
            let pod = store.get(&pod_def, Some(ns), pod_name)?.value();
            let uid = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(want) = r
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::PreconditionFailed {
                    group: String::new(),
                    resource: "Pod".into(),
                    name: pod_name.to_string(),
                    message: format!(
                        "Operation cannot be fulfilled on Pod {pod_name:?}: the UID in the bound object reference ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                    ),
                });
            }
            let pod_sa = pod
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            if pod_sa != sa_name {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name ({pod_sa:?})"
                )));
            }
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(str::to_string);
            Some((
                BoundPod {
                    namespace: ns.to_string(),
                    name: pod_name.to_string(),
                    uid,
                },
                node,
            ))
        }
    };
    let bound_json = pod
        .as_ref()
        .map(|(p, _)| json!({"kind": "Pod", "apiVersion": "v1", "name": p.name, "uid": p.uid}));
    let issued = tokens.issue(&sa, &audiences, expiration, pod, now);
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration.as_secs()});
    if let Some(b) = bound_json {
        spec_out["boundObjectRef"] = b;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": timestamp(now)},
        "spec": spec_out,
        "status": {"token": issued.token, "expirationTimestamp": timestamp(issued.expires)},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Value {
        json!({"metadata": {"name": "billing", "namespace": "shop", "uid": "sa-uid"}})
    }

    #[test]
    fn service_account_identity_has_the_real_groups_and_extra() {
        let pod = BoundPod {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "pod-uid".into(),
        };
        let u = service_account_user(&sa(), Some((&pod, Some("node-a"))), "j1");
        assert_eq!(u.username, "system:serviceaccount:shop:billing");
        assert_eq!(u.uid, "sa-uid");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:shop",
                "system:authenticated"
            ]
        );
        assert_eq!(u.extra["authentication.kubernetes.io/pod-name"], ["web-1"]);
        assert_eq!(u.extra["authentication.kubernetes.io/pod-uid"], ["pod-uid"]);
        assert_eq!(
            u.extra["authentication.kubernetes.io/node-name"],
            ["node-a"]
        );
        assert_eq!(
            u.extra["authentication.kubernetes.io/credential-id"],
            ["JTI=j1"]
        );
        let unbound = service_account_user(&sa(), None, "j2");
        assert!(
            !unbound
                .extra
                .contains_key("authentication.kubernetes.io/pod-name")
        );
    }

    #[test]
    fn tokens_expire_and_unknown_tokens_are_refused() {
        let tokens = Tokens::default();
        let t0 = SystemTime::now();
        let t = tokens.issue(&sa(), &["a".into()], Duration::from_secs(60), None, t0);
        assert_eq!(t.token.split('.').count(), 3, "JWT-shaped");
        assert!(
            tokens
                .lookup(&t.token, t0 + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            tokens
                .lookup(&t.token, t0 + Duration::from_secs(60))
                .is_none()
        );
        assert!(tokens.lookup("nope", t0).is_none());
        let other = tokens.issue(&sa(), &["a".into()], Duration::from_secs(60), None, t0);
        assert_ne!(t.token, other.token);
        // Issuing after the first expired drops it from the table.
        tokens.issue(
            &sa(),
            &["a".into()],
            Duration::from_secs(600),
            None,
            t0 + Duration::from_secs(120),
        );
        assert_eq!(tokens.map.lock().unwrap().len(), 1);
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn claims_name_the_service_account_and_audience() {
        let tokens = Tokens::default();
        let t = tokens.issue(
            &sa(),
            &["vault".into()],
            Duration::from_secs(600),
            None,
            SystemTime::now(),
        );
        let claims = t.token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:shop:billing");
        assert_eq!(claims["aud"], json!(["vault"]));
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "sa-uid");
    }

    #[test]
    fn bearer_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn token_request_checks_the_spec_and_the_service_account() {
        let store = Store::new(16);
        let tokens = Tokens::default();
        let now = SystemTime::now();
        let missing =
            token_request(&store, &tokens, "default", "ghost", &json!({}), now).unwrap_err();
        assert_eq!(missing.code(), 404);
        assert_eq!(missing.to_string(), r#"serviceaccounts "ghost" not found"#);
        let short = token_request(
            &store,
            &tokens,
            "default",
            "default",
            &json!({"spec": {"expirationSeconds": 60}}),
            now,
        )
        .unwrap_err();
        assert_eq!(short.code(), 422);
        assert!(
            short.to_string().contains("spec.expirationSeconds"),
            "{short}"
        );
        let ok = token_request(
            &store,
            &tokens,
            "default",
            "default",
            &json!({"spec": {"audiences": ["x"]}}),
            now,
        )
        .unwrap();
        assert_eq!(ok["spec"]["expirationSeconds"], 3600);
        let token = ok["status"]["token"].as_str().unwrap();
        let issued = tokens.lookup(token, now).unwrap();
        assert_eq!(
            issued.user.username,
            "system:serviceaccount:default:default"
        );
        assert_eq!(
            ok["status"]["expirationTimestamp"],
            json!(timestamp(now + Duration::from_secs(3600)))
        );
        let no_pod = token_request(
            &store,
            &tokens,
            "default",
            "default",
            &json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}}),
            now,
        )
        .unwrap_err();
        assert_eq!(no_pod.to_string(), r#"pods "p" not found"#);
        let wrong_kind = token_request(
            &store,
            &tokens,
            "default",
            "default",
            &json!({"spec": {"boundObjectRef": {"kind": "Node", "name": "n"}}}),
            now,
        )
        .unwrap_err();
        assert!(
            wrong_kind.to_string().contains("spec.boundObjectRef.kind"),
            "{wrong_kind}"
        );
    }
}
