//! API outages: the API server is stopped for longer than a renewal period.
//! The served certificate stays valid throughout, renewal retries are few
//! (backoff, not a loop), a publish during the outage answers Unavailable
//! and leaves nothing behind, and after the API returns the renewal
//! completes through the resumed watch.
//!
//! The sandbox keeps no objects across a stop, so the harness snapshots
//! namespaces, pods and CertificateRequests through the real client before
//! stopping it and restores them on the same port afterwards (see
//! `Env::stop_api`).

use std::time::{Duration, Instant};

use cert_csi::volume::keys;
use test_kit::{Env, Options, PodReader, Policy, mounts_under, served_leaf};

const OUTAGE: Duration = Duration::from_secs(18);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_survives_an_api_outage_longer_than_a_renewal_period() {
    if !test_kit::require_root("renewal_survives_an_api_outage_longer_than_a_renewal_period") {
        return;
    }
    let mut env = Env::start_with_args(
        Options {
            publish_timeout: "5s",
            policy: Policy::Approve,
            controller: true,
        },
        &[
            "--renewal-retry-base",
            "1s",
            "--renewal-retry-max",
            "2s",
            "--renewal-jitter",
            "0",
        ],
    )
    .await;
    let pod = env.create_pod("outage", "svc-0", "svc").await;
    // Valid for 60 s and renewed 45 s before expiry: the renewal falls due
    // 15 s after issuance, inside the 18 s outage. The real kube-apiserver
    // takes seconds to come back, so the certificate must outlive the
    // outage, the restart and the retries with room to spare.
    let attrs = [
        (keys::ISSUER_NAME, "ca"),
        (keys::KEY_ALGORITHM, "ECDSA"),
        (keys::DURATION, "60s"),
        (keys::RENEW_BEFORE, "45s"),
    ];
    let served = env.volume(&pod, "tls", &attrs);
    env.publish_ok(&served).await;
    let issued_at = Instant::now();
    let first = served_leaf(&served, "tls.crt");
    let reader = PodReader::start(&served, "tls.crt", "tls.key");

    let snapshot = env.stop_api().await;
    let outage_started = Instant::now();

    // A publish during the outage: Unavailable, and nothing left on the node.
    let late = env.volume(&pod, "late", &attrs);
    let result = env.publish(&late).await;
    let status = result.expect_err("publish while the API server is down");
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{}",
        status.message()
    );
    assert!(
        mounts_under(late.target().parent().unwrap()).is_empty(),
        "a mount was left for the failed publish"
    );
    assert!(
        !env.data_root.join("volumes").join(&late.volume_id).exists(),
        "node state was left for the failed publish"
    );

    let remaining = OUTAGE.saturating_sub(outage_started.elapsed());
    tokio::time::sleep(remaining).await;
    assert!(
        issued_at.elapsed() > Duration::from_secs(16),
        "the outage must cover the renewal time"
    );
    assert_eq!(
        served_leaf(&served, "tls.crt").serial_hex,
        first.serial_hex,
        "nothing could be renewed during the outage"
    );
    env.start_api(snapshot).await;
    let api_back = Instant::now();

    // The renewal completes once the API is back, before expiry.
    let deadline = issued_at + Duration::from_secs(55);
    while served_leaf(&served, "tls.crt").serial_hex == first.serial_hex {
        assert!(
            Instant::now() < deadline,
            "not renewed within {:?} of the API's return, 5 s before expiry; log:\n{}",
            api_back.elapsed(),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "renewed {:?} after the API came back ({:?} after issuance)",
        api_back.elapsed(),
        issued_at.elapsed()
    );
    let seen = reader.finish();
    assert!(
        seen.problems.is_empty(),
        "the pod saw an expired or torn certificate in {} reads, first: {:?}",
        seen.problems.len(),
        &seen.problems[..seen.problems.len().min(3)]
    );
    assert!(seen.serials.len() >= 2, "{:?}", seen.serials);

    // Retries were paced by the backoff: the renewal failed from its due
    // time (~15 s) to the API's return (18 s, plus the real server's
    // restart), with retries 0.5–2 s apart: tens at most, never a loop.
    let log = env.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("certificate renewal failed"))
        .count();
    println!("failed renewal attempts logged: {failures}");
    assert!(
        (1..=25).contains(&failures),
        "{failures} failed attempts: an error loop? log:\n{log}"
    );

    // A publish after the outage succeeds, and nothing of the failed one
    // was left in the API.
    env.publish_ok(&late).await;
    assert_eq!(env.requests_for(&late).await.len(), 1);
    env.finish().await;
}
