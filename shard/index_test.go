package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

const owner = 42

// monthEntries is how many entries of owner the index fixture puts in each
// month of 2026.
var monthEntries = map[time.Month]int{time.January: 6, time.February: 4, time.March: 5, time.April: 7}

// indexFixture appends monthEntries for owner, plus entries of owners 41 and
// 43 interleaved in the same months, and returns owner's ids newest first.
func indexFixture(t *testing.T, s *Store) []uint64 {
	t.Helper()
	var muts []Mutation
	var mine []uint64
	for m, n := range monthEntries {
		for i := range n {
			id := idIn(m, 1+i*3, i, uint32(i))
			mine = append(mine, id)
			muts = append(muts,
				appM(shA, owner, id, fmt.Sprintf("p%d", id), ver(5000, 0, 1)),
				appM(shA, owner-1, id+1, "other", ver(5000, 0, 1)),
				appM(shA, owner+1, id-1, "other", ver(5000, 0, 1)),
			)
		}
	}
	// Another shard and table kind do not leak into owner's view either.
	muts = append(muts, appM(shB, owner, mine[0], "shard b", ver(5000, 0, 1)))
	mustApply(t, s, muts...)
	slices.Sort(mine)
	slices.Reverse(mine)
	return mine
}

func wantMonthCounts() []MonthCount {
	var out []MonthCount
	for m := time.April; m >= time.January; m-- {
		out = append(out, MonthCount{Month: month2026(m), Count: uint64(monthEntries[m])})
	}
	return out
}

func TestRangeNewestFirst(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	all := indexFixture(t, s)

	full, err := s.Range(ctx, shA, tIndex, owner, RangeOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if got := entryIDs(full); !slices.Equal(got, all) {
		t.Fatalf("full range ids %v\nwant %v", got, all)
	}
	for _, e := range full {
		if string(e.Payload) != fmt.Sprintf("p%d", e.ID) || e.Version != ver(5000, 0, 1) {
			t.Fatalf("entry %+v: wrong payload or version", e)
		}
	}

	cases := []struct {
		name string
		o    RangeOptions
		want []uint64
	}{
		{"default limit", RangeOptions{}, all[:min(len(all), DefaultRangeLimit)]},
		{"limit 3", RangeOptions{Limit: 3}, all[:3]},
		{"max_id inclusive", RangeOptions{MaxID: all[5], Limit: 4}, all[5:9]},
		{"max_id between ids", RangeOptions{MaxID: all[5] - 1, Limit: 4}, all[6:10]},
		{"max_id above all", RangeOptions{MaxID: all[0] + 1000, Limit: 2}, all[:2]},
		{"max_id below all", RangeOptions{MaxID: all[len(all)-1] - 1, Limit: 2}, nil},
		{"since_id exclusive", RangeOptions{SinceID: all[4], Limit: 100}, all[:4]},
		{"since_id across months", RangeOptions{SinceID: all[15], Limit: 100}, all[:15]},
		{"since_id and limit", RangeOptions{SinceID: all[15], Limit: 3}, all[:3]},
		{"max_id and since_id", RangeOptions{MaxID: all[3], SinceID: all[12], Limit: 100}, all[3:12]},
		{"since_id >= max_id", RangeOptions{MaxID: all[3], SinceID: all[3], Limit: 100}, nil},
		{"since_id and offset", RangeOptions{SinceID: all[15], Offset: 6, Limit: 4}, all[6:10]},
		{"since_id and offset past since", RangeOptions{SinceID: all[15], Offset: 13, Limit: 4}, all[13:15]},
	}
	for _, c := range cases {
		got, err := s.Range(ctx, shA, tIndex, owner, c.o)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ids := entryIDs(got); !slices.Equal(ids, c.want) {
			t.Errorf("%s: ids %v\nwant %v", c.name, ids, c.want)
		}
	}
}

func TestRangePagingByMaxID(t *testing.T) {
	s := newTestStore(t, nil)
	all := indexFixture(t, s)
	// Remove a few so pages cross tombstones too.
	mustApply(t, s, remM(shA, owner, all[2], ver(100, 0, 1)), remM(shA, owner, all[10], ver(100, 0, 1)))
	live := slices.Delete(slices.Clone(all), 10, 11)
	live = slices.Delete(live, 2, 3)
	for _, size := range []int{1, 2, 3, 4, 7, 20, 1000} {
		got := entryIDs(rangeAll(t, s, shA, owner, size))
		if !slices.Equal(got, live) {
			t.Errorf("page size %d: paging walked %v\nwant %v", size, got, live)
		}
	}
}

func TestRangeOffset(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	all := indexFixture(t, s)
	// Tombstones inside months (and at a month's newest entry) must not be
	// counted by offsets.
	rm := []int{0, 8, 9, 20}
	var muts []Mutation
	for _, i := range rm {
		muts = append(muts, remM(shA, owner, all[i], ver(100, 0, 2)))
	}
	mustApply(t, s, muts...)
	var live []uint64
	for i, id := range all {
		if !slices.Contains(rm, i) {
			live = append(live, id)
		}
	}
	// Month boundaries in live, for the log.
	_, months := mustCount(t, s, shA, owner)
	t.Logf("live entries per month (newest first): %v", months)

	for _, limit := range []int{1, 2, 3, 5, 6, 7, 100} {
		for off := 0; off <= len(live)+3; off++ {
			got, err := s.Range(ctx, shA, tIndex, owner, RangeOptions{Offset: off, Limit: limit})
			if err != nil {
				t.Fatalf("offset %d limit %d: %v", off, limit, err)
			}
			var want []uint64
			if off < len(live) {
				want = live[off:min(len(live), off+limit)]
			}
			if ids := entryIDs(got); !slices.Equal(ids, want) {
				t.Errorf("offset %d limit %d: %v\nwant %v", off, limit, ids, want)
			}
		}
	}
	// Offsets landing exactly on each month boundary.
	off := 0
	for _, mc := range months {
		got, err := s.Range(ctx, shA, tIndex, owner, RangeOptions{Offset: off, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || ids.ID(got[0].ID).Month() != mc.Month {
			t.Errorf("offset %d (start of month %s): got %v", off, ids.MonthString(mc.Month), entryIDs(got))
		}
		off += int(mc.Count)
	}
}

func TestRangeOptionErrors(t *testing.T) {
	s := newTestStore(t, func(o *Options) {
		o.Limits.MaxRangeLimit = 50
		o.Limits.MaxOffset = 500
	})
	ctx := context.Background()
	indexFixture(t, s)
	cases := []struct {
		name     string
		owner    uint64
		o        RangeOptions
		sentinel error
		want     []string
	}{
		{"limit -1", owner, RangeOptions{Limit: -1}, ErrOutOfRange, []string{"limit -1", "[1, 50]"}},
		{"limit above max", owner, RangeOptions{Limit: 51}, ErrOutOfRange, []string{"limit 51", "[1, 50]"}},
		{"offset above max", owner, RangeOptions{Offset: 501}, ErrOutOfRange, []string{"offset 501", "[0, 500]"}},
		{"negative offset", owner, RangeOptions{Offset: -1}, ErrOutOfRange, []string{"offset -1"}},
		{"offset with max_id", owner, RangeOptions{Offset: 1, MaxID: idIn(time.March, 1, 0, 0)}, ErrInvalid, []string{"offset", "max_id"}},
		{"max_id top bit", owner, RangeOptions{MaxID: 1 << 63}, ErrInvalid, []string{"max_id"}},
		{"since_id top bit", owner, RangeOptions{SinceID: 1<<63 + 1}, ErrInvalid, []string{"since_id"}},
		{"zero owner", 0, RangeOptions{}, ErrInvalid, []string{"owner"}},
	}
	for _, c := range cases {
		_, err := s.Range(ctx, shA, tIndex, c.owner, c.o)
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.want...) })
	}
	if _, err := s.Range(ctx, shA, tIndex, owner, RangeOptions{Limit: 50, Offset: 500}); err != nil {
		t.Fatalf("limit and offset at their maxima: %v", err)
	}
	if _, err := s.Range(ctx, shA, tContent, owner, RangeOptions{}); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("Range on content table: %v", err)
	}
	if _, err := s.Range(ctx, "nope", tIndex, owner, RangeOptions{}); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("Range on unknown shard: %v", err)
	}
	if _, _, err := s.Count(ctx, shA, tIndex, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Count of owner 0: %v", err)
	}
}

func TestCountExact(t *testing.T) {
	s := newTestStore(t, nil)
	all := indexFixture(t, s)
	check := func(step string, want []MonthCount) {
		t.Helper()
		var total uint64
		for _, mc := range want {
			total += mc.Count
		}
		n, months := mustCount(t, s, shA, owner)
		if n != total || !slices.Equal(months, want) {
			t.Fatalf("%s: Count = %d %v\nwant %d %v", step, n, months, total, want)
		}
		if got := uint64(len(rangeAll(t, s, shA, owner, 5))); got != total {
			t.Fatalf("%s: Range walks %d entries, Count says %d", step, got, total)
		}
	}
	want := wantMonthCounts()
	check("after appends", want)
	if n, _ := mustCount(t, s, shA, owner-1); n != uint64(len(all)) {
		t.Fatalf("neighbour owner count %d, want %d", n, len(all))
	}
	if n, _ := mustCount(t, s, shB, owner); n != 1 {
		t.Fatalf("owner count in other shard %d, want 1", n)
	}
	if n, months := mustCount(t, s, shA, 999); n != 0 || months != nil {
		t.Fatalf("unknown owner: %d %v", n, months)
	}

	// Replays of the same appends change nothing.
	var replay []Mutation
	for _, id := range all {
		replay = append(replay, appM(shA, owner, id, fmt.Sprintf("p%d", id), ver(5000, 0, 1)))
	}
	for _, o := range mustApply(t, s, replay...) {
		if o != Superseded {
			t.Fatalf("replayed append: %v", o)
		}
	}
	check("after replay", want)

	// Remove the two newest April entries and the oldest January one.
	apr, jan := 0, len(want)-1
	out := mustApply(t, s,
		remM(shA, owner, all[0], ver(4000, 0, 1)),
		remM(shA, owner, all[1], ver(4000, 0, 1)),
		remM(shA, owner, all[len(all)-1], ver(4000, 0, 1)),
		remM(shA, owner, all[0], ver(4000, 0, 1)), // same removal twice
	)
	if !slices.Equal(out, []Outcome{Applied, Applied, Applied, Superseded}) {
		t.Fatalf("remove outcomes %v", out)
	}
	want[apr].Count -= 2
	want[jan].Count--
	check("after removes", want)

	// Removing entries that were never appended (including in a month owner
	// has no entries in) is not counted.
	mustApply(t, s,
		remM(shA, owner, all[3]+7, ver(4000, 0, 1)),
		remM(shA, owner, uint64(ids.NewID(time.Date(2025, 12, 5, 0, 0, 0, 0, time.UTC), 1, 1, 0)), ver(4000, 0, 1)),
	)
	check("after removes of absent entries", want)

	// An older append of a removed entry does not resurrect it.
	if out := mustApply(t, s, appM(shA, owner, all[0], "old", ver(4500, 0, 1))); out[0] != Superseded {
		t.Fatalf("older re-append: %v", out[0])
	}
	check("after older re-append", want)

	// A newer append of a removed entry does; a newer append of a live
	// entry replaces its payload without changing the count.
	mustApply(t, s,
		appM(shA, owner, all[0], "back", ver(3000, 0, 1)),
		appM(shA, owner, all[5], "edited", ver(3000, 0, 1)),
	)
	want[apr].Count++
	check("after newer re-appends", want)
	es := rangeAll(t, s, shA, owner, 100)
	if es[0].ID != all[0] || string(es[0].Payload) != "back" {
		t.Fatalf("re-appended entry %+v", es[0])
	}
	for _, e := range es {
		if e.ID == all[5] && string(e.Payload) != "edited" {
			t.Fatalf("edited entry has payload %q", e.Payload)
		}
	}

	// Removing every entry of a month drops it from the per-month counts.
	var rmJan []Mutation
	for _, id := range all {
		if ids.ID(id).Month() == month2026(time.January) {
			rmJan = append(rmJan, remM(shA, owner, id, ver(2000, 0, 1)))
		}
	}
	mustApply(t, s, rmJan...)
	check("after emptying January", want[:jan])
}

func TestDropMonthsBefore(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	all := indexFixture(t, s)
	// A second index table with January entries is not touched by the drop.
	if err := s.CreateTable(ctx, "idx2", KindIndex); err != nil {
		t.Fatal(err)
	}
	janID := idIn(time.January, 2, 0, 0)
	other := appM(shA, owner, janID, "keep", ver(5000, 0, 1))
	other.Table = "idx2"
	mustApply(t, s, other)

	if f, err := s.RetentionFloor(shA, tIndex); err != nil || f != 0 {
		t.Fatalf("initial floor %d, %v", f, err)
	}
	mar := month2026(time.March)
	if err := s.DropMonthsBefore(ctx, shA, tIndex, mar); err != nil {
		t.Fatal(err)
	}
	if f, err := s.RetentionFloor(shA, tIndex); err != nil || f != mar {
		t.Fatalf("floor after drop %s, %v; want %s", ids.MonthString(f), err, ids.MonthString(mar))
	}
	want := wantMonthCounts()[:2] // April, March
	var kept []uint64
	for _, id := range all {
		if ids.ID(id).Month() >= mar {
			kept = append(kept, id)
		}
	}
	if n, months := mustCount(t, s, shA, owner); n != uint64(len(kept)) || !slices.Equal(months, want) {
		t.Fatalf("count after drop %d %v, want %d %v", n, months, len(kept), want)
	}
	if got := entryIDs(rangeAll(t, s, shA, owner, 4)); !slices.Equal(got, kept) {
		t.Fatalf("entries after drop %v\nwant %v", got, kept)
	}
	if n, _ := mustCount(t, s, shA, owner-1); n != uint64(len(kept)) {
		t.Fatalf("other owner count after drop %d, want %d", n, len(kept))
	}
	// No entry, count or month marker of a dropped month remains.
	num := shardNum(t, s, shA)
	for _, sp := range []byte{spaceIndex, spaceCount, spaceMonth} {
		p := tablePrefix(num, sp, tIndex)
		for _, k := range rawKeys(t, s, p, prefixEnd(p)) {
			d, err := decodeKey(k)
			if err != nil {
				t.Fatal(err)
			}
			if d.month < mar {
				t.Errorf("key %x of dropped month %s survives", k, ids.MonthString(d.month))
			}
		}
	}
	// Other table and other shard keep their old months.
	if es, err := s.Range(ctx, shA, "idx2", owner, RangeOptions{}); err != nil || len(es) != 1 {
		t.Fatalf("idx2 after drop of idx: %v, %v", es, err)
	}
	if n, _ := mustCount(t, s, shB, owner); n != 1 {
		t.Fatalf("shard %s count after drop in %s: %d", shB, shA, n)
	}

	// A late append or remove into a dropped month changes nothing.
	before := mustDigest(t, s, shA, nil, nil)
	febID := idIn(time.February, 20, 0, 0)
	out := mustApply(t, s,
		appM(shA, owner, febID, "late", ver(10, 0, 1)),
		appM(shA, 77, janID, "late", ver(10, 0, 1)),
		remM(shA, owner, all[len(all)-1], ver(10, 0, 1)),
		appM(shA, owner, idIn(time.March, 30, 0, 0), "kept", ver(10, 0, 1)),
	)
	if !slices.Equal(out, []Outcome{BelowRetention, BelowRetention, BelowRetention, Applied}) {
		t.Fatalf("late outcomes %v", out)
	}
	after := mustDigest(t, s, shA, nil, nil)
	if after == before {
		t.Fatal("digest did not change after an applied append")
	}
	mustApply(t, s, remM(shA, owner, idIn(time.March, 30, 0, 0), ver(5, 0, 1)))
	if n, months := mustCount(t, s, shA, owner); n != uint64(len(kept)) || !slices.Equal(months, want) {
		t.Fatalf("count after late appends %d %v", n, months)
	}
	if n, _ := mustCount(t, s, shA, 77); n != 0 {
		t.Fatalf("late append into dropped month counted: %d", n)
	}

	// Idempotent, and the floor never moves down.
	d1 := mustDigest(t, s, shA, nil, nil)
	for _, m := range []uint32{mar, month2026(time.January), 0} {
		if err := s.DropMonthsBefore(ctx, shA, tIndex, m); err != nil {
			t.Fatal(err)
		}
	}
	if f, _ := s.RetentionFloor(shA, tIndex); f != mar {
		t.Fatalf("floor moved to %s", ids.MonthString(f))
	}
	if d2 := mustDigest(t, s, shA, nil, nil); d2 != d1 {
		t.Fatalf("repeated drop changed the digest")
	}

	// Errors.
	if err := s.DropMonthsBefore(ctx, shA, tContent, mar); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("drop on content table: %v", err)
	}
	if err := s.DropMonthsBefore(ctx, "nope", tIndex, mar); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("drop on unknown shard: %v", err)
	}
	if _, err := s.RetentionFloor(shA, "nope"); !errors.Is(err, ErrTableNotFound) {
		t.Fatalf("floor of unknown table: %v", err)
	}
}

// TestRetentionFloorCached checks the store's cache of retention floors: a
// drop raises the floor that later index mutations see, even after those
// before it cached the old one; a reopened store loads the stored floor; a
// shard dropped and created again starts with none.
func TestRetentionFloorCached(t *testing.T) {
	opts := testOptions()
	s := openStore(t, "db", opts)
	setupSchema(t, s)
	ctx := context.Background()
	jan, feb, mar := idIn(time.January, 2, 0, 0), idIn(time.February, 2, 0, 0), idIn(time.March, 2, 0, 0)
	// Caches floor 0 through the apply path.
	if out := mustApply(t, s, appM(shA, owner, jan, "a", ver(100, 0, 1))); out[0] != Applied {
		t.Fatalf("append before any drop: %v", out)
	}
	if err := s.DropMonthsBefore(ctx, shA, tIndex, month2026(time.March)); err != nil {
		t.Fatal(err)
	}
	below := func(s *Store, kept uint64) {
		t.Helper()
		out := mustApply(t, s, appM(shA, owner, feb, "late", ver(50, 0, 1)), appM(shA, owner, kept, "kept", ver(50, 0, 1)))
		if !slices.Equal(out, []Outcome{BelowRetention, Applied}) {
			t.Fatalf("outcomes after the drop %v, want [BelowRetention Applied]", out)
		}
	}
	below(s, mar)
	// Another shard's floor is its own.
	if out := mustApply(t, s, appM(shB, owner, feb, "b", ver(50, 0, 1))); out[0] != Applied {
		t.Fatalf("append to %s: %v", shB, out)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, "db", opts)
	below(s, mar+1)
	if err := s.DropShard(ctx, shA); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateShard(ctx, shA); err != nil {
		t.Fatal(err)
	}
	if f, err := s.RetentionFloor(shA, tIndex); err != nil || f != 0 {
		t.Fatalf("floor of the recreated shard %d, %v; want 0", f, err)
	}
	if out := mustApply(t, s, appM(shA, owner, jan, "again", ver(40, 0, 1))); out[0] != Applied {
		t.Fatalf("append of January to the recreated shard: %v", out)
	}
}
