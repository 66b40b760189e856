//! A plain-HTTP endpoint that serves a few documents (the aggregator's Prometheus `/metrics` and its
//! status page), each rendered anew on every request on a blocking thread (a render may read files).
//! Keep it on an internal interface: it has no TLS.

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// One document: `GET path` answers `render()` with `content_type`.
pub struct Document {
    pub path: &'static str,
    pub content_type: &'static str,
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Serves `documents` on `listener` until `shutdown`.
///
/// # Errors
/// The listener fails.
pub async fn serve_documents(
    listener: TcpListener,
    documents: Vec<Document>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = axum::Router::new();
    for Document {
        path,
        content_type,
        render,
    } in documents
    {
        app = app.route(
            path,
            axum::routing::get(move || {
                let render = render.clone();
                async move {
                    match tokio::task::spawn_blocking(move || render()).await {
                        Ok(body) => (
                            axum::http::StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, content_type)],
                            body,
                        ),
                        Err(_) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                            "the page could not be made (see the aggregator's log)".to_owned(),
                        ),
                    }
                }
            }),
        );
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
