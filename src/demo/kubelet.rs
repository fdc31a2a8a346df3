//! A stand-in for the kubelet: it creates pods in the API and publishes
//! their CSI volumes over the plugin's real unix socket, with exactly the
//! volume id, target path and volume context a kubelet would send.
//! Used where no kubelet runs: the demo and the benchmarks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::transport::Channel;

use crate::csi::proto::node_client::NodeClient;
use crate::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use crate::csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};

/// A pod as the kubelet knows it once the API has accepted it.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// One CSI inline volume of one pod.
#[derive(Clone, Debug)]
pub struct Volume {
    pub pod: PodRef,
    pub volume_id: String,
    pub target_path: PathBuf,
    pub context: HashMap<String, String>,
}

pub struct Kubelet {
    client: Client,
    node: NodeClient<Channel>,
    root: PathBuf,
    node_name: String,
}

impl Kubelet {
    pub async fn connect(
        client: Client,
        socket: &Path,
        root: impl Into<PathBuf>,
        node_name: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            node: crate::csi::client::node(socket).await?,
            root: root.into(),
            node_name: node_name.to_string(),
        })
    }

    /// Creates a pod scheduled on this node and returns what the API made
    /// of it (the uid comes from the server, as in a cluster).
    pub async fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> anyhow::Result<PodRef> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": self.node_name,
                "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "example.com/app:1"}],
            },
        }))?;
        let created = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await?;
        Ok(PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: created.metadata.uid.unwrap_or_default(),
            service_account: service_account.to_string(),
        })
    }

    /// The volume the kubelet would publish for `volume_name` of `pod`.
    pub fn volume(&self, pod: &PodRef, volume_name: &str, attributes: &[(&str, &str)]) -> Volume {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{}{}", pod.uid, volume_name).as_bytes(),
        );
        let mut context: HashMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (key, value) in [
            ("csi.storage.k8s.io/pod.name", pod.name.as_str()),
            ("csi.storage.k8s.io/pod.namespace", pod.namespace.as_str()),
            ("csi.storage.k8s.io/pod.uid", pod.uid.as_str()),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                pod.service_account.as_str(),
            ),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ] {
            context.insert(key.to_string(), value.to_string());
        }
        Volume {
            pod: pod.clone(),
            volume_id: format!("csi-{}", hex::encode(digest.as_ref())),
            target_path: self
                .root
                .join("pods")
                .join(&pod.uid)
                .join("volumes/kubernetes.io~csi")
                .join(volume_name)
                .join("mount"),
            context,
        }
    }

    /// NodePublishVolume, after creating the parent directory as the kubelet
    /// does (the plugin creates `mount` itself).
    pub async fn publish(&mut self, volume: &Volume) -> Result<(), tonic::Status> {
        if let Some(parent) = volume.target_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| tonic::Status::internal(format!("kubelet: {e}")))?;
        }
        let request = NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            target_path: volume.target_path.display().to_string(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: true,
            volume_context: volume.context.clone(),
            ..Default::default()
        };
        self.node.node_publish_volume(request).await.map(|_| ())
    }

    pub async fn unpublish(&mut self, volume: &Volume) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                target_path: volume.target_path.display().to_string(),
            })
            .await
            .map(|_| ())
    }
}
