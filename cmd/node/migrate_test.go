package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
)

var (
	opsOnce sync.Once
	opsPath string
	opsErr  error
)

// opsBinary builds cmd/ops once per test run.
func opsBinary(t *testing.T) string {
	t.Helper()
	opsOnce.Do(func() {
		opsPath = filepath.Join(binDir, "ops")
		out, err := exec.Command("go", "build", "-o", opsPath, "../ops").CombinedOutput()
		if err != nil {
			opsErr = errors.New(string(out))
		}
	})
	if opsErr != nil {
		t.Fatalf("build cmd/ops: %v", opsErr)
	}
	return opsPath
}

// opsProc is a running ops process and its output.
type opsProc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

func startOps(t *testing.T, args ...string) *opsProc {
	t.Helper()
	p := &opsProc{cmd: exec.Command(opsBinary(t), args...), done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = &lockedWriter{w: &p.out}, &lockedWriter{w: &p.out}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) })
	return p
}

// lockedWriter serialises writes of a process's stdout and stderr.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *opsProc) output() string {
	w := p.cmd.Stdout.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

// siteMap reads the map from a node.
func siteMap(t *testing.T, s *siteNode) (*gizzard.Map, error) {
	t.Helper()
	mr, err := s.ns.GetMap(t.Context(), &pb.GetMapRequest{})
	if err != nil {
		return nil, err
	}
	m := gizzard.NewMap()
	return m, json.Unmarshal(mr.MapJson, m)
}

// migrationState returns the state of the one migration of source.
func migrationState(t *testing.T, s *siteNode, source string) gizzard.MigrationState {
	m, err := siteMap(t, s)
	if err != nil {
		return ""
	}
	for _, g := range m.Migrations {
		if g.Source == source {
			return g.State
		}
	}
	return ""
}

// TestMigrationSurvivesKills moves a shard between real node processes
// under a write load and SIGKILLs, at a random step of the migration, the
// source node, the destination node or the ops process driving it (one
// per seeded run). The migration resumes (re-running the same ops
// command) and finishes; every acknowledged write is then readable with
// its version, and the source's copy is gone.
func TestMigrationSurvivesKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sites of real processes")
	}
	seed := testSeed(t)
	for run := range 3 {
		rng := rand.New(rand.NewPCG(seed, uint64(run)))
		victim := []string{"source", "destination", "ops"}[(int(seed)+run)%3]
		states := []gizzard.MigrationState{gizzard.MigrationCopying, gizzard.MigrationCopying, gizzard.MigrationCopying, gizzard.MigrationCopied, gizzard.MigrationVerified, gizzard.MigrationCutover, gizzard.MigrationCleanup}
		at := states[rng.IntN(len(states))]
		delay := time.Duration(rng.IntN(1500)) * time.Millisecond
		t.Run(fmt.Sprintf("%d-kill-%s-at-%s", run, victim, at), func(t *testing.T) {
			migrateWithKill(t, victim, at, delay)
		})
	}
}

func migrateWithKill(t *testing.T, victim string, at gizzard.MigrationState, delay time.Duration) {
	nodes := startNodes(t, 3)
	src, dst, via := nodes[0], nodes[1], nodes[2]
	l := startLoad([]*siteNode{via}, 6)
	defer l.stop()
	l.waitFor(t, 8000) // about 2000 records in default-001: a copy of 2s

	args := []string{"--addr", via.grpc, "--timeout", "5s", "--who", "kill-test", "migrate", "default-001", "--to", "node-1", "--rate", "1000rec/s"}
	p := startOps(t, args...)
	deadline := time.Now().Add(90 * time.Second)
	for migrationState(t, via, "default-001") != at {
		select {
		case err := <-p.done:
			t.Logf("ops finished before reaching %s (%v): the kill lands after it", at, err)
			p.done <- err
			goto kill
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration did not reach %s:\n%s", at, p.output())
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	time.Sleep(delay) // a random point within the step, not synchronisation
kill:
	t.Logf("killing the %s in state %s", victim, migrationState(t, via, "default-001"))
	switch victim {
	case "source", "destination":
		n := src
		if victim == "destination" {
			n = dst
		}
		n.p.kill()
		n.start(t)
	case "ops":
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		t.Logf("first ops run:\n%s", p.output())
		p = startOps(t, args...) // the same command resumes
	}
	select {
	case err := <-p.done:
		if err != nil {
			// A killed node can make the ops run give up on a step that
			// is not retried (it says so); the same command resumes.
			t.Logf("ops run ended with %v:\n%s", err, p.output())
			p = startOps(t, args...)
			if err := <-p.done; err != nil {
				t.Fatalf("resumed ops run: %v\n%s", err, p.output())
			}
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("migration did not finish:\n%s", p.output())
	}
	t.Logf("ops:\n%s", p.output())
	l.waitFor(t, 300)
	l.stop()

	m, err := siteMap(t, via)
	if err != nil {
		t.Fatal(err)
	}
	var g gizzard.Migration
	for _, x := range m.Migrations {
		if x.Source == "default-001" {
			g = x
		}
	}
	if g.State != gizzard.MigrationDone {
		t.Fatalf("migration %s is %s, want done", g.ID, g.State)
	}
	leaves := m.Shards["rep-001"].Children
	if len(leaves) != 1 || leaves[0].Child != g.Dest || m.Shards[g.Dest].Node != "node-1" {
		t.Fatalf("rep-001 after the migration: %+v", leaves)
	}
	waitJobsDrained(t, nodes)
	r, err := src.admin.ListShards(t.Context(), &pb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(r.Shards, func(s *pb.ShardInfo) bool { return s.Name == "default-001" }) {
		t.Fatal("node-0 still holds default-001 after cleanup")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, hlc := range l.acked {
		g, err := via.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(key)})
		if err != nil || g.Version.Hlc != hlc {
			t.Fatalf("acknowledged key %q: %v %v (acknowledged version %d)", key, g, err, hlc)
		}
	}
	t.Logf("%d acknowledged writes readable, %d writes failed while a node was down", len(l.acked), len(l.errs))
}
