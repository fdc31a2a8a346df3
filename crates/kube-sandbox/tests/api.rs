//! The real kube::Client against an in-process sandbox on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use kube_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

async fn start(window: usize) -> Sandbox {
    Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: None,
        crds: Vec::new(),
        watch_window: window,
    })
    .await
    .expect("sandbox starts")
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

const WIDGET_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.example.com"},
  "spec": {
    "group": "example.com", "scope": "Namespaced",
    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
    "versions": [{
      "name": "v1", "served": true, "storage": true,
      "subresources": {"status": {}},
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
          "size": {"type": "integer"},
          "color": {"type": "string"},
          "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
      }}}
    }]
  }
}"#;

async fn widgets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_str(WIDGET_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes_in_order() {
    let sb = start(1000).await;
    let client = sb.client();
    namespace(&client, "w").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "w");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(api.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if tx.send(ev.expect("watch stream works")).is_err() {
                return;
            }
        }
    });
    // Wait for the initial list to finish before writing.
    loop {
        if let watcher::Event::InitDone = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            break;
        }
    }
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(o) => seen.push(format!("apply {}", o.data.unwrap()["k"])),
            watcher::Event::Delete(o) => seen.push(format!("delete {}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply v", "apply changed", "delete a"]);
    task.abort();
    sb.shutdown().await;
}

#[tokio::test]
async fn stale_update_gets_409_and_missing_namespace_404() {
    let sb = start(100).await;
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let mut first = created.clone();
    first.data = Some([("k".to_string(), "1".to_string())].into());
    api.replace("c", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "2".to_string())].into());
    let s = api_error(
        api.replace("c", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 409);
    assert_eq!(s.reason, "Conflict");
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
    let again = api_error(
        api.create(&PostParams::default(), &cm("c", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    let missing: Api<ConfigMap> = Api::namespaced(sb.client(), "nowhere");
    let s = api_error(
        missing
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 404);
    assert_eq!(s.message, r#"namespaces "nowhere" not found"#);
    let s = api_error(api.get("absent").await.unwrap_err());
    assert_eq!(
        (s.code, s.message.as_str()),
        (404, r#"configmaps "absent" not found"#)
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn status_and_main_writes_are_isolated_and_generation_counts_spec() {
    let sb = start(100).await;
    let client = sb.client();
    let api = widgets(&client, "default").await;
    let mut w = widget("w1", json!({"size": 1}));
    w.data["status"] = json!({"phase": "Ignored"});
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create: {:?}",
        created.data
    );
    assert_eq!(created.metadata.generation, Some(1));

    let st = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["phase"], "Ready");
    assert_eq!(
        st.data["spec"]["size"], 1,
        "a status write leaves spec alone"
    );
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    let main = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Hacked"}, "spec": {"size": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.data["status"]["phase"], "Ready",
        "a main write leaves status alone"
    );
    assert_eq!(main.data["spec"]["size"], 2);
    assert_eq!(main.metadata.generation, Some(2));

    let labelled = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata changes do not bump generation"
    );
    assert_ne!(
        labelled.metadata.resource_version,
        main.metadata.resource_version
    );

    // A CR update without resourceVersion is refused, as on a real server.
    let mut unconditional = labelled.clone();
    unconditional.metadata.resource_version = None;
    let s = api_error(
        api.replace("w1", &PostParams::default(), &unconditional)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    sb.shutdown().await;
}

#[tokio::test]
async fn crd_schema_prunes_undeclared_fields_and_strict_rejects_them() {
    let sb = start(100).await;
    let api = widgets(&sb.client(), "default").await;
    let w = widget(
        "p",
        json!({"size": 3, "bogus": true, "extra": {"kept": {"deep": 1}}}),
    );
    let mut raw = serde_json::to_value(&w).unwrap();
    raw["topLevelJunk"] = json!(1);
    let w: DynamicObject = serde_json::from_value(raw).unwrap();
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"size": 3, "extra": {"kept": {"deep": 1}}})
    );
    assert!(created.data.get("topLevelJunk").is_none());
    let fetched = api.get("p").await.unwrap();
    assert_eq!(fetched.data["spec"], created.data["spec"]);
    // Wrong types are rejected with 422.
    let s = api_error(
        api.create(
            &PostParams::default(),
            &widget("bad", json!({"size": "big"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(s.message.contains("spec.size"), "{}", s.message);
    // fieldValidation=Strict (what kubectl sends) turns pruning into an error.
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..Default::default()
    };
    let s = api_error(
        api.patch("p", &strict, &Patch::Merge(json!({"spec": {"typo": 1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400);
    assert!(
        s.message.contains(r#"unknown field "spec.typo""#),
        "{}",
        s.message
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn generate_name_and_invalid_names_and_labels() {
    let sb = start(100).await;
    let api: Api<Secret> = Api::namespaced(sb.client(), "default");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"generateName": "tok-"}, "stringData": {"a": "b"}}),
    )
    .unwrap();
    let a = api.create(&PostParams::default(), &s).await.unwrap();
    let b = api.create(&PostParams::default(), &s).await.unwrap();
    let (na, nb) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(na.starts_with("tok-") && na.len() == 9, "{na}");
    assert_ne!(na, nb);
    assert_eq!(a.data.unwrap()["a"].0, b"b");

    for body in [
        json!({"metadata": {"name": "Upper_Case"}}),
        json!({"metadata": {"name": "ok", "labels": {"bad key!": "v"}}}),
        json!({"metadata": {"name": "ok", "labels": {"k": "-bad-value"}}}),
        json!({"metadata": {"name": "ok", "labels": {"k": "x".repeat(64)}}}),
        json!({"metadata": {}}),
    ] {
        let sec: Secret = serde_json::from_value(body.clone()).unwrap();
        let e = api_error(api.create(&PostParams::default(), &sec).await.unwrap_err());
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "{body}: {}",
            e.message
        );
    }
    let ns: Api<Namespace> = Api::all(sb.client());
    let dotted: Namespace = serde_json::from_value(json!({"metadata": {"name": "a.b"}})).unwrap();
    assert_eq!(
        api_error(
            ns.create(&PostParams::default(), &dotted)
                .await
                .unwrap_err()
        )
        .code,
        422
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors_filter() {
    let sb = start(1000).await;
    let client = sb.client();
    namespace(&client, "sel").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");
    for (name, labels) in [
        ("web-1", vec![("app", "web"), ("tier", "front")]),
        ("web-2", vec![("app", "web"), ("tier", "back")]),
        ("db-1", vec![("app", "db")]),
        ("bare", vec![]),
    ] {
        api.create(&PostParams::default(), &cm(name, &labels))
            .await
            .unwrap();
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        let mut n: Vec<String> = list
            .items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        n.sort();
        n
    };
    let cases: &[(&str, &[&str])] = &[
        ("app=web", &["web-1", "web-2"]),
        ("app==db", &["db-1"]),
        ("app!=web", &["bare", "db-1"]),
        ("tier in (front,back)", &["web-1", "web-2"]),
        ("app notin (web)", &["bare", "db-1"]),
        ("tier", &["web-1", "web-2"]),
        ("!app", &["bare"]),
        ("app=web,tier=back", &["web-2"]),
    ];
    for (sel, want) in cases {
        let got = names(api.list(&ListParams::default().labels(sel)).await.unwrap());
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "selector {sel}");
    }
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=db-1"))
                .await
                .unwrap()
        ),
        vec!["db-1"]
    );
    // Across namespaces, by namespace field.
    let all: Api<ConfigMap> = Api::all(client.clone());
    let in_sel = names(
        all.list(&ListParams::default().fields("metadata.namespace=sel"))
            .await
            .unwrap(),
    );
    assert_eq!(in_sel, vec!["bare", "db-1", "web-1", "web-2"]);
    let not_sel = all
        .list(&ListParams::default().fields("metadata.namespace!=sel"))
        .await
        .unwrap();
    assert!(
        not_sel
            .items
            .iter()
            .all(|c| c.metadata.namespace.as_deref() != Some("sel"))
    );
    let bad = api_error(
        api.list(&ListParams::default().fields("data.k=v"))
            .await
            .unwrap_err(),
    );
    assert_eq!(bad.code, 400);
    let bad = api_error(
        api.list(&ListParams::default().labels("a in b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(bad.code, 400);
    sb.shutdown().await;
}

#[tokio::test]
async fn limit_and_continue_page_through_everything() {
    let sb = start(1000).await;
    let client = sb.client();
    namespace(&client, "pages").await;
    let api: Api<ConfigMap> = Api::namespaced(client, "pages");
    for i in 0..25 {
        api.create(&PostParams::default(), &cm(&format!("cm-{i:02}"), &[]))
            .await
            .unwrap();
    }
    let mut token: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|c| c.metadata.name.unwrap()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(seen, want);
    sb.shutdown().await;
}

#[tokio::test]
async fn owner_deletion_collects_dependents_and_finalizers_delay_deletion() {
    let sb = start(1000).await;
    let client = sb.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    let dep: Secret =
        serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}}))
        .unwrap();
    secrets.create(&PostParams::default(), &dep).await.unwrap();
    let unrelated: Secret =
        serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap();
    secrets
        .create(&PostParams::default(), &unrelated)
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(
        api_error(secrets.get("dep").await.unwrap_err()).code,
        404,
        "the dependent is collected"
    );
    secrets.get("unrelated").await.unwrap();

    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let terminating = cms.get("held").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(0));
    let s = api_error(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422, "no new finalizers on a terminating object");
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}]))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        api_error(cms.get("held").await.unwrap_err()).code,
        404,
        "gone once the last finalizer is removed"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn expired_resource_version_gets_410_and_the_watcher_relists() {
    let sb = start(5).await;
    let client = sb.client();
    namespace(&client, "expire").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "expire");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let old_rv = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("churn-{i}"), &[]))
            .await
            .unwrap();
    }
    // A raw watch from the old version gets the real server's ERROR event.
    let mut raw = secrets
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await.unwrap() {
        Some(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // The watcher: each watch ends after 1 s and resumes from its last
    // version, which churn in another resource pushes out of the window.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(secrets.clone(), watcher::Config::default().timeout(1));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let _ = tx.send(ev.map_err(|e| e.to_string()));
        }
    });
    let mut inits = 0;
    let wait_init = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<
        Result<watcher::Event<Secret>, String>,
    >| loop {
        if let Ok(watcher::Event::InitDone) =
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap()
        {
            return;
        }
    };
    wait_init(&mut rx).await;
    inits += 1;
    for i in 10..20 {
        cms.create(&PostParams::default(), &cm(&format!("churn-{i}"), &[]))
            .await
            .unwrap();
    }
    // The next resume gets 410; the watcher lists again.
    wait_init(&mut rx).await;
    inits += 1;
    let fresh: Secret =
        serde_json::from_value(json!({"metadata": {"name": "after-expiry"}})).unwrap();
    secrets
        .create(&PostParams::default(), &fresh)
        .await
        .unwrap();
    let seen = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                break s.metadata.name.unwrap();
            }
            _ => continue,
        }
    };
    assert_eq!(seen, "after-expiry");
    assert_eq!(inits, 2);
    let lists = sb
        .request_log()
        .iter()
        .filter(|r| {
            r.verb == "list" && r.resource == "secrets" && r.namespace.as_deref() == Some("expire")
        })
        .count();
    assert!(
        lists >= 3,
        "the initial list, the raw-watch setup list and a relist; saw {lists}"
    );
    task.abort();
    sb.shutdown().await;
}

#[tokio::test]
async fn request_log_records_verbs_locally_and_over_http() {
    let sb = start(100).await;
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    api.create(&PostParams::default(), &cm("logged", &[]))
        .await
        .unwrap();
    api.get("logged").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.delete("logged", &DeleteParams::default())
        .await
        .unwrap();
    let log = sb.request_log();
    let got: Vec<(String, String, Option<String>, Option<String>)> = log
        .iter()
        .filter(|r| r.resource == "configmaps")
        .map(|r| {
            (
                r.verb.clone(),
                r.resource.clone(),
                r.namespace.clone(),
                r.name.clone(),
            )
        })
        .collect();
    let d = Some("default".to_string());
    let n = Some("logged".to_string());
    assert_eq!(
        got,
        vec![
            ("create".into(), "configmaps".into(), d.clone(), None),
            ("get".into(), "configmaps".into(), d.clone(), n.clone()),
            ("list".into(), "configmaps".into(), d.clone(), None),
            ("delete".into(), "configmaps".into(), d.clone(), n.clone()),
        ]
    );
    assert!(log.iter().all(|r| r.user == "system:anonymous"));
    // The same log over HTTP, for sandboxes in other processes.
    let url = format!("{}/sandbox/requests", sb.url());
    let body = http_get(&url).await;
    let records: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let parsed: Vec<_> = records
        .iter()
        .filter_map(kube_sandbox::RequestRecord::from_json)
        .collect();
    assert_eq!(parsed, log);
    sb.shutdown().await;
}

/// A plain HTTP/1.1 GET over a TCP socket.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url::Url::parse(url).unwrap();
    let mut s = tokio::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap()))
        .await
        .unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        u.path()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[tokio::test]
async fn selector_watches_see_objects_leave_and_collections_delete_by_label() {
    let sb = start(1000).await;
    let client = sb.client();
    namespace(&client, "coll").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "coll");
    let mut events = api
        .watch(&WatchParams::default().labels("app=web"), "0")
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("x", &[("app", "web")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("y", &[("app", "db")]))
        .await
        .unwrap();
    // x stops matching: a selector watch reports that as DELETED.
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    // y starts matching: ADDED.
    api.patch(
        "y",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["ADDED x", "DELETED x", "ADDED y"]);

    // Server-side apply creates, then merges.
    let ssa = PatchParams::apply("bench-test").force();
    let applied = api
        .patch("z", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "z", "labels": {"app": "web"}}, "data": {"a": "1"}})))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");
    let applied = api.patch("z", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "z"}, "data": {"b": "2"}}))).await.unwrap();
    assert_eq!(applied.data.unwrap()["b"], "2");

    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=web"),
        )
        .await
        .unwrap();
    let names: Vec<String> = deleted
        .left()
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, vec!["y", "z"]);
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(left, vec!["x"]);
    sb.shutdown().await;
}
