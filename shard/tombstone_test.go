package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

func TestCollectTombstones(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	const hour = int64(time.Hour / time.Millisecond)
	horizon := ids.MakeTimestamp(testNow.UnixMilli()-hour, 0)
	oldV, oldDel, newDel := ver(2*hour, 0, 1), ver(90*60*1000, 0, 1), ver(10*60*1000, 0, 1)
	atHorizon := Version{HLC: horizon, Site: 1}

	var muts []Mutation
	for _, sh := range []string{shA, shB} {
		for i := range 10 {
			muts = append(muts, putM(sh, fmt.Sprintf("k%d", i), "v", oldV))
		}
	}
	mustApply(t, s, muts...)
	muts = muts[:0]
	for _, sh := range []string{shA, shB} {
		for i := range 5 {
			muts = append(muts, delM(sh, fmt.Sprintf("k%d", i), oldDel)) // collected
		}
		muts = append(muts,
			delM(sh, "k5", newDel),    // kept: newer than horizon
			delM(sh, "k6", atHorizon), // kept: not older than horizon
			delM(sh, "blind", oldDel), // collected: tombstone of a key never put
		)
	}
	// Index: owner 1 has 6 entries; 3 removed long ago, 1 recently.
	var entries []uint64
	for i := range 6 {
		id := idIn(time.Month(1+i%3), 1+i, 0, 0)
		entries = append(entries, id)
		muts = append(muts, appM(shA, 1, id, "p", oldV))
	}
	mustApply(t, s, muts...)
	mustApply(t, s,
		remM(shA, 1, entries[0], oldDel), remM(shA, 1, entries[1], oldDel), remM(shA, 1, entries[2], oldDel),
		remM(shA, 1, entries[3], newDel),
		remM(shA, 2, entries[4], oldDel), // blind remove: a tombstone never counted
	)

	countBefore, monthsBefore := mustCount(t, s, shA, 1)
	digA, digB := mustDigest(t, s, shA, nil, nil), mustDigest(t, s, shB, nil, nil)
	n, err := s.CollectTombstones(ctx, horizon)
	if err != nil {
		t.Fatal(err)
	}
	// Per shard 5+1 content tombstones; shard A also 3+1 index tombstones.
	if want := 2*6 + 4; n != want {
		t.Fatalf("CollectTombstones = %d, want %d", n, want)
	}
	if c, m := mustCount(t, s, shA, 1); c != countBefore || !slices.Equal(m, monthsBefore) {
		t.Fatalf("count changed by collection: %d %v -> %d %v", countBefore, monthsBefore, c, m)
	}
	if c := mustDigest(t, s, shA, nil, nil); c.Records != digA.Records-10 {
		t.Fatalf("shard A digest records %d -> %d, want 10 fewer", digA.Records, c.Records)
	}
	if c := mustDigest(t, s, shB, nil, nil); c.Records != digB.Records-6 {
		t.Fatalf("shard B digest records %d -> %d, want 6 fewer", digB.Records, c.Records)
	}

	for _, sh := range []string{shA, shB} {
		num := shardNum(t, s, sh)
		for i := range 5 {
			if _, ok := rawGet(t, s, contentKey(num, tContent, fmt.Appendf(nil, "k%d", i))); ok {
				t.Errorf("%s: old tombstone k%d not collected", sh, i)
			}
		}
		if _, ok := rawGet(t, s, contentKey(num, tContent, []byte("blind"))); ok {
			t.Errorf("%s: old blind tombstone not collected", sh)
		}
		for _, k := range []string{"k5", "k6"} {
			v, ok := rawGet(t, s, contentKey(num, tContent, []byte(k)))
			if !ok {
				t.Errorf("%s: tombstone %s not older than horizon was collected", sh, k)
				continue
			}
			if rec, err := decodeRecord(v); err != nil || !rec.tombstone {
				t.Errorf("%s: %s is no longer a tombstone: %+v %v", sh, k, rec, err)
			}
		}
		for i := 7; i < 10; i++ {
			if v, ok := getValue(t, s, sh, fmt.Sprintf("k%d", i)); !ok || v.Version != oldV {
				t.Errorf("%s: live record k%d lost by collection", sh, i)
			}
		}
	}
	num := shardNum(t, s, shA)
	for i, id := range entries {
		_, ok := rawGet(t, s, indexKey(num, tIndex, ids.ID(id).Month(), 1, id))
		if wantGone := i < 3; ok == wantGone {
			t.Errorf("index entry %d present=%v, want present=%v", i, ok, !wantGone)
		}
	}
	if es := rangeAll(t, s, shA, 1, 10); !slices.Equal(entryIDs(es), []uint64{entries[5], entries[4]}) {
		t.Errorf("live entries after collection: %v", entryIDs(es))
	}

	// Collecting again finds nothing.
	if n, err := s.CollectTombstones(ctx, horizon); err != nil || n != 0 {
		t.Fatalf("second collection: %d, %v", n, err)
	}
	// Once its tombstone is collected, a replayed older write reappears:
	// this is why the grace period must exceed the longest outage.
	if out := mustApply(t, s, putM(shA, "k0", "replayed", ver(3*hour, 0, 1))); out[0] != Applied {
		t.Fatalf("replay after collection: %v", out[0])
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CollectTombstones(ctx, horizon); !errors.Is(err, ErrClosed) {
		t.Fatalf("CollectTombstones on closed store: %v", err)
	}
}

// A tombstone the scan saw but that a newer write replaced before the delete
// step is not deleted.
func TestCollectTombstonesSkipsRewritten(t *testing.T) {
	s := newTestStore(t, nil)
	num := shardNum(t, s, shA)
	mustApply(t, s, delM(shA, "k", ver(5000, 0, 1)), delM(shA, "gone", ver(5000, 0, 1)))
	id := idIn(time.April, 1, 0, 0)
	mustApply(t, s, remM(shA, 3, id, ver(5000, 0, 1)))

	// What CollectTombstones's scan would have gathered.
	stale := func(key []byte) staleRecord {
		enc, ok := rawGet(t, s, key)
		if !ok {
			t.Fatalf("no record at %x", key)
		}
		d, err := decodeKey(key)
		if err != nil {
			t.Fatal(err)
		}
		m := &Mutation{Table: d.table, Key: d.key, Owner: d.owner, Op: OpDelete}
		if d.space == spaceIndex {
			m.Op = OpRemove
		}
		return staleRecord{r: resolved{Mutation: m, num: d.shard}, key: key, enc: enc}
	}
	kKey := contentKey(num, tContent, []byte("k"))
	goneKey := contentKey(num, tContent, []byte("gone"))
	iKey := indexKey(num, tIndex, ids.ID(id).Month(), 3, id)
	recs := []staleRecord{stale(kKey), stale(goneKey), stale(iKey)}

	// Between scan and delete, newer writes replace two of them.
	mustApply(t, s, putM(shA, "k", "new", ver(100, 0, 1)), appM(shA, 3, id, "new", ver(100, 0, 1)))

	n, err := s.deleteIfUnchanged(recs)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("deleteIfUnchanged deleted %d, want 1 (the unchanged tombstone)", n)
	}
	if v, ok := getValue(t, s, shA, "k"); !ok || string(v.Value) != "new" {
		t.Fatalf("rewritten key lost: %q %v", v.Value, ok)
	}
	if _, ok := rawGet(t, s, goneKey); ok {
		t.Fatal("unchanged tombstone not deleted")
	}
	if c, _ := mustCount(t, s, shA, 3); c != 1 {
		t.Fatalf("rewritten index entry: count %d, want 1", c)
	}
}

// CollectTombstones racing with writers never deletes a live record.
func TestCollectTombstonesConcurrentWriters(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	const keys = 600 // more than one collection chunk
	var dels []Mutation
	for i := range keys {
		dels = append(dels, delM(shA, fmt.Sprintf("k%04d", i), ver(60_000, 0, 1)))
	}
	mustApply(t, s, dels...)

	horizon := ids.MakeTimestamp(testNow.Add(time.Hour).UnixMilli(), 0) // every tombstone is old
	var wg sync.WaitGroup
	var collected int
	var collectErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		collected, collectErr = s.CollectTombstones(ctx, horizon)
	}()
	go func() {
		defer wg.Done()
		for i := keys - 1; i >= 0; i -= 2 { // every other key, from the end
			if _, err := s.Apply(ctx, []Mutation{putM(shA, fmt.Sprintf("k%04d", i), "live", ver(1000, 0, 1))}); err != nil {
				t.Errorf("Apply: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	if collectErr != nil {
		t.Fatal(collectErr)
	}
	t.Logf("collected %d of %d tombstones while writers ran", collected, keys)
	if collected < keys/2 || collected > keys {
		t.Fatalf("collected %d tombstones, want between %d and %d", collected, keys/2, keys)
	}
	for i := keys - 1; i >= 0; i -= 2 {
		if v, ok := getValue(t, s, shA, fmt.Sprintf("k%04d", i)); !ok || string(v.Value) != "live" {
			t.Fatalf("live key k%04d lost to tombstone collection", i)
		}
	}
	// Every tombstone was either collected or replaced by a live record.
	n, err := s.CollectTombstones(ctx, horizon)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("second collection found %d tombstones; the first pass should have left none", n)
	}
	num := shardNum(t, s, shA)
	p := tablePrefix(num, spaceContent, tContent)
	if got := len(rawKeys(t, s, p, prefixEnd(p))); got != keys/2 {
		t.Fatalf("%d content records remain, want %d live ones", got, keys/2)
	}
}
