//! Serving a study: the mutual-TLS gRPC service, the `/metrics` endpoint beside it, and the ticker
//! that closes stages and phases on time, until the stop.

use super::{FederationService, ServeError};
use fedlnm_protocol::server as wire;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the study on `listener` with mutual TLS 1.3 until `shutdown` resolves; also `/metrics` when
/// the config names `metrics_listen`.
///
/// # Errors
/// [`ServeError`]: unreadable TLS files, transport failures.
pub async fn serve(
    service: FederationService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = service.shared.config.clone();
    let address = listener.local_addr().ok();
    let (stop, stopped) = watch::channel(false);
    let stop_signal = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut metrics_task = None;
    if let Some(metrics_address) = &config.metrics_listen {
        let metrics_listener = wire::bind(metrics_address)
            .await
            .map_err(|source| ServeError::Metrics {
                address: metrics_address.clone(),
                source,
            })?;
        let bound = metrics_listener.local_addr().ok();
        *service
            .shared
            .metrics_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = bound;
        tracing::info!(address = ?bound, "Prometheus metrics on /metrics and the status page on /status (plain HTTP)");
        let telemetry = service.telemetry();
        let status_service = service.clone();
        let status = move || status_service.status_page();
        let signal = stop_signal(stopped.clone());
        metrics_task = Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(error) =
                crate::telemetry::serve_metrics(telemetry, status, metrics_listener, signal).await
            {
                tracing::error!(%error, "the /metrics endpoint stopped");
            }
        })));
    }
    // Deadlines: wake when the next one is due (at least once a second). The guard stops the ticker
    // however `serve` ends, even when its future is dropped.
    let ticker = {
        let service = service.clone();
        let mut stopped = stopped.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let next = service.tick();
                let sleep = next.map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1))
                });
                tokio::select! {
                    () = tokio::time::sleep(sleep + Duration::from_millis(5)) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
        }))
    };
    tracing::info!(
        study = config.study,
        ?address,
        sites = config.sites.len(),
        "aggregator listening (mutual TLS 1.3)"
    );
    let result = wire::serve(Arc::new(service), listener, &config.tls, shutdown)
        .await
        .map_err(ServeError::from);
    let _ = stop.send(true);
    drop(ticker);
    drop(metrics_task);
    result
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
