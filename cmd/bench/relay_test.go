package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestSmokeRelay runs the relay workload briefly: three sites, a low rate.
func TestSmokeRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three sites")
	}
	var out bytes.Buffer
	err := runRelay(t.Context(), relayConfig{Rate: 200, Duration: time.Second, Steps: []int{300}, Writers: 4, RawMsgs: 2000}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"steady 200/s", "raw jetstream before", "raw jetstream after", "sustained:", "ratio"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
