//! DNS wire format for the proxy: the few facts it needs from each query and
//! answer, and the REFUSED / NXDOMAIN replies it sends for denied names.
//!
//! Every packet here comes from a pod or an upstream we do not control, so
//! nothing may panic and every malformed message is an error naming the
//! section and record that broke. hickory-proto does the decoding (header,
//! names with their compression pointers, which it only lets point backwards,
//! so pointer loops cannot happen), but records are walked by hand rather
//! than through `Message`: the proxy only needs A, AAAA, CNAME and OPT, and
//! skipping the rest by their RDLENGTH keeps an answer usable when it also
//! carries record types hickory cannot decode, and avoids decoding data
//! nobody reads at ~100k queries per second.
//!
//! Names are returned lowercase without the trailing dot, with every byte
//! outside `[a-z0-9-_*]` written as a `\DDD` escape. A label that contains a
//! literal `.` therefore never reads as two labels, and policy matching only
//! ever sees characters a selector can name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Longest CNAME chain followed from the question name; resolvers give up
/// well before this (BIND at 16 too), and it bounds work on looping chains.
const MAX_CNAME_HOPS: usize = 16;
/// The EDNS payload size recommended by DNS Flag Day 2020: fits any path MTU
/// without IP fragmentation.
const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    #[error("DNS message is a response (QR=1) where a query was expected")]
    NotAQuery,
    #[error("DNS message is a query (QR=0) where a response was expected")]
    NotAResponse,
    #[error("DNS message has {0} questions; only messages with exactly one are handled")]
    QuestionCount(u16),
}

/// What the proxy needs from a query. Any opcode is accepted and reported so
/// the caller decides what to do with NOTIFY, UPDATE and friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lowercase, no trailing dot, `""` for the root; see the module docs for
    /// escaping.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    pub opcode: u8,
    pub has_edns: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyRcode {
    /// REFUSED (5): what Cilium answers for a denied name by default.
    Refused,
    /// NXDOMAIN (3).
    NameError,
}

impl From<DenyRcode> for ResponseCode {
    fn from(r: DenyRcode) -> Self {
        match r {
            DenyRcode::Refused => ResponseCode::Refused,
            DenyRcode::NameError => ResponseCode::NXDomain,
        }
    }
}

/// What the proxy needs from an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    /// The full 12-bit response code, including EDNS's upper bits.
    pub rcode: u16,
    pub truncated: bool,
    /// The question name followed by each CNAME target along the chain from
    /// it, lowercase, no trailing dot, no duplicates.
    pub names: Vec<String>,
    /// Every class IN A and AAAA record of the answer section whose owner is
    /// in `names`, with its TTL in seconds.
    pub addrs: Vec<(IpAddr, u32)>,
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Question,
    Answer,
    Authority,
    Additional,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Question => "question",
            Section::Answer => "answer",
            Section::Authority => "authority",
            Section::Additional => "additional",
        })
    }
}

/// A resource record with its RDATA left undecoded.
struct RawRecord<'a> {
    owner: Name,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata_start: usize,
    rdata: &'a [u8],
}

struct RawQuestion {
    name: Name,
    qtype: u16,
    qclass: u16,
}

pub fn parse_query(buf: &[u8]) -> Result<Query, WireError> {
    let mut dec = BinDecoder::new(buf);
    let header = read_header(&mut dec)?;
    if header.metadata.message_type != MessageType::Query {
        return Err(WireError::NotAQuery);
    }
    if header.counts.queries != 1 {
        return Err(WireError::QuestionCount(header.counts.queries));
    }
    let question = read_question(&mut dec)?;
    skip_records(&mut dec, Section::Answer, header.counts.answers)?;
    skip_records(&mut dec, Section::Authority, header.counts.authorities)?;
    let opt = find_opt(&mut dec, header.counts.additionals)?;
    Ok(Query {
        id: header.metadata.id,
        name: render_name(&question.name),
        qtype: question.qtype,
        qclass: question.qclass,
        opcode: u8::from(header.metadata.op_code),
        has_edns: opt.is_some(),
    })
}

/// Rewrites the message ID in place; buffers shorter than 2 bytes are left
/// alone.
pub fn set_id(buf: &mut [u8], id: u16) {
    if let Some(b) = buf.get_mut(..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

pub fn id_of(buf: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]))
}

/// The reply to a denied query: `q`'s ID, opcode, type and class, RD copied
/// from `query_buf`, RA set, no records, and an OPT record when the query
/// had one (RFC 6891 requires it). The question name is echoed from
/// `query_buf` with its original case, since stub resolvers that randomize
/// case (DNS 0x20) compare it; if `query_buf` does not hold `q`'s name,
/// `q.name` is used instead.
pub fn deny_response(query_buf: &[u8], q: &Query, rcode: DenyRcode) -> Vec<u8> {
    let name = original_question_name(query_buf, &q.name).or_else(|| unrender_name(&q.name)).unwrap_or_else(Name::root);
    let mut msg = Message::error_msg(q.id, OpCode::from_u8(q.opcode & 0x0f), rcode.into());
    msg.metadata.recursion_desired = query_buf.get(2).is_some_and(|flags| flags & 0x01 != 0);
    msg.metadata.recursion_available = true;
    let mut question = Question::query(name, RecordType::from(q.qtype));
    question.set_query_class(DNSClass::from(q.qclass));
    msg.add_query(question);
    if q.has_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
    }
    msg.to_vec().unwrap_or_else(|_| bare_response(q, rcode))
}

/// A header-only reply, for the case hickory cannot encode the question.
fn bare_response(q: &Query, rcode: DenyRcode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    set_id(&mut out, q.id);
    out[2] = 0x80 | ((q.opcode & 0x0f) << 3);
    let code: ResponseCode = rcode.into();
    out[3] = 0x80 | code.low();
    out
}

fn original_question_name(query_buf: &[u8], expected: &str) -> Option<Name> {
    let mut dec = BinDecoder::new(query_buf);
    dec.read_slice(HEADER_LEN).ok()?;
    let name = Name::read(&mut dec).ok()?;
    (render_name(&name) == expected).then_some(name)
}

pub fn parse_answer(buf: &[u8]) -> Result<Answer, WireError> {
    let mut dec = BinDecoder::new(buf);
    let header = read_header(&mut dec)?;
    if header.metadata.message_type != MessageType::Response {
        return Err(WireError::NotAResponse);
    }
    if header.counts.queries != 1 {
        return Err(WireError::QuestionCount(header.counts.queries));
    }
    let question = read_question(&mut dec)?;

    let capacity = usize::from(header.counts.answers).min(16);
    let mut cnames: Vec<(Name, Name)> = Vec::new();
    let mut addrs: Vec<(Name, IpAddr, u32)> = Vec::with_capacity(capacity);
    for index in 0..header.counts.answers {
        let rr = read_record(&mut dec, Section::Answer, index)?;
        if rr.class != CLASS_IN {
            continue;
        }
        match rr.rtype {
            TYPE_A => {
                let octets: [u8; 4] = rdata_array(&rr, index, "A")?;
                addrs.push((rr.owner, IpAddr::V4(Ipv4Addr::from(octets)), rr.ttl));
            }
            TYPE_AAAA => {
                let octets: [u8; 16] = rdata_array(&rr, index, "AAAA")?;
                addrs.push((rr.owner, IpAddr::V6(Ipv6Addr::from(octets)), rr.ttl));
            }
            TYPE_CNAME => {
                let target = cname_target(buf, &rr, index)?;
                cnames.push((rr.owner, target));
            }
            _ => {}
        }
    }
    skip_records(&mut dec, Section::Authority, header.counts.authorities)?;
    let rcode_high = find_opt(&mut dec, header.counts.additionals)?.map_or(0, |ttl| (ttl >> 24) as u16);

    let chain = follow_cnames(question.name, &cnames);
    let addrs = addrs.into_iter().filter(|(owner, _, _)| chain.contains(owner)).map(|(_, ip, ttl)| (ip, ttl)).collect();
    Ok(Answer {
        id: header.metadata.id,
        rcode: rcode_high << 4 | u16::from(header.metadata.response_code),
        truncated: header.metadata.truncation,
        names: chain.iter().map(render_name).collect(),
        addrs,
    })
}

/// The question name, then the target of the CNAME owned by the last name,
/// repeatedly, in whatever order the records came. Stops at a name already
/// on the chain, so a loop ends the chain instead of failing the answer.
fn follow_cnames(start: Name, cnames: &[(Name, Name)]) -> Vec<Name> {
    let mut chain = vec![start];
    while chain.len() <= MAX_CNAME_HOPS {
        let last = &chain[chain.len() - 1];
        let Some((_, target)) = cnames.iter().find(|(owner, _)| owner == last) else {
            break;
        };
        if chain.contains(target) {
            break;
        }
        chain.push(target.clone());
    }
    chain
}

fn read_header(dec: &mut BinDecoder<'_>) -> Result<Header, WireError> {
    if dec.len() < HEADER_LEN {
        return Err(WireError::Malformed(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", dec.len())));
    }
    Header::read(dec).map_err(|e| WireError::Malformed(format!("header: {e}")))
}

fn read_question(dec: &mut BinDecoder<'_>) -> Result<RawQuestion, WireError> {
    let ctx = |e: DecodeError| WireError::Malformed(format!("{}: {e}", Section::Question));
    let name = Name::read(dec).map_err(ctx)?;
    let qtype = dec.read_u16().map_err(ctx)?.unverified();
    let qclass = dec.read_u16().map_err(ctx)?.unverified();
    Ok(RawQuestion { name, qtype, qclass })
}

fn read_record<'a>(dec: &mut BinDecoder<'a>, section: Section, index: u16) -> Result<RawRecord<'a>, WireError> {
    let ctx = |e: DecodeError| WireError::Malformed(format!("{section} record {index}: {e}"));
    let owner = Name::read(dec).map_err(ctx)?;
    let rtype = dec.read_u16().map_err(ctx)?.unverified();
    let class = dec.read_u16().map_err(ctx)?.unverified();
    let ttl = dec.read_u32().map_err(ctx)?.unverified();
    let rdlen = dec.read_u16().map_err(ctx)?.unverified();
    let rdata_start = dec.index();
    let left = dec.len();
    let rdata = dec.read_slice(usize::from(rdlen)).map_err(|_| {
        WireError::Malformed(format!("{section} record {index}: RDLENGTH {rdlen} runs past the end of the message ({left} bytes left)"))
    })?;
    Ok(RawRecord { owner, rtype, class, ttl, rdata_start, rdata: rdata.unverified() })
}

fn skip_records(dec: &mut BinDecoder<'_>, section: Section, count: u16) -> Result<(), WireError> {
    for index in 0..count {
        read_record(dec, section, index)?;
    }
    Ok(())
}

/// Walks the additional section and returns the OPT record's TTL field
/// (extended rcode, version, flags), if there is one.
fn find_opt(dec: &mut BinDecoder<'_>, count: u16) -> Result<Option<u32>, WireError> {
    let mut opt = None;
    for index in 0..count {
        let rr = read_record(dec, Section::Additional, index)?;
        if rr.rtype != TYPE_OPT {
            continue;
        }
        if !rr.owner.is_root() {
            return Err(WireError::Malformed(format!("additional record {index}: OPT record owned by a name other than the root")));
        }
        if opt.replace(rr.ttl).is_some() {
            return Err(WireError::Malformed(format!("additional record {index}: second OPT record")));
        }
    }
    Ok(opt)
}

fn rdata_array<const N: usize>(rr: &RawRecord<'_>, index: u16, kind: &str) -> Result<[u8; N], WireError> {
    rr.rdata.try_into().map_err(|_| {
        WireError::Malformed(format!(
            "{} record {index}: {kind} record has {} bytes of RDATA, expected {N}",
            Section::Answer,
            rr.rdata.len()
        ))
    })
}

/// Decodes a CNAME's target. The decoder sees the message only up to the
/// end of the RDATA, so a name that would run past RDLENGTH fails, while
/// compression pointers back into the message still resolve.
fn cname_target(buf: &[u8], rr: &RawRecord<'_>, index: u16) -> Result<Name, WireError> {
    let end = rr.rdata_start + rr.rdata.len();
    let ctx = |e: DecodeError| WireError::Malformed(format!("{} record {index}: CNAME target: {e}", Section::Answer));
    let mut dec = BinDecoder::new(&buf[..end]);
    dec.read_slice(rr.rdata_start).map_err(ctx)?;
    let target = Name::read(&mut dec).map_err(ctx)?;
    if !dec.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} record {index}: CNAME target ends {} bytes before the end of its RDATA",
            Section::Answer,
            dec.len()
        )));
    }
    Ok(target)
}

/// The inverse of [`render_name`]. hickory's `Name::from_ascii` reads
/// `\DDD` as octal, not RFC 1035's decimal, so it cannot be used here.
fn unrender_name(s: &str) -> Option<Name> {
    if s.is_empty() {
        return Some(Name::root());
    }
    let mut labels = Vec::new();
    let mut label = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'.' => labels.push(std::mem::take(&mut label)),
            b'\\' => {
                let digits = [bytes.next()?, bytes.next()?, bytes.next()?];
                let value = std::str::from_utf8(&digits).ok()?.parse::<u8>().ok()?;
                label.push(value);
            }
            _ => label.push(b),
        }
    }
    labels.push(label);
    Name::from_labels(labels).ok()
}

fn render_name(name: &Name) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'*' => out.push(char::from(b)),
                b'A'..=b'Z' => out.push(char::from(b.to_ascii_lowercase())),
                _ => {
                    out.push('\\');
                    out.extend([b / 100, b / 10 % 10, b % 10].map(|d| char::from(b'0' + d)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use hickory_proto::rr::{RData, Record};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query_msg(id: u16, qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Question::query(name(qname), qtype));
        m
    }

    fn query_bytes(id: u16, qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = query_msg(id, qname, qtype);
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn response_msg(id: u16, qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_query(Question::query(name(qname), qtype));
        m.add_answers(answers);
        m
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse().unwrap())))
    }

    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse().unwrap())))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Builds a message by hand: header fields, then raw bytes after it.
    fn raw(id: u16, flags: u16, counts: [u16; 4], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        for c in counts {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    const QUESTION_EXAMPLE_COM_A: &[u8] = b"\x07example\x03com\x00\x00\x01\x00\x01";

    #[test]
    fn parses_a_plain_query() {
        let buf = query_bytes(0xbeef, "WWW.Example.COM.", RecordType::AAAA, false);
        let q = parse_query(&buf).unwrap();
        assert_eq!(q, Query { id: 0xbeef, name: "www.example.com".into(), qtype: 28, qclass: 1, opcode: 0, has_edns: false });
    }

    #[test]
    fn parses_an_edns_query_and_reports_opcode() {
        let q = parse_query(&query_bytes(7, "example.com.", RecordType::A, true)).unwrap();
        assert!(q.has_edns);

        let mut m = query_msg(8, "example.com.", RecordType::SOA);
        m.metadata.op_code = OpCode::Notify;
        let q = parse_query(&m.to_vec().unwrap()).unwrap();
        assert_eq!(q.opcode, 4);
    }

    #[test]
    fn root_and_odd_bytes_render_escaped() {
        let q = parse_query(&raw(1, 0x0100, [1, 0, 0, 0], b"\x00\x00\x02\x00\x01")).unwrap();
        assert_eq!(q.name, "");
        assert_eq!(q.qtype, 2);

        let q = parse_query(&raw(1, 0x0100, [1, 0, 0, 0], b"\x05a.B c\x03COM\x00\x00\x01\x00\x01")).unwrap();
        assert_eq!(q.name, "a\\046b\\032c.com");
        let q = parse_query(&raw(1, 0x0100, [1, 0, 0, 0], b"\x01*\x07example\x03com\x00\x00\x01\x00\xff")).unwrap();
        assert_eq!(q.name, "*.example.com");
        assert_eq!(q.qclass, 255);
    }

    #[test]
    fn query_errors() {
        assert!(matches!(parse_query(&raw(1, 0x0100, [0, 0, 0, 0], b"")), Err(WireError::QuestionCount(0))));
        let two = [QUESTION_EXAMPLE_COM_A, QUESTION_EXAMPLE_COM_A].concat();
        assert!(matches!(parse_query(&raw(1, 0x0100, [2, 0, 0, 0], &two)), Err(WireError::QuestionCount(2))));
        assert!(matches!(parse_query(&raw(1, 0x8180, [1, 0, 0, 0], QUESTION_EXAMPLE_COM_A)), Err(WireError::NotAQuery)));
        let answer = response_msg(1, "example.com.", RecordType::A, vec![a("example.com.", 5, "192.0.2.1")]).to_vec().unwrap();
        assert!(matches!(parse_query(&answer), Err(WireError::NotAQuery)));
        assert!(matches!(parse_query(&[]), Err(WireError::Malformed(_))));
        assert!(matches!(parse_query(&[0; 11]), Err(WireError::Malformed(_))));
    }

    #[test]
    fn duplicate_or_misplaced_opt_is_malformed() {
        let opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00";
        let body = [QUESTION_EXAMPLE_COM_A, opt, opt].concat();
        let err = parse_query(&raw(1, 0x0100, [1, 0, 0, 2], &body)).unwrap_err();
        assert!(err.to_string().contains("second OPT"), "{err}");

        let body = [QUESTION_EXAMPLE_COM_A, b"\x01a\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"].concat();
        let err = parse_query(&raw(1, 0x0100, [1, 0, 0, 1], &body)).unwrap_err();
        assert!(err.to_string().contains("other than the root"), "{err}");
    }

    #[test]
    fn id_helpers() {
        let mut buf = query_bytes(0x1234, "example.com.", RecordType::A, false);
        assert_eq!(id_of(&buf), Some(0x1234));
        set_id(&mut buf, 0xabcd);
        assert_eq!(id_of(&buf), Some(0xabcd));
        assert_eq!(parse_query(&buf).unwrap().id, 0xabcd);
        assert_eq!(id_of(&[1]), None);
        assert_eq!(id_of(&[]), None);
        let mut short = [9u8];
        set_id(&mut short, 0xffff);
        assert_eq!(short, [9]);
        set_id(&mut [], 1);
    }

    #[test]
    fn deny_response_refused_echoes_question() {
        let buf = query_bytes(0x4242, "Api.Stripe.com.", RecordType::A, false);
        let q = parse_query(&buf).unwrap();
        let resp = deny_response(&buf, &q, DenyRcode::Refused);
        let m = Message::from_vec(&resp).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.op_code, OpCode::Query);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.metadata.recursion_desired);
        assert!(m.metadata.recursion_available);
        assert!(!m.metadata.authoritative);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_string(), "Api.Stripe.com.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
        assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
        assert!(m.edns.is_none());
        assert_eq!(resp[HEADER_LEN..], buf[HEADER_LEN..], "question bytes are echoed verbatim");

        let ans = parse_answer(&resp).unwrap();
        assert_eq!((ans.id, ans.rcode, ans.truncated), (0x4242, 5, false));
        assert_eq!(ans.names, ["api.stripe.com"]);
        assert!(ans.addrs.is_empty());
    }

    #[test]
    fn deny_response_nxdomain_carries_opt_for_edns_query() {
        let mut m = query_msg(9, "blocked.example.", RecordType::AAAA);
        m.metadata.recursion_desired = false;
        m.metadata.op_code = OpCode::Status;
        m.set_edns(Edns::new());
        let buf = m.to_vec().unwrap();
        let q = parse_query(&buf).unwrap();
        let resp = deny_response(&buf, &q, DenyRcode::NameError);
        let m = Message::from_vec(&resp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.metadata.op_code, OpCode::Status);
        assert!(!m.metadata.recursion_desired);
        let edns = m.edns.expect("OPT record in response");
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        assert_eq!(parse_answer(&resp).unwrap().rcode, 3);
    }

    #[test]
    fn deny_response_falls_back_to_parsed_name() {
        let q = Query { id: 3, name: "a\\046b.example.com".into(), qtype: 1, qclass: 1, opcode: 0, has_edns: false };
        let resp = deny_response(&[], &q, DenyRcode::Refused);
        let ans = parse_answer(&resp).unwrap();
        assert_eq!(ans.id, 3);
        assert_eq!(ans.names, ["a\\046b.example.com"]);
    }

    #[test]
    fn answer_with_a_and_aaaa() {
        let m = response_msg(
            77,
            "example.com.",
            RecordType::A,
            vec![a("example.com.", 300, "192.0.2.1"), aaaa("example.com.", 60, "2001:db8::1"), a("example.com.", 30, "192.0.2.2")],
        );
        let ans = parse_answer(&m.to_vec().unwrap()).unwrap();
        assert_eq!(ans.id, 77);
        assert_eq!(ans.rcode, 0);
        assert!(!ans.truncated);
        assert_eq!(ans.names, ["example.com"]);
        assert_eq!(ans.addrs, [(ip("192.0.2.1"), 300), (ip("2001:db8::1"), 60), (ip("192.0.2.2"), 30)]);
    }

    #[test]
    fn cname_chain_out_of_order_and_unrelated_owners_ignored() {
        let m = response_msg(
            1,
            "WWW.Example.com.",
            RecordType::A,
            vec![
                a("edge.CDN.net.", 20, "198.51.100.7"),
                a("unrelated.example.org.", 20, "203.0.113.9"),
                cname("lb.example.net.", "Edge.cdn.net."),
                cname("www.example.com.", "lb.example.net."),
                cname("other.example.com.", "evil.example.org."),
                a("evil.example.org.", 20, "203.0.113.66"),
                aaaa("lb.example.net.", 40, "2001:db8::7"),
            ],
        );
        let ans = parse_answer(&m.to_vec().unwrap()).unwrap();
        assert_eq!(ans.names, ["www.example.com", "lb.example.net", "edge.cdn.net"]);
        assert_eq!(ans.addrs, [(ip("198.51.100.7"), 20), (ip("2001:db8::7"), 40)]);
    }

    #[test]
    fn cname_loop_ends_the_chain() {
        let m = response_msg(
            1,
            "a.example.",
            RecordType::A,
            vec![cname("a.example.", "b.example."), cname("b.example.", "c.example."), cname("c.example.", "A.example.")],
        );
        let ans = parse_answer(&m.to_vec().unwrap()).unwrap();
        assert_eq!(ans.names, ["a.example", "b.example", "c.example"]);
        assert!(ans.addrs.is_empty());

        let m = response_msg(1, "self.example.", RecordType::A, vec![cname("self.example.", "self.example.")]);
        assert_eq!(parse_answer(&m.to_vec().unwrap()).unwrap().names, ["self.example"]);
    }

    #[test]
    fn long_cname_chain_is_bounded() {
        let hops = 40;
        let records = (0..hops).map(|i| cname(&format!("n{i}.example."), &format!("n{}.example.", i + 1))).collect();
        let ans = parse_answer(&response_msg(1, "n0.example.", RecordType::A, records).to_vec().unwrap()).unwrap();
        assert_eq!(ans.names.len(), MAX_CNAME_HOPS + 1);
        assert_eq!(ans.names.last().unwrap(), &format!("n{MAX_CNAME_HOPS}.example"));
    }

    #[test]
    fn truncated_flag_and_nxdomain_without_records() {
        let mut m = response_msg(5, "big.example.", RecordType::TXT, vec![]);
        m.metadata.truncation = true;
        let ans = parse_answer(&m.to_vec().unwrap()).unwrap();
        assert!(ans.truncated);

        let mut m = response_msg(6, "nope.example.", RecordType::A, vec![]);
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name("ns.example."), name("hostmaster.example."), 1, 2, 3, 4, 5);
        m.add_authority(Record::from_rdata(name("example."), 5, RData::SOA(soa)));
        let ans = parse_answer(&m.to_vec().unwrap()).unwrap();
        assert_eq!((ans.id, ans.rcode, ans.truncated), (6, 3, false));
        assert_eq!(ans.names, ["nope.example"]);
        assert!(ans.addrs.is_empty());
    }

    #[test]
    fn extended_rcode_comes_from_opt() {
        let opt_badvers = b"\x00\x00\x29\x10\x00\x01\x00\x00\x00\x00\x00";
        let body = [QUESTION_EXAMPLE_COM_A, opt_badvers].concat();
        let ans = parse_answer(&raw(1, 0x8180, [1, 0, 0, 1], &body)).unwrap();
        assert_eq!(ans.rcode, 16);
    }

    #[test]
    fn records_hickory_cannot_decode_and_other_classes_are_skipped() {
        let body = [
            QUESTION_EXAMPLE_COM_A,
            b"\xc0\x0c\x00\x01\x00\x03\x00\x00\x00\x05\x00\x02\xff\xff",
            b"\xc0\x0c\x00\x41\x00\x01\x00\x00\x00\x05\x00\x03\xff\xff\xff",
            b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\xc0\x00\x02\x01",
        ]
        .concat();
        let ans = parse_answer(&raw(1, 0x8180, [1, 3, 0, 0], &body)).unwrap();
        assert_eq!(ans.addrs, [(ip("192.0.2.1"), 5)]);
    }

    #[test]
    fn answer_errors() {
        let q = query_bytes(1, "example.com.", RecordType::A, false);
        assert!(matches!(parse_answer(&q), Err(WireError::NotAResponse)));
        assert!(matches!(parse_answer(&raw(1, 0x8180, [0, 0, 0, 0], b"")), Err(WireError::QuestionCount(0))));
        let two = [QUESTION_EXAMPLE_COM_A, QUESTION_EXAMPLE_COM_A].concat();
        assert!(matches!(parse_answer(&raw(1, 0x8180, [2, 0, 0, 0], &two)), Err(WireError::QuestionCount(2))));

        let bad_a = [QUESTION_EXAMPLE_COM_A, b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x03\x01\x02\x03"].concat();
        let err = parse_answer(&raw(1, 0x8180, [1, 1, 0, 0], &bad_a)).unwrap_err();
        assert!(err.to_string().contains("expected 4"), "{err}");

        let long_cname = [QUESTION_EXAMPLE_COM_A, b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x05\x00\x04\xc0\x0c\x00\x00"].concat();
        let err = parse_answer(&raw(1, 0x8180, [1, 1, 0, 0], &long_cname)).unwrap_err();
        assert!(err.to_string().contains("before the end of its RDATA"), "{err}");

        let short_cname = [QUESTION_EXAMPLE_COM_A, b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x05\x00\x01\x03abc\x00"].concat();
        assert!(matches!(parse_answer(&raw(1, 0x8180, [1, 2, 0, 0], &short_cname)), Err(WireError::Malformed(_))));
    }

    fn seeds() -> Vec<Vec<u8>> {
        let chain = response_msg(
            0x1111,
            "www.example.com.",
            RecordType::A,
            vec![
                cname("www.example.com.", "lb.example.net."),
                a("lb.example.net.", 30, "192.0.2.1"),
                aaaa("lb.example.net.", 30, "2001:db8::1"),
            ],
        );
        let mut nx = response_msg(0x2222, "nope.example.", RecordType::A, vec![]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_authority(Record::from_rdata(
            name("example."),
            5,
            RData::SOA(SOA::new(name("ns.example."), name("hostmaster.example."), 1, 2, 3, 4, 5)),
        ));
        nx.set_edns(Edns::new());
        let edns_query = query_bytes(0x3333, "api.stripe.com.", RecordType::AAAA, true);
        let q = parse_query(&edns_query).unwrap();
        let deny = deny_response(&edns_query, &q, DenyRcode::Refused);
        vec![
            query_bytes(0x4444, "example.com.", RecordType::A, false),
            edns_query,
            chain.to_vec().unwrap(),
            nx.to_vec().unwrap(),
            deny,
            raw(1, 0x8180, [1, 1, 0, 0], &[QUESTION_EXAMPLE_COM_A, b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x05\x00\x02\xc0\x0c"].concat()),
        ]
    }

    /// The fuzz target's checks, shared with `fuzz_smoke`.
    fn exercise(buf: &[u8]) {
        let _ = parse_answer(buf);
        let _ = id_of(buf);
        if let Ok(q) = parse_query(buf) {
            for rcode in [DenyRcode::Refused, DenyRcode::NameError] {
                let resp = deny_response(buf, &q, rcode);
                let ans = parse_answer(&resp).unwrap_or_else(|e| panic!("deny response to {buf:02x?} does not parse: {e}"));
                assert_eq!(ans.id, q.id);
                assert_eq!(ans.names, std::slice::from_ref(&q.name));
            }
        }
    }

    #[test]
    fn every_truncation_of_valid_messages_fails() {
        for seed in seeds() {
            exercise(&seed);
            for len in 0..seed.len() {
                let cut = &seed[..len];
                assert!(parse_query(cut).is_err(), "query cut at {len} of {seed:02x?}");
                assert!(parse_answer(cut).is_err(), "answer cut at {len} of {seed:02x?}");
            }
        }
    }

    #[test]
    fn hostile_names() {
        let label_past_end = raw(1, 0x0100, [1, 0, 0, 0], b"\x3fexample");
        assert!(matches!(parse_query(&label_past_end), Err(WireError::Malformed(_))));
        let pointer_to_self = raw(1, 0x0100, [1, 0, 0, 0], b"\xc0\x0c\x00\x01\x00\x01");
        assert!(matches!(parse_query(&pointer_to_self), Err(WireError::Malformed(_))));
        let pointer_past_end = raw(1, 0x0100, [1, 0, 0, 0], b"\xff\xff\x00\x01\x00\x01");
        assert!(matches!(parse_query(&pointer_past_end), Err(WireError::Malformed(_))));
        let forward_pointer = raw(1, 0x0100, [1, 0, 0, 0], b"\xc0\x0e\x00\x01\x00\x01\x00\x00");
        assert!(matches!(parse_query(&forward_pointer), Err(WireError::Malformed(_))));
        let reserved_label_type = raw(1, 0x0100, [1, 0, 0, 0], b"\x80\x00\x00\x01\x00\x01");
        assert!(matches!(parse_query(&reserved_label_type), Err(WireError::Malformed(_))));

        let loop_in_answer = [QUESTION_EXAMPLE_COM_A, b"\xc0\x1d\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"].concat();
        assert!(matches!(parse_answer(&raw(1, 0x8180, [1, 1, 0, 0], &loop_in_answer)), Err(WireError::Malformed(_))));
        let rdlength_past_end = [QUESTION_EXAMPLE_COM_A, b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x01\x00\x01\x02"].concat();
        let err = parse_answer(&raw(1, 0x8180, [1, 1, 0, 0], &rdlength_past_end)).unwrap_err();
        assert!(err.to_string().contains("RDLENGTH 256"), "{err}");
    }

    #[test]
    fn fuzz_smoke() {
        palisade_node::mutate::mutations(&seeds(), 200_000, exercise);
    }
}
