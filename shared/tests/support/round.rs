//! One secure-aggregation instance driven in process, stage by stage, on any graph: every message
//! relayed as the transport relays it, sites leaving before a chosen stage. Against a malicious
//! server the clients are authenticated with the test study's PKI and the server verifies them.

use std::collections::BTreeMap;

use fedlnm_shared::secagg::{
    AdvertiseKeys, Aggregate, ConsistencyCheck, KeyDirectory, RoundConfig, SecAggClient, SecAggError,
    SecAggServer, ShareDelivery, SiteId, UnmaskRequest, UnmaskResponse,
};
use fedlnm_shared::weights::NamedTensors;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{relay, study_authentications};

/// Each site's delta and sample count.
pub type Inputs = BTreeMap<SiteId, (NamedTensors, u64)>;

/// For every participant, a delta over the instance's aggregated tensors whose values are multiples
/// of 2^-8 in [−2, 2], and a sample count in 1..=`max_n`: the weighted values n·Δ are exact in fixed
/// point, so a decoded sum must equal the plain sum bit for bit.
pub fn dyadic_inputs(config: &RoundConfig, seed: u64, max_n: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    config
        .participants()
        .iter()
        .map(|&site| {
            let tensors: Vec<(String, Vec<f32>)> = config
                .aggregated_tensors()
                .iter()
                .map(|spec| {
                    let values = (0..spec.len())
                        .map(|_| rng.random_range(-512i32..=512) as f32 / 256.0)
                        .collect();
                    (spec.name.clone(), values)
                })
                .collect();
            let n = rng.random_range(1..=max_n);
            (site, (NamedTensors::from_vectors(tensors), n))
        })
        .collect()
}

/// A site's delta flattened in the order the instance masks it (its aggregated tensors).
pub fn aggregated_values<'a>(
    config: &'a RoundConfig,
    delta: &'a NamedTensors,
) -> impl Iterator<Item = &'a f32> {
    config
        .aggregated_tensors()
        .iter()
        .flat_map(|s| delta.get(&s.name).unwrap().values.iter())
}

/// The exact fixed-point sum Σ_k n_k·Δ_k·2^f over `sites` (f the instance's fractional bits; valid
/// for inputs whose quantization is exact, such as [`dyadic_inputs`]), then Σ n_k.
pub fn exact_fixed_point_sum(config: &RoundConfig, inputs: &Inputs, sites: &[SiteId]) -> Vec<i64> {
    let unit = 2f64.powi(config.config().quantization.fractional_bits as i32);
    let mut sum = vec![0i64; config.vector_len()];
    for site in sites {
        let (delta, n) = &inputs[site];
        for (acc, &d) in sum.iter_mut().zip(aggregated_values(config, delta)) {
            *acc += (*n as f64 * f64::from(d) * unit) as i64;
        }
        *sum.last_mut().unwrap() += *n as i64;
    }
    sum
}

/// Which sites vanish before which stage.
#[derive(Default, Clone)]
pub struct Dropouts {
    pub before_shares: Vec<SiteId>,
    pub before_upload: Vec<SiteId>,
    pub before_unmask: Vec<SiteId>,
}

/// A client of `site`, authenticated with the test study's PKI where the instance asks for it.
///
/// # Errors
/// The client's own refusal of the configuration.
pub fn client(config: &RoundConfig, site: SiteId) -> Result<(SecAggClient, AdvertiseKeys), SecAggError> {
    if config.is_authenticated() {
        let auth = study_authentications(&[site]).remove(&site).unwrap();
        SecAggClient::new_authenticated(config.clone(), site, auth)
    } else {
        SecAggClient::new(config.clone(), site)
    }
}

/// The server and every participant's client of one instance.
pub struct Round {
    pub config: RoundConfig,
    pub server: SecAggServer,
    pub clients: BTreeMap<SiteId, SecAggClient>,
    /// Every unmasking response sent, in order.
    pub responses: Vec<UnmaskResponse>,
}

impl Round {
    /// Round 0: every participant advertises its keys (one channel key per neighbour); returns the
    /// key directory the server closes the stage with.
    pub fn start(config: &RoundConfig) -> (Self, KeyDirectory) {
        let mut server = SecAggServer::new(config.clone());
        if config.is_authenticated() {
            let any = study_authentications(&config.participants()[..1]);
            server = server.with_verifier(any.into_values().next().unwrap().peers);
        }
        let mut clients = BTreeMap::new();
        for &site in config.participants() {
            let (client, advertise) = client(config, site).unwrap();
            assert_eq!(
                advertise.channel_public_keys.len(),
                config.neighbours(site).len(),
                "one channel key per neighbour"
            );
            server.receive_keys(relay(&advertise)).unwrap();
            clients.insert(site, client);
        }
        let directory = relay(&server.close_keys().unwrap());
        let round = Self {
            config: config.clone(),
            server,
            clients,
            responses: Vec::new(),
        };
        (round, directory)
    }

    /// Round 1: the sites not in `drops` share their keys with their neighbours. Each gets
    /// `directory` as the server relays it: whole on the complete graph (so that a test may tamper
    /// with it), its two-hop neighbourhood's on a sparse graph.
    pub fn share(
        &mut self,
        directory: &KeyDirectory,
        drops: &[SiteId],
    ) -> Result<Vec<ShareDelivery>, SecAggError> {
        for (&site, client) in &mut self.clients {
            if drops.contains(&site) {
                continue;
            }
            let msg = if self.config.is_complete_graph() {
                client.share_keys(directory).unwrap()
            } else {
                let mine = relay(&directory.for_site(&self.config, site));
                client.share_keys(&mine).unwrap()
            };
            assert_eq!(msg.encrypted_shares.len(), self.config.neighbours(site).len());
            self.server.receive_shares(relay(&msg)).unwrap();
        }
        Ok(relay(&self.server.close_shares()?))
    }

    /// Round 2: the sites delivered to, less `drops`, upload their masked inputs.
    pub fn upload(
        &mut self,
        deliveries: &[ShareDelivery],
        inputs: &Inputs,
        drops: &[SiteId],
    ) -> Result<ConsistencyCheck, SecAggError> {
        for delivery in deliveries.iter().filter(|d| !drops.contains(&d.to)) {
            let (delta, n) = &inputs[&delivery.to];
            let client = self.clients.get_mut(&delivery.to).unwrap();
            let msg = client.masked_input(delivery, delta, *n).unwrap();
            self.server.receive_masked_input(relay(&msg)).unwrap();
        }
        Ok(relay(&self.server.close_masked_inputs()?))
    }

    /// Round 3: the survivors not in `drops` sign U3 (against a malicious server; the server closes
    /// the stage at once otherwise).
    pub fn consistency(
        &mut self,
        check: &ConsistencyCheck,
        drops: &[SiteId],
    ) -> Result<UnmaskRequest, SecAggError> {
        if self.config.is_authenticated() {
            for site in check.survivors.iter().filter(|s| !drops.contains(s)) {
                let msg = self
                    .clients
                    .get_mut(site)
                    .unwrap()
                    .consistency_check(check)
                    .unwrap();
                self.server.receive_consistency(relay(&msg)).unwrap();
            }
        }
        Ok(relay(&self.server.close_consistency()?))
    }

    /// Round 4: the survivors not in `drops` answer the unmasking request; the server decodes.
    pub fn unmask(&mut self, request: &UnmaskRequest, drops: &[SiteId]) -> Result<Aggregate, SecAggError> {
        for site in request.survivors.iter().filter(|s| !drops.contains(s)) {
            let msg = self.clients.get_mut(site).unwrap().unmask(request).unwrap();
            self.responses.push(msg.clone());
            self.server.receive_unmask_response(relay(&msg)).unwrap();
        }
        self.server.finish()
    }

    /// Rounds 3 and 4 with the survivors not in `drops`.
    pub fn check_and_unmask(
        &mut self,
        check: &ConsistencyCheck,
        drops: &[SiteId],
    ) -> Result<Aggregate, SecAggError> {
        let request = self.consistency(check, drops)?;
        self.unmask(&request, drops)
    }
}

/// A whole instance with `drops`; the aggregate and every unmasking response.
pub fn run_with_responses(
    config: &RoundConfig,
    inputs: &Inputs,
    drops: &Dropouts,
) -> Result<(Aggregate, Vec<UnmaskResponse>), SecAggError> {
    let (mut round, directory) = Round::start(config);
    let deliveries = round.share(&directory, &drops.before_shares)?;
    let check = round.upload(&deliveries, inputs, &drops.before_upload)?;
    let aggregate = round.check_and_unmask(&check, &drops.before_unmask)?;
    Ok((aggregate, round.responses))
}

/// A whole instance with `drops`: the aggregate.
pub fn run(config: &RoundConfig, inputs: &Inputs, drops: &Dropouts) -> Result<Aggregate, SecAggError> {
    run_with_responses(config, inputs, drops).map(|(aggregate, _)| aggregate)
}
