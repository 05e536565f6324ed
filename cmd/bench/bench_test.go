package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestSmoke runs every workload against an in-process node and raw Pebble
// for a short time and checks that every one ran operations without errors,
// that the table and the JSON lines are printed, and that the temporary
// data is removed.
func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	cmd := newCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{
		"--dir", dir, "--duration", "300ms", "--warmup", "100ms",
		"--keys", "2000", "--owners", "50", "--concurrency", "4", "--json",
	})
	err := cmd.Execute()
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	type row struct {
		Type, Workload, Target string
		Ops, Errors            uint64
		OpsPerSec              float64 `json:"ops_per_sec"`
		P99Ns                  int64   `json:"p99_ns"`
		Ratio                  *float64
	}
	results := map[string]row{}
	ratios := map[string]row{}
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r row
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		switch r.Type {
		case "result":
			results[r.Workload+"/"+r.Target] = r
		case "ratio":
			ratios[r.Workload] = r
		}
	}
	for _, w := range workloadNames {
		targets := []string{"node", "raw"}
		if w == "range20" {
			targets = targets[:1]
		}
		for _, target := range targets {
			r, ok := results[w+"/"+target]
			switch {
			case !ok:
				t.Errorf("%s/%s: no result", w, target)
			case r.Errors != 0:
				t.Errorf("%s/%s: %d errors", w, target, r.Errors)
			case r.Ops == 0 || r.OpsPerSec <= 0 || r.P99Ns <= 0:
				t.Errorf("%s/%s: ops %d, ops/s %v, p99 %dns: want all positive", w, target, r.Ops, r.OpsPerSec, r.P99Ns)
			}
			if !strings.Contains(out.String(), "\n"+padRight(w, 10)+" "+padRight(target, 7)) {
				t.Errorf("%s/%s: no table row", w, target)
			}
		}
		r, ok := ratios[w]
		switch {
		case !ok:
			t.Errorf("%s: no ratio", w)
		case w == "range20" && r.Ratio != nil:
			t.Errorf("%s: ratio %v, want none", w, *r.Ratio)
		case w != "range20" && (r.Ratio == nil || *r.Ratio <= 0):
			t.Errorf("%s: ratio missing or not positive", w)
		}
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("temporary data left in %s: %v %v", dir, ents, err)
	}
}

func padRight(s string, n int) string { return s + strings.Repeat(" ", max(0, n-len(s))) }

// TestValidate checks that bad flags are refused before anything runs.
func TestValidate(t *testing.T) {
	for _, args := range [][]string{
		{"--workloads", "put,nope"},
		{"--concurrency", "0"},
		{"--duration", "0s"},
		{"--keys", "0"},
	} {
		cmd := newCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append(args, "--dir", t.TempDir()))
		if err := cmd.Execute(); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
