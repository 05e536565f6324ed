package ids

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"
)

const (
	logicalBits   = 16
	maxWallMillis = 1<<(64-logicalBits) - 1
)

// Timestamp is a hybrid logical clock timestamp: the high 48 bits hold
// wall milliseconds since the Unix epoch and the low 16 bits a logical
// counter. Timestamps are ordered as uint64s.
type Timestamp uint64

// MakeTimestamp composes a Timestamp. wallMillis is clamped to the 48-bit
// range [0, 2^48).
func MakeTimestamp(wallMillis int64, logical uint16) Timestamp {
	switch {
	case wallMillis < 0:
		wallMillis = 0
	case wallMillis > maxWallMillis:
		wallMillis = maxWallMillis
	}
	return Timestamp(uint64(wallMillis)<<logicalBits | uint64(logical))
}

func (t Timestamp) wallMillis() int64 { return int64(t >> logicalBits) }

// WallTime returns the wall-clock part of the timestamp, in UTC.
func (t Timestamp) WallTime() time.Time {
	return time.UnixMilli(t.wallMillis()).UTC()
}

// Logical returns the logical counter of the timestamp.
func (t Timestamp) Logical() uint16 { return uint16(t) }

// String formats the timestamp as "<wall millis>.<logical>", for example
// "1732240000000.3".
func (t Timestamp) String() string {
	return strconv.FormatInt(t.wallMillis(), 10) + "." + strconv.FormatUint(uint64(t.Logical()), 10)
}

// HLC is a hybrid logical clock. It is safe for concurrent use.
type HLC struct {
	clock    Clock
	maxAhead time.Duration

	mu   sync.Mutex
	last Timestamp // the largest timestamp returned or observed
}

// NewHLC returns an HLC reading wall time from clock (nil means
// SystemClock). Update and Check refuse remote timestamps whose wall time
// is more than maxAhead ahead of clock; a negative maxAhead is treated as
// 0, which refuses any remote timestamp ahead of the local wall clock.
func NewHLC(clock Clock, maxAhead time.Duration) *HLC {
	if clock == nil {
		clock = SystemClock{}
	}
	if maxAhead < 0 {
		maxAhead = 0
	}
	return &HLC{clock: clock, maxAhead: maxAhead}
}

// MaxAhead returns how far ahead of the local wall clock a remote
// timestamp may be.
func (h *HLC) MaxAhead() time.Duration { return h.maxAhead }

// physical returns the current wall time as a Timestamp with logical 0.
func (h *HLC) physical() Timestamp {
	return MakeTimestamp(h.clock.Now().UnixMilli(), 0)
}

// Now returns a timestamp strictly greater than every timestamp the HLC
// returned or observed before. It follows the wall clock when the wall
// clock is ahead; otherwise, including when the wall clock steps
// backwards, it increments the logical counter, and when that would
// overflow 0xFFFF it moves the wall part on by 1ms and resets the counter.
func (h *HLC) Now() Timestamp {
	pt := h.physical()

	h.mu.Lock()
	defer h.mu.Unlock()
	// In the packed form last+1 both increments the logical counter and,
	// on overflow, carries into the wall part with the counter reset.
	h.last = max(pt, h.last+1)
	return h.last
}

// Update observes a remote timestamp and returns a new local timestamp
// greater than both remote and every timestamp the HLC returned or
// observed before, merging them as in the HLC algorithm of Kulkarni et al.
// If remote's wall time is more than MaxAhead ahead of the local wall
// clock, Update returns an error wrapping ErrFarFuture and leaves the HLC
// unchanged.
func (h *HLC) Update(remote Timestamp) (Timestamp, error) {
	pt := h.physical()
	if err := h.check(remote, pt); err != nil {
		return 0, err
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = max(pt, h.last+1, remote+1)
	return h.last, nil
}

// Check returns an error wrapping ErrFarFuture if remote's wall time is
// more than MaxAhead ahead of the local wall clock. It does not change the
// HLC.
func (h *HLC) Check(remote Timestamp) error {
	return h.check(remote, h.physical())
}

func (h *HLC) check(remote, pt Timestamp) error {
	// Compared in milliseconds: a wall time reaches 2^48 ms, and so many
	// milliseconds overflow a Duration.
	aheadMs := remote.wallMillis() - pt.wallMillis()
	if aheadMs > h.maxAhead.Milliseconds() {
		ahead := time.Duration(min(aheadMs, math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
		return fmt.Errorf("%w: %s ahead of local clock, bound is %s", ErrFarFuture, ahead, h.maxAhead)
	}
	return nil
}
