//! Shamir t-of-n secret sharing of 32-byte secrets over GF(2^8), byte by byte, in constant time.
//!
//! Each byte of the secret is the constant term of its own random polynomial of degree t − 1 over
//! GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1). A share is the evaluation of all 32 polynomials at
//! a non-zero point x (a site's 1-based index in the participant list): 255 sites at most. Field
//! multiplication is branch-free and table-free, so splitting leaks no secret through timing.

use ring::rand::SecureRandom;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes in a shared secret (an X25519 scalar or a self-mask seed).
pub const SECRET_LEN: usize = 32;

/// One share: the evaluations at `x` of the 32 byte polynomials.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// The evaluation point, never 0 (0 is where the secret lives).
    pub x: u8,
    /// The 32 evaluations.
    pub y: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// What can be wrong with a split or a reconstruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    /// The threshold is 0 or larger than the number of shares.
    #[error("threshold {threshold} is not in 1..={shares}")]
    BadThreshold { threshold: usize, shares: usize },
    /// An evaluation point is 0 (it would reveal the secret).
    #[error("evaluation point 0 is not allowed")]
    ZeroPoint,
    /// Two shares (or two requested points) have the same x.
    #[error("evaluation point {0} appears twice")]
    DuplicatePoint(u8),
    /// Fewer shares than the threshold.
    #[error("{got} shares given, {threshold} needed")]
    NotEnoughShares { got: usize, threshold: usize },
    /// A share beyond the first `threshold` does not lie on the polynomial they define.
    #[error("share at point {0} is inconsistent with the others")]
    Inconsistent(u8),
    /// The random generator failed.
    #[error("random generator failed")]
    Rng,
}

/// Splits `secret` into one share per point of `points` (distinct, non-zero); any `threshold` of them
/// reconstruct it, fewer reveal nothing.
///
/// # Errors
/// A bad threshold or point, or a random-generator failure.
pub fn split(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    points: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 || threshold > points.len() {
        return Err(ShamirError::BadThreshold {
            threshold,
            shares: points.len(),
        });
    }
    check_points(points.iter().copied())?;
    // coefficients[k] holds the degree-(k+1) coefficient of all 32 byte polynomials.
    let mut coefficients = Zeroizing::new(vec![[0u8; SECRET_LEN]; threshold - 1]);
    for c in coefficients.iter_mut() {
        rng.fill(c).map_err(|_| ShamirError::Rng)?;
    }
    let shares = points
        .iter()
        .map(|&x| {
            // Horner from the top coefficient down to the secret.
            let mut y = [0u8; SECRET_LEN];
            for c in coefficients.iter().rev() {
                for (yb, cb) in y.iter_mut().zip(c) {
                    *yb = gf_mul(*yb, x) ^ cb;
                }
            }
            for (yb, sb) in y.iter_mut().zip(secret) {
                *yb = gf_mul(*yb, x) ^ sb;
            }
            Share { x, y }
        })
        .collect();
    Ok(shares)
}

/// Reconstructs the secret from the first `threshold` shares and checks that every further share lies
/// on the same polynomials (so a corrupted or foreign share is detected whenever more than `threshold`
/// shares are given).
///
/// # Errors
/// Too few shares, a zero or repeated point, or an inconsistent extra share.
pub fn combine(shares: &[Share], threshold: usize) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::BadThreshold {
            threshold,
            shares: shares.len(),
        });
    }
    if shares.len() < threshold {
        return Err(ShamirError::NotEnoughShares {
            got: shares.len(),
            threshold,
        });
    }
    check_points(shares.iter().map(|s| s.x))?;
    let (basis, extra) = shares.split_at(threshold);
    for s in extra {
        let y = interpolate_at(basis, s.x);
        if *y != s.y {
            return Err(ShamirError::Inconsistent(s.x));
        }
    }
    Ok(interpolate_at(basis, 0))
}

/// Lagrange interpolation of the byte polynomials through `shares` (distinct non-zero points), at `x`.
fn interpolate_at(shares: &[Share], x: u8) -> Zeroizing<[u8; SECRET_LEN]> {
    let mut out = Zeroizing::new([0u8; SECRET_LEN]);
    for (i, si) in shares.iter().enumerate() {
        // l_i(x) = Π_{j≠i} (x − x_j) / (x_i − x_j); subtraction is XOR in GF(2^8).
        let mut num = 1u8;
        let mut den = 1u8;
        for (j, sj) in shares.iter().enumerate() {
            if i != j {
                num = gf_mul(num, x ^ sj.x);
                den = gf_mul(den, si.x ^ sj.x);
            }
        }
        let li = gf_mul(num, gf_inv(den));
        for (ob, yb) in out.iter_mut().zip(&si.y) {
            *ob ^= gf_mul(li, *yb);
        }
    }
    out
}

fn check_points(points: impl Iterator<Item = u8>) -> Result<(), ShamirError> {
    let mut seen = [false; 256];
    for x in points {
        if x == 0 {
            return Err(ShamirError::ZeroPoint);
        }
        if std::mem::replace(&mut seen[usize::from(x)], true) {
            return Err(ShamirError::DuplicatePoint(x));
        }
    }
    Ok(())
}

/// Multiplication in GF(2^8) mod x^8 + x^4 + x^3 + x + 1, without branches or tables.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = a >> 7;
        a = (a << 1) ^ (0x1b & 0u8.wrapping_sub(carry));
        b >>= 1;
    }
    product
}

/// Inverse in GF(2^8) as a^254 (a^255 = 1 for a ≠ 0); maps 0 to 0. Fixed square-and-multiply chain.
fn gf_inv(a: u8) -> u8 {
    // 254 = 0b1111_1110.
    let mut result = 1u8;
    let mut power = a;
    for bit in 0..8 {
        let square_in = gf_mul(result, power);
        let take = 0u8.wrapping_sub((254u8 >> bit) & 1);
        result = (square_in & take) | (result & !take);
        power = gf_mul(power, power);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;

    /// Schoolbook reference: carry-less multiply, then reduce.
    fn gf_mul_reference(a: u8, b: u8) -> u8 {
        let mut wide = 0u16;
        for i in 0..8 {
            if (b >> i) & 1 == 1 {
                wide ^= u16::from(a) << i;
            }
        }
        for i in (8..16).rev() {
            if (wide >> i) & 1 == 1 {
                wide ^= 0x11b << (i - 8);
            }
        }
        wide as u8
    }

    #[test]
    fn field_arithmetic_matches_the_reference_and_inverts() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), gf_mul_reference(a, b), "{a} * {b}");
            }
            if a != 0 {
                assert_eq!(gf_mul(a, gf_inv(a)), 1, "inverse of {a}");
            }
        }
        // The AES field's textbook example: {57} x {83} = {c1}.
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let rng = SystemRandom::new();
        let s = [7u8; 32];
        assert_eq!(
            split(&s, 0, &[1, 2], &rng),
            Err(ShamirError::BadThreshold {
                threshold: 0,
                shares: 2
            })
        );
        assert_eq!(
            split(&s, 3, &[1, 2], &rng),
            Err(ShamirError::BadThreshold {
                threshold: 3,
                shares: 2
            })
        );
        assert_eq!(split(&s, 2, &[0, 2], &rng), Err(ShamirError::ZeroPoint));
        assert_eq!(split(&s, 2, &[2, 2], &rng), Err(ShamirError::DuplicatePoint(2)));
        let shares = split(&s, 2, &[1, 2, 3], &rng).unwrap();
        assert_eq!(
            combine(&shares[..1], 2).unwrap_err(),
            ShamirError::NotEnoughShares { got: 1, threshold: 2 }
        );
        let dup = vec![shares[0].clone(), shares[0].clone()];
        assert_eq!(combine(&dup, 2).unwrap_err(), ShamirError::DuplicatePoint(1));
        let mut bad = shares.clone();
        bad[2].y[5] ^= 1;
        assert_eq!(combine(&bad, 2).unwrap_err(), ShamirError::Inconsistent(3));
    }

    proptest! {
        /// Any `threshold` shares (in any order) give back the secret; all shares do too.
        #[test]
        fn any_threshold_subset_reconstructs(
            secret in any::<[u8; 32]>(),
            n in 2usize..=20,
            t_frac in 0.0f64..1.0,
            seed in any::<u64>(),
        ) {
            let t = 1 + ((n as f64 - 1.0) * t_frac) as usize;
            let points: Vec<u8> = (1..=n as u8).collect();
            let shares = split(&secret, t, &points, &SystemRandom::new()).unwrap();
            prop_assert_eq!(*combine(&shares, t).unwrap(), secret);
            // A pseudo-random subset of size t, in a pseudo-random order.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut state = seed | 1;
            for i in (1..n).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                idx.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let subset: Vec<Share> = idx[..t].iter().map(|&i| shares[i].clone()).collect();
            prop_assert_eq!(*combine(&subset, t).unwrap(), secret);
        }
    }
}
