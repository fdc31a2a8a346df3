//! When each driver plans to renew, for the same issued lifetimes: upstream
//! csi-driver's `nextIssuanceTime` (its `metadata.json`) beside cert-csi's
//! `next_renewal` (its node state, with renewal jitter off), each measured
//! as "renew this long before notAfter" against its own certificate, whose
//! dates openssl reads. cert-manager's own controller signs both, with a CA
//! issuer whose CA outlives the requests and one whose CA does not (which
//! cert-manager's CA issuer, unlike cert-csi's, does not cap).

use std::time::Duration;

use jiff::Timestamp;
use test_kit::peers::UpstreamDriver;
use test_kit::{Env, Options, Signer};

use crate::differential::require_real;

/// Timestamps agree within this: cert-csi counts the lifetime from when
/// the certificate arrived rather than from its notBefore, and both
/// record times to the second.
const TOLERANCE: Duration = Duration::from_secs(5);

/// Cases whose renewal point differs on purpose (README, "Intentional
/// differences"), with the reason.
const INTENTIONAL: &[(&str, &str)] = &[(
    "renew-before five sixths of the lifetime",
    "a renew-before over three quarters of the lifetime the issuer gave is replaced by the default third, so a short issued lifetime cannot make every volume renew almost at once, again and again",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_drivers_plan_the_same_renewal_for_the_same_lifetime() {
    if !require_real("both_drivers_plan_the_same_renewal_for_the_same_lifetime") {
        return;
    }
    let env = Env::start_signed_by(
        Options {
            publish_timeout: "15s",
            ..Options::default()
        },
        &["--renewal-jitter", "0"],
        Signer::CertManager,
    )
    .await;
    // A CA that lives two hours, asked for 720h.
    env.cluster.short_lived_ca("short-ca", "2h").await;
    let upstream = UpstreamDriver::beside(&env, &[]).await;

    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "default renew-before",
            &[("csi.cert-manager.io/duration", "1h")],
        ),
        (
            "renew-before 10m",
            &[
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "10m"),
            ],
        ),
        (
            "renew-before five sixths of the lifetime",
            &[
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "50m"),
            ],
        ),
        (
            "renew-before as long as the lifetime",
            &[
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "2h"),
            ],
        ),
        (
            "request outlives its CA",
            &[
                ("csi.cert-manager.io/duration", "720h"),
                ("csi.cert-manager.io/issuer-name", "short-ca"),
            ],
        ),
    ];
    let mut differences = Vec::new();
    for (i, (name, extra)) in cases.iter().enumerate() {
        let mut attributes = vec![
            ("csi.cert-manager.io/issuer-name", "ca"),
            ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
            ("csi.cert-manager.io/common-name", "app"),
        ];
        for (k, v) in extra.iter() {
            attributes.retain(|(key, _)| key != k);
            attributes.push((k, v));
        }
        let pod = env.create_pod("renewal", &format!("case-{i}"), "app").await;

        let theirs = UpstreamDriver::volume_beside(&env, &pod, "up", &attributes);
        upstream
            .publish(&theirs, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name}: upstream publish: {e}"));
        let metadata: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                upstream
                    .data_root
                    .join("inmemfs")
                    .join(&theirs.volume_id)
                    .join("metadata.json"),
            )
            .expect("upstream's metadata.json"),
        )
        .unwrap();
        let their_next: Timestamp = metadata["nextIssuanceTime"]
            .as_str()
            .expect("nextIssuanceTime")
            .parse()
            .unwrap();
        let their_before = not_after(&theirs.file("tls.crt")).duration_since(their_next);

        let ours = env.volume(&pod, "ours", &attributes);
        env.publish_ok(&ours).await;
        let state = env.state_json(&ours).expect("cert-csi's node state");
        let our_next: Timestamp = state["next_renewal"]
            .as_str()
            .expect("next_renewal")
            .parse()
            .unwrap();
        let our_before = not_after(&ours.file("tls.crt")).duration_since(our_next);

        let gap = (their_before - our_before).abs();
        let line = format!(
            "{name}: renews {} s before notAfter upstream, {} s with cert-csi",
            their_before.as_secs(),
            our_before.as_secs()
        );
        eprintln!("{line}");
        if gap.unsigned_abs() > TOLERANCE {
            match INTENTIONAL.iter().find(|(case, _)| case == name) {
                Some((_, reason)) => eprintln!("  intentional: {reason}"),
                None => differences.push(line),
            }
        }
    }
    drop(upstream);
    env.finish().await;
    assert!(
        differences.is_empty(),
        "renewal points differ:\n{}",
        differences.join("\n")
    );
}

/// The certificate's notAfter, as openssl reads it.
fn not_after(path: &std::path::Path) -> Timestamp {
    let out = test_kit::openssl_ok(&[
        "x509",
        "-noout",
        "-enddate",
        "-dateopt",
        "iso_8601",
        "-in",
        path.to_str().unwrap(),
    ]);
    // `notAfter=2026-12-07 13:00:00Z`
    let value = out
        .trim()
        .strip_prefix("notAfter=")
        .expect("notAfter=")
        .replace(' ', "T");
    value
        .parse()
        .unwrap_or_else(|e| panic!("openssl's date {value:?}: {e}"))
}
