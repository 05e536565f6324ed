package shard

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

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
	if d := mustDigest(t, s, shA, nil, nil); d.Records != batches {
		t.Fatalf("%d records after %d single-put batches", d.Records, batches)
	}
}
