//! CSI Node over gRPC: translates the kubelet's protobuf requests into the
//! node lifecycle's terms (`crate::node`) and its errors back into gRPC
//! statuses. No lifecycle logic lives here.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::proto::node_server::Node;
use super::proto::volume_capability::AccessType;
use super::proto::*;
use crate::node::{PublishError, PublishRequest, VolumeManager};

/// The CSI Node service over a shared [`VolumeManager`].
pub struct NodeService {
    manager: Arc<VolumeManager>,
}

impl NodeService {
    pub fn new(manager: Arc<VolumeManager>) -> Self {
        NodeService { manager }
    }
}

/// The domain request, or why the capability cannot be served: cert-csi
/// serves mount volumes only.
fn publish_request(req: NodePublishVolumeRequest) -> Result<PublishRequest, PublishError> {
    let volume_mount_group = match req
        .volume_capability
        .as_ref()
        .and_then(|c| c.access_type.as_ref())
    {
        Some(AccessType::Mount(mount)) => {
            Some(mount.volume_mount_group.clone()).filter(|g| !g.is_empty())
        }
        Some(AccessType::Block(_)) => {
            return Err(PublishError::Capability("block access is not supported"));
        }
        None => return Err(PublishError::Capability("a mount capability is required")),
    };
    Ok(PublishRequest {
        volume_id: req.volume_id,
        target_path: req.target_path,
        readonly: req.readonly,
        volume_mount_group,
        context: req.volume_context,
    })
}

fn status(code: Code, message: String, volume_id: &str) -> Status {
    // The kubelet shows this text in the pod's events; also log it here so
    // the node's own logs explain every failure.
    tracing::warn!(volume_id, ?code, %message, "request failed");
    Status::new(code, message)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        let outcome = match publish_request(req) {
            Ok(req) => self.manager.publish(req).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(Response::new(NodePublishVolumeResponse {})),
            Err(e) => Err(status(e.code(), e.to_string(), &volume_id)),
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        match self
            .manager
            .unpublish(&req.volume_id, &req.target_path)
            .await
        {
            Ok(()) => Ok(Response::new(NodeUnpublishVolumeResponse {})),
            Err(e) => Err(status(e.code(), e.to_string(), &req.volume_id)),
        }
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{Rpc, Type, rpc};
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::VolumeMountGroup as i32,
                })),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.manager.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeStageVolume: cert-csi serves ephemeral inline volumes, which have no staging",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeUnstageVolume: cert-csi serves ephemeral inline volumes, which have no staging",
        ))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented(
            "NodeGetVolumeStats is not offered (no GET_VOLUME_STATS capability)",
        ))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeExpandVolume: certificate volumes cannot be expanded",
        ))
    }
}
