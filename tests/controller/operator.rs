//! The operator's commands against the API server (issue 18), run as the
//! real binary with an admin kubeconfig: `approve` and `deny` of
//! CertificateRequests, `renew` of a Certificate, and `inspect` of a Secret
//! and a CertificateRequest, judged by the objects the API server returns
//! and by openssl.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cert_csi::api::conditions::{ConditionStatus, types};
use cert_csi::api::{Certificate, CertificateRequest, CertificateSpec, ClusterIssuer, IssuerRef};
use cert_csi::controller::{ControllerOptions, EnabledControllers, Health};
use cert_csi::shutdown::CancellationToken;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use test_kit::real::ApiServer;
use test_kit::{Backend, create_namespace};
use tokio::time::Instant;

use crate::signer::{ca_spec, key, make_ca, request};

fn cert_csi(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .expect("cert-csi runs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `get` until `done` holds, or fails after 30 s with the last value.
async fn until<T: std::fmt::Debug>(
    what: &str,
    mut get: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = get().await;
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}: {value:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(r: &CertificateRequest, type_: &str) -> Option<(String, String, String)> {
    r.condition(type_).map(|c| {
        (
            format!("{:?}", c.status),
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_deny_renew_and_inspect_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, kubeconfig) =
        ApiServer::start_in(Backend::from_env(), dir.path(), 10_000).await;
    for ns in ["cert-manager", "team"] {
        create_namespace(&client, ns).await;
    }
    let ca = make_ca("operator CA", None);
    crate::signer::create_secret(&client, "cert-manager", "ca-key", &ca).await;
    Api::<ClusterIssuer>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterIssuer::new("ca", ca_spec("ca-key")),
        )
        .await
        .unwrap();
    // The signer and the certificates loop, but no approver: the command
    // line decides.
    let token = CancellationToken::new();
    let mut options = ControllerOptions::new("cert-manager");
    options.enabled = EnabledControllers::parse("issuers,signer,certificates").unwrap();
    let controller = tokio::spawn(cert_csi::controller::run(
        client.clone(),
        options,
        Health::default(),
        token.clone(),
    ));
    let issuer = IssuerRef {
        name: "ca".into(),
        kind: Some("ClusterIssuer".into()),
        group: Some("cert-manager.io".into()),
    };
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "team");
    for name in ["to-approve", "to-deny"] {
        requests
            .create(
                &PostParams::default(),
                &request(name, issuer.clone(), &key(), None, &[]),
            )
            .await
            .unwrap();
    }

    // approve: cmctl's reason, our message; then signed by the signer.
    ok(cert_csi(
        &kubeconfig,
        &["approve", "-n", "team", "to-approve"],
    ));
    let approved = until(
        "signed",
        async || requests.get("to-approve").await.unwrap(),
        |r| r.ready_reason() == Some("Issued"),
    )
    .await;
    assert_eq!(
        condition(&approved, types::APPROVED),
        Some((
            format!("{:?}", ConditionStatus::True),
            "KubectlCertManager".into(),
            "manually approved by \"cert-csi\"".into()
        ))
    );
    // A decision is final: approving again, or denying, is refused.
    for verb in ["approve", "deny"] {
        let out = cert_csi(&kubeconfig, &[verb, "-n", "team", "to-approve"]);
        assert!(
            !out.status.success(),
            "{verb} of a decided request succeeded"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("already approved"), "{stderr}");
    }

    // deny, with a reason and message of the operator's.
    ok(cert_csi(
        &kubeconfig,
        &[
            "deny",
            "-n",
            "team",
            "to-deny",
            "--reason",
            "NotOurs",
            "--message",
            "wrong team",
        ],
    ));
    let denied = until(
        "denied and failed",
        async || requests.get("to-deny").await.unwrap(),
        |r| r.ready_reason() == Some("Denied"),
    )
    .await;
    assert_eq!(
        condition(&denied, types::DENIED).map(|c| (c.1, c.2)),
        Some(("NotOurs".into(), "wrong team".into()))
    );
    assert!(denied.status.as_ref().unwrap().certificate.is_none());
    let out = cert_csi(&kubeconfig, &["approve", "-n", "team", "missing"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("team/missing not found"));

    // inspect a request: the serial openssl reads from status.certificate.
    let scratch = tempfile::tempdir().unwrap();
    let leaf = scratch.path().join("leaf.pem");
    std::fs::write(
        &leaf,
        approved
            .status
            .as_ref()
            .unwrap()
            .certificate_pem()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let serial =
        test_kit::openssl_ok(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-serial"]);
    let serial = serial.trim().strip_prefix("serial=").unwrap().to_owned();
    let summary = ok(cert_csi(&kubeconfig, &["inspect", "cr/team/to-approve"]));
    assert!(summary.contains(&format!("serial: {serial}")), "{summary}");
    assert!(
        summary.contains("status.certificate verifies against status.ca"),
        "{summary}"
    );
    assert!(summary.contains("DNS:to-approve.example.com"), "{summary}");

    // renew: a Certificate re-issued on demand, with a new serial.
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), "team");
    certificates
        .create(
            &PostParams::default(),
            &Certificate::new(
                "web",
                CertificateSpec {
                    secret_name: "web-tls".into(),
                    issuer_ref: issuer.clone(),
                    dns_names: Some(vec!["web.team.svc".into()]),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    // The certificates loop's requests need approval too: approve each
    // with the command line as it appears.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let approve_revision = async |revision: i32| {
        let name = format!("web-{revision}");
        until(
            "created by the certificates loop",
            async || requests.get_opt(&name).await.unwrap(),
            Option::is_some,
        )
        .await;
        ok(cert_csi(&kubeconfig, &["approve", "-n", "team", &name]));
        until(
            "issued",
            async || certificates.get("web").await.unwrap(),
            |c| c.status.as_ref().and_then(|s| s.revision) == Some(revision) && c.is_ready(),
        )
        .await
    };
    approve_revision(1).await;
    let first = secrets.get("web-tls").await.unwrap();
    let summary = ok(cert_csi(&kubeconfig, &["inspect", "secret/team/web-tls"]));
    assert!(
        summary.contains("tls.crt verifies against ca.crt"),
        "{summary}"
    );
    assert!(
        summary.contains("tls.key: private key (not shown) matches the leaf of tls.crt"),
        "{summary}"
    );
    assert!(test_kit::secret_lines(&summary).is_empty(), "{summary}");

    let out = ok(cert_csi(&kubeconfig, &["renew", "-n", "team", "web"]));
    assert!(
        out.contains("manually triggered issuance of certificate team/web"),
        "{out}"
    );
    let renewed = approve_revision(2).await;
    let second = secrets.get("web-tls").await.unwrap();
    let tls = |s: &Secret| s.data.as_ref().unwrap()["tls.crt"].0.clone();
    assert_ne!(tls(&first), tls(&second), "renew did not re-issue");
    assert!(renewed.condition(types::ISSUING).is_none());

    token.cancel();
    controller.await.unwrap();
}
