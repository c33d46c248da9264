//! The selector cache: for each label selector the policies use, the label
//! identities it matches, kept from one change to the next.
//!
//! Why: a policy change used to evaluate selectors against every endpoint
//! and identity of the node, several times over (which endpoints the change
//! reaches, which rules select each, which identities each peer selector
//! stands for), so changing one endpoint's policy among 10 000 cost as much
//! as changing all. Here a selector is evaluated against every identity once,
//! when a policy first uses it; afterwards only identities that appear are
//! evaluated (against every cached selector) and identities that go are
//! dropped. "Does this rule select this endpoint" is then a set lookup of
//! the endpoint's identity: an endpoint's labels are its identity's labels.
//! (Cilium's agent keeps a selector cache for the same reason.)
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use palisade_policy::{Labels, Policy, Rule, Selector};

#[derive(Debug, Default)]
pub struct SelectorCache {
    /// The label identities the sets were computed against.
    known: HashMap<u32, Labels>,
    sets: HashMap<Selector, Arc<HashSet<u32>>>,
    /// Selector evaluations done (for tests and debug logs).
    evaluations: u64,
    /// Selectors in use at the last sweep ([`SelectorCache::retain_used`]).
    in_use: usize,
}

impl SelectorCache {
    /// Brings every cached set up to date with the label identities now
    /// known: only identities that appeared (or whose labels changed) are
    /// evaluated, against every cached selector.
    pub fn refresh<'a>(&mut self, identities: impl Iterator<Item = (u32, &'a Labels)>) {
        let mut seen: HashSet<u32> = HashSet::with_capacity(self.known.len());
        let mut fresh: Vec<(u32, Labels)> = Vec::new();
        for (id, labels) in identities {
            seen.insert(id);
            match self.known.get(&id) {
                Some(l) if Arc::ptr_eq(&l.0, &labels.0) || l == labels => {}
                _ => fresh.push((id, labels.clone())),
            }
        }
        let gone: Vec<u32> = self.known.keys().filter(|id| !seen.contains(id)).copied().collect();
        if gone.is_empty() && fresh.is_empty() {
            return;
        }
        for (sel, ids) in self.sets.iter_mut() {
            let ids = Arc::make_mut(ids);
            for id in &gone {
                ids.remove(id);
            }
            for (id, labels) in &fresh {
                self.evaluations += 1;
                if sel.matches(labels) {
                    ids.insert(*id);
                } else {
                    ids.remove(id);
                }
            }
        }
        for id in gone {
            self.known.remove(&id);
        }
        self.known.extend(fresh);
    }

    /// The identities `sel` matches, computed over every known identity the
    /// first time it is asked for.
    pub fn matching(&mut self, sel: &Selector) -> Arc<HashSet<u32>> {
        if let Some(s) = self.sets.get(sel) {
            return s.clone();
        }
        self.evaluations += self.known.len() as u64;
        let ids: HashSet<u32> = self.known.iter().filter(|(_, l)| sel.matches(l)).map(|(id, _)| *id).collect();
        let ids = Arc::new(ids);
        self.sets.insert(sel.clone(), ids.clone());
        ids
    }

    /// Whether the sets speak for an endpoint with this identity and these
    /// labels: the identity is known with exactly these labels (the same
    /// allocation, as the agent shares them, or equal ones).
    pub fn knows(&self, identity: u32, labels: &Labels) -> bool {
        self.known.get(&identity).is_some_and(|l| Arc::ptr_eq(&l.0, &labels.0) || l == labels)
    }

    /// Whether `rule` selects the pod with these labels and identity (host
    /// rules select no pod). An identity the cache does not know with these
    /// labels is answered from the labels, so the answer is always the
    /// rule's own.
    pub fn selects(&mut self, rule: &Rule, labels: &Labels, identity: u32) -> bool {
        let subject = self.matching(&rule.endpoint_selector);
        self.selects_in(&subject, rule, labels, identity)
    }

    /// [`SelectorCache::selects`] with the rule's subject set already looked
    /// up (`matching(&rule.endpoint_selector)`), for callers that ask about
    /// many endpoints.
    pub fn selects_in(&self, subject: &HashSet<u32>, rule: &Rule, labels: &Labels, identity: u32) -> bool {
        if rule.node_selector.is_some() {
            return false;
        }
        if !self.knows(identity, labels) {
            return rule.selects_endpoint(labels);
        }
        subject.contains(&identity)
    }

    /// Forgets the selectors no policy uses any more, once the cache has
    /// grown to twice what was in use at the last sweep (so a sweep, which
    /// hashes every selector of every policy, is paid for by the
    /// selectors added since).
    pub fn retain_used<'a>(&mut self, policies: impl IntoIterator<Item = &'a Policy>) {
        if self.sets.len() <= 2 * self.in_use + 64 {
            return;
        }
        let used: HashSet<&Selector> = policies.into_iter().flat_map(|p| p.rules.iter()).flat_map(|r| r.selectors()).collect();
        self.sets.retain(|s, _| used.contains(s));
        self.in_use = self.sets.len();
    }

    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// Selectors cached.
    pub fn cached(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::labels::parse_label_list;

    fn l(s: &str) -> Labels {
        Labels::for_endpoint("shop", &parse_label_list(s).unwrap())
    }

    fn sel(k: &str, v: &str) -> Selector {
        Selector { match_labels: [(k.to_string(), v.to_string())].into(), ..Default::default() }
    }

    #[test]
    fn sets_follow_identities_as_they_come_and_go_evaluating_only_the_new() {
        let (a, b, c) = (l("app=web"), l("app=db"), l("app=web,tier=2"));
        let mut sc = SelectorCache::default();
        sc.refresh([(256, &a), (257, &b)].into_iter());
        let web = sel("app", "web");
        assert_eq!(*sc.matching(&web), HashSet::from([256]));
        assert_eq!(sc.evaluations(), 2, "computed once over both identities");
        let _ = sc.matching(&web);
        assert_eq!(sc.evaluations(), 2, "then cached");

        sc.refresh([(256, &a), (257, &b), (258, &c)].into_iter());
        assert_eq!(*sc.matching(&web), HashSet::from([256, 258]));
        assert_eq!(sc.evaluations(), 3, "only the new identity was evaluated");
        sc.refresh([(256, &a), (257, &b), (258, &c)].into_iter());
        assert_eq!(sc.evaluations(), 3, "nothing new: nothing evaluated");

        sc.refresh([(257, &b), (258, &c)].into_iter());
        assert_eq!(*sc.matching(&web), HashSet::from([258]), "a released identity leaves every set");
        // A number reused for other labels is evaluated again.
        sc.refresh([(257, &b), (258, &a)].into_iter());
        assert_eq!(*sc.matching(&web), HashSet::from([258]));
        sc.refresh([(257, &b), (258, &l("app=other"))].into_iter());
        assert!(sc.matching(&web).is_empty());
    }

    #[test]
    fn unused_selectors_are_forgotten() {
        let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n";
        let pol = palisade_policy::parse_policies("p.yaml", y).unwrap();
        let mut sc = SelectorCache::default();
        let a = l("app=web");
        sc.refresh([(256, &a)].into_iter());
        assert!(sc.selects(&pol[0].rules[0], &a, 256));
        assert!(!sc.selects(&pol[0].rules[0], &l("app=db"), 257));
        assert!(sc.selects(&pol[0].rules[0], &a, 999), "an unknown identity is answered from its labels");
        assert!(!sc.selects(&pol[0].rules[0], &l("app=db"), 256), "so is one known with other labels");
        for i in 0..100 {
            let _ = sc.matching(&sel("app", &format!("gone-{i}")));
        }
        assert_eq!(sc.cached(), 101);
        sc.retain_used(&pol);
        assert_eq!(sc.cached(), 1, "the policy's subject selector stays, the others go");
        let _ = sc.matching(&sel("app", "gone"));
        sc.retain_used(&pol);
        assert_eq!(sc.cached(), 2, "a sweep waits for the cache to grow");
    }
}
