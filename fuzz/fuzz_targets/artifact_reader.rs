//! Arbitrary bytes through the artifact reader (`Artifact::from_bytes`):
//! it may refuse them, never panic. Random bytes rarely carry valid
//! checksums, so each input is also read a second time with its header and
//! section checksums recomputed where the section table parses (the layout
//! of docs/artifact.md), which lets the fuzzer reach the section decoders.
//! The input is also decoded as a kernel program on its own. Nothing is
//! linked or run: an artifact's code is trusted, not fuzzed.

#![no_main]

use libfuzzer_sys::fuzz_target;

use kiln_dialect::kernel::serial;
use kiln_runtime::artifact::Artifact;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `bytes` with every checksum the header declares made to match.
fn resealed(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut b = bytes.to_vec();
    let header_len = u32_at(&b, 12)? as usize;
    let mut at = 16;
    at += 4 + u32_at(&b, at)? as usize;
    at += 4 + u32_at(&b, at)? as usize;
    let n = u32_at(&b, at)? as usize;
    at += 4;
    for i in 0..n.min(64) {
        let e = at + 32 * i;
        let offset = usize::try_from(u64_at(&b, e + 8)?).ok()?;
        let len = usize::try_from(u64_at(&b, e + 16)?).ok()?;
        let section = b.get(offset..offset.checked_add(len)?)?;
        let crc = crc32fast::hash(section);
        b.get_mut(e + 24..e + 28)?.copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(b.get(..header_len.checked_sub(4)?)?);
    b.get_mut(header_len - 4..header_len)?
        .copy_from_slice(&crc.to_le_bytes());
    Some(b)
}

fuzz_target!(|data: &[u8]| {
    let _ = Artifact::from_bytes(data);
    if let Some(b) = resealed(data) {
        if let Ok(a) = Artifact::from_bytes(&b) {
            // What was read writes back to bytes that read the same.
            let again = Artifact::from_bytes(&a.to_bytes()).expect("rewritten artifact reads");
            assert_eq!(again.program.launches.len(), a.program.launches.len());
        }
    }
    let _ = serial::decode(data);
});
