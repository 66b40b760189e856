//! The aggregator's Prometheus metrics (`/metrics` on `metrics_listen`, plain HTTP: keep it on an
//! internal interface): rounds, sites, bytes and durations. Counts and timings only, never a model or
//! patient value.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// The metrics, cheap to update from any task.
pub struct Telemetry {
    registry: Registry,
    pub round: Gauge,
    /// The last committed round (set at start from the state folder, so it survives a restart).
    pub last_committed_round: Gauge,
    /// 1 once the study has run all its rounds.
    pub study_finished: Gauge,
    /// Sites the study lists, by role (set at start).
    pub sites: Family<Labels, Gauge>,
    pub rounds_committed: Counter,
    pub rounds_failed: Counter,
    pub contributing_sites: Gauge,
    pub round_seconds: Gauge<f64, AtomicU64>,
    pub aggregation_seconds: Gauge<f64, AtomicU64>,
    /// ε the study has spent (differential privacy), after the last committed round.
    pub privacy_epsilon: Gauge<f64, AtomicU64>,
    pub bytes_received: Family<Labels, Counter>,
    pub bytes_sent: Family<Labels, Counter>,
    pub site_last_seen: Family<Labels, Gauge<f64, AtomicU64>>,
    pub refused: Family<Labels, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fedlnm");
        let telemetry = Self {
            round: Gauge::default(),
            last_committed_round: Gauge::default(),
            study_finished: Gauge::default(),
            sites: Family::default(),
            rounds_committed: Counter::default(),
            rounds_failed: Counter::default(),
            contributing_sites: Gauge::default(),
            round_seconds: Gauge::default(),
            aggregation_seconds: Gauge::default(),
            privacy_epsilon: Gauge::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            site_last_seen: Family::default(),
            refused: Family::default(),
            registry: Registry::default(),
        };
        // Every metric, once: name (prefixed `fedlnm_`), field, help text.
        macro_rules! register {
            ($($name:literal => $field:ident: $help:literal;)+) => {
                $(registry.register($name, $help, telemetry.$field.clone());)+
            };
        }
        register! {
            "round" => round:
                "Round in progress (0 before the first)";
            "last_committed_round" => last_committed_round:
                "Last committed round, read at start (0: initial model only)";
            "study_finished" => study_finished:
                "1 once the study has run all its rounds";
            "sites" => sites:
                "Sites in the study, by role";
            "rounds_committed" => rounds_committed:
                "Rounds committed since start";
            "rounds_failed" => rounds_failed:
                "Rounds abandoned (too few sites, protocol failure) since start";
            "contributing_sites" => contributing_sites:
                "Training sites in the last committed round's aggregate";
            "round_duration_seconds" => round_seconds:
                "Duration of the last committed round";
            "aggregation_duration_seconds" => aggregation_seconds:
                "Time from the round's start to its aggregate, last committed round";
            "privacy_epsilon" => privacy_epsilon:
                "Epsilon the study has spent at the configured delta (differential privacy; 0: none)";
            "received_bytes" => bytes_received:
                "Payload bytes received from sites, by kind";
            "sent_bytes" => bytes_sent:
                "Payload bytes sent to sites, by kind";
            "site_last_seen_timestamp_seconds" => site_last_seen:
                "Unix time of each site's last authorized request";
            "refused_requests" => refused:
                "Requests refused, by reason";
        }
        Self {
            registry,
            ..telemetry
        }
    }
}

impl Telemetry {
    /// The OpenMetrics text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn received(&self, kind: &str, bytes: usize) {
        self.bytes_received
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc_by(bytes as u64);
    }

    pub fn sent(&self, kind: &str, bytes: usize) {
        self.bytes_sent
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc_by(bytes as u64);
    }

    pub fn seen(&self, site: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.site_last_seen
            .get_or_create(&vec![("site".to_owned(), site.to_owned())])
            .set(now);
    }

    /// Unix time of `site`'s last authorized request; `None` when none since start.
    #[must_use]
    pub fn last_seen(&self, site: &str) -> Option<f64> {
        self.site_last_seen
            .get(&vec![("site".to_owned(), site.to_owned())])
            .map(|gauge| gauge.get())
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// How many requests were refused for `reason` so far.
    #[must_use]
    pub fn refusals(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .get()
    }
}

/// Serves `GET /metrics` (the OpenMetrics text of `telemetry`) and `GET /status` (the study's live
/// status page, `status()`, made on a blocking thread: it reads the committed rounds) on `listener`
/// until `shutdown` resolves.
///
/// # Errors
/// The HTTP server fails.
pub async fn serve_metrics(
    telemetry: std::sync::Arc<Telemetry>,
    status: impl Fn() -> String + Send + Sync + 'static,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use fedlnm_protocol::http::Document;
    fedlnm_protocol::http::serve_documents(
        listener,
        vec![
            Document {
                path: "/metrics",
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render: std::sync::Arc::new(move || telemetry.render()),
            },
            Document {
                path: STATUS_PATH,
                content_type: "text/html; charset=utf-8",
                render: std::sync::Arc::new(status),
            },
        ],
        shutdown,
    )
    .await
}

/// Where the live status page is served, beside `/metrics`.
pub const STATUS_PATH: &str = "/status";
