package main

import (
	"bytes"
	"encoding/json"
	"fmt"
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
		{"--replicas", "0"},
		{"--replicas", "4"},
		{"--replicas", "1,1"},
		{"--replicas", ""},
		{"--workloads", "router", "--addr", "127.0.0.1:1"},
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

// TestSmokeRouter runs the router workload with 1 and 3 replicas for a short
// time (and fewer map changes) and checks that every row ran without errors,
// that the ratios and the propagation row are printed, and that the
// temporary data is removed.
func TestSmokeRouter(t *testing.T) {
	defer func(n int) { propagationChanges = n }(propagationChanges)
	propagationChanges = 20
	dir := t.TempDir()
	var out bytes.Buffer
	cmd := newCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{
		"--dir", dir, "--workloads", "router", "--replicas", "1,3", "--duration", "300ms", "--warmup", "100ms",
		"--concurrency", "4", "--json",
	})
	err := cmd.Execute()
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	type row struct {
		Type, Workload, Target, Consistency, Of string
		Replicas, Nodes                         int
		Ops, Errors                             uint64
		OpsPerSec                               *float64 `json:"ops_per_sec"`
		P50Ns                                   int64    `json:"p50_ns"`
		P99Ns                                   int64    `json:"p99_ns"`
		MaxNs                                   int64    `json:"max_ns"`
		Ratio                                   *float64
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
			ratios[r.Workload+"/"+r.Of+"/"+r.Consistency] = r
		}
	}
	for _, rep := range []int{1, 3} {
		for _, cons := range []string{"ONE", "ALL"} {
			target := fmt.Sprintf("r=%d %s", rep, cons)
			r, ok := results[routerPutName+"/"+target]
			switch {
			case !ok:
				t.Errorf("%s: no result", target)
			case r.Errors != 0:
				t.Errorf("%s: %d errors", target, r.Errors)
			case r.Ops == 0 || r.OpsPerSec == nil || *r.OpsPerSec <= 0 || r.P99Ns <= 0:
				t.Errorf("%s: ops %d, ops/s %v, p99 %dns: want all positive", target, r.Ops, r.OpsPerSec, r.P99Ns)
			case r.Replicas != rep || r.Consistency != cons || r.Nodes != siteNodes:
				t.Errorf("%s: replicas %d, consistency %q, nodes %d", target, r.Replicas, r.Consistency, r.Nodes)
			}
			if !strings.Contains(out.String(), "\n"+padRight(routerPutName, len(propagationName))+" "+target+" ") {
				t.Errorf("%s: no table row", target)
			}
		}
	}
	for _, cons := range []string{"ONE", "ALL"} {
		r, ok := ratios[routerPutName+"/r=3/r=1/"+cons]
		if !ok || r.Ratio == nil || *r.Ratio <= 0 {
			t.Errorf("ratio r=3/r=1 (%s) missing or not positive: %+v", cons, r)
		}
		if !strings.Contains(out.String(), "ratio   r=3/r=1 ("+cons+") = ") {
			t.Errorf("ratio r=3/r=1 (%s): no table line", cons)
		}
	}
	p, ok := results[propagationName+"/3 nodes"]
	switch {
	case !ok:
		t.Errorf("%s: no result", propagationName)
	case p.Errors != 0:
		t.Errorf("%s: %d errors", propagationName, p.Errors)
	case p.Ops != uint64(propagationChanges) || p.P50Ns <= 0 || p.MaxNs < p.P99Ns || p.P99Ns < p.P50Ns:
		t.Errorf("%s: %d changes timed (want %d), p50 %dns p99 %dns max %dns", propagationName, p.Ops, propagationChanges, p.P50Ns, p.P99Ns, p.MaxNs)
	case p.OpsPerSec != nil:
		t.Errorf("%s: ops/s %v, want none", propagationName, *p.OpsPerSec)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("temporary data left in %s: %v %v", dir, ents, err)
	}
}
