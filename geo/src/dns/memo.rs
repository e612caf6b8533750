//! The relays chosen for a client, remembered per thread until the relay table changes.
//!
//! Resolvers send many queries from one subnet, and the answer for a subnet depends only on
//! the table (relays, their health, measured round trips) and the zone's settings. Placing
//! the subnet (a GeoIP lookup) and ranking every relay for it cost about as much as parsing
//! and encoding the message, so a busy server does them once per subnet and table instead of
//! once per query. gdnsd goes further and compiles the whole GeoIP database into answers at
//! load time; a memo keeps startup instant and memory bounded.
//!
//! Per thread, so that the UDP threads never share a lock: each keeps its own copy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::config::Zone;
use super::table::DnsTable;

/// Clients remembered per thread. Past this the memo starts over: a flood of distinct subnets
/// costs a ranking each, as without the memo, and never more memory.
const CAPACITY: usize = 4096;

/// Everything an answer's relays depend on besides the table and the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    /// The ECS subnet's address, or the resolver's address when the query has no ECS option
    /// or one with a source prefix of 0.
    pub addr: IpAddr,
    /// The ECS option's source prefix, `None` without one.
    pub source_prefix: Option<u8>,
    /// AAAA rather than A records.
    pub v6: bool,
}

/// The relays an answer holds, best first, and the ECS scope it holds for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Choice {
    /// Indices into [`DnsTable::relays`].
    pub relays: Vec<usize>,
    pub scope: u8,
}

#[derive(Default)]
struct Memo {
    /// The zone and table the choices were made for: held, so that a new one allocated at an
    /// old one's address cannot be mistaken for it.
    made_for: Option<(Arc<Zone>, Arc<DnsTable>)>,
    choices: HashMap<ClientKey, Rc<Choice>>,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// The choice for `key` under `zone` and `table`: remembered, or made by `choose` and
/// remembered.
pub(super) fn choice(
    zone: &Arc<Zone>,
    table: &Arc<DnsTable>,
    key: ClientKey,
    choose: impl FnOnce() -> Choice,
) -> Rc<Choice> {
    MEMO.with_borrow_mut(|memo| {
        let current = memo
            .made_for
            .as_ref()
            .is_some_and(|(z, t)| Arc::ptr_eq(z, zone) && Arc::ptr_eq(t, table));
        if !current || memo.choices.len() >= CAPACITY {
            memo.choices.clear();
            memo.made_for = Some((zone.clone(), table.clone()));
        }
        memo.choices
            .entry(key)
            .or_insert_with(|| Rc::new(choose()))
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::DnsConfig;

    fn key(last: u8) -> ClientKey {
        ClientKey {
            addr: IpAddr::from([192, 0, 2, last]),
            source_prefix: Some(32),
            v6: false,
        }
    }

    fn zone() -> Arc<Zone> {
        Arc::new(Zone::from_config(&DnsConfig::for_zone("example.test")).unwrap())
    }

    fn made(n: usize) -> Choice {
        Choice {
            relays: vec![n],
            scope: 24,
        }
    }

    #[test]
    fn a_client_is_ranked_once_per_table() {
        let (zone, table) = (zone(), Arc::new(DnsTable::default()));
        let mut ranked = 0;
        for _ in 0..3 {
            let got = choice(&zone, &table, key(1), || {
                ranked += 1;
                made(7)
            });
            assert_eq!(*got, made(7));
        }
        assert_eq!(ranked, 1);
    }

    #[test]
    fn a_new_table_or_zone_ranks_again() {
        let zone_a = zone();
        let table_a = Arc::new(DnsTable::default());
        choice(&zone_a, &table_a, key(1), || made(1));
        let table_b = Arc::new(DnsTable::default());
        assert_eq!(*choice(&zone_a, &table_b, key(1), || made(2)), made(2));
        assert_eq!(*choice(&zone(), &table_b, key(1), || made(3)), made(3));
    }

    #[test]
    fn keys_that_differ_in_anything_are_ranked_apart() {
        let (zone, table) = (zone(), Arc::new(DnsTable::default()));
        let base = key(1);
        choice(&zone, &table, base, || made(1));
        let others = [
            key(2),
            ClientKey {
                source_prefix: Some(24),
                ..base
            },
            ClientKey {
                source_prefix: None,
                ..base
            },
            ClientKey { v6: true, ..base },
        ];
        for (n, other) in others.into_iter().enumerate() {
            assert_eq!(*choice(&zone, &table, other, || made(n + 10)), made(n + 10));
        }
    }

    #[test]
    fn the_memo_starts_over_when_full() {
        let (zone, table) = (zone(), Arc::new(DnsTable::default()));
        for n in 0..CAPACITY {
            let addr = IpAddr::from(u32::try_from(n).unwrap().to_be_bytes());
            choice(&zone, &table, ClientKey { addr, ..key(0) }, || made(n));
        }
        MEMO.with_borrow(|memo| assert_eq!(memo.choices.len(), CAPACITY));
        choice(&zone, &table, key(255), || made(0));
        MEMO.with_borrow(|memo| assert_eq!(memo.choices.len(), 1));
    }
}
