//! The attribute matrix ([`crate::matrix`]) published to upstream
//! csi-driver and to cert-csi, one pod per case, with cert-manager's own
//! controller signing for both. For each case the two drivers get the same
//! volume: the same pod, volume name and so volume id, and the same
//! attributes; only the kubelet root of the target path differs (cert-csi
//! only mounts under its `--kubelet-root-dir`). Upstream goes first; its
//! requests are deleted before cert-csi publishes, so neither driver sees
//! the other's request for the volume.

use std::time::{Duration, Instant};

use cert_csi::api::CertificateRequest;
use cert_csi::csi::kubelet::{PodRef, Volume};
use futures::StreamExt;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use test_kit::peers::UpstreamDriver;
use test_kit::{Backend, Env, Options, Signer};

use crate::matrix::{Case, cases};
use crate::view::{Fields, Outcome, differences, file_fields, request_fields};

const NAMESPACE: &str = "dropin";
/// The kubelet's deadline for one publish. Both drivers wait for issuance
/// until then: cert-csi by `--publish-timeout`, upstream by the deadline.
const DEADLINE: Duration = Duration::from_secs(15);
/// The field that counts the requests a driver made for the volume.
const REQUESTS_MADE: &str = "requests made";
/// Cases in flight at once (each on a pod of its own).
const PARALLEL: usize = 6;

/// The field of a difference in whether the volume was published at all.
const PUBLISHED: &str = "published";

/// Differences that are intentional, each because cert-csi is deliberately
/// safer; the README's "Intentional differences" table lists the same.
/// (applies to (field, case name), reason)
type Intentional = (fn(&str, &str) -> bool, &'static str);
const INTENTIONAL: &[Intentional] = &[
    (
        |field, _| field == REQUESTS_MADE,
        "cert-csi checks every attribute before it makes a key or a request; upstream creates the request first and fails afterwards, leaving a signed request behind",
    ),
    (
        |field, case| {
            field == PUBLISHED && (case == "duration negative" || case == "duration zero")
        },
        "a negative duration gets an already expired certificate upstream, and zero silently the issuer's default lifetime; cert-csi refuses both with the fix",
    ),
];

/// True when the test may run: as root, on the real control plane.
pub fn require_real(test: &str) -> bool {
    if !test_kit::require_root(test) {
        return false;
    }
    if Backend::from_env() != Backend::Real {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{test} compares with upstream on the real control plane: set CERT_CSI_TEST_API=real (hack/test does)"
            );
        }
        eprintln!("skipping {test}: CERT_CSI_TEST_API is not real");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_attribute_set_gives_what_upstream_csi_driver_gives() {
    if !require_real("every_attribute_set_gives_what_upstream_csi_driver_gives") {
        return;
    }
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "the matrix has {} cases; the issue asks for at least 60",
        cases.len()
    );
    let env = Env::start_signed_by(
        Options {
            publish_timeout: "15s",
            ..Options::default()
        },
        &[],
        Signer::CertManager,
    )
    .await;
    let upstream = UpstreamDriver::beside(&env, &[]).await;

    let results: Vec<(usize, Outcome, Outcome)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, case)| {
            let (env, upstream) = (&env, &upstream);
            async move {
                let (u, c) = run_case(env, upstream, i, case).await;
                (i, u, c)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    let mut unexplained = Vec::new();
    let mut report = Vec::new();
    let mut sorted = results;
    sorted.sort_by_key(|(i, _, _)| *i);
    for (i, upstream, ours) in &sorted {
        let case = &cases[*i];
        let verdict = |o: &Outcome| match &o.refused {
            None => "published".to_string(),
            Some(why) => format!("refused ({why})"),
        };
        report.push(format!(
            "[{i}] {}: upstream {}; cert-csi {}",
            case.name,
            verdict(upstream),
            verdict(ours)
        ));
        if upstream.refused.is_some() != ours.refused.is_some() {
            // What one driver made and the other did not is this one
            // difference, not a difference in every field.
            match INTENTIONAL
                .iter()
                .find(|(applies, _)| applies(PUBLISHED, case.name))
            {
                Some((_, reason)) => report.push(format!("  intentional: {PUBLISHED}: {reason}")),
                None => unexplained.push(format!(
                    "[{i}] {}: upstream {}, cert-csi {}",
                    case.name,
                    verdict(upstream),
                    verdict(ours)
                )),
            }
            continue;
        }
        let mut fields = differences(&upstream.request, &ours.request);
        if fields.iter().any(|(f, _, _)| f == REQUESTS_MADE) {
            // Both refused, but one made a request first.
            fields.retain(|(f, _, _)| f == REQUESTS_MADE);
        }
        for (field, u, o) in fields
            .into_iter()
            .chain(differences(&upstream.files, &ours.files))
        {
            let line = format!(
                "[{i}] {}: {field}:\n    upstream: {u}\n    cert-csi: {o}",
                case.name
            );
            match INTENTIONAL
                .iter()
                .find(|(applies, _)| applies(&field, case.name))
            {
                Some((_, reason)) => report.push(format!("  intentional: {field}: {reason}")),
                None => unexplained.push(line),
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    drop(upstream);
    env.finish().await;
    assert!(
        unexplained.is_empty(),
        "{} differences from upstream csi-driver that are neither fixed nor intentional:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}

async fn run_case(
    env: &Env,
    upstream: &UpstreamDriver,
    i: usize,
    case: &Case,
) -> (Outcome, Outcome) {
    let pod = env.create_pod(NAMESPACE, &format!("case-{i}"), "app").await;
    let password = case
        .attributes
        .iter()
        .find(|(k, _)| *k == "csi.cert-manager.io/pkcs12-password")
        .map(|(_, v)| *v);

    let volume = UpstreamDriver::volume_beside(env, &pod, "tls", &case.attributes);
    let result = upstream.publish(&volume, DEADLINE).await;
    let theirs = outcome(env, &pod, &volume, result, password).await;
    if theirs.refused.is_none() {
        upstream
            .unpublish(&volume)
            .await
            .unwrap_or_else(|e| panic!("[{i}] upstream unpublish: {e}"));
    }
    delete_requests_of(env, &pod).await;

    let volume = env.volume(&pod, "tls", &case.attributes);
    let result = env.publish(&volume).await;
    let ours = outcome(env, &pod, &volume, result, password).await;
    if ours.refused.is_none() {
        env.unpublish(&volume.volume_id, &volume.target_path)
            .await
            .unwrap_or_else(|e| panic!("[{i}] cert-csi unpublish: {e}"));
    }
    delete_requests_of(env, &pod).await;
    (theirs, ours)
}

/// The requests whose owner is `pod`.
async fn requests_of(env: &Env, pod: &PodRef) -> Vec<CertificateRequest> {
    Api::<CertificateRequest>::namespaced(env.client.clone(), &pod.namespace)
        .list(&ListParams::default())
        .await
        .expect("listing CertificateRequests")
        .items
        .into_iter()
        .filter(|cr| cr.owner_references().iter().any(|o| o.uid == pod.uid))
        .collect()
}

async fn delete_requests_of(env: &Env, pod: &PodRef) {
    let api = Api::<CertificateRequest>::namespaced(env.client.clone(), &pod.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = requests_of(env, pod).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "requests of {} not deleted within 30 s",
            pod.name
        );
        for cr in left {
            let _ = api.delete(&cr.name_any(), &DeleteParams::default()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outcome(
    env: &Env,
    pod: &PodRef,
    volume: &Volume,
    result: Result<(), tonic::Status>,
    password: Option<&str>,
) -> Outcome {
    let requests = requests_of(env, pod).await;
    let mut request = match requests.as_slice() {
        [one] => request_fields(one),
        _ => Fields::new(),
    };
    request.insert(REQUESTS_MADE.into(), requests.len().to_string());
    let files = match &result {
        Ok(()) => file_fields(&volume.target(), password),
        Err(_) => Fields::new(),
    };
    Outcome {
        refused: result.err().map(|s| {
            let message: String = s.message().chars().take(120).collect();
            format!("{:?}: {message}", s.code())
        }),
        request,
        files,
    }
}
