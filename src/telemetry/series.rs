//! The node's per-object series, kept compact and rendered at scrape time.
//!
//! A heap profile at 10,000 volumes (heaptrack, `hack/bench --only p3`)
//! showed these series were the node's largest consumer of memory, about
//! 14 MiB of a 25 MiB heap: prometheus-client's `Family` keeps an owned label
//! struct and an `Arc`'d atomic per series, and the request family held three
//! series (one per condition) per request, each with its own copy of the
//! name and namespace, next to a bookkeeping map with yet another copy.
//!
//! Here one map entry per volume and one per request hold the label values
//! once, and a [`Collector`] writes every series from them on each scrape.
//! Scrapes are rare (seconds apart) and the write is linear, so nothing is
//! lost by computing the text then. The managed volume and request counts
//! are the sizes of the same maps, so they are written here too rather than
//! kept in gauges of their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::metrics::{ReadyCondition, lock};

pub(crate) const EXPIRATION: &str =
    "certmanager_csi_certificate_request_expiration_timestamp_seconds";
pub(crate) const RENEWAL: &str = "certmanager_csi_certificate_request_renewal_timestamp_seconds";
pub(crate) const READY: &str = "certmanager_csi_certificate_request_ready_status";

/// One volume's label values and timestamps.
#[derive(Debug, Clone)]
struct VolumeEntry {
    pod_namespace: Box<str>,
    pod_name: Box<str>,
    not_after: f64,
    renew_at: f64,
}

/// Per-volume and per-request state behind the node's per-object series.
/// Cheap to clone; clones share the maps.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSeries {
    /// Volume id hash (16 hex characters) → the volume's entry.
    volumes: Arc<Mutex<BTreeMap<Box<str>, VolumeEntry>>>,
    /// (namespace, name) of each request the node keeps → its Ready status.
    requests: Arc<Mutex<BTreeMap<RequestName, ReadyCondition>>>,
}

/// (namespace, name) of a CertificateRequest.
type RequestName = (Box<str>, Box<str>);

impl NodeSeries {
    /// Sets the volume's series.
    pub(crate) fn set_volume(
        &self,
        id_hash: &str,
        pod_namespace: &str,
        pod_name: &str,
        not_after: f64,
        renew_at: f64,
    ) {
        // Replacing the whole entry also drops stale pod labels if the
        // kubelet ever reused a volume id for another pod.
        lock(&self.volumes).insert(
            id_hash.into(),
            VolumeEntry {
                pod_namespace: pod_namespace.into(),
                pod_name: pod_name.into(),
                not_after,
                renew_at,
            },
        );
    }

    /// Drops the volume's series.
    pub(crate) fn remove_volume(&self, id_hash: &str) {
        lock(&self.volumes).remove(id_hash);
    }

    /// Sets a request's Ready status, adding the request if it is new.
    pub(crate) fn set_request(&self, namespace: &str, name: &str, ready: ReadyCondition) {
        lock(&self.requests).insert((namespace.into(), name.into()), ready);
    }

    /// Drops a request's series.
    pub(crate) fn remove_request(&self, namespace: &str, name: &str) {
        lock(&self.requests).remove(&(Box::from(namespace), Box::from(name)));
    }
}

/// An unlabelled gauge with the value `value`.
fn encode_count(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let count = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    count.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for NodeSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The lock is held while the text is written; publishes wait at most
        // one scrape's encoding (about a millisecond per thousand volumes).
        {
            let volumes = lock(&self.volumes);
            for (name, help, value) in [
                (
                    EXPIRATION,
                    "notAfter of the certificate in each volume, in Unix seconds",
                    (|v: &VolumeEntry| v.not_after) as fn(&VolumeEntry) -> f64,
                ),
                (
                    RENEWAL,
                    "When each volume's certificate is scheduled for renewal, in Unix seconds",
                    |v: &VolumeEntry| v.renew_at,
                ),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (hash, volume) in volumes.iter() {
                    let labels = [
                        ("volume_id_hash", &**hash),
                        ("pod_namespace", &*volume.pod_namespace),
                        ("pod_name", &*volume.pod_name),
                    ];
                    ConstGauge::new(value(volume)).encode(family.encode_family(&labels)?)?;
                }
            }
            encode_count(
                &mut encoder,
                "certmanager_csi_managed_volume_count",
                "Volumes the node plugin currently manages",
                volumes.len(),
            )?;
        }
        let requests = lock(&self.requests);
        let mut family = encoder.encode_descriptor(
            READY,
            "Ready condition of each CertificateRequest the node keeps: 1 for the current condition, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, name), current) in requests.iter() {
            for condition in ReadyCondition::ALL {
                let labels = (
                    [("name", &**name), ("namespace", &**namespace)],
                    [("condition", condition)],
                );
                ConstGauge::new(i64::from(condition == *current))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        encode_count(
            &mut encoder,
            "certmanager_csi_managed_certificate_request_count",
            "CertificateRequests the node plugin currently keeps in the API",
            requests.len(),
        )
    }
}
