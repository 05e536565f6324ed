package ops

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/spf13/cobra"
)

// defaultCertsDir is where ops certs keeps the CA and certificates when
// --dir is not given.
const defaultCertsDir = "./aviary-certs"

// certFiles is what ops certs init or issue wrote, for --json.
type certFiles struct {
	Cert        string    `json:"cert"`
	Key         string    `json:"key"`
	Name        string    `json:"name"`
	Role        string    `json:"role,omitempty"`
	Site        string    `json:"site,omitempty"`
	Sites       []string  `json:"sites,omitempty"`
	DNSNames    []string  `json:"dns_names,omitempty"`
	IPAddresses []string  `json:"ip_addresses,omitempty"`
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"not_after"`
	CA          string    `json:"ca,omitempty"`
}

func newCertsCommand(o *options) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create the CA and the mutual-TLS certificates of a deployment",
		Long: `Every link of an Aviary deployment is mutual TLS 1.3: each end presents a
certificate signed by the deployment's CA, and its subject says who it is:
the common name is the identity's name, the organizational unit its role,
and the organization its site.

Roles:
  read    reads data and the shard map
  write   writes data, and reads
  admin   changes the shard map and runs operations, and writes
  node    a node of its site: everything, raft included (needs --site)
  relay   a site's relay: only what relays need (needs --site)

init creates the CA in --dir: ca.crt, which every node, relay and client
trusts, and ca.key, which signs certificates and belongs on no node. issue
writes NAME.crt and NAME.key there, signed by that CA. Keys are written
0600 and never printed.

Nodes reload their certificate and CA bundle from disk within a second of
a change. To renew a certificate, issue it again with --force. To rotate
the CA, create the new one in another directory, append its ca.crt to
every party's CA bundle, reissue every certificate from the new CA, and
finally drop the old CA from the bundles.`,
		Example: `  ops certs init --site site-a --site site-b
  ops certs issue node-0 --role node --site site-a --host 127.0.0.1
  ops certs issue relay-site-a --role relay --site site-a
  ops certs issue alice --role admin`,
		RunE: groupRunE,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", defaultCertsDir, "directory of the CA and the certificates")

	var (
		sites    []string
		name     string
		caValid  time.Duration
		caForced bool
	)
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the deployment's CA: ca.crt and ca.key in --dir",
		Long: `init creates a certificate authority (ECDSA P-256) in --dir: ca.crt, to be
trusted by every node, relay and client, and ca.key (0600), which signs
every identity: keep it where you run ops certs issue, not on the nodes.

--site names the sites the CA serves (repeat it, or separate names with
commas); issue then refuses any other site. It refuses to replace an
existing CA, whose certificates would all stop verifying, unless --force.`,
		Example: `  ops certs init
  ops certs init --dir /etc/aviary/pki --site site-a --site site-b --valid 43800h`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(_ context.Context, s *session, _ []string) error {
			info, err := initCA(dir, name, caValid, sites, caForced)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s already holds a CA; replacing it would invalidate every certificate it signed (use --force to replace it anyway): %w", dir, err)
			}
			if err != nil {
				return err
			}
			if s.o.json {
				return s.printJSON(info)
			}
			fmt.Fprintf(s.out, "CA %q created, valid until %s (serial %s)\n", info.Name, info.NotAfter.Format(time.RFC3339), info.Serial)
			if len(sites) > 0 {
				fmt.Fprintf(s.out, "  sites:  %s\n", strings.Join(sites, ", "))
			}
			fmt.Fprintf(s.out, "  wrote %s (0644): give it to every node, relay and client\n", info.Cert)
			fmt.Fprintf(s.out, "  wrote %s (0600): it signs every identity; keep it off the nodes\n", info.Key)
			fmt.Fprintf(s.out, "next: ops certs issue node-0 --role node --site %s --host <its address> --dir %s\n", firstOr(sites, "site-a"), dir)
			return nil
		}),
	}
	fl := initCmd.Flags()
	fl.StringSliceVar(&sites, "site", nil, "a site the CA serves (repeatable, or comma separated); none: any")
	fl.StringVar(&name, "name", "Aviary CA", "the CA's name (its subject's common name)")
	fl.DurationVar(&caValid, "valid", 10*8760*time.Hour, "how long the CA is valid")
	fl.BoolVar(&caForced, "force", false, "replace an existing CA in --dir")

	var (
		role, site string
		hosts      []string
		valid      time.Duration
		force      bool
	)
	issue := &cobra.Command{
		Use:   "issue NAME --role ROLE",
		Short: "Issue NAME.crt and NAME.key in --dir, signed by its CA",
		Long: `issue creates a key (ECDSA P-256) and a certificate for the identity NAME
with role --role and site --site, signed by the CA in --dir, and writes
NAME.crt (0644) and NAME.key (0600) there. The certificate serves and
connects alike, and never outlives the CA.

--host lists the addresses others dial to reach it, which they verify:
IP addresses and DNS names (repeatable, or comma separated). A node needs
them (127.0.0.1 and localhost when none is given); a relay or a client
that serves nothing does not.

NAME is 1 to 64 of [A-Za-z0-9_.@-]. It refuses to replace an existing
NAME.crt or NAME.key unless --force (to renew a certificate).`,
		Example: `  ops certs issue node-0 --role node --site site-a --host 127.0.0.1
  ops certs issue node-1 --role node --site site-a --host 10.0.0.6,node-1.site-a.internal
  ops certs issue relay-site-a --role relay --site site-a
  ops certs issue alice --role admin
  ops certs issue dashboard --role read --valid 720h`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(_ context.Context, s *session, args []string) error {
			r, err := tlsx.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			id := tlsx.Identity{Name: args[0], Role: r, Site: site}
			if id.Name == "ca" {
				return errors.New(`NAME "ca" is the CA's file name; pick another`)
			}
			if (r == tlsx.RoleNode || r == tlsx.RoleRelay) && site == "" {
				return fmt.Errorf("a %s needs --site, the site it belongs to", r)
			}
			if err := id.Validate(); err != nil {
				return err
			}
			defaultHosts := r == tlsx.RoleNode && len(hosts) == 0
			if defaultHosts {
				hosts = localHosts()
			}
			info, err := issueCert(dir, id, hosts, valid, force)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s already has a certificate (use --force to replace it): %w", id.Name, err)
			}
			if err != nil {
				return err
			}
			if defaultHosts {
				fmt.Fprintf(s.errOut, "note: no --host: %s's certificate names 127.0.0.1 and localhost only\n", id.Name)
			}
			if s.o.json {
				return s.printJSON(info)
			}
			fmt.Fprintf(s.out, "issued %s, signed by %q, valid until %s (serial %s)\n", id, info.CA, info.NotAfter.Format(time.RFC3339), info.Serial)
			sans := append(append([]string{}, info.IPAddresses...), info.DNSNames...)
			fmt.Fprintf(s.out, "  hosts:  %s\n", dash(strings.Join(sans, ", ")))
			fmt.Fprintf(s.out, "  wrote %s (0644)\n", info.Cert)
			fmt.Fprintf(s.out, "  wrote %s (0600)\n", info.Key)
			return nil
		}),
	}
	fl = issue.Flags()
	fl.StringVar(&role, "role", "", "the identity's role: read, write, admin, node or relay")
	fl.StringVar(&site, "site", "", "the identity's site (required for node and relay)")
	fl.StringSliceVar(&hosts, "host", nil, "an IP address or DNS name it serves on (repeatable, or comma separated)")
	fl.DurationVar(&valid, "valid", 8760*time.Hour, "how long the certificate is valid (never beyond the CA)")
	fl.BoolVar(&force, "force", false, "replace an existing NAME.crt and NAME.key")
	_ = issue.MarkFlagRequired("role")

	var tokenRole string
	token := &cobra.Command{
		Use:   "token NAME --role read|write|admin",
		Short: "Create a bearer token for a client that cannot present a certificate",
		Long: `Create a random bearer token for NAME with a role (read, write or admin) and
add its SHA-256 hash to DIR/tokens, the file nodes read with --tokens (at
start: restart them to take a new token). The token is printed once, here,
and stored nowhere: give it to the client (client.WithToken). A token is
sent over TLS only; the client trusts the CA (ca.crt) but presents no
certificate.`,
		Example: `  ops certs token dashboard --role read
  go run ./cmd/node --tls-ca aviary-certs/ca.crt --tls-cert ... --tokens aviary-certs/tokens`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(_ context.Context, s *session, args []string) error {
			r, err := tlsx.ParseRole(tokenRole)
			if err != nil {
				return err
			}
			tok, line, err := tlsx.NewToken(tlsx.Identity{Name: args[0], Role: r})
			if err != nil {
				return err
			}
			path := filepath.Join(dir, "tokens")
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("ops: %w", err)
			}
			if _, err := fmt.Fprintln(f, line); err != nil {
				_ = f.Close()
				return fmt.Errorf("ops: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("ops: %w", err)
			}
			if s.o.json {
				return s.printJSON(map[string]string{"name": args[0], "role": string(r), "token": tok, "tokens_file": path})
			}
			fmt.Fprintf(s.out, "token of %s (%s), added to %s (restart the nodes with --tokens %s):\n%s\n", args[0], r, path, path, tok)
			return nil
		}),
	}
	token.Flags().StringVar(&tokenRole, "role", "", "the token's role: read, write or admin")
	_ = token.MarkFlagRequired("role")

	cmd.AddCommand(initCmd, issue, token)
	return cmd
}

// localHosts are the hosts of a node's certificate when none are given:
// loopback.
func localHosts() []string { return []string{"127.0.0.1", "localhost"} }

// initCA creates a CA named name, serving sites (none: any), valid for
// valid, in dir: ca.crt and ca.key. Unless force, it refuses, with an
// error wrapping fs.ErrExist, to replace a CA there.
func initCA(dir, name string, valid time.Duration, sites []string, force bool) (certFiles, error) {
	certPEM, keyPEM, err := tlsx.NewCA(name, valid, sites...)
	if err != nil {
		return certFiles{}, err
	}
	if err := tlsx.WriteKeyPair(dir, "ca", certPEM, keyPEM, force); err != nil {
		return certFiles{}, err
	}
	info, err := describeCert(certPEM, filepath.Join(dir, "ca"))
	if err != nil {
		return certFiles{}, err
	}
	info.Sites = sites
	return info, nil
}

// issueCert issues a certificate for id and hosts, valid for valid, signed
// by the CA in dir, and writes it to dir/NAME.crt and NAME.key. Unless
// force, it refuses, with an error wrapping fs.ErrExist, to replace them.
func issueCert(dir string, id tlsx.Identity, hosts []string, valid time.Duration, force bool) (certFiles, error) {
	caCert, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return certFiles{}, fmt.Errorf("no CA in %s (ops certs init --dir %s creates one): %w", dir, dir, err)
	}
	caKey, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return certFiles{}, fmt.Errorf("the CA key of %s: %w", dir, err)
	}
	certPEM, keyPEM, err := tlsx.Issue(caCert, caKey, id, hosts, valid)
	if err != nil {
		return certFiles{}, err
	}
	if err := tlsx.WriteKeyPair(dir, id.Name, certPEM, keyPEM, force); err != nil {
		return certFiles{}, err
	}
	info, err := describeCert(certPEM, filepath.Join(dir, id.Name))
	if err != nil {
		return certFiles{}, err
	}
	info.Role, info.Site = string(id.Role), id.Site
	if ca, err := describeCert(caCert, ""); err == nil {
		info.CA = ca.Name
	}
	return info, nil
}

// describeCert reads the first certificate of certPEM; base, if given, is
// the path of its files less .crt and .key.
func describeCert(certPEM []byte, base string) (certFiles, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return certFiles{}, errors.New("ops: certificate is not PEM")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return certFiles{}, fmt.Errorf("ops: %w", err)
	}
	info := certFiles{Name: c.Subject.CommonName, DNSNames: c.DNSNames, Serial: fmt.Sprintf("%x", c.SerialNumber), NotAfter: c.NotAfter.UTC()}
	for _, ip := range c.IPAddresses {
		info.IPAddresses = append(info.IPAddresses, ip.String())
	}
	if base != "" {
		info.Cert, info.Key = base+".crt", base+".key"
	}
	return info, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}
