package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/netx"
	"google.golang.org/grpc"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binDir holds the binaries the tests build (the node's and ops'); TestMain
// removes it, so that runs do not leave tens of megabytes each in $TMPDIR.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aviary-cmd-node-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nodeBinary builds cmd/node once per test run.
func nodeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(binDir, "node")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build cmd/node: %v", buildErr)
	}
	return binPath
}

// proc is a node process started by a test.
type proc struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	exited   chan struct{}
	mu       sync.Mutex
	log      strings.Builder
}

// startProc starts cmd (whose stderr must carry the node's JSON logs) and
// waits until the node logs that it serves, returning its addresses.
func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		readyClosed := false
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				GRPC string `json:"grpc"`
				HTTP string `json:"http"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			if rec.Msg == "node serving" {
				p.grpcAddr, p.httpAddr = rec.GRPC, rec.HTTP
			}
			if !readyClosed && rec.Msg == "node ready" {
				close(ready)
				readyClosed = true
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("node exited before serving:\n%s", p.logs())
	case <-time.After(2 * time.Minute):
		p.kill()
		t.Fatalf("node did not serve within 2m:\n%s", p.logs())
	}
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill sends SIGKILL to the process group and waits for the exit.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// pause stops the process group with SIGSTOP (a node that hangs: its
// sockets stay open, nothing answers) and returns the function that
// resumes it.
func (p *proc) pause() (resume func()) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGSTOP)
	var once sync.Once
	return func() { once.Do(func() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) }) }
}

// terminate sends SIGTERM and waits for a graceful exit, failing the test
// if it does not come within the deadline or is not clean.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("node did not stop within 30s of SIGTERM:\n%s", p.logs())
	}
	if !strings.Contains(p.logs(), `"msg":"node stopped"`) {
		t.Fatalf("node did not log a clean stop:\n%s", p.logs())
	}
}

func (p *proc) dial(t *testing.T) (pb.DataClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := netx.Dial(p.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewDataClient(cc), cc
}

// nodeCmd is the binary with a data dir and ephemeral loopback ports.
func nodeCmd(t *testing.T, dir string) *exec.Cmd {
	return exec.CommandContext(context.Background(), nodeBinary(t),
		"--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0", "--log-format", "json")
}
