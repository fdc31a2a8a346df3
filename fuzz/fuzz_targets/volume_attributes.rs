//! The volume attribute parser, as NodePublishVolume drives it: any
//! attributes a pod spec can hold must give a spec or an AttributeError,
//! never a panic, and what publish does next with a spec (encoding the
//! subject and SANs) must not panic either.
#![no_main]

use std::collections::HashMap;

use cert_csi::volume::{self, InputLimits, PublishInput, kubelet, spiffe_attributes};
use libfuzzer_sys::fuzz_target;

const UID: &str = "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11";
const TARGET: &str = "/var/lib/kubelet/pods/0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11/volumes/kubernetes.io~csi/tls/mount";

fuzz_target!(|data: &[u8]| {
    // What the kubelet always sends, so the input reaches the attributes;
    // the input's `key=value` lines add to it or override it.
    let mut ctx: HashMap<String, String> = [
        (kubelet::POD_NAME, "web-0"),
        (kubelet::POD_NAMESPACE, "shop"),
        (kubelet::POD_UID, UID),
        (kubelet::SERVICE_ACCOUNT_NAME, "frontend"),
        (kubelet::EPHEMERAL, "true"),
        (volume::keys::ISSUER_NAME, "ca"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Some((k, v)) = line.split_once('=') {
            ctx.insert(k.to_string(), v.replace("\\n", "\n"));
        }
    }
    let _ = volume::check_context_size(&ctx, &InputLimits::default());
    let id = format!("csi-{}", "0123456789abcdef".repeat(4));
    let input = PublishInput {
        volume_id: &id,
        target_path: TARGET,
        readonly: true,
        volume_mount_group: None,
        context: &ctx,
    };
    if let Ok(spec) = volume::parse(&input) {
        let _ = volume::check_san_count(&spec.sans, &InputLimits::default());
        let _ = cert_csi::pki::csr::subject_name(&spec.subject);
        let _ = cert_csi::pki::csr::san_general_names(&spec.sans);
    }
    let _ = volume::context_fingerprint(&ctx);
    // The SPIFFE driver's parser reads the same context.
    let _ = spiffe_attributes::pod_token(
        ctx.get(kubelet::SERVICE_ACCOUNT_TOKENS)
            .map(|t| volume::SecretString::new(t.clone()))
            .as_ref(),
        "",
        std::time::SystemTime::UNIX_EPOCH,
    );
});
