package client

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/netx"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Stream sends writes to the site over one Data.WriteStream call instead
// of a unary call per write: for programs that write at high rates from
// many goroutines. Each Write or Put still waits for its own answer, given
// once the write is durable, with the same results and errors as the
// unary call; writes in flight together are applied in one batch and one
// fsync by the node. They are unordered, as concurrent unary calls are.
//
// The stream is opened on the first write, to the node the Client would
// call first, and opened again, on the next node, after it breaks. A write
// not yet sent when it broke is sent on the new stream; so, once, is a
// write in flight when the stream ended with codes.Unavailable (a node
// shutting down answers the writes it took and refuses the rest so; a
// lost connection looks the same), as a unary call fails over: such a
// write may have been applied where it was first sent (see the package
// comment on retries). A Stream is safe for concurrent use; Close it when
// done.
type Stream struct {
	c *Client

	mu  sync.Mutex
	cur *streamConn
	// opening is closed when the open under way ends; nil if none is.
	// Writers wait for it under their own contexts.
	opening chan struct{}
	closed  bool
}

// Stream returns a Stream writing to c's nodes.
func (c *Client) Stream() *Stream { return &Stream{c: c} }

// streamConn is one WriteStream call and the writes waiting on it.
type streamConn struct {
	addr   string
	st     pb.Data_WriteStreamClient
	cancel context.CancelFunc

	// send is held to send (one message at a time); a channel, so that a
	// writer waiting for it can give up with its context.
	send chan struct{}

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan *pb.WriteStreamResponse
	err     error // why the stream ended; nil while it is up
	// refused: the node ended the stream with Unavailable (shutting down,
	// say); the writes it did not answer may go to another node.
	refused bool
}

// Put sets (table, key) to value, as Client.Put.
func (s *Stream) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return s.one(ctx, r.Consistency, r.Mutation())
}

// Delete deletes (table, key), as Client.Delete.
func (s *Stream) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return s.one(ctx, r.Consistency, r.Mutation())
}

// Append adds an index entry, as Client.Append.
func (s *Stream) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return s.one(ctx, r.Consistency, r.Mutation())
}

// Remove deletes an index entry, as Client.Remove.
func (s *Stream) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return s.one(ctx, r.Consistency, r.Mutation())
}

func (s *Stream) one(ctx context.Context, c pb.Consistency, m *pb.Mutation) (*pb.WriteResult, error) {
	resp, err := s.Write(ctx, &pb.WriteRequest{Consistency: c, Mutations: []*pb.Mutation{m}})
	if err != nil {
		return nil, err
	}
	return resp.Results[0], nil
}

// Write applies a batch of mutations, as Client.Write.
func (s *Stream) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	// A stream that broke is replaced once, and the write sent again on
	// the new one (to the next node), as a unary call fails over: when the
	// write had not been sent, or when the node ended the stream with
	// Unavailable (it answers every write it took before it ends a stream
	// on shutdown).
	for attempt := 0; ; attempt++ {
		sc, err := s.conn(ctx)
		if err != nil {
			return nil, err
		}
		resp, again, err := sc.write(ctx, r)
		if err != nil && again && attempt == 0 && ctx.Err() == nil {
			s.drop(sc)
			continue
		}
		return resp, err
	}
}

// Close ends the stream. Writes in flight fail with codes.Canceled.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cur != nil {
		s.cur.cancel()
		s.cur = nil
	}
	return nil
}

// conn returns the open stream, opening one if there is none: on the
// Client's current node, failing over to the next as Client calls do. One
// writer opens; the others wait for it, each no longer than its context.
func (s *Stream) conn(ctx context.Context) (*streamConn, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, status.Error(codes.Canceled, "client: stream closed")
		}
		if s.cur != nil && s.cur.broken() == nil {
			sc := s.cur
			s.mu.Unlock()
			return sc, nil
		}
		if wait := s.opening; wait != nil {
			s.mu.Unlock()
			select {
			case <-wait:
				continue // opened, or failed: look again
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
		done := make(chan struct{})
		s.opening, s.cur = done, nil
		s.mu.Unlock()

		sc, err := s.open(ctx)
		s.mu.Lock()
		s.opening = nil
		if err == nil && s.closed {
			sc.cancel()
			err = status.Error(codes.Canceled, "client: stream closed")
		}
		if err == nil {
			s.cur = sc
			go sc.receive()
		}
		s.mu.Unlock()
		close(done)
		if err != nil {
			return nil, err
		}
		return sc, nil
	}
}

// open opens a write stream. The call outlives ctx (it carries later
// writes too): only opening it waits on ctx.
func (s *Stream) open(ctx context.Context) (*streamConn, error) {
	return do(ctx, s.c, func(n *node) (*streamConn, error) {
		sctx, cancel := context.WithCancel(context.Background())
		opened := make(chan struct{})
		go func() { // opening does not outlive ctx
			select {
			case <-ctx.Done():
				cancel()
			case <-opened:
			}
		}()
		st, err := n.data.WriteStream(sctx)
		close(opened)
		if err != nil {
			cancel()
			return nil, err
		}
		return &streamConn{addr: n.addr, st: st, cancel: cancel, send: make(chan struct{}, 1), waiting: map[uint64]chan *pb.WriteStreamResponse{}}, nil
	})
}

// drop forgets sc if it is still the current stream.
func (s *Stream) drop(sc *streamConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == sc {
		s.cur = nil
	}
	sc.cancel()
}

func (sc *streamConn) broken() error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.err
}

// write sends r and waits for its answer. again reports whether r may be
// sent again elsewhere: it was not sent, or the node refused the stream's
// unanswered writes as it ended it.
func (sc *streamConn) write(ctx context.Context, r *pb.WriteRequest) (resp *pb.WriteResponse, again bool, err error) {
	req := &pb.WriteStreamRequest{Write: r}
	if d, ok := ctx.Deadline(); ok {
		req.TimeoutMs = uint32(max(1, min(time.Until(d).Milliseconds(), math.MaxUint32)))
	}
	// gRPC ends the whole call when it cannot send a message: refuse one
	// that is too large here, alone, as a unary call would be.
	if n := proto.Size(req); n > netx.MaxSendMsgBytes {
		return nil, false, status.Errorf(codes.ResourceExhausted, "client: write of %d bytes, larger than the %d a message may carry", n, netx.MaxSendMsgBytes)
	}
	ch := make(chan *pb.WriteStreamResponse, 1)
	sc.mu.Lock()
	if sc.err != nil {
		sc.mu.Unlock()
		return nil, true, sc.err
	}
	sc.next++
	req.Id = sc.next
	sc.waiting[req.Id] = ch
	sc.mu.Unlock()
	forget := func() {
		sc.mu.Lock()
		delete(sc.waiting, req.Id)
		sc.mu.Unlock()
	}

	select {
	case sc.send <- struct{}{}:
	case <-ctx.Done():
		forget()
		return nil, false, status.FromContextError(ctx.Err()).Err()
	}
	err = sc.st.Send(req)
	<-sc.send
	if err != nil {
		// Send fails with io.EOF when the call has ended; the reason is
		// what receive saw. The message was not sent.
		forget()
		sc.cancel()
		return nil, true, status.Errorf(codes.Unavailable, "client: write stream to %s ended before the write was sent: %v", sc.addr, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			sc.mu.Lock()
			defer sc.mu.Unlock()
			return nil, sc.refused, sc.err
		}
		if len(m.Status) > 0 {
			var st spb.Status
			if err := proto.Unmarshal(m.Status, &st); err != nil {
				return nil, false, status.Errorf(codes.Internal, "client: write stream to %s: undecodable status: %v", sc.addr, err)
			}
			return nil, false, status.ErrorProto(&st)
		}
		if len(m.Results) != len(r.Mutations) {
			return nil, false, status.Errorf(codes.Internal, "client: write stream to %s: %d results for %d mutations", sc.addr, len(m.Results), len(r.Mutations))
		}
		return &pb.WriteResponse{Results: m.Results}, false, nil
	case <-ctx.Done():
		forget()
		return nil, false, status.FromContextError(ctx.Err()).Err()
	}
}

// receive hands each answer to its writer until the call ends, then fails
// the writes still waiting.
func (sc *streamConn) receive() {
	for {
		m, err := sc.st.Recv()
		if err != nil {
			why := status.Convert(err)
			if errors.Is(err, context.Canceled) || why.Code() == codes.Canceled {
				err = status.Errorf(codes.Canceled, "client: write stream to %s closed; the write may or may not have been applied", sc.addr)
			} else {
				err = status.Errorf(codes.Unavailable, "client: write stream to %s ended (%s: %s); the write may or may not have been applied", sc.addr, why.Code(), why.Message())
			}
			sc.mu.Lock()
			sc.err = err
			sc.refused = why.Code() == codes.Unavailable
			for id, ch := range sc.waiting {
				close(ch)
				delete(sc.waiting, id)
			}
			sc.mu.Unlock()
			sc.cancel()
			return
		}
		sc.mu.Lock()
		ch, ok := sc.waiting[m.Id]
		delete(sc.waiting, m.Id)
		sc.mu.Unlock()
		if ok {
			ch <- m
		}
	}
}
