package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
)

// quickStart returns the run and test commands of the README's quick start:
// the first fenced block after the "## Quick start" heading, without the
// git clone line and comments.
func quickStart(t *testing.T) (run, test string) {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var section, fence bool
	var cmds []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = strings.EqualFold(strings.TrimSpace(line[3:]), "quick start")
		case section && strings.HasPrefix(line, "```"):
			if fence {
				section = false
			}
			fence = !fence
		case section && fence:
			cmd, _, _ := strings.Cut(line, "#")
			cmd = strings.TrimSpace(cmd)
			if cmd != "" && !strings.HasPrefix(cmd, "git clone") {
				cmds = append(cmds, cmd)
			}
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("README quick start has %d commands after git clone, want 2 (run, test): %q", len(cmds), cmds)
	}
	return cmds[0], cmds[1]
}

// TestReadmeQuickStart runs the README's run command exactly as written
// (with the data dir and ports moved aside by environment variables, which
// every flag honours) and checks that the node answers a write and a read,
// then that SIGTERM stops it cleanly. It also checks that CI runs the
// README's test command.
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go run")
	}
	run, test := quickStart(t)
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), test) {
		t.Errorf(".ci/run does not run the README's test command %q", test)
	}

	cmd := exec.Command("sh", "-c", run)
	cmd.Dir, _ = filepath.Abs("../..")
	cmd.Env = append(os.Environ(),
		"AVIARY_DATA_DIR="+t.TempDir(),
		"AVIARY_GRPC_ADDR=127.0.0.1:0",
		"AVIARY_HTTP_ADDR=127.0.0.1:0",
		"AVIARY_RAFT_ADDR=127.0.0.1:0",
		"AVIARY_LOG_FORMAT=json",
	)
	p := startProc(t, cmd)
	d, _ := p.dial(t)
	ctx := t.Context()
	if _, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("readme"), Value: []byte("works")}); err != nil {
		t.Fatalf("write: %v\n%s", err, p.logs())
	}
	got, err := d.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("readme")})
	if err != nil || string(got.Value) != "works" {
		t.Fatalf("read: %q %v", got.GetValue(), err)
	}
	if _, err := d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: 1, Payload: []byte("x")}); err != nil {
		t.Fatalf("index append: %v", err)
	}
	p.terminate(t)
}
