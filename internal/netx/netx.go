// Package netx builds every listener, gRPC server and gRPC client connection
// of Aviary, so that transport security and authentication are added in one
// place.
package netx

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
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
