package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// halfFilter selects about half the records: index entries by the parity
// of their owner, content records by the parity of their key's hash.
func halfFilter(sel uint64) KeyFilter {
	return func(_ string, index bool, key []byte, owner uint64) bool {
		if index {
			return owner%2 == sel
		}
		h := fnv.New32a()
		h.Write(key)
		return uint64(h.Sum32())%2 == sel
	}
}

// selects applies f to the record m writes.
func selects(f KeyFilter, m *Mutation) bool {
	if f == nil {
		return true
	}
	if m.Op == OpAppend || m.Op == OpRemove {
		return f(m.Table, true, nil, m.Owner)
	}
	return f(m.Table, false, m.Key, 0)
}

// relKey is the shard-relative key of the record m writes.
func relKey(m *Mutation) []byte {
	if m.Op == OpAppend || m.Op == OpRemove {
		return indexKey(0, m.Table, ids.ID(m.ID).Month(), m.Owner, m.ID)[shardPrefixLen:]
	}
	return contentKey(0, m.Table, m.Key)[shardPrefixLen:]
}

// migrateSpace is a key space of one shard, larger than the property
// tests', so that exports take many pages.
func migrateSpace(rng *rand.Rand, shards ...string) propSpace {
	sp := newPropSpace(rng)
	sp.shards = shards
	for i := len(sp.keys); i < 150; i++ {
		sp.keys = append(sp.keys, fmt.Sprintf("k%03d", i))
	}
	for o := len(sp.owners); o < 8; o++ {
		sp.owners = append(sp.owners, uint64(o+1))
	}
	return sp
}

func mustDigestData(t testing.TB, s *Store, shard string, start, end []byte, f KeyFilter) Digest {
	t.Helper()
	d, err := s.DigestData(context.Background(), shard, start, end, f)
	if err != nil {
		t.Fatalf("DigestData(%s): %v", shard, err)
	}
	return d
}

// checkCounts recounts the live entries of every (month, owner) of the
// index table in shard from the raw entries and compares them with the
// stored counts.
func checkCounts(t testing.TB, s *Store, shard string) {
	t.Helper()
	num := shardNum(t, s, shard)
	lo, hi := shardSpan(num)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	type mo struct {
		month uint32
		owner uint64
	}
	live, stored := map[mo]uint64{}, map[mo]uint64{}
	for it.First(); it.Valid(); it.Next() {
		d, err := decodeKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		switch d.space {
		case spaceIndex:
			rec, err := decodeRecord(it.Value())
			if err != nil {
				t.Fatal(err)
			}
			if !rec.tombstone {
				live[mo{d.month, d.owner}]++
			}
		case spaceCount:
			n, _, err := getUint(s.db, it.Key(), 8)
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 { // a zero count is kept and means no count
				stored[mo{d.month, d.owner}] = n
			}
		}
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	for k, n := range live {
		if stored[k] != n {
			t.Errorf("owner %d month %s: %d live entries, count %d", k.owner, ids.MonthString(k.month), n, stored[k])
		}
	}
	for k, n := range stored {
		if _, ok := live[k]; !ok {
			t.Errorf("owner %d month %s: count %d without live entries", k.owner, ids.MonthString(k.month), n)
		}
	}
}

// TestExportSnapshotPages exports a shard, or part of it, from one
// snapshot while the source keeps changing, with random page bounds, and
// imports the pages into another store; the copy must equal the source as
// it was when the export began.
func TestExportSnapshotPages(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	cStart, cEnd := ContentSpan(tContent)
	iStart, iEnd := IndexSpan(tIndex)
	mid := contentKey(0, tContent, []byte("k075"))[shardPrefixLen:]
	cases := []struct {
		name string
		o    ExportOptions
	}{
		{"everything", ExportOptions{}},
		{"half", ExportOptions{Filter: halfFilter(1)}},
		{"content", ExportOptions{Start: cStart, End: cEnd}},
		{"index half", ExportOptions{Filter: halfFilter(0), Start: iStart, End: iEnd}},
		{"from mid content", ExportOptions{Start: mid}},
		{"up to mid content", ExportOptions{End: mid, Filter: halfFilter(0)}},
		{"empty span", ExportOptions{Start: mid, End: mid}},
		{"nothing selected", ExportOptions{Filter: func(string, bool, []byte, uint64) bool { return false }}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := newTestStore(t, nil)
			dst := newTestStore(t, nil)
			sp := migrateSpace(rng, shA)
			applyShuffled(t, rng, src, sp.randMutations(rng, 1500))
			// Another shard's records are never exported.
			mustApply(t, src, putM(shB, "k000", "other", ver(5, 0, 1)), appM(shB, 1, sp.ids[0], "", ver(5, 0, 1)))

			want := mustDigestData(t, src, shA, c.o.Start, c.o.End, c.o.Filter)
			e, err := src.NewExport(shA, c.o)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			// Later writes are not in the snapshot.
			applyShuffled(t, rng, src, sp.randMutations(rng, 300))
			mustApply(t, src, putM(shA, "zz-new", "x", ver(1, 0, 1)))

			records, size, err := e.Size(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if records != want.Records || size != want.Bytes {
				t.Fatalf("Size = %d records, %d bytes; digest at the snapshot: %v", records, size, want)
			}
			var (
				after      []byte
				pages      int
				total      uint64
				totalBytes uint64
				prev       []byte
			)
			for {
				maxRecords, maxBytes := 1+rng.IntN(60), 1+rng.IntN(3000)
				muts, next, done, err := e.Next(ctx, after, maxRecords, maxBytes)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(muts) > maxRecords {
					t.Fatalf("page of %d records, max %d", len(muts), maxRecords)
				}
				if len(muts) == 0 && !done {
					t.Fatal("empty page not done")
				}
				pageBytes := 0
				for i := range muts {
					m := &muts[i]
					pageBytes += m.StoredBytes()
					k := relKey(m)
					if prev != nil && bytes.Compare(k, prev) <= 0 {
						t.Fatalf("key %s after %s", FormatKey(k), FormatKey(prev))
					}
					prev = k
					if !selects(c.o.Filter, m) {
						t.Fatalf("exported %s, not selected", FormatKey(k))
					}
					if bytes.Compare(k, c.o.Start) < 0 || (c.o.End != nil && bytes.Compare(k, c.o.End) >= 0) {
						t.Fatalf("exported %s, outside the bounds", FormatKey(k))
					}
					if m.Shard != shA {
						t.Fatalf("mutation of shard %q", m.Shard)
					}
				}
				if pageBytes > maxBytes && len(muts) > 1 {
					t.Fatalf("page of %d records has %d bytes, max %d", len(muts), pageBytes, maxBytes)
				}
				if len(muts) > 0 && !bytes.Equal(next, relKey(&muts[len(muts)-1])) {
					t.Fatalf("next %s, last record %s", FormatKey(next), FormatKey(relKey(&muts[len(muts)-1])))
				}
				total += uint64(len(muts))
				totalBytes += uint64(pageBytes)
				if _, err := dst.ImportPage(ctx, muts, "import-"+c.name, next); err != nil {
					t.Fatal(err)
				}
				if done {
					break
				}
				after = next
			}
			if total != records || totalBytes != size {
				t.Fatalf("pages hold %d records, %d bytes; Size said %d, %d", total, totalBytes, records, size)
			}
			if got := mustDigestData(t, dst, shA, nil, nil, nil); got != want {
				t.Fatalf("after %d pages: copy %v, source at the snapshot %v", pages, got, want)
			}
			checkCounts(t, dst, shA)
			// The snapshot still reads the same after more writes.
			applyShuffled(t, rng, src, sp.randMutations(rng, 100))
			if r2, b2, err := e.Size(ctx); err != nil || r2 != records || b2 != size {
				t.Fatalf("Size again = %d, %d, %v", r2, b2, err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if err := e.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			_, _, _, err = e.Next(ctx, nil, 10, 1000)
			wantErr(t, err, ErrInvalid, "closed")
			t.Logf("%d records, %d bytes in %d pages", total, totalBytes, pages)
		})
	}
}

// TestExportMatchesExportPage: without concurrent writes, the pages of an
// unfiltered Export and those of ExportPage hold the same mutations.
func TestExportMatchesExportPage(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	s := newTestStore(t, nil)
	sp := migrateSpace(rng, shA)
	applyShuffled(t, rng, s, sp.randMutations(rng, 800))
	var viaPage []Mutation
	var after []byte
	for {
		muts, next, done, err := s.ExportPage(ctx, shA, after, 1+rng.IntN(50))
		if err != nil {
			t.Fatal(err)
		}
		viaPage = append(viaPage, muts...)
		if done {
			break
		}
		after = next
	}
	e, err := s.NewExport(shA, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var viaExport []Mutation
	after = nil
	for {
		muts, next, done, err := e.Next(ctx, after, 1+rng.IntN(50), s.Limits().MaxBatchBytes)
		if err != nil {
			t.Fatal(err)
		}
		viaExport = append(viaExport, muts...)
		if done {
			break
		}
		after = next
	}
	if len(viaPage) == 0 {
		t.Fatal("nothing exported")
	}
	eq := slices.EqualFunc(viaPage, viaExport, func(a, b Mutation) bool {
		return a.Op == b.Op && a.Shard == b.Shard && a.Table == b.Table && bytes.Equal(a.Key, b.Key) &&
			bytes.Equal(a.Value, b.Value) && a.Owner == b.Owner && a.ID == b.ID &&
			bytes.Equal(a.Payload, b.Payload) && a.Version == b.Version
	})
	if !eq {
		t.Fatalf("ExportPage gave %d mutations, Export %d, not equal", len(viaPage), len(viaExport))
	}
}

func TestExportErrors(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	mustApply(t, s, digestFixture()...)

	_, err := s.NewExport("", ExportOptions{})
	wantErr(t, err, ErrInvalid, "shard name")
	_, err = s.NewExport("nope", ExportOptions{})
	wantErr(t, err, ErrShardNotFound, "nope")

	e, err := s.NewExport(shA, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, c := range []struct {
		records, bytes int
	}{{0, 10}, {-1, 10}, {s.Limits().MaxBatchMutations + 1, 10}, {10, 0}, {10, -5}} {
		_, _, _, err := e.Next(ctx, nil, c.records, c.bytes)
		wantErr(t, err, ErrOutOfRange, "max")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, _, err := e.Next(cctx, nil, 10, 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next with a cancelled context: %v", err)
	}

	// One record per page when maxBytes is below every record.
	muts, next, done, err := e.Next(ctx, nil, 10, 1)
	if err != nil || len(muts) != 1 || done {
		t.Fatalf("Next(maxBytes 1) = %d mutations, done %v, %v", len(muts), done, err)
	}
	// Dropping the shard fails later calls, even if a shard of the same
	// name is created again.
	if err := s.DropShard(ctx, shA); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = e.Next(ctx, next, 10, 1000)
	wantErr(t, err, ErrShardNotFound, "dropped")
	_, _, err = e.Size(ctx)
	wantErr(t, err, ErrShardNotFound, "dropped")
	if _, err := s.CreateShard(ctx, shA); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = e.Next(ctx, next, 10, 1000)
	wantErr(t, err, ErrShardNotFound, "dropped")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestExportStoreClose: closing the store releases the snapshots of the
// exports left open (Pebble would report them leaked) and fails their
// later calls; closing them afterwards is harmless.
func TestExportStoreClose(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	mustApply(t, s, digestFixture()...)
	e1, err := s.NewExport(shA, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e2, err := s.NewExport(shB, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close with an open export: %v", err)
	}
	_, _, _, err = e1.Next(ctx, nil, 10, 1000)
	wantErr(t, err, ErrClosed)
	_, _, err = e1.Size(ctx)
	wantErr(t, err, ErrClosed)
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.NewExport(shA, ExportOptions{})
	wantErr(t, err, ErrClosed)
}

// TestExportConcurrent runs Size and Next on one export from several
// goroutines while a writer changes the shard; run with -race.
func TestExportConcurrent(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	s := newTestStore(t, nil)
	sp := migrateSpace(rng, shA)
	applyShuffled(t, rng, s, sp.randMutations(rng, 500))
	e, err := s.NewExport(shA, ExportOptions{Filter: halfFilter(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	want, _, err := e.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	more := sp.randMutations(rng, 400)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < len(more); i += 20 {
			if _, err := s.Apply(ctx, more[i:i+20]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var after []byte
			var n uint64
			for {
				muts, next, done, err := e.Next(ctx, after, 17, 4096)
				if err != nil {
					t.Error(err)
					return
				}
				n += uint64(len(muts))
				if done {
					break
				}
				after = next
			}
			if n != want {
				t.Errorf("exported %d records, Size %d", n, want)
			}
		}()
	}
	wg.Wait()
}

func TestImportState(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	for _, k := range []string{"", string(make([]byte, MaxImportStateKeyBytes+1))} {
		_, err := s.ImportPage(ctx, nil, k, []byte("x"))
		wantErr(t, err, ErrInvalid, "import state key")
		_, _, err = s.ImportState(k)
		wantErr(t, err, ErrInvalid, "import state key")
		wantErr(t, s.DeleteImportState(k), ErrInvalid, "import state key")
	}
	long := string(bytes.Repeat([]byte{'k'}, MaxImportStateKeyBytes))
	if _, found, err := s.ImportState(long); err != nil || found {
		t.Fatalf("ImportState of a new key = %v, %v", found, err)
	}
	// The state alone.
	if _, err := s.ImportPage(ctx, nil, long, []byte("c0")); err != nil {
		t.Fatal(err)
	}
	// A page with its state; outcomes as Apply's.
	v := ver(100, 0, 1)
	out, err := s.ImportPage(ctx, []Mutation{putM(shA, "a", "1", v), appM(shA, 7, idIn(time.March, 2, 0, 0), "p", v)}, long, []byte("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out, []Outcome{Applied, Applied}) {
		t.Fatalf("outcomes %v", out)
	}
	out, err = s.ImportPage(ctx, []Mutation{putM(shA, "a", "0", ver(200, 0, 1))}, long, []byte("c2"))
	if err != nil || !slices.Equal(out, []Outcome{Superseded}) {
		t.Fatalf("older import: %v, %v", out, err)
	}
	if n, _ := mustCount(t, s, shA, 7); n != 1 {
		t.Fatalf("count %d after import", n)
	}
	if st, found, err := s.ImportState(long); err != nil || !found || string(st) != "c2" {
		t.Fatalf("ImportState = %q, %v, %v", st, found, err)
	}
	// A rejected page leaves the state as it was.
	_, err = s.ImportPage(ctx, []Mutation{putM(shA, "b", "1", Version{})}, long, []byte("c3"))
	wantErr(t, err, ErrInvalid, "version")
	_, err = s.ImportPage(ctx, []Mutation{putM("nope", "b", "1", v)}, long, []byte("c3"))
	wantErr(t, err, ErrShardNotFound)
	if st, _, _ := s.ImportState(long); string(st) != "c2" {
		t.Fatalf("state %q after rejected pages", st)
	}
	// States are independent; deleting is idempotent.
	if _, err := s.ImportPage(ctx, nil, "other", nil); err != nil {
		t.Fatal(err)
	}
	if st, found, err := s.ImportState("other"); err != nil || !found || len(st) != 0 {
		t.Fatalf("empty state = %q, %v, %v", st, found, err)
	}
	for range 2 {
		if err := s.DeleteImportState(long); err != nil {
			t.Fatal(err)
		}
	}
	if _, found, _ := s.ImportState(long); found {
		t.Fatal("state survives its deletion")
	}
	if _, found, _ := s.ImportState("other"); !found {
		t.Fatal("deleting one state deleted another")
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.ImportPage(ctx, nil, "other", nil)
	wantErr(t, err, ErrClosed)
	_, _, err = s.ImportState("other")
	wantErr(t, err, ErrClosed)
	wantErr(t, s.DeleteImportState("other"), ErrClosed)
	wantErr(t, s.Sync(ctx), ErrClosed)
}

// TestImportCrash imports pages without syncing, syncs now and then, and
// takes a crash clone of the file system after a random page: on the clone
// the recorded state must name exactly the pages present (a prefix of
// those imported, at least those synced).
func TestImportCrash(t *testing.T) {
	for round := range 4 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			rng := testRand(t)
			ctx := context.Background()
			fs := vfs.NewCrashableMem()
			clock := ids.NewManualClock(testNow)
			s := openStore(t, "db", Options{FS: fs, Clock: clock})
			setupSchema(t, s)
			const perPage = 4
			pages := 20 + rng.IntN(60)
			synced := -1
			for p := range pages {
				muts := make([]Mutation, perPage)
				for j := range muts {
					// Large values fill the WAL's blocks, which Pebble
					// writes out before a sync asks it to.
					muts[j] = putM(shA, fmt.Sprintf("p%03d-%d", p, j), strings.Repeat("v", 1500), ver(int64(1+p), 0, 1))
				}
				if _, err := s.ImportPage(ctx, muts, "imp", []byte(fmt.Sprint(p))); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(15) == 0 {
					if err := s.Sync(ctx); err != nil {
						t.Fatal(err)
					}
					synced = p
				}
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 2))})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			r := openStore(t, "db", Options{FS: crashed, Clock: clock})
			last := -1
			st, found, err := r.ImportState("imp")
			if err != nil {
				t.Fatal(err)
			}
			if found {
				if _, err := fmt.Sscan(string(st), &last); err != nil {
					t.Fatalf("state %q: %v", st, err)
				}
			}
			if last < synced {
				t.Fatalf("state %d after the crash, but page %d was synced", last, synced)
			}
			for p := range pages {
				for j := range perPage {
					_, ok := getValue(t, r, shA, fmt.Sprintf("p%03d-%d", p, j))
					if ok != (p <= last) {
						t.Fatalf("state %d (synced %d) but page %d key %d present=%v", last, synced, p, j, ok)
					}
				}
			}
			t.Logf("%d pages imported, %d synced, %d survived", pages, synced+1, last+1)
		})
	}
}

func TestDigestData(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	mustApply(t, s, digestFixture()...)
	cStart, cEnd := ContentSpan(tContent)
	iStart, iEnd := IndexSpan(tIndex)
	owner1 := func(_ string, index bool, _ []byte, owner uint64) bool { return index && owner == 1 }
	keyAC := func(_ string, index bool, key []byte, _ uint64) bool {
		return !index && (string(key) == "a" || string(key) == "c")
	}
	cases := []struct {
		name       string
		start, end []byte
		f          KeyFilter
		want       uint64
	}{
		{"all data", nil, nil, nil, 5 + 4},
		{"content", cStart, cEnd, nil, 5},
		{"index", iStart, iEnd, nil, 4},
		{"counts excluded", []byte{'n'}, nil, nil, 0},
		{"owner 1", nil, nil, owner1, 2},
		{"keys a and c", nil, nil, keyAC, 2},
		{"keys a and c in the index span", iStart, iEnd, keyAC, 0},
		{"half", nil, nil, halfFilter(0), 0}, // computed below
	}
	for _, c := range cases {
		d := mustDigestData(t, s, shA, c.start, c.end, c.f)
		if c.name == "half" {
			c.want = 0
			for _, m := range digestFixture() {
				if selects(c.f, &m) {
					c.want++
				}
			}
		}
		if d.Records != c.want {
			t.Errorf("%s: %d records, want %d", c.name, d.Records, c.want)
		}
		// Equal to the digest of a store holding just the selected records.
		ref := newTestStore(t, nil)
		for _, m := range digestFixture() {
			k := relKey(&m)
			if selects(c.f, &m) && bytes.Compare(k, c.start) >= 0 && (c.end == nil || bytes.Compare(k, c.end) < 0) {
				mustApply(t, ref, m)
			}
		}
		if got := mustDigestData(t, ref, shA, nil, nil, nil); got != d {
			t.Errorf("%s: digest %v, of the selected records alone %v", c.name, d, got)
		}
	}
	// Digest still covers counts; DigestData does not.
	if all, data := mustDigest(t, s, shA, nil, nil), mustDigestData(t, s, shA, nil, nil, nil); all.Records != data.Records+3 {
		t.Fatalf("Digest %v, DigestData %v", all, data)
	}
	_, err := s.DigestData(ctx, "", nil, nil, nil)
	wantErr(t, err, ErrInvalid)
	_, err = s.DigestData(ctx, "nope", nil, nil, nil)
	wantErr(t, err, ErrShardNotFound)
}

// TestPurgeMatching purges the records a filter selects from a random
// shard and compares it with a store that only ever had the others.
func TestPurgeMatching(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	for round := range 4 {
		src := newTestStore(t, nil)
		ref := newTestStore(t, nil)
		sp := migrateSpace(rng, shA, shB)
		f := halfFilter(uint64(round % 2))
		if round == 3 {
			f = func(string, bool, []byte, uint64) bool { return true }
		}
		muts := sp.randMutations(rng, 600+rng.IntN(2000))
		applyShuffled(t, rng, src, muts)
		var keep []Mutation
		for _, m := range muts {
			if m.Shard != shA || !selects(f, &m) {
				keep = append(keep, m)
			}
		}
		if len(keep) > 0 {
			applyShuffled(t, rng, ref, keep)
		}
		selected := mustDigestData(t, src, shA, nil, nil, f)
		n, err := src.PurgeMatching(ctx, shA, f)
		if err != nil {
			t.Fatal(err)
		}
		if n != selected.Records {
			t.Fatalf("round %d: purged %d records, %d selected", round, n, selected.Records)
		}
		for _, sh := range []string{shA, shB} {
			if a, b := mustDigest(t, src, sh, nil, nil), mustDigest(t, ref, sh, nil, nil); a != b {
				t.Fatalf("round %d: shard %s after the purge %v, never had them %v", round, sh, a, b)
			}
		}
		checkCounts(t, src, shA)
		for _, o := range sp.owners {
			na, ma := mustCount(t, src, shA, o)
			nb, mb := mustCount(t, ref, shA, o)
			if na != nb || !slices.Equal(ma, mb) {
				t.Fatalf("round %d owner %d: count %d %v, want %d %v", round, o, na, ma, nb, mb)
			}
			if a, b := rangeAll(t, src, shA, o, 7), rangeAll(t, ref, shA, o, 7); !entriesEqual(a, b) {
				t.Fatalf("round %d owner %d: range %v, want %v", round, o, entryIDs(a), entryIDs(b))
			}
			// Offsets are found from the counts.
			es, err := src.Range(ctx, shA, tIndex, o, RangeOptions{Offset: 3, Limit: 5})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := ref.Range(ctx, shA, tIndex, o, RangeOptions{Offset: 3, Limit: 5})
			if !entriesEqual(es, want) {
				t.Fatalf("round %d owner %d: offset range %v, want %v", round, o, entryIDs(es), entryIDs(want))
			}
		}
		if n, err := src.PurgeMatching(ctx, shA, f); err != nil || n != 0 {
			t.Fatalf("second purge: %d, %v", n, err)
		}
		t.Logf("round %d: %d mutations, %d records purged", round, len(muts), n)
	}
}

// TestPurgeMatchingConcurrentApply purges while writers apply to the same
// shard, selected records included: afterwards every unselected record is
// as the writes left it and every count is exact.
func TestPurgeMatchingConcurrentApply(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	for round := range 3 {
		src := newTestStore(t, nil)
		ref := newTestStore(t, nil)
		sp := migrateSpace(rng, shA)
		// More keys than one purge batch.
		for i := len(sp.keys); i < 1500; i++ {
			sp.keys = append(sp.keys, fmt.Sprintf("k%04d", i))
		}
		pre := sp.randMutations(rng, 3000)
		for i := 0; i < len(pre); i += 100 {
			mustApply(t, src, pre[i:i+100]...)
			mustApply(t, ref, pre[i:i+100]...)
		}
		f := halfFilter(uint64(round % 2))
		seeds := [2]uint64{rng.Uint64(), rng.Uint64()}
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wr := rand.New(rand.NewPCG(seeds[w], uint64(w)))
				for range 40 {
					batch := sp.randMutations(wr, 1+wr.IntN(20))
					if _, err := src.Apply(ctx, batch); err != nil {
						t.Error(err)
						return
					}
					if _, err := ref.Apply(ctx, batch); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		n, err := src.PurgeMatching(ctx, shA, f)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		checkCounts(t, src, shA)
		keep := func(table string, index bool, key []byte, owner uint64) bool { return !f(table, index, key, owner) }
		if a, b := mustDigestData(t, src, shA, nil, nil, keep), mustDigestData(t, ref, shA, nil, nil, keep); a != b {
			t.Fatalf("round %d: unselected records %v, want %v", round, a, b)
		}
		// What stays of the selected records was written during the purge,
		// and a second purge removes it.
		if _, err := src.PurgeMatching(ctx, shA, f); err != nil {
			t.Fatal(err)
		}
		if d := mustDigestData(t, src, shA, nil, nil, f); d.Records != 0 {
			t.Fatalf("round %d: %v selected after a quiet purge", round, d)
		}
		checkCounts(t, src, shA)
		t.Logf("round %d: purged %d records while writing", round, n)
	}
}

func TestPurgeMatchingErrors(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	all := func(string, bool, []byte, uint64) bool { return true }
	_, err := s.PurgeMatching(ctx, shA, nil)
	wantErr(t, err, ErrInvalid, "nil")
	_, err = s.PurgeMatching(ctx, "", all)
	wantErr(t, err, ErrInvalid, "shard name")
	_, err = s.PurgeMatching(ctx, "nope", all)
	wantErr(t, err, ErrShardNotFound)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.PurgeMatching(cctx, shA, all); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled purge: %v", err)
	}
	if n, err := s.PurgeMatching(ctx, shA, all); err != nil || n != 0 {
		t.Fatalf("purge of an empty shard: %d, %v", n, err)
	}
}

// TestImportPageReadsInOrder: an import page's content keys are read with
// one forward iterator; last writer wins all the same, against records
// already stored, tombstones included, and against a key out of order.
func TestImportPageReadsInOrder(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	if _, err := s.Apply(ctx, []Mutation{
		putM(shA, "b", "newer", ver(10, 0, 1)),
		delM(shA, "d", ver(10, 0, 1)),
		putM(shA, "e", "old", ver(900, 0, 1)),
	}); err != nil {
		t.Fatal(err)
	}
	page := []Mutation{
		putM(shA, "a", "imported", ver(500, 0, 2)),
		putM(shA, "b", "older", ver(500, 0, 2)),
		putM(shA, "c", "imported", ver(500, 0, 2)),
		putM(shA, "d", "resurrected?", ver(500, 0, 2)),
		putM(shA, "e", "imported", ver(500, 0, 2)),
		putM(shA, "b", "older still, out of order", ver(600, 0, 2)),
	}
	outs, err := s.ImportPage(ctx, page, "t", []byte("state"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{Applied, Superseded, Applied, Superseded, Applied, Superseded}
	for i := range want {
		if outs[i] != want[i] {
			t.Errorf("%s: outcome %v, want %v", page[i].Key, outs[i], want[i])
		}
	}
	for key, val := range map[string]string{"a": "imported", "b": "newer", "c": "imported", "e": "imported"} {
		v, err := s.Get(ctx, shA, tContent, []byte(key))
		if err != nil || string(v.Value) != val {
			t.Errorf("%s = %q, %v; want %q", key, v.Value, err, val)
		}
	}
	if _, err := s.Get(ctx, shA, tContent, []byte("d")); !errors.Is(err, ErrNotFound) {
		t.Errorf("d: %v, want the tombstone to win", err)
	}
}
