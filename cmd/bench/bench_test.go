package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/aviarydb/aviary/ops"
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
		Of                     string
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
			ratios[r.Workload+"/"+r.Of] = r
		}
	}
	for _, w := range workloadNames {
		targets := []string{"node", "raw"}
		if w == "range20" || w == "ping" {
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
		if w == "ping" {
			if r, ok := ratios[w+"/"]; ok {
				t.Errorf("ping: ratio %+v, want none", r)
			}
			continue
		}
		r, ok := ratios[w+"/"]
		switch {
		case !ok:
			t.Errorf("%s: no ratio", w)
		case w == "range20" && r.Ratio != nil:
			t.Errorf("%s: ratio %v, want none", w, *r.Ratio)
		case w != "range20" && (r.Ratio == nil || *r.Ratio <= 0):
			t.Errorf("%s: ratio missing or not positive", w)
		}
	}
	for _, w := range []string{"put", "get"} {
		if r, ok := ratios[w+"/ping"]; !ok || r.Ratio == nil || *r.Ratio <= 0 {
			t.Errorf("%s: ratio of ping missing or not positive: %+v", w, r)
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
		{"--workloads", "migrate", "--addr", "127.0.0.1:1"},
		{"--workloads", "migrate", "--migrate-records", "0"},
		{"--workloads", "migrate", "--migrate-writers", "0"},
		{"--workloads", "migrate", "--migrate-value-bytes", "0"},
		{"--workloads", "migrate", "--migrate-rates", "fast"},
		{"--workloads", "migrate", "--migrate-rates", "8MB/s,8MB/s"},
		{"--workloads", "migrate", "--migrate-rates", ""},
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

// TestSmokeMigrate runs the migrate workload with a small shard and short
// windows, and checks that the unthrottled move and the throttled one
// finished and copied what they should, that the foreground rows ran
// without errors, that the ratio and the targets are printed, and that the
// temporary data is removed.
func TestSmokeMigrate(t *testing.T) {
	const records = 2000
	dir := t.TempDir()
	var out bytes.Buffer
	cmd := newCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{
		"--dir", dir, "--workloads", "migrate", "--migrate-records", fmt.Sprint(records), "--migrate-writers", "4",
		"--conns", "1", "--duration", "1s", "--warmup", "200ms", "--json",
	})
	err := cmd.Execute()
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	type row struct {
		Type, Workload, Target, Rate, State, Error string
		Nodes                                      int
		Ops, Errors, Records, Bytes                uint64
		OpsPerSec                                  *float64 `json:"ops_per_sec"`
		P99Ns                                      int64    `json:"p99_ns"`
		CopySec                                    float64  `json:"copy_sec"`
		MBPerSec                                   float64  `json:"mb_per_sec"`
		UnderLoad                                  bool     `json:"under_load"`
		P99Ratio                                   *float64 `json:"p99_ratio"`
		WindowSec                                  float64  `json:"window_sec"`
		MigrationOverlapSec                        float64  `json:"migration_overlap_sec"`
		CopyMBPerSec                               *float64 `json:"copy_mb_per_sec"`
	}
	byType := map[string][]row{}
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r row
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		byType[r.Type] = append(byType[r.Type], r)
	}

	copies := byType["copy"]
	if len(copies) != 2 {
		t.Fatalf("%d copy lines, want 2 (unthrottled, %s)", len(copies), ops.DefaultRate)
	}
	for i, want := range []struct {
		rate      string
		underLoad bool
	}{{"0", false}, {ops.DefaultRate, true}} {
		c := copies[i]
		switch {
		case c.Rate != want.rate || c.UnderLoad != want.underLoad:
			t.Errorf("copy %d: rate %q under load %v, want %q %v", i, c.Rate, c.UnderLoad, want.rate, want.underLoad)
		case c.State != "done" || c.Error != "":
			t.Errorf("copy %s: state %q, error %q", c.Rate, c.State, c.Error)
		case c.Records < records || c.Bytes < records*(keyLen+100):
			t.Errorf("copy %s: %d records, %d bytes: want at least %d records of %d bytes", c.Rate, c.Records, c.Bytes, records, keyLen+100)
		case c.CopySec <= 0 || c.MBPerSec <= 0:
			t.Errorf("copy %s: %vs, %v MB/s: want both positive", c.Rate, c.CopySec, c.MBPerSec)
		}
	}
	if c := copies[0]; c.Records != records {
		t.Errorf("unthrottled copy: %d records, loaded %d", c.Records, records)
	}
	results := map[string]row{}
	for _, r := range byType["result"] {
		results[r.Workload+"/"+r.Target] = r
	}
	for _, target := range []string{"idle", ops.DefaultRate} {
		r, ok := results[migratePutName+"/"+target]
		switch {
		case !ok:
			t.Errorf("%s %s: no result", migratePutName, target)
		case r.Errors != 0:
			t.Errorf("%s %s: %d errors", migratePutName, target, r.Errors)
		case r.Ops == 0 || r.OpsPerSec == nil || *r.OpsPerSec <= 0 || r.P99Ns <= 0:
			t.Errorf("%s %s: ops %d, ops/s %v, p99 %dns: want all positive", migratePutName, target, r.Ops, r.OpsPerSec, r.P99Ns)
		case r.Nodes != migrateNodes:
			t.Errorf("%s %s: nodes %d", migratePutName, target, r.Nodes)
		}
		if !strings.Contains(out.String(), "\n"+padRight(migratePutName, len(migrateCopyName))+" "+padRight(target, 7)) {
			t.Errorf("%s %s: no table row", migratePutName, target)
		}
	}
	if ws := byType["migrate_window"]; len(ws) != 1 || ws[0].P99Ratio == nil || *ws[0].P99Ratio <= 0 ||
		ws[0].WindowSec <= 0 || ws[0].MigrationOverlapSec <= 0 || ws[0].MigrationOverlapSec > ws[0].WindowSec {
		t.Errorf("migrate_window lines: %+v", ws)
	}
	if ts := byType["targets"]; len(ts) != 1 || ts[0].CopyMBPerSec == nil || *ts[0].CopyMBPerSec <= 0 {
		t.Errorf("targets lines: %+v", ts)
	}
	for _, want := range []string{"ratio   p99 " + ops.DefaultRate + "/idle = ", "# targets: unthrottled copy >= 50 MB/s: ", "\nmigrate-copy unlimited "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in the output", want)
		}
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("temporary data left in %s: %v %v", dir, ents, err)
	}
}
