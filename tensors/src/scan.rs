//! Checks safetensors bytes as they stream in: [`FiniteScan`] reads every 4-byte word of the data
//! region (everything after the header) as an f32 and notes the first that is not finite, chunk by
//! chunk, while the chunk is still in the cache from its arrival. The receiver of an upload then need
//! not read the whole upload again from memory to check it (see `FedAvg::hold_f32_bytes`).

/// The running scan of one transfer.
#[derive(Debug, Clone, Default)]
pub struct FiniteScan {
    /// Bytes seen so far.
    seen: u64,
    /// The file's first 8 bytes: the header's length, little-endian.
    length: [u8; 8],
    /// A word of the data region split across two chunks.
    carry: [u8; 4],
    carry_len: usize,
    first_non_finite: Option<u64>,
}

/// What a finished scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Bytes scanned (the whole transfer).
    pub bytes: u64,
    /// Where the data region starts (8 + the header's length); `None` for fewer than 8 bytes.
    pub data_start: Option<u64>,
    /// Offset (from the start of the bytes) of the first data word that is not a finite f32.
    pub first_non_finite: Option<u64>,
    /// The data region is a whole number of words.
    pub whole_words: bool,
}

/// Index of the first word of `words` that is not a finite f32: one pass that vectorizes for the
/// common answer (all finite), a second only when one is not.
fn first_not_finite(words: &[[u8; 4]]) -> Option<usize> {
    let finite = |w: &[u8; 4]| f32::from_le_bytes(*w).is_finite();
    if words.iter().fold(true, |ok, w| ok & finite(w)) {
        None
    } else {
        words.iter().position(|w| !finite(w))
    }
}

impl FiniteScan {
    /// A scan of a transfer not started yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the data region starts, once the header's length has arrived.
    fn data_start(&self) -> Option<u64> {
        (self.seen >= 8).then(|| 8u64.saturating_add(u64::from_le_bytes(self.length)))
    }

    /// The next `chunk` of the transfer.
    pub fn update(&mut self, mut chunk: &[u8]) {
        while self.seen < 8 {
            let Some((&byte, rest)) = chunk.split_first() else {
                return;
            };
            self.length[self.seen as usize] = byte;
            self.seen += 1;
            chunk = rest;
        }
        let Some(start) = self.data_start() else {
            return;
        };
        if self.seen < start {
            let skip = usize::try_from(start - self.seen).map_or(chunk.len(), |s| s.min(chunk.len()));
            self.seen += skip as u64;
            chunk = &chunk[skip..];
        }
        if self.carry_len > 0 {
            let take = (4 - self.carry_len).min(chunk.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            self.carry_len += take;
            self.seen += take as u64;
            chunk = &chunk[take..];
            if self.carry_len < 4 {
                return;
            }
            if self.first_non_finite.is_none() && !f32::from_le_bytes(self.carry).is_finite() {
                self.first_non_finite = Some(self.seen - 4);
            }
            self.carry_len = 0;
        }
        let (words, tail) = chunk.as_chunks::<4>();
        if self.first_non_finite.is_none()
            && let Some(i) = first_not_finite(words)
        {
            self.first_non_finite = Some(self.seen + 4 * i as u64);
        }
        self.seen += 4 * words.len() as u64;
        self.carry[..tail.len()].copy_from_slice(tail);
        self.carry_len = tail.len();
        self.seen += tail.len() as u64;
    }

    /// What the scan found.
    #[must_use]
    pub fn finish(&self) -> ScanReport {
        ScanReport {
            bytes: self.seen,
            data_start: self.data_start(),
            first_non_finite: self.first_non_finite,
            whole_words: self.carry_len == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan of `bytes` cut into chunks at `cuts`.
    fn scan(bytes: &[u8], cuts: &[usize]) -> ScanReport {
        let mut scan = FiniteScan::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(from, bytes.len());
            scan.update(&bytes[from..cut]);
            from = cut;
        }
        scan.finish()
    }

    fn file(header: &[u8], values: &[f32]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        bytes
    }

    #[test]
    fn the_first_non_finite_word_is_found_however_the_bytes_are_cut() {
        // A header of NaN-looking bytes is not data: only the words after it are read.
        let header = [0xff_u8; 13];
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let clean = file(&header, &values);
        values[617] = f32::NAN;
        values[900] = f32::INFINITY;
        let dirty = file(&header, &values);
        let nan_at = (8 + header.len() + 4 * 617) as u64;
        for cuts in [
            vec![],
            vec![1, 3, 8, 9, 21, 22],
            vec![2477, 2478],
            (0..dirty.len()).step_by(7).collect(),
        ] {
            let report = scan(&clean, &cuts);
            assert_eq!(report.first_non_finite, None, "{cuts:?}");
            assert_eq!(report.data_start, Some(21));
            assert_eq!(report.bytes, clean.len() as u64);
            assert!(report.whole_words);
            assert_eq!(scan(&dirty, &cuts).first_non_finite, Some(nan_at), "{cuts:?}");
        }
        // A trailing partial word, and a transfer too short to have a header length, say so.
        assert!(!scan(&clean[..clean.len() - 1], &[]).whole_words);
        assert_eq!(scan(&clean[..5], &[]).data_start, None);
        // A header length past the end leaves no data to read.
        let mut huge = clean.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let report = scan(&huge, &[9]);
        assert_eq!(
            (report.data_start, report.first_non_finite),
            (Some(u64::MAX), None)
        );
    }
}
