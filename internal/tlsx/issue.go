package tlsx

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// backdate is how far before now certificates start being valid, so that
// peers whose clocks are a little behind accept them.
const backdate = 5 * time.Minute

// NewCA creates a self-signed certificate authority named name (its
// subject's common name), valid from now for validFor: an ECDSA P-256 key,
// allowed to sign certificates but no intermediate CA. sites, if any, are
// the sites it serves, recorded as its subject's organizations; Issue then
// refuses identities of other sites. It returns the certificate and the
// key (PKCS #8), PEM-encoded.
func NewCA(name string, validFor time.Duration, sites ...string) (certPEM, keyPEM []byte, err error) {
	if name == "" {
		return nil, nil, errors.New("tlsx: the CA needs a name")
	}
	if validFor <= 0 {
		return nil, nil, fmt.Errorf("tlsx: CA validity %s: must be positive", validFor)
	}
	for _, s := range sites {
		if err := checkName("site", s); err != nil {
			return nil, nil, err
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: slices.Clone(sites)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: create CA certificate: %w", err)
	}
	return encode(der, key)
}

// Issue creates a certificate for id signed by the CA (caCertPEM,
// caKeyPEM), valid from now for validFor but never beyond the CA: an ECDSA
// P-256 key, usable to serve and to connect (nodes do both). The subject
// carries the identity (see Identity); hosts become its subject
// alternative names, IP addresses as IP SANs and anything else as DNS
// names, which clients verify against the address they dial. It returns
// the certificate and key (PKCS #8), PEM-encoded.
func Issue(caCertPEM, caKeyPEM []byte, id Identity, hosts []string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	if validFor <= 0 {
		return nil, nil, fmt.Errorf("tlsx: validity %s: must be positive", validFor)
	}
	ca, caKey, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, err
	}
	if sites := ca.Subject.Organization; len(sites) > 0 && id.Site != "" && !slices.Contains(sites, id.Site) {
		return nil, nil, fmt.Errorf("tlsx: the CA %q serves sites %s, not %q: %w", ca.Subject.CommonName, strings.Join(sites, ", "), id.Site, ErrBadIdentity)
	}
	now := time.Now()
	if !now.Before(ca.NotAfter) {
		return nil, nil, fmt.Errorf("tlsx: the CA %q expired at %s", ca.Subject.CommonName, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id.Name, OrganizationalUnit: []string{string(id.Role)}},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	if id.Site != "" {
		tmpl.Subject.Organization = []string{id.Site}
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		switch {
		case h == "":
			continue
		case net.ParseIP(h) != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(h))
		case strings.ContainsAny(h, " \t/:"):
			return nil, nil, fmt.Errorf("tlsx: host %q: want a DNS name or an IP address", h)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: generate key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: create certificate for %s: %w", id, err)
	}
	return encode(der, key)
}

// newSerial is a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			return nil, fmt.Errorf("tlsx: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), nil
}

// parseCA decodes a CA's certificate (the first of certPEM) and its key,
// and checks that they match and that the certificate is a CA's.
func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: CA certificate: %w", err)
	}
	ca := certs[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("tlsx: certificate %q is not a CA's", ca.Subject.CommonName)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, errors.New("tlsx: CA key: no PEM block")
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, nil, fmt.Errorf("tlsx: CA key: PEM block %q, want PRIVATE KEY", block.Type)
	}
	if err != nil {
		// The parse errors describe the encoding, never the key.
		return nil, nil, fmt.Errorf("tlsx: CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("tlsx: CA key: a %T cannot sign", key)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("tlsx: the CA key does not match the CA certificate %q", ca.Subject.CommonName)
	}
	return ca, signer, nil
}

// parseCerts decodes every certificate of a PEM bundle: at least one, and
// nothing but certificates (so a truncated or corrupt file is an error,
// not fewer certificates).
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, fmt.Errorf("%d bytes after certificate %d are not PEM", len(rest), len(certs))
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

// WriteKeyPair writes certPEM to dir/base.crt (mode 0644) and keyPEM to
// dir/base.key (mode 0600), creating dir (0700) if needed. Each file is
// written to a temporary file of its final mode (the key's is created
// 0600, never readable by others) and renamed into place, so a Source
// reading them never sees half a file. Unless overwrite, it refuses, with
// an error wrapping fs.ErrExist, if either file exists, and writes
// neither.
//
// Replacing a pair that a Source serves renames the key first: until the
// certificate follows, the Source may find them mismatched, keeps serving
// the old pair and reports it by LastError, and takes the new pair on its
// next check.
func WriteKeyPair(dir, base string, certPEM, keyPEM []byte, overwrite bool) error {
	if base == "" || base == "." || base == ".." || strings.ContainsAny(base, `/\`) {
		return fmt.Errorf("tlsx: %q is not a file name", base)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	if !overwrite {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("tlsx: %s exists; not overwriting it: %w", p, fs.ErrExist)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("tlsx: %w", err)
			}
		}
	}
	if err := writeFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(certPath, certPEM, 0o644)
}

// writeFile writes b to path by a temporary file of mode perm in the same
// directory, renamed into place.
func writeFile(path string, b []byte, perm fs.FileMode) (err error) {
	// CreateTemp creates the file 0600 (less the umask): never readable by
	// others, whatever perm is.
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("tlsx: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("tlsx: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tlsx: close %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	return nil
}
