//! `--use-token-request` beside csi-driver's flag of the same name: both
//! drivers create the request with the pod's own ServiceAccount token for
//! the API server's audience, so the API server authenticates the pod's
//! ServiceAccount as the creator and cert-manager's requester fields (here
//! written by cert-csi's requester-identity webhook, standing in for
//! cert-manager's webhook) name it, for approver policies to key on.

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::PostParams;
use test_kit::peers::UpstreamDriver;
use test_kit::{Env, Options};

use crate::differential::require_real;
use crate::matrix::ISSUER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_use_token_request_both_drivers_create_the_request_as_the_pod() {
    if !require_real("with_use_token_request_both_drivers_create_the_request_as_the_pod") {
        return;
    }
    let mut env = Env::start_with_args(Options::default(), &["--use-token-request"]).await;
    env.cluster.serve_webhook().await;
    test_kit::real::allow_service_accounts_to_request(&env.client).await;
    // Both node plugins run as a ServiceAccount, as in a cluster: csi-lib
    // adds the pod's token to its own client settings, so with the admin
    // kubeconfig's client certificate the API server would still see admin.
    let kubeconfig = node_kubeconfig(&env).await;
    env.restart_plugin_as(kubeconfig.clone()).await;
    let upstream = UpstreamDriver::start(
        &env.base.join("upstream"),
        &kubeconfig,
        &env.node_id,
        &["--use-token-request"],
    )
    .await;

    let mut attributes = ISSUER.to_vec();
    attributes.push(("csi.cert-manager.io/common-name", "app"));
    let mut users = Vec::new();
    for (name, ours) in [("upstream-0", false), ("ours-0", true)] {
        let pod = env.create_pod("shop", name, "billing").await;
        let tokens = env.kubelet_tokens(&pod, &[""]).await;
        let result = if ours {
            let mut volume = env.volume(&pod, "tls", &attributes);
            volume.set(cert_csi::volume::kubelet::SERVICE_ACCOUNT_TOKENS, &tokens);
            env.publish(&volume).await
        } else {
            let mut volume = UpstreamDriver::volume_beside(&env, &pod, "tls", &attributes);
            volume.set(cert_csi::volume::kubelet::SERVICE_ACCOUNT_TOKENS, &tokens);
            upstream
                .publish(&volume, std::time::Duration::from_secs(30))
                .await
        };
        result.unwrap_or_else(|e| {
            panic!(
                "{name}: publish with the pod's token failed: {e}\nupstream log:\n{}",
                upstream.log()
            )
        });
        let requests: Vec<_> = env
            .requests("shop")
            .await
            .into_iter()
            .filter(|r| {
                r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == pod.uid)
            })
            .collect();
        assert_eq!(requests.len(), 1, "{name}: one request");
        users.push((
            name,
            requests[0].spec.username.clone(),
            requests[0].spec.groups.clone().unwrap_or_default(),
        ));
    }
    for (name, user, groups) in &users {
        assert_eq!(
            user.as_deref(),
            Some("system:serviceaccount:shop:billing"),
            "{name}: the request was not created with the pod's token"
        );
        assert!(
            groups.iter().any(|g| g == "system:serviceaccounts:shop"),
            "{name}: {groups:?}"
        );
    }
    drop(upstream);
    env.finish().await;
}

/// A kubeconfig for ServiceAccount `kube-system/csi-node`, bound to
/// cluster-admin (the rights are not what this test is about), with a token
/// bound to a pod as the kubelet would mount it.
async fn node_kubeconfig(env: &Env) -> PathBuf {
    let pod = env
        .create_pod("kube-system", "csi-node-x7k2p", "csi-node")
        .await;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "csi-node-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "csi-node", "namespace": "kube-system"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding the node ServiceAccount");
    let tokens: serde_json::Value =
        serde_json::from_str(&env.kubelet_tokens(&pod, &[""]).await).unwrap();
    let token = tokens[""]["token"].as_str().expect("a token");
    let path = env.base.join("node.kubeconfig");
    test_kit::real::write_token_kubeconfig(&env.kubeconfig, token, &path);
    path
}
