package timeline

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

const (
	benchOwners    = 10000 // timelines held by the store of a benchmark
	benchFollowers = 120   // Twitter's average followers in 2009
)

// newBenchStore returns a store holding benchOwners full timelines whose
// entries are ids 1..opts.Capacity (with the default options, 10,000
// timelines of 800 entries: 160 MB of entries). New pushes take ids above
// that.
func newBenchStore(b *testing.B, opts Options) *Store {
	b.Helper()
	s := newTestStore(b, opts)
	full := make([]Entry, s.Capacity())
	for i := range full {
		full[i] = e(uint64(i + 1))
	}
	for o := range uint64(benchOwners) {
		s.Replace(o, full)
	}
	return s
}

// BenchmarkPush pushes one entry to a full timeline: the newest entry
// (the common case: it drops the oldest), or one that arrives late, among
// the newest 64 (it moves up to 64 entries).
func BenchmarkPush(b *testing.B) {
	for _, late := range []bool{false, true} {
		b.Run(fmt.Sprintf("late=%v", late), func(b *testing.B) {
			s := newBenchStore(b, Options{})
			rng := rand.New(rand.NewPCG(1, 2))
			next := uint64(s.Capacity()) + 1
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				owner := uint64(i) % benchOwners
				id := next << 6 // room for late ids below each newest
				if late {
					id -= 1 + rng.Uint64N(63)
				}
				if s.Push(owner, e(id)) != 1 {
					b.Fatal("not added")
				}
				if owner == benchOwners-1 {
					next++
				}
			}
		})
	}
}

// BenchmarkPushMany fans one entry out to the home timelines of
// benchFollowers followers drawn at random from the held timelines, as a
// fan-out worker does for one post.
func BenchmarkPushMany(b *testing.B) {
	s := newBenchStore(b, Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	lists := make([][]uint64, 64)
	for i := range lists {
		lists[i] = make([]uint64, benchFollowers)
		for j := range lists[i] {
			lists[i][j] = rng.Uint64N(benchOwners)
		}
	}
	id := uint64(s.Capacity()) + 1
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s.PushMany(lists[i%len(lists)], e(id))
		id++
	}
	b.ReportMetric(float64(b.N*benchFollowers)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkRange20 reads a page of 20 entries of a full timeline from
// GOMAXPROCS goroutines: the newest page, or a page at a max_id cursor.
func BenchmarkRange20(b *testing.B) {
	s := newBenchStore(b, Options{})
	for _, cursor := range []bool{false, true} {
		b.Run(fmt.Sprintf("cursor=%v", cursor), func(b *testing.B) {
			var seeds atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(seeds.Add(1), 0))
				for pb.Next() {
					var maxID uint64
					if cursor {
						maxID = 20 + rng.Uint64N(uint64(s.Capacity())-20)
					}
					if len(s.Range(rng.Uint64N(benchOwners), maxID, 0, 20)) != 20 {
						b.Fatal("short page")
					}
				}
			})
		})
	}
}

// BenchmarkReplicas places one owner on the rings of 10 nodes.
func BenchmarkReplicas(b *testing.B) {
	r := newTestRings(b, nodeNames(10))
	var sink [NumReplicas]string
	b.ReportAllocs()
	for i := uint64(0); b.Loop(); i++ {
		sink = r.Replicas(i * 0x9e3779b97f4a7c15)
	}
	_ = sink
}

// BenchmarkShards measures contention: GOMAXPROCS goroutines alternate a
// push to one random timeline and a read of 20 entries of another, with
// the store split into 1 to 256 shards.
func BenchmarkShards(b *testing.B) {
	for _, shards := range []int{1, 4, 16, 64, 256} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			s := newBenchStore(b, Options{Capacity: 100, Shards: shards})
			var goroutines atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				g := goroutines.Add(1)
				rng := rand.New(rand.NewPCG(g, 0))
				next := uint64(s.Capacity()) + 1
				for i := 0; pb.Next(); i++ {
					if i%2 == 0 {
						s.Push(rng.Uint64N(benchOwners), e(next<<8|g))
						next++
					} else {
						s.Range(rng.Uint64N(benchOwners), 0, 0, 20)
					}
				}
			})
		})
	}
}
