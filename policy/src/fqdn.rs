//! FQDN selectors: the `matchName` / `matchPattern` pairs that `toFQDNs` and
//! `rules.dns` use, with Cilium's semantics.
//!
//! Validation happens once, when a policy is loaded, and normalizes every
//! selector (lowercase, no trailing dot) so that matching never has to. The
//! DNS proxy then checks each query name against an endpoint's selectors, at
//! up to ~100k queries per second, so [`NameMatcher`] compiles the selectors
//! up front: names without wildcards go into one hash set, the rest become
//! per-label globs matched right to left against the labels of the name,
//! with the name lowercased into a stack buffer rather than a fresh `String`.
//!
//! Wildcards follow Cilium: `*` stands for zero or more of `[a-z0-9-_]`
//! inside one label and never crosses a dot, so `*.stripe.com` matches
//! `api.stripe.com` but neither `stripe.com` nor `a.b.stripe.com`; a leading
//! `**.` label stands for one or more whole labels; a pattern that is just
//! `*` matches every name.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// The longest DNS name in presentation form, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// A 253-byte name has at most 127 one-byte labels.
const MAX_LABELS: usize = MAX_NAME_LEN.div_ceil(2);

/// One entry of `toFQDNs` or `rules.dns`. Exactly one field is set; see
/// [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

impl FqdnSelector {
    pub fn name(name: impl Into<String>) -> Self {
        Self { match_name: Some(name.into()), match_pattern: None }
    }

    pub fn pattern(pattern: impl Into<String>) -> Self {
        Self { match_name: None, match_pattern: Some(pattern.into()) }
    }
}

/// Checks `s` and returns it normalized (lowercase, trailing dot removed).
/// On failure returns the offending field's path under `sel_path` and the
/// reason, ready for a policy error.
pub fn validate(sel_path: &str, s: &FqdnSelector) -> Result<FqdnSelector, (String, String)> {
    match (&s.match_name, &s.match_pattern) {
        (None, None) => Err((sel_path.to_string(), "one of matchName or matchPattern must be set".to_string())),
        (Some(_), Some(_)) => Err((sel_path.to_string(), "matchName and matchPattern are mutually exclusive; set only one".to_string())),
        (Some(name), None) => normalize(name, false)
            .map(FqdnSelector::name)
            .map_err(|reason| (format!("{sel_path}.matchName"), format!("invalid name {name:?}: {reason}"))),
        (None, Some(pattern)) => normalize(pattern, true)
            .map(FqdnSelector::pattern)
            .map_err(|reason| (format!("{sel_path}.matchPattern"), format!("invalid pattern {pattern:?}: {reason}"))),
    }
}

fn normalize(raw: &str, is_pattern: bool) -> Result<String, String> {
    let lower = raw.to_ascii_lowercase();
    let body = lower.strip_suffix('.').unwrap_or(&lower);
    if body.is_empty() {
        return Err("must not be empty".to_string());
    }
    if is_pattern && body == "*" {
        return Ok(body.to_string());
    }
    if body.len() > MAX_NAME_LEN {
        return Err(format!("{} characters long, the limit is {MAX_NAME_LEN}", body.len()));
    }
    let label_count = body.split('.').count();
    for (i, label) in body.split('.').enumerate() {
        if label.is_empty() {
            return Err("contains an empty label (leading dot or two dots in a row)".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("label {label:?} is {} characters long, the limit is {MAX_LABEL_LEN}", label.len()));
        }
        if is_pattern && label == "**" {
            if i != 0 {
                return Err("'**' is only allowed as the first label, as in '**.example.com'".to_string());
            }
            if label_count == 1 {
                return Err("'**' must be followed by a domain, as in '**.example.com'; use '*' to match every name".to_string());
            }
            continue;
        }
        if is_pattern && label.contains("**") {
            return Err(format!("label {label:?}: '**' is only allowed as a whole first label, as in '**.example.com'"));
        }
        if let Some(c) = label.chars().find(|&c| !(is_name_byte_char(c) || (is_pattern && c == '*'))) {
            return Err(if c == '*' {
                "'*' is only allowed in matchPattern".to_string()
            } else {
                format!("character {c:?} is not allowed; labels use a-z, 0-9, '-' and '_'")
            });
        }
    }
    Ok(body.to_string())
}

fn is_name_byte_char(c: char) -> bool {
    c.is_ascii() && is_name_byte(c as u8)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

/// A compiled set of selectors; see the module docs for the semantics.
#[derive(Debug, Clone, Default)]
pub struct NameMatcher {
    all: bool,
    exact: HashSet<Box<[u8]>>,
    patterns: Vec<Pattern>,
}

/// A pattern with at least one `*`, as globs for its labels in name order.
/// With `any_prefix` (a leading `**`) the name must have at least one more
/// label than `labels`, and those extra leading labels are unconstrained.
#[derive(Debug, Clone)]
struct Pattern {
    any_prefix: bool,
    labels: Vec<LabelGlob>,
}

/// One label of a pattern: the literal pieces between its `*`s, so
/// `api-*-v*` is `["api-", "-v", ""]`. A label without `*` has one piece.
#[derive(Debug, Clone)]
struct LabelGlob {
    pieces: Vec<Box<[u8]>>,
}

impl LabelGlob {
    fn matches(&self, label: &[u8]) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some((last, middle)) = rest.split_last() else {
            return label == &first[..];
        };
        if label.len() < first.len() + last.len() || !label.starts_with(first) || !label.ends_with(last) {
            return false;
        }
        let mut window = &label[first.len()..label.len() - last.len()];
        for piece in middle {
            match find(window, piece) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl NameMatcher {
    /// Compiles selectors that passed [`validate`]. Unvalidated input is
    /// normalized the same way but not rejected; a malformed pattern simply
    /// matches nothing it should not.
    pub fn new(selectors: &[FqdnSelector]) -> NameMatcher {
        let mut m = NameMatcher::default();
        for s in selectors {
            if let Some(name) = &s.match_name {
                m.exact.insert(normalized_bytes(name));
            }
            if let Some(pattern) = &s.match_pattern {
                m.add_pattern(&normalized_bytes(pattern));
            }
        }
        m
    }

    fn add_pattern(&mut self, pattern: &[u8]) {
        if pattern == b"*" {
            self.all = true;
            return;
        }
        if !pattern.contains(&b'*') {
            self.exact.insert(pattern.into());
            return;
        }
        let (any_prefix, rest) = match pattern.strip_prefix(b"**.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let labels = rest.split(|&b| b == b'.').map(|l| LabelGlob { pieces: l.split(|&b| b == b'*').map(Into::into).collect() }).collect();
        self.patterns.push(Pattern { any_prefix, labels });
    }

    /// True when no name can match.
    pub fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.patterns.is_empty()
    }

    /// True when a bare `*` pattern makes every name match.
    pub fn matches_all(&self) -> bool {
        self.all
    }

    /// Whether `name` (any case, trailing dot optional) is selected. Names
    /// with characters outside `[A-Za-z0-9-_]` in a label, empty labels or
    /// more than 253 characters match only a bare `*`.
    pub fn matches(&self, name: &str) -> bool {
        if self.all {
            return true;
        }
        let name = name.as_bytes();
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return false;
        }
        let mut buf = [0u8; MAX_NAME_LEN];
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        let lower = &*lower;

        if self.exact.contains(lower) {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        let mut labels: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
        let mut count = 0;
        for label in lower.split(|&b| b == b'.') {
            if label.is_empty() || !label.iter().all(|&b| is_name_byte(b)) {
                return false;
            }
            labels[count] = label;
            count += 1;
        }
        let labels = &labels[..count];
        self.patterns.iter().any(|p| p.matches(labels))
    }
}

impl Pattern {
    fn matches(&self, labels: &[&[u8]]) -> bool {
        let fixed = self.labels.len();
        let len_ok = if self.any_prefix { labels.len() > fixed } else { labels.len() == fixed };
        len_ok && self.labels.iter().rev().zip(labels.iter().rev()).all(|(glob, label)| glob.matches(label))
    }
}

fn normalized_bytes(s: &str) -> Box<[u8]> {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.to_ascii_lowercase().into_bytes().into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: FqdnSelector) -> FqdnSelector {
        validate("spec.egress[0].toFQDNs[0]", &s).unwrap_or_else(|e| panic!("{s:?} should validate: {e:?}"))
    }

    fn err(s: FqdnSelector) -> (String, String) {
        match validate("spec.egress[0].toFQDNs[0]", &s) {
            Ok(n) => panic!("{s:?} should be rejected, got {n:?}"),
            Err(e) => e,
        }
    }

    fn matcher(sels: &[FqdnSelector]) -> NameMatcher {
        let validated: Vec<_> = sels.iter().cloned().map(ok).collect();
        NameMatcher::new(&validated)
    }

    fn pat(p: &str) -> NameMatcher {
        matcher(&[FqdnSelector::pattern(p)])
    }

    #[test]
    fn validate_normalizes_case_and_trailing_dot() {
        assert_eq!(ok(FqdnSelector::name("API.Stripe.COM.")), FqdnSelector::name("api.stripe.com"));
        assert_eq!(ok(FqdnSelector::pattern("*.Stripe.com.")), FqdnSelector::pattern("*.stripe.com"));
        assert_eq!(ok(FqdnSelector::pattern("*.")), FqdnSelector::pattern("*"));
        assert_eq!(ok(FqdnSelector::name("under_score-1.example")), FqdnSelector::name("under_score-1.example"));
        assert_eq!(ok(FqdnSelector::name("localhost")), FqdnSelector::name("localhost"));
    }

    #[test]
    fn validate_accepts_wildcards_anywhere_in_a_pattern_label() {
        for p in [
            "*",
            "*.stripe.com",
            "api-*.example.com",
            "a*b*c.example.com",
            "*.*.example.com",
            "**.example.com",
            "**.*.example.com",
            "example.*",
        ] {
            assert_eq!(ok(FqdnSelector::pattern(p)), FqdnSelector::pattern(p));
        }
    }

    #[test]
    fn validate_accepts_length_limits() {
        let label63 = "a".repeat(63);
        ok(FqdnSelector::name(format!("{label63}.com")));
        let name253 = [&label63[..], &label63, &label63, &"b".repeat(61)].join(".");
        assert_eq!(name253.len(), 253);
        ok(FqdnSelector::name(format!("{name253}.")));
    }

    #[test]
    fn validate_requires_exactly_one_field() {
        let (path, reason) = err(FqdnSelector { match_name: None, match_pattern: None });
        assert_eq!(path, "spec.egress[0].toFQDNs[0]");
        assert!(reason.contains("one of matchName or matchPattern"), "{reason}");

        let (path, reason) = err(FqdnSelector { match_name: Some("a.com".into()), match_pattern: Some("*.a.com".into()) });
        assert_eq!(path, "spec.egress[0].toFQDNs[0]");
        assert!(reason.contains("mutually exclusive"), "{reason}");
    }

    #[test]
    fn validate_rejects_bad_names() {
        let cases = [
            ("", "must not be empty"),
            (".", "must not be empty"),
            ("a..b", "empty label"),
            (".a.com", "empty label"),
            ("a.com..", "empty label"),
            ("*.example.com", "only allowed in matchPattern"),
            ("api*.example.com", "only allowed in matchPattern"),
            ("exa mple.com", "character ' '"),
            ("exa/mple.com", "character '/'"),
            ("ex\u{e4}mple.com", "character '\u{e4}'"),
        ];
        for (name, want) in cases {
            let (path, reason) = err(FqdnSelector::name(name));
            assert_eq!(path, "spec.egress[0].toFQDNs[0].matchName", "{name:?}");
            assert!(reason.contains(want), "{name:?}: {reason:?} should mention {want:?}");
            assert!(reason.contains(&format!("{name:?}")), "{reason:?} should quote the input");
        }
    }

    #[test]
    fn validate_rejects_overlong_names_and_labels() {
        let (_, reason) = err(FqdnSelector::name(format!("{}.com", "a".repeat(64))));
        assert!(reason.contains("limit is 63"), "{reason}");
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(long.len(), 259);
        let (_, reason) = err(FqdnSelector::name(long.clone()));
        assert!(reason.contains("limit is 253"), "{reason}");
        let (path, reason) = err(FqdnSelector::pattern(format!("*.{long}")));
        assert_eq!(path, "spec.egress[0].toFQDNs[0].matchPattern");
        assert!(reason.contains("limit is 253"), "{reason}");
    }

    #[test]
    fn validate_rejects_bad_patterns() {
        let cases = [
            ("", "must not be empty"),
            (".", "must not be empty"),
            ("*..com", "empty label"),
            ("a..*", "empty label"),
            ("**", "must be followed by a domain"),
            ("**.", "must be followed by a domain"),
            ("***", "'**' is only allowed as a whole first label"),
            ("***.example.com", "'**' is only allowed as a whole first label"),
            ("a**.example.com", "'**' is only allowed as a whole first label"),
            ("a.**.example.com", "only allowed as the first label"),
            ("**.**.example.com", "only allowed as the first label"),
            ("example.**", "only allowed as the first label"),
            ("?.example.com", "character '?'"),
            ("[a-z].example.com", "character '['"),
            ("*.exa mple.com", "character ' '"),
        ];
        for (p, want) in cases {
            let (path, reason) = err(FqdnSelector::pattern(p));
            assert_eq!(path, "spec.egress[0].toFQDNs[0].matchPattern", "{p:?}");
            assert!(reason.contains(want), "{p:?}: {reason:?} should mention {want:?}");
        }
    }

    #[test]
    fn serde_uses_cilium_field_names() {
        let s: FqdnSelector = serde_json::from_str(r#"{"matchPattern":"*.stripe.com"}"#).unwrap();
        assert_eq!(s, FqdnSelector::pattern("*.stripe.com"));
        assert_eq!(serde_json::to_string(&FqdnSelector::name("a.com")).unwrap(), r#"{"matchName":"a.com"}"#);
        assert!(serde_json::from_str::<FqdnSelector>(r#"{"matchname":"a.com"}"#).is_err());
    }

    #[test]
    fn match_name_is_exact_case_insensitive_and_ignores_trailing_dot() {
        let m = matcher(&[FqdnSelector::name("API.stripe.com.")]);
        for yes in ["api.stripe.com", "api.stripe.com.", "API.STRIPE.COM", "Api.Stripe.Com."] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["stripe.com", "x.api.stripe.com", "api.stripe.co", "api.stripe.com..", "", ".", "apixstripe.com"] {
            assert!(!m.matches(no), "{no}");
        }
        assert!(!m.matches_all());
    }

    #[test]
    fn star_matches_within_one_label_only() {
        let m = pat("*.stripe.com");
        for yes in ["api.stripe.com", "API.Stripe.com.", "a-b_c9.stripe.com"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["stripe.com", "a.b.stripe.com", "api.stripe.org", "apistripe.com", "api.notstripe.com"] {
            assert!(!m.matches(no), "{no}");
        }
    }

    #[test]
    fn star_matches_zero_or_more_characters_in_a_label() {
        let m = pat("api-*.example.com");
        for yes in ["api-.example.com", "api-v1.example.com", "API-EU-West.example.com."] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["api.example.com", "xapi-v1.example.com", "api-v1.x.example.com", "api-v1.example.com.x"] {
            assert!(!m.matches(no), "{no}");
        }

        let m = pat("a*b*c.example.com");
        for yes in ["abc.example.com", "axxbyyc.example.com", "abbc.example.com", "abcbc.example.com"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["ab.example.com", "acb.example.com", "abcx.example.com", "a.bc.example.com"] {
            assert!(!m.matches(no), "{no}");
        }

        let m = pat("*cdn*.example.com");
        assert!(m.matches("cdn.example.com"));
        assert!(m.matches("eu-cdn-1.example.com"));
        assert!(!m.matches("cd-n.example.com"));
    }

    #[test]
    fn star_never_matches_characters_outside_a_label_alphabet() {
        let m = pat("*.example.com");
        for no in ["a b.example.com", "a\\046b.example.com", "a*.example.com", "\u{e4}.example.com"] {
            assert!(!m.matches(no), "{no}");
        }
    }

    #[test]
    fn stars_in_several_labels() {
        let m = pat("*.*.example.com");
        assert!(m.matches("a.b.example.com"));
        assert!(!m.matches("a.example.com"));
        assert!(!m.matches("a.b.c.example.com"));

        let m = pat("example.*");
        assert!(m.matches("example.com"));
        assert!(m.matches("example.org."));
        assert!(!m.matches("example"));
        assert!(!m.matches("www.example.com"));
    }

    #[test]
    fn double_star_matches_one_or_more_labels() {
        let m = pat("**.example.com");
        for yes in ["a.example.com", "a.b.example.com", "A.B.C.Example.COM.", "x-1.y_2.example.com"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["example.com", "example.com.", "aexample.com", "a.example.org", "a b.example.com", "a..example.com"] {
            assert!(!m.matches(no), "{no}");
        }

        let m = pat("**.api-*.example.com");
        assert!(m.matches("x.api-eu.example.com"));
        assert!(m.matches("x.y.api-.example.com"));
        assert!(!m.matches("api-eu.example.com"));
        assert!(!m.matches("x.api.example.com"));
    }

    #[test]
    fn bare_star_matches_everything() {
        let m = pat("*");
        assert!(m.matches_all());
        for yes in ["", ".", "com", "a.b.c.d.example.com.", "weird name", &"a".repeat(400)] {
            assert!(m.matches(yes), "{yes}");
        }
    }

    #[test]
    fn pattern_without_wildcard_is_exact() {
        let m = pat("Example.com.");
        assert!(m.matches("example.com"));
        assert!(m.matches("EXAMPLE.COM."));
        assert!(!m.matches("www.example.com"));
    }

    #[test]
    fn several_selectors_are_a_union() {
        let m = matcher(&[FqdnSelector::name("github.com"), FqdnSelector::pattern("*.stripe.com"), FqdnSelector::pattern("**.internal")]);
        assert!(!m.is_empty());
        assert!(m.matches("github.com"));
        assert!(m.matches("api.stripe.com"));
        assert!(m.matches("db.prod.internal"));
        assert!(!m.matches("api.github.com"));
        assert!(!m.matches("internal"));
        assert!(!m.matches("example.com"));
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        let m = NameMatcher::new(&[]);
        assert!(m.is_empty());
        assert!(!m.matches_all());
        assert!(!m.matches("example.com"));
        assert!(!m.matches(""));
    }

    #[test]
    fn overlong_and_degenerate_names_do_not_match_patterns() {
        let m = matcher(&[FqdnSelector::pattern("**.com"), FqdnSelector::pattern("*")]);
        assert!(m.matches(&format!("{}.com", "a".repeat(300))));
        let m = pat("**.com");
        assert!(!m.matches(&format!("{}.com", "a.".repeat(200))));
        assert!(m.matches(&format!("{}com", "a.".repeat(125))));
        assert!(!m.matches(""));
        assert!(!m.matches("."));
        assert!(!m.matches(".com"));
        assert!(!m.matches("a..com"));
    }
}
