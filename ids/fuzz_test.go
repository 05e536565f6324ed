package ids

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseMonth parses arbitrary month strings, as the admin service reads
// a retention bound. It must never panic; errors wrap ErrInvalidMonth. A
// month it returns formats back to a string that parses to it, the very
// input when that has a four-digit year; every month number formats to a
// string that parses back to it.
func FuzzParseMonth(f *testing.F) {
	f.Add("2026-05", uint32(2026*12+4))
	f.Add("0000-01", uint32(0))
	f.Add("357913941-04", ^uint32(0))
	f.Add("357913941-05", uint32(12))
	f.Add("02026-12", uint32(1))
	f.Add("2026-13", uint32(7))
	f.Add("-2026-01", uint32(3))
	f.Add("+999-01", uint32(5))
	f.Add("", uint32(0))
	f.Fuzz(func(t *testing.T, s string, month uint32) {
		m, err := ParseMonth(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidMonth) {
				t.Fatalf("ParseMonth(%q): %v does not wrap ErrInvalidMonth", s, err)
			}
		} else {
			back := MonthString(m)
			if m2, err := ParseMonth(back); err != nil || m2 != m {
				t.Fatalf("ParseMonth(%q) = %d, formatted %q, parsed back as %d (%v)", s, m, back, m2, err)
			}
			if len(s) == 7 && back != s {
				t.Fatalf("ParseMonth(%q) = %d, which formats as %q", s, m, back)
			}
		}
		str := MonthString(month)
		if got, err := ParseMonth(str); err != nil || got != month {
			t.Fatalf("MonthString(%d) = %q, parsed as %d (%v)", month, str, got, err)
		}
	})
}

// FuzzDecodeID reads arbitrary 64-bit ids and HLC timestamps, as they
// arrive in requests and replicated versions, into their fields. Nothing
// may panic. An id's fields compose back to it (but for the top bit, which
// makes it invalid), it lies in its month's range of ids, and its month
// formats and parses back. A timestamp's wall time and logical counter
// compose back to it and print as they are. An HLC never accepts a remote
// timestamp further ahead of its clock than its bound, and otherwise
// moves past it.
func FuzzDecodeID(f *testing.F) {
	now := time.Date(2026, 5, 15, 12, 0, 0, 0, time.UTC)
	f.Add(uint64(NewID(now, 3, 4, 5)), uint64(MakeTimestamp(now.UnixMilli(), 7)))
	f.Add(uint64(0), uint64(0))
	f.Add(^uint64(0), ^uint64(0))
	f.Add(uint64(1)<<63, uint64(MakeTimestamp(now.UnixMilli()+10_000, 0)))
	f.Add(uint64(NewID(Epoch, 0, 0, 0)), uint64(MakeTimestamp(1<<47, 1)))
	f.Fuzz(func(t *testing.T, raw, rawTS uint64) {
		id := ID(raw)
		plain := id &^ topBit
		if got := NewID(id.Time(), id.Site(), id.Worker(), id.Seq()); got != plain {
			t.Fatalf("fields of %d compose to %d", raw, got)
		}
		if err := id.Validate(now, 10*time.Second); (raw == 0 || raw&topBit != 0) && !errors.Is(err, ErrInvalidID) {
			t.Fatalf("Validate(%d) = %v", raw, err)
		}
		m := id.Month()
		if lo := MinIDForMonth(m); lo > plain {
			t.Fatalf("id %d of month %s is below the month's first id %d", plain, MonthString(m), lo)
		}
		if m < ^uint32(0) {
			if hi := MinIDForMonth(m + 1); hi <= plain {
				t.Fatalf("id %d of month %s is at or above the next month's first id %d", plain, MonthString(m), hi)
			}
		}
		if got, err := ParseMonth(MonthString(m)); err != nil || got != m {
			t.Fatalf("month %d of id %d formats as %q, parses as %d (%v)", m, raw, MonthString(m), got, err)
		}
		if id.String() != strconv.FormatUint(raw, 10) {
			t.Fatalf("ID(%d).String() = %q", raw, id.String())
		}

		ts := Timestamp(rawTS)
		if got := MakeTimestamp(ts.wallMillis(), ts.Logical()); got != ts {
			t.Fatalf("timestamp %d recomposes as %d", rawTS, got)
		}
		if ts.WallTime().UnixMilli() != ts.wallMillis() {
			t.Fatalf("timestamp %d: wall time %s, millis %d", rawTS, ts.WallTime(), ts.wallMillis())
		}
		wall, logical, ok := strings.Cut(ts.String(), ".")
		if w, err := strconv.ParseInt(wall, 10, 64); !ok || err != nil || w != ts.wallMillis() || logical != strconv.Itoa(int(ts.Logical())) {
			t.Fatalf("timestamp %d prints as %q", rawTS, ts.String())
		}
		const bound = 10 * time.Second
		h := NewHLC(NewManualClock(now), bound)
		got, err := h.Update(ts)
		ahead := ts.WallTime().Sub(now)
		if ts.wallMillis()-now.UnixMilli() > bound.Milliseconds() {
			if !errors.Is(err, ErrFarFuture) {
				t.Fatalf("Update(%d), %d ms ahead of the clock (bound %s) = %d, %v", rawTS, ts.wallMillis()-now.UnixMilli(), bound, got, err)
			}
			if h.Check(ts) == nil {
				t.Fatalf("Check accepts %d, %s ahead", rawTS, ahead)
			}
			return
		}
		if err != nil || got <= ts {
			t.Fatalf("Update(%d) = %d, %v", rawTS, got, err)
		}
	})
}
