//! Policy sets: the policy map holds entries per *set* (the exact entries
//! compiled for an endpoint), not per endpoint, and every endpoint whose
//! entries are equal points at the same set (`bpf/lib/policy.h`).
//!
//! Why: pods of one deployment, or every pod one policy selects, compile to
//! the same entries. Per endpoint, one CNP over 1000 such pods is 10 000
//! entries written and 10 000 deleted, and the kernel's LPM trie takes one
//! syscall each; per set it is the set's 10 entries once, then one
//! endpoint-table write per pod. It also keeps one copy of the entries in
//! the agent instead of one per endpoint.
//!
//! A shared set is never changed: a change writes a new set (or finds an
//! equal one), switches the endpoints, and only then deletes the set nobody
//! points at any more. Set ids are never reused. A set with one user is
//! changed in place (one rule added to a 10 000-rule policy is one entry,
//! not 20 000), with its
//! generation bumped around the change, which is what the datapath's
//! verdict cache is keyed by. Set 0 is the empty set: it has no entries and
//! is never written.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_bpf::{PolicyKey, PolicyValue};

/// A set's entries, keyed with `set_id` 0 (filled in when written).
pub type Entries = std::collections::BTreeMap<PolicyKey, PolicyValue>;

/// How long a set nobody points at any more stays in the map before its
/// entries are deleted: longer than any datapath program that read the old
/// set id from an endpoint entry just before the switch can still be
/// looking it up (microseconds; they run in softirq, not preemptible).
pub const GRACE: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Set {
    entries: Arc<Entries>,
    refs: usize,
    gen: u32,
}

#[derive(Debug, Default)]
pub struct PolicySets {
    sets: HashMap<u32, Set>,
    by_content: HashMap<Arc<Entries>, u32>,
    /// Next id to hand out: above every id ever seen, never reused.
    next: u32,
    /// Sets nobody points at, waiting for their entries to be deleted.
    retired: Vec<(u32, Arc<Entries>)>,
    /// When the last endpoint was switched away from a set (see [`GRACE`]).
    last_switch: Option<Instant>,
    /// The id counter went past 2^32 - 1 (see [`PolicySets::take_wrapped`]).
    wrapped: bool,
    /// Sets changed in place by the current batch: not shared with other
    /// endpoints until [`PolicySets::finish`] (their entries are not all
    /// written yet).
    changing: Vec<u32>,
}

/// Where an endpoint's entries go.
#[derive(Debug, Default)]
pub struct Placement {
    pub id: u32,
    /// The set's generation once the change is complete.
    pub gen: u32,
    /// Entries to write before the endpoint points at `id` (keyed with it).
    pub put: Vec<(PolicyKey, PolicyValue)>,
    /// Changed in place: entries to delete once the endpoint carries
    /// generation `gen - 1`; it gets `gen` after them. Empty otherwise.
    pub delete: Vec<PolicyKey>,
    /// The set is changed in place (its one user is this endpoint).
    pub in_place: bool,
}

impl PolicySets {
    /// Rebuilds from what the maps hold: the policy map's entries grouped by
    /// set, and the set each endpoint id points at. Sets nobody points at
    /// are retired.
    /// `endpoint_sets`: (set, generation) of each endpoint id.
    pub fn rebuild(&mut self, entries: Vec<(PolicyKey, PolicyValue)>, endpoint_sets: impl IntoIterator<Item = (u32, u32)>) {
        let mut grouped: HashMap<u32, Entries> = HashMap::new();
        let mut max = self.next.saturating_sub(1);
        for (mut k, v) in entries {
            max = max.max(k.set_id);
            let id = std::mem::replace(&mut k.set_id, 0);
            grouped.entry(id).or_default().insert(k, v);
        }
        let mut refs: HashMap<u32, (usize, u32)> = HashMap::new();
        for (id, gen) in endpoint_sets {
            max = max.max(id);
            if id != 0 {
                let r = refs.entry(id).or_default();
                r.0 += 1;
                r.1 = r.1.max(gen);
            }
        }
        self.sets.clear();
        self.by_content.clear();
        self.retired.clear();
        self.changing.clear();
        for (id, e) in grouped {
            let entries = Arc::new(e);
            match refs.get(&id) {
                Some(&(n, gen)) if id != 0 => {
                    self.by_content.entry(entries.clone()).or_insert(id);
                    self.sets.insert(id, Set { entries, refs: n, gen });
                }
                _ => self.retired.push((id, entries)),
            }
        }
        // An endpoint pointing at a set with no entries (all of it lost):
        // keep it counted, so it is switched like any other.
        for (id, (n, gen)) in refs {
            self.sets.entry(id).or_insert_with(|| Set { entries: Arc::new(Entries::new()), refs: n, gen });
        }
        self.next = max.saturating_add(1).max(1);
    }

    /// Where the endpoint now on set `current` puts `want`: the same set
    /// when unchanged, an equal set when there is one, its own set changed
    /// in place when it is the set's only user, else a new set. Counts a reference on the
    /// result; every place is matched by one [`PolicySets::release`] of
    /// `current` after all places of a batch (so an endpoint moving between
    /// two sets never frees the one it moves to), then one
    /// [`PolicySets::finish`].
    pub fn place(&mut self, current: u32, want: Arc<Entries>) -> Placement {
        if want.is_empty() {
            return Placement::default();
        }
        if let Some(s) = self.sets.get_mut(&current) {
            if s.entries == want {
                s.refs += 1;
                return Placement { id: current, gen: s.gen, ..Default::default() };
            }
        }
        if let Some(&id) = self.by_content.get(&want) {
            if let Some(s) = self.sets.get_mut(&id) {
                s.refs += 1;
                return Placement { id, gen: s.gen, ..Default::default() };
            }
        }
        let sole = self.sets.get(&current).is_some_and(|s| s.refs == 1) && !self.changing.contains(&current);
        if let Some(s) = self.sets.get_mut(&current).filter(|_| sole) {
            // The difference is never more map writes than a new set (its
            // entries now, the old ones deleted later), and deletes cannot
            // fail for want of space: rolling back a change that filled the
            // map always works in place.
            let d = crate::agent::compile::diff(&s.entries, &want);
            {
                if self.by_content.get(&s.entries) == Some(&current) {
                    self.by_content.remove(&s.entries);
                }
                s.entries = want;
                s.refs += 1;
                s.gen = s.gen.wrapping_add(if d.delete.is_empty() { 1 } else { 2 });
                self.changing.push(current);
                let put = d.put.into_iter().map(|(k, v)| (PolicyKey { set_id: current, ..k }, v)).collect();
                let delete = d.delete.into_iter().map(|k| PolicyKey { set_id: current, ..k }).collect();
                return Placement { id: current, gen: s.gen, put, delete, in_place: true };
            }
        }
        let id = self.allocate();
        let entries = want;
        self.by_content.insert(entries.clone(), id);
        self.sets.insert(id, Set { entries: entries.clone(), refs: 1, gen: 0 });
        Placement { id, gen: 0, put: keys(id, &entries).zip(entries.values().copied()).collect(), ..Default::default() }
    }

    /// Ends a batch: sets changed in place can be shared again.
    pub fn finish(&mut self) {
        for id in std::mem::take(&mut self.changing) {
            if let Some(s) = self.sets.get(&id) {
                self.by_content.entry(s.entries.clone()).or_insert(id);
            }
        }
    }

    /// Drops one reference; a set nobody points at is retired.
    pub fn release(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        self.last_switch = Some(Instant::now());
        let Some(s) = self.sets.get_mut(&id) else { return };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            let s = self.sets.remove(&id).expect("present");
            if self.by_content.get(&s.entries) == Some(&id) {
                self.by_content.remove(&s.entries);
            }
            self.retired.push((id, s.entries));
        }
    }

    /// The keys of every retired set, to delete now. Waits out [`GRACE`]
    /// since the last switch first, so no datapath program is still
    /// looking them up.
    pub fn take_retired(&mut self) -> Vec<PolicyKey> {
        if self.retired.is_empty() {
            return Vec::new();
        }
        if let Some(t) = self.last_switch {
            std::thread::sleep(GRACE.saturating_sub(t.elapsed()));
        }
        self.retired.drain(..).flat_map(|(id, e)| keys(id, &e).collect::<Vec<_>>()).collect()
    }

    /// Whether ids wrapped since the last call: the verdict cache may hold
    /// entries of an earlier set with a reused id, and must be cleared
    /// before the new sets are written.
    pub fn take_wrapped(&mut self) -> bool {
        std::mem::take(&mut self.wrapped)
    }

    /// A set's entries, keyed with its id.
    pub fn entries(&self, id: u32) -> impl Iterator<Item = (PolicyKey, PolicyValue)> + '_ {
        self.sets.get(&id).into_iter().flat_map(move |s| s.entries.iter().map(move |(k, v)| (PolicyKey { set_id: id, ..*k }, *v)))
    }

    /// Sets in use and the entries they hold (each set counted once).
    pub fn stats(&self) -> (usize, usize) {
        (self.sets.len(), self.sets.values().map(|s| s.entries.len()).sum())
    }

    fn allocate(&mut self) -> u32 {
        // Ids only grow; at the end of the range (2^32 sets), start again
        // from 1 past the ids in use, and have the caller clear the
        // verdict cache before it writes anything under a wrapped id.
        loop {
            let id = self.next;
            self.next = self.next.wrapping_add(1);
            if self.next == 0 {
                self.next = 1;
                self.wrapped = true;
            }
            if id != 0 && !self.sets.contains_key(&id) && !self.retired.iter().any(|(r, _)| *r == id) {
                return id;
            }
        }
    }
}

/// A set's entries with its id in every key.
pub fn keys(id: u32, e: &Entries) -> impl Iterator<Item = PolicyKey> + '_ {
    e.keys().map(move |k| PolicyKey { set_id: id, ..*k })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ports: &[u16]) -> Entries {
        ports
            .iter()
            .map(|p| {
                (
                    PolicyKey { set_id: 0, identity: 300, direction: 0, proto: Some(6), port: *p, port_bits: 16 },
                    PolicyValue { cookie: 1, proxy_port: 0, deny: false, pods: false },
                )
            })
            .collect()
    }

    /// One batch: place every (current, want), then release every current.
    fn batch(s: &mut PolicySets, moves: &[(u32, Entries)]) -> Vec<Placement> {
        let out: Vec<Placement> = moves.iter().map(|(cur, want)| s.place(*cur, Arc::new(want.clone()))).collect();
        for (cur, _) in moves {
            s.release(*cur);
        }
        s.finish();
        out
    }

    #[test]
    fn equal_entries_share_one_set_and_it_is_freed_with_the_last_user() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let p = batch(&mut s, &[(0, entries(&[80])), (0, entries(&[80]))]);
        assert_eq!(p[0].put.len(), 1, "first user writes the set");
        assert_eq!(p[0].id, p[1].id);
        assert!(p[1].put.is_empty(), "second user only points at it");
        assert_eq!(s.stats(), (1, 1));
        s.release(p[0].id);
        assert!(s.take_retired().is_empty(), "still used by the second");
        s.release(p[1].id);
        let gone = s.take_retired();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].set_id, p[0].id);
        assert_eq!(s.stats(), (0, 0));
    }

    #[test]
    fn ids_are_never_reused_and_empty_is_set_zero() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        assert_eq!(s.place(0, Arc::new(Entries::new())).id, 0);
        let a = batch(&mut s, &[(0, entries(&[80]))])[0].id;
        s.release(a);
        s.take_retired();
        let b = batch(&mut s, &[(0, entries(&[80]))])[0].id;
        assert_ne!(a, b, "a freed id must not come back (the verdict cache is keyed by it)");
    }

    #[test]
    fn moving_to_a_set_in_use_before_releasing_keeps_it() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let p = batch(&mut s, &[(0, entries(&[80])), (0, entries(&[81]))]);
        let (x, y) = (p[0].id, p[1].id);
        // The endpoint on x moves to y's entries and the one on y to x's.
        let q = batch(&mut s, &[(x, entries(&[81])), (y, entries(&[80]))]);
        assert_eq!((q[0].id, q[1].id), (y, x));
        assert!(q.iter().all(|p| p.put.is_empty() && !p.in_place));
        assert!(s.take_retired().is_empty());
        assert_eq!(s.stats(), (2, 2));
    }

    #[test]
    fn a_small_change_to_a_set_with_one_user_is_made_in_place_with_a_new_generation() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let big: Vec<u16> = (1000..1100).collect();
        let p = batch(&mut s, &[(0, entries(&big))]);
        let id = p[0].id;
        let mut more = big.clone();
        more.push(2000);
        let q = batch(&mut s, &[(id, entries(&more))]);
        assert!(q[0].in_place);
        assert_eq!((q[0].id, q[0].put.len(), q[0].delete.len(), q[0].gen), (id, 1, 0, 1));
        let r = batch(&mut s, &[(id, entries(&big[1..]))]);
        assert_eq!((r[0].put.len(), r[0].delete.len(), r[0].gen), (0, 2, 3), "deletes: two generations");
        assert!(s.take_retired().is_empty());
        // Shared: never in place; a big change: a new set.
        let shared = batch(&mut s, &[(0, entries(&big[1..]))]);
        assert_eq!(shared[0].id, id, "the changed set is shared again after the batch");
        let t = batch(&mut s, &[(id, entries(&more))]);
        assert!(!t[0].in_place && t[0].id != id);
        let u = batch(&mut s, &[(t[0].id, entries(&[1]))]);
        assert!(u[0].in_place, "a set with one user is changed in place, however big the change");
        assert_eq!((u[0].put.len(), u[0].delete.len()), (1, more.len()));
    }

    #[test]
    fn a_set_changed_in_place_is_not_shared_within_its_batch() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let big: Vec<u16> = (1000..1100).collect();
        let id = batch(&mut s, &[(0, entries(&big))])[0].id;
        let mut more = big.clone();
        more.push(2000);
        // The set's user changes in place; another endpoint wants the same
        // new entries in the same batch: it must not point at a set whose
        // entries are not all written yet.
        let p = batch(&mut s, &[(id, entries(&more)), (0, entries(&more))]);
        assert!(p[0].in_place);
        assert_ne!(p[1].id, id);
        assert_eq!(p[1].put.len(), more.len());
    }

    #[test]
    fn rebuild_counts_users_retires_orphans_and_starts_above_every_id() {
        let mut s = PolicySets::default();
        let put = |id: u32, port: u16| {
            (
                PolicyKey { set_id: id, identity: 300, direction: 0, proto: Some(6), port, port_bits: 16 },
                PolicyValue { cookie: 1, proxy_port: 0, deny: false, pods: false },
            )
        };
        s.rebuild(vec![put(4, 80), put(9, 81)], [(4, 7), (4, 7), (0, 0)]);
        assert_eq!(s.stats(), (1, 1));
        let again = s.place(0, Arc::new(entries(&[80])));
        assert_eq!((again.id, again.gen), (4, 7), "an equal set in the map is found, with its generation");
        let orphan = s.take_retired();
        assert_eq!(orphan.len(), 1);
        assert_eq!(orphan[0].set_id, 9);
        assert!(s.place(0, Arc::new(entries(&[82]))).id > 9);
    }
}
