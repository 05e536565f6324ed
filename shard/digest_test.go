package shard

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"
)

// digestFixture is 5 content records (one a tombstone) and 4 index entries
// (one removed) of 2 owners in 2 months, so 3 count records.
func digestFixture() []Mutation {
	v := ver(1000, 0, 1)
	muts := []Mutation{
		putM(shA, "a", "1", v), putM(shA, "b", "2", v), putM(shA, "c", "3", v), putM(shA, "d", "4", v),
		delM(shA, "e", v),
		appM(shA, 1, idIn(time.January, 1, 0, 0), "x", v),
		appM(shA, 1, idIn(time.February, 1, 0, 0), "y", v),
		appM(shA, 2, idIn(time.February, 2, 0, 0), "z", v),
		remM(shA, 2, idIn(time.February, 3, 0, 0), v),
	}
	return muts
}

func TestDigestSubRanges(t *testing.T) {
	s := newTestStore(t, nil)
	mustApply(t, s, digestFixture()...)
	r := func(a, b byte) ([]byte, []byte) { return []byte{a}, []byte{b} }
	cases := []struct {
		name       string
		start, end []byte
		want       uint64
	}{
		{"all", nil, nil, 5 + 4 + 3},
		{"content", []byte{'c'}, []byte{'d'}, 5},
		{"index entries", []byte{'i'}, []byte{'j'}, 4},
		{"counts", []byte{'n'}, []byte{'o'}, 3},
		{"month markers are not hashed", []byte{'m'}, []byte{'n'}, 0},
		{"open start", nil, []byte{'d'}, 5},
		{"open end", []byte{'i'}, nil, 4 + 3},
		{"empty range", []byte{'d'}, []byte{'d'}, 0},
		{"content keys a..c", contentKey(0, tContent, []byte("a"))[4:], contentKey(0, tContent, []byte("c"))[4:], 2},
		{"content keys c..", contentKey(0, tContent, []byte("c"))[4:], []byte{'d'}, 3},
	}
	for _, c := range cases {
		d := mustDigest(t, s, shA, c.start, c.end)
		if d.Records != c.want {
			t.Errorf("%s [%q, %q): %d records, want %d", c.name, c.start, c.end, d.Records, c.want)
		}
	}
	// Sub-range digests are independent of the rest of the shard.
	cs, ce := r('c', 'd')
	before := mustDigest(t, s, shA, cs, ce)
	mustApply(t, s, appM(shA, 3, idIn(time.March, 1, 0, 0), "", ver(10, 0, 1)))
	if after := mustDigest(t, s, shA, cs, ce); after != before {
		t.Fatalf("index write changed the content digest: %v -> %v", before, after)
	}
	is, ie := r('i', 'j')
	if mustDigest(t, s, shA, is, ie).Records != 5 {
		t.Fatal("index digest did not see the new entry")
	}
	// The other shard is empty: its digest is the hash of nothing.
	empty := mustDigest(t, s, shB, nil, nil)
	if empty.Records != 0 || empty.Bytes != 0 || empty.Sum != sha256.Sum256(nil) {
		t.Fatalf("empty shard digest %v", empty)
	}
}

func TestDigestDetectsDifferences(t *testing.T) {
	base := digestFixture()
	variants := map[string]func([]Mutation){
		"content version hlc":  func(m []Mutation) { m[1].Version = ver(999, 0, 1) },
		"content version site": func(m []Mutation) { m[1].Version.Site = 2 },
		"content value":        func(m []Mutation) { m[1].Value = []byte("2'") },
		"delete vs put":        func(m []Mutation) { m[4] = putM(shA, "e", "5", m[4].Version) },
		"index version":        func(m []Mutation) { m[6].Version = ver(1000, 1, 1) },
		"index payload":        func(m []Mutation) { m[6].Payload = []byte("Y") },
		"remove vs append":     func(m []Mutation) { m[8] = appM(shA, 2, m[8].ID, "", m[8].Version) },
	}
	ref := newTestStore(t, nil)
	mustApply(t, ref, base...)
	want := mustDigest(t, ref, shA, nil, nil)
	for name, mod := range variants {
		muts := append([]Mutation(nil), base...)
		mod(muts)
		s := newTestStore(t, nil)
		mustApply(t, s, muts...)
		if d := mustDigest(t, s, shA, nil, nil); d.Sum == want.Sum {
			t.Errorf("%s: digest %v equals the reference", name, d)
		}
	}
}

func TestDigestOrderAndShardNumberIndependent(t *testing.T) {
	ctx := context.Background()
	muts := digestFixture()
	for i := range 20 {
		muts = append(muts, putM(shA, fmt.Sprintf("k%02d", i), "v", ver(int64(500+i), 0, uint32(1+i%3))))
		muts = append(muts, putM(shA, fmt.Sprintf("k%02d", i), "w", ver(int64(400+i%5), 0, 2)))
	}
	a := newTestStore(t, nil)
	mustApply(t, a, muts...)

	// b numbers the shard differently (extra shards created first) and
	// receives the mutations in reverse order, one by one.
	opts := testOptions()
	b := openStore(t, "db", opts)
	for _, name := range []string{"x", "y"} {
		if _, err := b.CreateShard(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	setupSchema(t, b)
	if shardNum(t, a, shA) == shardNum(t, b, shA) {
		t.Fatal("fixture: shard numbers should differ")
	}
	for i := len(muts) - 1; i >= 0; i-- {
		mustApply(t, b, muts[i])
	}
	for _, rg := range [][2][]byte{{nil, nil}, {{'c'}, {'d'}}, {{'i'}, nil}} {
		da, db := mustDigest(t, a, shA, rg[0], rg[1]), mustDigest(t, b, shA, rg[0], rg[1])
		if da != db {
			t.Errorf("[%q, %q): digests differ: %v vs %v", rg[0], rg[1], da, db)
		}
	}
}

func TestDigestErrors(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	if _, err := s.Digest(ctx, "nope", nil, nil); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("unknown shard: %v", err)
	}
	if _, err := s.Digest(ctx, "", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty shard name: %v", err)
	}
}
