package home

import (
	"testing"

	"github.com/aviarydb/aviary/timeline"
)

// BenchmarkCatchUp catches up a node of a 2-node site over loopback gRPC:
// 1,000 timelines of 800 entries each, the site's other node holding them
// all (the cost of one source of a catch-up, and of a restart's refill
// from it).
func BenchmarkCatchUp(b *testing.B) {
	const owners, entries = 1000, 800
	cs := newCatchUpSite(b, catchUpOpts{capacity: entries, repairQueue: 16})
	st := cs.a.store
	es := make([]timeline.Entry, entries)
	for o := uint64(1); o <= owners; o++ {
		for i := range es {
			es[i] = timeline.Entry{StatusID: o<<20 | uint64(entries-i), AuthorID: uint64(i)}
		}
		st.Merge(o, es)
	}
	v, _ := cs.a.current()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
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
