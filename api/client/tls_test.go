package client_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// testCA is a CA in a temporary directory.
type testCA struct {
	t         *testing.T
	dir       string
	cert, key []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	cert, key, err := tlsx.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	if err := tlsx.WriteKeyPair(ca.dir, "ca", cert, key, false); err != nil {
		t.Fatal(err)
	}
	return ca
}

// source issues a certificate for id (for 127.0.0.1) and loads it.
func (ca *testCA) source(id tlsx.Identity) *tlsx.Source {
	ca.t.Helper()
	cert, key, err := tlsx.Issue(ca.cert, ca.key, id, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		ca.t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(ca.dir, id.Name, cert, key, true); err != nil {
		ca.t.Fatal(err)
	}
	src, err := tlsx.Load(tlsx.Files{CA: filepath.Join(ca.dir, "ca.crt"), Cert: filepath.Join(ca.dir, id.Name+".crt"), Key: filepath.Join(ca.dir, id.Name+".key")}, tlsx.Options{})
	if err != nil {
		ca.t.Fatal(err)
	}
	return src
}

// startTLSFake is startFake's site served with mutual TLS by src.
func startTLSFake(t *testing.T, name string, src *tlsx.Source) *fakeSite {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSite{name: name, addr: l.Addr().String()}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(src.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))))
	pb.RegisterDataServer(srv, f)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

// TestWithTLS: Dial and DialSites with WithTLS reach nodes that require
// client certificates; without it, or when the server is not a node of
// the CA, the call fails.
func TestWithTLS(t *testing.T) {
	ca := newTestCA(t)
	site := startTLSFake(t, "east", ca.source(tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "east"}))
	admin := ca.source(tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin})
	get := &pb.GetRequest{Table: "statuses", Key: []byte("k")}

	c, err := client.Dial([]string{site.addr}, client.WithTLS(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Get(t.Context(), get); err != nil || string(r.Value) != "east" {
		t.Fatalf("get over TLS: %v, %v", r, err)
	}
	s := dialSites(t, []client.Site{site.site()}, client.WithTLS(admin), client.WithProbeTimeout(time.Second))
	if r, err := s.Get(t.Context(), get); err != nil || string(r.Value) != "east" {
		t.Fatalf("sites get over TLS: %v, %v", r, err)
	}

	// Plaintext, and TLS to a server that is not a node: refused.
	plain, err := client.Dial([]string{site.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Get(t.Context(), get); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext get: %v, want Unavailable", err)
	}
	impostor := startTLSFake(t, "west", ca.source(tlsx.Identity{Name: "bob", Role: tlsx.RoleAdmin}))
	c2, err := client.Dial([]string{impostor.addr}, client.WithTLS(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Get(t.Context(), get); status.Code(err) != codes.Unavailable {
		t.Errorf("get from a server with an admin's certificate: %v, want Unavailable", err)
	}
}

// TestWithDialOptions: a program that cannot use tlsx brings its own
// credentials, built with crypto/tls from the same files.
func TestWithDialOptions(t *testing.T) {
	ca := newTestCA(t)
	site := startTLSFake(t, "east", ca.source(tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "east"}))
	ca.source(tlsx.Identity{Name: "carol", Role: tlsx.RoleRead})
	pair, err := tls.LoadX509KeyPair(filepath.Join(ca.dir, "carol.crt"), filepath.Join(ca.dir, "carol.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.cert) {
		t.Fatal("CA certificate not added")
	}
	c, err := client.Dial([]string{site.addr}, client.WithDialOptions(func(addr string) []grpc.DialOption {
		host, _, _ := net.SplitHostPort(addr)
		return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: host,
		}))}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k")}); err != nil || string(r.Value) != "east" {
		t.Fatalf("get with the caller's own credentials: %v, %v", r, err)
	}
}
