package timeline

import (
	"fmt"
	"math/bits"
	"sync"
)

const (
	// DefaultCapacity is the default bound of a timeline: Twitter kept
	// the newest 800 entries of each home timeline.
	DefaultCapacity = 800
	// MaxCapacity is the largest Options.Capacity.
	MaxCapacity = 1 << 20
	// DefaultShards is the default Options.Shards.
	DefaultShards = 64
	// MaxShards is the largest Options.Shards.
	MaxShards = 1 << 16
)

// timelineOverhead is what Bytes counts for a timeline besides its entry
// buffer: the list header (41 bytes, in a 48-byte size class) and its slot
// in the shard's map (key, pointer and control byte at the map's average
// load). TestBytesEstimate checks the sum against the Go heap.
const timelineOverhead = 80

// Options configure a Store. The zero value is usable.
type Options struct {
	// Capacity bounds the entries of each timeline: a push beyond it
	// drops the oldest entry. Default DefaultCapacity (800); at most
	// MaxCapacity.
	Capacity int
	// Shards is the number of parts of the store, each a map with its own
	// lock; an owner's timeline is in part hash(owner) mod Shards. A power
	// of two, at most MaxShards. Default DefaultShards (64): a lock is
	// held for well under a microsecond, so with 64 shards two of a few
	// dozen concurrent calls rarely meet. BenchmarkShards measures it.
	Shards int
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Capacity == 0 {
		o.Capacity = DefaultCapacity
	}
	if o.Shards == 0 {
		o.Shards = DefaultShards
	}
}

// Validate reports an option outside its allowed range.
func (o *Options) Validate() error {
	switch {
	case o.Capacity < 1 || o.Capacity > MaxCapacity:
		return fmt.Errorf("capacity %d: must be in [1, %d]: %w", o.Capacity, MaxCapacity, ErrInvalidOptions)
	case o.Shards < 1 || o.Shards > MaxShards || bits.OnesCount(uint(o.Shards)) != 1:
		return fmt.Errorf("shards %d: must be a power of two in [1, %d]: %w", o.Shards, MaxShards, ErrInvalidOptions)
	}
	return nil
}

// Store holds many timelines in memory, keyed by owner. It is safe for
// concurrent use: owners are spread over independently locked shards, so
// calls for different owners rarely wait for each other.
//
// A Store only adds entries to timelines it holds or has reserved. A
// timeline comes to be held by Replace or Merge (an install, from
// read-repair, a rebuild, or an empty timeline for a new owner) and stops
// being held by Drop. Push and PushMany skip owners with neither, because
// a timeline created by a push would hold only the entries pushed since
// and be mistaken for a whole one; Has tells "held, maybe empty" from "not
// held here", which is what a reader needs to decide on read-repair.
//
// Reserve marks an owner pending while its timeline is rebuilt: pushes
// are kept from then on, readers still see it as not held, and the
// rebuild's Merge or Replace joins the two (Unreserve gives up), so that
// a push that arrives between the rebuild's read and its install is not
// lost.
type Store struct {
	capacity int
	mask     uint64
	shards   []storeShard
}

// storeShard is one independently locked part of a Store. Its lock is a
// sync.Mutex, not a sync.RWMutex: reads hold it as briefly as writes, and
// BenchmarkShards with half pushes and half reads of 20 ran about a third
// faster with a Mutex on a 2-vCPU machine (a RWMutex's writer takes more
// atomic operations, and readers rarely meet in a shard to gain from it).
type storeShard struct {
	mu struct {
		sync.Mutex
		// timelines maps an owner to its timeline.
		timelines map[uint64]*list
		// bytes is the Bytes estimate of the timelines.
		bytes int64
	}
	// Keeps the locks of neighbouring shards off one cache line, so that
	// cores working on different shards do not contend for it (4 KiB for
	// 64 shards).
	_ [64]byte
}

// NewStore returns an empty Store configured by opts; zero fields take
// their defaults.
func NewStore(opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Store{
		capacity: opts.Capacity,
		mask:     uint64(opts.Shards - 1),
		shards:   make([]storeShard, opts.Shards),
	}
	for i := range s.shards {
		s.shards[i].mu.timelines = make(map[uint64]*list)
	}
	return s, nil
}

// Capacity returns the bound of every timeline of the store.
func (s *Store) Capacity() int { return s.capacity }

func (s *Store) shard(owner uint64) *storeShard {
	return &s.shards[mix64(owner)&s.mask]
}

// bufBytes is the Bytes estimate of timeline l.
func bufBytes(l *list) int64 {
	return timelineOverhead + int64(len(l.buf))*EntrySize
}

// Push adds entries to owner's timeline, held or pending, and returns how
// many it took. An entry is not taken if the timeline is neither held nor
// pending here, if its StatusID is 0 or already in the timeline, or if the
// timeline is full and the entry is older than its oldest. Each taken
// entry beyond the capacity drops the oldest. The entries may be in any
// order.
func (s *Store) Push(owner uint64, entries ...Entry) (added int) {
	if len(entries) == 0 {
		return 0
	}
	added, _ = s.push(owner, entries)
	return added
}

// push is Push, and reports whether owner has a timeline (held or
// pending).
func (s *Store) push(owner uint64, entries []Entry) (added int, ok bool) {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil {
		return 0, false
	}
	before := len(l.buf)
	for _, e := range entries {
		if l.insert(e, s.capacity) {
			added++
		}
	}
	sh.mu.bytes += int64(len(l.buf)-before) * EntrySize
	return added, true
}

// PushMany pushes e to the timeline of each of owners, as Push does, and
// returns how many took it. It locks one shard at a time.
func (s *Store) PushMany(owners []uint64, e Entry) (added int) {
	added, _ = s.PushManyMissing(owners, e, nil)
	return added
}

// PushManyMissing is PushMany that also appends to missing, and returns,
// each of owners whose timeline is neither held nor pending here, in the
// order of owners and once each time it is listed: the owners the push
// skipped. If e's StatusID is 0 nothing is pushed and missing is returned
// as it is.
func (s *Store) PushManyMissing(owners []uint64, e Entry, missing []uint64) (added int, _ []uint64) {
	if e.StatusID == 0 {
		return 0, missing
	}
	one := [1]Entry{e}
	for _, owner := range owners {
		n, ok := s.push(owner, one[:])
		if !ok {
			missing = append(missing, owner)
		}
		added += n
	}
	return added, missing
}

// Range returns up to limit entries of owner's timeline, newest first, with
// sinceID < StatusID <= maxID; a maxID or sinceID of 0 leaves that side
// open. limit is clamped to [1, Capacity()]. Range returns nil when no
// entry matches, whether or not the timeline is held (see Has), and for a
// pending timeline. The result is a copy that the caller owns.
func (s *Store) Range(owner, maxID, sinceID uint64, limit int) []Entry {
	entries, _, _ := s.Read(owner, maxID, sinceID, limit)
	return entries
}

// Read is Has, Range and Len in one call, for a replica's read: it
// returns what Range returns, the number of entries of the timeline, and
// whether it is held (nil, 0 and false if it is not held or is pending).
// It takes the shard's lock once, so the three describe one moment.
func (s *Store) Read(owner, maxID, sinceID uint64, limit int) (entries []Entry, n int, held bool) {
	limit = min(max(limit, 1), s.capacity)
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil || l.pending {
		return nil, 0, false
	}
	lo, hi := l.span(maxID, sinceID, limit)
	if lo == hi {
		return nil, l.n, true
	}
	return l.appendRange(make([]Entry, 0, hi-lo), lo, hi), l.n, true
}

// Remove deletes the entry with statusID from owner's timeline, held or
// pending, and reports whether it was there. The timeline stays held (or
// pending), even if it becomes empty. An entry removed from a pending
// timeline comes back if the rebuild's entries have it.
func (s *Store) Remove(owner, statusID uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	return l != nil && l.remove(statusID)
}

// Len returns the number of entries of owner's timeline; 0 if it is not
// held or is pending.
func (s *Store) Len(owner uint64) int {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l := sh.mu.timelines[owner]; l != nil && !l.pending {
		return l.n
	}
	return 0
}

// Has reports whether owner's timeline is held here, even if it is empty;
// false if it is pending.
func (s *Store) Has(owner uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	return l != nil && !l.pending
}

// Get returns a copy of owner's whole timeline, newest first, that the
// caller owns, and whether it is held; nil and false if it is not held or
// is pending. entries is nil if the timeline is empty.
func (s *Store) Get(owner uint64) (entries []Entry, held bool) {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil || l.pending {
		return nil, false
	}
	return l.all(), true
}

// Each calls fn with each held timeline (not the pending ones) and a copy
// of its entries, newest first, that fn owns, until fn returns false. The
// order is unspecified. It goes shard by shard: it lists the shard's held
// owners under its lock, and then for each takes the lock only to copy its
// timeline; fn is called with no lock held, so it may call the Store. Each
// copy is one timeline at one moment; a timeline held throughout the call
// is visited once, and one installed or dropped during it may or may not
// be.
func (s *Store) Each(fn func(owner uint64, entries []Entry) bool) {
	s.EachWhere(nil, fn)
}

// EachWhere is Each over the held timelines whose owner keep accepts (all
// of them if keep is nil): only those are copied, so a caller that wants a
// few of many timelines does not pay for copying the rest. keep is called
// with no lock held, once for each held owner listed, before its copy.
func (s *Store) EachWhere(keep func(owner uint64) bool, fn func(owner uint64, entries []Entry) bool) {
	var owners []uint64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		owners = owners[:0]
		for owner, l := range sh.mu.timelines {
			if !l.pending {
				owners = append(owners, owner)
			}
		}
		sh.mu.Unlock()
		for _, owner := range owners {
			if keep != nil && !keep(owner) {
				continue
			}
			sh.mu.Lock()
			l := sh.mu.timelines[owner]
			held := l != nil && !l.pending
			var entries []Entry
			if held {
				entries = l.all()
			}
			sh.mu.Unlock()
			if held && !fn(owner, entries) {
				return
			}
		}
	}
}

// Reserve marks each of owners whose timeline is neither held nor pending
// here as pending, with an empty timeline; others are left as they are.
// Call it before reading the entries of a rebuild, and install them with
// Merge or Replace, or give up with Unreserve. A pending timeline takes
// Push, PushMany and Remove as a held one does, so that what arrives
// during the rebuild is kept, but Has, Len, Range, Get and Each treat it
// as not held. Owners and Bytes count it.
func (s *Store) Reserve(owners ...uint64) {
	for _, owner := range owners {
		sh := s.shard(owner)
		sh.mu.Lock()
		if sh.mu.timelines[owner] == nil {
			l := &list{pending: true}
			sh.mu.timelines[owner] = l
			sh.mu.bytes += bufBytes(l)
		}
		sh.mu.Unlock()
	}
}

// Unreserve forgets owner's timeline if it is pending (its rebuild failed)
// and reports whether it did; a held timeline is left alone.
func (s *Store) Unreserve(owner uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil || !l.pending {
		return false
	}
	delete(sh.mu.timelines, owner)
	sh.mu.bytes -= bufBytes(l)
	return true
}

// Merge adds entries to owner's timeline and returns how many of them the
// timeline holds afterwards that it did not before (unlike Push's count,
// this leaves out an entry that a newer one of the same call dropped).
// entries may be in any order and hold duplicates and StatusID 0, as for
// Push; it is not modified or retained.
//
//   - Held: the timeline becomes what Push(owner, entries...) would leave
//     (the newest Capacity() of the union; of equal ids the held entry is
//     kept), in O(n + k) under the lock after sorting outside it.
//   - Pending: the same, and the timeline is held from then on.
//   - Neither: entries are installed as by Replace.
//
// Since a bounded union does not depend on order, Merge of a sibling's
// copy or of a rebuild's result may be applied at any time, and merges
// and pushes in any order leave the same timeline (removes aside).
func (s *Store) Merge(owner uint64, entries []Entry) (added int) {
	ps := sortedEntries(entries, s.capacity) // sorts outside the lock
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil {
		l = newList(ps)
		sh.mu.timelines[owner] = l
		sh.mu.bytes += bufBytes(l)
		return l.n
	}
	return sh.merge(l, ps, s.capacity)
}

// merge merges ps into l, which the shard holds, and clears pending.
func (sh *storeShard) merge(l *list, ps []packed, capacity int) (added int) {
	before := len(l.buf)
	added = l.merge(ps, capacity)
	l.pending = false
	sh.mu.bytes += int64(len(l.buf)-before) * EntrySize
	return added
}

// Replace installs owner's whole timeline, held from then on: the newest
// Capacity() of entries, de-duplicated by StatusID (the first of equal ids
// is kept), without StatusID 0, in any order. It replaces the timeline
// held before, if any. A pending timeline is not replaced but merged, as
// by Merge: its entries were pushed after the rebuild read the ones given
// here, so they are kept. entries is not modified or retained; an empty
// entries installs an empty timeline.
func (s *Store) Replace(owner uint64, entries []Entry) {
	ps := sortedEntries(entries, s.capacity) // sorts outside the lock
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.mu.timelines[owner]
	if old != nil && old.pending {
		sh.merge(old, ps, s.capacity)
		return
	}
	if old != nil {
		sh.mu.bytes -= bufBytes(old)
	}
	l := newList(ps)
	sh.mu.timelines[owner] = l
	sh.mu.bytes += bufBytes(l)
}

// Drop forgets owner's timeline, held or pending, and reports whether
// there was one.
func (s *Store) Drop(owner uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil {
		return false
	}
	delete(sh.mu.timelines, owner)
	sh.mu.bytes -= bufBytes(l)
	return true
}

// Owners returns the number of timelines held or pending. Under
// concurrent changes it is a sum of per-shard counts taken one shard at a
// time.
func (s *Store) Owners() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.mu.timelines)
		sh.mu.Unlock()
	}
	return n
}

// Bytes returns an estimate of the memory the timelines, held or pending,
// use: EntrySize bytes per slot of each timeline's buffer (buffers double
// up to the capacity as entries arrive and never shrink) and about 80
// bytes per timeline for its header and map slot. It does not count the
// allocator's rounding up to size classes (under 3% for a full timeline of
// 800) or the space of map slots freed by Drop. Like Owners, it is taken
// one shard at a time.
func (s *Store) Bytes() int64 {
	var n int64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.mu.bytes
		sh.mu.Unlock()
	}
	return n
}
