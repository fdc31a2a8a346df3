//! Criterion micro-benchmarks of the steps of one publish that are pure
//! computation: key generation per algorithm, CSR building, CA signing and
//! attribute parsing. `cargo bench --bench micro`; the system-level numbers
//! (latency against the floor, burst, memory, recovery) come from hack/bench.

use std::collections::HashMap;
use std::hint::black_box;

use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, PrivateKey, SanSpec, SignParams, SubjectSpec,
};
use cert_csi::volume::PublishInput;
use criterion::{Criterion, criterion_group, criterion_main};

const ALGORITHMS: [(&str, KeyAlgorithm); 5] = [
    ("P-256", KeyAlgorithm::Ecdsa(Curve::P256)),
    ("P-384", KeyAlgorithm::Ecdsa(Curve::P384)),
    ("P-521", KeyAlgorithm::Ecdsa(Curve::P521)),
    ("Ed25519", KeyAlgorithm::Ed25519),
    ("RSA-2048", KeyAlgorithm::Rsa { bits: 2048 }),
];

fn sans() -> SanSpec {
    SanSpec {
        dns_names: vec!["app-7f9c.default.svc.cluster.local".into()],
        uris: vec!["spiffe://cluster.local/ns/default/sa/app".into()],
        ..Default::default()
    }
}

fn keygen(c: &mut Criterion) {
    let mut group = c.benchmark_group("keygen");
    for (name, algorithm) in ALGORITHMS {
        if matches!(algorithm, KeyAlgorithm::Rsa { .. }) {
            // Tens of milliseconds each; the minimum sample count is enough.
            group.sample_size(10);
        }
        group.bench_function(name, |b| {
            b.iter(|| PrivateKey::generate(black_box(algorithm)).unwrap())
        });
    }
    group.finish();
}

fn csr(c: &mut Criterion) {
    let mut group = c.benchmark_group("csr");
    let subject = SubjectSpec {
        common_name: Some("app".into()),
        ..Default::default()
    };
    for (name, algorithm) in ALGORITHMS {
        let key = PrivateKey::generate(algorithm).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                cert_csi::pki::build_csr(&key, &subject, &sans(), &CsrOptions::default()).unwrap()
            })
        });
    }
    group.finish();
}

fn ca_sign(c: &mut Criterion) {
    let ca_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let ca_csr = cert_csi::pki::build_csr(
        &ca_key,
        &SubjectSpec {
            common_name: Some("micro CA".into()),
            ..Default::default()
        },
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let ca = cert_csi::pki::sign_self_signed(
        ca_csr.pem.as_bytes(),
        &ca_key,
        &SignParams {
            is_ca: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut group = c.benchmark_group("ca_sign");
    for (name, algorithm) in [ALGORITHMS[0], ALGORITHMS[4]] {
        let key = PrivateKey::generate(algorithm).unwrap();
        let csr = cert_csi::pki::build_csr(
            &key,
            &SubjectSpec::default(),
            &sans(),
            &CsrOptions::default(),
        )
        .unwrap();
        group.bench_function(format!("P-256 CA, {name} leaf"), |b| {
            b.iter(|| {
                cert_csi::pki::sign_with_ca(
                    csr.pem.as_bytes(),
                    ca.certificate_pem.as_bytes(),
                    &ca_key,
                    &SignParams::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn attributes(c: &mut Criterion) {
    let context: HashMap<String, String> = [
        ("csi.cert-manager.io/issuer-name", "ca"),
        ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
        (
            "csi.cert-manager.io/dns-names",
            "${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local",
        ),
        (
            "csi.cert-manager.io/uri-sans",
            "spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME",
        ),
        ("csi.cert-manager.io/key-algorithm", "ECDSA"),
        (
            "csi.cert-manager.io/key-usages",
            "digital signature,key encipherment,server auth,client auth",
        ),
        ("csi.cert-manager.io/duration", "24h"),
        ("csi.storage.k8s.io/pod.name", "app-7f9c"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        (
            "csi.storage.k8s.io/pod.uid",
            "0b7e3c52-6c1e-4f57-9d0c-2f1b9b1d7a11",
        ),
        ("csi.storage.k8s.io/serviceAccount.name", "app"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let input = PublishInput {
        volume_id: "csi-5f2b1c0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c",
        target_path: "/var/lib/kubelet/pods/0b7e3c52-6c1e-4f57-9d0c-2f1b9b1d7a11/volumes/kubernetes.io~csi/tls/mount",
        readonly: true,
        volume_mount_group: None,
        context: &context,
    };
    // The input must be valid, or this would time the error path.
    cert_csi::volume::parse(&input).expect("the benchmark's attributes are valid");
    c.bench_function("attributes/parse", |b| {
        b.iter(|| cert_csi::volume::parse(black_box(&input)).unwrap())
    });
}

criterion_group!(benches, keygen, csr, ca_sign, attributes);
criterion_main!(benches);
