package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/replication"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHelpExplainsEveryFlag(t *testing.T) {
	cmd := newCommand(nil)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{
		"--addr", "AVIARY_RELAY_ADDR", "127.0.0.1:7390",
		"--http-addr", "AVIARY_RELAY_HTTP_ADDR", "127.0.0.1:7394", "/metrics", "/healthz", "/status",
		"--batch", "(default 256)", "--max-wait", "(default 100ms)", "--stall-after", "(default 5s)",
		"--log-format", "--log-level", "nothing to relay", "SIGTERM",
		"--tls-ca", "--tls-cert", "--tls-key", "--insecure", "AVIARY_RELAY_TLS_CA", "role relay", "plaintext",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// parse runs the command with args and returns the options run got.
func parse(t *testing.T, args ...string) (options, error) {
	t.Helper()
	var got options
	cmd := newCommand(func(_ context.Context, o options, _ *slog.Logger) error {
		got = o
		return nil
	})
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	return got, err
}

func TestFlagsAndEnvironment(t *testing.T) {
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.addrs) != 1 || o.addrs[0] != defaultAddr || o.httpAddr != defaultHTTPAddr || o.batch != 256 ||
		o.maxWait != 100*time.Millisecond || o.stallAfter != 5*time.Second {
		t.Errorf("defaults %+v", o)
	}
	t.Setenv("AVIARY_RELAY_ADDR", "127.0.0.1:1,127.0.0.1:2")
	t.Setenv("AVIARY_RELAY_BATCH", "32")
	o, err = parse(t, "--stall-after", "2s", "--batch", "64")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.addrs) != 2 || o.addrs[1] != "127.0.0.1:2" || o.batch != 64 || o.stallAfter != 2*time.Second {
		t.Errorf("options %+v", o)
	}
	for _, args := range [][]string{{"--batch", "0"}, {"--max-wait", "0s"}, {"--addr", ""}, {"--log-format", "xml"}, {"extra"}} {
		if _, err := parse(t, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestSourcesOf(t *testing.T) {
	m := &gizzard.Map{Sites: map[string]gizzard.Site{
		"b": {Name: "b", ID: 2, NATSURL: "nats://b:1"},
		"a": {Name: "a", ID: 1, NATSURL: "nats://a:1"},
		"c": {Name: "c", ID: 3, NATSURL: "nats://c:1"},
	}}
	got := sourcesOf(m, "b")
	want := []replication.Source{{Name: "a", ID: 1, NATSURL: "nats://a:1"}, {Name: "c", ID: 3, NATSURL: "nats://c:1"}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("sources %+v, want %+v", got, want)
	}
	if got := sourcesOf(&gizzard.Map{Sites: map[string]gizzard.Site{"b": {Name: "b"}}}, "b"); len(got) != 0 {
		t.Errorf("a site alone: %+v", got)
	}
}

// replicaServer answers ApplyRemote with err, or with watermark.
type replicaServer struct {
	pb.UnimplementedReplicaServer
	err       error
	watermark uint64
	calls     atomic.Int32
}

func (s *replicaServer) ApplyRemote(context.Context, *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	s.calls.Add(1)
	if s.err != nil {
		return nil, s.err
	}
	return &pb.ApplyRemoteResponse{Watermark: s.watermark}, nil
}

func serveReplica(t *testing.T, s *replicaServer) string {
	t.Helper()
	l, err := netx.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(netx.ServerOptions()...)
	pb.RegisterReplicaServer(g, s)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

func TestApplierFailsOverOnUnavailable(t *testing.T) {
	down := &replicaServer{err: status.Error(codes.Unavailable, "node is not ready")}
	up := &replicaServer{watermark: 7}
	st, err := dialSite([]string{serveReplica(t, down), serveReplica(t, up)}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	resp, err := st.ApplyRemote(t.Context(), &pb.ApplyRemoteRequest{OriginSite: 1, OriginNode: "n"})
	if err != nil || resp.Watermark != 7 {
		t.Fatalf("ApplyRemote = %v, %v", resp, err)
	}
	// The first node is tried again on every call, and an error other than
	// Unavailable is the answer.
	down.err = status.Error(codes.FailedPrecondition, "gap: origin a/n applied up to 1, next entry 3 follows 2")
	_, err = st.ApplyRemote(t.Context(), &pb.ApplyRemoteRequest{OriginSite: 1, OriginNode: "n"})
	if status.Code(err) != codes.FailedPrecondition || down.calls.Load() != 2 || up.calls.Load() != 1 {
		t.Fatalf("err %v, calls %d and %d", err, down.calls.Load(), up.calls.Load())
	}
	up.err = status.Error(codes.Unavailable, "shutting down")
	down.err = status.Error(codes.Unavailable, "node is not ready")
	_, err = st.ApplyRemote(t.Context(), &pb.ApplyRemoteRequest{OriginSite: 1, OriginNode: "n"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("every node unavailable: %v", err)
	}
}

// startNode runs a one-node site in the test's process.
func startNode(t *testing.T, site string, id uint32) (*node.Node, *grpc.ClientConn) {
	t.Helper()
	return startTLSNode(t, site, id, nil, nil)
}

// startTLSNode runs a one-node site in the test's process with TLS by
// src (nil: plaintext), and returns a connection to it presenting client's
// certificate.
func startTLSNode(t *testing.T, site string, id uint32, src, client *tlsx.Source) (*node.Node, *grpc.ClientConn) {
	t.Helper()
	n, err := node.New(t.Context(), node.Config{
		DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		SiteName: site, SiteID: id, NodeID: "node-0", DefaultShards: 2, TLS: src,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node %s: %v", site, err)
		}
	})
	wctx, wcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer wcancel()
	if err := n.WaitReady(wctx); err != nil {
		t.Fatalf("node %s not ready: %v", site, err)
	}
	sec := &netx.Security{TLS: client}
	cc, err := netx.Dial(n.GRPCAddr(), sec.DialOption(n.GRPCAddr(), sec.NodePeer()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return n, cc
}

// siteOf returns site's entry in the map of the node behind cc.
func siteOf(t *testing.T, cc *grpc.ClientConn, site string) gizzard.Site {
	t.Helper()
	resp, err := pb.NewNameserverClient(cc).GetMap(t.Context(), &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var m gizzard.Map
	if err := json.Unmarshal(resp.MapJson, &m); err != nil {
		t.Fatal(err)
	}
	s, ok := m.Sites[site]
	if !ok {
		t.Fatalf("site %s is not in the map: %+v", site, m.Sites)
	}
	return s
}

func addSite(t *testing.T, cc *grpc.ClientConn, s gizzard.Site) {
	t.Helper()
	b, err := json.Marshal(gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpAddSite, Site: &s}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewNameserverClient(cc).Propose(t.Context(), &pb.ProposeRequest{ChangeJson: b}); err != nil {
		t.Fatalf("add site %s: %v", s.Name, err)
	}
}

// TestRelayBetweenTwoSites runs two one-node sites and the relay of the
// second: a write accepted by the first becomes readable at the second.
func TestRelayBetweenTwoSites(t *testing.T) {
	_, ccA := startNode(t, "site-a", 1)
	_, ccB := startNode(t, "site-b", 2)
	relayBetween(t, ccA, ccB, tlsx.Flags{})
}

// TestRelayBetweenTwoSitesTLS is TestRelayBetweenTwoSites with mutual TLS
// on every link: the relay (--tls-*) reaches its site's node with a relay
// certificate of site-b, and site-a's nats-server with it.
func TestRelayBetweenTwoSitesTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, err := tlsx.NewCA("test CA", time.Hour, "site-a", "site-b")
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(dir, "ca", caCert, caKey, false); err != nil {
		t.Fatal(err)
	}
	issue := func(id tlsx.Identity) tlsx.Flags {
		cert, key, err := tlsx.Issue(caCert, caKey, id, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlsx.WriteKeyPair(dir, id.Name, cert, key, false); err != nil {
			t.Fatal(err)
		}
		return tlsx.Flags{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, id.Name+".crt"), Key: filepath.Join(dir, id.Name+".key")}
	}
	load := func(f tlsx.Flags) *tlsx.Source {
		src, err := f.Load(slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	admin := load(issue(tlsx.Identity{Name: "admin", Role: tlsx.RoleAdmin}))
	_, ccA := startTLSNode(t, "site-a", 1, load(issue(tlsx.Identity{Name: "node-a", Role: tlsx.RoleNode, Site: "site-a"})), admin)
	_, ccB := startTLSNode(t, "site-b", 2, load(issue(tlsx.Identity{Name: "node-b", Role: tlsx.RoleNode, Site: "site-b"})), admin)
	relayBetween(t, ccA, ccB, issue(tlsx.Identity{Name: "relay-site-b", Role: tlsx.RoleRelay, Site: "site-b"}))
}

// relayBetween links the sites of ccA and ccB, writes at site-a and runs
// site-b's relay with tls until the write is readable at site-b.
func relayBetween(t *testing.T, ccA, ccB *grpc.ClientConn, tls tlsx.Flags) {
	t.Helper()
	a, b := siteOf(t, ccA, "site-a"), siteOf(t, ccB, "site-b")
	addSite(t, ccA, b)
	addSite(t, ccB, a)

	if _, err := pb.NewDataClient(ccA).Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("k1"), Value: []byte("from a")}); err != nil {
		t.Fatal(err)
	}

	httpAddr := testnet.Addr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{
			tls:   tls,
			addrs: []string{ccB.Target()}, httpAddr: httpAddr, batch: 64,
			maxWait: 50 * time.Millisecond, stallAfter: 5 * time.Second,
		}, slog.New(slog.DiscardHandler))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	dataB := pb.NewDataClient(ccB)
	poll(t, "the write at site-b", func() error {
		resp, err := dataB.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k1")})
		if err != nil {
			return err
		}
		if string(resp.Value) != "from a" {
			return errors.New("not there yet")
		}
		return nil
	})
	poll(t, "/status", func() error {
		var st []replication.PathStatus
		if err := getJSON("http://"+httpAddr+"/status", &st); err != nil {
			return err
		}
		if len(st) != 1 || st[0].Source != "site-a" || st[0].Applied < 1 || !st[0].Connected {
			return errors.New("status: not yet")
		}
		return nil
	})
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !strings.Contains(string(body), `aviary_relay_applied_entries_total{source="site-a"}`) {
		t.Errorf("metrics lack the relay's series:\n%s", body)
	}
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// poll calls fn until it returns nil, for up to 30s.
func poll(t *testing.T, what string, fn func() error) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond) // polling interval, not synchronisation
	defer tick.Stop()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
}
