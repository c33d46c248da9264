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
//! Sets are immutable once an endpoint points at them: a change writes a
//! new set (or finds an equal one), switches the endpoints, and only then
//! deletes the set nobody points at any more. Set ids are never reused, so
//! the datapath's verdict cache, keyed by set, never needs invalidating.
//! Set 0 is the empty set: it has no entries and is never written.
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
}

/// A set an endpoint needs: its id, and its entries when they are not in
/// the map yet (the caller writes them before pointing anything at it).
pub struct Acquired {
    pub id: u32,
    pub new_entries: Option<Arc<Entries>>,
}

impl PolicySets {
    /// Rebuilds from what the maps hold: the policy map's entries grouped by
    /// set, and the set each endpoint id points at. Sets nobody points at
    /// are retired.
    pub fn rebuild(&mut self, entries: Vec<(PolicyKey, PolicyValue)>, endpoint_sets: impl IntoIterator<Item = u32>) {
        let mut grouped: HashMap<u32, Entries> = HashMap::new();
        let mut max = self.next.saturating_sub(1);
        for (mut k, v) in entries {
            max = max.max(k.set_id);
            let id = std::mem::replace(&mut k.set_id, 0);
            grouped.entry(id).or_default().insert(k, v);
        }
        let mut refs: HashMap<u32, usize> = HashMap::new();
        for id in endpoint_sets {
            max = max.max(id);
            if id != 0 {
                *refs.entry(id).or_default() += 1;
            }
        }
        self.sets.clear();
        self.by_content.clear();
        self.retired.clear();
        for (id, e) in grouped {
            let entries = Arc::new(e);
            match refs.get(&id) {
                Some(&n) if id != 0 => {
                    self.by_content.entry(entries.clone()).or_insert(id);
                    self.sets.insert(id, Set { entries, refs: n });
                }
                _ => self.retired.push((id, entries)),
            }
        }
        // An endpoint pointing at a set with no entries (all of it lost):
        // keep it counted, so it is switched like any other.
        for (id, n) in refs {
            self.sets.entry(id).or_insert_with(|| Set { entries: Arc::new(Entries::new()), refs: n });
        }
        self.next = max.saturating_add(1).max(1);
    }

    /// The set with exactly `want`, reusing an equal one; counts a
    /// reference. Every acquire is matched by one [`PolicySets::release`]
    /// of the set the endpoint pointed at before (release after acquire, so
    /// an endpoint moving between two sets never frees the one it moves to).
    pub fn acquire(&mut self, want: Entries) -> Acquired {
        if want.is_empty() {
            return Acquired { id: 0, new_entries: None };
        }
        if let Some(&id) = self.by_content.get(&want) {
            if let Some(s) = self.sets.get_mut(&id) {
                s.refs += 1;
                return Acquired { id, new_entries: None };
            }
        }
        let id = self.allocate();
        let entries = Arc::new(want);
        self.by_content.insert(entries.clone(), id);
        self.sets.insert(id, Set { entries: entries.clone(), refs: 1 });
        Acquired { id, new_entries: Some(entries) }
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
                    PolicyValue { cookie: 1, proxy_port: 0, deny: false },
                )
            })
            .collect()
    }

    #[test]
    fn equal_entries_share_one_set_and_it_is_freed_with_the_last_user() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let a = s.acquire(entries(&[80]));
        assert!(a.new_entries.is_some(), "first user writes the set");
        let b = s.acquire(entries(&[80]));
        assert_eq!(a.id, b.id);
        assert!(b.new_entries.is_none(), "second user only points at it");
        assert_eq!(s.stats(), (1, 1));
        s.release(a.id);
        assert!(s.take_retired().is_empty(), "still used by b");
        s.release(b.id);
        let gone = s.take_retired();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].set_id, a.id);
        assert_eq!(s.stats(), (0, 0));
    }

    #[test]
    fn ids_are_never_reused_and_empty_is_set_zero() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        assert_eq!(s.acquire(Entries::new()).id, 0);
        let a = s.acquire(entries(&[80])).id;
        s.release(a);
        s.take_retired();
        let b = s.acquire(entries(&[80])).id;
        assert_ne!(a, b, "a freed id must not come back (the verdict cache is keyed by it)");
    }

    #[test]
    fn moving_to_a_set_in_use_before_releasing_keeps_it() {
        let mut s = PolicySets::default();
        s.rebuild(vec![], []);
        let x = s.acquire(entries(&[80])).id;
        let y = s.acquire(entries(&[81])).id;
        // Endpoint on x moves to y's entries and the one on y to x's.
        let to_y = s.acquire(entries(&[81])).id;
        let to_x = s.acquire(entries(&[80])).id;
        s.release(x);
        s.release(y);
        assert_eq!((to_y, to_x), (y, x));
        assert!(s.take_retired().is_empty());
        assert_eq!(s.stats(), (2, 2));
    }

    #[test]
    fn rebuild_counts_users_retires_orphans_and_starts_above_every_id() {
        let mut s = PolicySets::default();
        let put = |id: u32, port: u16| {
            (
                PolicyKey { set_id: id, identity: 300, direction: 0, proto: Some(6), port, port_bits: 16 },
                PolicyValue { cookie: 1, proxy_port: 0, deny: false },
            )
        };
        s.rebuild(vec![put(4, 80), put(9, 81)], [4, 4, 0]);
        assert_eq!(s.stats(), (1, 1));
        let again = s.acquire(entries(&[80]));
        assert_eq!(again.id, 4, "an equal set in the map is found");
        let orphan = s.take_retired();
        assert_eq!(orphan.len(), 1);
        assert_eq!(orphan[0].set_id, 9);
        assert!(s.acquire(entries(&[82])).id > 9);
    }
}
