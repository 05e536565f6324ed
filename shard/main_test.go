package shard

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if goroutines started by the tests (Pebble's
// included) outlive them. go.uber.org/goleak is not a requirement of the
// module, so this is a small equivalent.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaks := leakedGoroutines(5 * time.Second); leaks != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", leaks)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of goroutines other than the caller's
// and the runtime's and testing package's own, waiting up to timeout for
// them to exit.
func leakedGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		leaks := unexpectedGoroutines()
		if len(leaks) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaks, "\n\n")
		}
		runtime.Gosched()
	}
}

func unexpectedGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := strings.Split(string(buf), "\n\n")
	var out []string
	for i, st := range stacks {
		if i == 0 { // the calling goroutine is listed first
			continue
		}
		switch {
		case strings.Contains(st, "testing.(*M).startAlarm"),
			strings.Contains(st, "testing.tRunner"),
			strings.Contains(st, "os/signal.signal_recv"),
			strings.Contains(st, "os/signal.loop"),
			strings.Contains(st, "runtime.ensureSigM"),
			strings.Contains(st, "runtime.goexit0"):
			continue
		}
		out = append(out, st)
	}
	return out
}
