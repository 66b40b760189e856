//! Key derivation (HKDF-SHA256 with the "mask", "enc" and "self" domains) and the authenticated
//! encryption of Shamir shares (ChaCha20-Poly1305), all with `ring`.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use zeroize::{Zeroize, Zeroizing};

use super::SiteId;
use super::prg::MaskSeed;
use super::shamir::{SECRET_LEN, Share};

/// HKDF-SHA256(ikm, salt) expanded with `info` (the concatenation of the parts) to 32 bytes.
fn hkdf32(ikm: &[u8], salt: &[u8; 32], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    // 32 bytes is the HKDF-SHA256 output length, far below the 255·32 limit: expand and fill cannot
    // fail for this length.
    if let Ok(okm) = prk.expand(info, HKDF_SHA256) {
        let _ = okm.fill(out.as_mut());
    }
    out
}

fn ordered(u: SiteId, v: SiteId) -> ([u8; 4], [u8; 4]) {
    let (lo, hi) = if u < v { (u, v) } else { (v, u) };
    (lo.0.to_be_bytes(), hi.0.to_be_bytes())
}

/// s_uv = HKDF(X25519(s_u, s_v^pk), salt, "mask" ‖ min(u,v) ‖ max(u,v)): both sides derive the same.
pub(crate) fn pairwise_mask_seed(shared: &[u8; 32], salt: &[u8; 32], u: SiteId, v: SiteId) -> MaskSeed {
    let (lo, hi) = ordered(u, v);
    MaskSeed(*hkdf32(shared, salt, &[b"mask", &lo, &hi]))
}

/// The self-mask PRG seed HKDF(b_u, salt, "self" ‖ u): domain-separated from every pairwise seed.
pub(crate) fn self_mask_seed(b: &[u8; 32], salt: &[u8; 32], u: SiteId) -> MaskSeed {
    MaskSeed(*hkdf32(b, salt, &[b"self", &u.0.to_be_bytes()]))
}

/// The seed of the Harary graph's permutation: HKDF(salt, salt, "fedlnm-secagg-graph-v1"), its own
/// domain; the salt covers the configuration hash, so every party derives the same graph and no one
/// can choose it once the configuration is fixed.
pub(crate) fn graph_seed(salt: &[u8; 32]) -> MaskSeed {
    MaskSeed(*hkdf32(salt, salt, &[b"fedlnm-secagg-graph-v1"]))
}

/// K_uv = HKDF(X25519(c_u, c_v), salt, "enc" ‖ round ‖ min(u,v) ‖ max(u,v)).
pub(crate) fn channel_key(
    shared: &[u8],
    salt: &[u8; 32],
    round: u64,
    u: SiteId,
    v: SiteId,
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = ordered(u, v);
    hkdf32(shared, salt, &[b"enc", &round.to_be_bytes(), &lo, &hi])
}

/// The context bound into each encrypted share: who sent it to whom, for which study, round and
/// configuration.
pub(crate) struct ShareContext<'a> {
    pub study_id: &'a str,
    pub round: u64,
    pub config_hash: &'a [u8; 32],
    pub from: SiteId,
    pub to: SiteId,
}

impl ShareContext<'_> {
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(64 + self.study_id.len());
        h.extend_from_slice(b"fedlnm-secagg-share-v1");
        h.extend_from_slice(&self.from.0.to_be_bytes());
        h.extend_from_slice(&self.to.0.to_be_bytes());
        h.extend_from_slice(&self.round.to_be_bytes());
        h.extend_from_slice(self.config_hash);
        h.extend_from_slice(&(self.study_id.len() as u64).to_be_bytes());
        h.extend_from_slice(self.study_id.as_bytes());
        h
    }

    /// K_uv is shared by both directions of a pair and used for exactly one message each way, so the
    /// nonce only needs to tell the directions apart.
    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[11] = if self.from < self.to { 1 } else { 2 };
        Nonce::assume_unique_for_key(n)
    }
}

const SHARE_BYTES: usize = 2 * (1 + SECRET_LEN);

/// Encrypts (share of s_u^sk, share of b_u) from `ctx.from` to `ctx.to`; the plaintext repeats the
/// context (u, v, study, round, config hash) after the shares, and the same context is the AAD.
pub(crate) fn seal_shares(
    key: &[u8; 32],
    ctx: &ShareContext<'_>,
    mask_key: &Share,
    self_mask: &Share,
) -> Vec<u8> {
    let header = ctx.header();
    let mut buf = Zeroizing::new(Vec::with_capacity(SHARE_BYTES + header.len() + 16));
    buf.push(mask_key.x);
    buf.extend_from_slice(&mask_key.y);
    buf.push(self_mask.x);
    buf.extend_from_slice(&self_mask.y);
    buf.extend_from_slice(&header);
    let mut out = buf.to_vec();
    // A 32-byte key is the exact ChaCha20-Poly1305 key length, and the buffer is far below the AEAD
    // length limit: sealing cannot fail. On an impossible failure the (wiped) empty ciphertext simply
    // fails to open at the recipient.
    let sealed = UnboundKey::new(&CHACHA20_POLY1305, key).is_ok_and(|k| {
        LessSafeKey::new(k)
            .seal_in_place_append_tag(ctx.nonce(), Aad::from(&header), &mut out)
            .is_ok()
    });
    if !sealed {
        out.zeroize();
    }
    out
}

/// Decrypts and checks a share message; `None` if authentication fails or the embedded context differs
/// from `ctx`.
pub(crate) fn open_shares(
    key: &[u8; 32],
    ctx: &ShareContext<'_>,
    ciphertext: &[u8],
) -> Option<(Share, Share)> {
    let header = ctx.header();
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let plain = k.open_in_place(ctx.nonce(), Aad::from(&header), &mut buf).ok()?;
    if plain.len() != SHARE_BYTES + header.len() || plain[SHARE_BYTES..] != header[..] {
        return None;
    }
    let mut a = Share {
        x: plain[0],
        y: [0; SECRET_LEN],
    };
    a.y.copy_from_slice(&plain[1..=SECRET_LEN]);
    let mut b = Share {
        x: plain[1 + SECRET_LEN],
        y: [0; SECRET_LEN],
    };
    b.y.copy_from_slice(&plain[2 + SECRET_LEN..SHARE_BYTES]);
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(hash: &'a [u8; 32], round: u64, from: u32, to: u32) -> ShareContext<'a> {
        ShareContext {
            study_id: "s",
            round,
            config_hash: hash,
            from: SiteId(from),
            to: SiteId(to),
        }
    }

    #[test]
    fn shares_open_only_under_their_own_context_and_key() {
        let hash = [7u8; 32];
        let key = [9u8; 32];
        let a = Share { x: 1, y: [1; 32] };
        let b = Share { x: 1, y: [2; 32] };
        let c = seal_shares(&key, &ctx(&hash, 4, 1, 2), &a, &b);
        let (a2, b2) = open_shares(&key, &ctx(&hash, 4, 1, 2), &c).unwrap();
        assert_eq!((a2, b2), (a, b));
        assert!(
            open_shares(&key, &ctx(&hash, 5, 1, 2), &c).is_none(),
            "other round"
        );
        assert!(
            open_shares(&key, &ctx(&hash, 4, 2, 1), &c).is_none(),
            "other direction"
        );
        assert!(
            open_shares(&key, &ctx(&hash, 4, 1, 3), &c).is_none(),
            "other recipient"
        );
        assert!(
            open_shares(&key, &ctx(&[8; 32], 4, 1, 2), &c).is_none(),
            "other config"
        );
        assert!(
            open_shares(&[1; 32], &ctx(&hash, 4, 1, 2), &c).is_none(),
            "other key"
        );
        for i in 0..c.len() {
            let mut t = c.clone();
            t[i] ^= 0x40;
            assert!(
                open_shares(&key, &ctx(&hash, 4, 1, 2), &t).is_none(),
                "flip at byte {i}"
            );
        }
    }

    #[test]
    fn derivations_are_symmetric_and_domain_separated() {
        let salt = [3u8; 32];
        let z = [5u8; 32];
        let (u, v) = (SiteId(2), SiteId(9));
        assert_eq!(
            pairwise_mask_seed(&z, &salt, u, v).0,
            pairwise_mask_seed(&z, &salt, v, u).0
        );
        assert_eq!(*channel_key(&z, &salt, 1, u, v), *channel_key(&z, &salt, 1, v, u));
        let all = [
            pairwise_mask_seed(&z, &salt, u, v).0,
            *channel_key(&z, &salt, 1, u, v),
            *channel_key(&z, &salt, 2, u, v),
            self_mask_seed(&z, &salt, u).0,
            self_mask_seed(&z, &salt, v).0,
            pairwise_mask_seed(&z, &[4; 32], u, v).0,
        ];
        for i in 0..all.len() {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{i} vs {j}");
            }
        }
    }
}
