package ids

import (
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func date(y int, m time.Month, d, h, min, s, ms int) time.Time {
	return time.Date(y, m, d, h, min, s, ms*int(time.Millisecond), time.UTC)
}

// testRand returns a generator seeded from AVIARY_SEED if set, otherwise
// from the time, and logs the seed.
func testRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AVIARY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("bad AVIARY_SEED %q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed: %d (rerun with AVIARY_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed))
}

func TestEpochMillis(t *testing.T) {
	if got := Epoch.UnixMilli(); got != epochMillis {
		t.Fatalf("Epoch.UnixMilli() = %d, epochMillis = %d", got, epochMillis)
	}
	if got := MonthOf(Epoch); got != epochMonth {
		t.Fatalf("MonthOf(Epoch) = %d, epochMonth = %d", got, epochMonth)
	}
}

func TestIDRoundTrip(t *testing.T) {
	tests := []struct {
		t                 time.Time
		site, worker, seq uint32
	}{
		{Epoch, 0, 0, 1},
		{Epoch, MaxSite, MaxWorker, maxSeq},
		{date(2026, 11, 22, 1, 2, 3, 456), 3, 17, 99},
		{date(2024, 2, 29, 23, 59, 59, 999), 1, 0, 0},
		{Epoch.Add(maxTimeMillis * time.Millisecond), MaxSite, MaxWorker, maxSeq},
	}
	for _, tt := range tests {
		id := NewID(tt.t, tt.site, tt.worker, tt.seq)
		if !id.Time().Equal(tt.t) || id.Time().Location() != time.UTC {
			t.Errorf("%v: Time() = %v", tt.t, id.Time())
		}
		if id.Site() != tt.site || id.Worker() != tt.worker || id.Seq() != tt.seq {
			t.Errorf("%v: fields = (%d, %d, %d), want (%d, %d, %d)",
				tt.t, id.Site(), id.Worker(), id.Seq(), tt.site, tt.worker, tt.seq)
		}
		if id&topBit != 0 {
			t.Errorf("%v: top bit set", tt.t)
		}
		if id.String() != strconv.FormatUint(uint64(id), 10) {
			t.Errorf("String() = %q", id.String())
		}
	}
}

func TestIDRoundTripRandom(t *testing.T) {
	r := testRand(t)
	for range 10000 {
		ms := r.Int64N(maxTimeMillis + 1)
		tm := Epoch.Add(time.Duration(ms) * time.Millisecond)
		site, worker, seq := r.Uint32N(MaxSite+1), r.Uint32N(MaxWorker+1), r.Uint32N(maxSeq+1)
		id := NewID(tm, site, worker, seq)
		if !id.Time().Equal(tm) || id.Site() != site || id.Worker() != worker || id.Seq() != seq {
			t.Fatalf("NewID(%v, %d, %d, %d) = %d decodes to (%v, %d, %d, %d)",
				tm, site, worker, seq, id, id.Time(), id.Site(), id.Worker(), id.Seq())
		}
		if id.Month() != MonthOf(tm) {
			t.Fatalf("%v: Month() = %d, want %d", tm, id.Month(), MonthOf(tm))
		}
		if lo, hi := MinIDForMonth(id.Month()), MinIDForMonth(id.Month()+1); id < lo || id >= hi {
			t.Fatalf("%v: id %d outside its month [%d, %d)", tm, id, lo, hi)
		}
	}
}

func TestNewIDClampsAndMasks(t *testing.T) {
	if id := NewID(Epoch.Add(-time.Hour), 0, 0, 0); id != 0 {
		t.Errorf("time before Epoch: got %d, want 0", id)
	}
	if id := NewID(date(2200, 1, 1, 0, 0, 0, 0), 0, 0, 0); id.millis() != maxTimeMillis || id&topBit != 0 {
		t.Errorf("time after range: got %d", id)
	}
	id := NewID(Epoch, MaxSite+2, MaxWorker+3, maxSeq+4)
	if id.Site() != 1 || id.Worker() != 2 || id.Seq() != 3 || id.millis() != 0 {
		t.Errorf("masking: got (%d, %d, %d, %d)", id.millis(), id.Site(), id.Worker(), id.Seq())
	}
}

func TestIDOrdering(t *testing.T) {
	base := date(2026, 5, 1, 12, 0, 0, 0)
	// Each id must be strictly smaller than the next.
	ordered := []ID{
		NewID(base, MaxSite, MaxWorker, maxSeq-1),
		NewID(base, MaxSite, MaxWorker, maxSeq),
		NewID(base.Add(time.Millisecond), 0, 0, 0),
		NewID(base.Add(time.Millisecond), 0, 0, 1),
		NewID(base.Add(time.Millisecond), 0, 1, 0),
		NewID(base.Add(time.Millisecond), 1, 0, 0),
		NewID(base.Add(time.Second), 0, 0, 0),
		NewID(base.Add(24*time.Hour), 0, 0, 0),
	}
	for i := 1; i < len(ordered); i++ {
		if ordered[i-1] >= ordered[i] {
			t.Errorf("ids[%d] = %d >= ids[%d] = %d", i-1, ordered[i-1], i, ordered[i])
		}
		if ordered[i-1].Time().After(ordered[i].Time()) {
			t.Errorf("ids[%d] time after ids[%d] time", i-1, i)
		}
	}
}

func TestMonthOf(t *testing.T) {
	tests := []struct {
		t    time.Time
		want uint32
	}{
		{Epoch, 2024 * 12},
		{date(2024, 12, 31, 23, 59, 59, 999), 2024*12 + 11},
		{date(2025, 1, 1, 0, 0, 0, 0), 2025 * 12},
		{date(2026, 11, 5, 0, 0, 0, 0), 2026*12 + 10},
		{date(0, 1, 1, 0, 0, 0, 0), 0},
		{date(-5, 6, 1, 0, 0, 0, 0), 0},
		// A non-UTC time is converted to UTC first.
		{time.Date(2025, 1, 1, 0, 30, 0, 0, time.FixedZone("x", 3600)), 2024*12 + 11},
	}
	for _, tt := range tests {
		if got := MonthOf(tt.t); got != tt.want {
			t.Errorf("MonthOf(%v) = %d, want %d", tt.t, got, tt.want)
		}
	}
}

func TestMinIDForMonth(t *testing.T) {
	tests := []struct {
		name  string
		month uint32
		first time.Time
	}{
		{"epoch month", 2024 * 12, Epoch},
		{"leap feb", 2024*12 + 1, date(2024, 2, 1, 0, 0, 0, 0)},
		{"after leap feb", 2024*12 + 2, date(2024, 3, 1, 0, 0, 0, 0)},
		{"december", 2024*12 + 11, date(2024, 12, 1, 0, 0, 0, 0)},
		{"january", 2025 * 12, date(2025, 1, 1, 0, 0, 0, 0)},
		{"non-leap feb", 2025*12 + 1, date(2025, 2, 1, 0, 0, 0, 0)},
		{"after non-leap feb", 2025*12 + 2, date(2025, 3, 1, 0, 0, 0, 0)},
		{"nov 2026", 2026*12 + 10, date(2026, 11, 1, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := MinIDForMonth(tt.month)
			if id != NewID(tt.first, 0, 0, 0) {
				t.Fatalf("MinIDForMonth(%d) = %d (%v), want %v", tt.month, id, id.Time(), tt.first)
			}
			if id.Month() != tt.month {
				t.Fatalf("Month() = %d, want %d", id.Month(), tt.month)
			}
			if tt.month == epochMonth {
				return
			}
			// The id just below is the last one of the previous month, and
			// its time is the month's first instant minus 1ms.
			prev := id - 1
			if prev.Month() != tt.month-1 {
				t.Fatalf("(MinIDForMonth(%d)-1).Month() = %d, want %d", tt.month, prev.Month(), tt.month-1)
			}
			if want := tt.first.Add(-time.Millisecond); !prev.Time().Equal(want) {
				t.Fatalf("(MinIDForMonth(%d)-1).Time() = %v, want %v", tt.month, prev.Time(), want)
			}
		})
	}

	// Leap day belongs to February 2024; 2025 has no Feb 29.
	if m := NewID(date(2024, 2, 29, 12, 0, 0, 0), 0, 0, 0).Month(); m != 2024*12+1 {
		t.Errorf("2024-02-29 month = %s", MonthString(m))
	}

	// Months before Epoch give 0.
	for _, m := range []uint32{0, 1, epochMonth - 1} {
		if id := MinIDForMonth(m); id != 0 {
			t.Errorf("MinIDForMonth(%d) = %d, want 0", m, id)
		}
	}

	// Past the end of the time field, 1<<63; the last representable month
	// (2093-09) is still valid. MinIDForMonth never decreases.
	last := MonthOf(Epoch.Add(maxTimeMillis * time.Millisecond))
	if MonthString(last) != "2093-09" {
		t.Errorf("last representable month = %s", MonthString(last))
	}
	if id := MinIDForMonth(last); id&topBit != 0 || id.Month() != last {
		t.Errorf("MinIDForMonth(last) = %d", id)
	}
	for _, m := range []uint32{last + 1, last + 2, 10000 * 12, 1<<32 - 1} {
		if id := MinIDForMonth(m); id != topBit {
			t.Errorf("MinIDForMonth(%s) = %d, want 1<<63", MonthString(m), id)
		}
	}
	prev := ID(0)
	for m := uint32(epochMonth - 2); m < last+3; m++ {
		id := MinIDForMonth(m)
		if id < prev {
			t.Fatalf("MinIDForMonth(%d) = %d < MinIDForMonth(%d) = %d", m, id, m-1, prev)
		}
		prev = id
	}
}

func TestMonthStringParse(t *testing.T) {
	tests := []struct {
		month uint32
		s     string
	}{
		{0, "0000-01"},
		{11, "0000-12"},
		{2024 * 12, "2024-01"},
		{2026*12 + 10, "2026-11"},
		{2026*12 + 11, "2026-12"},
		{999*12 + 4, "0999-05"},
		{12345 * 12, "12345-01"},
		{1<<32 - 1, "357913941-04"},
	}
	for _, tt := range tests {
		if got := MonthString(tt.month); got != tt.s {
			t.Errorf("MonthString(%d) = %q, want %q", tt.month, got, tt.s)
		}
		got, err := ParseMonth(tt.s)
		if err != nil || got != tt.month {
			t.Errorf("ParseMonth(%q) = %d, %v; want %d", tt.s, got, err, tt.month)
		}
	}
	for m := uint32(2000 * 12); m < 2100*12; m++ {
		if got, err := ParseMonth(MonthString(m)); err != nil || got != m {
			t.Fatalf("ParseMonth(MonthString(%d)) = %d, %v", m, got, err)
		}
	}
}

func TestParseMonthErrors(t *testing.T) {
	for _, s := range []string{
		"", "2026", "2026-", "2026-1", "2026-011", "26-11", "226-11",
		"2026-00", "2026-13", "2026-99", "2026/11", "2026_11", "-2026-11",
		"+2026-11", "2026-+1", "2026--1", "2026-11 ", " 2026-11", "abcd-11",
		"2026-ab", "2026-11-01", "357913941-05", "99999999999-01",
	} {
		m, err := ParseMonth(s)
		if !errors.Is(err, ErrInvalidMonth) {
			t.Errorf("ParseMonth(%q) = %d, %v; want ErrInvalidMonth", s, m, err)
		}
	}
}

func TestValidate(t *testing.T) {
	now := date(2026, 1, 1, 0, 0, 0, 0)
	const bound = 10 * time.Second
	tests := []struct {
		name    string
		id      ID
		wantErr string // substring; empty means valid
	}{
		{"zero", 0, "ids: invalid id: zero"},
		{"top bit", topBit | NewID(now, 1, 1, 1), "top bit"},
		{"top bit only", topBit, "top bit"},
		{"far future", NewID(now.Add(bound+time.Millisecond), 0, 0, 0), "in the future"},
		{"max", 1<<63 - 1, "in the future"},
		{"now", NewID(now, 1, 2, 3), ""},
		{"at bound", NewID(now.Add(bound), 0, 0, 0), ""},
		{"past", NewID(now.Add(-24*time.Hour), 0, 0, 0), ""},
		{"smallest nonzero", 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.id.Validate(now, bound)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidID) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want ErrInvalidID containing %q", err, tt.wantErr)
			}
		})
	}
}

func mustGenerator(t *testing.T, site, worker uint32, c Clock) *Generator {
	t.Helper()
	g, err := NewGenerator(site, worker, c)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestNewGeneratorInvalid(t *testing.T) {
	tests := []struct {
		site, worker uint32
		ok           bool
	}{
		{0, 0, true},
		{MaxSite, MaxWorker, true},
		{MaxSite + 1, 0, false},
		{0, MaxWorker + 1, false},
		{1 << 31, 1 << 31, false},
	}
	for _, tt := range tests {
		g, err := NewGenerator(tt.site, tt.worker, SystemClock{})
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) || tt.ok != (g != nil) {
			t.Errorf("NewGenerator(%d, %d) = %v, %v", tt.site, tt.worker, g, err)
		}
	}
}

func TestGeneratorFields(t *testing.T) {
	now := date(2026, 3, 4, 5, 6, 7, 8)
	g := mustGenerator(t, 7, 9, NewManualClock(now))
	id := g.Next()
	if !id.Time().Equal(now) || id.Site() != 7 || id.Worker() != 9 || id.Seq() != 0 {
		t.Fatalf("Next() = %d = (%v, %d, %d, %d)", id, id.Time(), id.Site(), id.Worker(), id.Seq())
	}
	if err := id.Validate(now, 0); err != nil {
		t.Fatal(err)
	}
}

func TestGeneratorNeverZero(t *testing.T) {
	for _, start := range []time.Time{Epoch, Epoch.Add(-time.Hour)} {
		g := mustGenerator(t, 0, 0, NewManualClock(start))
		if id := g.Next(); id == 0 || id.Validate(Epoch, time.Second) != nil {
			t.Errorf("clock %v: Next() = %d", start, id)
		}
	}
}

func TestGeneratorConcurrent(t *testing.T) {
	g := mustGenerator(t, 3, 4, SystemClock{})
	const goroutines, perG = 8, 12500 // 100k ids
	results := make([][]ID, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			ids := make([]ID, perG)
			for j := range ids {
				ids[j] = g.Next()
			}
			results[i] = ids
		})
	}
	wg.Wait()

	seen := make(map[ID]struct{}, goroutines*perG)
	for i, ids := range results {
		for j, id := range ids {
			if j > 0 && id <= ids[j-1] {
				t.Fatalf("goroutine %d: id %d = %d not greater than previous %d", i, j, id, ids[j-1])
			}
			if _, dup := seen[id]; dup {
				t.Fatalf("duplicate id %d", id)
			}
			seen[id] = struct{}{}
		}
	}
	if len(seen) != goroutines*perG {
		t.Fatalf("got %d unique ids, want %d", len(seen), goroutines*perG)
	}
}

func TestGeneratorClockBackwards(t *testing.T) {
	start := date(2026, 6, 1, 12, 0, 0, 0)
	c := NewManualClock(start)
	g := mustGenerator(t, 1, 1, c)
	var ids []ID
	for range 5 {
		ids = append(ids, g.Next())
		c.Advance(time.Millisecond)
	}
	c.Advance(-time.Hour)
	for range 5000 {
		ids = append(ids, g.Next())
		c.Advance(time.Millisecond)
	}
	// Once the clock has caught up again, ids follow it.
	c.Set(start.Add(time.Hour))
	ids = append(ids, g.Next())

	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids[%d] = %d <= ids[%d] = %d", i, ids[i], i-1, ids[i-1])
		}
	}
	if last := ids[len(ids)-1]; !last.Time().Equal(start.Add(time.Hour)) || last.Seq() != 0 {
		t.Fatalf("after catching up: time %v seq %d", last.Time(), last.Seq())
	}
}

func TestGeneratorSequenceExhaustion(t *testing.T) {
	now := date(2026, 6, 1, 12, 0, 0, 0)
	g := mustGenerator(t, 2, 5, NewManualClock(now)) // the clock never moves
	const n = 10000
	ids := make([]ID, n)
	for i := range ids {
		ids[i] = g.Next()
	}
	for i := 1; i < n; i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids[%d] = %d <= ids[%d] = %d", i, ids[i], i-1, ids[i-1])
		}
	}
	for i, id := range ids {
		wantTime := now.Add(time.Duration(i/(maxSeq+1)) * time.Millisecond)
		if !id.Time().Equal(wantTime) || id.Seq() != uint32(i%(maxSeq+1)) || id.Site() != 2 || id.Worker() != 5 {
			t.Fatalf("ids[%d] = (%v, %d, %d, %d), want time %v seq %d",
				i, id.Time(), id.Site(), id.Worker(), id.Seq(), wantTime, i%(maxSeq+1))
		}
	}
}

func TestGeneratorsDoNotCollide(t *testing.T) {
	c := NewManualClock(date(2026, 6, 1, 12, 0, 0, 0)) // shared and frozen
	pairs := [][2]uint32{{0, 0}, {0, 1}, {1, 0}, {MaxSite, MaxWorker}, {3, 7}}
	seen := make(map[ID][2]uint32)
	for _, p := range pairs {
		g := mustGenerator(t, p[0], p[1], c)
		for range 5000 { // more than one millisecond's worth
			id := g.Next()
			if other, dup := seen[id]; dup {
				t.Fatalf("id %d issued by %v and %v", id, other, p)
			}
			seen[id] = p
		}
	}
}

// TestGeneratorRandomClock drives a generator with a clock that jumps
// around randomly and checks ids stay strictly increasing and never run
// ahead of the clock by more than the borrowed milliseconds.
func TestGeneratorRandomClock(t *testing.T) {
	r := testRand(t)
	c := NewManualClock(date(2026, 6, 1, 12, 0, 0, 0))
	g := mustGenerator(t, 1, 2, c)
	prev := ID(0)
	maxClock := c.Now()
	for range 50000 {
		switch r.IntN(10) {
		case 0:
			c.Advance(-time.Duration(r.Int64N(int64(2 * time.Hour))))
		case 1, 2, 3:
			c.Advance(time.Duration(r.Int64N(int64(10 * time.Millisecond))))
		}
		if now := c.Now(); now.After(maxClock) {
			maxClock = now
		}
		id := g.Next()
		if id <= prev {
			t.Fatalf("id %d <= previous %d", id, prev)
		}
		if id.Time().Before(c.Now().Truncate(time.Millisecond)) {
			t.Fatalf("id time %v behind clock %v", id.Time(), c.Now())
		}
		// At most 50000/4096 ≈ 13 ms can have been borrowed.
		if id.Time().After(maxClock.Add(20 * time.Millisecond)) {
			t.Fatalf("id time %v too far ahead of max clock %v", id.Time(), maxClock)
		}
		prev = id
	}
}

func TestTimestamp(t *testing.T) {
	ts := MakeTimestamp(1732240000000, 3)
	if ts.String() != "1732240000000.3" {
		t.Errorf("String() = %q", ts.String())
	}
	if !ts.WallTime().Equal(time.UnixMilli(1732240000000)) || ts.WallTime().Location() != time.UTC {
		t.Errorf("WallTime() = %v", ts.WallTime())
	}
	if ts.Logical() != 3 {
		t.Errorf("Logical() = %d", ts.Logical())
	}
	ordered := []Timestamp{
		MakeTimestamp(-5, 0),
		MakeTimestamp(0, 1),
		MakeTimestamp(1, 0),
		MakeTimestamp(1, 0xFFFF),
		MakeTimestamp(2, 0),
		MakeTimestamp(1<<48-1, 0xFFFF),
	}
	for i := 1; i < len(ordered); i++ {
		if ordered[i-1] >= ordered[i] {
			t.Errorf("ts[%d] = %s >= ts[%d] = %s", i-1, ordered[i-1], i, ordered[i])
		}
	}
	if MakeTimestamp(1<<50, 7) != MakeTimestamp(1<<48-1, 7) {
		t.Errorf("wall not clamped above")
	}
}

func TestHLCMonotonicBackwards(t *testing.T) {
	start := date(2026, 6, 1, 12, 0, 0, 0)
	c := NewManualClock(start)
	h := NewHLC(c, 10*time.Second)

	first := h.Now()
	if first != MakeTimestamp(start.UnixMilli(), 0) {
		t.Fatalf("first Now() = %s, want wall clock", first)
	}
	prev := first
	c.Advance(-time.Hour)
	for i := range 100 {
		ts := h.Now()
		if ts <= prev {
			t.Fatalf("Now() = %s <= previous %s", ts, prev)
		}
		if ts.WallTime() != first.WallTime() || ts.Logical() != uint16(i+1) {
			t.Fatalf("Now() = %s, want wall %s logical %d", ts, first, i+1)
		}
		prev = ts
	}
	c.Set(start.Add(time.Second))
	if ts := h.Now(); ts != MakeTimestamp(start.Add(time.Second).UnixMilli(), 0) {
		t.Fatalf("after catching up: Now() = %s", ts)
	}
}

func TestHLCLogicalOverflow(t *testing.T) {
	start := date(2026, 6, 1, 12, 0, 0, 0)
	h := NewHLC(NewManualClock(start), time.Second) // frozen clock
	var ts Timestamp
	for range 1 << 16 {
		ts = h.Now()
	}
	if ts != MakeTimestamp(start.UnixMilli(), 0xFFFF) {
		t.Fatalf("after 65536 calls: %s", ts)
	}
	next := h.Now()
	if next != MakeTimestamp(start.UnixMilli()+1, 0) || next <= ts {
		t.Fatalf("overflow: %s -> %s", ts, next)
	}

	// The same through Update with a remote at the top of the counter.
	h2 := NewHLC(NewManualClock(start), time.Second)
	got, err := h2.Update(MakeTimestamp(start.UnixMilli(), 0xFFFF))
	if err != nil || got != MakeTimestamp(start.UnixMilli()+1, 0) {
		t.Fatalf("Update overflow = %s, %v", got, err)
	}
}

func TestHLCUpdate(t *testing.T) {
	start := date(2026, 6, 1, 12, 0, 0, 0)
	wall := start.UnixMilli()
	const bound = 10 * time.Second
	tests := []struct {
		name   string
		local  Timestamp // state before, established via Update(local) at clock start
		remote Timestamp
		want   Timestamp
	}{
		{"remote behind", 0, MakeTimestamp(wall-1000, 5), MakeTimestamp(wall, 0)},
		{"remote ahead within bound", 0, MakeTimestamp(wall+5000, 7), MakeTimestamp(wall+5000, 8)},
		{"remote at bound", 0, MakeTimestamp(wall+10000, 0), MakeTimestamp(wall+10000, 1)},
		{"same wall, remote logical higher", MakeTimestamp(wall, 2), MakeTimestamp(wall, 9), MakeTimestamp(wall, 10)},
		{"same wall, local logical higher", MakeTimestamp(wall, 9), MakeTimestamp(wall, 2), MakeTimestamp(wall, 11)},
		{"local ahead of remote", MakeTimestamp(wall+3000, 4), MakeTimestamp(wall+2000, 8), MakeTimestamp(wall+3000, 6)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHLC(NewManualClock(start), bound)
			var before Timestamp
			if tt.local != 0 {
				var err error
				if before, err = h.Update(tt.local); err != nil {
					t.Fatal(err)
				}
			}
			got, err := h.Update(tt.remote)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("Update(%s) = %s, want %s", tt.remote, got, tt.want)
			}
			if got <= tt.remote || got <= before {
				t.Fatalf("Update(%s) = %s not above remote and %s", tt.remote, got, before)
			}
			if now := h.Now(); now <= got {
				t.Fatalf("Now() = %s after Update returned %s", now, got)
			}
		})
	}
}

func TestHLCFarFuture(t *testing.T) {
	start := date(2026, 6, 1, 12, 0, 0, 0)
	const bound = 10 * time.Second
	h := NewHLC(NewManualClock(start), bound)
	if h.MaxAhead() != bound {
		t.Fatalf("MaxAhead() = %s", h.MaxAhead())
	}
	before := h.Now()
	remote := MakeTimestamp(start.Add(12300*time.Millisecond).UnixMilli(), 0)

	if err := h.Check(remote); !errors.Is(err, ErrFarFuture) {
		t.Fatalf("Check = %v, want ErrFarFuture", err)
	}
	got, err := h.Update(remote)
	if !errors.Is(err, ErrFarFuture) {
		t.Fatalf("Update = %s, %v; want ErrFarFuture", got, err)
	}
	const wantMsg = "ids: timestamp from the far future: 12.3s ahead of local clock, bound is 10s"
	if err.Error() != wantMsg {
		t.Fatalf("error = %q, want %q", err, wantMsg)
	}
	// The clock did not advance: the next timestamp follows the old one.
	if next := h.Now(); next != before+1 {
		t.Fatalf("Now() after rejected Update = %s, want %s", next, before+1)
	}
	// Within the bound is accepted by Check, which changes nothing.
	ok := MakeTimestamp(start.Add(bound).UnixMilli(), 0)
	if err := h.Check(ok); err != nil {
		t.Fatalf("Check(at bound) = %v", err)
	}
	if next := h.Now(); next != before+2 {
		t.Fatalf("Now() after Check = %s, want %s", next, before+2)
	}
	// A zero bound refuses anything ahead of the wall clock.
	h0 := NewHLC(NewManualClock(start), 0)
	if err := h0.Check(MakeTimestamp(start.UnixMilli()+1, 0)); !errors.Is(err, ErrFarFuture) {
		t.Fatalf("zero bound: Check = %v", err)
	}
	if err := h0.Check(MakeTimestamp(start.UnixMilli(), 0xFFFF)); err != nil {
		t.Fatalf("zero bound, same ms: Check = %v", err)
	}
}

func TestHLCConcurrent(t *testing.T) {
	c := NewManualClock(date(2026, 6, 1, 12, 0, 0, 0))
	h := NewHLC(c, time.Second)
	const goroutines, perG = 8, 5000
	results := make([][]Timestamp, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			out := make([]Timestamp, perG)
			for j := range out {
				switch {
				case j%100 == 0 && i == 0:
					c.Advance(-time.Millisecond) // also step backwards
				case j%7 == 0:
					c.Advance(time.Millisecond)
				}
				if j%50 == 0 {
					ts, err := h.Update(MakeTimestamp(c.Now().UnixMilli(), 100))
					if err != nil {
						t.Error(err)
						return
					}
					out[j] = ts
					continue
				}
				out[j] = h.Now()
			}
			results[i] = out
		})
	}
	wg.Wait()

	var all []Timestamp
	for i, out := range results {
		for j := 1; j < len(out); j++ {
			if out[j] <= out[j-1] {
				t.Fatalf("goroutine %d: %s <= %s", i, out[j], out[j-1])
			}
		}
		all = append(all, out...)
	}
	slices.Sort(all)
	if n := len(slices.Compact(all)); n != goroutines*perG {
		t.Fatalf("%d unique timestamps, want %d", n, goroutines*perG)
	}
}

func TestManualClock(t *testing.T) {
	c := NewManualClock(Epoch)
	c.Advance(time.Hour)
	if !c.Now().Equal(Epoch.Add(time.Hour)) {
		t.Fatalf("Advance: %v", c.Now())
	}
	c.Set(Epoch.Add(-time.Minute))
	if !c.Now().Equal(Epoch.Add(-time.Minute)) {
		t.Fatalf("Set: %v", c.Now())
	}
	var _ Clock = SystemClock{}
	var _ Clock = c
}
