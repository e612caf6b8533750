//! The common UDP query, read and answered straight from its bytes.
//!
//! Nearly every query a geo DNS server sees is the same shape: one question, A or AAAA, for a
//! host in the zone, with an OPT record that holds at most an ECS option. For those, parsing
//! the message into hickory-proto's types and encoding the reply from them cost more than
//! everything else in the answer (profiles under dnsperf: about half of the user time). This
//! reads that one shape and writes the reply bytes directly, and declines everything else,
//! which then takes the general path in `answer.rs`. The two must agree byte for byte; the
//! tests check that they do for every shape this accepts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::ClientSubnet;

use super::handler::GeoDns;
use super::metrics::Transport;
use super::wire::{name_end, well_formed, HEADER};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_DAU: u16 = 5;
const OPTION_ECS: u16 = 8;

/// What the reply needs from a query of the common shape.
struct Query<'a> {
    /// The question as it came: name (in the client's spelling), type and class.
    question: &'a [u8],
    v6: bool,
    /// The flags byte that carries RD; the reply copies RD and CD from the query.
    flags: [u8; 2],
    edns: Option<Edns<'a>>,
}

struct Edns<'a> {
    udp_size: u16,
    ecs: Option<Ecs<'a>>,
}

struct Ecs<'a> {
    /// FAMILY and SOURCE PREFIX-LENGTH, copied into the reply.
    family: u16,
    source_prefix: u8,
    /// ADDRESS, as many bytes as the source prefix needs.
    address: &'a [u8],
    addr: IpAddr,
}

impl GeoDns {
    /// Writes the reply to `datagram` into `out` and returns true if the query is of the
    /// common shape and its answer holds at least one relay and fits; else returns false and
    /// leaves `out` empty.
    pub(super) fn answer_fast(&self, datagram: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
        let Some(query) = Query::read(datagram) else {
            return false;
        };
        let name_len = query.question.len() - 4;
        let mut lower = [0u8; 255];
        let Some(name) = lower.get_mut(..name_len) else {
            return false;
        };
        name.copy_from_slice(&query.question[..name_len]);
        name.make_ascii_lowercase();
        if !self.zone.relay_names.contains(&*name) {
            return false;
        }

        let ecs = query.edns.as_ref().and_then(|e| e.ecs.as_ref());
        let subnet = ecs.map(|e| ClientSubnet::new(e.addr, e.source_prefix, 0));
        let table = self.table.borrow().clone();
        let choice = self.chosen(subnet.as_ref(), src.ip(), &table, query.v6);

        out.clear();
        out.extend_from_slice(&datagram[..2]);
        // QR and AA; RD and CD as the query had them; opcode, RA, AD and RCODE all 0.
        out.extend_from_slice(&[0x84 | (query.flags[0] & 0x01), query.flags[1] & 0x10]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(query.edns.is_some())]);
        out.extend_from_slice(query.question);
        let mut answers: u16 = 0;
        let relays = choice.relays.iter().filter_map(|&i| table.relays().get(i));
        for relay in relays {
            if query.v6 {
                for ip in &relay.ipv6 {
                    self.put_address(out, TYPE_AAAA, &ip.octets());
                    answers += 1;
                }
            } else {
                for ip in &relay.ipv4 {
                    self.put_address(out, TYPE_A, &ip.octets());
                    answers += 1;
                }
            }
        }
        if answers == 0 {
            // NODATA, with the zone's SOA: the general path writes it.
            out.clear();
            return false;
        }
        out[6..8].copy_from_slice(&answers.to_be_bytes());
        if query.edns.is_some() {
            self.put_opt(out, ecs, choice.scope);
        }
        if out.len() > self.udp_limit(query.edns.as_ref().map(|e| e.udp_size)) {
            // Truncation: the general path decides what still fits.
            out.clear();
            return false;
        }
        self.metrics
            .answered(ResponseCode::NoError, Transport::Udp, ecs.is_some());
        true
    }

    /// One A or AAAA record, its owner a pointer to the question's name (at offset 12).
    fn put_address(&self, out: &mut Vec<u8>, rtype: u16, ip: &[u8]) {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&self.zone.ttl.to_be_bytes());
        let rdlen: u16 = if rtype == TYPE_AAAA { 16 } else { 4 };
        out.extend_from_slice(&rdlen.to_be_bytes());
        out.extend_from_slice(ip);
    }

    /// The reply's OPT record (RFC 6891): our buffer size, version 0, no flags, and the ECS
    /// option echoed with the scope the answer holds for (RFC 7871, 7.2.1).
    fn put_opt(&self, out: &mut Vec<u8>, ecs: Option<&Ecs<'_>>, scope: u8) {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&self.zone.max_udp_payload.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        match ecs {
            None => out.extend_from_slice(&[0, 0]),
            Some(ecs) => {
                // The address is as long as the source prefix needs (checked when read).
                let option_len = 4 + u16::from(ecs.source_prefix.div_ceil(8));
                out.extend_from_slice(&(4 + option_len).to_be_bytes());
                out.extend_from_slice(&OPTION_ECS.to_be_bytes());
                out.extend_from_slice(&option_len.to_be_bytes());
                out.extend_from_slice(&ecs.family.to_be_bytes());
                out.extend_from_slice(&[ecs.source_prefix, scope]);
                out.extend_from_slice(ecs.address);
            }
        }
    }
}

impl<'a> Query<'a> {
    /// The query, if `datagram` is exactly the common shape; anything else, however valid,
    /// is `None`.
    fn read(datagram: &'a [u8]) -> Option<Self> {
        let header = datagram.get(..HEADER)?;
        let flags = [header[2], header[3]];
        // QR 0 (a query), opcode 0 (QUERY), TC 0; RCODE 0.
        if flags[0] & 0xfa != 0 || flags[1] & 0x0f != 0 {
            return None;
        }
        let counts = [u16_at(header, 4)?, u16_at(header, 6)?, u16_at(header, 8)?];
        let additional = u16_at(header, 10)?;
        if counts != [1, 0, 0] || additional > 1 {
            return None;
        }
        let mut at = name_end(datagram, HEADER)?;
        let question = datagram.get(HEADER..at + 4)?;
        let (qtype, qclass) = (u16_at(datagram, at)?, u16_at(datagram, at + 2)?);
        let v6 = match qtype {
            TYPE_A => false,
            TYPE_AAAA => true,
            _ => return None,
        };
        if qclass != CLASS_IN || question.len() - 4 > 255 {
            return None;
        }
        at += 4;
        let edns = if additional == 1 {
            let (edns, end) = Edns::read(datagram, at)?;
            at = end;
            Some(edns)
        } else {
            None
        };
        (at == datagram.len()).then_some(Self {
            question,
            v6,
            flags,
            edns,
        })
    }
}

impl<'a> Edns<'a> {
    /// An OPT record at `at`: root owner, version 0, at most one ECS option, and other options
    /// only of the kinds the general path ignores too. Returns it and where it ends.
    fn read(datagram: &'a [u8], at: usize) -> Option<(Self, usize)> {
        let fixed = datagram.get(at..at + 11)?;
        // Owner the root; EXTENDED-RCODE and VERSION 0 (the flags, such as DO, are not echoed).
        if fixed[0] != 0 || u16_at(fixed, 1)? != TYPE_OPT || fixed[5] != 0 || fixed[6] != 0 {
            return None;
        }
        let udp_size = u16_at(fixed, 3)?;
        let rdlen = usize::from(u16_at(fixed, 9)?);
        let end = at + 11 + rdlen;
        let mut options = datagram.get(at + 11..end)?;
        let mut ecs = None;
        while !options.is_empty() {
            let code = u16_at(options, 0)?;
            let len = usize::from(u16_at(options, 2)?);
            let data = options.get(4..4 + len)?;
            match code {
                OPTION_ECS if ecs.is_none() => ecs = Some(Ecs::read(data)?),
                // A second ECS is FORMERR; DAU is parsed, and may be refused, by hickory-proto.
                OPTION_ECS | OPTION_DAU => return None,
                // A COOKIE (BIND sends one with every query), NSID, padding: not answered, as
                // the general path does not answer them.
                _ => {}
            }
            options = &options[4 + len..];
        }
        Some((Self { udp_size, ecs }, end))
    }
}

impl<'a> Ecs<'a> {
    /// An ECS option's data, if it is well formed with a scope of 0 (RFC 7871, 6): the
    /// address as long as the prefix needs, and no bit set past the prefix.
    fn read(data: &'a [u8]) -> Option<Self> {
        let family = u16_at(data, 0)?;
        let (source_prefix, scope) = (*data.get(2)?, *data.get(3)?);
        let address = data.get(4..)?;
        let bits = match family {
            1 => 32,
            2 => 128,
            _ => return None,
        };
        if scope != 0
            || source_prefix > bits
            || address.len() != usize::from(source_prefix).div_ceil(8)
        {
            return None;
        }
        let addr = if family == 1 {
            let mut octets = [0u8; 4];
            octets[..address.len()].copy_from_slice(address);
            IpAddr::V4(Ipv4Addr::from(octets))
        } else {
            let mut octets = [0u8; 16];
            octets[..address.len()].copy_from_slice(address);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        // No address bit set past the prefix (the general path answers FORMERR).
        if !well_formed(&ClientSubnet::new(addr, source_prefix, 0)) {
            return None;
        }
        Some(Self {
            family,
            source_prefix,
            address,
            addr,
        })
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}
