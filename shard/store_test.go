package shard

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestShardsAndTables(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	clock := opts.Clock.(*ids.ManualClock)
	clock.Set(testNow.Add(1234567 * time.Microsecond))
	s := openStore(t, "db", opts)

	if len(s.Shards()) != 0 || len(s.Tables()) != 0 {
		t.Fatalf("new store has shards %v tables %v", s.Shards(), s.Tables())
	}
	b, err := s.CreateShard(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.CreateShard(ctx, "a-1.x_Y")
	if err != nil {
		t.Fatal(err)
	}
	if b.Num == 0 || a.Num <= b.Num {
		t.Fatalf("shard numbers b=%d a=%d: want nonzero and increasing", b.Num, a.Num)
	}
	if want := clock.Now().UTC().Truncate(time.Millisecond); !a.Created.Equal(want) {
		t.Fatalf("Created = %v, want %v", a.Created, want)
	}
	if got := s.Shards(); !slices.Equal(got, []ShardInfo{a, b}) {
		t.Fatalf("Shards = %v, want sorted [a b]", got)
	}
	if _, err := s.CreateShard(ctx, "b"); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateShard existing: %v", err)
	}

	for _, tc := range []struct {
		name string
		kind TableKind
	}{{"zz", KindIndex}, {"aa", KindContent}} {
		if err := s.CreateTable(ctx, tc.name, tc.kind); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateTable(ctx, "aa", KindContent); err != nil {
		t.Fatalf("re-creating a table with its kind: %v", err)
	}
	if err := s.CreateTable(ctx, "aa", KindIndex); !errors.Is(err, ErrExists) {
		t.Fatalf("re-creating a table with another kind: %v", err)
	}
	want := []TableInfo{{"aa", KindContent}, {"zz", KindIndex}}
	if got := s.Tables(); !slices.Equal(got, want) {
		t.Fatalf("Tables = %v, want %v", got, want)
	}
	if ti, err := s.Table("zz"); err != nil || ti != want[1] {
		t.Fatalf("Table(zz) = %v, %v", ti, err)
	}
	if _, err := s.Table("nope"); !errors.Is(err, ErrTableNotFound) {
		t.Fatalf("Table(nope): %v", err)
	}
	if _, err := s.Table(""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Table(\"\"): %v", err)
	}
	for _, k := range []TableKind{0, 3} {
		if err := s.CreateTable(ctx, "t", k); !errors.Is(err, ErrInvalid) {
			t.Fatalf("CreateTable kind %d: %v", k, err)
		}
	}

	for _, name := range []string{"", strings.Repeat("x", MaxTableNameBytes+1), "a b", "a/b", "ä", "a\x00", "x:y"} {
		if _, err := s.CreateShard(ctx, name); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateShard(%q): %v, want ErrInvalid", name, err)
		}
		if err := s.CreateTable(ctx, name, KindContent); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateTable(%q): %v, want ErrInvalid", name, err)
		}
	}
	if _, err := s.CreateShard(ctx, strings.Repeat("x", MaxTableNameBytes)); err != nil {
		t.Fatalf("name of exactly %d bytes: %v", MaxTableNameBytes, err)
	}
	if len(s.Shards()) != 3 || len(s.Tables()) != 2 {
		t.Fatalf("invalid names were registered: %v %v", s.Shards(), s.Tables())
	}
	if err := s.DropShard(ctx, "nope"); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("DropShard unknown: %v", err)
	}
	if _, err := s.ShardSize("nope"); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("ShardSize unknown: %v", err)
	}
	if _, err := s.ShardSize("b"); err != nil {
		t.Fatalf("ShardSize: %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateShard(ctx, "c"); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateShard on closed store: %v", err)
	}
	if err := s.CreateTable(ctx, "c", KindContent); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateTable on closed store: %v", err)
	}
	if err := s.DropShard(ctx, "b"); !errors.Is(err, ErrClosed) {
		t.Fatalf("DropShard on closed store: %v", err)
	}
	if st := s.Stats(); !reflect.DeepEqual(st, Stats{}) {
		t.Fatalf("Stats on closed store: %+v", st)
	}
}

func TestDropShard(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	id := idIn(time.March, 1, 0, 0)
	data := []Mutation{putM(shA, "k", "v", ver(10, 0, 1)), appM(shA, 1, id, "p", ver(10, 0, 1))}
	mustApply(t, s, data...)
	mustApply(t, s, putM(shB, "k", "b", ver(10, 0, 1)))
	if err := s.DropMonthsBefore(ctx, shA, tIndex, month2026(time.January)); err != nil {
		t.Fatal(err)
	}
	oldNum := shardNum(t, s, shA)
	lo, hi := shardSpan(oldNum)
	if len(rawKeys(t, s, lo, hi)) == 0 {
		t.Fatal("fixture: shard has no keys")
	}

	if err := s.DropShard(ctx, shA); err != nil {
		t.Fatal(err)
	}
	if ks := rawKeys(t, s, lo, hi); len(ks) != 0 {
		t.Fatalf("%d keys of the dropped shard remain, first %x", len(ks), ks[0])
	}
	if _, err := s.Get(ctx, shA, tContent, []byte("k")); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("Get on dropped shard: %v", err)
	}
	if _, err := s.Apply(ctx, data[:1]); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("Apply to dropped shard: %v", err)
	}
	if err := s.DropShard(ctx, shA); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("second DropShard: %v", err)
	}
	if v, ok := getValue(t, s, shB, "k"); !ok || string(v.Value) != "b" {
		t.Fatal("dropping one shard lost another's data")
	}

	sh, err := s.CreateShard(ctx, shA)
	if err != nil {
		t.Fatal(err)
	}
	if sh.Num == oldNum {
		t.Fatalf("recreated shard reuses number %d", oldNum)
	}
	if _, ok := getValue(t, s, shA, "k"); ok {
		t.Fatal("recreated shard has the old shard's content")
	}
	if n, _ := mustCount(t, s, shA, 1); n != 0 {
		t.Fatalf("recreated shard count %d", n)
	}
	if f, err := s.RetentionFloor(shA, tIndex); err != nil || f != 0 {
		t.Fatalf("recreated shard retention floor %d, %v", f, err)
	}
	if d := mustDigest(t, s, shA, nil, nil); d.Records != 0 {
		t.Fatalf("recreated shard digest %v", d)
	}
	// The old shard's versions do not shadow new writes.
	if out := mustApply(t, s, putM(shA, "k", "older", ver(20, 0, 1))); out[0] != Applied {
		t.Fatalf("write to recreated shard: %v", out[0])
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := testOptions()
	opts.FS = vfs.Default

	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	setupSchema(t, s)
	if _, err := s.CreateShard(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropShard(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	muts := digestFixture()
	muts = append(muts, putM(shB, "kb", "vb", ver(5, 0, 2)))
	mustApply(t, s, muts...)
	if err := s.DropMonthsBefore(ctx, shA, tIndex, month2026(time.February)); err != nil {
		t.Fatal(err)
	}
	shards, tables := s.Shards(), s.Tables()
	digest := mustDigest(t, s, shA, nil, nil)
	count, months := mustCount(t, s, shA, 1)
	maxNum := uint32(0)
	for _, sh := range shards {
		maxNum = max(maxNum, sh.Num)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, opts)
	if got := s.Shards(); !slices.EqualFunc(got, shards, func(a, b ShardInfo) bool {
		return a.Name == b.Name && a.Num == b.Num && a.Created.Equal(b.Created)
	}) {
		t.Fatalf("shards after reopen %v, want %v", got, shards)
	}
	if got := s.Tables(); !slices.Equal(got, tables) {
		t.Fatalf("tables after reopen %v, want %v", got, tables)
	}
	if d := mustDigest(t, s, shA, nil, nil); d != digest {
		t.Fatalf("digest after reopen %v, want %v", d, digest)
	}
	if n, m := mustCount(t, s, shA, 1); n != count || !slices.Equal(m, months) {
		t.Fatalf("count after reopen %d %v, want %d %v", n, m, count, months)
	}
	if v, ok := getValue(t, s, shB, "kb"); !ok || string(v.Value) != "vb" || v.Version != ver(5, 0, 2) {
		t.Fatalf("kb after reopen: %+v %v", v, ok)
	}
	if f, _ := s.RetentionFloor(shA, tIndex); f != month2026(time.February) {
		t.Fatalf("retention floor after reopen %d", f)
	}
	if out := mustApply(t, s, appM(shA, 9, idIn(time.January, 5, 0, 0), "", ver(1, 0, 1))); out[0] != BelowRetention {
		t.Fatalf("append below the reopened floor: %v", out[0])
	}
	// Shard numbers are never reused, even those of dropped shards.
	sh, err := s.CreateShard(ctx, "new")
	if err != nil {
		t.Fatal(err)
	}
	if sh.Num <= maxNum+1 {
		t.Fatalf("new shard number %d after reopen; live max %d and one dropped after it", sh.Num, maxNum)
	}
}

func TestOpenValidatesOptions(t *testing.T) {
	cases := map[string]func(*Options){
		"payload above 255":      func(o *Options) { o.Limits.MaxPayloadBytes = 256 },
		"negative key bytes":     func(o *Options) { o.Limits.MaxKeyBytes = -1 },
		"batch below value":      func(o *Options) { o.Limits.MaxValueBytes = 1000; o.Limits.MaxBatchBytes = 999 },
		"negative clock ahead":   func(o *Options) { o.MaxClockAhead = -time.Second },
		"negative range limit":   func(o *Options) { o.Limits.MaxRangeLimit = -1 },
		"negative offset":        func(o *Options) { o.Limits.MaxOffset = -1 },
		"negative max mutations": func(o *Options) { o.Limits.MaxBatchMutations = -5 },
	}
	for name, mod := range cases {
		opts := testOptions()
		mod(&opts)
		s, err := Open("db", opts)
		if err == nil {
			_ = s.Close()
			t.Errorf("%s: Open succeeded", name)
		}
	}
	s := openStore(t, "db", testOptions())
	if l := s.Limits(); l.MaxPayloadBytes != MaxPayloadBytes || l.MaxBatchMutations != 1000 || l.MaxRangeLimit != 1000 {
		t.Fatalf("default limits %+v", l)
	}
}
