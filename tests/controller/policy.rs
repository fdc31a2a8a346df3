//! The policy approver (`--policy-approver`) on the real control plane:
//! CertificateRequestPolicy objects served from the generated CRD, the
//! requester's right to `use` a policy judged by the real RBAC authorizer
//! through SubjectAccessReviews, and each kind of rule approving or denying
//! real requests with a message that names the policy and the field.
//!
//! The requests are created by the admin with `spec.username`/`groups` of
//! a ServiceAccount, which is what the requester-identity webhook
//! (cert-manager's, or cert-csi's) writes for that ServiceAccount; the
//! authorizer then judges that ServiceAccount's bindings.

use std::time::Duration;

use cert_csi::api::{
    AllowedString, AllowedStringSlice, CertificateRequest, CertificateRequestPolicy,
    CertificateRequestPolicySpec, CertificateRequestSpec, IssuerRef, IssuerRefSelector,
    NamespaceSelector, PemBytes, PolicyAllowed, PolicyConstraints, PolicySelector,
    PrivateKeyConstraints, ValidationRule,
};
use cert_csi::controller::EnabledControllers;
use cert_csi::pki::{CsrOptions, Curve, KeyAlgorithm, PrivateKey, SanSpec, SubjectSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use test_kit::ControllerEnv;
use test_kit::real::Backend;

const TEAM: &str = "team";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn requester(sa: &str) -> (String, Vec<String>) {
    (
        format!("system:serviceaccount:{TEAM}:{sa}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{TEAM}"),
            "system:authenticated".into(),
        ],
    )
}

#[derive(Clone)]
struct Ask<'a> {
    sa: &'a str,
    issuer: IssuerRef,
    dns: &'a [&'a str],
    common_name: Option<&'a str>,
    duration: &'a str,
    key: KeyAlgorithm,
    is_ca: bool,
}

impl Default for Ask<'_> {
    fn default() -> Self {
        Ask {
            sa: "app",
            issuer: IssuerRef::cluster_issuer("ca-main"),
            dns: &["app.team.svc.cluster.local"],
            common_name: None,
            duration: "1h",
            key: KeyAlgorithm::Ecdsa(Curve::P256),
            is_ca: false,
        }
    }
}

fn request(name: &str, ask: Ask<'_>) -> CertificateRequest {
    let key = PrivateKey::generate(ask.key).unwrap();
    let csr = cert_csi::pki::build_csr(
        &key,
        &SubjectSpec {
            common_name: ask.common_name.map(Into::into),
            ..Default::default()
        },
        &SanSpec {
            dns_names: ask.dns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        &CsrOptions::default(),
    )
    .unwrap();
    let (user, groups) = requester(ask.sa);
    let mut r = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            request: PemBytes::from(csr.pem.as_str()),
            issuer_ref: ask.issuer,
            duration: Some(ask.duration.into()),
            is_ca: ask.is_ca.then_some(true),
            usages: Some(vec!["server auth".into()]),
            username: Some(user),
            groups: Some(groups),
            ..Default::default()
        },
    );
    r.metadata.namespace = Some(TEAM.into());
    r
}

/// The policy the `app` ServiceAccount is bound to: DNS names of its own
/// namespace's services starting with `app`, server auth, at most 24h,
/// ECDSA keys, for issuers named `ca-*` in namespace `team`.
fn web_policy() -> CertificateRequestPolicy {
    CertificateRequestPolicy::new(
        "web",
        CertificateRequestPolicySpec {
            allowed: Some(PolicyAllowed {
                dns_names: Some(AllowedStringSlice {
                    values: Some(vec!["*.team.svc.cluster.local".into()]),
                    required: Some(true),
                    validations: Some(vec![ValidationRule {
                        rule: "self.startsWith('app')".into(),
                        message: Some("the name must start with app".into()),
                    }]),
                }),
                usages: Some(vec!["server auth".into(), "client auth".into()]),
                ..Default::default()
            }),
            constraints: Some(PolicyConstraints {
                min_duration: None,
                max_duration: Some("24h".into()),
                private_key: Some(PrivateKeyConstraints {
                    algorithm: Some("ECDSA".into()),
                    min_size: None,
                    max_size: None,
                }),
            }),
            selector: PolicySelector {
                issuer_ref: Some(IssuerRefSelector {
                    name: Some("ca-*".into()),
                    kind: Some("*Issuer".into()),
                    group: Some("cert-manager.io".into()),
                }),
                namespace: Some(NamespaceSelector {
                    match_names: Some(vec!["te*".into()]),
                    match_labels: None,
                }),
            },
            plugins: None,
        },
    )
}

/// Allows everything, CA certificates and any CN included, for every
/// issuer; nobody is bound to it, so it must never count.
fn unbound_policy() -> CertificateRequestPolicy {
    let any = || {
        Some(AllowedStringSlice {
            values: Some(vec!["*".into()]),
            ..Default::default()
        })
    };
    CertificateRequestPolicy::new(
        "unbound",
        CertificateRequestPolicySpec {
            allowed: Some(PolicyAllowed {
                common_name: Some(AllowedString {
                    value: Some("*".into()),
                    ..Default::default()
                }),
                dns_names: any(),
                is_ca: Some(true),
                usages: Some(vec!["server auth".into()]),
                ..Default::default()
            }),
            selector: PolicySelector {
                issuer_ref: Some(Default::default()),
                namespace: None,
            },
            ..Default::default()
        },
    )
}

/// Binds `use` of `policy` to ServiceAccount `team/sa` in namespace `team`,
/// and waits until the real authorizer agrees.
async fn bind(client: &kube::Client, policy: &str, sa: &str) {
    let name = format!("use-{policy}-{sa}");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{
            "apiGroups": ["policy.cert-manager.io"],
            "resources": ["certificaterequestpolicies"],
            "verbs": ["use"],
            "resourceNames": [policy],
        }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": TEAM}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), TEAM)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), TEAM)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let (user, groups) = requester(sa);
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user, "groups": groups,
            "resourceAttributes": {
                "group": "policy.cert-manager.io", "resource": "certificaterequestpolicies",
                "verb": "use", "name": policy, "namespace": TEAM,
            },
        },
    }))
    .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .unwrap();
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the authorizer never let {sa} use {policy}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(r: &CertificateRequest) -> (String, String, String) {
    let c = r
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "Approved" || c.type_ == "Denied")
        })
        .unwrap_or_else(|| panic!("{r:?} has no decision"));
    (
        c.type_.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_approve_and_deny_by_field_for_requesters_that_may_use_them() {
    if Backend::from_env() != Backend::Real {
        let why = "tests/controller/policy.rs needs the real API server: the `use` check is a \
                   SubjectAccessReview that only the real RBAC authorizer answers; run it with \
                   CERT_CSI_TEST_API=real (hack/test does)";
        assert!(!in_ci(), "{why}");
        eprintln!("skipping: {why}");
        return;
    }
    let env = ControllerEnv::start("cert-manager", &[TEAM], 1, 10_000, |o| {
        o.enabled = EnabledControllers::parse("approver").unwrap();
        o.policy_approver = true;
    })
    .await;
    let client = env.client.clone();
    let policies: Api<CertificateRequestPolicy> = Api::all(client.clone());
    for policy in [web_policy(), unbound_policy()] {
        policies
            .create(&PostParams::default(), &policy)
            .await
            .expect("the API server serves CertificateRequestPolicy from cert-csi's CRD");
    }
    bind(&client, "web", "app").await;

    // Each policy carries a Ready condition, as approver-policy writes it;
    // one whose CEL rule does not compile is NotReady, saying where.
    let mut broken = web_policy();
    broken.metadata.name = Some("broken".into());
    broken
        .spec
        .allowed
        .as_mut()
        .unwrap()
        .dns_names
        .as_mut()
        .unwrap()
        .validations = Some(vec![ValidationRule {
        rule: "self.startsWith(".into(),
        message: None,
    }]);
    policies
        .create(&PostParams::default(), &broken)
        .await
        .expect("create the broken policy");
    let ready = |p: &CertificateRequestPolicy| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["message"].as_str().unwrap_or_default().to_owned(),
                    c["observedGeneration"].as_i64(),
                )
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let web = policies.get("web").await.unwrap();
        let bad = policies.get("broken").await.unwrap();
        if let (Some(w), Some(b)) = (ready(&web), ready(&bad)) {
            assert_eq!(w.0, "True", "{w:?}");
            assert_eq!(w.2, web.metadata.generation);
            assert_eq!(b.0, "False", "{b:?}");
            assert!(
                b.1.starts_with("spec.allowed.dnsNames.validations[0].rule: Invalid value"),
                "{b:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Ready condition on the policies: {:?} {:?}",
            web.status,
            bad.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    policies
        .delete("broken", &Default::default())
        .await
        .expect("delete the broken policy");
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), TEAM);
    let decided = |r: &CertificateRequest| r.is_approved() || r.is_denied();

    // Each case: the request, then the decision and what its message must
    // (and, for the unbound policy, must not) contain.
    let cases: Vec<(&str, Ask<'_>, &str, &[&str])> = vec![
        (
            "good",
            Ask::default(),
            "Approved",
            &["Approved by CertificateRequestPolicy: \"web\""],
        ),
        (
            "wildcard-miss",
            Ask {
                dns: &["app.other.svc.cluster.local"],
                ..Default::default()
            },
            "Denied",
            &[
                "[web: spec.allowed.dnsNames.values",
                "app.other.svc.cluster.local",
            ],
        ),
        (
            "cel-rule",
            Ask {
                dns: &["db.team.svc.cluster.local"],
                ..Default::default()
            },
            "Denied",
            &[
                "[web: spec.allowed.dnsNames.validations[0]",
                "the name must start with app",
            ],
        ),
        (
            "required",
            Ask {
                dns: &[],
                common_name: Some("app"),
                ..Default::default()
            },
            "Denied",
            &[
                "spec.allowed.dnsNames.required",
                "spec.allowed.commonName: Invalid value",
            ],
        ),
        (
            "too-long",
            Ask {
                duration: "48h",
                key: KeyAlgorithm::Rsa { bits: 2048 },
                ..Default::default()
            },
            "Denied",
            &[
                "spec.constraints.maxDuration",
                "spec.constraints.privateKey.algorithm",
            ],
        ),
        (
            "ca",
            Ask {
                is_ca: true,
                ..Default::default()
            },
            "Denied",
            &["[web: spec.allowed.isCA"],
        ),
    ];
    for (name, ask, _, _) in &cases {
        let r = request(name, ask.clone());
        requests.create(&PostParams::default(), &r).await.unwrap();
    }
    for (name, _, want, needles) in &cases {
        let r = env.wait_for(&requests, name, "decided", decided).await;
        let (type_, reason, message) = condition(&r);
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            (*want, "policy.cert-manager.io"),
            "{name}: {message}"
        );
        for needle in *needles {
            assert!(
                message.contains(needle),
                "{name}: {message:?} lacks {needle:?}"
            );
        }
        // The unbound policy allows all of these; it must not count, nor
        // be named, because nobody may use it.
        assert!(!message.contains("unbound"), "{name}: {message}");
    }

    // Not selected (issuer outside `ca-*`) and not bound (ServiceAccount
    // `other`): no policy applies, and the request is left alone.
    requests
        .create(
            &PostParams::default(),
            &request(
                "other-issuer",
                Ask {
                    issuer: IssuerRef::issuer("vault"),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    requests
        .create(
            &PostParams::default(),
            &request(
                "other-sa",
                Ask {
                    sa: "other",
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    // A request created after them and decided shows the approver has
    // seen them; they must still be undecided.
    requests
        .create(&PostParams::default(), &request("marker", Ask::default()))
        .await
        .unwrap();
    env.wait_for(&requests, "marker", "decided", decided).await;
    for name in ["other-issuer", "other-sa"] {
        let r = requests.get(name).await.unwrap();
        assert!(
            !decided(&r),
            "{name} was decided though no policy applies: {r:?}"
        );
    }

    // Binding `other` to `web` decides the waiting request: RBAC changes
    // re-evaluate undecided requests.
    bind(&client, "web", "other").await;
    let r = env
        .wait_for(&requests, "other-sa", "decided", decided)
        .await;
    assert_eq!(condition(&r).0, "Approved", "{r:?}");
    // The issuer outside the selector is still nobody's.
    let r = requests.get("other-issuer").await.unwrap();
    assert!(!decided(&r), "{r:?}");

    // namespace.matchLabels: a policy for namespaces labelled tier=gold,
    // bound to `lab`, applies only once the namespace has the label.
    // Namespace labels are not watched: a policy change (here a label on
    // the policy) re-evaluates the request.
    let mut gold = unbound_policy();
    gold.metadata.name = Some("gold".into());
    gold.spec.selector = PolicySelector {
        issuer_ref: None,
        namespace: Some(NamespaceSelector {
            match_names: None,
            match_labels: Some([("tier".to_owned(), "gold".to_owned())].into()),
        }),
    };
    policies
        .create(&PostParams::default(), &gold)
        .await
        .unwrap();
    bind(&client, "gold", "lab").await;
    requests
        .create(
            &PostParams::default(),
            &request(
                "lab",
                Ask {
                    sa: "lab",
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    requests
        .create(&PostParams::default(), &request("marker-2", Ask::default()))
        .await
        .unwrap();
    env.wait_for(&requests, "marker-2", "decided", decided)
        .await;
    let r = requests.get("lab").await.unwrap();
    assert!(
        !decided(&r),
        "lab was decided before its namespace had the label: {r:?}"
    );
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            TEAM,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await
        .unwrap();
    policies
        .patch(
            "gold",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    let r = env.wait_for(&requests, "lab", "decided", decided).await;
    assert_eq!(
        condition(&r).2,
        "Approved by CertificateRequestPolicy: \"gold\"",
        "{r:?}"
    );
    env.stop().await;
}

/// `--policy-approver` replaces the approver loop's decision, so without
/// that loop it would do nothing: the controller refuses to start, saying
/// how to fix it.
#[test]
fn the_policy_approver_needs_the_approver_loop() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["controller", "--policy-approver", "--controllers=-approver"])
        .env_remove("KUBECONFIG")
        .output()
        .expect("cert-csi runs");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--policy-approver needs the approver loop")
            && stderr.contains("add approver to --controllers"),
        "{stderr}"
    );
}
