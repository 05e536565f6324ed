package ops

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
)

// A dev deployment's TLS material: DIR/certs holds its CA and the
// certificates of its nodes, relays, and of ops (admin).
const (
	devCertsDir  = "certs"
	devAdminName = "admin"
	// devCAName is the common name of a dev deployment's CA.
	devCAName = "Aviary dev CA"
	// devValidity is how long a dev CA and its certificates are valid.
	devValidity = 10 * 8760 * time.Hour
)

// tlsChoice is the TLS material of a session, and where it came from.
type tlsChoice struct {
	files tlsx.Files // zero: plaintext
	// from is "the --tls-* flags" or "the dev deployment in DIR"; for
	// plaintext, the DIR/certs looked in.
	from string
}

func (c tlsChoice) String() string {
	if c.files.CA == "" {
		return fmt.Sprintf("plaintext, as no --tls-ca, --tls-cert and --tls-key were given and %s holds no dev certificates", c.from)
	}
	return fmt.Sprintf("TLS with %s (CA %s), from %s", c.files.Cert, c.files.CA, c.from)
}

// resolveTLS decides the TLS material of a session: the --tls-ca,
// --tls-cert and --tls-key flags (or their AVIARY_OPS_TLS_* variables) if
// any is set; else the admin certificate of the dev deployment in devDir
// (DIR/certs/ca.crt, admin.crt and admin.key), if all three exist; else
// none, plaintext. devDir is the --dir of a dev command, or the default
// ./aviary-dev.
func resolveTLS(o *options, devDir string) (tlsChoice, error) {
	if o.tlsCA != "" || o.tlsCert != "" || o.tlsKey != "" {
		f := tlsx.Files{CA: o.tlsCA, Cert: o.tlsCert, Key: o.tlsKey}
		if f.CA == "" || f.Cert == "" || f.Key == "" {
			return tlsChoice{}, errors.New("ops: give --tls-ca, --tls-cert and --tls-key together (or none, to use a dev deployment's certificates)")
		}
		return tlsChoice{files: f, from: "the --tls-* flags"}, nil
	}
	certs := filepath.Join(devDir, devCertsDir)
	f := tlsx.Files{CA: filepath.Join(certs, "ca.crt"), Cert: filepath.Join(certs, devAdminName+".crt"), Key: filepath.Join(certs, devAdminName+".key")}
	for _, p := range []string{f.CA, f.Cert, f.Key} {
		if _, err := os.Stat(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return tlsChoice{from: certs}, nil
			}
			return tlsChoice{}, fmt.Errorf("ops: %w", err)
		}
	}
	return tlsChoice{files: f, from: "the dev deployment in " + devDir}, nil
}

// devTLS is the TLS material of a dev deployment: DIR/certs, or none with
// dev up --plaintext.
type devTLS struct {
	dir string // DIR/certs; "" for plaintext
}

func newDevTLS(dir string, plaintext bool) devTLS {
	if plaintext {
		return devTLS{}
	}
	return devTLS{dir: filepath.Join(dir, devCertsDir)}
}

// args are the --tls-* flags of the node or relay whose certificate is
// NAME.crt (none for plaintext).
func (d devTLS) args(name string) []string {
	if d.dir == "" {
		return nil
	}
	return []string{"--tls-ca", filepath.Join(d.dir, "ca.crt"),
		"--tls-cert", filepath.Join(d.dir, name+".crt"), "--tls-key", filepath.Join(d.dir, name+".key")}
}

// devNodeCert names the certificate of node id of site: node-i for a lone
// site, SITE-node-i for a site of a multi-site deployment.
func devNodeCert(site, id string) string {
	if site == "" {
		return id
	}
	return site + "-" + id
}

// devRelayCert names the certificate of the relay of site.
func devRelayCert(site string) string { return "relay-" + site }

// ensure creates what is missing of the deployment's CA and certificates:
// the CA (serving sites) on first use, then a certificate for each of ids
// (nodes for 127.0.0.1 and localhost) and admin's (role admin, no site),
// for ops and tests. Certificates already there are kept, so that dev up
// over an earlier deployment reuses them. It returns the names of the key
// pairs it wrote ("ca", "node-0", ...).
func (d devTLS) ensure(sites []string, ids []tlsx.Identity) ([]string, error) {
	if d.dir == "" {
		return nil, nil
	}
	var wrote []string
	if !exists(filepath.Join(d.dir, "ca.crt")) {
		if _, err := initCA(d.dir, devCAName, devValidity, sites, false); err != nil {
			return nil, fmt.Errorf("ops: the dev deployment's CA: %w", err)
		}
		wrote = append(wrote, "ca")
	}
	ids = append(ids, tlsx.Identity{Name: devAdminName, Role: tlsx.RoleAdmin})
	for _, id := range ids {
		if exists(filepath.Join(d.dir, id.Name+".crt")) && exists(filepath.Join(d.dir, id.Name+".key")) {
			continue
		}
		var hosts []string
		if id.Role == tlsx.RoleNode {
			hosts = localHosts()
		}
		if _, err := issueCert(d.dir, id, hosts, devValidity, true); err != nil {
			return nil, fmt.Errorf("ops: %s's certificate in %s (from an earlier deployment of other sites? ops dev down --dir %s --wipe starts afresh): %w",
				id.Name, d.dir, filepath.Dir(d.dir), err)
		}
		wrote = append(wrote, id.Name)
	}
	return wrote, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// prepareDevTLS returns the TLS material of the dev deployment in dir,
// creating what is missing of it (devTLS.ensure): the CA, serving sites,
// and the certificates of ids and of admin. With plaintext it has none,
// and refuses a dir that holds certificates (ops would present them to
// plaintext nodes) or --tls-* flags.
func (s *session) prepareDevTLS(dir string, plaintext bool, sites []string, ids []tlsx.Identity) (devTLS, error) {
	d := newDevTLS(dir, plaintext)
	if plaintext {
		if certs := filepath.Join(dir, devCertsDir); exists(certs) {
			return d, fmt.Errorf("ops: --plaintext, but %s holds the certificates of a TLS deployment, which ops would present to the plaintext nodes: remove it, or use another --dir", certs)
		}
		if s.o.tlsCA != "" || s.o.tlsCert != "" || s.o.tlsKey != "" {
			return d, errors.New("ops: --plaintext starts plaintext nodes: leave out --tls-ca, --tls-cert and --tls-key (and AVIARY_OPS_TLS_*)")
		}
		return d, nil
	}
	wrote, err := d.ensure(sites, ids)
	if err != nil {
		return d, err
	}
	if len(wrote) > 0 {
		fmt.Fprintf(s.errOut, "TLS: created %s in %s\n", strings.Join(wrote, ", "), d.dir)
	}
	return d, nil
}

// devTLSNote says, for dev up's output, how the deployment's links are
// secured and how ops finds its certificate.
func devTLSNote(site *devSite) string {
	if site.CertsDir == "" {
		return "plaintext (--plaintext): no TLS, no authentication; loopback only\n"
	}
	if devDirIsDefault(site.Dir) {
		return fmt.Sprintf("mutual TLS on every link; CA and certificates in %s: ops run from %s presents admin.crt by itself\n",
			site.CertsDir, filepath.Dir(site.Dir))
	}
	return fmt.Sprintf("mutual TLS on every link; CA and certificates in %s: ops presents admin.crt by itself to\n"+
		"commands given --dir %s; others need --tls-ca, --tls-cert and --tls-key, or the exports below\n", site.CertsDir, site.Dir)
}

// devTLSExports are the lines of dev up's "next:" that make ops present
// the deployment's admin certificate, when it would not by itself.
func devTLSExports(site *devSite) string {
	if site.CertsDir == "" || devDirIsDefault(site.Dir) {
		return ""
	}
	return fmt.Sprintf("\n  export AVIARY_OPS_TLS_CA=%s AVIARY_OPS_TLS_CERT=%s AVIARY_OPS_TLS_KEY=%s",
		filepath.Join(site.CertsDir, "ca.crt"), filepath.Join(site.CertsDir, devAdminName+".crt"), filepath.Join(site.CertsDir, devAdminName+".key"))
}

// devDirIsDefault reports whether dir is ./aviary-dev, whose certificates
// ops uses when given no --tls-* flag.
func devDirIsDefault(dir string) bool {
	def, err := filepath.Abs(defaultDevDir)
	return err == nil && def == dir
}
