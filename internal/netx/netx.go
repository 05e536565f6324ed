// Package netx builds every listener, gRPC server and gRPC client connection
// of Aviary, so that transport security and authentication are added in one
// place.
package netx

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// StreamWorkers is the number of goroutines a server keeps to run RPCs;
// beyond them, an RPC gets a goroutine of its own.
const StreamWorkers = 256

// Message size bounds, both ways. A batch at its default limit (8 MiB of
// keys, values and payloads) fits with room for framing.
const (
	MaxRecvMsgBytes = 16 << 20
	MaxSendMsgBytes = 16 << 20
)

// MaxConcurrentStreams bounds the calls one client connection has in flight
// at a server; more wait for a slot.
const MaxConcurrentStreams = 1024

// DefaultCallTimeout bounds a unary call made without a deadline, so that
// no call, internal or not, waits forever on a peer that stopped answering.
const DefaultCallTimeout = 30 * time.Second

// Listen opens a TCP listener on addr ("127.0.0.1:0" picks a free port).
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("netx: listen on %s: %w", addr, err)
	}
	return l, nil
}

// ServerOptions returns the options of every Aviary gRPC server, followed by
// extra (interceptors, say).
func ServerOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(MaxSendMsgBytes),
		// Reuse goroutines across streams: a fresh goroutine per RPC pays
		// for growing its stack every time.
		grpc.NumStreamWorkers(StreamWorkers),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
	}
	return append(opts, extra...)
}

// Dial returns a client connection to an Aviary node at addr. The connection
// is established lazily, on first use.
func Dial(addr string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxRecvMsgBytes),
			grpc.MaxCallSendMsgSize(MaxSendMsgBytes),
		),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithChainUnaryInterceptor(defaultDeadline),
	}
	cc, err := grpc.NewClient(addr, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("netx: dial %s: %w", addr, err)
	}
	return cc, nil
}

// DialTCP opens a plain TCP connection (used by raft's transport).
func DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("netx: dial %s: %w", addr, err)
	}
	return c, nil
}

// Security is the transport security of a process's links. A nil
// *Security, or one without TLS, is plaintext: for development on
// loopback only.
type Security struct {
	// TLS holds the CA and this process's key pair, reloaded from disk.
	TLS *tlsx.Source
	// Site is this process's site: a peer that must be a node (raft, node
	// to node calls) must be a node of it.
	Site string
	// Logger receives the refused handshakes of ServerOption's servers.
	Logger *slog.Logger
	// Tokens lets clients without a certificate connect (TLS still) and
	// authenticate each call with a bearer token instead.
	Tokens *tlsx.Tokens
}

// Enabled reports whether s is TLS.
func (s *Security) Enabled() bool { return s != nil && s.TLS != nil }

// NodePeer is what this process expects of a node it dials: a node, of its
// site when it has one (another node), of any site otherwise (a client).
func (s *Security) NodePeer() tlsx.Expect {
	return tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}, Site: s.site()}
}

func (s *Security) site() string {
	if s == nil {
		return ""
	}
	return s.Site
}

// DialOption returns the transport credentials of a connection to the
// server at addr, which must satisfy want (a node: tlsx.Expect{Roles:
// []tlsx.Role{tlsx.RoleNode}}).
func (s *Security) DialOption(addr string, want tlsx.Expect) grpc.DialOption {
	if !s.Enabled() {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(s.TLS.ClientConfig(tlsx.ServerNameOf(addr), want)))
}

// ServerOption returns the transport credentials of a gRPC server: every
// client presents a certificate of the CA.
func (s *Security) ServerOption() grpc.ServerOption {
	if !s.Enabled() {
		return grpc.EmptyServerOption{}
	}
	return grpc.Creds(loggedCreds{
		TransportCredentials: credentials.NewTLS(s.TLS.ServerConfig(s.clientAuth(), tlsx.Expect{})),
		log:                  s.Logger,
	})
}

// clientAuth is what a server asks of its clients' certificates: required,
// unless tokens may stand in for them (then verified when given).
func (s *Security) clientAuth() tls.ClientAuthType {
	if s.Tokens != nil {
		return tls.VerifyClientCertIfGiven
	}
	return tls.RequireAndVerifyClientCert
}

// loggedCreds logs the handshakes a server refuses (no certificate, one of
// another CA, plaintext): the client only sees its connection fail.
type loggedCreds struct {
	credentials.TransportCredentials
	log *slog.Logger
}

func (c loggedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil && c.log != nil {
		c.log.Warn("refused a TLS connection", "remote", raw.RemoteAddr().String(), "err", err)
	}
	return conn, info, err
}

func (c loggedCreds) Clone() credentials.TransportCredentials {
	return loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log}
}

// WrapListener makes l a TLS listener whose peers must satisfy want (raft's
// transport: a node of this site). Plaintext returns l.
func (s *Security) WrapListener(l net.Listener, want tlsx.Expect) net.Listener {
	if !s.Enabled() {
		return l
	}
	return tls.NewListener(l, s.TLS.ServerConfig(tls.RequireAndVerifyClientCert, want))
}

// DialStream opens a TCP connection to addr and, with TLS, completes a
// handshake with a server that must satisfy want (raft's transport).
func (s *Security) DialStream(ctx context.Context, addr string, want tlsx.Expect) (net.Conn, error) {
	c, err := DialTCP(ctx, addr)
	if err != nil || !s.Enabled() {
		return c, err
	}
	tc := tls.Client(c, s.TLS.ClientConfig(tlsx.ServerNameOf(addr), want))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("netx: TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// defaultDeadline gives a unary call without a deadline DefaultCallTimeout.
func defaultDeadline(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
