//! Objects as cert-manager users write them (tests/fixtures/cert-manager)
//! must survive a typed read and write unchanged: no field lost, none added.

use std::path::{Path, PathBuf};

use cert_csi::api::{
    Certificate, CertificateRequest, ClusterIssuer, Issuer, IssuerRef, IssuerType,
    PrivateKeyAlgorithm, PrivateKeyEncoding, RotationPolicy,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cert-manager")
}

fn load(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Deserializes `input` as `T` and serializes it back, through a JSON string
/// as the API server would send it.
fn round_trip<T: Serialize + DeserializeOwned>(input: &Value) -> (T, Value) {
    let text = serde_json::to_string(input).unwrap();
    let typed: T =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("deserialize: {e}\n{text}"));
    let back = serde_json::to_value(&typed).unwrap();
    (typed, back)
}

/// The first JSON pointer where two values differ, for a readable failure.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let p = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(xa), Some(yb)) => {
                        if let Some(d) = first_difference(&p, xa, yb) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => return Some(format!("{p}: lost in the round trip")),
                    (None, Some(_)) => return Some(format!("{p}: added by the round trip")),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (xa, yb))| first_difference(&format!("{path}/{i}"), xa, yb)),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

fn assert_lossless<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let input = load(name);
    let (typed, back) = round_trip::<T>(&input);
    if let Some(diff) = first_difference("", &input, &back) {
        panic!("{name}: {diff}");
    }
    assert_eq!(input, back, "{name}");
    typed
}

/// Every fixture in the directory is checked by its kind, so a new fixture
/// cannot be forgotten.
#[test]
fn every_fixture_round_trips_by_kind() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".yaml") {
            continue;
        }
        let kind = load(&name)["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "CertificateRequest" => drop(assert_lossless::<CertificateRequest>(&name)),
            "Certificate" => drop(assert_lossless::<Certificate>(&name)),
            "Issuer" => drop(assert_lossless::<Issuer>(&name)),
            "ClusterIssuer" => drop(assert_lossless::<ClusterIssuer>(&name)),
            other => panic!("{name}: unexpected kind {other}"),
        }
        seen.push(kind);
    }
    for kind in [
        "CertificateRequest",
        "Certificate",
        "Issuer",
        "ClusterIssuer",
    ] {
        assert!(seen.iter().any(|k| k == kind), "no fixture of kind {kind}");
    }
}

#[test]
fn issued_request_is_typed() {
    let request: CertificateRequest = assert_lossless("certificaterequest-issued.yaml");
    assert!(request.is_approved() && request.is_issued() && request.is_finished());
    assert!(!request.is_denied() && !request.is_failed());
    let csr = request.spec.request_pem().unwrap();
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let status = request.status.as_ref().unwrap();
    let chain = status.certificate_pem().unwrap().unwrap();
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let ca = status.ca_pem().unwrap().unwrap();
    assert!(
        chain.ends_with(ca),
        "the CA is the last certificate of the chain"
    );
    assert_eq!(request.spec.duration.as_deref(), Some("2160h0m0s"));
    assert_eq!(request.spec.extra.as_ref().unwrap().len(), 2);
    assert!(
        request
            .spec
            .issuer_ref
            .same_issuer(&IssuerRef::issuer("demo-ca"))
    );
    let failure = assert_lossless::<CertificateRequest>("certificaterequest-minimal-failed.yaml");
    assert!(failure.is_failed() && failure.is_approved() && !failure.is_issued());
    assert!(failure.status.unwrap().failure_time.is_some());
    // Written as kind "" and group "", the reference still names the Issuer.
    assert!(
        failure
            .spec
            .issuer_ref
            .same_issuer(&IssuerRef::issuer("selfsigned"))
    );
    assert_eq!(failure.spec.issuer_ref.kind.as_deref(), Some(""));
}

#[test]
fn certificates_are_typed() {
    let cert: Certificate = assert_lossless("certificate-full.yaml");
    let key = cert.spec.private_key.as_ref().unwrap();
    assert_eq!(key.algorithm().unwrap(), PrivateKeyAlgorithm::Ecdsa);
    assert_eq!(key.size, Some(384));
    assert_eq!(key.encoding().unwrap(), PrivateKeyEncoding::Pkcs8);
    assert!(cert.is_ready() && !cert.is_issuing());
    assert!(cert.spec.issuer_ref.is_cluster_issuer());
    let keystores = cert.spec.keystores.as_ref().unwrap();
    assert_eq!(
        keystores.jks.as_ref().unwrap().alias.as_deref(),
        Some("app")
    );
    assert_eq!(
        keystores.pkcs12.as_ref().unwrap().profile.as_deref(),
        Some("Modern2023")
    );
    assert_eq!(cert.status.as_ref().unwrap().revision, Some(2));

    let ca: Certificate = assert_lossless("certificate-ca.yaml");
    assert_eq!(ca.spec.is_ca, Some(true));
    assert_eq!(
        ca.spec
            .private_key
            .as_ref()
            .unwrap()
            .rotation_policy()
            .unwrap(),
        RotationPolicy::Never
    );
    let constraints = ca.spec.name_constraints.as_ref().unwrap();
    assert_eq!(
        constraints.permitted.as_ref().unwrap().ip_ranges.as_deref(),
        Some(&["10.0.0.0/8".to_owned()][..])
    );
    assert!(ca.is_issuing());
}

#[test]
fn issuers_are_typed() {
    let ca: Issuer = assert_lossless("issuer-ca.yaml");
    assert!(ca.is_ready());
    match ca.spec.issuer_type("Issuer").unwrap() {
        IssuerType::Ca(c) => {
            assert_eq!(c.secret_name, "demo-ca-key-pair");
            assert_eq!(
                c.issuing_certificate_urls.as_ref().unwrap()[0],
                "http://ca.example.com/demo.crt"
            );
        }
        other => panic!("expected a CA issuer, got {other:?}"),
    }
    let selfsigned: ClusterIssuer = assert_lossless("clusterissuer-selfsigned.yaml");
    assert!(matches!(
        selfsigned.spec.issuer_type("ClusterIssuer"),
        Ok(IssuerType::SelfSigned(_))
    ));
    assert!(selfsigned.is_ready());
    let acme: ClusterIssuer = assert_lossless("clusterissuer-acme.yaml");
    assert!(matches!(
        acme.spec.issuer_type("ClusterIssuer"),
        Ok(IssuerType::Acme(_))
    ));
    let venafi: Issuer = assert_lossless("issuer-venafi.yaml");
    assert!(!venafi.is_ready());
}

/// The comparison above must be able to fail: a field the types do not
/// declare is reported as lost.
#[test]
fn an_undeclared_field_is_detected_as_lost() {
    let mut input = load("issuer-ca.yaml");
    input["spec"]["ca"]["futureField"] = Value::from("x");
    let (_, back) = round_trip::<Issuer>(&input);
    let diff = first_difference("", &input, &back).expect("the undeclared field must be reported");
    assert_eq!(diff, "/spec/ca/futureField: lost in the round trip");
}

/// Objects the API server returns as YAML (kubectl -o yaml) parse too.
#[test]
fn yaml_text_round_trip() {
    let text = std::fs::read_to_string(fixture_dir().join("certificate-full.yaml")).unwrap();
    let typed: Certificate = serde_yaml_ng::from_str(&text).unwrap();
    let again: Certificate =
        serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&typed).unwrap()).unwrap();
    assert_eq!(typed, again);
}
