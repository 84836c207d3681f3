//! "Did you mean" suggestions for misspelled names.

/// The candidate closest to `name` by edit distance (a swap of two
/// neighbouring characters counts as one edit), if it is close enough to
/// be a plausible typo (at most a third of the name's length, and at least 1).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(name, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggests_near_names_only() {
        let c = ["matmul", "max", "mean", "softmax"];
        assert_eq!(super::closest("matmull", c), Some("matmul"));
        assert_eq!(super::closest("sofmax", c), Some("softmax"));
        assert_eq!(super::closest("conv", c), None);
        assert_eq!(super::closest("bf61", ["bf16", "f16"]), Some("bf16"));
    }
}
