package shard

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// testNow is the wall time of every test store's manual clock. Test ids and
// versions lie before it.
var testNow = time.Date(2026, 5, 15, 12, 0, 0, 0, time.UTC)

// Names of the schema newTestStore creates.
const (
	shA      = "s1"
	shB      = "s2"
	tContent = "content"
	tIndex   = "idx"
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

// testOptions returns small in-memory options with a manual clock at testNow.
func testOptions() Options {
	return Options{
		Clock:         ids.NewManualClock(testNow),
		FS:            vfs.NewMem(),
		CacheBytes:    4 << 20,
		MemTableBytes: 1 << 20,
	}
}

// openStore opens a store in dir with opts and closes it at cleanup.
func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newTestStore opens an in-memory store with shards s1, s2, a content table
// and an index table. mod, if non-nil, adjusts the options first.
func newTestStore(t testing.TB, mod func(*Options)) *Store {
	t.Helper()
	opts := testOptions()
	if mod != nil {
		mod(&opts)
	}
	s := openStore(t, "db", opts)
	setupSchema(t, s)
	return s
}

func setupSchema(t testing.TB, s *Store) {
	t.Helper()
	ctx := context.Background()
	for _, name := range []string{shA, shB} {
		if _, err := s.CreateShard(ctx, name); err != nil {
			t.Fatalf("CreateShard(%s): %v", name, err)
		}
	}
	if err := s.CreateTable(ctx, tContent, KindContent); err != nil {
		t.Fatalf("CreateTable: %v", err)
	}
	if err := s.CreateTable(ctx, tIndex, KindIndex); err != nil {
		t.Fatalf("CreateTable: %v", err)
	}
}

// ver returns a version agoMs milliseconds before testNow.
func ver(agoMs int64, logical uint16, site uint32) Version {
	return Version{HLC: ids.MakeTimestamp(testNow.UnixMilli()-agoMs, logical), Site: site}
}

// idIn returns an id in the given month of 2026: day d, second sec.
func idIn(month time.Month, d, sec int, seq uint32) uint64 {
	return uint64(ids.NewID(time.Date(2026, month, d, 0, 0, sec, 0, time.UTC), 1, 1, seq))
}

func month2026(m time.Month) uint32 { return ids.MonthOf(time.Date(2026, m, 1, 0, 0, 0, 0, time.UTC)) }

func putM(shard, key, val string, v Version) Mutation {
	return Mutation{Op: OpPut, Shard: shard, Table: tContent, Key: []byte(key), Value: []byte(val), Version: v}
}

func delM(shard, key string, v Version) Mutation {
	return Mutation{Op: OpDelete, Shard: shard, Table: tContent, Key: []byte(key), Version: v}
}

func appM(shard string, owner, id uint64, payload string, v Version) Mutation {
	return Mutation{Op: OpAppend, Shard: shard, Table: tIndex, Owner: owner, ID: id, Payload: []byte(payload), Version: v}
}

func remM(shard string, owner, id uint64, v Version) Mutation {
	return Mutation{Op: OpRemove, Shard: shard, Table: tIndex, Owner: owner, ID: id, Version: v}
}

// mustApply applies muts and returns the outcomes, failing on error.
func mustApply(t testing.TB, s *Store, muts ...Mutation) []Outcome {
	t.Helper()
	out, err := s.Apply(context.Background(), muts)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(out) != len(muts) {
		t.Fatalf("Apply returned %d outcomes for %d mutations", len(out), len(muts))
	}
	return out
}

// getValue returns the live value of key in the content table, or "" with
// found false.
func getValue(t testing.TB, s *Store, shard, key string) (Value, bool) {
	t.Helper()
	v, err := s.Get(context.Background(), shard, tContent, []byte(key))
	if errors.Is(err, ErrNotFound) {
		return Value{}, false
	}
	if err != nil {
		t.Fatalf("Get(%s, %q): %v", shard, key, err)
	}
	return v, true
}

func mustCount(t testing.TB, s *Store, shard string, owner uint64) (uint64, []MonthCount) {
	t.Helper()
	n, months, err := s.Count(context.Background(), shard, tIndex, owner)
	if err != nil {
		t.Fatalf("Count(%s, %d): %v", shard, owner, err)
	}
	return n, months
}

func mustDigest(t testing.TB, s *Store, shard string, start, end []byte) Digest {
	t.Helper()
	d, err := s.Digest(context.Background(), shard, start, end)
	if err != nil {
		t.Fatalf("Digest(%s): %v", shard, err)
	}
	return d
}

// rangeAll returns every live entry of owner, newest first, paging with
// max_id = last id - 1. It fails if paging returns an id twice or out of
// order.
func rangeAll(t testing.TB, s *Store, shard string, owner uint64, pageSize int) []Entry {
	t.Helper()
	var all []Entry
	var maxID uint64
	for page := 0; ; page++ {
		if page > 100000 {
			t.Fatalf("rangeAll: paging does not terminate")
		}
		es, err := s.Range(context.Background(), shard, tIndex, owner, RangeOptions{MaxID: maxID, Limit: pageSize})
		if err != nil {
			t.Fatalf("Range(%s, %d, max_id %d): %v", shard, owner, maxID, err)
		}
		for _, e := range es {
			if len(all) > 0 && e.ID >= all[len(all)-1].ID {
				t.Fatalf("rangeAll: id %d after %d: not strictly newest first", e.ID, all[len(all)-1].ID)
			}
			all = append(all, e)
		}
		if len(es) < pageSize {
			return all
		}
		maxID = es[len(es)-1].ID - 1
		if maxID == 0 {
			return all
		}
	}
}

func entryIDs(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

// rawKeys returns every key of the store's database in [lo, hi).
func rawKeys(t testing.TB, s *Store, lo, hi []byte) [][]byte {
	t.Helper()
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out [][]byte
	for it.SeekGE(lo); it.Valid(); it.Next() {
		if hi != nil && bytes.Compare(it.Key(), hi) >= 0 {
			break
		}
		out = append(out, slices.Clone(it.Key()))
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

// rawGet reports whether key is present in the database.
func rawGet(t testing.TB, s *Store, key []byte) ([]byte, bool) {
	t.Helper()
	v, closer, err := s.db.Get(key)
	if err != nil {
		return nil, false
	}
	defer closer.Close()
	return slices.Clone(v), true
}

func shardNum(t testing.TB, s *Store, name string) uint32 {
	t.Helper()
	for _, sh := range s.Shards() {
		if sh.Name == name {
			return sh.Num
		}
	}
	t.Fatalf("no shard %q", name)
	return 0
}

// wantErr checks err wraps sentinel and its message contains every want.
func wantErr(t testing.TB, err, sentinel error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not wrap %q", err, sentinel)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}
