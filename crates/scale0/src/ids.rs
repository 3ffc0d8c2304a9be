//! Random ids: routing ids, run ids, worker names' suffixes, Titanic nonces. From the
//! operating system's entropy (`getrandom`), so two processes started in the same instant
//! do not pick the same one.

/// Fills `buf` with random bytes. Should the OS refuse (it does not on Linux), `fastrand`'s
/// generator, seeded per thread, stands in: ids need to differ, not to be secret.
fn fill(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        fastrand::fill(buf);
    }
}

/// A random 64-bit number.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A 16-byte routing id whose first byte is not zero: libzmq's own ids start with zero and
/// repeat across restarts, and the broker treats those as nobody in particular.
pub(crate) fn routing_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    fill(&mut id);
    if let Some(first) = id.first_mut() {
        *first = (*first).max(1);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_routing_ids_never_start_with_zero() {
        let ids: std::collections::HashSet<Vec<u8>> = (0..1000).map(|_| routing_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 16 && id[0] != 0));
        assert_ne!(random_u64(), random_u64());
    }
}
