//! A plain-HTTP endpoint that serves one text document (the aggregator's Prometheus `/metrics`),
//! rendered anew on every request. Keep it on an internal interface: it has no TLS.

use std::future::Future;
use tokio::net::TcpListener;

/// Serves `GET path` on `listener` with `render()` as body and `content_type` until `shutdown`.
///
/// # Errors
/// The listener fails.
pub async fn serve_text(
    listener: TcpListener,
    path: &str,
    content_type: &'static str,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, content_type)], render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
