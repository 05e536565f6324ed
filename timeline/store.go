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
// buffer: the list header (40 bytes, in a 48-byte size class) and its slot
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
// A Store only adds entries to timelines it holds. A timeline comes to be
// held by Replace (an install, from read-repair, a rebuild, or an empty
// timeline for a new owner) and stops being held by Drop. Push and
// PushMany skip owners whose timeline is not held, because a timeline
// created by a push would hold only the entries pushed since and be
// mistaken for a whole one; Has tells "held, maybe empty" from "not held
// here", which is what a reader needs to decide on read-repair.
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

// Push adds entries to owner's timeline and returns how many it took. An
// entry is not taken if the timeline is not held here, if its StatusID is
// 0 or already in the timeline, or if the timeline is full and the entry
// is older than its oldest. Each taken entry beyond the capacity drops the
// oldest. The entries may be in any order.
func (s *Store) Push(owner uint64, entries ...Entry) (added int) {
	if len(entries) == 0 {
		return 0
	}
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil {
		return 0
	}
	before := len(l.buf)
	for _, e := range entries {
		if l.insert(e, s.capacity) {
			added++
		}
	}
	sh.mu.bytes += int64(len(l.buf)-before) * EntrySize
	return added
}

// PushMany pushes e to the timeline of each of owners, as Push does, and
// returns how many took it. It locks one shard at a time.
func (s *Store) PushMany(owners []uint64, e Entry) (added int) {
	if e.StatusID == 0 {
		return 0
	}
	for _, owner := range owners {
		added += s.Push(owner, e)
	}
	return added
}

// Range returns up to limit entries of owner's timeline, newest first, with
// sinceID < StatusID <= maxID; a maxID or sinceID of 0 leaves that side
// open. limit is clamped to [1, Capacity()]. Range returns nil when no
// entry matches, whether or not the timeline is held (see Has). The
// result is a copy that the caller owns.
func (s *Store) Range(owner, maxID, sinceID uint64, limit int) []Entry {
	limit = min(max(limit, 1), s.capacity)
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	if l == nil {
		return nil
	}
	lo, hi := l.span(maxID, sinceID, limit)
	if lo == hi {
		return nil
	}
	return l.appendRange(make([]Entry, 0, hi-lo), lo, hi)
}

// Remove deletes the entry with statusID from owner's timeline and reports
// whether it was there. The timeline stays held, even if it becomes empty.
func (s *Store) Remove(owner, statusID uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.mu.timelines[owner]
	return l != nil && l.remove(statusID)
}

// Len returns the number of entries of owner's timeline; 0 if it is not
// held.
func (s *Store) Len(owner uint64) int {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l := sh.mu.timelines[owner]; l != nil {
		return l.n
	}
	return 0
}

// Has reports whether owner's timeline is held here, even if it is empty.
func (s *Store) Has(owner uint64) bool {
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.mu.timelines[owner]
	return ok
}

// Replace installs owner's whole timeline, held from then on: the newest
// Capacity() of entries, de-duplicated by StatusID (the first of equal ids
// is kept), without StatusID 0, in any order. It replaces the timeline
// held before, if any. entries is not modified or retained; an empty
// entries installs an empty timeline.
func (s *Store) Replace(owner uint64, entries []Entry) {
	l := newList(entries, s.capacity) // sorts outside the lock
	sh := s.shard(owner)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if old := sh.mu.timelines[owner]; old != nil {
		sh.mu.bytes -= bufBytes(old)
	}
	sh.mu.timelines[owner] = l
	sh.mu.bytes += bufBytes(l)
}

// Drop forgets owner's timeline and reports whether it was held.
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

// Owners returns the number of timelines held. Under concurrent changes
// it is a sum of per-shard counts taken one shard at a time.
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

// Bytes returns an estimate of the memory the timelines use: EntrySize
// bytes per slot of each timeline's buffer (buffers double up to the
// capacity as entries arrive and never shrink) and about 80 bytes per
// timeline for its header and map slot. It does not count the allocator's
// rounding up to size classes (under 3% for a full timeline of 800) or
// the space of map slots freed by Drop. Like Owners, it is taken one shard
// at a time.
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
