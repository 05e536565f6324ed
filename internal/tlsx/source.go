package tlsx

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoCertificate: a Source loaded without a key pair cannot serve.
var ErrNoCertificate = errors.New("tlsx: no certificate")

// Files are the PEM files of a Source.
type Files struct {
	// CA is the bundle of CA certificates to trust: one, or during a
	// rotation the old and the new. Required.
	CA string
	// Cert and Key are this process's certificate and key. Both or
	// neither: a client that authenticates by token has none, and then
	// cannot serve.
	Cert, Key string
}

// Validate checks that f names a CA bundle, and a certificate and key
// together or neither.
func (f Files) Validate() error {
	if f.CA == "" {
		return errors.New("tlsx: no CA file")
	}
	if (f.Cert == "") != (f.Key == "") {
		return fmt.Errorf("tlsx: certificate %q and key %q: give both or neither", f.Cert, f.Key)
	}
	return nil
}

// Options tune a Source. The zero value is the default.
type Options struct {
	// CheckInterval is how often, at most, a handshake checks the files
	// for changes. Default: a second.
	CheckInterval time.Duration
	// Logger receives a record of every change of material (paths,
	// identity, serial, expiry) and of every new reload error. Never key
	// material. Default: discard.
	Logger *slog.Logger
	// Now is the clock that paces the checks. Default: time.Now.
	Now func() time.Time
}

// EnsureDefaults fills in the defaults of unset fields.
func (o *Options) EnsureDefaults() {
	if o.CheckInterval == 0 {
		o.CheckInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate checks o once defaults are in.
func (o *Options) Validate() error {
	if o.CheckInterval < 0 {
		return fmt.Errorf("tlsx: check interval %s: must not be negative", o.CheckInterval)
	}
	return nil
}

// Source is the TLS material of a process, read from Files and re-read
// when they change, with no restart and no goroutine: the handshakes that
// use it check the files' contents at most once every CheckInterval, and
// a changed set of files takes effect from the next handshake on.
// Connections already established keep their peers' certificates.
//
// A reload that fails (a missing, truncated or corrupt file, a key that
// does not match its certificate) keeps the last good material; LastError
// reports the failure until a reload succeeds. The files are compared by
// content, so a file rewritten in place within one mtime tick is seen, and
// a failed set is not parsed again until one of its files changes.
//
// A Source is safe for concurrent use.
type Source struct {
	files Files
	opts  Options

	cur     atomic.Pointer[material]
	checked atomic.Int64 // Now().UnixNano() of the last check

	mu struct {
		sync.Mutex
		// raw is the content of CA, Cert and Key last parsed; nil after a
		// read error, so the next read is parsed whatever it holds.
		raw [][]byte
		err error
	}
}

// material is one consistent set of a Source's files.
type material struct {
	cert  *tls.Certificate // nil: no key pair
	id    Identity
	idErr error
	pool  *x509.CertPool
	cas   int
}

// Load reads f and returns a Source of its material, or the error that
// keeps it from being used.
func Load(f Files, o Options) (*Source, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	s := &Source{files: f, opts: o}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checked.Store(o.Now().UnixNano())
	if err := s.reloadLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the files now, and returns LastError.
func (s *Source) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checked.Store(s.opts.Now().UnixNano())
	return s.reloadLocked()
}

// LastError is the error of the last reload, nil once one succeeds: the
// Source serves the last good material meanwhile.
func (s *Source) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

// Identity is the identity in this process's certificate (as of the last
// good reload), or ErrNoCertificate.
func (s *Source) Identity() (Identity, error) {
	m := s.current()
	if m.cert == nil {
		return Identity{}, ErrNoCertificate
	}
	return m.id, m.idErr
}

// current returns the material, first reloading it if CheckInterval has
// passed since the last check.
func (s *Source) current() *material {
	due := func(now int64) bool {
		d := now - s.checked.Load()
		return d < 0 || d >= int64(s.opts.CheckInterval)
	}
	if now := s.opts.Now().UnixNano(); due(now) {
		s.mu.Lock()
		if due(now) { // not done meanwhile by another handshake
			s.checked.Store(now)
			_ = s.reloadLocked()
		}
		s.mu.Unlock()
	}
	return s.cur.Load()
}

// reloadLocked reads the files and, if they changed, parses them and makes
// them current. s.mu is held.
func (s *Source) reloadLocked() error {
	paths := []string{s.files.CA, s.files.Cert, s.files.Key}
	raw := make([][]byte, len(paths))
	for i, p := range paths {
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			s.mu.raw = nil
			return s.failLocked(fmt.Errorf("tlsx: %w", err))
		}
		raw[i] = b
	}
	if s.mu.raw != nil && slices.EqualFunc(raw, s.mu.raw, bytes.Equal) {
		return s.mu.err
	}
	s.mu.raw = raw
	m, err := s.parse(raw[0], raw[1], raw[2])
	if err != nil {
		return s.failLocked(err)
	}
	s.cur.Store(m)
	s.mu.err = nil
	attrs := []any{"ca", s.files.CA, "cas", m.cas}
	if m.cert != nil {
		attrs = append(attrs, "cert", s.files.Cert, "identity", m.id.String(),
			"serial", fmt.Sprintf("%x", m.cert.Leaf.SerialNumber), "not_after", m.cert.Leaf.NotAfter)
		if m.idErr != nil {
			attrs = append(attrs, "identity_error", m.idErr.Error())
		}
	}
	s.opts.Logger.Info("tlsx: loaded TLS material", attrs...)
	return nil
}

// failLocked records err as the last error, logging it if it is new.
func (s *Source) failLocked(err error) error {
	if s.mu.err == nil || s.mu.err.Error() != err.Error() {
		s.opts.Logger.Warn("tlsx: TLS material not reloaded; serving the last good one", "error", err.Error())
	}
	s.mu.err = err
	return err
}

func (s *Source) parse(caPEM, certPEM, keyPEM []byte) (*material, error) {
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA bundle %s: %w", s.files.CA, err)
	}
	m := &material{pool: x509.NewCertPool(), cas: len(cas)}
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("tlsx: CA bundle %s: %q is not a CA certificate", s.files.CA, c.Subject.CommonName)
		}
		m.pool.AddCert(c)
	}
	if s.files.Cert == "" {
		return m, nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Its errors describe the encoding or a mismatch, never the key.
		return nil, fmt.Errorf("tlsx: key pair %s, %s: %w", s.files.Cert, s.files.Key, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tlsx: certificate %s: %w", s.files.Cert, err)
		}
	}
	m.cert = &pair
	m.id, m.idErr = IdentityFromCert(pair.Leaf)
	return m, nil
}

// verifyingAuth maps the ClientAuthTypes that accept an unverified
// certificate to their verifying counterparts.
func verifyingAuth(a tls.ClientAuthType) tls.ClientAuthType {
	switch a {
	case tls.RequestClientCert:
		return tls.VerifyClientCertIfGiven
	case tls.RequireAnyClientCert:
		return tls.RequireAndVerifyClientCert
	}
	return a
}

// ServerConfig returns the TLS configuration of a server (gRPC, raft's
// listener, NATS): TLS 1.3 only, the current certificate, and client
// certificates verified against the current CA bundle and then checked
// against want. clientAuth is tls.RequireAndVerifyClientCert (mutual TLS:
// no certificate, or one of another CA, fails the handshake),
// tls.VerifyClientCertIfGiven (clients may instead authenticate by token)
// or tls.NoClientCert; the modes that accept unverified certificates are
// taken as their verifying counterparts.
//
// Each handshake builds its configuration from the current material
// (GetConfigForClient), so a reloaded certificate or CA applies to the
// next handshake. Session tickets are off: every connection is verified
// against the CA of its day, not resumed from an older one.
func (s *Source) ServerConfig(clientAuth tls.ClientAuthType, want Expect) *tls.Config {
	clientAuth = verifyingAuth(clientAuth)
	var verify func(tls.ConnectionState) error
	if !want.zero() {
		verify = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // clientAuth allowed none
			}
			if len(cs.VerifiedChains) == 0 {
				return errors.New("tlsx: client certificate not verified")
			}
			return want.check(cs.VerifiedChains[0][0])
		}
	}
	config := func(m *material) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS13,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				if m.cert == nil {
					return nil, ErrNoCertificate
				}
				return m.cert, nil
			},
			ClientAuth:             clientAuth,
			ClientCAs:              m.pool,
			SessionTicketsDisabled: true,
			VerifyConnection:       verify,
		}
	}
	// The outer configuration is what libraries inspect (nats-server reads
	// ClientAuth); should one bypass GetConfigForClient, its empty pool
	// fails closed rather than trusting the system's roots.
	base := config(&material{pool: x509.NewCertPool()})
	base.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if m := s.current(); m.cert != nil {
			return m.cert, nil
		}
		return nil, ErrNoCertificate
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return config(s.current()), nil
	}
	return base
}

// ClientConfig returns the TLS configuration of a connection to the server
// serverName (the host name or IP address dialled: ServerNameOf(addr)):
// TLS 1.3 only, the current certificate as the client's (none if the
// Source has no key pair), and the server's certificate verified against
// the current CA bundle, for serverName, and then against want. Build one
// per address dialled.
//
// The standard verification reads RootCAs, fixed when the configuration
// is made, and grpc and nats.go keep one configuration for every
// reconnection. So that a reloaded CA bundle applies to the next
// handshake, the configuration sets InsecureSkipVerify and verifies in
// VerifyConnection instead, in full: the chain to the current bundle,
// with usage ServerAuth, for serverName as a DNS name or IP address.
// (TLS 1.3 still checks that the server holds the certificate's key.) An
// empty serverName fails every handshake.
func (s *Source) ClientConfig(serverName string, want Expect) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if m := s.current(); m.cert != nil {
				return m.cert, nil
			}
			return &tls.Certificate{}, nil // none: the server decides
		},
		// Never consulted (see above); empty so that a copy that turns
		// verification back on fails closed.
		RootCAs:            x509.NewCertPool(),
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if serverName == "" {
				return errors.New("tlsx: no server name to verify the server's certificate for")
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tlsx: the server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			chains, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName:       serverName,
				Roots:         s.current().pool,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("tlsx: server certificate for %s: %w", serverName, err)
			}
			if want.zero() {
				return nil
			}
			return want.check(chains[0][0])
		},
	}
}

// ServerNameOf is the host of addr, the name a client verifies the
// server's certificate for: "10.0.0.5:7390" is "10.0.0.5", "[::1]:7390"
// is "::1", "nats://user@nats-0.site-a:4222" is "nats-0.site-a", and
// "dns:///node-0:7390" is "node-0".
func ServerNameOf(addr string) string {
	if strings.Contains(addr, ":/") {
		if u, err := url.Parse(addr); err == nil && u.Scheme != "" {
			if u.Host != "" {
				return u.Hostname()
			}
			addr = strings.TrimPrefix(u.Path, "/")
		}
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
}
