package ops

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// freeBasePort finds a base port whose dev ports for nodes are free now.
func freeBasePort(t *testing.T, nodes int) int {
	t.Helper()
	return testnet.Ports(t, portStride*nodes, func(base int) (ports []int) {
		for i := range nodes {
			for j := range 4 {
				ports = append(ports, base+portStride*i+j)
			}
		}
		return ports
	})
}

// TestDevUpDown starts a dev site of three node processes with three
// replicas of every tree, mutual TLS on every link, writes and reads
// through it, and stops it. A plaintext client is refused; ops finds the
// deployment's admin certificate by itself in ./aviary-dev/certs.
func TestDevUpDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/node and runs three node processes")
	}
	dir := filepath.Join(t.TempDir(), "aviary-dev")
	// Whatever happens, no node process outlives the test.
	t.Cleanup(func() {
		if site, err := readSite(dir); err == nil {
			for _, n := range site.Nodes {
				if processAlive(n.PID) {
					_ = kill(n.PID)
				}
			}
		}
	})
	base := freeBasePort(t, 3)
	args := []string{"dev", "up", "--nodes", "3", "--replicas", "3", "--shards", "4",
		"--dir", dir, "--base-port", strconv.Itoa(base), "--timeout", "10s"}
	if raceEnabled {
		args = append(args, "--race")
	}
	out := mustOps(t, args...)
	t.Logf("dev up:\n%s", out)

	site, err := readSite(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(site.Nodes) != 3 {
		t.Fatalf("site.json lists %d nodes", len(site.Nodes))
	}
	for i, n := range site.Nodes {
		if n.ID != fmt.Sprintf("node-%d", i) || n.GRPCAddr != net.JoinHostPort("127.0.0.1", strconv.Itoa(base+portStride*i)) || !processAlive(n.PID) {
			t.Fatalf("node %d in site.json: %+v (running %v)", i, n, processAlive(n.PID))
		}
		if cert := filepath.Join(dir, "certs", n.ID+".crt"); !slices.Contains(n.Args, cert) {
			t.Fatalf("%s runs without --tls-cert %s: %v", n.ID, cert, n.Args)
		}
	}
	if site.CertsDir != filepath.Join(dir, "certs") || !strings.Contains(out, "mutual TLS") {
		t.Fatalf("certs dir %q; dev up says:\n%s", site.CertsDir, out)
	}

	// A second dev up over the running site is refused.
	if _, _, err := runOps(t, "dev", "up", "--dir", dir, "--base-port", strconv.Itoa(base)); !errors.Is(err, ErrSiteRunning) {
		t.Fatalf("dev up over a running site: %v", err)
	}

	admin := devAdmin(t, dir)
	clients := make([]*nodeClients, len(site.Nodes))
	for i, n := range site.Nodes {
		clients[i] = dialNode(t, admin, n.GRPCAddr)
	}
	var version uint64
	for i, c := range clients {
		st, err := c.ns.Status(t.Context(), &pb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			version = st.MapVersion
		}
		if st.MapVersion != version || st.MapVersion != site.MapVersion {
			t.Fatalf("%s routes with map version %d; node-0 with %d, site.json says %d", st.NodeId, st.MapVersion, version, site.MapVersion)
		}
	}
	m := getMapFrom(t, clients[1].ns)
	roots := 0
	for _, root := range m.Roots() {
		if len(root) < 4 || root[:4] != "rep-" {
			continue
		}
		roots++
		leaves, err := m.PlanRead(root, 0)
		if err != nil {
			t.Fatal(err)
		}
		nodes := map[string]bool{}
		for _, l := range leaves {
			if m.Shards[l.Shard].Kind != gizzard.KindPhysical {
				t.Fatalf("%s: leaf %s is %s", root, l.Shard, m.Shards[l.Shard].Kind)
			}
			nodes[l.Node] = true
		}
		if len(leaves) != 3 || len(nodes) != 3 {
			t.Fatalf("%s: readable leaves %v, want 3 on 3 nodes", root, leaves)
		}
	}
	if roots != 4 {
		t.Fatalf("%d rep-* roots, want 4", roots)
	}

	// Write through node-1 to every replica, and read it back.
	w, err := clients[1].data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("1001"), Value: []byte("hello"), Consistency: pb.Consistency_CONSISTENCY_ALL})
	if err != nil {
		t.Fatal(err)
	}
	if w.Replicas != 3 || w.Acked != 3 {
		t.Fatalf("put reached %d of %d replicas, want 3 of 3", w.Acked, w.Replicas)
	}
	g, err := clients[1].data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("1001")})
	if err != nil {
		t.Fatal(err)
	}
	if string(g.Value) != "hello" {
		t.Fatalf("get %q, want hello", g.Value)
	}
	for _, c := range clients {
		_ = c.cc.Close()
	}

	// A plaintext client is refused.
	addr := site.Nodes[0].GRPCAddr
	plain := dialNode(t, nil, addr)
	if _, err := plain.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("1001")}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a plaintext get: %v, want Unavailable", err)
	}
	_ = plain.cc.Close()
	// ops run beside ./aviary-dev presents its admin certificate by
	// itself; run elsewhere, it connects in plaintext and says so.
	t.Chdir(filepath.Dir(dir))
	if out := mustOps(t, "--addr", addr, "nodes"); !strings.Contains(out, "node-2") {
		t.Fatalf("ops nodes with the default certificates:\n%s", out)
	}
	t.Chdir(t.TempDir())
	_, _, err = runOps(t, "--addr", addr, "nodes")
	if err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Fatalf("ops nodes without certificates: %v, want refused and said plaintext", err)
	}
	t.Logf("ops without certificates: %v", err)

	mustOps(t, "dev", "status", "--dir", dir)
	out = mustOps(t, "dev", "down", "--dir", dir, "--wipe")
	t.Logf("dev down:\n%s", out)
	for _, n := range site.Nodes {
		if processAlive(n.PID) {
			t.Errorf("%s (pid %d) still runs after dev down", n.ID, n.PID)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dev down --wipe left %s: %v", dir, err)
	}
}

// nodeClients are clients of a node process.
type nodeClients struct {
	cc   interface{ Close() error }
	ns   pb.NameserverClient
	data pb.DataClient
}

// dialNode dials the node at addr presenting src's certificate (nil:
// plaintext).
func dialNode(t *testing.T, src *tlsx.Source, addr string) *nodeClients {
	t.Helper()
	cc := dialAs(t, src, addr)
	return &nodeClients{cc: cc, ns: pb.NewNameserverClient(cc), data: pb.NewDataClient(cc)}
}

func getMapFrom(t *testing.T, ns pb.NameserverClient) *gizzard.Map {
	t.Helper()
	return getMap(t, &testNode{ns: ns})
}
