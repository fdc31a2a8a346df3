//! A stand-in for the kubelet's side of CSI, where no kubelet runs: the
//! demo, the benchmarks and the tests. It creates pods in the API and sends
//! NodePublishVolume and NodeUnpublishVolume over the plugin's real unix
//! socket with exactly the volume id, target path and volume context a
//! kubelet sends for a CSI inline volume (reference: csi-driver-compat.md
//! §1). One simulator for all three, so what the demo shows, what the
//! benchmarks time and what the tests judge are the same calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::transport::Channel;

use super::proto::node_client::NodeClient;
use super::proto::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode,
};
use super::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use crate::volume::kubelet as keys;

/// A pod as the API server stored it.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// The access type sent with a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// A mount capability; `mount_group` is the pod's fsGroup when set.
    Mount {
        mount_group: Option<u32>,
    },
    Block,
    Missing,
}

/// One CSI inline volume of one pod, as the kubelet publishes it. Fields
/// are public so a test can break one thing at a time.
#[derive(Clone, Debug)]
pub struct Volume {
    pub pod: PodRef,
    pub volume_name: String,
    pub volume_id: String,
    /// As the kubelet sends it.
    pub target_path: String,
    pub readonly: bool,
    pub capability: Capability,
    pub context: HashMap<String, String>,
}

/// The kubelet's volume id for an inline volume: `csi-` and the hex
/// SHA-256 of the pod uid followed by the volume name.
pub fn volume_id(pod_uid: &str, volume_name: &str) -> String {
    let input = format!("{pod_uid}{volume_name}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    format!("csi-{}", hex::encode(digest.as_ref()))
}

/// The volume the kubelet rooted at `root` would publish for `volume_name`
/// of `pod`: the user's `attributes` plus what the kubelet adds.
pub fn volume(root: &Path, pod: &PodRef, volume_name: &str, attributes: &[(&str, &str)]) -> Volume {
    let mut context: HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (key, value) in [
        (keys::POD_NAME, pod.name.as_str()),
        (keys::POD_NAMESPACE, pod.namespace.as_str()),
        (keys::POD_UID, pod.uid.as_str()),
        (keys::SERVICE_ACCOUNT_NAME, pod.service_account.as_str()),
        (keys::EPHEMERAL, "true"),
    ] {
        context.insert(key.to_string(), value.to_string());
    }
    let target = root
        .join("pods")
        .join(&pod.uid)
        .join("volumes")
        .join("kubernetes.io~csi")
        .join(volume_name)
        .join("mount");
    Volume {
        pod: pod.clone(),
        volume_name: volume_name.to_string(),
        volume_id: volume_id(&pod.uid, volume_name),
        target_path: target.display().to_string(),
        readonly: true,
        capability: Capability::Mount { mount_group: None },
        context,
    }
}

impl Volume {
    pub fn target(&self) -> PathBuf {
        PathBuf::from(&self.target_path)
    }

    /// A file as the pod sees it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.target().join(name)
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.context.insert(key.to_string(), value.to_string());
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.context.remove(key);
        self
    }

    /// Creates the target's parent directory, as the kubelet does before a
    /// publish (the plugin creates `mount` itself).
    pub fn create_parent(&self) -> std::io::Result<()> {
        match self.target().parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
    }

    pub fn publish_request(&self) -> NodePublishVolumeRequest {
        let access_type = match &self.capability {
            Capability::Mount { mount_group } => Some(AccessType::Mount(MountVolume {
                volume_mount_group: mount_group.map(|g| g.to_string()).unwrap_or_default(),
                ..Default::default()
            })),
            Capability::Block => Some(AccessType::Block(BlockVolume {})),
            Capability::Missing => None,
        };
        NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target_path.clone(),
            volume_capability: access_type.map(|a| VolumeCapability {
                access_type: Some(a),
                access_mode: Some(AccessMode {
                    mode: access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: self.readonly,
            volume_context: self.context.clone(),
            ..Default::default()
        }
    }

    pub fn unpublish_request(&self) -> NodeUnpublishVolumeRequest {
        NodeUnpublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target_path.clone(),
        }
    }
}

/// The simulated kubelet of one node.
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
            node: super::client::node(socket).await?,
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

    /// The volume this kubelet would publish for `volume_name` of `pod`.
    pub fn volume(&self, pod: &PodRef, volume_name: &str, attributes: &[(&str, &str)]) -> Volume {
        volume(&self.root, pod, volume_name, attributes)
    }

    /// NodePublishVolume, after creating the target's parent directory.
    pub async fn publish(&mut self, volume: &Volume) -> Result<(), tonic::Status> {
        volume
            .create_parent()
            .map_err(|e| tonic::Status::internal(format!("kubelet: {e}")))?;
        self.node
            .node_publish_volume(volume.publish_request())
            .await
            .map(|_| ())
    }

    pub async fn unpublish(&mut self, volume: &Volume) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(volume.unpublish_request())
            .await
            .map(|_| ())
    }
}
