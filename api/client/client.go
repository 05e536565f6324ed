// Package client is a thin Go client for an Aviary site. It dials every
// node it is given and sends each call to one of them, failing over to the
// next when a node is unreachable or not ready (codes Unavailable and
// DeadlineExceeded), so that a site keeps serving a client while any of its
// nodes is up. Any node routes any request, so no node is special.
//
//	c, err := client.Dial([]string{"127.0.0.1:7400", "127.0.0.1:7410"})
//	r, err := c.Put(ctx, &aviarypb.PutRequest{Table: "statuses", Key: k, Value: v})
//
// Writes that fail over may have been applied by the node that failed
// (its answer was lost); writes are idempotent by version, and a retried
// write gets a new version, so a retry after an unknown outcome is safe for
// last-writer-wins data.
package client

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/netx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Client sends calls to the nodes of one site. It is safe for concurrent
// use.
type Client struct {
	addrs []string
	conns []*grpc.ClientConn
	data  []pb.DataClient
	next  atomic.Uint32 // the node tried first
}

// Dial returns a client for the nodes at addrs (at least one). Connections
// are made lazily.
func Dial(addrs []string) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("client: no node address")
	}
	c := &Client{addrs: addrs}
	for _, a := range addrs {
		cc, err := netx.Dial(a)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("client: %w", err)
		}
		c.conns = append(c.conns, cc)
		c.data = append(c.data, pb.NewDataClient(cc))
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
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

// do runs call against the nodes, starting with the one that last
// answered, until one answers with anything but unavailability.
func do[T any](ctx context.Context, c *Client, call func(pb.DataClient) (T, error)) (T, error) {
	start := int(c.next.Load())
	var errs []error
	for i := range c.data {
		k := (start + i) % len(c.data)
		r, err := call(c.data[k])
		if err == nil || !retryable(err) || ctx.Err() != nil {
			if err == nil && k != start {
				c.next.Store(uint32(k))
			}
			return r, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.addrs[k], err))
	}
	var zero T
	return zero, status.Errorf(codes.Unavailable, "client: no node answered: %v", errors.Join(errs...))
}

// Put sets (table, key) to value.
func (c *Client) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.WriteResult, error) { return d.Put(ctx, r) })
}

// Delete deletes (table, key).
func (c *Client) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.WriteResult, error) { return d.Delete(ctx, r) })
}

// Append adds an index entry.
func (c *Client) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.WriteResult, error) { return d.Append(ctx, r) })
}

// Remove deletes an index entry.
func (c *Client) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.WriteResult, error) { return d.Remove(ctx, r) })
}

// Write applies a batch of mutations.
func (c *Client) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.WriteResponse, error) { return d.Write(ctx, r) })
}

// Get reads (table, key).
func (c *Client) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.GetResponse, error) { return d.Get(ctx, r) })
}

// MultiGet reads many keys of one table.
func (c *Client) MultiGet(ctx context.Context, r *pb.MultiGetRequest) (*pb.MultiGetResponse, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.MultiGetResponse, error) { return d.MultiGet(ctx, r) })
}

// Range lists an owner's entries, newest first.
func (c *Client) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.RangeResponse, error) { return d.Range(ctx, r) })
}

// Count counts an owner's entries.
func (c *Client) Count(ctx context.Context, r *pb.CountRequest) (*pb.CountResponse, error) {
	return do(ctx, c, func(d pb.DataClient) (*pb.CountResponse, error) { return d.Count(ctx, r) })
}
