//! Decoded samples to 8-bit RGB: bit extraction, planar and YBR_FULL_422 layouts, grey and YBR to RGB.

use super::header::Photometric;

/// How the samples of one frame lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrangement {
    /// Pixel by pixel, all samples of a pixel together.
    Interleaved,
    /// Sample plane by sample plane.
    Planar,
    /// YBR_FULL_422: per horizontal pair of pixels, Y1 Y2 Cb Cr.
    PairsYybr,
}

/// The colour space of the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Colour {
    Grey { inverted: bool },
    Rgb,
    Ybr,
}

impl Colour {
    pub(super) fn of(photometric: Photometric) -> Self {
        match photometric {
            Photometric::Monochrome1 => Self::Grey { inverted: true },
            Photometric::Monochrome2 => Self::Grey { inverted: false },
            Photometric::Rgb => Self::Rgb,
            Photometric::YbrFull | Photometric::YbrFull422 => Self::Ybr,
        }
    }
}

/// One decoded frame: little-endian samples with their bit layout and colour space.
#[derive(Debug)]
pub(super) struct Samples {
    pub(super) data: Vec<u8>,
    pub(super) bytes_per_sample: usize,
    pub(super) samples_per_pixel: usize,
    /// The sample value's lowest bit within its stored word (HighBit + 1 - BitsStored).
    pub(super) low_bit: u16,
    pub(super) bits_stored: u16,
    pub(super) arrangement: Arrangement,
    pub(super) colour: Colour,
}

impl Samples {
    /// Interleaved 8-bit RGB of `n_pixels` pixels (the data holds at least that many). The stored
    /// samples are dropped once scaled, so that at most two copies of the frame exist at a time.
    pub(super) fn into_rgb(self, n_pixels: usize) -> Vec<u8> {
        let values = self.eight_bit();
        let Self {
            data,
            samples_per_pixel: samples,
            arrangement,
            colour,
            ..
        } = self;
        drop(data);
        let value = |index: usize| values.get(index).copied().unwrap_or(0);
        let sample = |pixel: usize, channel: usize| match arrangement {
            Arrangement::Interleaved => value(pixel * samples + channel),
            Arrangement::Planar => value(channel * n_pixels + pixel),
            // Pair p of pixels 2p, 2p + 1 is stored at 4p: Y(2p) Y(2p + 1) Cb Cr.
            Arrangement::PairsYybr => {
                let pair = pixel / 2;
                match channel {
                    0 => value(4 * pair + pixel % 2),
                    _ => value(4 * pair + 1 + channel),
                }
            }
        };
        let mut rgb = Vec::with_capacity(n_pixels * 3);
        for pixel in 0..n_pixels {
            match colour {
                Colour::Grey { inverted } => {
                    let grey = sample(pixel, 0);
                    rgb.extend([if inverted { 255 - grey } else { grey }; 3]);
                }
                Colour::Rgb => rgb.extend([sample(pixel, 0), sample(pixel, 1), sample(pixel, 2)]),
                Colour::Ybr => rgb.extend(ybr_to_rgb(sample(pixel, 0), sample(pixel, 1), sample(pixel, 2))),
            }
        }
        rgb
    }

    /// Every stored sample scaled to 8 bits: its BitsStored bits from `low_bit` up, the top 8 kept
    /// (fewer than 8 stretched to 0–255).
    pub(super) fn eight_bit(&self) -> Vec<u8> {
        let bits = u32::from(self.bits_stored.clamp(1, 16));
        let mask = u32::MAX >> (32 - bits);
        let scale = |word: u32| {
            let value = (word >> self.low_bit) & mask;
            let scaled = if bits >= 8 {
                value >> (bits - 8)
            } else {
                (value * 255 + mask / 2) / mask
            };
            // `scaled` is at most 255 by construction.
            u8::try_from(scaled).unwrap_or(u8::MAX)
        };
        match self.bytes_per_sample {
            1 => self.data.iter().map(|&byte| scale(u32::from(byte))).collect(),
            _ => self
                .data
                .chunks_exact(2)
                .map(|pair| scale(u32::from(u16::from_le_bytes([pair[0], pair[1]]))))
                .collect(),
        }
    }
}

/// YBR_FULL (ITU-R BT.601 full range) to RGB.
pub(super) fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    // Clamped to [0, 255] and rounded: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let channel = |value: f32| value.round().clamp(0.0, 255.0) as u8;
    [
        channel(y + 1.402 * cr),
        channel(y - 0.344_136 * cb - 0.714_136 * cr),
        channel(y + 1.772 * cb),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_take_bits_stored_from_the_high_bit_down_and_scale_to_eight_bits() {
        let samples = |words: &[u16], bits_stored, low_bit| Samples {
            data: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
            bytes_per_sample: 2,
            samples_per_pixel: 1,
            low_bit,
            bits_stored,
            arrangement: Arrangement::Interleaved,
            colour: Colour::Grey { inverted: false },
        };
        // 12 bits stored at the bottom: 4095 is white, 2048 mid-grey; bits above 11 are ignored.
        assert_eq!(samples(&[4095, 2048, 0xF000], 12, 0).eight_bit(), [255, 128, 0]);
        // 12 bits stored from bit 4 (HighBit 15): the low nibble is ignored.
        assert_eq!(samples(&[0xFFF0, 0x800F], 12, 4).eight_bit(), [255, 128]);
        // 6 bits stretched to the full range.
        assert_eq!(samples(&[63, 0], 6, 0).eight_bit(), [255, 0]);
    }

    #[test]
    fn ybr_full_422_pairs_share_their_chroma() {
        // Two pixels: Y 10 and 200, neutral chroma, then two more with Cb = 255 (blue-ish).
        let samples = Samples {
            data: vec![10, 200, 128, 128, 100, 100, 255, 128],
            bytes_per_sample: 1,
            samples_per_pixel: 3,
            low_bit: 0,
            bits_stored: 8,
            arrangement: Arrangement::PairsYybr,
            colour: Colour::Ybr,
        };
        let rgb = samples.into_rgb(4);
        assert_eq!(&rgb[..6], &[10, 10, 10, 200, 200, 200]);
        assert_eq!(&rgb[6..9], &rgb[9..12], "the second pair shares one chroma");
        assert_eq!(rgb[6..9], ybr_to_rgb(100, 255, 128));
    }
}
