package node

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testPKI is a CA in a directory and the certificates issued by it.
type testPKI struct {
	t             *testing.T
	dir           string
	caCert, caKey []byte
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	cert, key, err := tlsx.NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{t: t, dir: t.TempDir(), caCert: cert, caKey: key}
	if err := tlsx.WriteKeyPair(p.dir, "ca", cert, key, false); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue returns a Source with a certificate of id for 127.0.0.1.
func (p *testPKI) issue(id tlsx.Identity, hosts ...string) *tlsx.Source {
	p.t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	cert, key, err := tlsx.Issue(p.caCert, p.caKey, id, hosts, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(p.dir, id.Name, cert, key, true); err != nil {
		p.t.Fatal(err)
	}
	src, err := tlsx.Load(tlsx.Files{CA: filepath.Join(p.dir, "ca.crt"), Cert: filepath.Join(p.dir, id.Name+".crt"), Key: filepath.Join(p.dir, id.Name+".key")}, tlsx.Options{})
	if err != nil {
		p.t.Fatal(err)
	}
	return src
}

// dialAs returns a Data and a Nameserver client of addr presenting src's
// certificate (nil: plaintext), expecting the server to be a node.
func dialAs(t *testing.T, src *tlsx.Source, addr string) (pb.DataClient, pb.NameserverClient) {
	t.Helper()
	sec := &netx.Security{TLS: src}
	cc, err := netx.Dial(addr, sec.DialOption(addr, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewDataClient(cc), pb.NewNameserverClient(cc)
}

// TestTLS runs a three-node site with mutual TLS on every link (clients,
// node to node, raft, the embedded nats-server) and checks who gets in:
// roles are enforced, and peers without a certificate, with one of another
// CA, with the wrong name or the wrong role are refused.
func TestTLS(t *testing.T) {
	pki := newTestPKI(t, "site-a CA")
	const site = "site-a"
	var nodes []*testNode
	for i := range 3 {
		id := "node-" + string(rune('0'+i))
		cfg := Config{NodeID: id, WorkerID: uint32(i), SiteName: site, SiteID: 1, DefaultShards: 2, NATSAddr: "127.0.0.1:0",
			TLS: pki.issue(tlsx.Identity{Name: id, Role: tlsx.RoleNode, Site: site})}
		if i > 0 {
			cfg.Join = nodes[0].n.GRPCAddr()
		} else {
			cfg.NATSURL = ""
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	addr := nodes[0].n.GRPCAddr()
	ctx := t.Context()

	// The site formed over TLS: every node is in the map (raft and Join).
	waitFor(t, 20*time.Second, func() error {
		m := nodes[0].n.ns.Map()
		if len(m.Nodes) != 3 {
			return status.Errorf(codes.Unavailable, "%d nodes in the map", len(m.Nodes))
		}
		return nil
	})

	admin := pki.issue(tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin})
	writer := pki.issue(tlsx.Identity{Name: "svc", Role: tlsx.RoleWrite})
	reader := pki.issue(tlsx.Identity{Name: "dash", Role: tlsx.RoleRead})

	data, ns := dialAs(t, admin, addr)
	if _, err := data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("admin put: %v", err)
	}
	note, _ := json.Marshal(gizzard.Change{Who: "ops-user", Steps: []gizzard.Step{{Op: gizzard.OpNote, Note: "tls test"}}})
	if _, err := ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: note}); err != nil {
		t.Fatalf("admin propose: %v", err)
	}
	waitFor(t, 10*time.Second, func() error {
		m := nodes[0].n.ns.Map()
		last := m.Audit[len(m.Audit)-1]
		if !strings.Contains(last.What, "tls test") {
			return status.Error(codes.Unavailable, "note not applied yet")
		}
		if !strings.Contains(last.Who, "alice (admin") || !strings.Contains(last.Who, "as ops-user") {
			t.Fatalf("the audit log records %q, not the certificate's identity", last.Who)
		}
		return nil
	})

	// A writer writes and reads but cannot change the shard map.
	data, ns = dialAs(t, writer, addr)
	if _, err := data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k2"), Value: []byte("v")}); err != nil {
		t.Fatalf("writer put: %v", err)
	}
	_, err := ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: note})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "svc (write") {
		t.Fatalf("a writer changing the shard map: %v, want PermissionDenied naming it", err)
	}
	// A reader reads only.
	data, _ = dialAs(t, reader, addr)
	if _, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); err != nil {
		t.Fatalf("reader get: %v", err)
	}
	if _, err := data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k3"), Value: []byte("v")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reader put: %v, want PermissionDenied", err)
	}

	// Refused at the handshake: no certificate, another CA, the wrong name.
	other := newTestPKI(t, "another CA")
	stranger := other.issue(tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin})
	for what, src := range map[string]*tlsx.Source{"no certificate": nil, "a certificate of another CA": stranger} {
		plain := src == nil
		if plain {
			// TLS without a client certificate: the CA only.
			var err error
			if src, err = tlsx.Load(tlsx.Files{CA: filepath.Join(pki.dir, "ca.crt")}, tlsx.Options{}); err != nil {
				t.Fatal(err)
			}
		}
		data, _ := dialAs(t, src, addr)
		_, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want the handshake refused (Unavailable)", what, err)
		}
	}
	// A plaintext client.
	if data, _ := dialAs(t, nil, addr); true {
		if _, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext: %v, want Unavailable", err)
		}
	}
	// The client checks the server's name: a node whose certificate does
	// not name the address it is dialed at is refused.
	sec := &netx.Security{TLS: admin}
	cc, err := netx.Dial(addr, sec.DialOption("localhost:1", tlsx.Expect{}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := pb.NewDataClient(cc).Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) != codes.Unavailable {
		t.Errorf("wrong server name: %v, want Unavailable", err)
	}

	// A node of another site is not a node of this one.
	data, _ = dialAs(t, pki.issue(tlsx.Identity{Name: "node-7", Role: tlsx.RoleNode, Site: "site-b"}), addr)
	if _, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `belongs to site "site-b"`) {
		t.Errorf("a node of another site: %v, want PermissionDenied naming its site", err)
	}

	// Raft takes nodes of the site only: no certificate, an admin's, a
	// node of another site or of another CA is refused at the handshake.
	caOnly, err := tlsx.Load(tlsx.Files{CA: filepath.Join(pki.dir, "ca.crt")}, tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	raftAddr := nodes[0].n.ns.Addr()
	for what, src := range map[string]*tlsx.Source{
		"no certificate":      caOnly,
		"an admin":            admin,
		"a node of site-b":    pki.issue(tlsx.Identity{Name: "node-9", Role: tlsx.RoleNode, Site: "site-b"}),
		"another CA's node-1": other.issue(tlsx.Identity{Name: "node-1", Role: tlsx.RoleNode, Site: site}),
	} {
		c, err := tls.Dial("tcp", raftAddr, src.ClientConfig("127.0.0.1", tlsx.Expect{}))
		if err == nil {
			// TLS 1.3: the server's verdict on the client's certificate
			// arrives with the first read.
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			_ = c.Close()
		}
		if err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("raft transport took %s: %v", what, err)
		}
	}

	// The embedded nats-server takes nodes and relays of the CA only.
	natsURL := nodes[0].n.repl.url()
	for what, c := range map[string]struct {
		src *tlsx.Source
		ok  bool
	}{
		"a relay":            {pki.issue(tlsx.Identity{Name: "relay-site-b", Role: tlsx.RoleRelay, Site: "site-b"}), true},
		"an admin":           {admin, false},
		"another CA's relay": {other.issue(tlsx.Identity{Name: "relay-site-b", Role: tlsx.RoleRelay, Site: "site-b"}), false},
	} {
		nc, err := nats.Connect(natsURL, nats.Secure(c.src.ClientConfig(tlsx.ServerNameOf(natsURL), tlsx.Expect{})), nats.Timeout(5*time.Second))
		if err == nil {
			err = nc.Flush()
			nc.Close()
		}
		if (err == nil) != c.ok {
			t.Errorf("nats, %s: %v (want ok=%v)", what, err, c.ok)
		}
	}
	// A relay may read its consumer, not write the stream.
	relay := pki.issue(tlsx.Identity{Name: "relay-site-c", Role: tlsx.RoleRelay, Site: "site-c"})
	violations := make(chan error, 4)
	nc, err := nats.Connect(natsURL, nats.Secure(relay.ClientConfig(tlsx.ServerNameOf(natsURL), tlsx.Expect{})),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("aviary.repl.site-a.node-0", []byte("forged")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case err := <-violations:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("a relay publishing to the stream: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a relay published to site-a's replication subject unrefused")
	}
	if nc, err := nats.Connect(natsURL, nats.Timeout(5*time.Second)); err == nil {
		err = nc.Flush()
		nc.Close()
		if err == nil {
			t.Error("nats took a plaintext client")
		}
	}
}

// TestClientRateLimit: a client above --client-rate gets ResourceExhausted
// naming the limit; another client is not held back by it.
func TestClientRateLimit(t *testing.T) {
	pki := newTestPKI(t, "CA")
	tn := startNode(t, Config{NodeID: "node-0", SiteName: "site-a", ClientRate: 0.001, ClientBurst: 3,
		TLS: pki.issue(tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-a"})})
	ctx := t.Context()
	greedy, _ := dialAs(t, pki.issue(tlsx.Identity{Name: "greedy", Role: tlsx.RoleRead}), tn.n.GRPCAddr())
	calls, limited := 0, 0
	for range 6 {
		_, err := greedy.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")})
		calls++
		if status.Code(err) == codes.ResourceExhausted {
			limited++
			if !strings.Contains(err.Error(), "greedy (read") {
				t.Fatalf("the refusal does not name the client: %v", err)
			}
		}
	}
	if limited != 3 {
		t.Fatalf("%d of %d calls over a burst of 3 were refused, want 3", limited, calls)
	}
	other, _ := dialAs(t, pki.issue(tlsx.Identity{Name: "other", Role: tlsx.RoleRead}), tn.n.GRPCAddr())
	if _, err := other.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("another client was limited: %v", err)
	}
}

// TestTokens: with --tokens, a client without a certificate authenticates
// each call with a bearer token, whose role is enforced; a wrong or missing
// token is Unauthenticated; certificates still work.
func TestTokens(t *testing.T) {
	pki := newTestPKI(t, "CA")
	writeTok, writeLine, err := tlsx.NewToken(tlsx.Identity{Name: "svc", Role: tlsx.RoleWrite})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsx.NewToken(tlsx.Identity{Name: "n", Role: tlsx.RoleNode, Site: "local"}); err == nil {
		t.Fatal("a token of role node was made")
	}
	path := filepath.Join(pki.dir, "tokens")
	if err := os.WriteFile(path, []byte("# tokens\n"+writeLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := tlsx.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	tn := startNode(t, Config{NodeID: "node-0", Tokens: tokens, TLS: pki.issue(tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "local"})})
	caOnly, err := tlsx.Load(tlsx.Files{CA: filepath.Join(pki.dir, "ca.crt")}, tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr, ctx := tn.n.GRPCAddr(), t.Context()
	dialToken := func(tok string) (pb.DataClient, pb.NameserverClient) {
		sec := &netx.Security{TLS: caOnly}
		opts := []grpc.DialOption{sec.DialOption(addr, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}})}
		if tok != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(tlsx.BearerToken(tok)))
		}
		cc, err := netx.Dial(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return pb.NewDataClient(cc), pb.NewNameserverClient(cc)
	}
	data, ns := dialToken(writeTok)
	if _, err := data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("put with a write token: %v", err)
	}
	note, _ := json.Marshal(gizzard.Change{Who: "x", Steps: []gizzard.Step{{Op: gizzard.OpNote, Note: "n"}}})
	if _, err := ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: note}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("propose with a write token: %v, want PermissionDenied", err)
	}
	for what, tok := range map[string]string{"a wrong token": "not-a-token", "no token": ""} {
		data, _ := dialToken(tok)
		if _, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", what, err)
		}
	}
	data, _ = dialAs(t, pki.issue(tlsx.Identity{Name: "dash", Role: tlsx.RoleRead}), addr)
	if _, err := data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); err != nil {
		t.Fatalf("a certificate beside tokens: %v", err)
	}
}
