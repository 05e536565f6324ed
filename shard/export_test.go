package shard

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestExportRebuildsTheShard copies a shard page by page into another
// store while writes keep reaching both copies (as a migration's fan-out
// does), and checks that the copies end digest-equal: content, tombstones,
// index entries and their counts.
func TestExportRebuildsTheShard(t *testing.T) {
	rng := testRand(t)
	ctx := context.Background()
	src := newTestStore(t, nil)
	dst := newTestStore(t, nil)
	randomMut := func(i int) Mutation {
		v := ver(int64(1000-i%997), uint16(i%7), uint32(1+rng.IntN(3)))
		switch rng.IntN(4) {
		case 0:
			return putM(shA, fmt.Sprint("k", rng.IntN(200)), fmt.Sprint("v", i), v)
		case 1:
			return delM(shA, fmt.Sprint("k", rng.IntN(200)), v)
		case 2:
			return appM(shA, uint64(1+rng.IntN(5)), idIn(monthOf(rng.IntN(3)), 1+rng.IntN(27), rng.IntN(1000), uint32(i%4096)), "p", v)
		default:
			return remM(shA, uint64(1+rng.IntN(5)), idIn(monthOf(rng.IntN(3)), 1+rng.IntN(27), rng.IntN(1000), uint32(i%4096)), v)
		}
	}
	for i := range 1500 {
		mustApply(t, src, randomMut(i))
	}
	var after []byte
	pages := 0
	for i := 1500; ; i++ {
		muts, next, done, err := src.ExportPage(ctx, shA, after, 37)
		if err != nil {
			t.Fatal(err)
		}
		if len(muts) > 0 {
			mustApply(t, dst, muts...)
		}
		pages++
		// A concurrent write reaches both copies.
		m := randomMut(i)
		mustApply(t, src, m)
		mustApply(t, dst, m)
		if done {
			break
		}
		after = next
	}
	ds, dd := mustDigest(t, src, shA, nil, nil), mustDigest(t, dst, shA, nil, nil)
	if ds != dd {
		t.Fatalf("after %d pages: source %v, copy %v", pages, ds, dd)
	}
	t.Logf("%d pages, digests equal: %v", pages, ds)
	if _, _, _, err := src.ExportPage(ctx, shA, nil, 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
	if _, _, _, err := src.ExportPage(ctx, "nope", nil, 10); err == nil {
		t.Fatal("unknown shard accepted")
	}
}

func monthOf(i int) time.Month { return time.Month(1 + i) }
