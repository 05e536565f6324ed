// Package hedge keeps the recent latencies of replica reads, whose p95 is
// how long a read waits for one replica before it also asks the next (a
// hedged read).
package hedge

import (
	"slices"
	"sync"
	"time"
)

// Latencies keeps the latest 512 latencies recorded and their p95,
// recomputed every 64. The zero value is not usable: call New.
type Latencies struct {
	mu      sync.Mutex
	samples [512]time.Duration
	n       int // samples recorded, total
	p95     time.Duration
}

// New returns Latencies whose p95 is initial until 64 are recorded.
func New(initial time.Duration) *Latencies { return &Latencies{p95: initial} }

// Record adds the latency of a read that was answered.
func (l *Latencies) Record(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples[l.n%len(l.samples)] = d
	l.n++
	if l.n%64 == 0 {
		s := slices.Clone(l.samples[:min(l.n, len(l.samples))])
		slices.Sort(s)
		l.p95 = s[len(s)*95/100]
	}
}

// Delay is the hedge delay: the p95, within lo..hi.
func (l *Latencies) Delay(lo, hi time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return min(max(l.p95, lo), hi)
}
