package home

import (
	"fmt"
	"testing"

	"github.com/aviarydb/aviary/timeline"
)

// The timelines the catch-up and refill benchmarks copy.
const benchOwners, benchEntries = 1000, 800

// fillBench gives st benchOwners timelines of benchEntries entries each.
func fillBench(st *timeline.Store) {
	es := make([]timeline.Entry, benchEntries)
	for o := uint64(1); o <= benchOwners; o++ {
		for i := range es {
			es[i] = timeline.Entry{StatusID: o<<20 | uint64(benchEntries-i), AuthorID: uint64(i)}
		}
		st.Merge(o, es)
	}
}

// BenchmarkCatchUp catches up a node of a 2-node site whose other node
// holds 1,000 timelines of 800 entries each: the copy is read from that
// node's memory and merged into the node, which holds none of them, over
// loopback gRPC (one source of a catch-up).
func BenchmarkCatchUp(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		cs := newCatchUpSite(b, catchUpOpts{capacity: benchEntries, repairQueue: 16})
		fillBench(cs.a.store)
		v, _ := cs.a.current()
		b.StartTimer()
		n, _, err := cs.a.catchUpFrom(b.Context(), v, "b", nil)
		if err != nil {
			b.Fatal(err)
		}
		if n < benchOwners {
			b.Fatalf("%d timelines merged, want %d", n, benchOwners)
		}
	}
	b.ReportMetric(benchOwners, "timelines/op")
}

// BenchmarkRefill refills a node from a sibling that holds 1,000
// timelines of 800 entries each, none of which the node holds, over
// loopback gRPC: one sibling's share of a restart's refill, with the
// export sent as entries and as columns (packed, as refills ask).
func BenchmarkRefill(b *testing.B) {
	for _, packed := range []bool{false, true} {
		b.Run(fmt.Sprintf("packed=%v", packed), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				cs := newCatchUpSite(b, catchUpOpts{capacity: benchEntries, repairQueue: 16})
				fillBench(cs.stB)
				v, _ := cs.a.current()
				b.StartTimer()
				n := 0
				if err := cs.a.exportFrom(b.Context(), v, "b", "a", packed, cs.a.mergeExport(&n)); err != nil {
					b.Fatal(err)
				}
				if n < benchOwners {
					b.Fatalf("%d timelines merged, want %d", n, benchOwners)
				}
			}
			b.ReportMetric(benchOwners, "timelines/op")
		})
	}
}
