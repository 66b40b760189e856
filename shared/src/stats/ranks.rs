//! Midranks (average ranks of ties), the O(n log n) building block of AUC and DeLong.

/// Midranks (1-based, ties get the mean of the ranks they span) of `values`, in input order.
#[cfg(test)]
fn midranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_unstable_by(|&a, &b| values[a].total_cmp(&values[b]));
    midranks_of_sorted(values, &order)
}

/// Midranks given a permutation `order` that sorts `values` ascending.
pub(crate) fn midranks_of_sorted(values: &[f64], order: &[usize]) -> Vec<f64> {
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_the_mean_rank() {
        assert_eq!(midranks(&[0.3, 0.1, 0.3, 0.2]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(midranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
        assert!(midranks(&[]).is_empty());
    }
}
