package ops

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aviarydb/aviary/internal/tlsx"
)

// TestDevCerts checks the TLS material of dev deployments: created once
// in DIR/certs and reused, refused for sites the CA does not serve and
// with --plaintext; and how a session picks its material (flags, else a
// dev deployment's admin certificate, else plaintext).
func TestDevCerts(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, devCertsDir)
	var errOut bytes.Buffer
	s := newSession(&options{}, io.Discard, &errOut)
	ids := []tlsx.Identity{
		{Name: devNodeCert("site-a", "node-0"), Role: tlsx.RoleNode, Site: "site-a"},
		{Name: devRelayCert("site-a"), Role: tlsx.RoleRelay, Site: "site-a"},
	}
	d, err := s.prepareDevTLS(dir, false, []string{"site-a", "site-b"}, ids)
	if err != nil {
		t.Fatal(err)
	}
	if d.dir != certs || !strings.Contains(errOut.String(), "created ca, site-a-node-0, relay-site-a, admin in "+certs) {
		t.Fatalf("dir %q, said %q", d.dir, errOut.String())
	}
	for _, name := range []string{"ca", "site-a-node-0", "relay-site-a", "admin"} {
		fi, err := os.Stat(filepath.Join(certs, name+".key"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s.key: %v, %v", name, fi, err)
		}
	}
	if got := d.args("relay-site-a"); strings.Join(got, " ") != "--tls-ca "+certs+"/ca.crt --tls-cert "+certs+"/relay-site-a.crt --tls-key "+certs+"/relay-site-a.key" {
		t.Fatalf("args %v", got)
	}
	before, _ := os.ReadFile(filepath.Join(certs, "site-a-node-0.crt"))

	// Again: everything is there, nothing is written.
	errOut.Reset()
	if _, err := s.prepareDevTLS(dir, false, []string{"site-a", "site-b"}, ids); err != nil || errOut.Len() > 0 {
		t.Fatalf("second time: %v, said %q", err, errOut.String())
	}
	if after, _ := os.ReadFile(filepath.Join(certs, "site-a-node-0.crt")); !bytes.Equal(before, after) {
		t.Fatal("a certificate was issued again")
	}
	// A site the CA does not serve, and --plaintext over certificates.
	if _, err := s.prepareDevTLS(dir, false, nil, []tlsx.Identity{{Name: "site-c-node-0", Role: tlsx.RoleNode, Site: "site-c"}}); err == nil || !strings.Contains(err.Error(), "--wipe") {
		t.Fatalf("a node of a site the CA does not serve: %v", err)
	}
	if _, err := s.prepareDevTLS(dir, true, nil, nil); err == nil || !strings.Contains(err.Error(), certs) {
		t.Fatalf("--plaintext over certificates: %v", err)
	}
	flagged := newSession(&options{tlsCA: "ca.crt", tlsCert: "x.crt", tlsKey: "x.key"}, io.Discard, io.Discard)
	if _, err := flagged.prepareDevTLS(t.TempDir(), true, nil, nil); err == nil {
		t.Fatal("--plaintext with --tls-* flags accepted")
	}

	// What a session uses.
	c, err := resolveTLS(&options{}, dir)
	if err != nil || c.files != (tlsx.Files{CA: certs + "/ca.crt", Cert: certs + "/admin.crt", Key: certs + "/admin.key"}) {
		t.Fatalf("the dev deployment's: %+v, %v", c, err)
	}
	c, err = resolveTLS(&options{tlsCA: "a", tlsCert: "b", tlsKey: "c"}, dir)
	if err != nil || c.files != (tlsx.Files{CA: "a", Cert: "b", Key: "c"}) {
		t.Fatalf("flags: %+v, %v", c, err)
	}
	if _, err := resolveTLS(&options{tlsCA: "a"}, dir); err == nil {
		t.Fatal("--tls-ca alone accepted")
	}
	if c, err := resolveTLS(&options{}, t.TempDir()); err != nil || c.files.CA != "" || !strings.Contains(c.String(), "plaintext") {
		t.Fatalf("no certificates: %+v (%s), %v", c, c, err)
	}
	s.useDevDir(dir)
	src, err := s.tlsSource()
	if err != nil {
		t.Fatal(err)
	}
	if id, err := src.Identity(); err != nil || id != (tlsx.Identity{Name: "admin", Role: tlsx.RoleAdmin}) {
		t.Fatalf("the session presents %v, %v", id, err)
	}
}
