package main

import (
	"math"
	"runtime/metrics"
	"time"
)

// schedLatency samples the Go runtime's histogram of the time goroutines
// spend runnable before they run (/sched/latencies:seconds): in-process
// sites share the CPUs with their clients, and a request's tail is often
// this wait.
type schedLatency struct {
	counts  []uint64
	buckets []float64
}

const schedMetric = "/sched/latencies:seconds"

func schedNow() schedLatency {
	s := []metrics.Sample{{Name: schedMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return schedLatency{}
	}
	h := s[0].Value.Float64Histogram()
	return schedLatency{counts: append([]uint64(nil), h.Counts...), buckets: h.Buckets}
}

// since returns the q quantiles of the waits between earlier and l; 0 if
// the runtime has no such metric or nothing waited.
func (l schedLatency) since(earlier schedLatency, qs ...float64) []time.Duration {
	out := make([]time.Duration, len(qs))
	if len(l.counts) == 0 || len(earlier.counts) != len(l.counts) {
		return out
	}
	delta := make([]uint64, len(l.counts))
	var total uint64
	for i := range l.counts {
		delta[i] = l.counts[i] - earlier.counts[i]
		total += delta[i]
	}
	if total == 0 {
		return out
	}
	for k, q := range qs {
		want := uint64(math.Ceil(q * float64(total)))
		var seen uint64
		for i, c := range delta {
			seen += c
			if seen >= want {
				// The bucket's upper bound (buckets has one more edge).
				out[k] = time.Duration(l.buckets[i+1] * float64(time.Second))
				if math.IsInf(l.buckets[i+1], 1) {
					out[k] = time.Duration(l.buckets[i] * float64(time.Second))
				}
				break
			}
		}
	}
	return out
}
