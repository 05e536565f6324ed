package ops

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// progressClock is a fake clock that moves only when told.
type progressClock struct{ t time.Time }

func (c *progressClock) now() time.Time          { return c.t }
func (c *progressClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestProgress(terminal bool) (*progress, *bytes.Buffer, *progressClock) {
	var buf bytes.Buffer
	clock := &progressClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	return newProgress(&buf, terminal, "copy", clock.now), &buf, clock
}

// lastDraw returns the last line drawn on a terminal, without the \r and
// the clear-to-end.
func lastDraw(t *testing.T, out string) string {
	t.Helper()
	i := strings.LastIndex(out, "\r")
	if i < 0 {
		t.Fatalf("nothing drawn: %q", out)
	}
	line := strings.TrimSuffix(out[i+1:], "\n")
	if !strings.HasSuffix(line, clearToEOL) {
		t.Fatalf("drawn line %q does not end with clear-to-end", line)
	}
	return strings.TrimSuffix(line, clearToEOL)
}

// lines splits plain output into its lines.
func lines(out string) []string {
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// steady feeds updates every second from 1s to n s: 50,000 records and
// 4.9 MB a second.
func steady(p *progress, clock *progressClock, n int) {
	for i := 1; i <= n; i++ {
		clock.advance(time.Second)
		p.update(uint64(50_000*i), uint64(4_900_000*i))
	}
}

func TestProgressTerminalLine(t *testing.T) {
	p, buf, clock := newTestProgress(true)
	p.setTotal(1_000_000, 98_000_000)
	steady(p, clock, 9)
	// The window's anchor is the update at 4s: 250,000 records and 24.5 MB
	// in 5s.
	want := "copy [=========>          ]  45.0%  450,000/1,000,000 records  44.1/98.0 MB  4.9 MB/s  50,000 rec/s  ETA 11s"
	if got := lastDraw(t, buf.String()); got != want {
		t.Errorf("line\n got %q\nwant %q", got, want)
	}
	if strings.Contains(buf.String(), "\n") {
		t.Errorf("a line ended before finish: %q", buf.String())
	}

	clock.advance(time.Second)
	p.finish("cancelled")
	out := buf.String()
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("finish should end the one line: %q", out)
	}
	// Final rates count from the first update (at 1s, 50,000 records):
	// 400,000 records in 9s.
	want = "copy [=========>          ]  45.0%  450,000/1,000,000 records  44.1/98.0 MB  4.4 MB/s  44,444 rec/s  took 10s  cancelled"
	if got := lastDraw(t, out); got != want {
		t.Errorf("final line\n got %q\nwant %q", got, want)
	}

	// Nothing after finish.
	n := buf.Len()
	clock.advance(time.Second)
	p.update(500_000, 49_000_000)
	p.finish("again")
	if buf.Len() != n {
		t.Errorf("output after finish: %q", buf.String()[n:])
	}
}

func TestProgressTerminalThrottle(t *testing.T) {
	p, buf, clock := newTestProgress(true)
	p.setTotal(1000, 0)
	// An update every 10ms for 1s: drawn at 10ms, then whenever 100ms have
	// passed since the last redraw (110ms, 210ms, ..., 910ms).
	for i := 1; i <= 100; i++ {
		clock.advance(10 * time.Millisecond)
		p.update(uint64(i), uint64(i*100))
	}
	if got := strings.Count(buf.String(), "\r"); got != 10 {
		t.Errorf("%d redraws in 1s of updates every 10ms, want 10", got)
	}
	if strings.Contains(buf.String(), "\n") {
		t.Errorf("newline before finish: %q", buf.String())
	}
	p.finish("done")
	out := buf.String()
	if got := strings.Count(out, "\r"); got != 11 {
		t.Errorf("finish did not redraw: %d redraws", got)
	}
	if !strings.HasSuffix(out, clearToEOL+"\n") {
		t.Errorf("final line does not end with clear-to-end and newline: %q", out)
	}
	if got := lastDraw(t, out); !strings.Contains(got, "100/1,000 records") || !strings.HasSuffix(got, "  done") {
		t.Errorf("final line %q lacks the final count or the note", got)
	}
}

func TestProgressPlainThrottle(t *testing.T) {
	p, buf, clock := newTestProgress(false)
	p.setTotal(1_000_000, 98_000_000)
	// Updates every 100ms for 4.9s: under the 5s between lines.
	for i := 1; i <= 49; i++ {
		clock.advance(100 * time.Millisecond)
		p.update(uint64(i), uint64(i))
	}
	if buf.Len() != 0 {
		t.Fatalf("a line before 5s: %q", buf.String())
	}

	p, buf, clock = newTestProgress(false)
	p.setTotal(1_000_000, 98_000_000)
	steady(p, clock, 12) // lines at 5s and 10s
	got := lines(buf.String())
	want := []string{
		"copy: 250000/1000000 records (25.0%), 24.5/98.0 MB, 4.9 MB/s, 50000 rec/s, eta 15s",
		"copy: 500000/1000000 records (50.0%), 49.0/98.0 MB, 4.9 MB/s, 50000 rec/s, eta 10s",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines\n got %q\nwant %q", got, want)
	}
	p.finish("done")
	got = lines(buf.String())
	if len(got) != 3 || got[2] != "copy: 600000/1000000 records (60.0%), 58.8/98.0 MB, 4.9 MB/s, 50000 rec/s, took 12s, done" {
		t.Errorf("after finish: %q", got)
	}
	if strings.ContainsAny(buf.String(), "\r\x1b") {
		t.Errorf("control characters in plain output: %q", buf.String())
	}
}

func TestProgressRatesSlidingWindow(t *testing.T) {
	p, _, clock := newTestProgress(false)
	var records uint64
	step := func(n int, perTick uint64) {
		for range n {
			clock.advance(500 * time.Millisecond)
			records += perTick
			p.update(records, records*100)
		}
	}
	step(20, 5000) // 10s at 10,000 rec/s
	step(4, 500)   // 2s at 1,000 rec/s
	// The window is 7s..12s: 3s at 10,000 and 2s at 1,000 rec/s.
	if s := p.snapshot(false, clock.now()); !s.rateOK || s.recRate != 6400 || s.byteRate != 640_000 {
		t.Errorf("mixed window: rates %v rec/s, %v B/s (ok %v), want 6400 and 640000", s.recRate, s.byteRate, s.rateOK)
	}
	step(16, 500) // 8s more at 1,000 rec/s
	if s := p.snapshot(false, clock.now()); s.recRate != 1000 {
		t.Errorf("after 10s at 1,000 rec/s the rate is %v, want 1000 (not the average since the start)", s.recRate)
	}
	// Rates at the finish are over the whole run, from its first update
	// (at 0.5s, 5,000 records): 105,000 records in 19.5s.
	if s := p.snapshot(true, clock.now()); math.Abs(s.recRate-105_000/19.5) > 1e-6 {
		t.Errorf("final rate %v, want %v", s.recRate, 105_000/19.5)
	}
}

func TestProgressWindowBounded(t *testing.T) {
	p, _, clock := newTestProgress(true)
	for i := 1; i <= 20_000; i++ {
		clock.advance(time.Millisecond)
		p.update(uint64(i), uint64(i))
	}
	if n := len(p.window); n > int(progressWindow/progressSampleGap)+3 {
		t.Errorf("window holds %d samples after an update every millisecond", n)
	}
	if s := p.snapshot(false, clock.now()); s.recRate < 999 || s.recRate > 1001 {
		t.Errorf("rate %v rec/s, want 1000", s.recRate)
	}
}

// plainAt returns the plain line p would print now.
func plainAt(p *progress) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.plainLine(p.snapshot(false, p.now()))
}

func TestProgressETA(t *testing.T) {
	for _, tc := range []struct {
		name           string
		records, bytes uint64 // totals
		want           string
	}{
		// 100 records and 2,500 bytes in the first second.
		{"bytes", 0, 10_000, "copy: 100 records, 2.5/10.0 kB (25.0%), 2.5 kB/s, 100 rec/s, eta 3s"},
		{"records when bytes unknown", 1000, 0, "copy: 100/1000 records (10.0%), 2.5 kB, 2.5 kB/s, 100 rec/s, eta 9s"},
		{"bytes before records", 1000, 10_000, "copy: 100/1000 records (25.0%), 2.5/10.0 kB, 2.5 kB/s, 100 rec/s, eta 3s"},
		{"hours", 0, 100_000_000, "copy: 100 records, 0.0/100.0 MB (0.0%), 2.5 kB/s, 100 rec/s, eta 11h06m"},
		{"unknown total", 0, 0, "copy: 100 records, 2.5 kB, 2.5 kB/s, 100 rec/s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, clock := newTestProgress(false)
			p.setTotal(tc.records, tc.bytes)
			clock.advance(time.Second)
			p.update(100, 2500)
			if got := plainAt(p); got != tc.want {
				t.Errorf("\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestProgressUnknownTotal(t *testing.T) {
	p, buf, clock := newTestProgress(true)
	steady(p, clock, 9)
	want := "copy  450,000 records  44.1 MB  4.9 MB/s  50,000 rec/s"
	if got := lastDraw(t, buf.String()); got != want {
		t.Errorf("line\n got %q\nwant %q", got, want)
	}
	p.finish("")
	if got := lastDraw(t, buf.String()); got != "copy  450,000 records  44.1 MB  4.9 MB/s  50,000 rec/s  took 9s" {
		t.Errorf("final line %q", got)
	}
	for _, bad := range []string{"%", "[", "ETA"} {
		if strings.Contains(strings.ReplaceAll(buf.String(), clearToEOL, ""), bad) {
			t.Errorf("output with an unknown total shows %q: %q", bad, buf.String())
		}
	}
}

func TestProgressOverTotal(t *testing.T) {
	p, buf, clock := newTestProgress(true)
	p.setTotal(100, 1000)
	clock.advance(time.Second)
	p.update(50, 500)
	clock.advance(time.Second)
	p.update(120, 1200) // the source grew during the copy
	want := "copy [====================]  100.0%  120/100 records  1.2/1.0 kB  600 B/s  60 rec/s  ETA soon"
	if got := lastDraw(t, buf.String()); got != want {
		t.Errorf("line\n got %q\nwant %q", got, want)
	}
	if got := plainAt(p); got != "copy: 120/100 records (100.0%), 1.2/1.0 kB, 600 B/s, 60 rec/s, eta soon" {
		t.Errorf("plain line %q", got)
	}
	// Exactly at the total is no different.
	clock.advance(time.Second)
	p.update(100, 1000)
	if got := lastDraw(t, buf.String()); !strings.HasSuffix(got, "ETA soon") || !strings.Contains(got, "100.0%") {
		t.Errorf("at the total: %q", got)
	}
}

func TestProgressNoDivisionByZero(t *testing.T) {
	// An update at the very start: no time has passed, so no rate.
	p, buf, _ := newTestProgress(true)
	p.setTotal(100, 1000)
	p.update(10, 100)
	want := "copy [==>                 ]  10.0%  10/100 records  0.1/1.0 kB  -- MB/s  -- rec/s  ETA --"
	if got := lastDraw(t, buf.String()); got != want {
		t.Errorf("line\n got %q\nwant %q", got, want)
	}
	p.finish("done") // at the start too
	if got := lastDraw(t, buf.String()); !strings.HasSuffix(got, "-- MB/s  -- rec/s  took <1s  done") {
		t.Errorf("final line %q", got)
	}

	// A stalled copy: the rate over the window is zero, the ETA unknown.
	p, buf, clock := newTestProgress(false)
	p.setTotal(100, 1000)
	clock.advance(time.Second)
	p.update(10, 100)
	for range 10 {
		clock.advance(time.Second)
		p.update(10, 100)
	}
	if got := plainAt(p); got != "copy: 10/100 records (10.0%), 0.1/1.0 kB, 0 B/s, 0 rec/s, eta --" {
		t.Errorf("stalled: %q", got)
	}

	// Counts that go back (the copy restarted) reset the window rather
	// than give a negative rate.
	clock.advance(time.Second)
	p.update(5, 50)
	if got := plainAt(p); got != "copy: 5/100 records (5.0%), 0.1/1.0 kB, -- MB/s, -- rec/s, eta --" {
		t.Errorf("after going back: %q", got)
	}
	clock.advance(time.Second)
	p.update(15, 150)
	if s := p.snapshot(false, clock.now()); !s.rateOK || s.recRate != 10 {
		t.Errorf("rate after a restart %v (ok %v), want 10", s.recRate, s.rateOK)
	}
	for _, bad := range []string{"NaN", "Inf", "-1", "e+"} {
		if strings.Contains(buf.String(), bad) {
			t.Errorf("output shows %q: %q", bad, buf.String())
		}
	}
}

func TestProgressFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{groupDigits(0), "0"},
		{groupDigits(999), "999"},
		{groupDigits(1000), "1,000"},
		{groupDigits(1_000_000), "1,000,000"},
		{groupDigits(12_345_678), "12,345,678"},
		{decimalBytes(0), "0 B"},
		{decimalBytes(999), "999 B"},
		{decimalBytes(12_300_000), "12.3 MB"},
		{decimalBytes(2e12), "2.0 TB"},
		{bytePair(44_100_000, 98_000_000), "44.1/98.0 MB"},
		{bytePair(500, 2_000_000), "0.0/2.0 MB"},
		{progressBar(0), "[>                   ]"},
		{progressBar(0.45), "[=========>          ]"},
		{progressBar(0.999), "[===================>]"},
		{progressBar(1), "[====================]"},
		{shortDuration(0.2), "<1s"},
		{shortDuration(4.4), "4s"},
		{shortDuration(80), "1m20s"},
		{shortDuration(7500), "2h05m"},
		{shortDuration(3*86400 + 4*3600), "3d04h"},
		{shortDuration(1e12), ">99d"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestProgressIsTerminal(t *testing.T) {
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a bytes.Buffer is a terminal")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a regular file is a terminal")
	}
	var nilFile *os.File
	if isTerminal(nilFile) {
		t.Error("a nil *os.File is a terminal")
	}
}
