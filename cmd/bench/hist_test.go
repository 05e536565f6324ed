package main

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestBuckets checks that every value falls in a bucket that holds it, that
// buckets are contiguous, and that they are at most 1/histSub wide relative
// to their values.
func TestBuckets(t *testing.T) {
	prevEnd := int64(0)
	for i := 0; i < histBuckets; i++ {
		lo, w := bucketRange(i)
		if lo != prevEnd {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevEnd)
		}
		if i >= 2*histSub && float64(w)/float64(lo) > 1.0/histSub {
			t.Fatalf("bucket %d [%d, +%d) is wider than 1/%d of its values", i, lo, w, histSub)
		}
		if got := bucketOf(lo); got != i {
			t.Fatalf("bucketOf(%d) = %d, want %d", lo, got, i)
		}
		if got := bucketOf(lo + w - 1); got != i {
			t.Fatalf("bucketOf(%d) = %d, want %d", lo+w-1, got, i)
		}
		prevEnd = lo + w
		if prevEnd < 0 { // the last bucket ends at 2^63
			if i != histBuckets-1 {
				t.Fatalf("bucket %d overflows int64 before the last bucket", i)
			}
		}
	}
	if got := bucketOf(math.MaxInt64); got != histBuckets-1 {
		t.Fatalf("bucketOf(MaxInt64) = %d, want %d", got, histBuckets-1)
	}
}

func TestQuantiles(t *testing.T) {
	uniform := make([]int64, 100000) // 1µs..100ms in 1µs steps
	for i := range uniform {
		uniform[i] = int64(i+1) * int64(time.Microsecond)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(uniform), func(i, j int) { uniform[i], uniform[j] = uniform[j], uniform[i] })
	bimodal := make([]int64, 0, 1000) // 990 at 1ms, 10 at 50ms
	for i := 0; i < 990; i++ {
		bimodal = append(bimodal, int64(time.Millisecond))
	}
	for i := 0; i < 10; i++ {
		bimodal = append(bimodal, 50*int64(time.Millisecond))
	}
	small := []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9} // exact region

	tests := []struct {
		name   string
		values []int64
		q      float64
		want   int64
		relErr float64 // allowed relative error; 0 means exact
	}{
		{"empty", nil, 0.5, 0, 0},
		{"single p0", []int64{12345}, 0, 12345, 0},
		{"single p50", []int64{12345}, 0.5, 12345, 0},
		{"single p100", []int64{12345}, 1, 12345, 0},
		{"small p50", small, 0.5, 4, 0},
		{"small p90", small, 0.9, 8, 0},
		{"small p100", small, 1, 9, 0},
		{"uniform p50", uniform, 0.50, 50 * int64(time.Millisecond), 0.01},
		{"uniform p99", uniform, 0.99, 99 * int64(time.Millisecond), 0.01},
		{"uniform p999", uniform, 0.999, 99900 * int64(time.Microsecond), 0.01},
		{"uniform max", uniform, 1, 100 * int64(time.Millisecond), 0},
		{"uniform min", uniform, 0, int64(time.Microsecond), 0},
		{"bimodal p50", bimodal, 0.50, int64(time.Millisecond), 0.01},
		{"bimodal p99", bimodal, 0.99, int64(time.Millisecond), 0.01},
		{"bimodal p991", bimodal, 0.991, 50 * int64(time.Millisecond), 0.01},
		{"bimodal p999", bimodal, 0.999, 50 * int64(time.Millisecond), 0.01},
		{"huge", []int64{math.MaxInt64}, 0.5, math.MaxInt64, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistogram()
			for _, v := range tc.values {
				h.Record(v)
			}
			got := h.Quantile(tc.q)
			if tc.relErr == 0 {
				if got != tc.want {
					t.Fatalf("Quantile(%v) = %d, want exactly %d", tc.q, got, tc.want)
				}
				return
			}
			if rel := math.Abs(float64(got-tc.want)) / float64(tc.want); rel > tc.relErr {
				t.Fatalf("Quantile(%v) = %d, want %d within %.1f%% (off by %.2f%%)", tc.q, got, tc.want, 100*tc.relErr, 100*rel)
			}
		})
	}
}

// TestMerge checks that merging per-goroutine histograms equals recording
// everything in one.
func TestMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	all := NewHistogram()
	parts := []*Histogram{NewHistogram(), NewHistogram(), NewHistogram(), NewHistogram()}
	for i := 0; i < 50000; i++ {
		v := int64(rng.ExpFloat64() * 2e6)
		all.Record(v)
		parts[i%len(parts)].Record(v)
	}
	merged := NewHistogram()
	merged.Merge(NewHistogram()) // an empty one changes nothing
	for _, p := range parts {
		merged.Merge(p)
	}
	if merged.Count() != all.Count() || merged.Max() != all.Max() || merged.Min() != all.Min() {
		t.Fatalf("merged count/min/max %d/%d/%d, want %d/%d/%d",
			merged.Count(), merged.Min(), merged.Max(), all.Count(), all.Min(), all.Max())
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		if a, b := merged.Quantile(q), all.Quantile(q); a != b {
			t.Fatalf("Quantile(%v): merged %d, single %d", q, a, b)
		}
	}
	if math.Abs(merged.Mean()-all.Mean()) > 1e-6*all.Mean() {
		t.Fatalf("mean: merged %v, single %v", merged.Mean(), all.Mean())
	}
}
