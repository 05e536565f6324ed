// Package client is a thin Go client for Aviary. It has two levels, each
// failing over with the same loop (failover):
//
//   - Client sends calls to the nodes of one site. It dials every node it is
//     given and sends each call to one of them, failing over to the next
//     when a node is unreachable or not ready (codes Unavailable and
//     DeadlineExceeded), so that a site keeps serving a client while any of
//     its nodes is up. Any node routes any request, so no node is special.
//   - Sites sends calls to the most preferred usable site of a list, one
//     Client per site. A site is set aside when none of its nodes answers,
//     or when it refuses a write because it is not active (draining, fenced
//     or recovering: FailedPrecondition with the SITE_NOT_ACTIVE ErrorInfo,
//     see ParseSiteRefusal); the call then goes to the site the refusal
//     names, or else to the next site. A site set aside is probed again
//     after a back-off (1s, doubling up to 10s, by default), and calls
//     return to it once it answers and, if it had refused, accepts a write.
//
// For example:
//
//	c, err := client.Dial([]string{"127.0.0.1:7400", "127.0.0.1:7410"})
//	r, err := c.Put(ctx, &aviarypb.PutRequest{Table: "statuses", Key: k, Value: v})
//
//	s, err := client.DialSites([]client.Site{
//		{Name: "east", Addrs: []string{"10.0.1.1:7390", "10.0.1.2:7390"}},
//		{Name: "west", Addrs: []string{"10.1.1.1:7390"}},
//	}, client.OnSwitch(func(from, to, reason string) { log.Print(from, " -> ", to, ": ", reason) }))
//	r, err := s.Put(ctx, &aviarypb.PutRequest{Table: "statuses", Key: k, Value: v})
//
// Against nodes that run mutual TLS, both take WithTLS: the client presents
// its certificate, whose role says what it may do, and checks that each
// node presents a node's certificate of the same CA:
//
//	src, err := tlsx.Load(tlsx.Files{CA: "ca.crt", Cert: "svc.crt", Key: "svc.key"}, tlsx.Options{})
//	c, err := client.Dial(addrs, client.WithTLS(src))
//
// A write refused by a site that is not active was not applied, so sending
// it to another site is always safe. Writes that fail over because a node
// or a site did not answer may have been applied there (the answer was
// lost); writes are idempotent by version, and a retried write gets a new
// version, so a retry after an unknown outcome is safe for last-writer-wins
// data: both copies carry the same value and the newer version wins
// everywhere once the sites have replicated. An Append that leaves the
// entry id to the node (id 0) gets a new id when retried, so it may add the
// entry twice; give the id to make it safe to retry.
package client

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Client sends calls to the nodes of one site. It is safe for concurrent
// use.
type Client struct {
	nodes []node
	next  atomic.Uint32 // the node tried first
}

// node is one node of the site.
type node struct {
	addr   string
	conn   *grpc.ClientConn
	data   pb.DataClient
	health healthpb.HealthClient
}

// dialOptions are the settings of the connections to nodes.
type dialOptions struct {
	tls   *tlsx.Source
	token string
	extra func(addr string) []grpc.DialOption
}

// A DialOption configures the connections to nodes: those of Dial, and
// those of DialSites to every site's nodes (a DialOption is also a
// SiteOption).
type DialOption func(*dialOptions)

func (f DialOption) applySite(o *siteOptions) { f(&o.dial) }

// WithTLS makes every connection mutual TLS 1.3 with src: the client
// presents src's certificate, whose role (read, write, admin) says what it
// may call, and each node must present a certificate of src's CA, of role
// node, naming the host dialled. src is re-read from disk as it changes
// (tlsx.Source). nil is plaintext, the default, which nodes running TLS
// refuse.
//
// tlsx is an internal package of this module: only programs of the Aviary
// module can build a Source for now.
func WithTLS(src *tlsx.Source) DialOption {
	return func(o *dialOptions) { o.tls = src }
}

// WithToken authenticates every call with a bearer token (ops certs token)
// instead of a client certificate: the connection is still TLS (give
// WithTLS a Source of the CA alone), and the token's role says what the
// client may call. Nodes take tokens only when started with --tokens.
func WithToken(token string) DialOption {
	return func(o *dialOptions) { o.token = token }
}

// WithDialOptions adds gRPC dial options to every connection, as f returns
// them for the node's address: for instance transport credentials built
// with crypto/tls by a program outside this module (which cannot import
// the tlsx package WithTLS takes). Given after Aviary's own, they win.
func WithDialOptions(f func(addr string) []grpc.DialOption) DialOption {
	return func(o *dialOptions) { o.extra = f }
}

// Dial returns a client for the nodes at addrs (at least one). Connections
// are made lazily.
func Dial(addrs []string, opts ...DialOption) (*Client, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	return dial(addrs, o)
}

func dial(addrs []string, o dialOptions) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("client: no node address")
	}
	sec := &netx.Security{TLS: o.tls}
	c := &Client{}
	for _, a := range addrs {
		extra := []grpc.DialOption{sec.DialOption(a, sec.NodePeer())}
		if o.token != "" {
			extra = append(extra, grpc.WithPerRPCCredentials(tlsx.BearerToken(o.token)))
		}
		if o.extra != nil {
			extra = append(extra, o.extra(a)...)
		}
		cc, err := netx.Dial(a, extra...)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("client: %w", err)
		}
		c.nodes = append(c.nodes, node{addr: a, conn: cc, data: pb.NewDataClient(cc), health: healthpb.NewHealthClient(cc)})
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.conn.Close())
	}
	return errors.Join(errs...)
}

// retryable reports whether err means "try another node".
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// attempt is a target that failed, and how.
type attempt struct {
	target int
	err    error
}

// failover is the retry loop of both levels of the package: the nodes of a
// site (Client, through do) and the sites of a deployment (Sites, through
// siteDo). It calls try on target first and, while try fails and ctx has
// not ended, asks next for the target to try after the one that failed
// with err (-1: none, err is the answer). It returns the answer, the target
// that gave it, and the targets that failed before it, in order. The
// policy (which errors move on, in what order, and what a target's failure
// says about it) is next's.
func failover[T any](ctx context.Context, first int, try func(k int) (T, error), next func(k int, err error) int) (r T, k int, failed []attempt, err error) {
	k = first
	for {
		r, err = try(k)
		if err == nil || ctx.Err() != nil {
			return r, k, failed, err
		}
		n := next(k, err)
		if n < 0 {
			return r, k, failed, err
		}
		failed = append(failed, attempt{k, err})
		k = n
	}
}

// do runs call against the nodes, starting with the one that last
// answered, until one answers with anything but unavailability.
func do[T any](ctx context.Context, c *Client, call func(*node) (T, error)) (T, error) {
	start := int(c.next.Load()) % len(c.nodes)
	r, k, failed, err := failover(ctx, start, func(k int) (T, error) { return call(&c.nodes[k]) }, func(k int, err error) int {
		if n := (k + 1) % len(c.nodes); retryable(err) && n != start {
			return n
		}
		return -1
	})
	if err == nil || !retryable(err) || ctx.Err() != nil {
		if k != start && !retryable(err) {
			c.next.Store(uint32(k))
		}
		return r, err
	}
	errs := make([]error, 0, len(failed)+1)
	for _, a := range append(failed, attempt{k, err}) {
		errs = append(errs, fmt.Errorf("%s: %w", c.nodes[a.target].addr, a.err))
	}
	var zero T
	return zero, status.Errorf(codes.Unavailable, "client: no node answered: %v", errors.Join(errs...))
}

// serving reports whether any node of the site answers its health service
// with SERVING. It asks every node at once and waits for a connection up
// to ctx's end; a connection waiting out gRPC's reconnect back-off tries
// again at once (the caller, a probe, has a back-off of its own).
func (c *Client) serving(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan error, len(c.nodes))
	for i := range c.nodes {
		n := &c.nodes[i]
		if n.conn.GetState() == connectivity.TransientFailure {
			n.conn.ResetConnectBackoff()
		}
		go func() {
			r, err := n.health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				err = status.Errorf(codes.Unavailable, "health %s", r.GetStatus())
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", n.addr, err)
			}
			results <- err
		}()
	}
	// Every answer is awaited, so that no goroutine outlives the call: the
	// first SERVING cancels the others' waits.
	var errs []error
	ok := false
	for range c.nodes {
		if err := <-results; err != nil {
			errs = append(errs, err)
		} else {
			ok = true
			cancel()
		}
	}
	if ok {
		return nil
	}
	return status.Errorf(codes.Unavailable, "client: no node serves: %v", errors.Join(errs...))
}

// Put sets (table, key) to value.
func (c *Client) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(n *node) (*pb.WriteResult, error) { return n.data.Put(ctx, r) })
}

// Delete deletes (table, key).
func (c *Client) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(n *node) (*pb.WriteResult, error) { return n.data.Delete(ctx, r) })
}

// Append adds an index entry.
func (c *Client) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(n *node) (*pb.WriteResult, error) { return n.data.Append(ctx, r) })
}

// Remove deletes an index entry.
func (c *Client) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(n *node) (*pb.WriteResult, error) { return n.data.Remove(ctx, r) })
}

// Write applies a batch of mutations.
func (c *Client) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	return do(ctx, c, func(n *node) (*pb.WriteResponse, error) { return n.data.Write(ctx, r) })
}

// Get reads (table, key).
func (c *Client) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	return do(ctx, c, func(n *node) (*pb.GetResponse, error) { return n.data.Get(ctx, r) })
}

// MultiGet reads many keys of one table.
func (c *Client) MultiGet(ctx context.Context, r *pb.MultiGetRequest) (*pb.MultiGetResponse, error) {
	return do(ctx, c, func(n *node) (*pb.MultiGetResponse, error) { return n.data.MultiGet(ctx, r) })
}

// Range lists an owner's entries, newest first.
func (c *Client) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return do(ctx, c, func(n *node) (*pb.RangeResponse, error) { return n.data.Range(ctx, r) })
}

// Count counts an owner's entries.
func (c *Client) Count(ctx context.Context, r *pb.CountRequest) (*pb.CountResponse, error) {
	return do(ctx, c, func(n *node) (*pb.CountResponse, error) { return n.data.Count(ctx, r) })
}
