package ops

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aviarydb/aviary/internal/tlsx"
)

// TestCerts runs ops certs init and issue in a temporary directory and
// checks the files: modes, chains to the CA, identities and SANs.
func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	out := mustOps(t, "certs", "init", "--dir", dir, "--site", "site-a", "--site", "site-b")
	for _, want := range []string{filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "site-a, site-b"} {
		if !strings.Contains(out, want) {
			t.Fatalf("init says:\n%s\nwant it to name %s", out, want)
		}
	}

	_, _, err := runOps(t, "certs", "init", "--dir", dir)
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("init over a CA: %v, want a refusal naming --force", err)
	}
	caPEM := readPEM(t, filepath.Join(dir, "ca.crt"))

	out = mustOps(t, "certs", "issue", "node-0", "--role", "node", "--site", "site-a", "--host", "127.0.0.1,node-0.site-a", "--host", "::1", "--dir", dir)
	if !strings.Contains(out, "node-0 (node, site-a)") || !strings.Contains(out, "127.0.0.1, ::1, node-0.site-a") {
		t.Fatalf("issue says:\n%s", out)
	}
	jsonOut := mustOps(t, "--json", "certs", "issue", "alice", "--role", "admin", "--dir", dir)
	var got certFiles
	if err := json.Unmarshal([]byte(jsonOut), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "alice" || got.Role != "admin" || got.Site != "" || got.Key != filepath.Join(dir, "alice.key") {
		t.Fatalf("issue --json: %+v", got)
	}

	for name, want := range map[string]fs.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "node-0.crt": 0o644, "node-0.key": 0o600, "alice.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %s, want %s", name, fi.Mode().Perm(), want)
		}
	}
	if key := readPEM(t, filepath.Join(dir, "node-0.key")); strings.Contains(out+jsonOut, "PRIVATE KEY") || strings.Contains(out, string(key[40:80])) {
		t.Fatal("ops certs printed a key")
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, tc := range []struct {
		name string
		host string
		want tlsx.Identity
	}{
		{"node-0", "node-0.site-a", tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-a"}},
		{"node-0", "::1", tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: "site-a"}},
		{"alice", "", tlsx.Identity{Name: "alice", Role: tlsx.RoleAdmin}},
	} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, tc.name+".crt"), filepath.Join(dir, tc.name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		c := pair.Leaf
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s for %q: %v", tc.name, tc.host, err)
		}
		if id, err := tlsx.IdentityFromCert(c); err != nil || id != tc.want {
			t.Fatalf("%s: identity %v, %v; want %v", tc.name, id, err, tc.want)
		}
	}

	for _, tc := range []struct {
		args   []string
		errHas string
	}{
		{[]string{"alice", "--role", "read"}, "--force"},
		{[]string{"node-1", "--role", "node"}, "needs --site"},
		{[]string{"node-1", "--role", "node", "--site", "site-c"}, "not \"site-c\""},
		{[]string{"bob", "--role", "root"}, "want one of read, write, admin, node, relay"},
		{[]string{"bob"}, `"role" not set`},
		{[]string{"ca", "--role", "read"}, "CA's file name"},
		{[]string{"../bob", "--role", "read"}, "not allowed"},
		{[]string{"bob", "--role", "read", "--dir", filepath.Join(dir, "none")}, "ops certs init"},
	} {
		args := append([]string{"certs", "issue"}, tc.args...)
		if !strings.Contains(strings.Join(tc.args, " "), "--dir") {
			args = append(args, "--dir", dir)
		}
		if _, _, err := runOps(t, args...); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("ops %s: %v, want an error saying %q", strings.Join(args, " "), err, tc.errHas)
		}
	}

	// --force renews a certificate, and replaces the CA.
	mustOps(t, "certs", "issue", "alice", "--role", "read", "--dir", dir, "--force")
	mustOps(t, "certs", "init", "--dir", dir, "--force")
	if string(readPEM(t, filepath.Join(dir, "ca.crt"))) == string(caPEM) {
		t.Fatal("init --force kept the old CA")
	}
}

// readPEM reads the PEM file at path.
func readPEM(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(b); block == nil {
		t.Fatalf("%s is not PEM", path)
	}
	return b
}
