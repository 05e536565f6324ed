package shard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	dto "github.com/prometheus/client_model/go"
)

// The WAL's fsync histogram is exported at a few of Pebble's bounds, each
// with its exact count.
func TestSyncBuckets(t *testing.T) {
	var bs []*dto.Bucket
	for i, ub := range pebble.FsyncLatencyBuckets {
		bs = append(bs, &dto.Bucket{UpperBound: &ub, CumulativeCount: new(uint64(i))})
	}
	got := syncBuckets(bs)
	if len(got) != len(syncBucketBounds) {
		t.Fatalf("%d buckets, want %d: %v", len(got), len(syncBucketBounds), got)
	}
	for i, ub := range pebble.FsyncLatencyBuckets {
		s := ub / 1e9
		n, ok := got[s]
		if !ok {
			continue
		}
		if n != uint64(i) {
			t.Errorf("bucket %v s counts %d, want Pebble's %d", s, n, i)
		}
	}
	for _, want := range syncBucketBounds {
		ok := false
		for s := range got {
			if s >= want*(1-1e-9) && s < want*1.25 {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no bucket at or just above %v s in %v", want, got)
		}
	}
	if _, ok := got[(100 * time.Microsecond).Seconds()]; !ok {
		t.Errorf("no bucket at exactly 0.1 ms: %v", got)
	}
}

// Concurrent durable batches share WAL fsyncs.
func TestGroupCommitSharesSyncs(t *testing.T) {
	if testing.Short() {
		t.Skip("real-disk fsyncs")
	}
	opts := testOptions()
	opts.FS = vfs.Default
	s := openStore(t, t.TempDir(), opts)
	setupSchema(t, s)
	ctx := context.Background()

	const writers, perWriter = 32, 50
	const batches = writers * perWriter
	before := s.Stats().WALSyncs
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				m := putM(shA, fmt.Sprintf("w%02d-%03d", w, i), "v", ver(1000, uint16(i), uint32(w)))
				if _, err := s.Apply(ctx, []Mutation{m}); err != nil {
					t.Errorf("Apply: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	syncs := s.Stats().WALSyncs - before
	t.Logf("%d durable batches, %d WAL fsyncs (%.3f fsyncs per batch)", batches, syncs, float64(syncs)/batches)
	if syncs == 0 {
		t.Fatal("no WAL fsyncs recorded for durable batches")
	}
	if syncs >= batches {
		t.Fatalf("%d fsyncs for %d batches: group commit shared none", syncs, batches)
	}
	st := s.Stats()
	if st.WALSyncSeconds <= 0 {
		t.Fatalf("%d WAL fsyncs took %v s in all", st.WALSyncs, st.WALSyncSeconds)
	}
	var last uint64
	for _, b := range slices.Sorted(maps.Keys(st.WALSyncBuckets)) {
		n := st.WALSyncBuckets[b]
		if n < last || n > st.WALSyncs {
			t.Fatalf("fsync bucket %v s counts %d: not between the one below (%d) and all fsyncs (%d)", b, n, last, st.WALSyncs)
		}
		last = n
	}
	if last != st.WALSyncs {
		t.Fatalf("the largest fsync bucket counts %d of %d fsyncs", last, st.WALSyncs)
	}
	if d := mustDigest(t, s, shA, nil, nil); d.Records != batches {
		t.Fatalf("%d records after %d single-put batches", d.Records, batches)
	}
}
