//! Rotation in place through the real plugin: short-lived certificates are
//! renewed on the same mount while a reader in the "pod" checks that key and
//! certificate always belong together; republish is a no-op.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use cert_csi::volume::{keys, kubelet};
use kube::ResourceExt;
use test_kit::{Env, Options, PodReader, Policy, mounts_at, served_leaf};

/// Waits until `reader` has seen `count` distinct serials, or panics.
async fn wait_for_serials(
    env: &Env,
    reader: &PodReader,
    count: usize,
    limit: Duration,
    what: &str,
) {
    let deadline = Instant::now() + limit;
    while reader.serials().len() < count {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} certificates seen within {limit:?}: {:?}\nlog:\n{}",
            reader.serials().len(),
            reader.serials(),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_in_place_without_a_torn_read() {
    if !test_kit::require_root("short_lived_certificates_rotate_in_place_without_a_torn_read") {
        return;
    }
    let env = Env::start_with(Options {
        publish_timeout: "10s",
        policy: Policy::Approve,
        controller: true,
    })
    .await;
    let pod = env.create_pod("rotate", "web-0", "web").await;
    // 24 s certificates renewed 18 s before expiry (three quarters, the
    // most renew-before may claim): a rotation every ~6 s.
    let base = [
        (keys::ISSUER_NAME, "ca"),
        (keys::KEY_ALGORITHM, "ECDSA"),
        (keys::DURATION, "24s"),
        (keys::RENEW_BEFORE, "18s"),
    ];
    let fresh = env.volume(&pod, "fresh", &base);
    let mut reuse_attrs = base.to_vec();
    reuse_attrs.push((keys::REUSE_PRIVATE_KEY, "true"));
    let reuse = env.volume(&pod, "reuse", &reuse_attrs);
    env.publish_ok(&fresh).await;
    env.publish_ok(&reuse).await;

    let mount_of = |v: &test_kit::VolumeRequest| {
        let mounts = mounts_at(&v.target());
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let meta = std::fs::metadata(v.target()).unwrap();
        (mounts[0].mount_id, mounts[0].device, meta.dev(), meta.ino())
    };
    let mounts_before = [mount_of(&fresh), mount_of(&reuse)];

    let readers = [
        PodReader::start(&fresh, "tls.crt", "tls.key"),
        PodReader::start(&reuse, "tls.crt", "tls.key"),
    ];
    // The first certificate plus three rotations each.
    wait_for_serials(&env, &readers[0], 4, Duration::from_secs(40), "fresh").await;
    wait_for_serials(&env, &readers[1], 4, Duration::from_secs(40), "reuse").await;
    let [fresh_reader, reuse_reader] = readers;
    let fresh_seen = fresh_reader.finish();
    let reuse_seen = reuse_reader.finish();
    println!(
        "reads: fresh {} over {} certificates, reuse {} over {} certificates",
        fresh_seen.reads,
        fresh_seen.serials.len(),
        reuse_seen.reads,
        reuse_seen.serials.len()
    );

    for (name, seen) in [("fresh", &fresh_seen), ("reuse", &reuse_seen)] {
        assert!(
            seen.problems.is_empty(),
            "{name}: the reader saw a torn or expired state in {} reads, first: {:?}",
            seen.problems.len(),
            &seen.problems[..seen.problems.len().min(3)]
        );
        assert!(seen.reads > 100, "{name}: only {} reads", seen.reads);
        let mut distinct = seen.serials.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            seen.serials.len(),
            "{name}: a serial came back: {:?}",
            seen.serials
        );
    }
    assert_eq!(
        fresh_seen.public_keys.len(),
        fresh_seen.serials.len(),
        "without reuse-private-key every renewal has a fresh key"
    );
    assert_eq!(
        reuse_seen.public_keys.len(),
        1,
        "reuse-private-key keeps the key across {} certificates",
        reuse_seen.serials.len()
    );

    // The same mount and directory, rotated underneath.
    assert_eq!([mount_of(&fresh), mount_of(&reuse)], mounts_before);
    // Request hygiene: only the newest request per volume is kept.
    for v in [&fresh, &reuse] {
        let left = env.requests_for(v).await;
        assert!(
            left.len() <= 2,
            "{}: {:?}",
            v.volume_name,
            left.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
        );
    }
    let log = env.log();
    assert!(
        !log.contains("certificate renewal failed"),
        "no renewal should fail here; log:\n{log}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_is_a_no_op_and_new_tokens_stay_in_memory() {
    if !test_kit::require_root("republish_is_a_no_op_and_new_tokens_stay_in_memory") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("republish", "api-0", "api").await;
    let mut volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    volume.set(
        kubelet::SERVICE_ACCOUNT_TOKENS,
        r#"{"vault":{"token":"first-token-value","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
    );
    env.publish_ok(&volume).await;
    let request = env.only_request(&volume).await.name_any();
    let serial = served_leaf(&volume, "tls.crt").serial_hex;

    let started = Instant::now();
    for i in 0..50 {
        if i % 10 == 5 {
            // The kubelet refreshes the token it passes on republish.
            volume.set(
                kubelet::SERVICE_ACCOUNT_TOKENS,
                &format!(
                    r#"{{"vault":{{"token":"refreshed-token-{i}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
                ),
            );
        }
        env.publish_ok(&volume).await;
    }
    let took = started.elapsed();
    println!("50 republishes took {took:?}");
    assert_eq!(env.only_request(&volume).await.name_any(), request);
    assert_eq!(
        env.cluster.checked().await,
        1,
        "50 republishes created requests"
    );
    assert_eq!(served_leaf(&volume, "tls.crt").serial_hex, serial);
    assert_eq!(mounts_at(&volume.target()).len(), 1);

    // Tokens are never written to the node's disk or logged.
    let mut stack = vec![env.data_root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("first-token-value") && !text.contains("refreshed-token"),
                    "a token was written to {}",
                    entry.path().display()
                );
            }
        }
    }
    let log = env.log();
    assert!(!log.contains("first-token-value") && !log.contains("refreshed-token"));
    env.finish().await;
}

/// The names of CertificateRequests created in `namespace` while watching
/// for `window`. A renewal loop creates requests within milliseconds (issue
/// 13 saw ten a second), so a window of seconds with none is the evidence.
async fn requests_created_during(env: &Env, namespace: &str, window: Duration) -> Vec<String> {
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let api: kube::Api<cert_csi::api::CertificateRequest> =
        kube::Api::namespaced(env.client.clone(), namespace);
    let rv = api
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    let mut created = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        if let WatchEvent::Added(cr) = event.unwrap() {
            created.push(cr.name_any());
        }
    }
    created
}

/// `next_renewal` minus `received_at` in the volume's node state, and the
/// guard's streak.
fn planned(env: &Env, volume: &test_kit::VolumeRequest) -> (Duration, u64) {
    let state = env.state_json(volume).expect("node state");
    let ts = |k: &str| -> jiff::Timestamp {
        state[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {state}"))
            .parse()
            .unwrap()
    };
    let gap = ts("next_renewal").duration_since(ts("received_at"));
    (
        Duration::try_from(gap).expect("renewal after arrival"),
        state["short_certificates"].as_u64().unwrap(),
    )
}

/// Whether `openssl x509 -checkend` says the served certificate is still
/// valid `seconds` from now.
fn valid_in(volume: &test_kit::VolumeRequest, seconds: u64) -> bool {
    let out = test_kit::openssl(&[
        "x509",
        "-noout",
        "-in",
        volume.file("tls.crt").to_str().unwrap(),
        "-checkend",
        &seconds.to_string(),
    ]);
    out.status.success()
}

const DAY: u64 = 86_400;

/// Issue 13: issuers that give less than the volume asked for. A CA with 30
/// days left under a 90-day request (whose default renew-before is 30
/// days), the same with an explicit renew-before of the CA's whole life,
/// and a CA with one hour left under a renew-before of 60 days. Each volume
/// makes exactly one request, renews at two thirds of what it got, and
/// keeps that after a restart, even from a state saved under the old rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_that_shorten_lifetimes_never_start_a_renewal_loop() {
    if !test_kit::require_root("issuers_that_shorten_lifetimes_never_start_a_renewal_loop") {
        return;
    }
    // The node's default minimum interval, not the harness's 1 s.
    let mut env = Env::start_with_args(
        Options {
            publish_timeout: "10s",
            policy: Policy::Approve,
            controller: true,
        },
        &["--min-renewal-interval", "1m"],
    )
    .await;
    env.cluster.short_lived_ca("ca-30d", "720h").await;
    env.cluster.short_lived_ca("ca-1h", "1h").await;
    let pod = env.create_pod("capped", "web-0", "web").await;
    let issuer = |name| {
        [
            (keys::ISSUER_NAME, name),
            (keys::ISSUER_KIND, "ClusterIssuer"),
        ]
    };
    let with = |name, extra: &[(&'static str, &'static str)]| {
        let mut attrs = issuer(name).to_vec();
        attrs.push((keys::KEY_ALGORITHM, "ECDSA"));
        attrs.extend_from_slice(extra);
        attrs
    };
    let cases = [
        // (volume, attributes, lifetime the issuer gives in seconds)
        ("default-30d", with("ca-30d", &[]), 30 * DAY),
        (
            "renew-before-all-30d",
            with(
                "ca-30d",
                &[(keys::DURATION, "2160h"), (keys::RENEW_BEFORE, "720h")],
            ),
            30 * DAY,
        ),
        (
            "renew-before-60d-1h",
            with(
                "ca-1h",
                &[(keys::DURATION, "2160h"), (keys::RENEW_BEFORE, "1440h")],
            ),
            3600,
        ),
        ("default-1h", with("ca-1h", &[]), 3600),
    ];
    let mut volumes = Vec::new();
    for (name, attrs, life) in &cases {
        let volume = env.volume(&pod, name, attrs);
        env.publish_ok(&volume).await;
        // The issuer did shorten it (openssl judges): valid for all but
        // about a minute of `life`, not for `life` and a minute more.
        assert!(
            valid_in(&volume, life - 120),
            "{name}: shorter than {life} s"
        );
        assert!(
            !valid_in(&volume, life + 60),
            "{name}: not capped at {life} s"
        );
        let (gap, streak) = planned(&env, &volume);
        // Two thirds of what was received, less up to a tenth of the third
        // for jitter (and a second of X.509 rounding).
        let third = Duration::from_secs(*life) / 3;
        let latest = 2 * third;
        // The CA was made moments before: allow a minute of its life gone.
        let earliest = latest - third / 10 - Duration::from_secs(60);
        assert!(
            gap >= earliest && gap <= latest,
            "{name}: renewal {gap:?} after arrival, expected {earliest:?}..={latest:?}"
        );
        assert_eq!(streak, 0, "{name}: the guard stepped in");
        volumes.push(volume);
    }
    assert_eq!(env.count_requests("capped").await, cases.len());
    let more = requests_created_during(&env, "capped", Duration::from_secs(5)).await;
    assert!(more.is_empty(), "renewals right after issuance: {more:?}");

    // A restart keeps every schedule. One volume's state is rewritten as
    // the old rule left it (renewal due at notBefore, no arrival time): the
    // restarted plugin must reschedule it, not renew it at once.
    let mut state = env.state_json(&volumes[0]).unwrap();
    state["next_renewal"] = state["not_before"].clone();
    state.as_object_mut().unwrap().remove("received_at");
    let path = env
        .data_root
        .join("volumes")
        .join(&volumes[0].volume_id)
        .join("state.json");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let before: Vec<_> = volumes[1..].iter().map(|v| planned(&env, v)).collect();
    env.restart_plugin().await;
    let more = requests_created_during(&env, "capped", Duration::from_secs(5)).await;
    assert!(more.is_empty(), "renewals after the restart: {more:?}");
    let after: Vec<_> = volumes[1..].iter().map(|v| planned(&env, v)).collect();
    assert_eq!(before, after, "a restart moved a schedule");
    assert!(
        env.log()
            .contains("a saved renewal time broke the renewal rules"),
        "the old-rule state was not rescheduled; log:\n{}",
        env.log()
    );
    let state = env.state_json(&volumes[0]).unwrap();
    let next: jiff::Timestamp = state["next_renewal"].as_str().unwrap().parse().unwrap();
    let ahead = Duration::try_from(next.duration_since(jiff::Timestamp::now())).unwrap();
    assert!(
        ahead > Duration::from_secs(18 * DAY),
        "rescheduled only {ahead:?} ahead"
    );
    assert_eq!(env.count_requests("capped").await, cases.len());
    env.finish().await;
}

/// The guard: a certificate too short to renew at least the minimum
/// interval after it arrived (here a CA with an hour left, under a two-hour
/// minimum) is renewed after the interval instead, with a Warning Event on
/// the pod that names the issuer and the lifetimes, and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_too_short_for_the_minimum_interval_is_guarded_not_looped() {
    if !test_kit::require_root(
        "a_certificate_too_short_for_the_minimum_interval_is_guarded_not_looped",
    ) {
        return;
    }
    let env = Env::start_with_args(
        Options {
            publish_timeout: "10s",
            policy: Policy::Approve,
            controller: true,
        },
        &["--min-renewal-interval", "2h"],
    )
    .await;
    env.cluster.short_lived_ca("ca-1h", "1h").await;
    let pod = env.create_pod("guarded", "web-0", "web").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca-1h"),
            (keys::ISSUER_KIND, "ClusterIssuer"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    env.publish_ok(&volume).await;
    assert!(!valid_in(&volume, 3660), "the CA did not cap the leaf");
    let (gap, streak) = planned(&env, &volume);
    assert_eq!(streak, 1);
    // The interval, plus at most a tenth at random.
    let hours = |h: f64| Duration::from_secs_f64(h * 3600.0);
    assert!(gap >= hours(2.0) && gap <= hours(2.2), "{gap:?}");

    let (code, scrape) = test_kit::http_get(&env.metrics_url(), "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        test_kit::sample(&scrape, "cert_csi_renewals_guarded_total", &[]),
        1.0
    );

    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), "guarded");
    let deadline = Instant::now() + Duration::from_secs(15);
    let note = loop {
        let found = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RenewalGuarded"));
        if let Some(e) = found {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(
                e.regarding.as_ref().and_then(|r| r.name.as_deref()),
                Some("web-0")
            );
            break e.note.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no RenewalGuarded Event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for part in [
        "ClusterIssuer ca-1h",
        "2160h0m0s requested",
        "at least 2h0m0s",
    ] {
        assert!(note.contains(part), "{part:?} not in {note:?}");
    }
    let more = requests_created_during(&env, "guarded", Duration::from_secs(3)).await;
    assert!(more.is_empty(), "renewals: {more:?}");
    assert_eq!(env.count_requests("guarded").await, 1);
    env.finish().await;
}
