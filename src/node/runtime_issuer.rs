//! csi-driver-spiffe's runtime issuance ConfigMap: a ConfigMap whose
//! `issuer-name`, `issuer-kind` and `issuer-group` keys choose the issuer of
//! new SPIFFE requests (first issuances and renewals) without a restart.
//!
//! As upstream's watcher does: the ConfigMap's issuer is used while all
//! three keys are set and valid; a change that leaves one out is logged and
//! ignored (the previous issuer stays); deleting the ConfigMap falls back to
//! the `--spiffe-issuer-*` flags. A ConfigMap that vanished while the watch
//! was down counts as deleted once the watch lists again.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::shutdown::CancellationToken;
use crate::volume::IssuerRef;
use crate::volume::spiffe_attributes::{IssuerSlot, checked_issuer};

/// The keys the ConfigMap must hold, as csi-driver-spiffe names them.
pub const KEYS: [&str; 3] = ["issuer-name", "issuer-kind", "issuer-group"];

/// The issuer a ConfigMap names, or why it names none.
pub fn issuer_of(config_map: &ConfigMap) -> Result<IssuerRef, String> {
    let data = config_map.data.clone().unwrap_or_default();
    let missing: Vec<&str> = KEYS
        .into_iter()
        .filter(|k| data.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing key/value in ConfigMap data: {}",
            missing.join(", ")
        ));
    }
    checked_issuer(
        &data["issuer-name"],
        &data["issuer-kind"],
        &data["issuer-group"],
    )
    .map_err(|(field, value, reason)| {
        format!(
            "issuer-{field} {:?} {reason}",
            value.chars().take(64).collect::<String>()
        )
    })
}

/// Follows ConfigMap `namespace/name` into `slot` until `shutdown`.
pub fn spawn(
    client: kube::Client,
    namespace: String,
    name: String,
    slot: IssuerSlot,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api, config).backoff(crate::kubernetes::WatchBackoff::default());
        let mut stream = std::pin::pin!(stream);
        // Whether the list in progress has seen the ConfigMap.
        let mut listed = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = stream.next() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            match event {
                Ok(watcher::Event::Init) => listed = false,
                Ok(watcher::Event::InitApply(cm)) => {
                    listed = true;
                    apply(&cm, &slot, &namespace, &name);
                }
                Ok(watcher::Event::Apply(cm)) => apply(&cm, &slot, &namespace, &name),
                Ok(watcher::Event::InitDone) if !listed => fall_back(&slot, &namespace, &name),
                Ok(watcher::Event::InitDone) => {}
                Ok(watcher::Event::Delete(_)) => fall_back(&slot, &namespace, &name),
                Err(error) => {
                    tracing::warn!(%error, configmap = %format!("{namespace}/{name}"), "watching the runtime issuance ConfigMap failed; retrying")
                }
            }
        }
    });
}

fn apply(cm: &ConfigMap, slot: &IssuerSlot, namespace: &str, name: &str) {
    match issuer_of(cm) {
        Ok(issuer) => {
            if slot.current().as_ref() != Some(&issuer) {
                tracing::info!(
                    configmap = %format!("{namespace}/{name}"),
                    issuer_name = %issuer.name,
                    issuer_kind = %issuer.kind,
                    issuer_group = %issuer.group,
                    "new SPIFFE requests go to the runtime issuance ConfigMap's issuer"
                );
            }
            slot.set_runtime(Some(issuer));
        }
        Err(reason) => tracing::error!(
            configmap = %format!("{namespace}/{name}"),
            %reason,
            "the runtime issuance ConfigMap names no usable issuer; keeping the current one"
        ),
    }
}

fn fall_back(slot: &IssuerSlot, namespace: &str, name: &str) {
    slot.set_runtime(None);
    match slot.current() {
        Some(issuer) => tracing::info!(
            configmap = %format!("{namespace}/{name}"),
            issuer_name = %issuer.name,
            "no runtime issuance ConfigMap; new SPIFFE requests go to the --spiffe-issuer-* issuer"
        ),
        None => tracing::warn!(
            configmap = %format!("{namespace}/{name}"),
            "no runtime issuance ConfigMap and no --spiffe-issuer-name: SPIFFE volumes cannot be issued until the ConfigMap exists"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(data: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "x"}, "data": data})).unwrap()
    }

    #[test]
    fn all_three_keys_make_an_issuer_and_gaps_are_named() {
        let issuer = issuer_of(&cm(json!({
            "issuer-name": "runtime-ca", "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"
        })))
        .unwrap();
        assert_eq!(issuer.name, "runtime-ca");
        let err =
            issuer_of(&cm(json!({"issuer-name": "runtime-ca", "issuer-kind": ""}))).unwrap_err();
        assert!(err.contains("issuer-kind, issuer-group"), "{err}");
        let err = issuer_of(&cm(json!({
            "issuer-name": "Runtime CA", "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"
        })))
        .unwrap_err();
        assert!(
            err.contains("issuer-name") && err.contains("DNS subdomain"),
            "{err}"
        );
    }

    #[test]
    fn the_slot_falls_back_to_the_flags() {
        let fixed = IssuerRef {
            name: "spiffe-ca".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        };
        let slot = IssuerSlot::fixed(Some(fixed.clone()));
        let shared = slot.clone();
        let runtime = IssuerRef {
            name: "runtime-ca".into(),
            ..fixed.clone()
        };
        shared.set_runtime(Some(runtime.clone()));
        assert_eq!(slot.current(), Some(runtime));
        shared.set_runtime(None);
        assert_eq!(slot.current(), Some(fixed));
        assert_eq!(IssuerSlot::fixed(None).current(), None);
    }
}
