package timeline

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		ok   bool
	}{
		{Options{}, true},
		{Options{Capacity: 1, Shards: 1}, true},
		{Options{Capacity: MaxCapacity, Shards: MaxShards}, true},
		{Options{Capacity: -1}, false},
		{Options{Capacity: MaxCapacity + 1}, false},
		{Options{Shards: 3}, false},
		{Options{Shards: -4}, false},
		{Options{Shards: 2 * MaxShards}, false},
	} {
		_, err := NewStore(tc.opts)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidOptions)) {
			t.Errorf("NewStore(%+v) = %v, want ok=%v", tc.opts, err, tc.ok)
		}
	}
	s := newTestStore(t, Options{})
	if s.Capacity() != DefaultCapacity {
		t.Errorf("default capacity %d, want %d", s.Capacity(), DefaultCapacity)
	}
}

func TestPush(t *testing.T) {
	for _, tc := range []struct {
		name      string
		capacity  int
		initial   []uint64   // installed with Replace
		pushes    [][]uint64 // each one call of Push
		wantAdded []int
		want      []uint64 // newest first
	}{
		{"into empty", 5, nil, [][]uint64{{1}, {2}, {3}}, []int{1, 1, 1}, []uint64{3, 2, 1}},
		{"any order", 5, nil, [][]uint64{{3, 1, 4}, {2}}, []int{3, 1}, []uint64{4, 3, 2, 1}},
		{"dup in a batch", 5, nil, [][]uint64{{7, 7, 8}}, []int{2}, []uint64{8, 7}},
		{"dup of held", 5, []uint64{1, 2}, [][]uint64{{2}, {1}}, []int{0, 0}, []uint64{2, 1}},
		{"zero id", 5, nil, [][]uint64{{0}, {0, 1}}, []int{0, 1}, []uint64{1}},
		{"full drops oldest", 3, []uint64{1, 2, 3}, [][]uint64{{4}, {5}}, []int{1, 1}, []uint64{5, 4, 3}},
		{"older than oldest of full", 3, []uint64{10, 20, 30}, [][]uint64{{5}, {9}}, []int{0, 0}, []uint64{30, 20, 10}},
		{"oldest of full again", 3, []uint64{10, 20, 30}, [][]uint64{{10}}, []int{0}, []uint64{30, 20, 10}},
		{"middle of full", 3, []uint64{10, 20, 30}, [][]uint64{{15}, {25}}, []int{1, 1}, []uint64{30, 25, 20}},
		{"older than oldest, not full", 4, []uint64{10, 20, 30}, [][]uint64{{5}}, []int{1}, []uint64{30, 20, 10, 5}},
		{"batch beyond bound", 3, nil, [][]uint64{{1, 2, 3, 4, 5, 6}}, []int{3 + 3}, []uint64{6, 5, 4}},
		{"batch beyond bound, newest first", 3, nil, [][]uint64{{6, 5, 4, 3, 2, 1}}, []int{3}, []uint64{6, 5, 4}},
		{"capacity 1", 1, nil, [][]uint64{{5}, {3}, {9}, {9}}, []int{1, 0, 1, 0}, []uint64{9}},
		{"large ids", 3, nil, [][]uint64{{math.MaxUint64, math.MaxUint64 - 1, 1}}, []int{3}, []uint64{math.MaxUint64, math.MaxUint64 - 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, Options{Capacity: tc.capacity})
			const owner = 42
			s.Replace(owner, es(tc.initial...))
			for i, p := range tc.pushes {
				if got := s.Push(owner, es(p...)...); got != tc.wantAdded[i] {
					t.Errorf("Push(%v) = %d, want %d", p, got, tc.wantAdded[i])
				}
			}
			got := s.Range(owner, 0, 0, tc.capacity)
			if !slices.Equal(statusIDs(got), tc.want) {
				t.Fatalf("timeline %v, want %v", statusIDs(got), tc.want)
			}
			for _, x := range got {
				if x != e(x.StatusID) {
					t.Errorf("entry %+v, want %+v", x, e(x.StatusID))
				}
			}
			if n := s.Len(owner); n != len(tc.want) {
				t.Errorf("Len = %d, want %d", n, len(tc.want))
			}
		})
	}
}

// TestFirstCopyKept checks that a second entry with a held StatusID does
// not replace the first, whatever its author or flags.
func TestFirstCopyKept(t *testing.T) {
	s := newTestStore(t, Options{})
	s.Replace(1, []Entry{{StatusID: 5, AuthorID: 1, Flags: 1}, {StatusID: 5, AuthorID: 2, Flags: 2}})
	if n := s.Push(1, Entry{StatusID: 5, AuthorID: 3, Flags: 3}); n != 0 {
		t.Fatalf("Push of a held id = %d, want 0", n)
	}
	want := []Entry{{StatusID: 5, AuthorID: 1, Flags: 1}}
	if got := s.Range(1, 0, 0, 10); !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestNotHeld(t *testing.T) {
	s := newTestStore(t, Options{})
	if s.Has(1) || s.Len(1) != 0 || s.Range(1, 0, 0, 20) != nil || s.Remove(1, 5) || s.Drop(1) {
		t.Fatal("an owner never installed looks held")
	}
	if n := s.Push(1, e(5)); n != 0 {
		t.Fatalf("Push to an owner not held = %d, want 0", n)
	}
	if s.Has(1) {
		t.Fatal("Push made a timeline held")
	}
	s.Replace(2, nil) // held and empty
	s.Replace(3, es(1))
	if !s.Has(2) || s.Len(2) != 0 || s.Range(2, 0, 0, 20) != nil {
		t.Fatal("an empty installed timeline is not held and empty")
	}
	if n := s.PushMany([]uint64{1, 2, 3, 4, 2}, e(9)); n != 2 {
		t.Fatalf("PushMany = %d, want 2 (owners 2 and 3)", n)
	}
	if n := s.PushMany([]uint64{2, 3}, e(0)); n != 0 {
		t.Fatalf("PushMany of id 0 = %d, want 0", n)
	}
	if got := statusIDs(s.Range(3, 0, 0, 20)); !slices.Equal(got, []uint64{9, 1}) {
		t.Fatalf("owner 3: %v", got)
	}
	if !s.Remove(2, 9) || !s.Has(2) || s.Len(2) != 0 {
		t.Fatal("removing the last entry must leave the timeline held")
	}
	if !s.Drop(2) || s.Has(2) || s.Drop(2) {
		t.Fatal("Drop")
	}
	if s.Owners() != 1 {
		t.Fatalf("Owners = %d, want 1", s.Owners())
	}
}

func TestRange(t *testing.T) {
	s := newTestStore(t, Options{Capacity: 10})
	const owner = 7
	s.Replace(owner, es(10, 20, 30, 40, 50, 60, 70, 80, 90, 100))
	for _, tc := range []struct {
		maxID, sinceID uint64
		limit          int
		want           []uint64
	}{
		{0, 0, 3, []uint64{100, 90, 80}},
		{0, 0, 10, []uint64{100, 90, 80, 70, 60, 50, 40, 30, 20, 10}},
		{0, 0, 1000, []uint64{100, 90, 80, 70, 60, 50, 40, 30, 20, 10}}, // clamped to capacity
		{0, 0, 0, []uint64{100}},                                        // clamped to 1
		{0, 0, -5, []uint64{100}},                                       // clamped to 1
		{50, 0, 3, []uint64{50, 40, 30}},
		{55, 0, 3, []uint64{50, 40, 30}},
		{0, 50, 3, []uint64{100, 90, 80}},
		{0, 70, 20, []uint64{100, 90, 80}},
		{0, 75, 20, []uint64{100, 90, 80}},
		{80, 50, 20, []uint64{80, 70, 60}},
		{80, 50, 2, []uint64{80, 70}},
		{60, 50, 20, []uint64{60}},
		{50, 50, 20, nil},
		{40, 50, 20, nil},
		{5, 0, 20, nil},
		{10, 0, 20, []uint64{10}},
		{0, 100, 20, nil},
		{0, 9, 20, []uint64{100, 90, 80, 70, 60, 50, 40, 30, 20, 10}},
		{math.MaxUint64, 0, 2, []uint64{100, 90}},
		{0, math.MaxUint64, 20, nil},
		{100, 10, 20, []uint64{100, 90, 80, 70, 60, 50, 40, 30, 20}},
	} {
		got := s.Range(owner, tc.maxID, tc.sinceID, tc.limit)
		if !slices.Equal(statusIDs(got), tc.want) {
			t.Errorf("Range(max=%d, since=%d, limit=%d) = %v, want %v", tc.maxID, tc.sinceID, tc.limit, statusIDs(got), tc.want)
		}
		if tc.want == nil && got != nil {
			t.Errorf("Range(max=%d, since=%d) = %v, want nil", tc.maxID, tc.sinceID, got)
		}
	}
}

// TestPaging pages through a timeline with max_id as a client does and
// polls for newer entries with since_id.
func TestPaging(t *testing.T) {
	s := newTestStore(t, Options{})
	const owner = 1
	s.Replace(owner, nil)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var all []uint64
	for i := range 95 {
		id := uint64(ids.NewID(start.Add(time.Duration(i)*time.Second), 1, 2, uint32(i)))
		all = append(all, id)
		s.Push(owner, Entry{StatusID: id, AuthorID: uint64(i)})
	}
	slices.Reverse(all)
	var paged []uint64
	maxID := uint64(0)
	for {
		page := s.Range(owner, maxID, 0, 20)
		if page == nil {
			break
		}
		paged = append(paged, statusIDs(page)...)
		maxID = page[len(page)-1].StatusID - 1
	}
	if !slices.Equal(paged, all) {
		t.Fatalf("paging returned %d entries, want %d, in order", len(paged), len(all))
	}
	newest := all[0]
	next := uint64(ids.NewID(start.Add(time.Hour), 1, 2, 0))
	s.Push(owner, Entry{StatusID: next})
	if got := statusIDs(s.Range(owner, 0, newest, 20)); !slices.Equal(got, []uint64{next}) {
		t.Fatalf("since_id poll = %v, want [%d]", got, next)
	}
}

func TestRemove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		initial []uint64
		remove  uint64
		ok      bool
		want    []uint64
	}{
		{"newest", []uint64{1, 2, 3, 4, 5}, 5, true, []uint64{4, 3, 2, 1}},
		{"oldest", []uint64{1, 2, 3, 4, 5}, 1, true, []uint64{5, 4, 3, 2}},
		{"near oldest", []uint64{1, 2, 3, 4, 5}, 2, true, []uint64{5, 4, 3, 1}},
		{"near newest", []uint64{1, 2, 3, 4, 5}, 4, true, []uint64{5, 3, 2, 1}},
		{"absent", []uint64{1, 2, 3}, 7, false, []uint64{3, 2, 1}},
		{"absent between", []uint64{10, 20}, 15, false, []uint64{20, 10}},
		{"zero", []uint64{1, 2}, 0, false, []uint64{2, 1}},
		{"only", []uint64{1}, 1, true, nil},
		{"empty", nil, 1, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, Options{Capacity: 5})
			s.Replace(1, es(tc.initial...))
			if ok := s.Remove(1, tc.remove); ok != tc.ok {
				t.Errorf("Remove = %v, want %v", ok, tc.ok)
			}
			if got := statusIDs(s.Range(1, 0, 0, 5)); !slices.Equal(got, tc.want) {
				t.Errorf("timeline %v, want %v", got, tc.want)
			}
			// A freed slot is reused correctly.
			s.Push(1, e(100))
			if got := s.Range(1, 0, 0, 1); len(got) != 1 || got[0] != e(100) {
				t.Errorf("newest after a push = %v", got)
			}
		})
	}
}

func TestReplace(t *testing.T) {
	s := newTestStore(t, Options{Capacity: 4})
	in := es(5, 0, 3, 9, 3, 1, 7, 8)
	orig := slices.Clone(in)
	s.Replace(1, in)
	if !slices.Equal(in, orig) {
		t.Fatal("Replace modified its input")
	}
	if got := statusIDs(s.Range(1, 0, 0, 10)); !slices.Equal(got, []uint64{9, 8, 7, 5}) {
		t.Fatalf("Replace kept %v, want the newest 4 distinct non-zero", got)
	}
	in[0] = e(100) // not retained
	if got := s.Range(1, 0, 0, 1); got[0].StatusID != 9 {
		t.Fatal("Replace retained its input")
	}
	s.Replace(1, es(2))
	if got := statusIDs(s.Range(1, 0, 0, 10)); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("second Replace left %v", got)
	}
	// Grows from an exact-size buffer.
	if n := s.Push(1, es(4, 3, 1, 6, 0)...); n != 4 {
		t.Fatalf("Push after Replace = %d, want 4", n) // 6 drops 1
	}
	if n := s.Push(1, es(1)...); n != 0 {
		t.Fatalf("Push older than the oldest of a full timeline = %d, want 0", n)
	}
	if got := statusIDs(s.Range(1, 0, 0, 10)); !slices.Equal(got, []uint64{6, 4, 3, 2}) {
		t.Fatalf("after pushes %v", got)
	}
}

func TestBytesAndOwners(t *testing.T) {
	s := newTestStore(t, Options{Capacity: 100, Shards: 4})
	if s.Bytes() != 0 || s.Owners() != 0 {
		t.Fatal("empty store")
	}
	s.Replace(1, nil)
	s.Replace(2, es(1, 2, 3))
	if got, want := s.Bytes(), int64(2*timelineOverhead+3*EntrySize); got != want {
		t.Fatalf("Bytes = %d, want %d", got, want)
	}
	s.Push(1, e(1)) // grows 0 -> minBuf
	s.Push(2, e(4)) // grows 3 -> max(2*3, minBuf)
	want := int64(2*timelineOverhead + 2*minBuf*EntrySize)
	if got := s.Bytes(); got != want {
		t.Fatalf("Bytes = %d, want %d", got, want)
	}
	s.Remove(2, 4) // buffers never shrink
	if got := s.Bytes(); got != want {
		t.Fatalf("Bytes after Remove = %d, want %d", got, want)
	}
	s.Drop(2)
	if got, want := s.Bytes(), int64(timelineOverhead+minBuf*EntrySize); got != want || s.Owners() != 1 {
		t.Fatalf("Bytes after Drop = %d, want %d", got, want)
	}
	for i := range 300 {
		s.Push(1, e(uint64(i+1)))
	}
	if got, want := s.Bytes(), int64(timelineOverhead+100*EntrySize); got != want {
		t.Fatalf("Bytes of a full timeline = %d, want %d", got, want)
	}
}

// TestBytesEstimate compares Bytes with the growth of the Go heap, for
// many empty timelines (the per-timeline overhead) and for timelines of
// mixed lengths grown by pushes (the entry buffers).
func TestBytesEstimate(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates about 100 MB")
	}
	for _, tc := range []struct {
		name   string
		owners uint64
		pushes func(owner uint64) uint64
	}{
		{"empty", 100000, func(uint64) uint64 { return 0 }},
		{"mixed", 5000, func(o uint64) uint64 { return (o * 37) % 1000 }}, // some full
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			before := ms.HeapAlloc
			s := newTestStore(t, Options{})
			entries := 0
			for o := range tc.owners {
				s.Replace(o, nil)
				for i := range tc.pushes(o) {
					s.Push(o, e(i+1))
				}
				entries += s.Len(o)
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			heap := int64(ms.HeapAlloc - before)
			est := s.Bytes()
			ratio := float64(est) / float64(heap)
			t.Logf("%d timelines, %d entries: Bytes %d, heap growth %d (%.1f per timeline), ratio %.3f",
				s.Owners(), entries, est, heap, float64(heap)/float64(tc.owners), ratio)
			if ratio < 0.85 || ratio > 1.15 {
				t.Errorf("Bytes is %.3f of the heap growth, want within 15%%", ratio)
			}
			runtime.KeepAlive(s)
		})
	}
}

// TestModel runs random operations against a Store and a plainly written
// model and compares every answer and, after each operation, the
// timeline it touched as readers see it. Owners are reserved, merged into
// and installed over at random, so pending timelines meet every other
// operation.
func TestModel(t *testing.T) {
	rng := testRand(t)
	for _, capacity := range []int{1, 2, 3, 5, 8, 13, 64} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			s := newTestStore(t, Options{Capacity: capacity, Shards: 2})
			m := newModel(capacity)
			const owners = 4
			idSpace := uint64(3 * capacity)                             // small, so that ids repeat
			randID := func() uint64 { return rng.Uint64N(idSpace + 1) } // includes 0
			for step := range 20000 {
				owner := rng.Uint64N(owners)
				var op string
				switch r := rng.IntN(100); {
				case r < 45:
					op = "push"
					batch := make([]Entry, 1+rng.IntN(3))
					want := 0
					for i := range batch {
						batch[i] = e(randID())
						if m.push(owner, batch[i]) {
							want++
						}
					}
					if got := s.Push(owner, batch...); got != want {
						t.Fatalf("step %d: Push(%d, %v) = %d, want %d", step, owner, statusIDs(batch), got, want)
					}
				case r < 55:
					op = "pushmany"
					x := e(randID())
					targets := []uint64{owner, rng.Uint64N(owners), rng.Uint64N(owners)}
					want := 0
					var wantMissing []uint64
					for _, o := range targets {
						if m.push(o, x) {
							want++
						}
						if _, ok := m.held[o]; !ok && x.StatusID != 0 {
							wantMissing = append(wantMissing, o)
						}
					}
					var got int
					var missing []uint64
					if rng.IntN(2) == 0 {
						got = s.PushMany(targets, x)
						wantMissing = nil
					} else {
						got, missing = s.PushManyMissing(targets, x, nil)
					}
					if got != want || !slices.Equal(missing, wantMissing) {
						t.Fatalf("step %d: PushMany(%v, %d) = %d %v, want %d %v", step, targets, x.StatusID, got, missing, want, wantMissing)
					}
				case r < 67:
					op = "remove"
					id := randID()
					_, held := m.held[owner]
					want := held && m.remove(owner, id)
					if got := s.Remove(owner, id); got != want {
						t.Fatalf("step %d: Remove(%d, %d) = %v, want %v", step, owner, id, got, want)
					}
				case r < 75:
					op = "range"
					maxID, sinceID := randID(), randID()
					if rng.IntN(3) == 0 {
						maxID = 0
					}
					if rng.IntN(3) == 0 {
						sinceID = 0
					}
					limit := rng.IntN(capacity+2) - 1
					got, want := s.Range(owner, maxID, sinceID, limit), m.rangeDesc(owner, maxID, sinceID, limit)
					if !slices.Equal(got, want) {
						t.Fatalf("step %d: Range(%d, %d, %d, %d) = %v, want %v", step, owner, maxID, sinceID, limit, statusIDs(got), statusIDs(want))
					}
					whole, held := m.view(owner)
					read, n, readHeld := s.Read(owner, maxID, sinceID, limit)
					if !slices.Equal(read, want) || (want == nil && read != nil) || n != len(whole) || readHeld != held {
						t.Fatalf("step %d: Read(%d, %d, %d, %d) = %v %d %v, want %v %d %v",
							step, owner, maxID, sinceID, limit, statusIDs(read), n, readHeld, statusIDs(want), len(whole), held)
					}
				case r < 82:
					op = "replace"
					batch := make([]Entry, rng.IntN(2*capacity+1))
					for i := range batch {
						batch[i] = e(randID())
					}
					s.Replace(owner, batch)
					m.replace(owner, batch)
				case r < 89:
					op = "merge"
					batch := make([]Entry, rng.IntN(2*capacity+1))
					for i := range batch {
						batch[i] = e(randID())
					}
					if got, want := s.Merge(owner, batch), m.merge(owner, batch); got != want {
						t.Fatalf("step %d: Merge(%d, %v) = %d, want %d", step, owner, statusIDs(batch), got, want)
					}
				case r < 95:
					op = "reserve"
					other := rng.Uint64N(owners)
					s.Reserve(owner, other)
					m.reserve(owner)
					m.reserve(other)
				case r < 97:
					op = "unreserve"
					if got, want := s.Unreserve(owner), m.unreserve(owner); got != want {
						t.Fatalf("step %d: Unreserve(%d) = %v, want %v", step, owner, got, want)
					}
				default:
					op = "drop"
					if got, want := s.Drop(owner), m.drop(owner); got != want {
						t.Fatalf("step %d: Drop(%d) = %v, want %v", step, owner, got, want)
					}
				}
				want, held := m.view(owner)
				got := s.Range(owner, 0, 0, capacity)
				all, allHeld := s.Get(owner)
				if s.Has(owner) != held || s.Len(owner) != len(want) || !slices.Equal(got, want) ||
					allHeld != held || !slices.Equal(all, want) || (want == nil && all != nil) {
					t.Fatalf("step %d (%s): owner %d held=%v len=%d %v, Get %v %v, want held=%v %v",
						step, op, owner, s.Has(owner), s.Len(owner), statusIDs(got), allHeld, statusIDs(all), held, statusIDs(want))
				}
				if step%1000 == 0 {
					checkBytes(t, s)
				}
			}
			if s.Owners() != len(m.held) {
				t.Fatalf("Owners = %d, want %d", s.Owners(), len(m.held))
			}
			checkBytes(t, s)
		})
	}
}

// TestConcurrent pushes from many goroutines, one entry at a time and by
// fan-out, while others read, and then checks that every timeline is the
// newest Capacity of what was pushed to it (which is what a bounded set
// holds whatever the order of the pushes).
func TestConcurrent(t *testing.T) {
	rng := testRand(t)
	const (
		capacity = 50
		owners   = 64
		writers  = 8
		readers  = 4
		pushes   = 2000
	)
	s := newTestStore(t, Options{Capacity: capacity, Shards: 8})
	for o := range uint64(owners) {
		s.Replace(o, nil)
	}
	seeds := make([]uint64, writers+readers)
	for i := range seeds {
		seeds[i] = rng.Uint64()
	}
	// pushed[w][o] are the ids writer w pushed to owner o.
	pushed := make([][owners][]uint64, writers)
	var wg, readersWG sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			r := newRand(seeds[w])
			for i := range pushes {
				// Ids are distinct across writers and mostly increasing, with
				// some out of order, as deliveries of parallel fan-out are.
				id := uint64(i*writers+w+1) + r.Uint64N(64)*writers
				x := Entry{StatusID: id, AuthorID: uint64(w)}
				if i%4 == 0 {
					targets := []uint64{r.Uint64N(owners), r.Uint64N(owners), r.Uint64N(owners)}
					targets = slices.Compact(slices.Sorted(slices.Values(targets)))
					s.PushMany(targets, x)
					for _, o := range targets {
						pushed[w][o] = append(pushed[w][o], id)
					}
					continue
				}
				o := r.Uint64N(owners)
				s.Push(o, x)
				pushed[w][o] = append(pushed[w][o], id)
			}
		})
	}
	errs := make(chan error, readers)
	for rd := range readers {
		readersWG.Go(func() {
			r := newRand(seeds[writers+rd])
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := r.Uint64N(owners)
				got := s.Range(o, 0, 0, capacity)
				if len(got) > capacity || !slices.IsSortedFunc(got, func(a, b Entry) int { return -cmpID(a, b) }) ||
					len(slices.CompactFunc(slices.Clone(got), func(a, b Entry) bool { return a.StatusID == b.StatusID })) != len(got) {
					errs <- fmt.Errorf("owner %d: %v is not a bounded, strictly descending timeline", o, statusIDs(got))
					return
				}
				if !s.Has(o) {
					errs <- fmt.Errorf("owner %d not held", o)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readersWG.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for o := range owners {
		var all []uint64
		for w := range writers {
			all = append(all, pushed[w][o]...)
		}
		slices.Sort(all)
		all = slices.Compact(all)
		slices.Reverse(all)
		all = all[:min(len(all), capacity)]
		if got := statusIDs(s.Range(uint64(o), 0, 0, capacity)); !slices.Equal(got, all) {
			t.Fatalf("owner %d: %v, want %v", o, got, all)
		}
	}
}

func cmpID(a, b Entry) int {
	switch {
	case a.StatusID < b.StatusID:
		return -1
	case a.StatusID > b.StatusID:
		return 1
	}
	return 0
}

// TestReserve checks what a pending timeline takes and how readers see
// it, and that Reserve leaves held and pending owners alone.
func TestReserve(t *testing.T) {
	s := newTestStore(t, Options{Capacity: 3})
	s.Replace(1, es(10))
	s.Reserve(1, 2, 2, 3)
	if got, _ := s.Get(1); !s.Has(1) || !slices.Equal(statusIDs(got), []uint64{10}) {
		t.Fatalf("Reserve changed a held timeline: %v", statusIDs(got))
	}
	if s.Owners() != 3 || s.Bytes() != int64(3*timelineOverhead+1*EntrySize) {
		t.Fatalf("Owners = %d, Bytes = %d: pending timelines must count", s.Owners(), s.Bytes())
	}
	if n := s.Push(2, es(5, 6, 7, 8, 6, 0)...); n != 4 { // 8 drops 5
		t.Fatalf("Push to pending = %d, want 4", n)
	}
	if n := s.PushMany([]uint64{2, 3, 4}, e(9)); n != 2 {
		t.Fatalf("PushMany = %d, want 2 (pending 2 and 3)", n)
	}
	if !s.Remove(2, 7) || s.Remove(2, 7) {
		t.Fatal("Remove from pending")
	}
	got, held := s.Get(2)
	if s.Has(2) || s.Len(2) != 0 || s.Range(2, 0, 0, 10) != nil || got != nil || held {
		t.Fatal("a pending timeline looks held to readers")
	}
	s.Reserve(2) // still pending, entries kept
	if s.Merge(2, nil) != 0 {
		t.Fatal("Merge of nothing added")
	}
	if got, held := s.Get(2); !held || !slices.Equal(statusIDs(got), []uint64{9, 8}) { // 9 dropped 6
		t.Fatalf("after Merge: %v held=%v, want [9 8]", statusIDs(got), held)
	}
	if !s.Drop(3) || s.Drop(3) || s.Owners() != 2 {
		t.Fatal("Drop of a pending timeline")
	}
	checkBytes(t, s)
}

func TestUnreserve(t *testing.T) {
	s := newTestStore(t, Options{})
	s.Replace(1, es(1))
	s.Reserve(1, 2)
	s.Push(2, e(5))
	for _, tc := range []struct {
		owner uint64
		want  bool
	}{{1, false}, {3, false}, {2, true}, {2, false}} {
		if got := s.Unreserve(tc.owner); got != tc.want {
			t.Errorf("Unreserve(%d) = %v, want %v", tc.owner, got, tc.want)
		}
	}
	if !s.Has(1) || s.Owners() != 1 || s.Push(2, e(6)) != 0 {
		t.Fatal("Unreserve dropped a held timeline or kept a pending one")
	}
	checkBytes(t, s)
}

// TestRebuildRace plays a rebuild that races with pushes: the rebuild
// reads the durable index, pushes arrive, then the rebuild's result
// (which lacks them, and may hold entries older than them or newer than
// some) is installed with Merge or Replace. Nothing pushed is lost, and
// the timeline is what pushes of everything would give.
func TestRebuildRace(t *testing.T) {
	for _, install := range []string{"merge", "replace"} {
		for _, tc := range []struct {
			name            string
			rebuilt, pushed []uint64
			want            []uint64 // capacity 4
		}{
			{"pushes newer", []uint64{1, 2, 3}, []uint64{4, 5}, []uint64{5, 4, 3, 2}},
			{"pushes interleaved", []uint64{2, 4, 6}, []uint64{3, 5}, []uint64{6, 5, 4, 3}},
			{"overlap", []uint64{1, 2, 3}, []uint64{3, 4}, []uint64{4, 3, 2, 1}},
			{"no pushes", []uint64{1, 2}, nil, []uint64{2, 1}},
			{"empty rebuild", nil, []uint64{7, 8}, []uint64{8, 7}},
			{"pushes older, dropped", []uint64{5, 6, 7, 8, 9}, []uint64{1}, []uint64{9, 8, 7, 6}},
		} {
			t.Run(install+"/"+tc.name, func(t *testing.T) {
				s := newTestStore(t, Options{Capacity: 4})
				const owner = 1
				s.Reserve(owner)
				rebuilt := es(tc.rebuilt...) // read before the pushes
				for _, id := range tc.pushed {
					s.PushMany([]uint64{owner}, e(id))
				}
				if install == "merge" {
					s.Merge(owner, rebuilt)
				} else {
					s.Replace(owner, rebuilt)
				}
				got, held := s.Get(owner)
				if !held || !slices.Equal(statusIDs(got), tc.want) {
					t.Fatalf("%v held=%v, want %v", statusIDs(got), held, tc.want)
				}
				// Once held, Replace replaces.
				s.Replace(owner, es(1))
				if got, _ := s.Get(owner); !slices.Equal(statusIDs(got), []uint64{1}) {
					t.Fatalf("Replace of a held timeline left %v", statusIDs(got))
				}
				checkBytes(t, s)
			})
		}
	}
}

func TestMerge(t *testing.T) {
	for _, tc := range []struct {
		name      string
		state     string // "held", "pending" or "none"
		initial   []uint64
		merge     []uint64
		wantAdded int
		want      []uint64 // capacity 4
	}{
		{"none installs", "none", nil, []uint64{3, 1, 0, 2, 3}, 3, []uint64{3, 2, 1}},
		{"none bounded", "none", nil, []uint64{1, 2, 3, 4, 5, 6}, 4, []uint64{6, 5, 4, 3}},
		{"none empty", "none", nil, nil, 0, nil},
		{"held union", "held", []uint64{2, 4}, []uint64{1, 3, 4}, 2, []uint64{4, 3, 2, 1}},
		{"held bounded", "held", []uint64{2, 4, 6, 8}, []uint64{9, 1, 5}, 2, []uint64{9, 8, 6, 5}},
		{"held all older", "held", []uint64{5, 6, 7, 8}, []uint64{1, 2}, 0, []uint64{8, 7, 6, 5}},
		{"held nothing new", "held", []uint64{5, 6}, []uint64{6, 0, 5}, 0, []uint64{6, 5}},
		{"held replaced whole", "held", []uint64{1, 2}, []uint64{7, 8, 9, 10}, 4, []uint64{10, 9, 8, 7}},
		{"pending union", "pending", []uint64{9}, []uint64{1, 2, 3}, 3, []uint64{9, 3, 2, 1}},
		{"pending empty merge", "pending", nil, nil, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, Options{Capacity: 4})
			const owner = 1
			switch tc.state {
			case "held":
				s.Replace(owner, es(tc.initial...))
			case "pending":
				s.Reserve(owner)
				s.Push(owner, es(tc.initial...)...)
			}
			in := es(tc.merge...)
			orig := slices.Clone(in)
			if got := s.Merge(owner, in); got != tc.wantAdded {
				t.Errorf("Merge = %d, want %d", got, tc.wantAdded)
			}
			if !slices.Equal(in, orig) {
				t.Fatal("Merge modified its input")
			}
			got, held := s.Get(owner)
			if !held || !slices.Equal(statusIDs(got), tc.want) {
				t.Fatalf("%v held=%v, want %v", statusIDs(got), held, tc.want)
			}
			checkBytes(t, s)
		})
	}
}

// TestMergeEqualsPush checks that Merge into a held timeline leaves what
// Push of the same entries does, over random timelines and entries.
func TestMergeEqualsPush(t *testing.T) {
	rng := testRand(t)
	for trial := range 2000 {
		capacity := 1 + rng.IntN(40)
		idSpace := uint64(3 * capacity)
		randEntries := func(n int) []Entry {
			out := make([]Entry, n)
			for i := range out {
				out[i] = e(rng.Uint64N(idSpace + 1))
			}
			return out
		}
		a := newTestStore(t, Options{Capacity: capacity, Shards: 1})
		b := newTestStore(t, Options{Capacity: capacity, Shards: 1})
		initial, pushed, merged := randEntries(rng.IntN(capacity+1)), randEntries(rng.IntN(2*capacity)), randEntries(rng.IntN(2*capacity+1))
		for _, s := range []*Store{a, b} {
			s.Replace(1, initial)
			s.Push(1, pushed...) // a ring that starts anywhere
		}
		a.Merge(1, merged)
		b.Push(1, merged...)
		got, _ := a.Get(1)
		want, _ := b.Get(1)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d, capacity %d: Merge of %v into %v = %v, Push = %v",
				trial, capacity, statusIDs(merged), statusIDs(initial), statusIDs(got), statusIDs(want))
		}
		checkBytes(t, a)
	}
}

// TestMergeOrderIndependent merges two random entry sets into a timeline
// that is held, pending (with pushes of its own) or neither, in both
// orders, and checks that the results are equal: a sibling's copy and a
// rebuild's result can be applied in any order.
func TestMergeOrderIndependent(t *testing.T) {
	rng := testRand(t)
	for trial := range 2000 {
		capacity := 1 + rng.IntN(30)
		idSpace := uint64(3 * capacity)
		randEntries := func() []Entry {
			out := make([]Entry, rng.IntN(2*capacity+1))
			for i := range out {
				out[i] = e(rng.Uint64N(idSpace + 1))
			}
			return out
		}
		initial, x, y := randEntries(), randEntries(), randEntries()
		state := rng.IntN(3)
		var results [2][]Entry
		for k, order := range [2][2][]Entry{{x, y}, {y, x}} {
			s := newTestStore(t, Options{Capacity: capacity, Shards: 1})
			switch state {
			case 0:
				s.Replace(1, initial)
			case 1:
				s.Reserve(1)
				s.Push(1, initial...)
			}
			for _, batch := range order {
				s.Merge(1, batch)
			}
			var held bool
			results[k], held = s.Get(1)
			if !held {
				t.Fatalf("trial %d: not held after Merge", trial)
			}
		}
		if !slices.Equal(results[0], results[1]) {
			t.Fatalf("trial %d (state %d, capacity %d): initial %v; merging %v then %v = %v, the other order %v",
				trial, state, capacity, statusIDs(initial), statusIDs(x), statusIDs(y), statusIDs(results[0]), statusIDs(results[1]))
		}
	}
}

func TestPushManyMissing(t *testing.T) {
	s := newTestStore(t, Options{Shards: 4})
	s.Replace(1, nil)
	s.Replace(2, es(1))
	s.Reserve(3)
	prefix := []uint64{100}
	for _, tc := range []struct {
		name        string
		owners      []uint64
		id          uint64
		wantAdded   int
		wantMissing []uint64 // after prefix
	}{
		{"mixed", []uint64{4, 1, 2, 3, 5, 4}, 10, 3, []uint64{4, 5, 4}},
		{"all held", []uint64{1, 2, 3}, 11, 3, nil},
		{"already there", []uint64{1, 6}, 11, 0, []uint64{6}},
		{"none", nil, 12, 0, nil},
		{"id 0", []uint64{1, 7}, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			added, missing := s.PushManyMissing(tc.owners, e(tc.id), slices.Clone(prefix))
			if added != tc.wantAdded || !slices.Equal(missing, append(slices.Clone(prefix), tc.wantMissing...)) {
				t.Fatalf("PushManyMissing(%v, %d) = %d %v, want %d %v+%v", tc.owners, tc.id, added, missing, tc.wantAdded, prefix, tc.wantMissing)
			}
		})
	}
	if got, _ := s.PushManyMissing([]uint64{9}, e(13), nil); got != 0 || s.Owners() != 3 {
		t.Fatal("PushManyMissing created a timeline")
	}
}

func TestEach(t *testing.T) {
	s := newTestStore(t, Options{Shards: 4})
	want := make(map[uint64][]uint64)
	for o := range uint64(50) {
		switch o % 3 {
		case 0:
			s.Replace(o, es(o+1, o+2))
			want[o] = []uint64{o + 2, o + 1}
		case 1:
			s.Replace(o, nil)
			want[o] = nil
		case 2:
			s.Reserve(o)
			s.Push(o, e(o))
		}
	}
	seen := make(map[uint64][]uint64)
	s.Each(func(owner uint64, entries []Entry) bool {
		if _, dup := seen[owner]; dup {
			t.Errorf("owner %d visited twice", owner)
		}
		seen[owner] = statusIDs(entries)
		if len(entries) == 0 && entries != nil {
			t.Errorf("owner %d: empty timeline as %#v, want nil", owner, entries)
		}
		if len(entries) > 0 {
			entries[0].StatusID = 0 // the copy is fn's
		}
		s.Push(owner, e(1000)) // fn may call the Store
		return true
	})
	if len(seen) != len(want) {
		t.Fatalf("visited %d owners, want %d", len(seen), len(want))
	}
	for o, ids := range want {
		if got, ok := seen[o]; !ok || !slices.Equal(got, ids) {
			t.Errorf("owner %d: %v (visited %v), want %v", o, got, ok, ids)
		}
		if got, _ := s.Get(o); len(got) == 0 || got[0].StatusID != 1000 || (len(ids) > 0 && got[1].StatusID != ids[0]) {
			t.Errorf("owner %d after Each: %v", o, statusIDs(got))
		}
	}
	calls := 0
	s.Each(func(uint64, []Entry) bool { calls++; return calls < 5 })
	if calls != 5 {
		t.Fatalf("Each went on after false: %d calls", calls)
	}

	// EachWhere asks about each held owner once and visits those it keeps.
	asked := make(map[uint64]int)
	seen = make(map[uint64][]uint64)
	s.EachWhere(func(owner uint64) bool {
		asked[owner]++
		return owner%2 == 0
	}, func(owner uint64, entries []Entry) bool {
		seen[owner] = statusIDs(entries)
		return true
	})
	for o := range uint64(50) {
		_, held := want[o]
		wantAsked := 0
		if held {
			wantAsked = 1
		}
		if asked[o] != wantAsked {
			t.Errorf("EachWhere asked about owner %d %d times, want %d", o, asked[o], wantAsked)
		}
		got, visited := seen[o]
		if visited != (held && o%2 == 0) {
			t.Errorf("EachWhere visited owner %d: %v (held %v)", o, visited, held)
		}
		if all, _ := s.Get(o); visited && !slices.Equal(got, statusIDs(all)) {
			t.Errorf("EachWhere owner %d: %v, want %v", o, got, statusIDs(all))
		}
	}
}

// TestEachConcurrent runs Each while timelines are pushed to, reserved,
// merged and dropped, and checks that each copy is a timeline: bounded,
// strictly descending and never an owner that was only ever pending.
func TestEachConcurrent(t *testing.T) {
	rng := testRand(t)
	const (
		capacity = 30
		owners   = 200
	)
	s := newTestStore(t, Options{Capacity: capacity, Shards: 8})
	for o := range uint64(owners) {
		if o%2 == 0 {
			s.Replace(o, nil)
		}
	}
	seed := rng.Uint64()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		r := newRand(seed)
		for id := uint64(1); ; id++ {
			select {
			case <-stop:
				return
			default:
			}
			o := r.Uint64N(owners/2) * 2 // the even owners: held
			switch r.IntN(10) {
			case 0:
				s.Merge(o, es(id, id+r.Uint64N(50)))
			case 1:
				s.Reserve(o+1, o) // odd owners: only ever pending
			default:
				s.PushMany([]uint64{o, o + 1}, e(id))
			}
		}
	})
	for range 50 {
		visited := 0
		s.Each(func(owner uint64, entries []Entry) bool {
			visited++
			if owner%2 == 1 {
				t.Errorf("pending owner %d visited", owner)
			}
			if len(entries) > capacity || !slices.IsSortedFunc(entries, func(a, b Entry) int { return -cmpID(a, b) }) ||
				len(slices.CompactFunc(slices.Clone(entries), func(a, b Entry) bool { return a.StatusID == b.StatusID })) != len(entries) {
				t.Errorf("owner %d: %v is not a bounded, strictly descending timeline", owner, statusIDs(entries))
			}
			return true
		})
		if visited != owners/2 {
			t.Errorf("visited %d owners, want %d", visited, owners/2)
		}
	}
	close(stop)
	wg.Wait()
	checkBytes(t, s)
}
