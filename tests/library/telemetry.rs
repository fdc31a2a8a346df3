//! Telemetry end to end: `/metrics` scraped over real HTTP and parsed,
//! `/healthz` and `/readyz`, Events written through the real `kube::Client`
//! into the in-process sandbox, and JSON logs of the real binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cert_csi::csi::identity::Readiness;
use cert_csi::shutdown::CancellationToken;
use cert_csi::telemetry::events::{
    EventError, EventLimits, EventRecorder, EventType, NODE_REPORTER, Recorded, pod_reference,
};
use cert_csi::telemetry::metrics::{
    ApprovalOutcome, CertificateRef, CertificateTimes, ControllerMetrics, IssuanceKind,
    IssueErrorReason, NodeMetrics, ReadyCondition, RequestKey, SignerIssuerKind, SignerResult,
    SyncController, VolumeRef,
};
use cert_csi::telemetry::{Registry, serve};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use kube_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- HTTP

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// A plain HTTP/1.1 GET with `Connection: close`, so the test depends on no
/// HTTP client crate and sees exactly what a scraper sees.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    // axum answers a fixed-length body here; a chunked one would need
    // decoding, so fail loudly if that ever changes.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Reply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

// ------------------------------------------------- OpenMetrics text parser

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of the OpenMetrics text format: `name{k="v",...} value`.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("sample without value: {line}"),
        };
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(body) => parse_labels(body, line),
            None => (BTreeMap::new(), rest),
        };
        let value = rest.split_whitespace().next().expect("value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the brace.
fn parse_labels<'a>(body: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut labels = BTreeMap::new();
    let mut chars = body.char_indices().peekable();
    loop {
        match chars.peek() {
            Some((i, '}')) => return (labels, &body[i + 1..]),
            Some((_, ',')) => {
                chars.next();
            }
            Some(_) => {}
            None => panic!("unterminated labels in {line}"),
        }
        let key: String = chars
            .by_ref()
            .take_while(|(_, c)| *c != '=')
            .map(|(_, c)| c)
            .collect();
        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('\\') => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("dangling escape in {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated value in {line}"),
            }
        }
        labels.insert(key, value);
    }
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample matching; panics if none or several match.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, labels);
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0].value
}

#[test]
fn the_parser_reads_escapes_and_bare_samples() {
    let samples = parse_samples(
        "# TYPE a counter\na_total 3\nb{x=\"1\",y=\"q\\\"z\"} 2.5\nc_bucket{le=\"+Inf\"} 4\n# EOF\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(value(&samples, "a_total", &[]), 3.0);
    assert_eq!(value(&samples, "b", &[("x", "1"), ("y", "q\"z")]), 2.5);
    assert_eq!(value(&samples, "c_bucket", &[("le", "+Inf")]), 4.0);
}

// ------------------------------------------------------------- metrics

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(
        registry: Registry,
        readiness: impl cert_csi::telemetry::ReadinessCheck,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(registry),
            readiness,
            shutdown.clone(),
        ));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

fn ts(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(seconds).unwrap()
}

#[tokio::test]
async fn scrape_shows_node_and_controller_series_with_their_values() {
    let mut registry = Registry::default();
    let node = NodeMetrics::register(&mut registry);
    let controller = ControllerMetrics::register(&mut registry);

    // Three requests: one issued, one deleted, one still pending.
    let issued = RequestKey::new("team-a", "web-0-aaaa");
    let deleted = RequestKey::new("team-a", "web-1-bbbb");
    let pending = RequestKey::new("team-b", "api-0-cccc");
    for r in [&issued, &deleted, &pending] {
        node.request_created(r);
    }
    node.request_condition(&issued, ReadyCondition::True);
    node.request_condition(&deleted, ReadyCondition::False);
    node.request_deleted(&deleted);
    node.request_failed(IssueErrorReason::Denied);
    node.request_failed(IssueErrorReason::Denied);
    node.request_failed(IssueErrorReason::Timeout);
    node.renewal_failed(IssueErrorReason::Api);
    node.observe_issuance(IssuanceKind::First, Duration::from_millis(150));
    node.observe_issuance(IssuanceKind::First, Duration::from_millis(150));
    node.observe_issuance(IssuanceKind::Renewal, Duration::from_secs(3));
    let gone = VolumeRef {
        volume_id: "csi-1111111111111111111111111111111111111111111111111111111111111111",
        pod_namespace: "team-a",
        pod_name: "web-1",
    };
    let kept = VolumeRef {
        volume_id: "csi-2222222222222222222222222222222222222222222222222222222222222222",
        pod_namespace: "team-a",
        pod_name: "web-0",
    };
    node.volume_published(&gone, ts(2_000_000_000), ts(1_900_000_000));
    node.volume_published(&kept, ts(2_000_000_500), ts(1_950_000_000));
    node.volume_unpublished(gone.volume_id);
    node.set_queue_depth(7);

    let ready_cert = CertificateRef {
        namespace: "team-a",
        name: "frontend",
        issuer_name: "ca",
        issuer_kind: "ClusterIssuer",
        issuer_group: "cert-manager.io",
    };
    let removed_cert = CertificateRef {
        name: "old",
        ..ready_cert.clone()
    };
    controller.certificate_observed(
        &ready_cert,
        CertificateTimes {
            not_before: Some(ts(1_700_000_000)),
            not_after: Some(ts(1_800_000_000)),
            renewal: Some(ts(1_766_666_667)),
        },
        ReadyCondition::True,
    );
    controller.certificate_observed(
        &removed_cert,
        CertificateTimes {
            not_after: Some(ts(1_700_000_000)),
            ..Default::default()
        },
        ReadyCondition::False,
    );
    controller.sync_call(SyncController::Certificates);
    controller.sync_call(SyncController::Certificates);
    controller.sync_error(SyncController::Certificates);
    controller.certificate_removed("team-a", "old");
    controller.signer_handled(SignerIssuerKind::Issuer, SignerResult::Issued);
    controller.signer_handled(SignerIssuerKind::Issuer, SignerResult::Issued);
    controller.signer_handled(SignerIssuerKind::ClusterIssuer, SignerResult::Failed);
    controller.approver_decided(ApprovalOutcome::Denied);

    let server = Server::start(registry, Readiness::default()).await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        reply.content_type
    );
    assert!(
        reply.body.trim_end().ends_with("# EOF"),
        "OpenMetrics needs the EOF marker"
    );
    let s = parse_samples(&reply.body);

    // Node: cert-manager's CSI names.
    assert_eq!(value(&s, "certmanager_csi_issue_requests_total", &[]), 3.0);
    let errors = |reason| {
        value(
            &s,
            "certmanager_csi_issue_errors_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(errors("denied"), 2.0);
    assert_eq!(errors("timeout"), 1.0);
    assert_eq!(errors("api"), 1.0, "a failed renewal is an issue error too");
    assert_eq!(errors("failed"), 0.0);
    let ready = "certmanager_csi_certificate_request_ready_status";
    let status = |r: &RequestKey, c| {
        value(
            &s,
            ready,
            &[
                ("name", &r.name),
                ("namespace", &r.namespace),
                ("condition", c),
            ],
        )
    };
    assert_eq!(status(&issued, "True"), 1.0);
    assert_eq!(status(&issued, "False"), 0.0);
    assert_eq!(status(&issued, "Unknown"), 0.0);
    assert_eq!(status(&pending, "Unknown"), 1.0);
    assert!(
        find(&s, ready, &[("name", &deleted.name)]).is_empty(),
        "a deleted request keeps no series"
    );
    assert_eq!(find(&s, ready, &[]).len(), 6);
    assert_eq!(
        value(&s, "certmanager_csi_managed_certificate_request_count", &[]),
        2.0
    );
    assert_eq!(value(&s, "certmanager_csi_managed_volume_count", &[]), 1.0);

    let expiry = "certmanager_csi_certificate_request_expiration_timestamp_seconds";
    let renewal = "certmanager_csi_certificate_request_renewal_timestamp_seconds";
    let kept_hash = cert_csi::store::id_hash(kept.volume_id);
    let kept_labels = [
        ("volume_id_hash", kept_hash.as_str()),
        ("pod_namespace", "team-a"),
        ("pod_name", "web-0"),
    ];
    assert_eq!(value(&s, expiry, &kept_labels), 2_000_000_500.0);
    assert_eq!(value(&s, renewal, &kept_labels), 1_950_000_000.0);
    assert_eq!(
        find(&s, expiry, &[]).len(),
        1,
        "the unpublished volume's series is gone"
    );
    assert_eq!(find(&s, renewal, &[]).len(), 1);
    assert!(
        !reply.body.contains(kept.volume_id),
        "raw volume ids never become labels"
    );

    // Node: our additions.
    let hist = "cert_csi_issuance_duration_seconds";
    assert_eq!(
        value(&s, &format!("{hist}_count"), &[("kind", "first")]),
        2.0
    );
    assert!((value(&s, &format!("{hist}_sum"), &[("kind", "first")]) - 0.3).abs() < 1e-9);
    let bucket = |kind, le| value(&s, &format!("{hist}_bucket"), &[("kind", kind), ("le", le)]);
    assert_eq!(bucket("first", "0.1"), 0.0);
    assert_eq!(bucket("first", "0.2"), 2.0);
    assert_eq!(bucket("renewal", "1.6"), 0.0);
    assert_eq!(bucket("renewal", "3.2"), 1.0);
    assert_eq!(bucket("renewal", "+Inf"), 1.0);
    assert_eq!(value(&s, "cert_csi_issuance_queue_depth", &[]), 7.0);
    assert_eq!(value(&s, "cert_csi_renewal_failures_total", &[]), 1.0);

    // Controller: cert-manager's per-Certificate names and labels.
    let cert_labels = [
        ("name", "frontend"),
        ("namespace", "team-a"),
        ("issuer_name", "ca"),
        ("issuer_kind", "ClusterIssuer"),
        ("issuer_group", "cert-manager.io"),
    ];
    assert_eq!(
        value(
            &s,
            "certmanager_certificate_expiration_timestamp_seconds",
            &cert_labels
        ),
        1_800_000_000.0
    );
    for (name, at) in [
        (
            "certmanager_certificate_not_after_timestamp_seconds",
            1_800_000_000.0,
        ),
        (
            "certmanager_certificate_not_before_timestamp_seconds",
            1_700_000_000.0,
        ),
        (
            "certmanager_certificate_renewal_timestamp_seconds",
            1_766_666_667.0,
        ),
    ] {
        assert_eq!(value(&s, name, &cert_labels), at, "{name}");
        assert!(
            find(&s, name, &[("name", "old")]).is_empty(),
            "a removed Certificate keeps no {name}"
        );
    }
    // cert-manager's sample names, without `_total`.
    let sync = |name, controller| value(&s, name, &[("controller", controller)]);
    assert_eq!(
        sync("certmanager_controller_sync_call_count", "certificates"),
        2.0
    );
    assert_eq!(
        sync("certmanager_controller_sync_error_count", "certificates"),
        1.0
    );
    assert_eq!(
        sync("certmanager_controller_sync_call_count", "issuers"),
        0.0
    );
    let mut true_labels = cert_labels.to_vec();
    true_labels.push(("condition", "True"));
    assert_eq!(
        value(&s, "certmanager_certificate_ready_status", &true_labels),
        1.0
    );
    assert_eq!(
        find(&s, "certmanager_certificate_ready_status", &[]).len(),
        3
    );
    assert!(
        find(
            &s,
            "certmanager_certificate_expiration_timestamp_seconds",
            &[("name", "old")]
        )
        .is_empty(),
        "a removed Certificate keeps no series"
    );
    let signer = |kind, result| {
        value(
            &s,
            "cert_csi_signer_requests_total",
            &[("issuer_kind", kind), ("result", result)],
        )
    };
    assert_eq!(signer("Issuer", "issued"), 2.0);
    assert_eq!(signer("ClusterIssuer", "failed"), 1.0);
    assert_eq!(signer("ClusterIssuer", "issuer_not_ready"), 0.0);
    assert_eq!(
        value(
            &s,
            "cert_csi_approver_decisions_total",
            &[("decision", "denied")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "cert_csi_approver_decisions_total",
            &[("decision", "approved")]
        ),
        0.0
    );

    // A later scrape sees later changes: the series are live, not a snapshot.
    node.volume_unpublished(kept.volume_id);
    let s = parse_samples(&get(server.addr, "/metrics").await.body);
    assert!(find(&s, expiry, &[]).is_empty());
    assert_eq!(value(&s, "certmanager_csi_managed_volume_count", &[]), 0.0);
    server.stop().await;
}

#[tokio::test]
async fn readyz_follows_readiness_and_healthz_is_always_up() {
    let readiness = Readiness::default();
    let server = Server::start(Registry::default(), readiness.clone()).await;

    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.starts_with("not ready: "), "{}", reply.body);
    assert_eq!(get(server.addr, "/healthz").await.status, 200);

    readiness.set_ready(true);
    let reply = get(server.addr, "/readyz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

    readiness.set_ready(false);
    assert_eq!(get(server.addr, "/readyz").await.status, 503);
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn readyz_accepts_a_closure_with_its_own_reason() {
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = synced.clone();
    let check = move || {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("watches not synced yet".to_owned())
        }
    };
    let server = Server::start(Registry::default(), check).await;
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "not ready: watches not synced yet")
    );
    synced.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(server.addr, "/readyz").await.status, 200);
    server.stop().await;
}

// -------------------------------------------------------------- events

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: None,
        crds: cert_csi::api::crds(),
        watch_window: 10_000,
    })
    .await
    .unwrap()
}

/// Creates a namespace and a pod in it; returns the pod's uid.
async fn pod(client: &Client, namespace: &str, name: &str) -> String {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
    }))
    .unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {namespace}: {e}"),
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    pod.metadata.uid.expect("the API server assigns a uid")
}

async fn events(client: &Client, namespace: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn limits(burst: u32, per_second: f64) -> EventLimits {
    EventLimits {
        burst,
        per_second,
        ..EventLimits::default()
    }
}

const DENIED_NOTE: &str =
    "CertificateRequest team-a/web-0-aaaa was denied (PolicyDenied): issuer not allowed";

#[tokio::test]
async fn a_repeated_denial_is_one_event_with_a_series() {
    let sandbox = sandbox().await;
    let client = sandbox.client();
    let uid = pod(&client, "team-a", "web-0").await;
    let regarding = pod_reference("team-a", "web-0", Some(&uid));
    let recorder = EventRecorder::new(client.clone(), NODE_REPORTER, "node-1", limits(100, 1.0));

    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let outcome = recorder
            .record(
                &regarding,
                EventType::Warning,
                "IssuanceDenied",
                "Issue",
                DENIED_NOTE,
            )
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    let Recorded::Created { name, .. } = &outcomes[0] else {
        panic!("first occurrence creates: {:?}", outcomes[0]);
    };
    for (i, outcome) in outcomes.iter().enumerate().skip(1) {
        assert_eq!(
            outcome,
            &Recorded::Updated {
                namespace: "team-a".into(),
                name: name.clone(),
                count: i as i32 + 1
            }
        );
    }

    let list = events(&client, "team-a").await;
    assert_eq!(list.len(), 1, "{list:#?}");
    let event = &list[0];
    assert_eq!(event.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("IssuanceDenied"));
    assert_eq!(event.action.as_deref(), Some("Issue"));
    assert_eq!(event.note.as_deref(), Some(DENIED_NOTE));
    assert_eq!(event.reporting_controller.as_deref(), Some("cert-csi-node"));
    assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
    assert!(
        event.event_time.is_some(),
        "events.k8s.io/v1 requires eventTime"
    );
    let series = event.series.as_ref().expect("series after repeats");
    assert_eq!(series.count, 20);
    assert!(series.last_observed_time.0 >= event.event_time.as_ref().unwrap().0);
    let r = event.regarding.as_ref().unwrap();
    assert_eq!(
        (
            r.kind.as_deref(),
            r.api_version.as_deref(),
            r.namespace.as_deref()
        ),
        (Some("Pod"), Some("v1"), Some("team-a"))
    );
    assert_eq!(
        (r.name.as_deref(), r.uid.as_deref()),
        (Some("web-0"), Some(uid.as_str()))
    );

    // Different reasons, notes or objects are different Events.
    recorder
        .record(
            &regarding,
            EventType::Warning,
            "IssuanceFailed",
            "Issue",
            DENIED_NOTE,
        )
        .await
        .unwrap();
    recorder
        .record(
            &regarding,
            EventType::Warning,
            "IssuanceDenied",
            "Issue",
            "another message",
        )
        .await
        .unwrap();
    let other_uid = pod(&client, "team-a", "web-1").await;
    let other = pod_reference("team-a", "web-1", Some(&other_uid));
    recorder
        .record(
            &other,
            EventType::Warning,
            "IssuanceDenied",
            "Issue",
            DENIED_NOTE,
        )
        .await
        .unwrap();
    let list = events(&client, "team-a").await;
    assert_eq!(list.len(), 4, "{list:#?}");
    let mut reasons: Vec<_> = list.iter().filter_map(|e| e.reason.clone()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "IssuanceDenied",
            "IssuanceDenied",
            "IssuanceDenied",
            "IssuanceFailed"
        ]
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_rate_cap_holds_for_new_events_and_series_updates() {
    let sandbox = sandbox().await;
    let client = sandbox.client();
    let uid = pod(&client, "loop", "crashy").await;
    let regarding = pod_reference("loop", "crashy", Some(&uid));
    // No refill: exactly `burst` writes ever, however fast the loop.
    let recorder = EventRecorder::new(client.clone(), NODE_REPORTER, "node-1", limits(3, 0.0));
    let mut created = 0;
    let mut throttled = 0;
    for i in 0..10 {
        let note = format!("attempt {i} failed");
        match recorder
            .record(
                &regarding,
                EventType::Warning,
                "IssuanceFailed",
                "Issue",
                &note,
            )
            .await
            .unwrap()
        {
            Recorded::Created { .. } => created += 1,
            Recorded::Throttled => throttled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, throttled), (3, 7));
    assert_eq!(events(&client, "loop").await.len(), 3);

    // A repeat of a known series is held back too; flush cannot bypass the cap.
    let outcome = recorder
        .record(
            &regarding,
            EventType::Warning,
            "IssuanceFailed",
            "Issue",
            "attempt 0 failed",
        )
        .await
        .unwrap();
    assert_eq!(outcome, Recorded::Throttled);
    assert_eq!(recorder.flush().await.unwrap(), 0);
    assert!(
        events(&client, "loop")
            .await
            .iter()
            .all(|e| e.series.is_none())
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn held_back_repeats_are_written_by_the_next_flush() {
    let sandbox = sandbox().await;
    let client = sandbox.client();
    let uid = pod(&client, "slow", "web-0").await;
    let regarding = pod_reference("slow", "web-0", Some(&uid));
    // One token, refilled every 400 ms: the immediate repeat is held back.
    let recorder = EventRecorder::new(client.clone(), NODE_REPORTER, "node-1", limits(1, 2.5));
    let note = "still waiting for CertificateRequest slow/web-0-aaaa to be approved after 30s";
    let record = || {
        recorder.record(
            &regarding,
            EventType::Warning,
            "IssuanceSlow",
            "Issue",
            note,
        )
    };
    assert!(matches!(record().await.unwrap(), Recorded::Created { .. }));
    assert_eq!(record().await.unwrap(), Recorded::Throttled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.flush().await.unwrap(), 1);
    let list = events(&client, "slow").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].series.as_ref().map(|s| s.count), Some(2));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn notes_with_secrets_are_refused_and_long_notes_cut() {
    let sandbox = sandbox().await;
    let client = sandbox.client();
    let uid = pod(&client, "guard", "web-0").await;
    let regarding = pod_reference("guard", "web-0", Some(&uid));
    let recorder = EventRecorder::new(client.clone(), NODE_REPORTER, "node-1", limits(10, 0.0));

    // Built at run time so this file holds no key-shaped text for scanners.
    let pem = format!("-----BEGIN EC {}-----\nMHcCAQEE\n", "PRIVATE KEY");
    let err = recorder
        .record(
            &regarding,
            EventType::Warning,
            "IssuanceFailed",
            "Issue",
            &pem,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EventError::SensitiveNote { .. }), "{err}");
    assert!(
        !err.to_string().contains("MHcCAQEE"),
        "the error must not echo the note"
    );
    let jwt = format!(
        "login failed for token {}.eyJzdWIiOiJ4In0.c2lnbmF0dXJlcw",
        "eyJhbGciOiJSUzI1NiJ9"
    );
    assert!(matches!(
        recorder
            .record(
                &regarding,
                EventType::Warning,
                "IssuanceFailed",
                "Issue",
                &jwt
            )
            .await,
        Err(EventError::SensitiveNote { .. })
    ));
    let err = recorder
        .record(
            &regarding,
            EventType::Warning,
            "Issuance Failed",
            "Issue",
            "x",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"Issuance Failed\""), "{err}");
    assert!(
        events(&client, "guard").await.is_empty(),
        "refused notes write nothing"
    );

    let long = "x".repeat(5000);
    recorder
        .record(&regarding, EventType::Normal, "Issued", "Issue", &long)
        .await
        .unwrap();
    let list = events(&client, "guard").await;
    assert_eq!(list.len(), 1);
    let note = list[0].note.as_deref().unwrap();
    assert_eq!(note.len(), 1024);
    assert!(note.ends_with("..."));
    assert_eq!(list[0].type_.as_deref(), Some("Normal"));
    sandbox.shutdown().await;
}

// ---------------------------------------------------------------- logs

/// Kills the child by pid when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg_attr(
    not(feature = "sandbox"),
    ignore = "runs `cert-csi sandbox`, which needs the `sandbox` feature"
)]
fn json_logs_parse_line_by_line() {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args([
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "sandbox",
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("LOG_FORMAT")
            .env_remove("LOG_LEVEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("sandbox ready: http://"), "{ready:?}");
    let url = ready
        .trim()
        .trim_start_matches("sandbox ready: ")
        .to_owned();

    // Make the server log a request or two, then stop it so stderr ends.
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = get(addr, "/api/v1/namespaces").await;
        let _ = get(addr, "/version").await;
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut parsed = 0;
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(value.get(field).is_some(), "no {field} in {line}");
        }
        if let Some(m) = value.get("message").and_then(|m| m.as_str()) {
            messages.push(m.to_owned());
        }
        parsed += 1;
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
    assert!(
        parsed >= 2,
        "expected several log lines, got {parsed}: {messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("listening")),
        "{messages:?}"
    );
}
