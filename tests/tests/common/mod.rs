//! Helpers of the round tests that act as hand-driven sites: connect with a provisioned kit, and ask
//! for the next task that is not `Wait`.

use fedlnm_e2e::site_config;
use fedlnm_protocol::Client;
use fedlnm_protocol::generated::federation_client::FederationClient;
use fedlnm_protocol::generated::{TaskRequest, ValidateTask, task};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{LocalTensors, ScoringStatistics};
use std::path::Path;
use tonic::transport::Channel;

pub const STUDY: &str = "thyroid";

/// A mutual-TLS client of `site` (its own startup kit) to the aggregator at `url`.
pub async fn connect(study_dir: &Path, site: &str, url: &str) -> FederationClient<Channel> {
    Client::connect(&site_config(study_dir, site, url))
        .await
        .unwrap()
        .into_generated()
}

/// The site's next task, long-polling through `Wait`s.
pub async fn next_task(client: &mut FederationClient<Channel>, site: &str) -> task::Kind {
    loop {
        let task = client
            .get_task(TaskRequest {
                site: site.into(),
                study: STUDY.into(),
                node_version: "test".into(),
                protocol_revision: fedlnm_protocol::PROTOCOL_REVISION,
            })
            .await
            .unwrap()
            .into_inner()
            .kind
            .unwrap();
        if !matches!(task, task::Kind::Wait(_)) {
            return task;
        }
    }
}

/// `GET /metrics` over plain HTTP.
#[allow(dead_code)] // Each test binary that includes this module uses some of its helpers.
pub async fn scrape(port: u16) -> String {
    http_get(port, "/metrics").await
}

/// `GET path` over plain HTTP on loopback: the whole response, status line first (checked: 200).
#[allow(dead_code)] // Each test binary that includes this module uses some of its helpers.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The normalisation statistics a node of `role` scores `validate`'s model with (the study's rule),
/// which its metrics must state.
#[allow(dead_code)] // Each test binary that includes this module uses some of its helpers.
pub fn scoring_statistics(validate: &ValidateTask, role: SiteRole) -> ScoringStatistics {
    let local = LocalTensors::from_names(validate.local_tensors.clone());
    ScoringStatistics::for_site(&local, validate.adapt_normalisation, role)
}
