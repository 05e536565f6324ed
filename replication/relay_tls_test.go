package replication

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/replication/natsx"
	"github.com/nats-io/nats.go"
)

// tlsFiles issues a certificate for id by the CA (caCert, caKey) into dir,
// and returns its files with ca as the CA bundle.
func tlsFiles(t *testing.T, dir string, caCert, caKey []byte, ca string, id tlsx.Identity) tlsx.Files {
	t.Helper()
	cert, key, err := tlsx.Issue(caCert, caKey, id, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(dir, id.Name, cert, key, true); err != nil {
		t.Fatal(err)
	}
	return tlsx.Files{CA: ca, Cert: filepath.Join(dir, id.Name+".crt"), Key: filepath.Join(dir, id.Name+".key")}
}

func loadTLS(t *testing.T, f tlsx.Files) *tlsx.Source {
	t.Helper()
	src, err := tlsx.Load(f, tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestRelayTLS: a source's NATS that requires client certificates of its
// CA (as a node's embedded nats-server does) takes the relay with a relay
// certificate of that CA, which then applies the stream; a relay whose
// certificate is of another CA, or with no certificate, or in plaintext,
// is refused and its path says why.
func TestRelayTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, err := tlsx.NewCA("site CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsx.WriteKeyPair(dir, "ca", caCert, caKey, false); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.crt")
	node := loadTLS(t, tlsFiles(t, dir, caCert, caKey, ca, tlsx.Identity{Name: "node-0", Role: tlsx.RoleNode, Site: srcSite}))
	srv, err := natsx.StartServer(natsx.ServerConfig{Dir: t.TempDir(), ServerName: "tls-" + srcSite,
		TLS: node.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode, tlsx.RoleRelay}})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	url := srv.ClientURL()
	nc, js, err := natsx.Connect(testCtx(t), url, "test-origin", nats.Secure(node.ClientConfig(tlsx.ServerNameOf(url), tlsx.Expect{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := natsx.EnsureStream(testCtx(t), js, natsx.StreamConfig{Name: StreamName(srcSite), Subjects: []string{SubjectAll(srcSite)}}); err != nil {
		t.Fatal(err)
	}
	src := &source{t: t, srv: srv, js: js}
	o := &origin{s: src, node: "n1"}
	o.entries(3)

	// The relay of site-b, with a relay certificate of the CA.
	relay := loadTLS(t, tlsFiles(t, dir, caCert, caKey, ca, tlsx.Identity{Name: "relay-" + localSite, Role: tlsx.RoleRelay, Site: localSite}))
	app := newFakeApplier()
	rn := startRelay(t, RelayConfig{Sources: []Source{src.Source()}, Applier: app, MaxWait: 50 * time.Millisecond, TLS: relay})
	app.await(t, "3 entries over TLS", func() bool { return app.wm["n1"] == 3 })
	if st := pathOf(t, rn.r); !st.Connected {
		t.Fatalf("path over TLS: %+v", st)
	}
	rn.stop(t)

	// Refused: a relay certificate of another CA (the relay trusts the
	// site's CA, so the server is the one refusing), the site's CA with
	// no certificate, and plaintext.
	otherCert, otherKey, err := tlsx.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	odir := t.TempDir()
	for what, tlsSrc := range map[string]*tlsx.Source{
		"another CA's relay": loadTLS(t, tlsFiles(t, odir, otherCert, otherKey, ca, tlsx.Identity{Name: "relay-" + localSite, Role: tlsx.RoleRelay, Site: localSite})),
		"no certificate":     loadTLS(t, tlsx.Files{CA: ca}),
		"plaintext":          nil,
	} {
		t.Run(strings.ReplaceAll(what, " ", "_"), func(t *testing.T) {
			app := newFakeApplier()
			rn := startRelay(t, RelayConfig{Sources: []Source{src.Source()}, Applier: app, MaxWait: 50 * time.Millisecond, TLS: tlsSrc})
			var st PathStatus
			eventually(t, "the path's connection error", func() bool {
				if all := rn.r.Status(); len(all) == 1 {
					st = all[0]
				}
				return st.LastError != ""
			})
			if st.Connected || !strings.Contains(st.LastError, "connect to "+url) {
				t.Fatalf("%s: %+v", what, st)
			}
			t.Logf("%s: %s", what, st.LastError)
			app.mu.Lock()
			defer app.mu.Unlock()
			if app.calls != 0 {
				t.Fatalf("%s: %d applies", what, app.calls)
			}
		})
	}
}
