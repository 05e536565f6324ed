package tlsx

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/spf13/pflag"
)

// Flags are the TLS flags of Aviary's commands: --tls-ca, --tls-cert,
// --tls-key and --insecure.
type Flags struct {
	CA, Cert, Key string
	Insecure      bool
}

// Register adds the flags to fs; who names what the key pair is for ("this
// node", "the relay").
func (f *Flags) Register(fs *pflag.FlagSet, who string) {
	fs.StringVar(&f.CA, "tls-ca", "", "CA bundle (PEM) that peers' certificates must chain to: turns on mutual TLS 1.3 (ops certs init makes one)")
	fs.StringVar(&f.Cert, "tls-cert", "", "certificate (PEM) of "+who+", signed by the CA (ops certs issue); re-read when the file changes")
	fs.StringVar(&f.Key, "tls-key", "", "private key (PEM) of --tls-cert; re-read when the file changes")
	fs.BoolVar(&f.Insecure, "insecure", false, "accept plaintext on addresses other than loopback (without TLS, listening beyond 127.0.0.1 is refused)")
}

// Load returns the Source the flags name, or nil when none is set
// (plaintext).
func (f *Flags) Load(log *slog.Logger) (*Source, error) {
	if f.CA == "" && f.Cert == "" && f.Key == "" {
		return nil, nil
	}
	if f.CA == "" || (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("tls: give --tls-ca, and --tls-cert with --tls-key")
	}
	return Load(Files{CA: f.CA, Cert: f.Cert, Key: f.Key}, Options{Logger: log})
}

// CheckExposure refuses plaintext listeners beyond loopback: with src nil
// and insecure false, every address of addrs (host:port; an empty host
// means every interface) must be a loopback one.
func CheckExposure(src *Source, insecure bool, addrs ...string) error {
	if src != nil || insecure {
		return nil
	}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("address %q: %w", a, err)
		}
		if host == "localhost" {
			continue
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			continue
		}
		return fmt.Errorf("refusing to listen on %s without TLS: give --tls-ca, --tls-cert and --tls-key (ops certs), or --insecure to serve plaintext beyond loopback", a)
	}
	return nil
}
