//! The node's side of secure aggregation: joining an instance (its keys and shares), its last
//! stages (against a malicious aggregator, signing the survivor set and checking the others'
//! signatures) and the site's own secrets (its signing key, read from its TLS files, and its
//! rounding secret).

use super::{Node, ROUNDING_SECRET_FILE};
use anyhow::{Context as _, bail};
use fedlnm_protocol::{Client, ClientError, SecAggStage, payload};
use fedlnm_shared::config::NodeConfig;
use fedlnm_shared::files;
use fedlnm_shared::secagg::{
    Authentication, ConsistencyCheck, InputKind, KeyDirectory, SecAggClient, SecAggConfig, ShareDelivery,
    SiteId, UnmaskRequest,
};
use fedlnm_shared::signing::site_authentication;
use std::path::Path;

impl Node {
    /// The last stages of an instance: waits for the survivors (against a malicious aggregator, signs
    /// the survivor set and gets back the others' signatures on it) and reveals this site's
    /// unmasking shares. On any inconsistency the site reveals nothing and says why.
    pub(super) async fn unmask(
        &self,
        client: &mut Client,
        round: u64,
        secagg: &mut SecAggClient,
    ) -> anyhow::Result<()> {
        let request: UnmaskRequest = if secagg.is_authenticated() {
            let check: ConsistencyCheck = self
                .exchange(client, round, SecAggStage::ConsistencyCheck, Vec::new())
                .await?;
            let signature = secagg.consistency_check(&check)?;
            self.exchange(
                client,
                round,
                SecAggStage::ConsistencySignature,
                payload::encode(&signature),
            )
            .await?
        } else {
            self.exchange(client, round, SecAggStage::UnmaskRequest, Vec::new())
                .await?
        };
        let response = secagg.unmask(&request).inspect_err(|error| {
            tracing::error!(site = self.config.site, round, %error, "refusing to reveal unmasking shares");
        })?;
        client
            .secure_aggregation(round, SecAggStage::UnmaskResponse, payload::encode(&response))
            .await?;
        Ok(())
    }

    /// Sends a protocol message and decodes the aggregator's reply for this site.
    pub(super) async fn exchange<R: serde::de::DeserializeOwned>(
        &self,
        client: &mut Client,
        round: u64,
        stage: SecAggStage,
        message: Vec<u8>,
    ) -> anyhow::Result<R> {
        let reply = client.secure_aggregation(round, stage, message).await?;
        Ok(payload::decode(&reply, stage.name())?)
    }

    /// Joins a secure-aggregation instance (a training round's, the secure sum of the site's pool
    /// while a model is validated, or an analysis step's) on the model `model_digest`: checks its
    /// configuration, advertises the keys (rounds 0 and 1, before the expensive work) and shares
    /// them; returns the protocol state and the shares delivered to this site.
    pub(super) async fn join_instance(
        &self,
        client: &mut Client,
        round: u64,
        model_digest: &str,
        config: &SecAggConfig,
        site_id: SiteId,
        input: InputKind,
    ) -> anyhow::Result<(SecAggClient, ShareDelivery)> {
        if config.study_id != self.config.study
            || config.round != round
            || config.model_version.model_digest != model_digest
            || config.input != input
        {
            bail!("the secure-aggregation configuration is for another study, round, model or input");
        }
        let config = config.clone().validate()?;
        let (mut secagg, advertise) = match (&self.authentication, config.is_authenticated()) {
            (Some(auth), true) => SecAggClient::new_authenticated(config, site_id, auth.clone())?,
            _ => SecAggClient::new(config, site_id)?,
        };
        secagg.set_rounding_secret(rounding_secret(&self.config.work_dir)?);
        let directory: KeyDirectory = self
            .exchange(
                client,
                round,
                SecAggStage::AdvertiseKeys,
                payload::encode(&advertise),
            )
            .await?;
        let shares = secagg.share_keys(&directory).inspect_err(|error| {
            tracing::error!(site = self.config.site, round, %error, "refusing the key directory");
        })?;
        let delivery: ShareDelivery = self
            .exchange(client, round, SecAggStage::ShareKeys, payload::encode(&shares))
            .await?;
        Ok((secagg, delivery))
    }
}

/// The site's signer (its certificate and key) and the study CA, from its TLS files.
///
/// # Errors
/// A file cannot be read, or the key is not the certificate's.
pub fn authentication(config: &NodeConfig) -> anyhow::Result<Authentication> {
    let tls = &config.tls;
    site_authentication(tls).with_context(|| {
        format!(
            "cannot sign secure-aggregation messages with {} and {} (study CA {})",
            tls.certificate.display(),
            tls.key.display(),
            tls.ca.display()
        )
    })
}

/// The site's rounding secret (`work_dir/rounding.secret`, 64 hex digits, created from the OS generator
/// on first use, mode 0600): it keys the stochastic rounding and noise of the site's masked inputs,
/// so that the same data, model and secret give the same study. It never leaves the site.
///
/// # Errors
/// The file cannot be read or created, or does not hold 64 hex digits.
pub fn rounding_secret(work_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let file = work_dir.join(ROUNDING_SECRET_FILE);
    if !file.exists() {
        let secret = fedlnm_shared::secagg::random_secret()
            .map_err(|_| anyhow::anyhow!("the operating system's random generator failed"))?;
        write_rounding_secret(&file, &secret)?;
    }
    let bytes = files::read_regular(&file).with_context(|| format!("cannot read {}", file.display()))?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(secret_from_hex)
        .with_context(|| format!("{} does not hold 64 hex digits", file.display()))
}

/// 32 bytes from 64 hex digits (surrounding whitespace ignored); `None` for anything else.
#[must_use]
pub fn secret_from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut secret = [0u8; 32];
    for (byte, pair) in secret.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(secret)
}

/// Writes a rounding secret (mode 0600, never over an existing file).
///
/// # Errors
/// The file exists or cannot be written.
pub fn write_rounding_secret(file: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
    let text = format!("{}\n", fedlnm_shared::weights::hex(secret));
    files::write_new(file, text.as_bytes(), true).with_context(|| format!("cannot create {}", file.display()))
}

/// Whether an error is a stage or round that went on without this site (not fatal).
pub(super) fn is_left_out(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ClientError>()
        .is_some_and(ClientError::is_left_out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_rounding_secret_is_created_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = rounding_secret(dir.path()).unwrap();
        let file = dir.path().join(ROUNDING_SECRET_FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            rounding_secret(dir.path()).unwrap(),
            first,
            "read back, not drawn again"
        );
        assert!(
            write_rounding_secret(&file, &[0; 32]).is_err(),
            "never overwritten"
        );
        std::fs::write(&file, "not hex\n").unwrap();
        let error = rounding_secret(dir.path()).unwrap_err().to_string();
        assert!(error.contains("does not hold 64 hex digits"), "{error}");
        assert_eq!(secret_from_hex(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(secret_from_hex(&"zz".repeat(32)), None);
    }
}
