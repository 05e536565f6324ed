// Package hedge keeps the recent latencies of replica reads, whose p95 is
// how long a read waits for one replica before it also asks the next (a
// hedged read).
package hedge

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// The default bounds of the hedge delay, and the delay used until enough
// latencies are recorded for a p95.
const (
	DefaultMin = time.Millisecond
	DefaultMax = 50 * time.Millisecond
	initial    = 5 * time.Millisecond
)

// CheckBounds reports bounds lo..hi that are not a range of positive
// delays.
func CheckBounds(lo, hi time.Duration) error {
	if lo <= 0 || hi < lo {
		return fmt.Errorf("hedge delay bounds %v..%v are not a range", lo, hi)
	}
	return nil
}

// Latencies keeps the latest 512 latencies recorded and their p95,
// recomputed every 64. The zero value is not usable: call New.
type Latencies struct {
	mu      sync.Mutex
	samples [512]time.Duration
	n       int // samples recorded, total
	p95     time.Duration
}

// New returns Latencies whose p95 is 5ms until 64 are recorded.
func New() *Latencies { return &Latencies{p95: initial} }

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
