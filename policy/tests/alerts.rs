//! Alert sinks against a real HTTP server on 127.0.0.1 started by the test: Falco payload
//! fields, bounded retries, suppression counting; and the JSON lines file sink.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use driftguard_policy::{
    Action, Alerts, AlertsConfig, Decision, DriftEvent, HttpSinkConfig, Metrics, Outcome,
    ParentProcess, Scope, VerdictClass,
};

/// A falcosidekick stand-in: records bodies, fails the first `fail_first` requests with 503,
/// and waits `delay` before each answer.
struct Server {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

async fn server(fail_first: usize, delay: Duration) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b, h) = (bodies.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (b, h) = (b.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (b, h) = (b.clone(), h.clone());
                        async move {
                            assert_eq!(req.method(), "POST");
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            tokio::time::sleep(delay).await;
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            if n < fail_first {
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            } else {
                                let v: Value = serde_json::from_slice(&body).expect("json body");
                                b.lock().expect("lock").push(v);
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, bodies, hits }
}

fn event(pid: u32) -> DriftEvent {
    let decision = Decision {
        rule: "shop-block".into(),
        action: Action::Block,
        class: VerdictClass::NewFile,
        outcome: Outcome::Deny,
        allow_listed: false,
    };
    let scope = Scope {
        cluster: "prod-eu".into(),
        namespace: "shop".into(),
        pod_name: "web-1".into(),
        container_name: "nginx".into(),
        image_name: "registry.local/nginx:1".into(),
        ..Scope::default()
    };
    let mut e = DriftEvent::from_decision(&decision, &scope);
    e.container_id = "abc123".into();
    e.node = "node-1".into();
    e.pid = pid;
    e.path = "/tmp/payload".into();
    e.set_argv(["/tmp/payload", "--connect", "10.0.0.1"]);
    e.set_hash([0xab; 32]);
    e.parent = Some(ParentProcess {
        pid: 1,
        exe: Some("/bin/sh".into()),
    });
    e
}

fn http_config(addr: SocketAddr, attempts: u32, queue: usize) -> AlertsConfig {
    let mut http = HttpSinkConfig::new(&format!("http://{addr}/"));
    http.max_attempts = attempts;
    http.backoff = Duration::from_millis(20);
    http.timeout = Duration::from_secs(2);
    http.queue_capacity = queue;
    AlertsConfig {
        http: Some(http),
        hostname: "node-1".into(),
        ..AlertsConfig::default()
    }
}

#[tokio::test]
async fn falco_payload_fields_and_retry() {
    let srv = server(2, Duration::ZERO).await;
    let metrics = Metrics::new();
    let (alerts, tasks) = Alerts::start(http_config(srv.addr, 3, 16), Some(metrics.clone()))
        .await
        .expect("start");
    assert!(alerts.send(event(4242)));
    drop(alerts);
    tasks.join().await;

    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        3,
        "two 503 answers, then success"
    );
    let bodies = srv.bodies.lock().expect("lock");
    assert_eq!(bodies.len(), 1);
    let p = &bodies[0];
    for key in [
        "output",
        "priority",
        "rule",
        "time",
        "output_fields",
        "source",
        "hostname",
    ] {
        assert!(p.get(key).is_some(), "missing {key} in {p}");
    }
    assert_eq!(p["priority"], "Critical");
    assert_eq!(p["rule"], "Drift blocked");
    assert_eq!(p["source"], "driftguard");
    assert_eq!(p["hostname"], "node-1");
    assert!(p["time"].as_str().expect("time").ends_with('Z'));
    assert!(p["output"]
        .as_str()
        .expect("output")
        .contains("/tmp/payload"));
    let f = &p["output_fields"];
    assert_eq!(f["proc.pid"], 4242);
    assert_eq!(f["proc.exepath"], "/tmp/payload");
    assert_eq!(f["proc.cmdline"], "/tmp/payload --connect 10.0.0.1");
    assert_eq!(f["proc.ppid"], 1);
    assert_eq!(f["proc.pexepath"], "/bin/sh");
    assert_eq!(f["k8s.ns.name"], "shop");
    assert_eq!(f["k8s.pod.name"], "web-1");
    assert_eq!(f["container.id"], "abc123");
    assert_eq!(f["container.image"], "registry.local/nginx:1");
    assert_eq!(f["driftguard.rule"], "shop-block");
    assert_eq!(f["driftguard.class"], "new file");
    assert_eq!(f["driftguard.hash"], "ab".repeat(32));
    assert!(metrics
        .render()
        .contains("driftguard_alerts_delivered_total{sink=\"http\"} 1"));
}

#[tokio::test]
async fn retries_are_bounded() {
    let srv = server(usize::MAX, Duration::ZERO).await;
    let metrics = Metrics::new();
    let (alerts, tasks) = Alerts::start(http_config(srv.addr, 2, 16), Some(metrics.clone()))
        .await
        .expect("start");
    alerts.send(event(1));
    drop(alerts);
    tasks.join().await;
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2, "max_attempts = 2");
    assert!(metrics
        .render()
        .contains("driftguard_alerts_failed_total{sink=\"http\"} 1"));
}

#[tokio::test]
async fn flood_is_suppressed_and_reported() {
    const SENT: u64 = 200;
    let srv = server(0, Duration::from_millis(30)).await;
    let (alerts, tasks) = Alerts::start(http_config(srv.addr, 1, 4), None)
        .await
        .expect("start");
    for pid in 0..SENT {
        alerts.send(event(pid as u32));
    }
    let suppressed = alerts.suppressed();
    assert!(
        suppressed > 0 && suppressed < SENT,
        "suppressed {suppressed}"
    );
    drop(alerts);
    tasks.join().await;

    let bodies = srv.bodies.lock().expect("lock");
    let delivered = bodies
        .iter()
        .filter(|b| b["rule"] == "Drift blocked")
        .count() as u64;
    let reported: u64 = bodies
        .iter()
        .filter(|b| b["rule"] == "Alerts suppressed")
        .map(|b| {
            b["output_fields"]["driftguard.suppressed"]
                .as_u64()
                .expect("count")
        })
        .sum();
    assert_eq!(reported, suppressed, "every suppressed alert is reported");
    assert_eq!(delivered + suppressed, SENT);
    let notice = bodies
        .iter()
        .find(|b| b["rule"] == "Alerts suppressed")
        .expect("notice");
    assert!(notice["output"]
        .as_str()
        .expect("output")
        .contains(&format!("{suppressed} alerts suppressed")));
}

#[tokio::test]
async fn json_lines_file_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/events.jsonl");
    let config = AlertsConfig {
        file: Some(path.clone()),
        ..AlertsConfig::default()
    };
    let (alerts, tasks) = Alerts::start(config, None).await.expect("start");
    alerts.send(event(7));
    alerts.send(event(8));
    drop(alerts);
    tasks.join().await;
    let text = std::fs::read_to_string(&path).expect("read");
    let events: Vec<DriftEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], {
        let mut e = event(7);
        e.time = events[0].time.clone();
        e
    });
    let v: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
    assert_eq!(v["severity"], "high");
    assert_eq!(v["class"], "new file");
    assert_eq!(v["outcome"], "deny");
    assert_eq!(v["parent"]["exe"], "/bin/sh");
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let metrics = Metrics::new();
    metrics.exec_seen();
    let d = Decision {
        rule: "r".into(),
        action: Action::Alert,
        class: VerdictClass::ModeDrift,
        outcome: Outcome::Alert,
        allow_listed: false,
    };
    metrics.record_decision(&d, Duration::from_micros(30));
    let addr = metrics
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("hs");
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = tx.send_request(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("utf8");
    assert!(text.contains("driftguard_execs_seen_total 1"), "{text}");
    assert!(
        text.contains("driftguard_verdicts_total{class=\"mode drift\",outcome=\"alert\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("driftguard_decision_latency_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn file_sink_rotates_by_size_and_keeps_the_newest_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    // A file left by an earlier run counts towards the first rotation.
    std::fs::write(&path, "{\"old\":true}\n").expect("earlier file");
    let line_len = serde_json::to_vec(&event(1)).expect("json").len() as u64 + 1;
    let config = AlertsConfig {
        file: Some(path.clone()),
        file_max_bytes: 3 * line_len,
        file_keep: 2,
        ..AlertsConfig::default()
    };
    let (alerts, tasks) = Alerts::start(config, None).await.expect("start");
    for pid in 1..=10 {
        // One at a time: a full queue would suppress events and change the line count.
        assert!(alerts.send(event(pid)));
        tokio::task::yield_now().await;
    }
    drop(alerts);
    tasks.join().await;
    let pids = |p: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("json")["pid"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect()
    };
    let numbered = |n: u32| dir.path().join(format!("events.jsonl.{n}"));
    // old + 1 + 2 | 3 4 5 | 6 7 8 | 9 10: with two rotated files kept, the first is gone.
    assert_eq!(pids(&path), vec![9, 10]);
    assert_eq!(pids(&numbered(1)), vec![6, 7, 8]);
    assert_eq!(pids(&numbered(2)), vec![3, 4, 5]);
    assert!(!numbered(3).exists(), "only two rotated files are kept");
    for file in [path.clone(), numbered(1), numbered(2)] {
        let size = std::fs::metadata(&file).expect("size").len();
        assert!(size <= 3 * line_len, "{} has {size} bytes", file.display());
    }
}
