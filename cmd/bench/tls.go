package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/node"
	"google.golang.org/grpc"
)

// benchTLS is the PKI of a --tls run: a CA in a temporary directory, a
// certificate per in-process node, and the bench's own (role admin).
type benchTLS struct {
	dir           string
	caCert, caKey []byte
	client        *tlsx.Source
}

// runTLS is the run's PKI; nil runs plaintext. It is set once, before any
// node starts or connection is made.
var runTLS *benchTLS

func newBenchTLS(parent string) (*benchTLS, error) {
	dir, err := os.MkdirTemp(parent, "aviary-bench-pki-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cert, key, err := tlsx.NewCA("aviary bench CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	b := &benchTLS{dir: dir, caCert: cert, caKey: key}
	if err := tlsx.WriteKeyPair(dir, "ca", cert, key, false); err != nil {
		return nil, err
	}
	if b.client, err = b.issue(tlsx.Identity{Name: "bench", Role: tlsx.RoleAdmin}); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *benchTLS) issue(id tlsx.Identity) (*tlsx.Source, error) {
	cert, key, err := tlsx.Issue(b.caCert, b.caKey, id, []string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	if err := tlsx.WriteKeyPair(b.dir, id.Name+"."+id.Site, cert, key, true); err != nil {
		return nil, err
	}
	base := filepath.Join(b.dir, id.Name+"."+id.Site)
	return tlsx.Load(tlsx.Files{CA: filepath.Join(b.dir, "ca.crt"), Cert: base + ".crt", Key: base + ".key"}, tlsx.Options{})
}

// secure gives an in-process node of a --tls run its certificate.
func secure(cfg *node.Config) error {
	if runTLS == nil {
		return nil
	}
	site := cfg.SiteName
	if site == "" {
		site = "local" // node.Config's default
	}
	src, err := runTLS.issue(tlsx.Identity{Name: cfg.NodeID, Role: tlsx.RoleNode, Site: site})
	if err != nil {
		return fmt.Errorf("bench: certificate of %s: %w", cfg.NodeID, err)
	}
	cfg.TLS = src
	return nil
}

// dial connects the bench to a node, with the bench's certificate in a
// --tls run.
func dial(addr string) (*grpc.ClientConn, error) {
	if runTLS == nil {
		return netx.Dial(addr)
	}
	sec := &netx.Security{TLS: runTLS.client}
	return netx.Dial(addr, sec.DialOption(addr, sec.NodePeer()))
}

// dialClient is dial for an api/client Client.
func dialClient(addr string) (*client.Client, error) {
	if runTLS == nil {
		return client.Dial([]string{addr})
	}
	return client.Dial([]string{addr}, client.WithTLS(runTLS.client))
}
