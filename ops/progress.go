package ops

import (
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Progress reporting tunables.
const (
	// progressWindow is how far back the rates look: they follow the copy's
	// current speed rather than its average since the start.
	progressWindow = 5 * time.Second
	// progressRedraw is the least time between two redraws of the line on
	// a terminal.
	progressRedraw = 100 * time.Millisecond
	// progressLogEvery is the least time between two lines when the output
	// is not a terminal (a log file, a pipe).
	progressLogEvery = 5 * time.Second
	// progressSampleGap is the least time between two samples kept for
	// the rates (but the newest), which bounds the window's length.
	progressSampleGap = 100 * time.Millisecond
	// progressBarWidth is the number of cells between the bar's brackets.
	progressBarWidth = 20
	// clearToEOL is the ANSI sequence that erases the rest of the line.
	clearToEOL = "\x1b[K"
)

// progressSample is one update: the cumulative counts at a time.
type progressSample struct {
	at             time.Time
	records, bytes uint64
}

// progress shows the progress of a long copy (an online shard migration):
// records and bytes copied against the totals when known, the current
// rates and the time left. On a terminal it redraws one line in place at
// most every progressRedraw, from the first update on; otherwise it prints
// a plain line at most every progressLogEvery, the first one
// progressLogEvery after the start (a short copy logs only its final line).
// finish prints the final state, with the average rates over the whole
// copy and the time it took, and ends the line.
//
// Rates are measured over the updates of the last progressWindow (plus the
// one just before it, so that the window is never empty while updates
// flow); the time left is the remaining bytes, or records when the byte
// total is unknown, at the current rate. Sizes use decimal units (1 MB =
// 10^6 bytes). Writes to w are best-effort: errors are ignored.
//
// A progress is safe for concurrent use.
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	terminal bool
	label    string
	now      func() time.Time

	start                    time.Time
	totalRecords, totalBytes uint64 // 0: unknown
	records, bytes           uint64
	window                   []progressSample // oldest first
	lastOut                  time.Time        // when the last line was written
	drawn                    bool             // something has been written
	done                     bool
	// first is the first update: the final rates count from it, so that
	// records copied by an earlier run (a resumed copy) are not counted
	// as this run's.
	first    progressSample
	hasFirst bool
}

// newProgress returns a progress writing to w, drawn in place when
// terminal (see isTerminal), each line starting with label. now is the
// clock (time.Now when nil); the copy starts at its first reading.
func newProgress(w io.Writer, terminal bool, label string, now func() time.Time) *progress {
	if now == nil {
		now = time.Now
	}
	start := now()
	return &progress{
		w:        w,
		terminal: terminal,
		label:    label,
		now:      now,
		start:    start,
		window:   []progressSample{{at: start}},
		lastOut:  start,
	}
}

// isTerminal reports whether w is an *os.File open on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && f != nil && term.IsTerminal(int(f.Fd()))
}

// setTotal sets the expected totals; 0 means unknown. The copy may exceed
// them (its source keeps growing meanwhile).
func (p *progress) setTotal(records, bytes uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.totalRecords, p.totalBytes = records, bytes
}

// update records the cumulative records and bytes copied so far, and
// redraws or prints a line when it is time to.
func (p *progress) update(records, bytes uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	t := p.now()
	if records < p.records || bytes < p.bytes {
		// The counts went back (the copy restarted): the old samples
		// would give a negative rate.
		p.window = p.window[:0]
	}
	p.records, p.bytes = records, bytes
	sample := progressSample{at: t, records: records, bytes: bytes}
	if !p.hasFirst {
		p.first, p.hasFirst = sample, true
	}
	if n := len(p.window); n >= 2 && t.Sub(p.window[n-2].at) < progressSampleGap {
		// Updates come faster than the window needs: the newest sample
		// replaces the last, so the window holds a bounded number.
		p.window[n-1] = sample
	} else {
		p.window = append(p.window, sample)
	}
	p.prune(t)
	if p.terminal {
		if p.drawn && t.Sub(p.lastOut) < progressRedraw {
			return
		}
	} else if t.Sub(p.lastOut) < progressLogEvery {
		return
	}
	p.write(p.line(p.snapshot(false, t)), false)
	p.lastOut, p.drawn = t, true
}

// finish prints the final state, with note (such as "done" or why the copy
// stopped) when not empty, and ends the line. Later calls, and updates,
// print nothing.
func (p *progress) finish(note string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.done = true
	line := p.line(p.snapshot(true, p.now()))
	if note != "" {
		if p.terminal {
			line += "  " + note
		} else {
			line += ", " + note
		}
	}
	p.write(line, true)
}

// prune drops the samples older than the window, keeping the newest one
// at or before its start as the anchor the rates are measured from.
func (p *progress) prune(t time.Time) {
	cutoff := t.Add(-progressWindow)
	i := 0
	for i+1 < len(p.window)-1 && !p.window[i+1].at.After(cutoff) {
		i++
	}
	if i > 0 {
		n := copy(p.window, p.window[i:])
		p.window = p.window[:n]
	}
}

// write puts line on w: in place on a terminal, else as a line of its own.
func (p *progress) write(line string, final bool) {
	var b strings.Builder
	if p.terminal {
		b.WriteString("\r")
		b.WriteString(line)
		b.WriteString(clearToEOL)
		if final {
			b.WriteString("\n")
		}
	} else {
		b.WriteString(line)
		b.WriteString("\n")
	}
	_, _ = io.WriteString(p.w, b.String())
}

// progressState is what one line shows.
type progressState struct {
	records, bytes           uint64
	totalRecords, totalBytes uint64

	rateOK            bool    // the rates are known
	recRate, byteRate float64 // per second

	fracOK bool    // a total is known: show the percentage, bar and ETA
	frac   float64 // done fraction, clamped to [0, 1]
	over   bool    // copied at least the total: nothing is left to wait for

	etaOK bool    // the rate is positive, so the time left is known
	eta   float64 // seconds left

	final   bool
	elapsed time.Duration // since the start, when final
}

// snapshot computes the state at t. While running, the rates are over the
// window; once final, over the whole copy.
// minRateSpan is the shortest time a rate is measured over.
const minRateSpan = 200 * time.Millisecond

func (p *progress) snapshot(final bool, t time.Time) progressState {
	s := progressState{
		records: p.records, bytes: p.bytes,
		totalRecords: p.totalRecords, totalBytes: p.totalBytes,
		final: final,
	}
	var from, to progressSample
	if final {
		s.elapsed = max(t.Sub(p.start), 0)
		from = p.first
		to = progressSample{at: t, records: p.records, bytes: p.bytes}
	} else if len(p.window) > 0 {
		from, to = p.window[0], p.window[len(p.window)-1]
	}
	// A rate over less than minRateSpan says nothing (a copy of one page).
	if dt := to.at.Sub(from.at).Seconds(); dt >= minRateSpan.Seconds() && to.records >= from.records && to.bytes >= from.bytes {
		s.rateOK = true
		s.recRate = float64(to.records-from.records) / dt
		s.byteRate = float64(to.bytes-from.bytes) / dt
	}
	// The fraction and the time left go by bytes when their total is
	// known, else by records.
	done, total, rate := s.bytes, s.totalBytes, s.byteRate
	if total == 0 {
		done, total, rate = s.records, s.totalRecords, s.recRate
	}
	if total == 0 {
		return s
	}
	s.fracOK = true
	if done >= total {
		s.frac, s.over = 1, true
		return s
	}
	s.frac = float64(done) / float64(total)
	if s.rateOK && rate > 0 {
		s.etaOK = true
		s.eta = float64(total-done) / rate
	}
	return s
}

// line formats s for the terminal or for a log.
func (p *progress) line(s progressState) string {
	if p.terminal {
		return p.terminalLine(s)
	}
	return p.plainLine(s)
}

// terminalLine formats s as
//
//	label [=========>          ]  45.0%  450,000/1,000,000 records  44.1/98.0 MB  12.3 MB/s  8,100 rec/s  ETA 4s
func (p *progress) terminalLine(s progressState) string {
	var fields []string
	head := p.label
	if s.fracOK {
		head = strings.TrimPrefix(head+" "+progressBar(s.frac), " ")
	}
	if head != "" {
		fields = append(fields, head)
	}
	if s.fracOK {
		fields = append(fields, percent(s.frac))
	}
	fields = append(fields,
		countPair(s.records, s.totalRecords, groupDigits)+" records",
		bytePair(s.bytes, s.totalBytes),
	)
	fields = append(fields, rateFields(s, groupDigits)...)
	if t := timeField(s, "ETA"); t != "" {
		fields = append(fields, t)
	}
	return strings.Join(fields, "  ")
}

// plainLine formats s as
//
//	label: 450000/1000000 records (45.0%), 44.1/98.0 MB, 12.3 MB/s, 8100 rec/s, eta 4s
func (p *progress) plainLine(s progressState) string {
	recs := countPair(s.records, s.totalRecords, plainDigits) + " records"
	size := bytePair(s.bytes, s.totalBytes)
	if s.fracOK {
		// The percentage follows the first count that has a total.
		if s.totalRecords > 0 {
			recs += " (" + percent(s.frac) + ")"
		} else {
			size += " (" + percent(s.frac) + ")"
		}
	}
	fields := append([]string{recs, size}, rateFields(s, plainDigits)...)
	if t := timeField(s, "eta"); t != "" {
		fields = append(fields, t)
	}
	line := strings.Join(fields, ", ")
	if p.label != "" {
		line = p.label + ": " + line
	}
	return line
}

// rateFields formats the byte and record rates, "--" while unknown.
func rateFields(s progressState, digits func(uint64) string) []string {
	if !s.rateOK {
		return []string{"-- MB/s", "-- rec/s"}
	}
	return []string{
		decimalBytes(s.byteRate) + "/s",
		digits(uint64(math.Round(s.recRate))) + " rec/s",
	}
}

// timeField formats the time left ("ETA 4s", "ETA soon", "ETA --") while
// running, and the time taken ("took 1m20s") once final; "" when there is
// no total to wait for.
func timeField(s progressState, eta string) string {
	switch {
	case s.final:
		return "took " + shortDuration(s.elapsed.Seconds())
	case !s.fracOK:
		return ""
	case s.over:
		return eta + " soon"
	case !s.etaOK:
		return eta + " --"
	}
	return eta + " " + shortDuration(s.eta)
}

// progressBar draws frac (0 to 1) as [=====>    ].
func progressBar(frac float64) string {
	n := int(frac * progressBarWidth)
	n = min(max(n, 0), progressBarWidth)
	if n == progressBarWidth {
		return "[" + strings.Repeat("=", n) + "]"
	}
	return "[" + strings.Repeat("=", n) + ">" + strings.Repeat(" ", progressBarWidth-n-1) + "]"
}

// percent formats frac (0 to 1) as "45.0%".
func percent(frac float64) string {
	return strconv.FormatFloat(frac*100, 'f', 1, 64) + "%"
}

// countPair formats "done/total", or "done" when the total is unknown.
func countPair(done, total uint64, digits func(uint64) string) string {
	if total == 0 {
		return digits(done)
	}
	return digits(done) + "/" + digits(total)
}

// plainDigits formats v without separators.
func plainDigits(v uint64) string { return strconv.FormatUint(v, 10) }

// groupDigits formats v with commas between groups of three digits:
// 1,000,000.
func groupDigits(v uint64) string {
	s := strconv.FormatUint(v, 10)
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	lead := len(s) % 3
	if lead == 0 {
		lead = 3
	}
	b.WriteString(s[:lead])
	for i := lead; i < len(s); i += 3 {
		b.WriteByte(',')
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// decimalUnits are the units of decimalBytes, each 1000 times the last.
var decimalUnits = []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}

// decimalUnit returns the unit to show v bytes in, and its size.
func decimalUnit(v float64) (div float64, unit string) {
	div = 1
	i := 0
	for i+1 < len(decimalUnits) && v >= div*1000 {
		div *= 1000
		i++
	}
	return div, decimalUnits[i]
}

// scaled formats v in a unit of size div: whole bytes, else one decimal.
func scaled(v, div float64) string {
	if div == 1 {
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	}
	return strconv.FormatFloat(v/div, 'f', 1, 64)
}

// decimalBytes formats a size or rate with a decimal unit: "12.3 MB",
// "512 B".
func decimalBytes(v float64) string {
	if v < 0 || math.IsNaN(v) {
		v = 0
	}
	div, unit := decimalUnit(v)
	return scaled(v, div) + " " + unit
}

// bytePair formats "done/total unit" in the unit of the larger, or one
// size when the total is unknown: "44.1/98.0 MB".
func bytePair(done, total uint64) string {
	if total == 0 {
		return decimalBytes(float64(done))
	}
	div, unit := decimalUnit(float64(max(done, total)))
	return scaled(float64(done), div) + "/" + scaled(float64(total), div) + " " + unit
}

// shortDuration formats secs rounded to a whole second: "<1s", "4s",
// "1m20s", "2h05m", "3d04h"; ">99d" beyond 99 days.
func shortDuration(secs float64) string {
	if math.IsNaN(secs) || secs < 0.5 {
		return "<1s"
	}
	if secs >= 99*24*3600 {
		return ">99d"
	}
	s := int64(math.Round(secs))
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 24*3600:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}
