//! A client-side limit on requests to the API server: csi-driver's
//! `--kube-api-qps` and `--kube-api-burst`.
//!
//! csi-driver hands both to client-go, whose token bucket every request
//! passes before it is sent (a watch counts once, when it starts). Here the
//! same bucket ([`TokenBucket`]) sits in the kube client's tower stack.
//! A QPS of 0 means client-go's default in csi-driver (5 per second, burst
//! 10); cert-csi has no such default and sends unlimited, because its own
//! `--max-request-rate` already paces what a node creates, and a default
//! of 5 per second would slow every publish behind Events and lookups.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::ratelimit::TokenBucket;

/// `--kube-api-qps` and `--kube-api-burst`; `None` when QPS is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiRate {
    pub qps: f32,
    pub burst: u32,
}

impl ApiRate {
    /// The limit the two flags ask for. A burst of 0 with a QPS set takes
    /// client-go's rule: a QPS above 0 needs a burst of at least 1, so 0
    /// becomes 1.
    pub fn from_flags(qps: f32, burst: u32) -> Option<ApiRate> {
        (qps > 0.0).then_some(ApiRate {
            qps,
            burst: burst.max(1),
        })
    }
}

/// Checks `--kube-api-qps`: a finite number, 0 or more.
pub fn parse_qps(text: &str) -> Result<f32, String> {
    let qps: f32 = text.trim().parse().map_err(|_| {
        format!(
            "not a number: {:?}; give requests per second, such as 20 or 0.5 (0: no client-side limit)",
            crate::volume::short_quote(text)
        )
    })?;
    if !qps.is_finite() || qps < 0.0 {
        return Err(format!(
            "{qps} requests per second is not allowed; give 0 (no client-side limit) or more"
        ));
    }
    Ok(qps)
}

/// A client for `config`, limited to `rate` when there is one.
pub fn client(config: kube::Config, rate: Option<ApiRate>) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let builder =
        kube::client::ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    Ok(match rate {
        None => builder.build(),
        Some(rate) => builder.with_layer(&ApiRateLayer::new(rate)).build(),
    })
}

/// Puts [`ApiRateLimited`] in front of a service.
#[derive(Debug, Clone)]
pub struct ApiRateLayer {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl ApiRateLayer {
    pub fn new(rate: ApiRate) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                rate.burst,
                f64::from(rate.qps),
                now(),
            ))),
        }
    }
}

impl<S> Layer<S> for ApiRateLayer {
    type Service = ApiRateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiRateLimited {
            inner,
            bucket: self.bucket.clone(),
            sleep: None,
            granted: false,
        }
    }
}

/// Not ready until the bucket grants a token; each call spends it. kube
/// puts a `Buffer` in front of the stack, so one task drives readiness and
/// requests take tokens in the order they arrive.
pub struct ApiRateLimited<S> {
    inner: S,
    bucket: Arc<Mutex<TokenBucket>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    granted: bool,
}

/// Tokio's clock, so tests on a paused clock step time instead of sleeping.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl<S, R> Service<R> for ApiRateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.granted {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match crate::sync::lock(&self.bucket).try_take_above(now(), 0) {
                Ok(()) => self.granted = true,
                Err(wait) => {
                    self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.granted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    #[test]
    fn flags_follow_client_go() {
        assert_eq!(ApiRate::from_flags(0.0, 50), None);
        assert_eq!(
            ApiRate::from_flags(20.0, 0),
            Some(ApiRate {
                qps: 20.0,
                burst: 1
            })
        );
        assert_eq!(parse_qps("0.5"), Ok(0.5));
        let err = parse_qps("-1").unwrap_err();
        assert!(err.contains("0 (no client-side limit) or more"), "{err}");
        let err = parse_qps("fast").unwrap_err();
        assert!(err.contains("not a number"), "{err}");
    }

    /// On Tokio's paused clock: the burst goes at once, then one request
    /// per 1/qps, and no sooner.
    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        // The inner service only counts: what is tested is the layer's
        // pacing, which the API server cannot show on a paused clock.
        let inner = tower::service_fn(move |_: ()| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(()) }
        });
        let mut service = ApiRateLayer::new(ApiRate { qps: 4.0, burst: 3 }).layer(inner);
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst waits");
        for n in 1..=4u32 {
            service.ready().await.unwrap().call(()).await.unwrap();
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(250) * n,
                "request {} of the rate went at {elapsed:?}",
                n
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 7);
    }
}
