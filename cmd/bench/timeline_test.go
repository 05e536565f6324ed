package main

import (
	"strings"
	"testing"
	"time"
)

// TestSmokeTimeline runs the timeline workload small, without Redis, and
// checks that every measured post was delivered and the rows are printed.
func TestSmokeTimeline(t *testing.T) {
	var out strings.Builder
	err := runTimeline(t.Context(), timelineConfig{Users: 60, Follows: 6, PostRate: 50, Readers: 2, Many: 5, Capacity: 40,
		Warmup: 200 * time.Millisecond, Duration: time.Second, Seed: 1}, &out)
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	t.Log(s)
	for _, want := range []string{"aviary post+fan-out, read20", "aviary post+fan-out, ping", "aviary read 1/call", "aviary read 5/call", "# targets:"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(s, "not delivered") {
		t.Errorf("measured posts undelivered:\n%s", s)
	}
}
