//! A full audit queue (`--audit-overflow`): under `refuse` (the default) new
//! exchanges get `503 audit_unavailable` and every admitted exchange is in the
//! log; under `drop` the proxy keeps serving and counts every lost record.
//! The sinks: a stdout nobody reads, a full disk (`/dev/full`), a deleted file.

use portcullis::tls_peek::synth::{hello_message, records};

use super::*;
use crate::support::client::{
    connect, echo_roundtrip, expect_closed, expect_refusal, finish, open_tunnel, read_body,
    read_head, send, send_connect,
};
use crate::support::origin::TcpEcho;

/// A fatal `internal_error` alert record: the transparent TLS listener's refusal
/// when the audit log has no room.
const INTERNAL_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

const REQUESTS_TOTAL: &str = "portcullis_requests_total";
const DROPPED: &str = "portcullis_audit_records_dropped_total";
const QUEUED: &str = "portcullis_audit_queue_records";

impl Tally {
    fn add(&mut self, other: Tally) {
        self.forbidden += other.forbidden;
        self.unavailable += other.unavailable;
    }
}

impl Spawned {
    /// Sends denied CONNECTs for `{prefix}-{i}.test`, `parallel` at a time, each on a fresh
    /// connection; each must be answered `403 not_allowed` (admitted) or `503
    /// audit_unavailable` (refused), in the refusal format, then closed.
    async fn probe(&self, prefix: &str, range: std::ops::Range<usize>, parallel: usize) -> Tally {
        let next = Arc::new(AtomicUsize::new(range.start));
        let mut tasks = JoinSet::new();
        for _ in 0..parallel {
            let (next, addr, prefix, end) = (next.clone(), self.addr, prefix.to_owned(), range.end);
            tasks.spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return tally;
                    }
                    let mut stream = connect(addr).await;
                    send_connect(&mut stream, &format!("{prefix}-{i}.test:443")).await;
                    let head = read_head(&mut stream).await;
                    match (head.status, head.header("x-portcullis-reason")) {
                        (403, Some("not_allowed")) => tally.forbidden += 1,
                        (503, Some("audit_unavailable")) => tally.unavailable += 1,
                        _ => panic!(
                            "neither 403 not_allowed nor 503 audit_unavailable:\n{}",
                            head.raw
                        ),
                    }
                    assert!(head.closes(), "no `Connection: close`:\n{}", head.raw);
                    read_body(&mut stream, &head).await;
                    expect_closed(&mut stream, WAIT).await;
                }
            });
        }
        let mut tally = Tally::default();
        while let Some(done) = tasks.join_next().await {
            tally.add(done.expect("probe task"));
        }
        tally
    }

    /// Probes in rounds of `round` until a `503 audit_unavailable`; fails after `most` requests.
    async fn probe_until_refused(
        &self,
        prefix: &str,
        round: usize,
        parallel: usize,
        most: usize,
    ) -> (Tally, usize) {
        let (mut tally, mut sent) = (Tally::default(), 0);
        while tally.unavailable == 0 {
            assert!(
                sent < most,
                "{sent} requests, none refused with 503 audit_unavailable ({tally:?})\nstderr:\n{}",
                self.stderr_text()
            );
            tally.add(self.probe(prefix, sent..sent + round, parallel).await);
            sent += round;
        }
        (tally, sent)
    }

    /// `requests_total` for `reason` (on `listener`, when given); 0 when absent.
    async fn requests(&self, reason: &str, listener: Option<&str>) -> f64 {
        let mut labels = vec![("reason", reason)];
        labels.extend(listener.map(|l| ("listener", l)));
        self.metric_with(REQUESTS_TOTAL, &labels)
            .await
            .unwrap_or(0.0)
    }
}

fn count(records: &[Value], reason: &str) -> usize {
    records.iter().filter(|r| r["reason"] == reason).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_stdout_refuses_new_exchanges_and_loses_nothing_admitted() {
    let echo = TcpEcho::start().await;
    // The default overflow (`refuse`); the queue size through its environment variable.
    // Big enough that the writer's 10 ms batching never fills it while the pipe takes lines.
    let env = [("PORTCULLIS_AUDIT_QUEUE_RECORDS", "500")];
    let mut proxy = Spawned::start("-", Sink::Read, &env, &[]).await;
    let target = format!("allowed.test:{}", echo.addr().port());
    let mut tunnel = open_tunnel(proxy.addr, &target).await;
    echo_roundtrip(&mut tunnel, b"admitted before the stall").await;

    // Nobody reads stdout: the pipe fills (~64 KiB), then the queue; then refusals start,
    // with the queue full for good (not a burst the writer is about to take).
    let (mut tally, mut sent) = (Tally::default(), 0);
    loop {
        tally.add(proxy.probe("stall", sent..sent + 100, 8).await);
        sent += 100;
        let queued = proxy.metric(QUEUED).await.unwrap_or(0.0);
        if tally.unavailable > 0 && queued >= 500.0 {
            break;
        }
        assert!(
            sent < 10_000,
            "{sent} requests: {tally:?}, {QUEUED} = {queued}\nstderr:\n{}",
            proxy.stderr_text()
        );
    }
    proxy.healthz().await;
    assert_eq!(
        proxy.requests("audit_unavailable", None).await,
        tally.unavailable as f64,
        "every refusal counted"
    );
    // Allowed traffic is refused too, in the usual refusal format.
    connect_refused(proxy.addr, &target, 503, "audit_unavailable").await;
    tally.unavailable += 1;
    // The tunnel admitted before the stall still works; its record is owed, queue full or not.
    echo_roundtrip(&mut tunnel, b"during the stall").await;
    finish(&mut tunnel).await;

    // The reader comes back: the queue drains and the proxy admits again.
    let (records, _reader) = proxy.read_audit();
    let mut recovered = false;
    let deadline = Instant::now() + WAIT;
    for i in sent.. {
        let part = proxy.probe("after", i..i + 1, 1).await;
        tally.add(part);
        if part.forbidden == 1 {
            recovered = true;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing {WAIT:?} after the reader came back"
        );
        sleep(POLL).await;
    }
    assert!(recovered);

    // Every admitted exchange is in the log, once: each 403 the test got, and the tunnel.
    until(&proxy, WAIT, "a record for every admitted exchange", || {
        let records = records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        async move {
            count(&records, "not_allowed") >= tally.forbidden && count(&records, "allowed") >= 1
        }
    })
    .await;
    let records = records
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let denied: HashSet<&str> = (records.iter())
        .filter(|r| r["reason"] == "not_allowed")
        .filter_map(|r| r["host"].as_str())
        .collect();
    assert_eq!(
        (count(&records, "not_allowed"), denied.len()),
        (tally.forbidden, tally.forbidden),
        "one record per 403 answer ({tally:?})"
    );
    let tunnel = (records.iter())
        .find(|r| r["reason"] == "allowed")
        .expect("the tunnel's record");
    assert_eq!(tunnel["event"], "connection");
    assert_eq!(
        tunnel["bytes_egress"].as_u64(),
        Some(b"admitted before the stallduring the stall".len() as u64),
        "{tunnel}"
    );
    // Only refused exchanges' own records may be lost: each is either written or counted.
    let dropped = proxy.metric(DROPPED).await.unwrap_or(0.0);
    assert_eq!(
        count(&records, "audit_unavailable") as f64 + dropped,
        tally.unavailable as f64,
        "records of refused exchanges written + dropped ({tally:?})"
    );
    // The once-a-second warnings add up to the refusals.
    until(&proxy, WAIT, "warnings adding up to the refusals", || {
        let warned: u64 = (proxy.stderr.lock().unwrap_or_else(PoisonError::into_inner))
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["refused"].as_u64())
            .sum();
        async move { warned == tally.unavailable as u64 }
    })
    .await;
    proxy.healthz().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_on_every_listener() {
    let env = [("PORTCULLIS_AUDIT_QUEUE_RECORDS", "16")];
    let args = [
        "--transparent-http",
        "127.0.0.1:0",
        "--transparent-tls",
        "127.0.0.1:0",
    ];
    // Every write to /dev/full fails with ENOSPC: the proxy still starts and answers /healthz.
    let proxy = Spawned::start("/dev/full", Sink::Read, &env, &args).await;
    proxy.healthz().await;
    // The start-up policy_reload record is retried at the head of the queue: 15 places remain.
    let (tally, _) = proxy.probe_until_refused("full", 1, 1, 100).await;
    assert_eq!(tally.forbidden, 15, "{tally:?}");
    assert_eq!(proxy.metric(QUEUED).await, Some(16.0));
    assert_eq!(
        proxy.requests("audit_unavailable", Some("explicit")).await,
        tally.unavailable as f64
    );

    // The transparent listeners refuse too: HTTP with the 503, TLS with an alert.
    let http = proxy.listening("transparent_http").await;
    let mut stream = connect(http).await;
    send(&mut stream, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await;
    expect_refusal(&mut stream, 503, "audit_unavailable").await;
    let tls = proxy.listening("transparent_tls").await;
    let mut stream = connect(tls).await;
    send(
        &mut stream,
        &records(&hello_message(&["allowed.test"], false, 0), 16384),
    )
    .await;
    assert_eq!(expect_closed(&mut stream, WAIT).await, INTERNAL_ERROR_ALERT);
    for listener in ["transparent_http", "transparent_tls"] {
        let refused = proxy.requests("audit_unavailable", Some(listener)).await;
        assert_eq!(refused, 1.0, "{listener}");
    }
    // Nothing admitted was dropped: only the refused exchanges' own records, which found no room.
    assert_eq!(
        proxy.metric(DROPPED).await.unwrap_or(0.0),
        (tally.unavailable + 2) as f64
    );
    proxy.healthz().await;
    let stderr = proxy.stderr_text();
    assert!(
        stderr.contains("writing the audit log failed"),
        "no warning about the failing writes:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_in_drop_mode_serves_and_counts_every_lost_record() {
    let echo = TcpEcho::start().await;
    let env = [("PORTCULLIS_AUDIT_OVERFLOW", "drop")];
    let proxy = Spawned::start(
        "/dev/full",
        Sink::Read,
        &env,
        &["--audit-queue-records", "16"],
    )
    .await;
    proxy.healthz().await;
    let tally = proxy.probe("full", 0..100, 4).await;
    assert_eq!((tally.forbidden, tally.unavailable), (100, 0));
    let mut tunnel = open_tunnel(proxy.addr, &format!("allowed.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"still serving").await;
    finish(&mut tunnel).await;
    // 100 refusals, the tunnel and the start-up policy_reload: every record lost, and counted.
    let lost = 102.0;
    let p = &proxy;
    until(p, WAIT, "every record counted as dropped", || async move {
        p.metric(DROPPED).await == Some(lost) && p.metric(QUEUED).await == Some(0.0)
    })
    .await;
    until(
        &proxy,
        WAIT,
        "warnings adding up to the dropped total",
        || {
            let warned: u64 = (proxy.stderr.lock().unwrap_or_else(PoisonError::into_inner))
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["lost"].as_u64())
                .sum();
            async move { warned as f64 == lost }
        },
    )
    .await;
}
