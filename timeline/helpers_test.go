package timeline

import (
	"cmp"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// testRand returns a generator seeded from AVIARY_SEED if set, otherwise
// from the time, and logs the seed.
func testRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AVIARY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("bad AVIARY_SEED %q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed=%d (rerun with AVIARY_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func newTestStore(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := NewStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// e returns an entry whose author and flags are derived from its id, so
// that a copy with a different author can be told apart.
func e(id uint64) Entry { return Entry{StatusID: id, AuthorID: id * 7, Flags: uint32(id % 5)} }

// es returns e(id) of each id.
func es(ids ...uint64) []Entry {
	out := make([]Entry, len(ids))
	for i, id := range ids {
		out[i] = e(id)
	}
	return out
}

// statusIDs returns the StatusIDs of entries, in order.
func statusIDs(entries []Entry) []uint64 {
	out := make([]uint64, len(entries))
	for i, x := range entries {
		out[i] = x.StatusID
	}
	return out
}

// model is the reference a Store is checked against: a plainly written
// timeline per owner, ascending by StatusID.
type model struct {
	capacity int
	held     map[uint64][]Entry // held and pending timelines
	pending  map[uint64]bool
}

func newModel(capacity int) *model {
	return &model{capacity: capacity, held: make(map[uint64][]Entry), pending: make(map[uint64]bool)}
}

// view returns owner's timeline as readers see it, newest first (nil if
// empty), and whether it is held (not pending).
func (m *model) view(owner uint64) ([]Entry, bool) {
	tl, ok := m.held[owner]
	if !ok || m.pending[owner] || len(tl) == 0 {
		return nil, ok && !m.pending[owner]
	}
	out := slices.Clone(tl)
	slices.Reverse(out)
	return out, true
}

func (m *model) reserve(owner uint64) {
	if _, ok := m.held[owner]; !ok {
		m.held[owner] = []Entry{}
		m.pending[owner] = true
	}
}

func (m *model) unreserve(owner uint64) bool {
	if !m.pending[owner] {
		return false
	}
	m.drop(owner)
	return true
}

func (m *model) drop(owner uint64) bool {
	_, ok := m.held[owner]
	delete(m.held, owner)
	delete(m.pending, owner)
	return ok
}

// merge pushes entries one by one into a held or pending timeline, or
// installs them, and returns how many ids it holds afterwards that it did
// not before.
func (m *model) merge(owner uint64, entries []Entry) int {
	before := make(map[uint64]bool)
	if tl, ok := m.held[owner]; ok {
		for _, x := range tl {
			before[x.StatusID] = true
		}
	} else {
		m.held[owner] = []Entry{}
	}
	for _, x := range entries {
		m.push(owner, x)
	}
	delete(m.pending, owner)
	added := 0
	for _, x := range m.held[owner] {
		if !before[x.StatusID] {
			added++
		}
	}
	return added
}

// push adds x, then keeps the newest capacity entries; x was added if it
// was new and survived.
func (m *model) push(owner uint64, x Entry) bool {
	tl, ok := m.held[owner]
	if !ok || x.StatusID == 0 || slices.ContainsFunc(tl, func(y Entry) bool { return y.StatusID == x.StatusID }) {
		return false
	}
	tl = append(tl, x)
	slices.SortFunc(tl, func(a, b Entry) int { return cmp.Compare(a.StatusID, b.StatusID) })
	if len(tl) > m.capacity {
		dropped := tl[0]
		tl = slices.Delete(tl, 0, 1)
		if dropped == x {
			m.held[owner] = tl
			return false
		}
	}
	m.held[owner] = tl
	return true
}

// replace installs entries, or merges them into a pending timeline.
func (m *model) replace(owner uint64, entries []Entry) {
	if !m.pending[owner] {
		m.held[owner] = []Entry{}
	}
	m.merge(owner, entries)
}

func (m *model) remove(owner, id uint64) bool {
	tl := m.held[owner]
	for i, x := range tl {
		if x.StatusID == id {
			m.held[owner] = slices.Delete(tl, i, i+1)
			return true
		}
	}
	return false
}

func (m *model) rangeDesc(owner, maxID, sinceID uint64, limit int) []Entry {
	limit = min(max(limit, 1), m.capacity)
	var out []Entry
	if m.pending[owner] {
		return nil
	}
	tl := m.held[owner]
	for i := len(tl) - 1; i >= 0 && len(out) < limit; i-- {
		id := tl[i].StatusID
		if (maxID == 0 || id <= maxID) && id > sinceID {
			out = append(out, tl[i])
		}
	}
	return out
}

// newRand returns a generator for one goroutine of a test, seeded from the
// test's generator.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

// checkBytes checks each shard's Bytes total against its timelines'
// buffers, and each timeline's invariants.
func checkBytes(t testing.TB, s *Store) {
	t.Helper()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		var want int64
		for owner, l := range sh.mu.timelines {
			want += bufBytes(l)
			if l.n > len(l.buf) || len(l.buf) > s.capacity || (len(l.buf) > 0 && l.head >= len(l.buf)) {
				t.Errorf("owner %d: n=%d head=%d len(buf)=%d capacity %d", owner, l.n, l.head, len(l.buf), s.capacity)
			}
		}
		got := sh.mu.bytes
		sh.mu.Unlock()
		if got != want {
			t.Fatalf("shard %d: bytes %d, want %d", i, got, want)
		}
	}
}
