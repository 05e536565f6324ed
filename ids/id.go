package ids

import (
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Epoch is the Aviary id epoch: 2024-01-01T00:00:00Z. The time field of an
// ID counts milliseconds since Epoch.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Bit widths and field limits of the ID layout.
const (
	// TimeBits is the width of the milliseconds-since-Epoch field.
	TimeBits = 41
	// SiteBits is the width of the site field.
	SiteBits = 5
	// WorkerBits is the width of the worker field.
	WorkerBits = 5
	// SeqBits is the width of the per-millisecond sequence field.
	SeqBits = 12

	// MaxSite is the largest site number an ID can carry.
	MaxSite = 1<<SiteBits - 1
	// MaxWorker is the largest worker number an ID can carry.
	MaxWorker = 1<<WorkerBits - 1
)

const (
	// epochMillis is Epoch in milliseconds since the Unix epoch.
	epochMillis = 1704067200000

	maxSeq        = 1<<SeqBits - 1
	maxTimeMillis = 1<<TimeBits - 1

	workerShift = SeqBits
	siteShift   = workerShift + WorkerBits
	timeShift   = siteShift + SiteBits

	topBit = 1 << 63
)

// ID is a 64-bit time-ordered identifier. Its layout, most significant bit
// first, is: 1 zero bit, 41 bits of milliseconds since Epoch, 5 bits of
// site, 5 bits of worker and 12 bits of sequence.
type ID uint64

// NewID composes an ID from its fields. t is truncated to the millisecond
// and clamped to the representable range [Epoch, Epoch+2^41ms); site,
// worker and seq are masked to their field widths. NewID is meant for
// tests and range bounds; use a Generator to issue IDs.
func NewID(t time.Time, site, worker, seq uint32) ID {
	return compose(idMillis(t), site, worker, seq)
}

func compose(ms int64, site, worker, seq uint32) ID {
	return ID(uint64(ms)<<timeShift |
		uint64(site&MaxSite)<<siteShift |
		uint64(worker&MaxWorker)<<workerShift |
		uint64(seq&maxSeq))
}

// idMillis returns t as milliseconds since Epoch, clamped to the range of
// the time field.
func idMillis(t time.Time) int64 {
	ms := t.UnixMilli() - epochMillis
	switch {
	case ms < 0:
		return 0
	case ms > maxTimeMillis:
		return maxTimeMillis
	}
	return ms
}

func (id ID) millis() int64 { return int64(id>>timeShift) & maxTimeMillis }

// Time returns the millisecond at which the ID was issued, in UTC.
func (id ID) Time() time.Time {
	return time.UnixMilli(epochMillis + id.millis()).UTC()
}

// Site returns the ID's site field.
func (id ID) Site() uint32 { return uint32(id>>siteShift) & MaxSite }

// Worker returns the ID's worker field.
func (id ID) Worker() uint32 { return uint32(id>>workerShift) & MaxWorker }

// Seq returns the ID's sequence field.
func (id ID) Seq() uint32 { return uint32(id) & maxSeq }

// Month returns the month number (year*12 + month-1) of the ID's UTC time.
func (id ID) Month() uint32 { return MonthOf(id.Time()) }

// String returns the ID in decimal.
func (id ID) String() string { return strconv.FormatUint(uint64(id), 10) }

// Validate reports whether the ID could have been issued by a Generator by
// now. It returns an error wrapping ErrInvalidID if the ID is zero, has
// its top bit set, or carries a time later than now+maxAhead.
func (id ID) Validate(now time.Time, maxAhead time.Duration) error {
	if id == 0 {
		return fmt.Errorf("%w: zero", ErrInvalidID)
	}
	if id&topBit != 0 {
		return fmt.Errorf("%w: %d has the top bit set", ErrInvalidID, uint64(id))
	}
	if t, bound := id.Time(), now.Add(maxAhead); t.After(bound) {
		return fmt.Errorf("%w: %d has time %s, %s in the future, bound is %s",
			ErrInvalidID, uint64(id), t.Format(time.RFC3339Nano), t.Sub(now), maxAhead)
	}
	return nil
}

// MonthOf returns the month number of t in UTC: year*12 + (month-1). Times
// before year 0 give 0.
func MonthOf(t time.Time) uint32 {
	t = t.UTC()
	if t.Year() < 0 {
		return 0
	}
	m := int64(t.Year())*12 + int64(t.Month()-1)
	if m > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(m)
}

// epochMonth is MonthOf(Epoch).
const epochMonth = 2024 * 12

// MinIDForMonth returns the smallest ID whose Month is month: the ID of the
// month's first millisecond with site, worker and sequence 0. Months
// before Epoch's month give 0. Months after the last month the time field
// can represent (2093-09) give 1<<63, one past the largest valid ID, so
// that MinIDForMonth(m+1) is always an exclusive upper bound for month m.
func MinIDForMonth(month uint32) ID {
	if month < epochMonth {
		return 0
	}
	if month-epochMonth > 100*12 {
		return topBit
	}
	t := time.Date(int(month/12), time.Month(month%12+1), 1, 0, 0, 0, 0, time.UTC)
	ms := t.UnixMilli() - epochMillis
	if ms > maxTimeMillis {
		return topBit
	}
	return compose(ms, 0, 0, 0)
}

// MonthString formats a month number as "YYYY-MM", for example "2026-11".
func MonthString(month uint32) string {
	return fmt.Sprintf("%04d-%02d", month/12, month%12+1)
}

// ParseMonth parses a month in the form produced by MonthString: a year of
// at least four decimal digits, a dash and a two-digit month from 01 to 12.
// Errors wrap ErrInvalidMonth.
func ParseMonth(s string) (uint32, error) {
	dash := len(s) - 3
	if dash < 4 || s[dash] != '-' || !allDigits(s[:dash]) || !allDigits(s[dash+1:]) {
		return 0, fmt.Errorf("%w: %q is not of the form YYYY-MM", ErrInvalidMonth, s)
	}
	year, err := strconv.ParseUint(s[:dash], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: year out of range", ErrInvalidMonth, s)
	}
	mon := uint64(s[dash+1]-'0')*10 + uint64(s[dash+2]-'0')
	if mon < 1 || mon > 12 {
		return 0, fmt.Errorf("%w: %q: month must be 01 to 12", ErrInvalidMonth, s)
	}
	m := year*12 + mon - 1
	if m > 1<<32-1 {
		return 0, fmt.Errorf("%w: %q: year out of range", ErrInvalidMonth, s)
	}
	return uint32(m), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Generator issues unique, strictly increasing IDs for one (site, worker)
// pair. It is safe for concurrent use. Two Generators must never share a
// (site, worker) pair.
type Generator struct {
	clock  Clock
	site   uint32
	worker uint32

	mu sync.Mutex
	// lastMs and seq are the time and sequence fields of the last ID
	// issued. They start at (0, 0), as if the zero ID had been issued, so
	// the zero ID never is.
	lastMs int64
	seq    uint32
}

// NewGenerator returns a Generator for the given site and worker that
// reads time from clock; a nil clock means SystemClock. It returns an
// error wrapping ErrInvalidConfig if site > MaxSite or worker > MaxWorker.
func NewGenerator(site, worker uint32, clock Clock) (*Generator, error) {
	if site > MaxSite {
		return nil, fmt.Errorf("%w: site %d exceeds maximum %d", ErrInvalidConfig, site, MaxSite)
	}
	if worker > MaxWorker {
		return nil, fmt.Errorf("%w: worker %d exceeds maximum %d", ErrInvalidConfig, worker, MaxWorker)
	}
	if clock == nil {
		clock = SystemClock{}
	}
	return &Generator{clock: clock, site: site, worker: worker}, nil
}

// Next returns a new ID, greater than every ID the Generator returned
// before. Its time field is the later of the clock's current millisecond
// and the last ID's, so IDs stay monotonic if the clock steps backwards.
// When the 4096 sequence numbers of a millisecond are used up, Next moves
// on to the next millisecond without waiting for the clock to reach it.
//
// Next panics if the time field would overflow, which can only happen once
// the clock or the issued IDs pass September 2093.
func (g *Generator) Next() ID {
	now := idMillis(g.clock.Now())

	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case now > g.lastMs:
		g.lastMs, g.seq = now, 0
	case g.seq < maxSeq:
		g.seq++
	default:
		if g.lastMs == maxTimeMillis {
			panic("ids: id time field exhausted")
		}
		g.lastMs, g.seq = g.lastMs+1, 0
	}
	return compose(g.lastMs, g.site, g.worker, g.seq)
}
