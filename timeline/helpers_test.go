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
	held     map[uint64][]Entry
}

func newModel(capacity int) *model {
	return &model{capacity: capacity, held: make(map[uint64][]Entry)}
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

func (m *model) replace(owner uint64, entries []Entry) {
	m.held[owner] = []Entry{}
	for _, x := range entries {
		m.push(owner, x)
	}
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
