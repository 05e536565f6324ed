package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/node"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nameserver.Server.Close closes raft's NetworkTransport without
		// CloseStreams, so its pooled connections to peers stay open and
		// each peer's handler of such a connection stays blocked reading
		// it. Only multi-node sites in one process show it.
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
	)
}

// checkFor polls fn until it returns nil or total has passed.
func checkFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("condition not met after %s: %v", total, err)
}

// testNode is an in-process node and a client connection to it.
type testNode struct {
	n    *node.Node
	addr string
	ns   pb.NameserverClient
	data pb.DataClient
	// stop stops the node and waits until it has; the test's end does too.
	stop func()
}

// startNode runs a node on loopback ports in a temporary directory until
// the test ends, and waits until its health is SERVING (it is in the map).
func startNode(t *testing.T, cfg node.Config) *testNode {
	t.Helper()
	cfg.DataDir = t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CacheBytes = 8 << 20
	n, err := node.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	cc, err := netx.Dial(n.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("node %s: %v", cfg.NodeID, err)
			}
			_ = cc.Close()
		})
	}
	t.Cleanup(stop)
	hc := healthpb.NewHealthClient(cc)
	checkFor(t, 20*time.Second, func() error {
		r, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if r.Status != healthpb.HealthCheckResponse_SERVING {
			return errors.New(r.Status.String())
		}
		return nil
	})
	return &testNode{n: n, addr: n.GRPCAddr(), ns: pb.NewNameserverClient(cc), data: pb.NewDataClient(cc), stop: stop}
}

// startSite starts a three-node site in-process: node-0 founds it with
// shards shard trees, node-1 and node-2 join it.
func startSite(t *testing.T, shards int) []*testNode {
	t.Helper()
	n0 := startNode(t, node.Config{NodeID: "node-0", WorkerID: 0, DefaultShards: shards})
	nodes := []*testNode{n0}
	for i := 1; i < 3; i++ {
		nodes = append(nodes, startNode(t, node.Config{NodeID: "node-" + string(rune('0'+i)), WorkerID: uint32(i), Join: n0.addr}))
	}
	return nodes
}

// runOps runs the CLI in-process with args and returns what it printed.
func runOps(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := NewCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errb.String(), err
}

// mustOps runs the CLI and fails the test on an error.
func mustOps(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runOps(t, args...)
	if err != nil {
		t.Fatalf("ops %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// getMap asks a node for its map.
func getMap(t *testing.T, tn *testNode) *gizzard.Map {
	t.Helper()
	resp, err := tn.ns.GetMap(t.Context(), &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m := gizzard.NewMap()
	if err := json.Unmarshal(resp.MapJson, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// testMap builds a map by applying changes of steps to an empty one.
func testMap(t *testing.T, changes ...[]gizzard.Step) *gizzard.Map {
	t.Helper()
	m := gizzard.NewMap()
	for _, steps := range changes {
		if err := m.Apply(gizzard.Change{Steps: steps, Who: "test", At: time.Unix(1, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// devTLSArgs are the ops flags that present the admin certificate of the
// dev deployment in dir.
func devTLSArgs(dir string) []string {
	certs := filepath.Join(dir, devCertsDir)
	return []string{"--tls-ca", filepath.Join(certs, "ca.crt"),
		"--tls-cert", filepath.Join(certs, devAdminName+".crt"), "--tls-key", filepath.Join(certs, devAdminName+".key")}
}

// devAdmin loads the admin certificate of the dev deployment in dir.
func devAdmin(t *testing.T, dir string) *tlsx.Source {
	t.Helper()
	certs := filepath.Join(dir, devCertsDir)
	src, err := tlsx.Load(tlsx.Files{CA: filepath.Join(certs, "ca.crt"), Cert: filepath.Join(certs, devAdminName+".crt"), Key: filepath.Join(certs, devAdminName+".key")}, tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// dialAs dials the node at addr presenting src's certificate (nil:
// plaintext), as ops does; the test's end closes the connection.
func dialAs(t *testing.T, src *tlsx.Source, addr string) *grpc.ClientConn {
	t.Helper()
	sec := &netx.Security{TLS: src}
	cc, err := netx.Dial(addr, sec.DialOption(addr, sec.NodePeer()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}
