//! L7 rules (`toPorts[].rules.http`, `.kafka`): the model, its validation
//! and its matching, in one place so that palisade-l7proxy (which enforces
//! them) and `policy trace` (which explains them) cannot disagree.
//!
//! Semantics are Cilium's (Envoy's for HTTP): `method`, `path` and `host`
//! are regular expressions that must match the **whole** value (`/public`
//! does not match `/public/extra`); the path is the request target as sent,
//! query included. A rule matches when every field it gives matches; a
//! request is allowed when any rule of its port matches. Regexes are the
//! `regex` crate's syntax (RE2's, as Envoy's `safe_regex`), compiled at
//! apply time so an invalid one is refused with its field named.
use serde::{Deserialize, Serialize};

/// The L7 rules of one port rule: one protocol per port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Rules {
    Http(Vec<HttpRule>),
    Kafka(Vec<KafkaRule>),
}

impl L7Rules {
    pub fn protocol(&self) -> &'static str {
        match self {
            L7Rules::Http(_) => "http",
            L7Rules::Kafka(_) => "kafka",
        }
    }
}

/// `rules.http[]`. Every field is optional; `{}` allows every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `Name: value` (present with exactly that value) or `Name` (present).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

/// `headerMatches[]`: a header that must have `value` (or be present, with
/// no value). With `mismatch` set the rule matches anyway and the action
/// says what happens to the request on a mismatch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

/// Cilium's `MismatchAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mismatch {
    /// Let it through and record the mismatch in the flow.
    Log,
    /// Add the header with the value (keeping any other values).
    Add,
    /// Remove the header.
    Delete,
    /// Set the header to the value.
    Replace,
}

impl Mismatch {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LOG" => Some(Mismatch::Log),
            "ADD" => Some(Mismatch::Add),
            "DELETE" => Some(Mismatch::Delete),
            "REPLACE" => Some(Mismatch::Replace),
            _ => None,
        }
    }
}

/// `rules.kafka[]`. `role` and `apiKey` are exclusive; absent fields match
/// anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<KafkaRole>,
    /// Normalised: the API key's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<i16>,
    #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaRole {
    Produce,
    Consume,
}

/// Kafka API keys by Cilium's names (`apiKey` in a policy).
pub const KAFKA_API_KEYS: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
];

pub fn kafka_api_name(key: i16) -> Option<&'static str> {
    KAFKA_API_KEYS.iter().find(|(_, k)| *k == key).map(|(n, _)| *n)
}

impl KafkaRole {
    /// The API keys a role stands for (Cilium's expansion).
    pub fn api_keys(self) -> &'static [i16] {
        match self {
            // Produce, Metadata, ApiVersions.
            KafkaRole::Produce => &[0, 3, 18],
            // Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,
            // FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup,
            // ApiVersions.
            KafkaRole::Consume => &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18],
        }
    }
}

/// The longest topic name Kafka accepts.
pub const KAFKA_TOPIC_MAX: usize = 255;

/// Validates one rule list as parsed from YAML; `path` names the list.
pub fn validate(path: &str, rules: &L7Rules) -> Result<(), (String, String)> {
    match rules {
        L7Rules::Http(list) => {
            for (i, r) in list.iter().enumerate() {
                let p = format!("{path}[{i}]");
                for (field, v) in [("method", &r.method), ("path", &r.path), ("host", &r.host)] {
                    if let Some(v) = v {
                        whole(v).map_err(|e| (format!("{p}.{field}"), format!("{v:?} is not a valid regular expression: {e}")))?;
                    }
                }
                for (j, h) in r.headers.iter().enumerate() {
                    let (name, _) = split_header(h);
                    if !is_token(name) {
                        return Err((format!("{p}.headers[{j}]"), format!("{h:?}: expected \"Name\" or \"Name: value\"")));
                    }
                }
                for (j, h) in r.header_matches.iter().enumerate() {
                    if !is_token(&h.name) {
                        return Err((format!("{p}.headerMatches[{j}].name"), format!("{:?} is not a header name", h.name)));
                    }
                    if matches!(h.mismatch, Some(Mismatch::Add | Mismatch::Replace)) && h.value.is_none() {
                        return Err((format!("{p}.headerMatches[{j}].value"), "ADD and REPLACE need a value".into()));
                    }
                }
            }
        }
        L7Rules::Kafka(list) => {
            for (i, r) in list.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if r.role.is_some() && r.api_key.is_some() {
                    return Err((format!("{p}.apiKey"), "role and apiKey cannot both be set".into()));
                }
                if let Some(t) = &r.topic {
                    if t.is_empty() || t.len() > KAFKA_TOPIC_MAX || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                        return Err((format!("{p}.topic"), format!("{t:?} is not a Kafka topic (1-255 of a-z, A-Z, 0-9, '.', '_', '-')")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `Name: value` → (Name, Some(value)); `Name` → (Name, None).
pub fn split_header(h: &str) -> (&str, Option<&str>) {
    match h.split_once(':') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (h.trim(), None),
    }
}

/// A regex that must match the whole value.
pub fn whole(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$")).size_limit(1 << 20).build()
}

/// One HTTP request as the rules see it.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub path: &'a str,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: &'a str,
    /// Headers by lowercase name, every value.
    pub headers: &'a dyn Fn(&str) -> Vec<String>,
}

/// What a header-match action does to an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Add(String, String),
    Delete(String),
    Replace(String, String),
    /// A LOG mismatch: nothing changes; reported in the flow.
    Logged(String),
}

/// An HTTP rule compiled for matching.
#[derive(Debug, Clone)]
pub struct HttpMatcher {
    method: Option<regex::Regex>,
    path: Option<regex::Regex>,
    host: Option<regex::Regex>,
    headers: Vec<(String, Option<String>)>,
    header_matches: Vec<HeaderMatch>,
}

impl HttpMatcher {
    pub fn new(r: &HttpRule) -> Result<Self, regex::Error> {
        let re = |v: &Option<String>| v.as_deref().map(whole).transpose();
        Ok(Self {
            method: re(&r.method)?,
            path: re(&r.path)?,
            // Host names are case-insensitive.
            host: r.host.as_deref().map(|h| whole(&format!("(?i:{h})"))).transpose()?,
            headers: r
                .headers
                .iter()
                .map(|h| {
                    let (n, v) = split_header(h);
                    (n.to_ascii_lowercase(), v.map(str::to_string))
                })
                .collect(),
            header_matches: r.header_matches.clone(),
        })
    }

    /// `Some(edits)` when the rule admits the request.
    pub fn admits(&self, req: &HttpRequest<'_>) -> Option<Vec<HeaderEdit>> {
        let ok = |re: &Option<regex::Regex>, v: &str| re.as_ref().is_none_or(|re| re.is_match(v));
        if !ok(&self.method, req.method) || !ok(&self.path, req.path) || !ok(&self.host, host_without_port(req.host)) {
            return None;
        }
        for (name, want) in &self.headers {
            let have = (req.headers)(name);
            match want {
                None if have.is_empty() => return None,
                Some(w) if !have.iter().any(|h| h == w) => return None,
                _ => {}
            }
        }
        let mut edits = Vec::new();
        for m in &self.header_matches {
            let have = (req.headers)(&m.name.to_ascii_lowercase());
            let matched = match &m.value {
                None => !have.is_empty(),
                Some(v) => have.iter().any(|h| h == v),
            };
            if matched {
                continue;
            }
            let value = m.value.clone().unwrap_or_default();
            match m.mismatch {
                None => return None,
                Some(Mismatch::Log) => edits.push(HeaderEdit::Logged(m.name.clone())),
                Some(Mismatch::Add) => edits.push(HeaderEdit::Add(m.name.clone(), value)),
                Some(Mismatch::Delete) => edits.push(HeaderEdit::Delete(m.name.clone())),
                Some(Mismatch::Replace) => edits.push(HeaderEdit::Replace(m.name.clone(), value)),
            }
        }
        Some(edits)
    }
}

/// A list of HTTP rules compiled for matching one request against all of
/// them at a cost that does not grow with their number: every rule's path
/// regex is in one `RegexSet` (one pass over the path finds every rule
/// whose path matches); only those rules' other fields are checked.
#[derive(Debug, Clone)]
pub struct HttpRuleSet {
    paths: regex::RegexSet,
    /// Rule index of each pattern of `paths`.
    with_path: Vec<usize>,
    /// Rules without a path: candidates for every request.
    without_path: Vec<usize>,
    rules: Vec<HttpMatcher>,
}

impl HttpRuleSet {
    pub fn new(rules: &[HttpRule]) -> Result<Self, regex::Error> {
        let mut pats = Vec::new();
        let (mut with_path, mut without_path) = (Vec::new(), Vec::new());
        for (i, r) in rules.iter().enumerate() {
            match &r.path {
                Some(p) => {
                    pats.push(format!("^(?:{p})$"));
                    with_path.push(i);
                }
                None => without_path.push(i),
            }
        }
        let paths = regex::RegexSetBuilder::new(pats).size_limit(64 << 20).build()?;
        Ok(Self { paths, with_path, without_path, rules: rules.iter().map(HttpMatcher::new).collect::<Result<_, _>>()? })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (by index) that admits the request, with its edits.
    pub fn admits(&self, req: &HttpRequest<'_>) -> Option<(usize, Vec<HeaderEdit>)> {
        let mut candidates: Vec<usize> = self.paths.matches(req.path).into_iter().map(|p| self.with_path[p]).collect();
        candidates.extend(&self.without_path);
        candidates.sort_unstable();
        candidates.into_iter().find_map(|i| self.rules[i].admits(req).map(|e| (i, e)))
    }
}

fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map_or(h, |(a, _)| &h[..a.len() + 1]);
    }
    h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(a, _)| a)
}

/// One Kafka request as the rules see it.
pub struct KafkaRequest<'a> {
    pub api_key: i16,
    pub api_version: i16,
    pub client_id: &'a str,
    /// The topics the request names (empty for requests about none).
    pub topics: &'a [String],
}

impl KafkaRule {
    /// Whether the rule admits the request: for a request naming topics,
    /// every topic must be the rule's when the rule names one.
    pub fn admits(&self, req: &KafkaRequest<'_>) -> bool {
        if let Some(role) = self.role {
            if !role.api_keys().contains(&req.api_key) {
                return false;
            }
        }
        if self.api_key.is_some_and(|k| k != req.api_key)
            || self.api_version.is_some_and(|v| v != req.api_version)
            || self.client_id.as_deref().is_some_and(|c| c != req.client_id)
        {
            return false;
        }
        match &self.topic {
            None => true,
            Some(t) => req.topics.iter().all(|x| x == t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a dyn Fn(&str) -> Vec<String>) -> HttpRequest<'a> {
        HttpRequest { method, path, host: "api.example.com:8080", headers }
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let none = |_: &str| Vec::new();
        let m = HttpMatcher::new(&HttpRule { method: Some("GET".into()), path: Some("/public".into()), ..Default::default() }).unwrap();
        assert!(m.admits(&req("GET", "/public", &none)).is_some());
        assert!(m.admits(&req("GET", "/public/extra", &none)).is_none(), "prefix is not a match");
        assert!(m.admits(&req("GET", "/xpublic", &none)).is_none());
        assert!(m.admits(&req("POST", "/public", &none)).is_none());
        assert!(m.admits(&req("GETX", "/public", &none)).is_none());
        let m =
            HttpMatcher::new(&HttpRule { path: Some("/api/v1/.*".into()), host: Some("api\\.example\\.com".into()), ..Default::default() })
                .unwrap();
        assert!(m.admits(&req("DELETE", "/api/v1/users?id=1", &none)).is_some(), "host port ignored, query is part of the path");
        let m = HttpMatcher::new(&HttpRule { method: Some("GET|HEAD".into()), ..Default::default() }).unwrap();
        assert!(m.admits(&req("HEAD", "/", &none)).is_some(), "alternation is grouped before anchoring");
        assert!(m.admits(&req("GETHEAD", "/", &none)).is_none());
    }

    #[test]
    fn a_rule_set_answers_as_its_rules_one_by_one() {
        let none = |_: &str| Vec::new();
        let mut rules: Vec<HttpRule> =
            (0..1000).map(|i| HttpRule { method: Some("GET".into()), path: Some(format!("/api/v1/r{i}")), ..Default::default() }).collect();
        rules.push(HttpRule { method: Some("POST".into()), ..Default::default() });
        rules.push(HttpRule {
            method: Some("GET".into()),
            path: Some("/api/v1/r5".into()),
            headers: vec!["X-A".into()],
            ..Default::default()
        });
        let set = HttpRuleSet::new(&rules).unwrap();
        let singles: Vec<HttpMatcher> = rules.iter().map(|r| HttpMatcher::new(r).unwrap()).collect();
        for (m, p) in [("GET", "/api/v1/r999"), ("GET", "/api/v1/r1000"), ("POST", "/x"), ("DELETE", "/api/v1/r5"), ("GET", "/api/v1/r5")] {
            let one_by_one = singles.iter().position(|r| r.admits(&req(m, p, &none)).is_some());
            assert_eq!(set.admits(&req(m, p, &none)).map(|(i, _)| i), one_by_one, "{m} {p}");
        }
    }

    #[test]
    fn headers_need_presence_or_the_exact_value() {
        let h = |n: &str| if n == "x-token" { vec!["abc".to_string()] } else { vec![] };
        let rule = |hs: &[&str]| {
            HttpMatcher::new(&HttpRule { headers: hs.iter().map(|s| s.to_string()).collect(), ..Default::default() }).unwrap()
        };
        assert!(rule(&["X-Token"]).admits(&req("GET", "/", &h)).is_some());
        assert!(rule(&["X-Token: abc"]).admits(&req("GET", "/", &h)).is_some());
        assert!(rule(&["X-Token: abd"]).admits(&req("GET", "/", &h)).is_none());
        assert!(rule(&["X-Other"]).admits(&req("GET", "/", &h)).is_none());
        let hm = |mismatch| {
            HttpMatcher::new(&HttpRule {
                header_matches: vec![HeaderMatch { name: "X-Env".into(), value: Some("prod".into()), mismatch }],
                ..Default::default()
            })
            .unwrap()
        };
        assert!(hm(None).admits(&req("GET", "/", &h)).is_none());
        assert_eq!(hm(Some(Mismatch::Log)).admits(&req("GET", "/", &h)), Some(vec![HeaderEdit::Logged("X-Env".into())]));
        assert_eq!(
            hm(Some(Mismatch::Replace)).admits(&req("GET", "/", &h)),
            Some(vec![HeaderEdit::Replace("X-Env".into(), "prod".into())])
        );
    }

    #[test]
    fn validation_names_the_field() {
        let bad = L7Rules::Http(vec![HttpRule { path: Some("/api/(".into()), ..Default::default() }]);
        let (field, why) = validate("spec.ingress[0].toPorts[0].rules.http", &bad).unwrap_err();
        assert_eq!(field, "spec.ingress[0].toPorts[0].rules.http[0].path");
        assert!(why.contains("regular expression"), "{why}");
        let bad = L7Rules::Kafka(vec![KafkaRule { role: Some(KafkaRole::Produce), api_key: Some(0), ..Default::default() }]);
        assert_eq!(validate("k", &bad).unwrap_err().0, "k[0].apiKey");
        let bad = L7Rules::Kafka(vec![KafkaRule { topic: Some("a b".into()), ..Default::default() }]);
        assert_eq!(validate("k", &bad).unwrap_err().0, "k[0].topic");
    }

    #[test]
    fn kafka_roles_and_topics() {
        let produce = KafkaRule { role: Some(KafkaRole::Produce), topic: Some("empire-announce".into()), ..Default::default() };
        let topics = ["empire-announce".to_string()];
        let other = ["deathstar-plans".to_string()];
        fn r(api_key: i16, topics: &[String]) -> KafkaRequest<'_> {
            KafkaRequest { api_key, api_version: 3, client_id: "c", topics }
        }
        assert!(produce.admits(&r(0, &topics)));
        assert!(!produce.admits(&r(0, &other)));
        assert!(!produce.admits(&r(1, &topics)), "fetch is not produce");
        assert!(produce.admits(&r(18, &[])), "ApiVersions names no topic");
        let mixed = ["empire-announce".to_string(), "deathstar-plans".to_string()];
        assert!(!produce.admits(&r(3, &mixed)), "every topic must be allowed");
    }
}
