package home

import (
	"testing"

	"github.com/aviarydb/aviary/timeline"
)

// BenchmarkCatchUp catches up a node of a 2-node site whose other node
// holds 1,000 timelines of 800 entries each: the copy is read from that
// node's memory and merged into the node, which holds none of them, over
// loopback gRPC (one source of a catch-up, and what a restart's refill
// costs the node that is refilled).
func BenchmarkCatchUp(b *testing.B) {
	const owners, entries = 1000, 800
	es := make([]timeline.Entry, entries)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		cs := newCatchUpSite(b, catchUpOpts{capacity: entries, repairQueue: 16})
		for o := uint64(1); o <= owners; o++ {
			for i := range es {
				es[i] = timeline.Entry{StatusID: o<<20 | uint64(entries-i), AuthorID: uint64(i)}
			}
			cs.a.store.Merge(o, es)
		}
		v, _ := cs.a.current()
		b.StartTimer()
		n, _, err := cs.a.catchUpFrom(b.Context(), v, "b", nil)
		if err != nil {
			b.Fatal(err)
		}
		if n < owners {
			b.Fatalf("%d timelines merged, want %d", n, owners)
		}
	}
	b.ReportMetric(float64(owners), "timelines/op")
}
