//! Prometheus metrics: execs seen, verdicts by class and outcome, decision latency, policy
//! reloads and alert delivery, served as Prometheus text on a loopback address by default.
//!
//! [`Metrics`] is a cheap-clone handle; every counter update is a relaxed atomic add, so the
//! supervisor's hot path can record without locks. Label values come from fixed vocabularies
//! (verdict classes, outcomes, sink names), never from container-controlled strings, so a
//! hostile container cannot grow the series set.
//!
//! Limits: the endpoint speaks plain HTTP/1.1 without authentication; bind it to loopback or
//! put a proxy in front when scraping from another host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::policy::Decision;
use crate::verdict::{Outcome, VerdictClass};

/// Every outcome, in the order of the verdict counters.
const OUTCOMES: [Outcome; 3] = [Outcome::Allow, Outcome::Alert, Outcome::Deny];

/// Where the metrics endpoint listens unless configured otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    class: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

struct Inner {
    registry: Registry,
    execs_seen: Counter,
    /// The counters of the `verdicts` family, one per (class, outcome), created up front so that the
    /// exec path increments an atomic without a label lookup: index
    /// `class as usize * OUTCOMES.len() + outcome position`.
    verdict_counters: Vec<Counter>,
    decision_latency: Histogram,
    policy_reloads: Family<ResultLabels, Counter>,
    alerts_delivered: Family<SinkLabels, Counter>,
    alerts_failed: Family<SinkLabels, Counter>,
    alerts_suppressed: Family<SinkLabels, Counter>,
}

/// The daemon's metrics (cheap to clone; all clones share the same counters).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `driftguard_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("driftguard");
        let execs_seen = Counter::default();
        let verdicts = Family::<VerdictLabels, Counter>::default();
        let verdict_counters = VerdictClass::ALL
            .iter()
            .flat_map(|class| OUTCOMES.map(|outcome| (*class, outcome)))
            .map(|(class, outcome)| {
                let labels = VerdictLabels {
                    class: class.as_str(),
                    outcome: outcome_str(outcome),
                };
                verdicts.get_or_create(&labels).clone()
            })
            .collect();
        let decision_latency = Histogram::new(exponential_buckets(1e-6, 4.0, 12));
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        let alerts_delivered = Family::<SinkLabels, Counter>::default();
        let alerts_failed = Family::<SinkLabels, Counter>::default();
        let alerts_suppressed = Family::<SinkLabels, Counter>::default();
        registry.register("execs_seen", "Exec notifications seen", execs_seen.clone());
        registry.register(
            "verdicts",
            "Decisions by verdict class and outcome",
            verdicts.clone(),
        );
        registry.register(
            "decision_latency_seconds",
            "Time from exec notification to answer",
            decision_latency.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads by result",
            policy_reloads.clone(),
        );
        let delivered = alerts_delivered.clone();
        registry.register("alerts_delivered", "Alerts delivered per sink", delivered);
        registry.register(
            "alerts_failed",
            "Alerts lost after retries",
            alerts_failed.clone(),
        );
        let suppressed = alerts_suppressed.clone();
        registry.register(
            "alerts_suppressed",
            "Alerts dropped by a full sink queue",
            suppressed,
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                execs_seen,
                verdict_counters,
                decision_latency,
                policy_reloads,
                alerts_delivered,
                alerts_failed,
                alerts_suppressed,
            }),
        }
    }

    /// Counts one exec notification.
    pub fn exec_seen(&self) {
        self.inner.execs_seen.inc();
    }

    /// Counts one decision and records how long it took.
    pub fn record_decision(&self, decision: &Decision, latency: Duration) {
        let outcome = OUTCOMES
            .iter()
            .position(|o| *o == decision.outcome)
            .unwrap_or_default();
        let index = decision.class as usize * OUTCOMES.len() + outcome;
        if let Some(counter) = self.inner.verdict_counters.get(index) {
            counter.inc();
        }
        self.inner.decision_latency.observe(latency.as_secs_f64());
    }

    /// Counts one policy reload attempt.
    pub fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.inner
            .policy_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn alert_delivered(&self, sink: &'static str) {
        self.inner
            .alerts_delivered
            .get_or_create(&SinkLabels { sink })
            .inc();
    }

    pub(crate) fn alert_failed(&self, sink: &'static str) {
        self.inner
            .alerts_failed
            .get_or_create(&SinkLabels { sink })
            .inc();
    }

    pub(crate) fn alert_suppressed(&self, sink: &'static str) {
        self.inner
            .alerts_suppressed
            .get_or_create(&SinkLabels { sink })
            .inc();
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave a partial page.
        let _ = prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Binds `addr` and serves `GET /metrics` in a background task of the current Tokio
    /// runtime. Returns the bound address (useful with port 0).
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "metrics endpoint listening");
        let metrics = self.clone();
        tokio::spawn(async move { metrics.accept_loop(listener).await });
        Ok(local)
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let page = metrics.respond(&req);
                    async move { Ok::<_, Infallible>(page) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "metrics connection ended with an error");
                }
            });
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
            ("GET", "/metrics") => (StatusCode::OK, prometheus_text::CONTENT_TYPE, self.render()),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics\n".into(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}

/// An outcome's name as metrics and alerts spell it.
pub fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::Alert => "alert",
        Outcome::Deny => "deny",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_and_outcome_counts_in_its_own_series() {
        let metrics = Metrics::new();
        for (n, class) in VerdictClass::ALL.iter().enumerate() {
            assert_eq!(
                *class as usize, n,
                "VerdictClass::ALL is in declaration order"
            );
            for (k, outcome) in OUTCOMES.iter().enumerate() {
                let decision = Decision {
                    rule: "r".into(),
                    action: crate::Action::Alert,
                    class: *class,
                    outcome: *outcome,
                    allow_listed: false,
                };
                // A distinct count per series: n * 3 + k + 1 decisions.
                for _ in 0..=(n * OUTCOMES.len() + k) {
                    metrics.record_decision(&decision, Duration::from_micros(1));
                }
            }
        }
        let text = metrics.render();
        for (n, class) in VerdictClass::ALL.iter().enumerate() {
            for (k, outcome) in OUTCOMES.iter().enumerate() {
                let line = format!(
                    "driftguard_verdicts_total{{class=\"{}\",outcome=\"{}\"}} {}",
                    class.as_str(),
                    outcome_str(*outcome),
                    n * OUTCOMES.len() + k + 1
                );
                assert!(text.contains(&line), "missing {line} in\n{text}");
            }
        }
    }
}
