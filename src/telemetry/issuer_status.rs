//! `certmanager_issuer_ready_status{name,namespace,condition}` and
//! `certmanager_clusterissuer_ready_status{name,condition}`, read at scrape
//! time from the issuers loop's own caches, as cert-manager's collectors
//! read its listers: every issuer of the cluster (whatever its type) has
//! one series per condition value, 1 for its Ready condition's status
//! (Unknown when it has none) and 0 for the others, and an issuer that is
//! deleted is gone at the next scrape. Before the loop runs (a standby
//! replica) there are no series.

use std::sync::{Arc, RwLock};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::metrics::ReadyCondition;
use crate::api::conditions::types;
use crate::api::{ClusterIssuer, Issuer, IssuerCondition};

/// The caches the issuers loop fills in once it runs.
#[derive(Clone, Debug, Default)]
pub struct IssuerStores {
    issuers: Arc<RwLock<Option<Store<Issuer>>>>,
    cluster_issuers: Arc<RwLock<Option<Store<ClusterIssuer>>>>,
}

impl IssuerStores {
    pub fn set_issuers(&self, store: Store<Issuer>) {
        *self.issuers.write().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    pub fn set_cluster_issuers(&self, store: Store<ClusterIssuer>) {
        *self
            .cluster_issuers
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(store);
    }
}

/// The Ready condition's status, as the `condition` label names it.
fn ready_of(conditions: &[IssuerCondition]) -> ReadyCondition {
    conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map_or(ReadyCondition::Unknown, |c| {
            ReadyCondition::from_status(c.status.as_str())
        })
}

/// One gauge per condition value for each labelled issuer.
fn encode_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    issuers: Vec<(Vec<(&'static str, String)>, ReadyCondition)>,
) -> Result<(), std::fmt::Error> {
    if issuers.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, ready) in issuers {
        for condition in ReadyCondition::ALL {
            let mut set = labels.clone();
            set.push(("condition", condition.as_str().to_owned()));
            let gauge = ConstGauge::new(i64::from(condition == ready));
            gauge.encode(family.encode_family(&set)?)?;
        }
    }
    Ok(())
}

/// What the collector needs of an issuer kind.
trait Labelled: kube::Resource + Clone {
    fn labels(&self) -> Vec<(&'static str, String)>;
    fn conditions(&self) -> &[IssuerCondition];
}

impl Labelled for Issuer {
    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.metadata.name.clone().unwrap_or_default()),
            (
                "namespace",
                self.metadata.namespace.clone().unwrap_or_default(),
            ),
        ]
    }
    fn conditions(&self) -> &[IssuerCondition] {
        self.status
            .as_ref()
            .map(|s| s.conditions())
            .unwrap_or_default()
    }
}

impl Labelled for ClusterIssuer {
    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![("name", self.metadata.name.clone().unwrap_or_default())]
    }
    fn conditions(&self) -> &[IssuerCondition] {
        self.status
            .as_ref()
            .map(|s| s.conditions())
            .unwrap_or_default()
    }
}

/// Each cached issuer's labels and readiness, or nothing before the loop
/// runs.
fn rows<K>(slot: &RwLock<Option<Store<K>>>) -> Vec<(Vec<(&'static str, String)>, ReadyCondition)>
where
    K: Labelled + kube::Resource<DynamicType = ()> + 'static,
{
    slot.read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|store| {
            store
                .state()
                .iter()
                .map(|i| (i.labels(), ready_of(i.conditions())))
                .collect()
        })
        .unwrap_or_default()
}

impl Collector for IssuerStores {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_family(
            &mut encoder,
            "certmanager_issuer_ready_status",
            "The ready status of the Issuer.",
            rows(&self.issuers),
        )?;
        encode_family(
            &mut encoder,
            "certmanager_clusterissuer_ready_status",
            "The ready status of the ClusterIssuer.",
            rows(&self.cluster_issuers),
        )
    }
}
