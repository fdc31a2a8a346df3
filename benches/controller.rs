//! Benchmarks of the certificates loop (not a timed test; prints numbers).
//!
//! 1. Time to issue N Certificates (env `N`, default 10,000) through a CA
//!    ClusterIssuer, with the whole controller in-process on the sandbox.
//! 2. Resident memory of `cert-csi controller` (a subprocess) while S
//!    unrelated Secrets exist (env `SECRETS`, default 100,000): VmRSS and
//!    VmHWM from /proc/PID/status after the watches have synced.
//!
//! Run: `cargo bench --bench controller` (add `N=500 SECRETS=5000` for a quick run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cert_csi::api::{
    CaIssuer, Certificate, CertificatePrivateKey, CertificateSpec, ClusterIssuer, IssuerRef,
    IssuerSpec,
};
use cert_csi::controller::{ControllerOptions, Health};
use cert_csi::pki::{KeyAlgorithm, KeyEncoding, PrivateKey, SignParams};
use cert_csi::sandbox::{Sandbox, SandboxConfig};
use cert_csi::shutdown::CancellationToken;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sandbox(kubeconfig: Option<std::path::PathBuf>) -> Sandbox {
    let sandbox = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        kubeconfig,
        crds: cert_csi::api::crds(),
        watch_window: 200_000,
    })
    .await
    .expect("sandbox starts");
    for ns in ["cert-manager", "bench"] {
        Api::<Namespace>::all(sandbox.client())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    sandbox
}

async fn ca_issuer(client: &kube::Client) {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(cert_csi::pki::Curve::P256)).unwrap();
    let csr = cert_csi::pki::build_csr(
        &key,
        &cert_csi::pki::SubjectSpec {
            common_name: Some("bench CA".into()),
            ..Default::default()
        },
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    let ca = cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            ..Default::default()
        },
    )
    .unwrap();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("bench-ca".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(ca.certificate_pem.into_bytes()),
            ),
            (
                "tls.key".into(),
                ByteString(key.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec()),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), "cert-manager")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    Api::<ClusterIssuer>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterIssuer::new(
                "bench-ca",
                IssuerSpec {
                    ca: Some(CaIssuer {
                        secret_name: "bench-ca".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
}

async fn issue_many(n: usize) {
    let sandbox = sandbox(None).await;
    let client = sandbox.client();
    ca_issuer(&client).await;
    let token = CancellationToken::new();
    let controller = tokio::spawn(cert_csi::controller::run(
        client.clone(),
        ControllerOptions::new("cert-manager"),
        Health::default(),
        token.clone(),
    ));
    let api = Api::<Certificate>::namespaced(client.clone(), "bench");
    let start = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            async move {
                let spec = CertificateSpec {
                    secret_name: format!("c{i}-tls"),
                    issuer_ref: IssuerRef::cluster_issuer("bench-ca"),
                    dns_names: Some(vec![format!("c{i}.bench.example")]),
                    private_key: Some(CertificatePrivateKey {
                        algorithm: Some("ECDSA".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                api.create(
                    &PostParams::default(),
                    &Certificate::new(&format!("c{i}"), spec),
                )
                .await
                .unwrap();
            }
        })
        .await;
    let created = start.elapsed();
    let deadline = start + Duration::from_secs(1800);
    loop {
        let ready = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.is_ready() && c.status.as_ref().and_then(|s| s.revision) == Some(1))
            .count();
        if ready == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready}/{n} ready after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total = start.elapsed();
    println!(
        "issue: {n} Certificates Ready in {:.1} s ({:.0}/s; creating them took {:.1} s); goal ≤ 60 s for 10,000",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        created.as_secs_f64()
    );
    token.cancel();
    let _ = controller.await;
}

/// Kills the controller subprocess by pid when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn memory_with_secrets(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let sandbox = sandbox(Some(kubeconfig.clone())).await;
    let client = sandbox.client();
    let api = Api::<Secret>::namespaced(client.clone(), "bench");
    let start = Instant::now();
    // ~1 KiB of data each, like a small TLS Secret someone else manages.
    let payload = vec![b'x'; 1024];
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let payload = payload.clone();
            async move {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("blob".into(), ByteString(payload))])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .await;
    println!(
        "memory: created {count} unrelated Secrets in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    ca_issuer(&client).await;
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args([
                "controller",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--metrics-address",
                "127.0.0.1:0",
                "--log-level",
                "warn",
            ])
            .spawn()
            .expect("cert-csi controller starts"),
    );
    let pid = child.0.id();
    // One managed Certificate proves the loops work while the Secrets exist.
    let certs = Api::<Certificate>::namespaced(client.clone(), "bench");
    certs
        .create(
            &PostParams::default(),
            &Certificate::new(
                "probe",
                CertificateSpec {
                    secret_name: "probe-tls".into(),
                    issuer_ref: IssuerRef::cluster_issuer("bench-ca"),
                    dns_names: Some(vec!["probe.bench.example".into()]),
                    private_key: Some(CertificatePrivateKey {
                        algorithm: Some("ECDSA".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let c = certs.get("probe").await.unwrap();
        if c.is_ready() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "probe never Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_after = t0.elapsed();
    // Let the metadata watch finish its initial list and settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status(pid, "VmHWM:").unwrap_or(0);
    println!(
        "memory: cert-csi controller (subprocess, pid {pid}) with {count} unrelated Secrets: VmRSS {:.1} MiB, VmHWM (peak) {:.1} MiB; probe Certificate Ready after {:.1} s; goal ≤ 64 MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ready_after.as_secs_f64()
    );
    drop(child);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n = env_usize("N", 10_000);
    let secrets = env_usize("SECRETS", 100_000);
    runtime.block_on(async {
        if n > 0 {
            issue_many(n).await;
        }
        if secrets > 0 {
            memory_with_secrets(secrets).await;
        }
    });
}
