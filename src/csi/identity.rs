//! CSI Identity: who the plugin is, and whether it can serve yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use super::proto::identity_server::Identity;
use super::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};

/// Set once the plugin can do its job (API reachable, node state recovered).
/// Shared with the health endpoints so Probe and `/readyz` never disagree.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl crate::telemetry::ReadinessCheck for Readiness {
    fn check(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("node plugin still starting (node state recovery or API check not done)".into())
        }
    }
}

pub struct IdentityService {
    driver_name: String,
    readiness: Readiness,
}

impl IdentityService {
    pub fn new(driver_name: impl Into<String>, readiness: Readiness) -> Self {
        Self {
            driver_name: driver_name.into(),
            readiness,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    /// A node-only plugin for ephemeral volumes has no controller service and
    /// no topology, so it advertises no plugin capabilities.
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.readiness.is_ready()),
        }))
    }
}
