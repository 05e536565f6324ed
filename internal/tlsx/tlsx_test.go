package tlsx_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoleAllows(t *testing.T) {
	// want[caller] lists the needs each caller is allowed, in Roles order.
	want := map[tlsx.Role][]tlsx.Role{
		tlsx.RoleRead:  {tlsx.RoleRead},
		tlsx.RoleWrite: {tlsx.RoleRead, tlsx.RoleWrite},
		tlsx.RoleAdmin: {tlsx.RoleRead, tlsx.RoleWrite, tlsx.RoleAdmin},
		tlsx.RoleNode:  {tlsx.RoleRead, tlsx.RoleWrite, tlsx.RoleAdmin, tlsx.RoleNode, tlsx.RoleRelay},
		tlsx.RoleRelay: {tlsx.RoleRelay},
		"root":         nil,
		"":             nil,
	}
	for caller, allowed := range want {
		for _, need := range append(slices.Clone(tlsx.Roles), "root", "") {
			if got := caller.Allows(need); got != slices.Contains(allowed, need) {
				t.Errorf("Role(%q).Allows(%q) = %t", caller, need, got)
			}
		}
	}
	if !tlsx.RoleRelay.AllowsAny(tlsx.RoleRead, tlsx.RoleRelay) || tlsx.RoleRead.AllowsAny(tlsx.RoleWrite, tlsx.RoleRelay) {
		t.Error("AllowsAny")
	}
	for _, r := range tlsx.Roles {
		if got, err := tlsx.ParseRole(string(r)); err != nil || got != r || !r.Valid() {
			t.Errorf("ParseRole(%q) = %q, %v", r, got, err)
		}
	}
	if _, err := tlsx.ParseRole("Admin"); !errors.Is(err, tlsx.ErrUnknownRole) {
		t.Errorf("ParseRole(Admin): %v, want ErrUnknownRole", err)
	}
}

func TestIdentityFromCert(t *testing.T) {
	subject := func(cn string, ou, o []string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn, OrganizationalUnit: ou, Organization: o}}
	}
	for _, tc := range []struct {
		cert *x509.Certificate
		want tlsx.Identity
		err  error
	}{
		{subject("node-0", []string{"node"}, []string{"site-a"}), tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-a"}, nil},
		{subject("alice", []string{"admin"}, nil), tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin}, nil},
		{subject("bob@corp", []string{"read", "ignored"}, []string{"site-b", "ignored"}), tlsx.Identity{Name: "bob@corp", Role: tlsx.RoleRead, Site: "site-b"}, nil},
		{subject("alice", nil, nil), tlsx.Identity{}, tlsx.ErrNoRole},
		{subject("alice", []string{""}, nil), tlsx.Identity{}, tlsx.ErrNoRole},
		{subject("alice", []string{"root"}, nil), tlsx.Identity{}, tlsx.ErrUnknownRole},
		{subject("relay-a", []string{"relay"}, nil), tlsx.Identity{}, tlsx.ErrBadIdentity},
		{subject("", []string{"read"}, nil), tlsx.Identity{}, tlsx.ErrBadIdentity},
		{subject("../etc", []string{"read"}, nil), tlsx.Identity{}, tlsx.ErrBadIdentity},
		{subject("a b", []string{"read"}, nil), tlsx.Identity{}, tlsx.ErrBadIdentity},
		{nil, tlsx.Identity{}, tlsx.ErrBadIdentity},
	} {
		got, err := tlsx.IdentityFromCert(tc.cert)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("IdentityFromCert(%v) = %v, %v; want %v, %v", tc.cert, got, err, tc.want, tc.err)
		}
	}
}

func TestServerNameOf(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5:7390":                   "10.0.0.5",
		"[::1]:7390":                      "::1",
		"::1":                             "::1",
		"node-0.site-a":                   "node-0.site-a",
		"localhost:0":                     "localhost",
		"nats://user:pw@nats-0.a:4222":    "nats-0.a",
		"tls://[fe80::1]:4222":            "fe80::1",
		"dns:///node-0:7390":              "node-0",
		"passthrough:///127.0.0.1:7390":   "127.0.0.1",
		"unix:///var/run/aviary.sock":     "var/run/aviary.sock",
		"node-1.site-b.example.com:12345": "node-1.site-b.example.com",
	} {
		if got := tlsx.ServerNameOf(in); got != want {
			t.Errorf("ServerNameOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// pki is a test CA.
type pki struct {
	name         string
	cert, key    []byte
	certificate  *x509.Certificate
	certificates *x509.CertPool
}

func newPKI(t *testing.T, name string, sites ...string) *pki {
	t.Helper()
	c, k, err := tlsx.NewCA(name, 24*time.Hour, sites...)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{name: name, cert: c, key: k, certificate: parseCert(t, c), certificates: x509.NewCertPool()}
	p.certificates.AddCert(p.certificate)
	return p
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", b)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issue writes a pair for id to dir/base.crt and .key (replacing them),
// and returns the certificate.
func (p *pki) issue(t *testing.T, dir, base string, id tlsx.Identity, hosts ...string) *x509.Certificate {
	t.Helper()
	c, k, err := tlsx.Issue(p.cert, p.key, id, hosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(dir, base, c, k, true); err != nil {
		t.Fatal(err)
	}
	return parseCert(t, c)
}

// writeCA writes the bundle of cas to path.
func writeCA(t *testing.T, path string, cas ...*pki) {
	t.Helper()
	var b []byte
	for _, p := range cas {
		b = append(b, p.cert...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

var (
	node0 = tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-a"}
	node1 = tlsx.Identity{Name: "node-1", Role: tlsx.RoleNode, Site: "site-a"}
	alice = tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin}
)

// party is one end's files: its CA bundle and, unless it has none, its
// key pair, in a directory of its own.
type party struct {
	files tlsx.Files
	cert  *x509.Certificate
}

func newParty(t *testing.T, trusts []*pki, signer *pki, id tlsx.Identity, hosts ...string) party {
	t.Helper()
	dir := t.TempDir()
	pt := party{files: tlsx.Files{CA: filepath.Join(dir, "ca.crt")}}
	writeCA(t, pt.files.CA, trusts...)
	if signer != nil {
		pt.cert = signer.issue(t, dir, id.Name, id, hosts...)
		pt.files.Cert, pt.files.Key = filepath.Join(dir, id.Name+".crt"), filepath.Join(dir, id.Name+".key")
	}
	return pt
}

// clock is a test clock: it moves only when told.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *clock) options() tlsx.Options   { return tlsx.Options{Now: c.Now} }
func (p party) load(t *testing.T, c *clock) *tlsx.Source {
	t.Helper()
	s, err := tlsx.Load(p.files, c.options())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve accepts TLS connections on a loopback port until the test ends.
// On each it completes the handshake and writes one line: the identity of
// the client's verified certificate, or "-" for none.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					return
				}
				who := "-"
				if cs := tc.ConnectionState(); len(cs.VerifiedChains) > 0 {
					id, err := tlsx.IdentityFromCert(cs.VerifiedChains[0][0])
					who = id.String()
					if err != nil {
						who = "invalid: " + err.Error()
					}
				}
				fmt.Fprintln(tc, who)
			})
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

// connect connects to addr with cfg and returns the server's certificate
// and the server's line: in TLS 1.3 the client finishes its handshake
// first, so a client certificate the server refuses shows on this read.
func connect(t *testing.T, addr string, cfg *tls.Config) (*x509.Certificate, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return nil, "", err
	}
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], strings.TrimSpace(line), nil
}

func TestHandshake(t *testing.T) {
	ca, other := newPKI(t, "test CA", "site-a"), newPKI(t, "other CA")
	clk := newClock()
	server := newParty(t, []*pki{ca}, ca, node0, "127.0.0.1", "localhost").load(t, clk)
	asNode := tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}, Site: "site-a"}
	mtls := serve(t, server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))
	nodesOnly := serve(t, server.ServerConfig(tls.RequireAndVerifyClientCert, asNode))
	ifGiven := serve(t, server.ServerConfig(tls.VerifyClientCertIfGiven, tlsx.Expect{}))
	// RequireAnyClientCert is taken as RequireAndVerifyClientCert.
	anyCert := serve(t, server.ServerConfig(tls.RequireAnyClientCert, tlsx.Expect{}))

	client := newParty(t, []*pki{ca}, ca, alice).load(t, clk)
	peer := newParty(t, []*pki{ca}, ca, node1, "127.0.0.1").load(t, clk)
	tokenOnly := newParty(t, []*pki{ca}, nil, tlsx.Identity{}).load(t, clk)
	stranger := newParty(t, []*pki{ca}, other, tlsx.Identity{Name: "mallory", Role: tlsx.RoleAdmin}, "127.0.0.1").load(t, clk)
	// An admin of the right CA whose certificate names the server's
	// address: it must not pass for a node.
	impostor := newParty(t, []*pki{ca}, ca, tlsx.Identity{Name: "eve", Role: tlsx.RoleAdmin}, "127.0.0.1").load(t, clk)
	if _, _, err := tlsx.Issue(ca.cert, ca.key, tlsx.Identity{Name: "node-9", Role: tlsx.RoleNode, Site: "site-b"}, nil, time.Hour); !errors.Is(err, tlsx.ErrBadIdentity) {
		t.Fatalf("issue for a site the CA does not serve: %v, want ErrBadIdentity", err)
	}
	siteB := newPKI(t, "site-b CA", "site-b")
	foreignNode := newParty(t, []*pki{ca, siteB}, siteB, tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-b"}, "127.0.0.1").load(t, clk)
	serverTrustsB := newParty(t, []*pki{ca, siteB}, ca, node0, "127.0.0.1").load(t, clk)
	nodesOfA := serve(t, serverTrustsB.ServerConfig(tls.RequireAndVerifyClientCert, asNode))

	addrName := "127.0.0.1"
	for _, tc := range []struct {
		name   string
		addr   string
		cfg    *tls.Config
		who    string // the server's view of the client; "" for a refusal
		errHas string
	}{
		{"admin client", mtls, client.ClientConfig(addrName, tlsx.Expect{}), "alice (admin)", ""},
		{"admin client by DNS name", mtls, client.ClientConfig("localhost", asNode), "alice (admin)", ""},
		{"node peer", nodesOnly, peer.ClientConfig(addrName, asNode), "node-1 (node, site-a)", ""},
		{"node of another site trusted by the CA bundle", nodesOfA, foreignNode.ClientConfig(addrName, tlsx.Expect{}), "", "bad certificate"},
		{"no client certificate", mtls, tokenOnly.ClientConfig(addrName, tlsx.Expect{}), "", "certificate required"},
		{"no client certificate, any certificate required", anyCert, tokenOnly.ClientConfig(addrName, tlsx.Expect{}), "", "certificate required"},
		{"client of another CA", mtls, stranger.ClientConfig(addrName, tlsx.Expect{}), "", "unknown certificate authority"},
		{"client of another CA, any certificate required", anyCert, stranger.ClientConfig(addrName, tlsx.Expect{}), "", "unknown certificate authority"},
		{"token client where certificates are optional", ifGiven, tokenOnly.ClientConfig(addrName, tlsx.Expect{}), "-", ""},
		{"certificate of another CA where certificates are optional", ifGiven, stranger.ClientConfig(addrName, tlsx.Expect{}), "", "unknown certificate authority"},
		{"admin where a node is expected", nodesOnly, client.ClientConfig(addrName, tlsx.Expect{}), "", "bad certificate"},
		{"wrong server name", mtls, client.ClientConfig("node-7.site-a", tlsx.Expect{}), "", "not node-7.site-a"},
		{"no server name", mtls, client.ClientConfig("", tlsx.Expect{}), "", "no server name"},
		{"server of the wrong role", serve(t, impostor.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{})), client.ClientConfig(addrName, asNode), "", "role admin"},
		{"server of the wrong site", nodesOfA, peer.ClientConfig(addrName, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}, Site: "site-b"}), "", `site "site-a"`},
		{"server of another CA", serve(t, stranger.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{})), client.ClientConfig(addrName, tlsx.Expect{}), "", "unknown authority"},
		{"TLS 1.2 client", mtls, &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}, "", "protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, who, err := connect(t, tc.addr, tc.cfg)
			if tc.who == "" {
				if err == nil {
					t.Fatalf("connected (server says %q), want a refusal", who)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("refused with %v, want it to say %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if who != tc.who {
				t.Fatalf("server sees %q, want %q", who, tc.who)
			}
			if got.Subject.CommonName == "" {
				t.Fatal("no server certificate")
			}
		})
	}
}

func TestGRPC(t *testing.T) {
	ca := newPKI(t, "test CA")
	clk := newClock()
	server := newParty(t, []*pki{ca}, ca, node0, "127.0.0.1").load(t, clk)
	seen := make(chan tlsx.Identity, 1)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, ok := tlsx.PeerIdentity(ctx)
			if !ok {
				return nil, status.Error(codes.Unauthenticated, "no identity")
			}
			seen <- id
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(l) })
	t.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	addr := l.Addr().String()

	check := func(p party, want tlsx.Expect) error {
		t.Helper()
		src := p.load(t, clk)
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig(tlsx.ServerNameOf(addr), want))))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(newParty(t, []*pki{ca}, ca, alice), tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}}); err != nil {
		t.Fatal(err)
	}
	if id := <-seen; id != alice {
		t.Fatalf("PeerIdentity: %v, want %v", id, alice)
	}
	err = check(newParty(t, []*pki{ca}, nil, tlsx.Identity{}), tlsx.Expect{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("without a client certificate: %v, want Unavailable", err)
	}
	err = check(newParty(t, []*pki{ca}, ca, alice), tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleRelay}})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "role node") {
		t.Fatalf("expecting a relay server: %v, want Unavailable naming role node", err)
	}
}

// TestNATS runs an embedded NATS server on a ServerConfig and connects a
// nats.go client with a ClientConfig.
func TestNATS(t *testing.T) {
	ca := newPKI(t, "test CA", "site-a")
	clk := newClock()
	server := newParty(t, []*pki{ca}, ca, node0, "127.0.0.1").load(t, clk)
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		TLS: true, TLSVerify: true, TLSTimeout: 5,
		TLSConfig: server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode, tlsx.RoleRelay}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	url := ns.ClientURL()
	relay := newParty(t, []*pki{ca}, ca, tlsx.Identity{Name: "relay-site-a", Role: tlsx.RoleRelay, Site: "site-a"}).load(t, clk)
	nc, err := nats.Connect(url, nats.Secure(relay.ClientConfig(tlsx.ServerNameOf(url), tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}})), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	nc.Close()

	admin := newParty(t, []*pki{ca}, ca, alice).load(t, clk)
	if nc, err := nats.Connect(url, nats.Secure(admin.ClientConfig(tlsx.ServerNameOf(url), tlsx.Expect{})), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("an admin connected to NATS, want it refused")
	}
}

func TestReloadKeyPair(t *testing.T) {
	ca := newPKI(t, "test CA")
	clk := newClock()
	sp := newParty(t, []*pki{ca}, ca, node0, "127.0.0.1")
	server := sp.load(t, clk)
	addr := serve(t, server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))
	client := newParty(t, []*pki{ca}, ca, alice).load(t, clk).ClientConfig("127.0.0.1", tlsx.Expect{})

	serial := func() *big.Int {
		t.Helper()
		c, _, err := connect(t, addr, client)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber
	}
	if got := serial(); got.Cmp(sp.cert.SerialNumber) != 0 {
		t.Fatalf("serial %x, want %x", got, sp.cert.SerialNumber)
	}
	next := ca.issue(t, filepath.Dir(sp.files.Cert), "node-0", node0, "127.0.0.1")
	if got := serial(); got.Cmp(sp.cert.SerialNumber) != 0 {
		t.Fatalf("within the check interval: serial %x, want the old %x", got, sp.cert.SerialNumber)
	}
	clk.Advance(time.Second)
	if got := serial(); got.Cmp(next.SerialNumber) != 0 {
		t.Fatalf("after the check interval: serial %x, want the new %x", got, next.SerialNumber)
	}
	if err := server.LastError(); err != nil {
		t.Fatal(err)
	}
	if id, err := server.Identity(); err != nil || id != node0 {
		t.Fatalf("Identity: %v, %v", id, err)
	}
}

func TestReloadCARotation(t *testing.T) {
	oldCA, newCA := newPKI(t, "CA 2029"), newPKI(t, "CA 2030")
	clk := newClock()
	sp := newParty(t, []*pki{oldCA}, oldCA, node0, "127.0.0.1")
	server := sp.load(t, clk)
	addr := serve(t, server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))
	oldClient := newParty(t, []*pki{oldCA}, oldCA, alice)
	oldClientCfg := oldClient.load(t, clk).ClientConfig("127.0.0.1", tlsx.Expect{})
	newClient := newParty(t, []*pki{oldCA, newCA}, newCA, tlsx.Identity{Name: "bob", Role: tlsx.RoleWrite}).load(t, clk).ClientConfig("127.0.0.1", tlsx.Expect{})

	if _, _, err := connect(t, addr, newClient); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Fatalf("a client of the new CA before the server trusts it: %v, want unknown certificate authority", err)
	}
	// Step 1: every party trusts both CAs.
	writeCA(t, sp.files.CA, oldCA, newCA)
	writeCA(t, oldClient.files.CA, oldCA, newCA)
	clk.Advance(time.Second)
	for name, cfg := range map[string]*tls.Config{"old": oldClientCfg, "new": newClient} {
		if _, _, err := connect(t, addr, cfg); err != nil {
			t.Fatalf("%s client with both CAs trusted: %v", name, err)
		}
	}
	// Step 2: the server's pair from the new CA.
	next := newCA.issue(t, filepath.Dir(sp.files.Cert), "node-0", node0, "127.0.0.1")
	clk.Advance(time.Second)
	for name, cfg := range map[string]*tls.Config{"old": oldClientCfg, "new": newClient} {
		c, _, err := connect(t, addr, cfg)
		if err != nil {
			t.Fatalf("%s client, server of the new CA: %v", name, err)
		}
		if c.SerialNumber.Cmp(next.SerialNumber) != 0 {
			t.Fatalf("%s client: serial %x, want the new %x", name, c.SerialNumber, next.SerialNumber)
		}
	}
	// Step 3: the old CA retires, and its certificates with it.
	writeCA(t, sp.files.CA, newCA)
	clk.Advance(time.Second)
	if _, _, err := connect(t, addr, oldClientCfg); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Fatalf("a client of the retired CA: %v, want unknown certificate authority", err)
	}
	// And a client whose bundle drops the new CA refuses the server.
	writeCA(t, oldClient.files.CA, oldCA)
	clk.Advance(time.Second)
	if _, _, err := connect(t, addr, oldClientCfg); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("a client that does not trust the new CA: %v, want unknown authority", err)
	}
}

func TestReloadFailureKeepsLastGood(t *testing.T) {
	ca := newPKI(t, "test CA")
	clk := newClock()
	sp := newParty(t, []*pki{ca}, ca, node0, "127.0.0.1")
	var logs syncBuffer
	opts := clk.options()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	server, err := tlsx.Load(sp.files, opts)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, server.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))
	client := newParty(t, []*pki{ca}, ca, alice).load(t, clk).ClientConfig("127.0.0.1", tlsx.Expect{})
	servesOld := func(what string) {
		t.Helper()
		clk.Advance(time.Second)
		c, _, err := connect(t, addr, client)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if c.SerialNumber.Cmp(sp.cert.SerialNumber) != 0 {
			t.Fatalf("%s: serial %x, want the last good %x", what, c.SerialNumber, sp.cert.SerialNumber)
		}
		if server.LastError() == nil {
			t.Fatalf("%s: no LastError", what)
		}
	}
	good, err := os.ReadFile(sp.files.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sp.files.Cert, good[:len(good)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	servesOld("truncated certificate")
	servesOld("truncated certificate, again")
	if err := server.Reload(); err == nil || !strings.Contains(err.Error(), sp.files.Cert) {
		t.Fatalf("Reload: %v, want an error naming %s", err, sp.files.Cert)
	}

	other, _, err := tlsx.Issue(ca.cert, ca.key, node0, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sp.files.Cert, other, 0o644); err != nil {
		t.Fatal(err)
	}
	servesOld("certificate of another key")
	if err := server.LastError(); !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("LastError: %v, want a key mismatch", err)
	}
	if strings.Contains(server.LastError().Error(), "PRIVATE KEY") {
		t.Fatal("LastError shows key material")
	}

	if err := os.Remove(sp.files.CA); err != nil {
		t.Fatal(err)
	}
	servesOld("missing CA bundle")
	if err := server.LastError(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LastError: %v, want ErrNotExist", err)
	}

	// Restored, the files serve again and the error clears.
	writeCA(t, sp.files.CA, ca)
	if err := os.WriteFile(sp.files.Cert, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := server.Reload(); err != nil {
		t.Fatal(err)
	}
	if server.LastError() != nil {
		t.Fatal(server.LastError())
	}
	if _, _, err := connect(t, addr, client); err != nil {
		t.Fatal(err)
	}

	// Load itself fails on bad files.
	if _, err := tlsx.Load(tlsx.Files{CA: sp.files.CA, Cert: sp.files.Cert}, tlsx.Options{}); err == nil {
		t.Fatal("Load of a certificate without its key succeeded")
	}
	if _, err := tlsx.Load(tlsx.Files{CA: sp.files.Cert}, tlsx.Options{}); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("Load of a leaf as the CA bundle: %v", err)
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestIssue(t *testing.T) {
	ca := newPKI(t, "test CA")
	certPEM, keyPEM, err := tlsx.Issue(ca.cert, ca.key, node0, []string{"127.0.0.1", " node-0.site-a ", "[::1]", ""}, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, certPEM)
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.certificates, DNSName: "node-0.site-a", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.certificates, DNSName: "::1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.DNSNames, c.IPAddresses); got != "[node-0.site-a] [127.0.0.1 ::1]" {
		t.Fatalf("SANs %s", got)
	}
	if id, err := tlsx.IdentityFromCert(c); err != nil || id != node0 {
		t.Fatalf("identity %v, %v", id, err)
	}
	if c.SerialNumber.BitLen() < 64 || c.SerialNumber.BitLen() > 128 {
		t.Fatalf("serial of %d bits", c.SerialNumber.BitLen())
	}
	if !c.NotAfter.Equal(ca.certificate.NotAfter) {
		t.Fatalf("NotAfter %s, want the CA's %s", c.NotAfter, ca.certificate.NotAfter)
	}
	other := newPKI(t, "other CA")
	if _, _, err := tlsx.Issue(ca.cert, other.key, alice, nil, time.Hour); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("a CA certificate with another CA's key: %v", err)
	}
	if _, _, err := tlsx.Issue(certPEM, keyPEM, alice, nil, time.Hour); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("a leaf as the CA: %v", err)
	}
	if _, _, err := tlsx.Issue(ca.cert, ca.key, alice, []string{"http://x"}, time.Hour); err == nil {
		t.Fatal("a URL as a host was accepted")
	}
}

func TestWriteKeyPair(t *testing.T) {
	ca := newPKI(t, "test CA")
	dir := filepath.Join(t.TempDir(), "certs")
	if err := tlsx.WriteKeyPair(dir, "ca", ca.cert, ca.key, false); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{"ca.crt": 0o644, "ca.key": 0o600, ".": fs.ModeDir | 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %s, want %s", name, fi.Mode(), want)
		}
	}
	if err := tlsx.WriteKeyPair(dir, "ca", ca.cert, ca.key, false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v, want ErrExist", err)
	}
	other := newPKI(t, "other CA")
	if err := tlsx.WriteKeyPair(dir, "ca", other.cert, other.key, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(b) != string(other.key) {
		t.Fatal("overwrite did not replace the key")
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := tlsx.WriteKeyPair(dir, "../x", ca.cert, ca.key, false); err == nil {
		t.Fatal("a path as the base name was accepted")
	}
}

func TestCheckExposure(t *testing.T) {
	for _, c := range []struct {
		addr     string
		insecure bool
		ok       bool
	}{
		{"127.0.0.1:7390", false, true},
		{"[::1]:7390", false, true},
		{"localhost:7390", false, true},
		{"0.0.0.0:7390", false, false},
		{":7390", false, false},
		{"10.0.0.5:7390", false, false},
		{"10.0.0.5:7390", true, true},
	} {
		err := tlsx.CheckExposure(nil, c.insecure, c.addr)
		if (err == nil) != c.ok {
			t.Errorf("%s insecure=%v: %v", c.addr, c.insecure, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%s: the error does not say how: %v", c.addr, err)
		}
	}
}
