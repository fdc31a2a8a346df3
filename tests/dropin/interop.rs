//! Each half of cert-csi with the other half from upstream, judged by
//! `openssl verify` and a mutual TLS handshake between two pods' files:
//! - cert-csi's node plugin with cert-manager's own CA signer;
//! - upstream csi-driver with cert-csi's controller.
//!
//! (csi-driver-spiffe cannot be built here: the module proxy refuses every
//! version of it; the README says so.)

use std::time::Duration;

use cert_csi::csi::kubelet::{PodRef, Volume};
use test_kit::peers::UpstreamDriver;
use test_kit::tls::{Identity, mutual_tls};
use test_kit::{Env, Options, Signer};

use crate::differential::require_real;

/// Key types to try, each as a pair of pods talking TLS.
const KEYS: &[(&str, &[(&str, &str)])] = &[
    ("RSA", &[]),
    ("ECDSA", &[("csi.cert-manager.io/key-algorithm", "ECDSA")]),
    (
        "Ed25519",
        &[("csi.cert-manager.io/key-algorithm", "Ed25519")],
    ),
];

fn attributes(
    extra: &[(&'static str, &'static str)],
    name: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut attributes = vec![
        ("csi.cert-manager.io/issuer-name", "ca"),
        ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
        ("csi.cert-manager.io/common-name", name),
        ("csi.cert-manager.io/dns-names", "localhost"),
        (
            "csi.cert-manager.io/key-usages",
            "digital signature,key encipherment,server auth,client auth",
        ),
    ];
    attributes.extend_from_slice(extra);
    attributes
}

/// A server pod and a client pod for key type `name`.
async fn pods(env: &Env, name: &str) -> (PodRef, PodRef) {
    let name = name.to_lowercase();
    let server = env
        .create_pod("interop", &format!("server-{name}"), "app")
        .await;
    let client = env
        .create_pod("interop", &format!("client-{name}"), "app")
        .await;
    (server, client)
}

/// `openssl verify` of the volume's leaf against its own ca.crt, then a
/// mutual TLS handshake between the two volumes.
fn judge(what: &str, server: &Volume, client: &Volume) {
    for volume in [server, client] {
        let out = test_kit::openssl_ok(&[
            "verify",
            "-CAfile",
            volume.file("ca.crt").to_str().unwrap(),
            volume.file("tls.crt").to_str().unwrap(),
        ]);
        assert!(out.contains(": OK"), "{what}: openssl verify: {out}");
    }
    let (server_cert, server_key) = (server.file("tls.crt"), server.file("tls.key"));
    let (client_cert, client_key) = (client.file("tls.crt"), client.file("tls.key"));
    mutual_tls(
        &Identity {
            cert: &server_cert,
            key: &server_key,
        },
        &Identity {
            cert: &client_cert,
            key: &client_key,
        },
        &server.file("ca.crt"),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_csi_volumes_signed_by_cert_manager_verify_and_talk_tls() {
    if !require_real("cert_csi_volumes_signed_by_cert_manager_verify_and_talk_tls") {
        return;
    }
    let env = Env::start_signed_by(Options::default(), &[], Signer::CertManager).await;
    for (name, extra) in KEYS {
        let (server_pod, client_pod) = pods(&env, name).await;
        let server = env.volume(&server_pod, "tls", &attributes(extra, "server"));
        let client = env.volume(&client_pod, "tls", &attributes(extra, "client"));
        env.publish_ok(&server).await;
        env.publish_ok(&client).await;
        judge(
            &format!("cert-csi + cert-manager, {name}"),
            &server,
            &client,
        );
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_csi_driver_volumes_signed_by_cert_csi_verify_and_talk_tls() {
    if !require_real("upstream_csi_driver_volumes_signed_by_cert_csi_verify_and_talk_tls") {
        return;
    }
    // cert-csi's controller signs (the harness's default).
    let env = Env::start_with(Options::default()).await;
    let upstream = UpstreamDriver::beside(&env, &[]).await;
    for (name, extra) in KEYS {
        let (server_pod, client_pod) = pods(&env, name).await;
        let server =
            UpstreamDriver::volume_beside(&env, &server_pod, "tls", &attributes(extra, "server"));
        let client =
            UpstreamDriver::volume_beside(&env, &client_pod, "tls", &attributes(extra, "client"));
        for volume in [&server, &client] {
            upstream
                .publish(volume, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| {
                    panic!("upstream csi-driver, {name}: {e}\nlog:\n{}", upstream.log())
                });
        }
        judge(
            &format!("upstream csi-driver + cert-csi, {name}"),
            &server,
            &client,
        );
    }
    drop(upstream);
    env.finish().await;
}
