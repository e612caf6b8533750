//! The answers themselves, with no IO: a parsed query, the address it came from and the
//! transport in; the header, records and EDNS of the reply out. [`super::GeoDns`] hands the
//! result to hickory-server, which encodes and sends it.

use std::iter;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use hickory_proto::op::message::{emit_message_parts, EmitAndCount};
use hickory_proto::op::{Edns, Header, LowerQuery, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncoder};
use hickory_proto::xfer::Protocol;
use hickory_proto::ProtoError;
use hickory_server::authority::MessageRequest;

use super::config::Node;
use super::handler::GeoDns;
use super::memo::{self, Choice, ClientKey};
use super::metrics::Transport;
use super::network::Network;
use super::table::DnsTable;
use super::wire::{name_end, well_formed, HEADER};
use crate::rank::{rank, Client};
use crate::Location;

/// Without EDNS, a UDP answer may not exceed this (RFC 1035, section 4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;

/// A reply, before encoding.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub header: Header,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub edns: Option<Edns>,
}

impl Reply {
    fn new(request: &Header) -> Self {
        Self {
            header: Header::response_from_request(request),
            answers: Vec::new(),
            authority: Vec::new(),
            edns: None,
        }
    }

    fn rcode(mut self, code: ResponseCode) -> Self {
        self.header.set_response_code(code);
        self
    }

    /// At least the encoded size, counting every name in full (no compression).
    fn size_bound(&self, query: &Query) -> usize {
        let records: usize = self
            .answers
            .iter()
            .chain(&self.authority)
            .map(record_size_bound)
            .sum();
        let opt = self.edns.as_ref().map_or(0, |edns| {
            11 + edns
                .options()
                .as_ref()
                .iter()
                .map(|(_, option)| 4 + usize::from(option.len()))
                .sum::<usize>()
        });
        12 + query.name().len() + 1 + 4 + records + opt
    }

    /// Whether the reply, encoded as hickory-server will encode it, fits in `limit` bytes.
    fn fits(&self, query: &Query, limit: usize) -> bool {
        let mut buffer = Vec::with_capacity(limit);
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.set_max_size(limit as u16);
        self.emit(&mut iter::once(query), &mut encoder)
            .is_ok_and(|h| !h.truncated())
    }

    /// Encodes the reply after `questions` (the query's own, as it spelled them), as
    /// hickory-server does for TCP: the same sections, in the same order.
    fn emit(
        &self,
        questions: &mut impl EmitAndCount,
        encoder: &mut BinEncoder<'_>,
    ) -> Result<Header, ProtoError> {
        emit_message_parts(
            &self.header,
            questions,
            &mut self.answers.iter(),
            &mut self.authority.iter(),
            &mut iter::empty::<&Record>(),
            self.edns.as_ref(),
            &[],
            encoder,
        )
    }
}

/// A query's one question, copied into the answer as it came rather than encoded again (which
/// costs more than the rest of the answer), as hickory-server does. Answers name their owner
/// with a pointer to it.
struct RawQuestion<'a> {
    bytes: &'a [u8],
    /// The name's labels, without the root's zero byte: the span hickory-proto's encoder
    /// matches later names against.
    labels_len: usize,
}

impl<'a> RawQuestion<'a> {
    /// The question of a parsed query with `count` questions, if it is one with a name written
    /// out in full (no compression pointer, which only makes sense relative to the message).
    fn of(datagram: &'a [u8], count: usize) -> Option<Self> {
        if count != 1 {
            return None;
        }
        let at = name_end(datagram, HEADER)?;
        let end = at + 4; // QTYPE and QCLASS
        Some(Self {
            bytes: datagram.get(HEADER..end)?,
            labels_len: at - 1 - HEADER,
        })
    }
}

impl EmitAndCount for RawQuestion<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        let start = encoder.offset();
        encoder.emit_vec(self.bytes)?;
        encoder.store_label_pointer(start, start + self.labels_len);
        Ok(1)
    }
}

fn record_size_bound(record: &Record) -> usize {
    let rdata = match record.data() {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::NS(ns) => ns.0.len() + 1,
        RData::SOA(soa) => soa.mname().len() + soa.rname().len() + 2 + 20,
        _ => usize::from(u16::MAX),
    };
    record.name().len() + 1 + 10 + rdata
}

/// The ECS option of a query: none, one well-formed one, or a malformed query (`Err`).
///
/// hickory-proto already refuses an unknown FAMILY, a SOURCE PREFIX-LENGTH longer than the
/// family's addresses and an ADDRESS cut short, so such queries never parse and hickory-server
/// answers FORMERR itself. What is left to check here is RFC 7871's "non-zero ADDRESS bits set
/// beyond SOURCE PREFIX-LENGTH" and a second ECS option.
/// Whether the query carried an EDNS Client Subnet option, well-formed or not.
pub(super) fn has_ecs(edns: Option<&Edns>) -> bool {
    edns.is_some_and(|e| !e.options().get_all(EdnsCode::Subnet).is_empty())
}

fn client_subnet(edns: Option<&Edns>) -> Result<Option<ClientSubnet>, ()> {
    let Some(edns) = edns else {
        return Ok(None);
    };
    match edns.options().get_all(EdnsCode::Subnet).as_slice() {
        [] => Ok(None),
        [EdnsOption::Subnet(ecs)] if well_formed(ecs) => Ok(Some(*ecs)),
        _ => Err(()),
    }
}

fn family_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

impl GeoDns {
    /// Answers one UDP datagram, writing the encoded answer into `out`, or leaving it empty
    /// when the datagram gets none: it is shorter than a header, is itself a response (never
    /// answered, so that forged sources cannot make two servers talk to each other forever),
    /// or comes from port 0. A query that does not parse past its header gets FORMERR, as
    /// hickory-server answers it over TCP.
    pub fn answer_datagram(&self, datagram: &[u8], src: SocketAddr, out: &mut Vec<u8>) {
        if src.port() == 0 || self.answer_fast(datagram, src, out) {
            return;
        }
        self.answer_general(datagram, src, out);
    }

    /// [`Self::answer_datagram`] for any query, through hickory-proto's message types.
    pub(super) fn answer_general(&self, datagram: &[u8], src: SocketAddr, out: &mut Vec<u8>) {
        let mut encoder = BinEncoder::new(out);
        let encoded = match MessageRequest::from_bytes(datagram) {
            Ok(request) if request.message_type() == MessageType::Query => {
                let reply = self.reply(&request, src, Protocol::Udp);
                let ecs = has_ecs(request.edns());
                self.metrics
                    .answered(reply.header.response_code(), Transport::Udp, ecs);
                match RawQuestion::of(datagram, request.queries().len()) {
                    Some(mut question) => reply.emit(&mut question, &mut encoder),
                    None => {
                        let mut questions = request.queries().iter().map(LowerQuery::original);
                        reply.emit(&mut questions, &mut encoder)
                    }
                }
            }
            Ok(_) => return,
            Err(_) => match Header::from_bytes(datagram) {
                Ok(header) if header.message_type() == MessageType::Query => {
                    let reply = Reply::new(&header).rcode(ResponseCode::FormErr);
                    self.metrics
                        .answered(ResponseCode::FormErr, Transport::Udp, false);
                    reply.emit(&mut iter::empty::<&Query>(), &mut encoder)
                }
                _ => return,
            },
        };
        if let Err(error) = encoded {
            // Every reply is within a u16's length and made of records we built; this is a
            // bug, not bad input. The client gets no answer and asks again.
            tracing::warn!(%src, %error, "geo DNS answer does not encode");
            out.clear();
        }
    }

    /// The reply to `request`, which came from `src` over `protocol`.
    pub(crate) fn reply(
        &self,
        request: &MessageRequest,
        src: SocketAddr,
        protocol: Protocol,
    ) -> Reply {
        let mut reply = Reply::new(request.header());
        let edns = request.edns();
        if let Some(edns) = edns {
            // RFC 6891: an OPT in the query gets one in the reply, with our own buffer size.
            let mut ours = Edns::new();
            ours.set_max_payload(self.zone.max_udp_payload);
            reply.edns = Some(ours);
            if edns.version() > 0 {
                return reply.rcode(ResponseCode::BADVERS);
            }
        }
        if request.op_code() != OpCode::Query {
            return reply.rcode(ResponseCode::NotImp);
        }
        // RFC 9619: a query has exactly one question.
        let [query] = request.queries() else {
            return reply.rcode(ResponseCode::FormErr);
        };
        let Ok(ecs) = client_subnet(edns) else {
            return reply.rcode(ResponseCode::FormErr);
        };

        let scope = self.answer(query, ecs.as_ref(), src.ip(), &mut reply);

        if let (Some(mut ecs), Some(edns)) = (ecs, reply.edns.as_mut()) {
            // RFC 7871, 7.2.1: the same FAMILY, SOURCE PREFIX-LENGTH and ADDRESS, and the
            // SCOPE PREFIX-LENGTH the answer holds for.
            ecs.set_scope_prefix(scope);
            edns.options_mut().insert(EdnsOption::Subnet(ecs));
        }

        if protocol == Protocol::Udp {
            let limit = self.udp_limit(edns.map(Edns::max_payload));
            let question = query.original();
            if reply.size_bound(question) > limit && !reply.fits(question, limit) {
                // Rather than some of the records, none: TC tells the resolver to ask again
                // over TCP, and the OPT record (with the ECS option) still fits.
                reply.answers.clear();
                reply.authority.clear();
                reply.header.set_truncated(true);
            }
        }
        reply
    }

    /// Fills in the answer to one question and returns the ECS scope it holds for: the client
    /// network's prefix length if the answer depends on where the client is (and at least a
    /// [`Network`]'s, 24 or 48, where that network's measurements ranked it), else 0.
    fn answer(
        &self,
        query: &LowerQuery,
        ecs: Option<&ClientSubnet>,
        src: IpAddr,
        reply: &mut Reply,
    ) -> u8 {
        let zone = &self.zone;
        let qname = query.name();
        // Host names first: they are nearly every query, and one hash lookup settles them.
        let node = zone.names.get(qname);
        let at_apex = node.is_none() && *qname == zone.origin;
        let in_zone = node.is_some() || at_apex || zone.origin.zone_of(qname);
        if query.query_class() != DNSClass::IN || !in_zone {
            reply.header.set_response_code(ResponseCode::Refused);
            return 0;
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // The zone is made per query; there is nothing to transfer.
            reply.header.set_response_code(ResponseCode::Refused);
            return 0;
        }
        reply.header.set_authoritative(true);
        // Answers carry the question's own spelling, for resolvers that randomise case.
        let owner = query.original().name();
        let table = self.table.borrow().clone();

        let serves_relays = if at_apex {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                let soa = with_serial(&zone.soa, table.serial());
                reply.answers.push(with_owner(&soa, owner));
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                reply
                    .answers
                    .extend(zone.ns.iter().map(|ns| with_owner(ns, owner)));
            }
            zone.apex_hosts.is_some()
        } else {
            match node {
                None => {
                    reply.header.set_response_code(ResponseCode::NXDomain);
                    reply
                        .authority
                        .push(with_serial(&zone.negative_soa, table.serial()));
                    return 0;
                }
                Some(Node::Empty) => false,
                Some(Node::Service(_) | Node::NameServer) => true,
            }
        };

        let mut scope = 0;
        let wants_relays =
            serves_relays && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY);
        if wants_relays {
            let families = [(RecordType::AAAA, false), (RecordType::A, true)];
            for (not_for, v6) in families {
                if qtype == not_for {
                    continue;
                }
                let choice = self.chosen(ecs, src, &table, v6);
                let before = reply.answers.len();
                self.relay_records(&table, &choice.relays, owner, v6, &mut reply.answers);
                if reply.answers.len() > before {
                    scope = choice.scope;
                }
            }
        }

        if reply.answers.is_empty() {
            // NODATA: the name exists, without records of this type (or, for a host, without a
            // relay that can take users right now, which is why that is cached briefly).
            let soa = if wants_relays {
                &zone.nodata_soa
            } else {
                &zone.negative_soa
            };
            reply.authority.push(with_serial(soa, table.serial()));
        }
        scope
    }

    /// Where the client is, and the ECS scope an answer made for that place holds for.
    ///
    /// With an ECS option, the client is its subnet, and the scope is the GeoIP network's
    /// prefix length: every address in that network gets the same place, hence the same
    /// answer. It may be longer than the source prefix (RFC 7871 allows that: the resolver
    /// then caches it for the narrower network). A subnet GeoIP does not place gets the
    /// source prefix. A SOURCE PREFIX-LENGTH of 0 means "do not use my address" (RFC 7871,
    /// 7.1.2), so the resolver's own address is used, and the scope is 0.
    fn locate(&self, ecs: Option<&ClientSubnet>, src: IpAddr) -> (Option<Location>, u8) {
        match ecs {
            Some(ecs) if ecs.source_prefix() > 0 => {
                let addr = ecs.addr();
                match self.geoip.place(addr) {
                    Some(place) => {
                        // An IPv4-mapped subnet: GeoIP answered for the IPv4 address, whose
                        // network sits 96 bits into the IPv6 one.
                        let scope = place.network_prefix_len.saturating_add(mapped_offset(addr));
                        (Some(place.location), scope.min(family_bits(addr)))
                    }
                    None => (None, ecs.source_prefix()),
                }
            }
            _ => (self.geoip.place(src).map(|place| place.location), 0),
        }
    }

    /// The largest UDP answer for a query that advertised `advertised` bytes in its OPT
    /// record (`None`: no OPT): at most what the zone allows, and never under 512.
    pub(super) fn udp_limit(&self, advertised: Option<u16>) -> usize {
        advertised.map_or(CLASSIC_UDP_LIMIT, |size| {
            usize::from(size.clamp(512, self.zone.max_udp_payload))
        })
    }

    /// [`Self::choose`] for the query's client, remembered until the table changes (see
    /// `memo.rs`).
    pub(super) fn chosen(
        &self,
        ecs: Option<&ClientSubnet>,
        src: IpAddr,
        table: &Arc<DnsTable>,
        v6: bool,
    ) -> Rc<Choice> {
        memo::choice(&self.zone, table, client_key(ecs, src, v6), || {
            self.choose(ecs, src, table, v6)
        })
    }

    /// The best relays for the client that have an address of the family (AAAA if `v6`), and
    /// the ECS scope that choice holds for: where GeoIP places the client, and the round trips
    /// its network reported.
    fn choose(
        &self,
        ecs: Option<&ClientSubnet>,
        src: IpAddr,
        table: &DnsTable,
        v6: bool,
    ) -> Choice {
        let (location, geo_scope) = self.locate(ecs, src);
        let measured = client_network(ecs, src).and_then(|network| table.measured(network));
        let client = Client {
            location,
            measured: measured.cloned().unwrap_or_default(),
        };
        let candidates = table.relays().iter().filter(|r| r.has_family(v6));
        let relays = rank(&client, candidates.map(|r| &r.relay), table.peers())
            .iter()
            .take(self.zone.relays_per_answer)
            .filter_map(|ranked| {
                table
                    .relays()
                    .iter()
                    .position(|r| ptr::eq(&r.relay, ranked.relay))
            })
            .collect();
        Choice {
            relays,
            scope: scope(ecs, geo_scope, table),
        }
    }

    /// The A (or AAAA) records of the chosen relays, best first.
    fn relay_records(
        &self,
        table: &DnsTable,
        chosen: &[usize],
        owner: &Name,
        v6: bool,
        out: &mut Vec<Record>,
    ) {
        for relay in chosen.iter().filter_map(|&i| table.relays().get(i)) {
            if v6 {
                out.extend(relay.ipv6.iter().map(|&ip| aaaa(owner, self.zone.ttl, ip)));
            } else {
                out.extend(relay.ipv4.iter().map(|&ip| a(owner, self.zone.ttl, ip)));
            }
        }
    }
}

/// What the relays chosen for a query depend on, besides the table: the ECS subnet, or the
/// resolver's address if the query has no ECS option or one that asks not to use its subnet.
fn client_key(ecs: Option<&ClientSubnet>, src: IpAddr, v6: bool) -> ClientKey {
    let addr = match ecs {
        Some(ecs) if ecs.source_prefix() > 0 => ecs.addr(),
        _ => src,
    };
    ClientKey {
        addr,
        source_prefix: ecs.map(ClientSubnet::source_prefix),
        v6,
    }
}

/// The client network whose reported round trips may rank the answer.
///
/// Without ECS it is the resolver's network. With ECS, the subnet must be at least as long as
/// a [`Network`]: a shorter one (including a source prefix of 0, "do not use my address")
/// may span many networks, whose clients' round trips differ.
fn client_network(ecs: Option<&ClientSubnet>, src: IpAddr) -> Option<Network> {
    let addr = ecs.map_or(src, ClientSubnet::addr);
    let network = Network::containing(addr);
    match ecs {
        Some(ecs) if ecs.source_prefix() < network.prefix_len() + mapped_offset(addr) => None,
        _ => Some(network),
    }
}

/// The prefix length of the client network holding `addr`, in `addr`'s family: an IPv4-mapped
/// address's /24 sits 96 bits into the IPv6 address.
fn network_scope(addr: IpAddr) -> u8 {
    Network::containing(addr).prefix_len() + mapped_offset(addr)
}

fn mapped_offset(addr: IpAddr) -> u8 {
    match addr.is_ipv6() && addr.to_canonical().is_ipv4() {
        true => 96,
        false => 0,
    }
}

/// The ECS scope of an answer placed by GeoIP with scope `geo_scope` (see
/// [`GeoDns::locate`]). Every address in that network has the same place, but client networks
/// inside it that measured round trips are ranked by them and may get other relays (RFC 7871
/// 7.2.1: the scope must cover only addresses the answer is right for). Then the answer holds
/// for the client's own network only, measured or not.
fn scope(ecs: Option<&ClientSubnet>, geo_scope: u8, table: &DnsTable) -> u8 {
    let Some(ecs) = ecs.filter(|ecs| ecs.source_prefix() > 0) else {
        return geo_scope;
    };
    let addr = ecs.addr();
    let narrow = network_scope(addr);
    let wider = geo_scope.saturating_sub(mapped_offset(addr));
    if geo_scope < narrow && table.measured_within(addr, wider) {
        narrow
    } else {
        geo_scope
    }
}

/// One of the zone's SOA records with `serial`: the table's, which changes whenever the
/// answers can (see [`DnsTable::serial`]).
fn with_serial(soa: &Record, serial: u32) -> Record {
    let mut soa = soa.clone();
    if let RData::SOA(data) = soa.data_mut() {
        *data = SOA::new(
            data.mname().clone(),
            data.rname().clone(),
            serial,
            data.refresh(),
            data.retry(),
            data.expire(),
            data.minimum(),
        );
    }
    soa
}

fn with_owner(record: &Record, owner: &Name) -> Record {
    let mut record = record.clone();
    record.set_name(owner.clone());
    record
}

fn a(owner: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))
}

fn aaaa(owner: &Name, ttl: u32, ip: Ipv6Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(ip)))
}

#[cfg(test)]
mod tests;
