//! The controller suites' environment: an API server (the backend
//! `CERT_CSI_TEST_API` chooses), the namespaces a suite needs, and one or
//! more instances of cert-csi's controller running in process.

use std::time::Duration;

use cert_csi::controller::{ControllerOptions, Health};
use cert_csi::shutdown::CancellationToken;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::real::ApiServer;

/// How long a suite waits for the controller to reach a state.
pub const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(20);

/// Controllers running against an API server; both stop when dropped.
pub struct ControllerEnv {
    pub client: Client,
    token: CancellationToken,
    controllers: Vec<JoinHandle<()>>,
    _server: ApiServer,
}

impl ControllerEnv {
    /// Starts the API server, creates `namespaces`, and starts `instances`
    /// controllers, each with the defaults for `cluster_namespace` as
    /// `configure` changes them. `watch_window` sizes the sandbox's event
    /// history (the real server keeps its own).
    pub async fn start(
        cluster_namespace: &str,
        namespaces: &[&str],
        instances: usize,
        watch_window: usize,
        configure: impl Fn(&mut ControllerOptions),
    ) -> ControllerEnv {
        let (server, client) = ApiServer::start(watch_window).await;
        for name in namespaces {
            create_namespace(&client, name).await;
        }
        let token = CancellationToken::new();
        let controllers = (0..instances)
            .map(|_| {
                let mut options = ControllerOptions::new(cluster_namespace);
                configure(&mut options);
                tokio::spawn(cert_csi::controller::run(
                    client.clone(),
                    options,
                    Health::default(),
                    token.clone(),
                ))
            })
            .collect();
        ControllerEnv {
            client,
            token,
            controllers,
            _server: server,
        }
    }

    /// Cancels the controllers and checks that every loop stops promptly.
    pub async fn stop(mut self) {
        self.token.cancel();
        for handle in std::mem::take(&mut self.controllers) {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("controller stops within 10s of cancellation")
                .expect("controller task did not panic");
        }
    }

    /// Waits until `done` holds for object `name` of `api` and returns it;
    /// fails the test with the object as it is after [`CONTROLLER_TIMEOUT`].
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        done: impl Fn(&K) -> bool + Send + 'static,
    ) -> K
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let found = tokio::time::timeout(
            CONTROLLER_TIMEOUT,
            await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&done)),
        )
        .await;
        let current = api.get(name).await.unwrap();
        assert!(
            matches!(found, Ok(Ok(Some(_)))),
            "{name} never became {what}: {current:?}"
        );
        current
    }
}

impl Drop for ControllerEnv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}
