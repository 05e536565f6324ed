package shard

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

// benchStore opens a store on real disk (so syncs are real) with the schema
// of the tests.
func benchStore(b *testing.B) *Store {
	s := openStore(b, b.TempDir(), Options{})
	setupSchema(b, s)
	return s
}

// BenchmarkApplyPutDurable measures single-mutation durable batches from
// parallel goroutines (run with -cpu to vary them); concurrent batches share
// fsyncs.
func BenchmarkApplyPutDurable(b *testing.B) {
	s := benchStore(b)
	hlc := ids.NewHLC(ids.SystemClock{}, time.Second)
	val := make([]byte, 128)
	var n atomic.Uint64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			k := binary.BigEndian.AppendUint64(nil, n.Add(1))
			if _, err := s.Apply(ctx, []Mutation{putM(shA, string(k), string(val), Version{HLC: hlc.Now(), Site: 1})}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(s.Stats().WALSyncs)/float64(b.N), "syncs/op")
}

// BenchmarkApplyBatch100 measures durable batches of 100 puts, one writer.
func BenchmarkApplyBatch100(b *testing.B) {
	s := benchStore(b)
	hlc := ids.NewHLC(ids.SystemClock{}, time.Second)
	val := string(make([]byte, 128))
	muts := make([]Mutation, 100)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for j := range muts {
			muts[j] = putM(shA, fmt.Sprintf("%d-%d", i, j), val, Version{HLC: hlc.Now(), Site: 1})
		}
		if _, err := s.Apply(context.Background(), muts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet measures point reads of 100k keys.
func BenchmarkGet(b *testing.B) {
	s := benchStore(b)
	const keys = 100_000
	hlc := ids.NewHLC(ids.SystemClock{}, time.Second)
	val := string(make([]byte, 128))
	muts := make([]Mutation, 0, 1000)
	for i := range keys {
		muts = append(muts, putM(shA, fmt.Sprint(i), val, Version{HLC: hlc.Now(), Site: 1}))
		if len(muts) == cap(muts) {
			if _, err := s.apply(context.Background(), muts, false, false, nil); err != nil {
				b.Fatal(err)
			}
			muts = muts[:0]
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Get(context.Background(), shA, tContent, []byte(fmt.Sprint(rng.IntN(keys)))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRange20 measures newest-20 ranges of owners with 100 entries over
// two months.
func BenchmarkRange20(b *testing.B) {
	s := benchStore(b)
	const owners = 1000
	hlc := ids.NewHLC(ids.SystemClock{}, time.Second)
	base := time.Now().Add(-40 * 24 * time.Hour)
	muts := make([]Mutation, 0, 1000)
	for o := uint64(1); o <= owners; o++ {
		for e := range 100 {
			id := uint64(ids.NewID(base.Add(time.Duration(e)*9*time.Hour), 1, 0, uint32(o)))
			muts = append(muts, appM(shA, o, id, "p", Version{HLC: hlc.Now(), Site: 1}))
			if len(muts) == cap(muts) {
				if _, err := s.apply(context.Background(), muts, false, false, nil); err != nil {
					b.Fatal(err)
				}
				muts = muts[:0]
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		es, err := s.Range(context.Background(), shA, tIndex, 1+rng.Uint64N(owners), RangeOptions{Limit: 20})
		if err != nil || len(es) != 20 {
			b.Fatal(len(es), err)
		}
	}
}

// BenchmarkApplyIndexBatch measures the CPU of applying batches of 100
// index appends over 4 owners (as a fan-out queue's), without the fsync:
// each append reads its entry, month marker and count, some written
// earlier in the same batch.
func BenchmarkApplyIndexBatch(b *testing.B) {
	s := benchStore(b)
	hlc := ids.NewHLC(ids.SystemClock{}, time.Second)
	gen, err := ids.NewGenerator(1, 1, ids.SystemClock{})
	if err != nil {
		b.Fatal(err)
	}
	muts := make([]Mutation, 100)
	b.ReportAllocs()
	for b.Loop() {
		for j := range muts {
			id := uint64(gen.Next())
			muts[j] = appM(shA, uint64(j%4)+1, id, "payload", Version{HLC: hlc.Now(), Site: 1})
		}
		if _, err := s.apply(context.Background(), muts, false, false, nil); err != nil {
			b.Fatal(err)
		}
	}
}
