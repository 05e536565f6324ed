// Package natsx is the NATS plumbing of cross-site replication: an embedded
// nats-server with JetStream on file storage, client connections that
// reconnect forever, idempotent creation of streams and key-value buckets,
// and a raw publish/consume baseline for benchmarks. It knows nothing of
// Aviary's data.
package natsx

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds the wait for the client listener once the server has
// started; JetStream's recovery of its store is done before that wait.
const readyTimeout = 10 * time.Second

// lockName is the file in ServerConfig.Dir that a running server holds
// locked, so that two servers never share a store.
const lockName = "natsx.lock"

// ServerConfig configures an embedded nats-server.
type ServerConfig struct {
	// Dir holds JetStream's file store (in Dir/jetstream) and the lock
	// file that keeps a second server off the same store. Required; it is
	// created if missing.
	Dir string
	// Host is the address the client listener binds. Default 127.0.0.1.
	Host string
	// Port is the client port. 0 picks a free port (see Server.Port);
	// negative values are rejected.
	Port int
	// ServerName names the server in its logs and monitoring. Default: the
	// server's generated id, which changes on every start (the store is
	// recovered either way).
	ServerName string
	// MaxStoreBytes and MaxMemoryBytes bound JetStream's file and memory
	// storage. 0 leaves the bound to the server, which takes most of the
	// free disk and of the machine's memory.
	MaxStoreBytes  int64
	MaxMemoryBytes int64
	// MaxPayload is the largest message the server accepts (0: the
	// server's default, 1 MiB; at most 64 MiB).
	MaxPayload int32
	// TLS, if set, is the server's TLS configuration: every client
	// connection must be TLS and present a certificate it verifies (the
	// configuration's ClientAuth). Nil: plaintext.
	TLS *tls.Config
	// ClientAuth, if set, decides every client connection from its
	// verified TLS state: refused on error, else allowed the permissions
	// it returns (nil: every subject) under the name it returns.
	ClientAuth func(cs *tls.ConnectionState) (name string, p *Permissions, err error)
	// MonitorPort, if not 0, serves nats-server's monitoring endpoints
	// over HTTP on 127.0.0.1 (whatever Host is): -1 picks a free port, a
	// positive value is the port. 0, the default, serves none.
	MonitorPort int
	// Logger receives the server's logs: notices at info level, warnings
	// and errors as they are, fatal errors at error level (the server is
	// not stopped by them, but StartServer fails). Debug logs are asked
	// for only when Logger has debug enabled; protocol traces never.
	// Default: discard.
	Logger *slog.Logger
}

// Server is a running embedded nats-server with JetStream enabled.
type Server struct {
	ns   *server.Server
	log  *serverLogger
	lock *os.File
	once sync.Once
}

// StartServer starts a nats-server in this process with JetStream on file
// storage under cfg.Dir, and returns once it accepts client connections.
// Streams and messages left in cfg.Dir by an earlier server are recovered
// before it returns. It fails if another server in any process holds
// cfg.Dir.
//
// A stored message reaches the operating system before its publish is
// acknowledged, so it survives a crash of the process; files are synced to
// disk every two minutes (nats-server's default), so a crash of the
// machine can lose the acknowledged messages of that interval.
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("natsx: ServerConfig.Dir is required")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("natsx: client port %d out of range (0 picks a free one)", cfg.Port)
	}
	if cfg.MonitorPort < -1 || cfg.MonitorPort > 65535 {
		return nil, fmt.Errorf("natsx: monitor port %d out of range (0 disables, -1 picks a free one)", cfg.MonitorPort)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("natsx: %w", err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}

	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName:             cfg.ServerName,
		Host:                   cfg.Host,
		Port:                   port,
		NoSigs:                 true,
		JetStream:              true,
		StoreDir:               cfg.Dir,
		JetStreamMaxStore:      cfg.MaxStoreBytes,
		JetStreamMaxMemory:     cfg.MaxMemoryBytes,
		MaxPayload:             cfg.MaxPayload,
		DisableJetStreamBanner: true,
	}
	if cfg.TLS != nil {
		opts.TLS, opts.TLSVerify, opts.TLSConfig = true, true, cfg.TLS
		opts.TLSTimeout = 2
	}
	if cfg.ClientAuth != nil {
		opts.CustomClientAuthentication = clientAuth{check: cfg.ClientAuth, log: cfg.Logger}
	}
	if cfg.MonitorPort != 0 {
		opts.HTTPHost = "127.0.0.1"
		opts.HTTPPort = cfg.MonitorPort
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("natsx: new server: %w", err)
	}
	sl := newServerLogger(cfg.Logger)
	ns.SetLoggerV2(sl, sl.debug, false, false)

	s := &Server{ns: ns, log: sl, lock: lock}
	// Start returns early, after logging a fatal error, when JetStream or
	// a listener cannot start; otherwise it returns with JetStream's store
	// recovered and the client listener open.
	ns.Start()
	if msg := sl.fatal(); msg != "" {
		s.Shutdown()
		return nil, fmt.Errorf("natsx: start server: %s", msg)
	}
	if !ns.ReadyForConnections(readyTimeout) {
		s.Shutdown()
		if msg := sl.fatal(); msg != "" {
			return nil, fmt.Errorf("natsx: start server: %s", msg)
		}
		return nil, fmt.Errorf("natsx: server not ready for connections after %s", readyTimeout)
	}
	if !ns.JetStreamEnabled() {
		s.Shutdown()
		return nil, errors.New("natsx: server started without JetStream")
	}
	return s, nil
}

// ClientURL is the URL clients connect to, nats://host:port.
func (s *Server) ClientURL() string {
	return s.ns.ClientURL()
}

// Port is the client port the server listens on; with ServerConfig.Port 0
// it is the port picked at start, which a restart on the same Dir can be
// given to keep its URL.
func (s *Server) Port() int {
	if a, ok := s.ns.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// MonitorURL is the base URL of the monitoring endpoints
// (http://127.0.0.1:port), or "" if ServerConfig.MonitorPort was 0.
func (s *Server) MonitorURL() string {
	a := s.ns.MonitorAddr()
	if a == nil {
		return ""
	}
	return "http://" + net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
}

// Shutdown stops the server, closing its client connections and flushing
// and closing JetStream's store, and returns once it has stopped and
// released its Dir. It may be called more than once.
func (s *Server) Shutdown() {
	s.once.Do(func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		_ = s.lock.Close()
	})
}

// Permissions are the subjects a client may publish and subscribe to.
type Permissions struct {
	Publish, Subscribe []string
}

// clientAuth adapts ServerConfig.ClientAuth to nats-server.
type clientAuth struct {
	check func(*tls.ConnectionState) (string, *Permissions, error)
	log   *slog.Logger
}

func (a clientAuth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	name, p, err := a.check(c.GetTLSConnectionState())
	if err != nil {
		a.log.Warn("refused a NATS client", "remote", c.RemoteAddress().String(), "err", err)
		return false
	}
	u := &server.User{Username: name}
	if p != nil {
		u.Permissions = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: p.Publish},
			Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
		}
	}
	c.RegisterUser(u)
	return true
}
