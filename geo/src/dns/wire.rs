//! What both answer paths (`answer.rs` through hickory-proto's types, `fast.rs` straight from
//! bytes) read the same way, so that they cannot disagree on it: the header's size, where a
//! question's name ends, and which ECS options are well formed.

use std::net::IpAddr;

use hickory_proto::rr::rdata::opt::ClientSubnet;

/// A DNS message's fixed header, before the question.
pub(super) const HEADER: usize = 12;

/// Where the name written out at `at` ends (just past its root's zero byte), if it is written
/// out in full: labels of 1 to 63 bytes, no compression pointer (which in a question would
/// point back into the header).
pub(super) fn name_end(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1 + len;
        match len {
            0 => return Some(at),
            1..=63 => {}
            _ => return None,
        }
    }
}

/// Whether an ECS option is well formed: no address bits set past its source prefix. A query
/// with any other gets FORMERR.
pub(super) fn well_formed(ecs: &ClientSubnet) -> bool {
    let prefix = u32::from(ecs.source_prefix());
    match ecs.addr() {
        IpAddr::V4(addr) => {
            prefix <= 32 && u32::from(addr) & !u32::MAX.checked_shl(32 - prefix).unwrap_or(0) == 0
        }
        IpAddr::V6(addr) => {
            prefix <= 128
                && u128::from(addr) & !u128::MAX.checked_shl(128 - prefix).unwrap_or(0) == 0
        }
    }
}
