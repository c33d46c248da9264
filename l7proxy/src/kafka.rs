//! Kafka: each redirected connection is read frame by frame (a 4-byte size,
//! then the request), the request header and, for the APIs that name
//! topics, the body are decoded with the `kafka-protocol` crate, and the
//! request is judged by the connection's `rules.kafka`. An admitted request
//! is forwarded to the broker as the bytes it came as (one upstream
//! connection from the client's address, for the connection's life); a
//! refused one is answered by the proxy with TOPIC_AUTHORIZATION_FAILED
//! (29) for each topic it names, in the place the broker's answer would
//! have had: responses leave in request order, so a local answer waits for
//! the broker's answers to the requests before it.
//!
//! Refused requests of APIs the proxy cannot answer (no topic-level error
//! in their response, or a version `kafka-protocol` does not decode) close
//! the connection: the client sees an error at once instead of a hang.
//! Frames that lie about their size (negative, over `MAX_FRAME`, or a body
//! shorter than it says) or do not decode close the connection and are
//! counted.
use std::{sync::Arc, time::Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        fetch_response, list_offsets_response, metadata_response, produce_response, ApiKey, FetchRequest, FetchResponse,
        ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetFetchRequest,
        ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    },
    protocol::{Decodable, Encodable},
    ResponseError,
};
use palisade_flow::Kafka;
use palisade_policy::l7::{kafka_api_name, KafkaRequest};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::{
    flowlog::Detail,
    metrics::{KafkaDur, KafkaReq},
    rules::{Conn, Verdict},
    Shared,
};

/// Largest request or response accepted (Kafka's socket.request.max.bytes).
pub const MAX_FRAME: usize = 100 << 20;

const TOPIC_AUTHORIZATION_FAILED: i16 = ResponseError::TopicAuthorizationFailed.code();

/// Reads one size-prefixed frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame size {n}")));
    }
    let mut buf = BytesMut::zeroed(n as usize);
    r.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

/// What one request is, as the rules see it.
struct Parsed {
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: String,
    /// Named topics; a topic-carrying request the proxy cannot name gets
    /// `""`, which no rule's topic equals.
    topics: Vec<String>,
    /// The broker answers (false for Produce with acks = 0).
    answered: bool,
    /// Error-29 answer, when the API has one.
    deny: Option<Bytes>,
}

fn frame(correlation_id: i32, api_key: ApiKey, version: i16, body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>) -> Option<Bytes> {
    let mut b = BytesMut::new();
    ResponseHeader::default().with_correlation_id(correlation_id).encode(&mut b, api_key.response_header_version(version)).ok()?;
    body(&mut b).ok()?;
    let mut out = BytesMut::with_capacity(4 + b.len());
    out.put_i32(b.len() as i32);
    out.extend_from_slice(&b);
    Some(out.freeze())
}

fn names<'a>(it: impl Iterator<Item = &'a TopicName>) -> Vec<String> {
    it.map(|t| t.0.as_str().to_string()).collect()
}

/// The APIs that name no topic: a rule's topic does not restrict them
/// (Cilium's semantics).
fn topic_free(k: ApiKey) -> bool {
    use ApiKey::*;
    matches!(
        k,
        ApiVersions
            | FindCoordinator
            | JoinGroup
            | Heartbeat
            | LeaveGroup
            | SyncGroup
            | DescribeGroups
            | ListGroups
            | SaslHandshake
            | SaslAuthenticate
            | InitProducerId
            | EndTxn
            | AddOffsetsToTxn
    )
}

fn parse(mut buf: Bytes) -> anyhow::Result<Parsed> {
    anyhow::ensure!(buf.len() >= 8, "request of {} bytes", buf.len());
    let key = i16::from_be_bytes([buf[0], buf[1]]);
    let version = i16::from_be_bytes([buf[2], buf[3]]);
    let api = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown API key {key}"))?;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))?;
    let client_id = header.client_id.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default();
    let cid = header.correlation_id;
    let e = TOPIC_AUTHORIZATION_FAILED;
    let unnamed = || vec![String::new()];
    let mut p = Parsed { api_key: key, version, correlation_id: cid, client_id, topics: Vec::new(), answered: true, deny: None };
    match api {
        ApiKey::Produce => {
            let r = ProduceRequest::decode(&mut buf, version)?;
            p.answered = r.acks != 0;
            p.topics = if version >= 13 { unnamed() } else { names(r.topic_data.iter().map(|t| &t.name)) };
            p.deny = frame(cid, api, version, |b| {
                let resp = ProduceResponse::default().with_responses(
                    r.topic_data
                        .iter()
                        .map(|t| {
                            produce_response::TopicProduceResponse::default()
                                .with_name(t.name.clone())
                                .with_topic_id(t.topic_id)
                                .with_partition_responses(
                                    t.partition_data
                                        .iter()
                                        .map(|pd| {
                                            produce_response::PartitionProduceResponse::default()
                                                .with_index(pd.index)
                                                .with_error_code(e)
                                                .with_base_offset(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                resp.encode(b, version)
            });
        }
        ApiKey::Fetch => {
            let r = FetchRequest::decode(&mut buf, version)?;
            p.topics = if version >= 13 { unnamed() } else { names(r.topics.iter().map(|t| &t.topic)) };
            p.deny = frame(cid, api, version, |b| {
                let resp = FetchResponse::default().with_responses(
                    r.topics
                        .iter()
                        .map(|t| {
                            fetch_response::FetchableTopicResponse::default()
                                .with_topic(t.topic.clone())
                                .with_topic_id(t.topic_id)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|pd| {
                                            fetch_response::PartitionData::default()
                                                .with_partition_index(pd.partition)
                                                .with_error_code(e)
                                                .with_high_watermark(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                resp.encode(b, version)
            });
        }
        ApiKey::Metadata => {
            let r = MetadataRequest::decode(&mut buf, version)?;
            match &r.topics {
                // All topics (v0: an empty list means all too).
                None => p.topics = unnamed(),
                Some(t) if t.is_empty() && version == 0 => p.topics = unnamed(),
                Some(t) => {
                    p.topics = t.iter().map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()).unwrap_or_default()).collect();
                    let listed: Vec<TopicName> = t.iter().filter_map(|t| t.name.clone()).collect();
                    p.deny = frame(cid, api, version, |b| {
                        let resp = MetadataResponse::default().with_topics(
                            listed
                                .iter()
                                .map(|n| metadata_response::MetadataResponseTopic::default().with_error_code(e).with_name(Some(n.clone())))
                                .collect(),
                        );
                        resp.encode(b, version)
                    });
                }
            }
        }
        ApiKey::ListOffsets => {
            let r = ListOffsetsRequest::decode(&mut buf, version)?;
            p.topics = names(r.topics.iter().map(|t| &t.name));
            p.deny = frame(cid, api, version, |b| {
                let resp = ListOffsetsResponse::default().with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            list_offsets_response::ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|pd| {
                                        list_offsets_response::ListOffsetsPartitionResponse::default()
                                            .with_partition_index(pd.partition_index)
                                            .with_error_code(e)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                );
                resp.encode(b, version)
            });
        }
        ApiKey::OffsetCommit => {
            let r = OffsetCommitRequest::decode(&mut buf, version)?;
            p.topics = names(r.topics.iter().map(|t| &t.name));
        }
        ApiKey::OffsetFetch => {
            let r = OffsetFetchRequest::decode(&mut buf, version)?;
            p.topics = names(r.topics.iter().flatten().map(|t| &t.name));
            p.topics.extend(r.groups.iter().flat_map(|g| g.topics.iter().flatten().map(|t| t.name.0.as_str().to_string())));
            if r.topics.is_none() && r.groups.iter().all(|g| g.topics.is_none()) {
                p.topics = unnamed();
            }
        }
        k if topic_free(k) => {}
        _ => p.topics = unnamed(),
    }
    Ok(p)
}

/// What the writer does next, in request order.
enum Next {
    /// Relay the broker's next response.
    Broker { p: Parsed, verdict: Verdict, t0: Instant },
    /// Send the proxy's own answer.
    Local { p: Parsed, verdict: Verdict, bytes: Bytes },
}

fn record(sh: &Shared, conn: &Conn, p: &Parsed, v: &Verdict, error_code: i16, latency_ns: u64) {
    let reporter = if conn.reported_ingress() { "server" } else { "client" };
    let api = kafka_api_name(p.api_key).map_or_else(|| p.api_key.to_string(), str::to_string);
    let topic = p.topics.first().cloned().unwrap_or_default();
    let verdict = match v {
        Verdict::Allow { .. } => "FORWARDED",
        Verdict::Audit { .. } => "AUDIT",
        Verdict::Deny { .. } => "DROPPED",
    };
    sh.metrics
        .kafka_requests
        .get_or_create(&KafkaReq {
            topic: topic.clone(),
            api_key: api.clone(),
            error_code: error_code.to_string(),
            reporter: reporter.into(),
            verdict: verdict.into(),
        })
        .inc();
    sh.metrics
        .kafka_duration
        .get_or_create(&KafkaDur { topic: topic.clone(), api_key: api.clone(), reporter: reporter.into() })
        .observe(latency_ns as f64 / 1e9);
    if let Some(f) = &sh.flows {
        let k = Kafka {
            error_code: i32::from(error_code),
            api_version: i32::from(p.version),
            api_key: api,
            correlation_id: p.correlation_id,
            topic,
        };
        f.record(conn, v, Detail::Kafka(k), latency_ns);
    }
}

/// Serves one redirected Kafka connection until either side closes it.
pub async fn serve<D>(down: D, conn: Arc<Conn>, sh: Arc<Shared>)
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up = match tokio::time::timeout(sh.connect_timeout, crate::upstream::connect(conn.client, conn.server, sh.mark)).await {
        Ok(Ok(s)) => s,
        _ => {
            sh.metrics.upstream_errors.inc();
            return;
        }
    };
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = up.into_split();
    let (tx, mut rx) = mpsc::channel::<Next>(256);
    let reader = {
        let (conn, sh) = (conn.clone(), sh.clone());
        async move {
            loop {
                let raw = match read_frame(&mut down_r).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        sh.metrics.malformed("kafka", "frame");
                        tracing::debug!("Kafka request frame: {e}");
                        break;
                    }
                };
                let p = match parse(raw.clone()) {
                    Ok(p) => p,
                    Err(e) => {
                        sh.metrics.malformed("kafka", "decode");
                        tracing::debug!("Kafka request: {e:#}");
                        break;
                    }
                };
                let verdict = {
                    let req = KafkaRequest { api_key: p.api_key, api_version: p.version, client_id: &p.client_id, topics: &p.topics };
                    conn.kafka(&req)
                };
                let next = if verdict.passes() {
                    let mut out = BytesMut::with_capacity(4 + raw.len());
                    out.put_i32(raw.len() as i32);
                    out.extend_from_slice(&raw);
                    if up_w.write_all(&out).await.is_err() {
                        sh.metrics.upstream_errors.inc();
                        break;
                    }
                    if !p.answered {
                        record(&sh, &conn, &p, &verdict, 0, 0);
                        continue;
                    }
                    Next::Broker { p, verdict, t0: Instant::now() }
                } else {
                    match p.deny.clone() {
                        _ if !p.answered => {
                            record(&sh, &conn, &p, &verdict, TOPIC_AUTHORIZATION_FAILED, 0);
                            continue;
                        }
                        Some(bytes) => Next::Local { p, verdict, bytes },
                        None => {
                            // No topic-level error to answer with: close.
                            record(&sh, &conn, &p, &verdict, TOPIC_AUTHORIZATION_FAILED, 0);
                            break;
                        }
                    }
                };
                if tx.send(next).await.is_err() {
                    break;
                }
            }
        }
    };
    let writer = async move {
        while let Some(next) = rx.recv().await {
            match next {
                Next::Broker { p, verdict, t0 } => {
                    let resp = match read_frame(&mut up_r).await {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            sh.metrics.malformed("kafka", "response_frame");
                            tracing::debug!("Kafka response frame: {e}");
                            break;
                        }
                    };
                    let mut out = BytesMut::with_capacity(4 + resp.len());
                    out.put_i32(resp.len() as i32);
                    out.extend_from_slice(&resp);
                    if down_w.write_all(&out).await.is_err() {
                        break;
                    }
                    record(&sh, &conn, &p, &verdict, 0, t0.elapsed().as_nanos() as u64);
                }
                Next::Local { p, verdict, bytes } => {
                    if down_w.write_all(&bytes).await.is_err() {
                        break;
                    }
                    record(&sh, &conn, &p, &verdict, TOPIC_AUTHORIZATION_FAILED, 0);
                }
            }
        }
        let _ = down_w.shutdown().await;
    };
    // Either side ending ends the connection.
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

/// For the cargo-fuzz target (`fuzz/`, `kafka_request`): decodes
/// one request frame body as the proxy does; `Err` for anything it would
/// refuse. Never panics, never allocates more than the input allows.
pub fn fuzz_parse(data: &[u8]) -> Result<usize, String> {
    parse(Bytes::copy_from_slice(data)).map(|p| p.topics.len()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(api: ApiKey, version: i16, body: impl Encodable) -> Bytes {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str("kcat")))
            .encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    fn topic(n: &'static str) -> TopicName {
        TopicName(kafka_protocol::protocol::StrBytes::from_static_str(n))
    }

    #[test]
    fn produce_names_its_topics_and_has_an_error_29_answer() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![TopicProduceData::default()
            .with_name(topic("deathstar-plans"))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0)])]);
        let p = parse(request(ApiKey::Produce, 7, body)).unwrap();
        assert_eq!((p.api_key, p.version, p.correlation_id, p.client_id.as_str()), (0, 7, 7, "kcat"));
        assert_eq!(p.topics, vec!["deathstar-plans"]);
        let mut deny = p.deny.expect("an answer");
        assert_eq!(i32::from_be_bytes(deny[..4].try_into().unwrap()) as usize, deny.len() - 4);
        let _ = deny.split_to(4);
        let h = ResponseHeader::decode(&mut deny, ApiKey::Produce.response_header_version(7)).unwrap();
        assert_eq!(h.correlation_id, 7);
        let r = ProduceResponse::decode(&mut deny, 7).unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, 29);
    }

    #[test]
    fn metadata_for_all_topics_names_none_a_rule_allows() {
        let p = parse(request(ApiKey::Metadata, 4, MetadataRequest::default().with_topics(None))).unwrap();
        assert_eq!(p.topics, vec![String::new()]);
        let p = parse(request(ApiKey::ApiVersions, 3, kafka_protocol::messages::ApiVersionsRequest::default())).unwrap();
        assert!(p.topics.is_empty(), "ApiVersions names no topic");
    }

    #[test]
    fn lying_and_garbage_frames_are_errors_not_panics() {
        assert!(parse(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(parse(Bytes::from_static(&[0x7f, 0x7f, 0, 1, 0, 0, 0, 1, 0, 0])).is_err(), "unknown API key");
        use kafka_protocol::messages::{
            fetch_request::{FetchPartition, FetchTopic},
            produce_request::{PartitionProduceData, TopicProduceData},
        };
        let metadata = request(ApiKey::Metadata, 4, MetadataRequest::default().with_topics(Some(vec![])));
        let produce = request(
            ApiKey::Produce,
            7,
            ProduceRequest::default().with_acks(1).with_topic_data(vec![TopicProduceData::default()
                .with_name(topic("t"))
                .with_partition_data(vec![PartitionProduceData::default().with_index(0)])]),
        );
        let fetch = request(
            ApiKey::Fetch,
            11,
            FetchRequest::default()
                .with_topics(vec![FetchTopic::default().with_topic(topic("t")).with_partitions(vec![FetchPartition::default()])]),
        );
        let seeds = [metadata.to_vec(), produce.to_vec(), fetch.to_vec()];
        palisade_node::mutate::mutations(&seeds, 100_000, |b| {
            let _ = parse(Bytes::copy_from_slice(b));
        });
    }
}
