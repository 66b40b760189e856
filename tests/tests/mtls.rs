//! Mutual TLS and authorization end to end: a real aggregator on 127.0.0.1:0 (in-process, real rustls
//! handshakes, real gRPC) and the node's real client, with the kits that `provision` writes. Every
//! identity failure of federation.md is refused: no certificate, another study's CA, an expired
//! certificate, a site the study does not know, a site speaking for another, the wrong study.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::provision::{self, StudyCa, Validity};
use fedlnm_e2e::{RunningAggregator, provision_study};
use fedlnm_protocol::client::{self, ClientError};
use fedlnm_shared::config::NodeConfig;
use fedlnm_shared::config::RoundSettings;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// A node config pointing at `url` with the given key material.
fn node_config(kit: &Path, url: &str, site: &str, study: &str, cert: PathBuf, key: PathBuf) -> NodeConfig {
    let mut config = NodeConfig::load(&kit.join("node.toml")).unwrap();
    config.aggregator = url.to_owned();
    config.site = site.to_owned();
    config.study = study.to_owned();
    config.tls.certificate = cert;
    config.tls.key = key;
    config
}

fn write_issued(dir: &Path, name: &str, issued: &provision::IssuedCertificate) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_site_checks_in_and_every_wrong_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let config = provision_study(&study_dir, "thyroid", RoundSettings::default());
    let aggregator = RunningAggregator::start(config, 0).await;
    let url = aggregator.url.clone();
    let kit = |site: &str| study_dir.join("sites").join(site);
    let own = |site: &str| (kit(site).join("site.pem"), kit(site).join("site.key"));

    // Every provisioned site checks in and learns its role.
    for (site, role) in [
        ("S1", "train"),
        ("S2", "train"),
        ("S3", "train"),
        ("S4", "validate"),
    ] {
        let (cert, key) = own(site);
        let answer = client::check_in(&node_config(&kit(site), &url, site, "thyroid", cert, key))
            .await
            .unwrap();
        let answered_role = answer.role.to_string();
        assert_eq!(
            (
                answer.site.as_str(),
                answered_role.as_str(),
                answer.study.as_str()
            ),
            (site, role, "thyroid")
        );
    }

    // A certificate from another study's CA: the TLS handshake fails, no handler runs.
    let other_study = dir.path().join("other");
    let _ = provision_study(&other_study, "other", RoundSettings::default());
    let foreign = other_study.join("sites/S1");
    let result = client::check_in(&node_config(
        &kit("S1"),
        &url,
        "S1",
        "thyroid",
        foreign.join("site.pem"),
        foreign.join("site.key"),
    ))
    .await;
    // The refusal is certain; whether the node reads the aggregator's alert before the connection
    // closes is not, so its wording is not checked here.
    let _ = assert_transport_refusal("certificate from another CA", result);

    // A kit whose ca.pem is another study's: the node itself finds the aggregator's certificate not
    // signed by it, and says so.
    let (cert, key) = own("S1");
    let result = client::check_in(&node_config(&foreign, &url, "S1", "thyroid", cert, key)).await;
    let message = assert_transport_refusal("aggregator certificate from another CA", result);
    assert!(message.contains("not signed by this kit's CA"), "{message}");

    // An expired certificate of this study's CA.
    let ca = StudyCa::load(&study_dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let expired = ca
        .issue_site(
            "S1",
            Validity {
                not_before: now - Duration::days(30),
                not_after: now - Duration::days(1),
            },
        )
        .unwrap();
    let (cert, key) = write_issued(dir.path(), "expired", &expired);
    let result = client::check_in(&node_config(&kit("S1"), &url, "S1", "thyroid", cert, key)).await;
    let _ = assert_transport_refusal("expired certificate", result);

    // A valid certificate for a site the study does not list.
    let stranger = ca.issue_site("S9", Validity::days_from_now(5)).unwrap();
    let (cert, key) = write_issued(dir.path(), "stranger", &stranger);
    let result = client::check_in(&node_config(&kit("S1"), &url, "S9", "thyroid", cert, key)).await;
    assert_refused(
        "unknown site",
        result,
        tonic::Code::PermissionDenied,
        "'S9' is not part of study 'thyroid'",
    );

    // S1's own certificate speaking for S2.
    let (cert, key) = own("S1");
    let result = client::check_in(&node_config(&kit("S1"), &url, "S2", "thyroid", cert, key)).await;
    assert_refused(
        "impersonation",
        result,
        tonic::Code::PermissionDenied,
        "certificate is for site 'S1'",
    );

    // The right site with the wrong study in its config.
    let (cert, key) = own("S2");
    let result = client::check_in(&node_config(&kit("S2"), &url, "S2", "other", cert, key)).await;
    assert_refused(
        "wrong study",
        result,
        tonic::Code::FailedPrecondition,
        "runs study 'thyroid'",
    );

    // No client certificate at all (a plain TLS client that trusts the CA).
    fedlnm_shared::tls::install_crypto_provider();
    let ca_pem = std::fs::read(kit("S1").join("ca.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    let anonymous = async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        let mut client = fedlnm_protocol::generated::federation_client::FederationClient::new(channel);
        let request = fedlnm_protocol::generated::CheckInRequest {
            site: "S1".into(),
            study: "thyroid".into(),
            node_version: String::new(),
            protocol_revision: fedlnm_protocol::PROTOCOL_REVISION,
        };
        Ok::<_, Box<dyn std::error::Error>>(client.check_in(request).await?)
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate must be refused"
    );

    // Every refused handshake was logged and counted with its reason (each counter is bumped by the
    // handshake's own task; wait, bounded, for those tasks to have run).
    for reason in [
        "tls-client-certificate-unknown-issuer",
        "tls-client-certificate-expired",
        "tls-no-client-certificate",
    ] {
        let needle = format!("fedlnm_refused_requests_total{{reason=\"{reason}\"}}");
        let counted = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !aggregator.service.telemetry().render().contains(&needle) {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            counted.is_ok(),
            "{needle} missing:\n{}",
            aggregator.service.telemetry().render()
        );
    }

    // After all refusals the aggregator still serves the legitimate sites.
    let (cert, key) = own("S3");
    client::check_in(&node_config(&kit("S3"), &url, "S3", "thyroid", cert, key))
        .await
        .unwrap();
    aggregator.shut_down().await;
}

/// A node of another protocol revision (an older release, which sends none, or a newer one) is
/// refused at check-in and at each task request, before its request reaches the study, with both
/// revisions and the remedy named; the code is one the node treats as fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_revision_is_refused_with_both_revisions_named() {
    use fedlnm_protocol::PROTOCOL_REVISION;
    use fedlnm_protocol::generated::{CheckInRequest, TaskRequest};
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let config = provision_study(&study_dir, "thyroid", RoundSettings::default());
    let aggregator = RunningAggregator::start(config, 0).await;
    let kit = study_dir.join("sites").join("S1");
    let node = node_config(
        &kit,
        &aggregator.url,
        "S1",
        "thyroid",
        kit.join("site.pem"),
        kit.join("site.key"),
    );
    let mut generated = fedlnm_protocol::Client::connect(&node)
        .await
        .unwrap()
        .into_generated();
    for revision in [0, PROTOCOL_REVISION + 1] {
        let check_in = generated
            .check_in(CheckInRequest {
                site: "S1".into(),
                study: "thyroid".into(),
                node_version: "0.0.9".into(),
                protocol_revision: revision,
            })
            .await;
        let task = generated
            .get_task(TaskRequest {
                site: "S1".into(),
                study: "thyroid".into(),
                node_version: "0.0.9".into(),
                protocol_revision: revision,
            })
            .await;
        for (call, status) in [("check-in", check_in.unwrap_err()), ("task", task.unwrap_err())] {
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{call}: {status:?}");
            let refusal = ClientError::from(status);
            assert!(refusal.is_fatal(), "{call}: the node must stop, not retry");
            let message = refusal.to_string();
            for needle in [
                "the node of site 'S1' (fedlnm 0.0.9)".to_owned(),
                format!("speaks protocol revision {revision}"),
                format!(
                    "this aggregator (fedlnm {}) speaks revision {PROTOCOL_REVISION}",
                    env!("CARGO_PKG_VERSION")
                ),
                "must run the same fedlnm release".to_owned(),
            ] {
                assert!(
                    message.contains(&needle),
                    "{call}, revision {revision}: '{message}' lacks '{needle}'"
                );
            }
            assert_eq!(
                message.contains("before revisions were numbered"),
                revision == 0,
                "{message}"
            );
        }
    }
    // Each refusal is counted for the operators' dashboards (two revisions, two calls each).
    assert_eq!(aggregator.service.telemetry().refusals("protocol-revision"), 4);
    // This release's own node is served on the same connection.
    let answer = client::check_in(&node).await.unwrap();
    assert_eq!(answer.site, "S1");
    assert_eq!(aggregator.service.telemetry().refusals("protocol-revision"), 4);
    aggregator.shut_down().await;
}

/// Refused at the TLS layer: the connection fails, or (TLS 1.3 checks the client certificate after the
/// client has sent its first flight) the first call fails with a transport status,
/// never with an application answer.
/// Returns the error's message, what the node prints.
fn assert_transport_refusal<T: std::fmt::Debug>(case: &str, result: Result<T, ClientError>) -> String {
    let message = match &result {
        Err(error) => error.to_string(),
        Ok(_) => String::new(),
    };
    match result {
        Err(ClientError::Connect { .. }) => {}
        Err(ClientError::Refused { code, .. }) => assert!(
            matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{case}: refused by the application ({code:?}), expected the TLS layer to refuse"
        ),
        other => panic!("{case}: expected a TLS refusal, got {other:?}"),
    }
    message
}

fn assert_refused<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, ClientError>,
    expected: tonic::Code,
    needle: &str,
) {
    match result {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, expected, "{case}: {message}");
            assert!(message.contains(needle), "{case}: '{message}' lacks '{needle}'");
        }
        other => panic!("{case}: expected {expected:?}, got {other:?}"),
    }
}

/// A site certificate that expires during the study, on a connection opened while it was valid (the
/// handshake checked it once; an HTTP/2 connection can live for days): the next call on that same
/// connection is refused, naming the site and the expiry, and the node stops on it (a refusal that
/// retrying cannot fix), instead of working on with a lapsed identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_during_the_study_is_refused_on_its_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let config = provision_study(&study_dir, "thyroid", RoundSettings::default());
    let aggregator = RunningAggregator::start(config, 0).await;
    let kit = study_dir.join("sites").join("S1");
    let ca = StudyCa::load(&study_dir).unwrap();
    // Certificate times have whole seconds: valid for the next 8 s or so.
    let now = OffsetDateTime::now_utc();
    let expiring = ca
        .issue_site(
            "S1",
            Validity {
                not_before: now - Duration::days(1),
                not_after: now + Duration::seconds(8),
            },
        )
        .unwrap();
    let (cert, key) = write_issued(dir.path(), "expiring", &expiring);
    let config = node_config(&kit, &aggregator.url, "S1", "thyroid", cert, key);
    let mut client = fedlnm_protocol::Client::connect(&config).await.unwrap();
    assert_eq!(client.check_in().await.unwrap().site, "S1");
    // Let the certificate's validity run out (the scenario, not an assertion).
    let expiry = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(
            u64::try_from((now + Duration::seconds(8)).unix_timestamp()).unwrap(),
        );
    while std::time::SystemTime::now() <= expiry + std::time::Duration::from_secs(1) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let refusal = client.get_task().await.unwrap_err();
    assert!(refusal.is_fatal(), "{refusal}");
    let message = refusal.to_string();
    assert!(
        message.contains("certificate of site 'S1' expired at") && message.contains("renew-site"),
        "{message}"
    );
    assert_eq!(aggregator.service.telemetry().refusals("certificate-expired"), 1);

    // The study team renews it (a new folder; the kit and the study are untouched): the site is back.
    let renewed = dir.path().join("renewed");
    provision::renew_site(&study_dir, "S1", 30, &renewed).unwrap();
    let config = node_config(
        &kit,
        &aggregator.url,
        "S1",
        "thyroid",
        renewed.join("site.pem"),
        renewed.join("site.key"),
    );
    assert_eq!(client::check_in(&config).await.unwrap().site, "S1");
    let again = provision::renew_site(&study_dir, "S1", 30, &renewed).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let stranger = provision::renew_site(&study_dir, "S9", 30, &dir.path().join("s9")).unwrap_err();
    assert!(
        stranger.to_string().contains("'S9' is not part of this study"),
        "{stranger}"
    );
    aggregator.shut_down().await;
}

/// Clock skew, as the certificates see it (no test can move a machine's clock): a site certificate that
/// is valid only from two hours on, by the aggregator's clock (the issuing machine's clock ahead, or the
/// aggregator's behind), is refused at the handshake and counted under its own reason; and an
/// aggregator certificate not valid yet by the node's clock makes the node say that its clock is
/// probably behind. Certificates from `provision` start an hour in the past for that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_named_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let config = provision_study(&study_dir, "thyroid", RoundSettings::default());
    let ca = StudyCa::load(&study_dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let later = Validity {
        not_before: now + Duration::hours(2),
        not_after: now + Duration::days(30),
    };
    let kit = study_dir.join("sites").join("S1");

    // A site certificate from the future.
    let aggregator = RunningAggregator::start(config.clone(), 0).await;
    let early = ca.issue_site("S1", later).unwrap();
    let (cert, key) = write_issued(dir.path(), "early", &early);
    let result = client::check_in(&node_config(&kit, &aggregator.url, "S1", "thyroid", cert, key)).await;
    let _ = assert_transport_refusal("site certificate not valid yet", result);
    let needle = "fedlnm_refused_requests_total{reason=\"tls-client-certificate-not-yet-valid\"}";
    let counted = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !aggregator.service.telemetry().render().contains(needle) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{needle} not counted");
    aggregator.shut_down().await;

    // The aggregator's certificate from the future, by the node's clock.
    let server = ca.issue_server(&["localhost".to_owned()], later).unwrap();
    std::fs::write(&config.tls.certificate, &server.cert_pem).unwrap();
    std::fs::write(&config.tls.key, &server.key_pem).unwrap();
    let aggregator = RunningAggregator::start(config, 0).await;
    let (cert, key) = (kit.join("site.pem"), kit.join("site.key"));
    let result = client::check_in(&node_config(&kit, &aggregator.url, "S1", "thyroid", cert, key)).await;
    let message = assert_transport_refusal("aggregator certificate not valid yet", result);
    assert!(
        message.contains("this machine's clock is probably behind"),
        "{message}"
    );
    aggregator.shut_down().await;
}
