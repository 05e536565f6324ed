package node

import (
	"errors"
	"io"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// streamInflight bounds the writes of one WriteStream taken but not yet
// answered. Past it the node stops taking them, its reader stops reading
// the stream once streamReadAhead more are waiting (and one in hand), and
// gRPC's flow control holds the client back.
const streamInflight = 1024

// streamReadAhead is how many requests a stream's reader goroutine reads
// ahead of the loop that checks and queues them. Without it the two meet
// for every request, and under load each meeting parks and wakes a
// goroutine: the bench measured about 12% fewer putstream writes/s, and
// a third less of the relay workload's write ceiling (docs/benchmarks.md).
const streamReadAhead = 64

// testHookStreamTook, if set, runs after the loop of a WriteStream took a
// request; readerEnded reports whether the reader has seen the stream's
// end.
var testHookStreamTook func(readerEnded func() bool)

const methodWriteStream = "/aviary.v1.Data/WriteStream"

// errStreamShutdown ends a write stream when the node shuts down. The
// writes it answered before are final; any it did not take (those read
// ahead included) were not applied, and the client sends them to another
// node.
var errStreamShutdown = status.Error(codes.Unavailable, "node is shutting down: the writes of this stream not answered were not applied; write to another node")

// WriteStream applies the writes a client streams. Each request is checked
// as it arrives (a bad one is answered at once) and queued for the node's
// committers (commitQueue), which apply it with the writes queued beside
// it, from this stream and others, and answer it once it is durable.
//
// Answers go out through one sender goroutine per stream, from a buffer
// with room for every write in flight: a client slow to read its answers
// holds back its own stream (the node stops reading it), never a committer
// or other clients' writes. When the node shuts down, the stream stops
// taking writes, answers those it took, and ends with Unavailable.
func (d *dataServer) WriteStream(st pb.Data_WriteStreamServer) error {
	n := d.n
	ctx := st.Context()
	id, known := n.caller(ctx)
	internal := router.IsInternal(ctx)
	streamDeadline, _ := ctx.Deadline()

	w := &streamAnswers{n: n, slots: make(chan struct{}, streamInflight), out: make(chan answer, streamInflight)}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		w.send(st)
	}()
	defer func() {
		w.wg.Wait() // every write taken is answered...
		close(w.out)
		<-sent // ...and the answers are sent before the call ends
	}()

	// The reader closes reqs when it stops, after every request it read:
	// the requests read before the stream's end are all taken.
	// Each request carries when it was read: its timeout_ms runs from
	// then, as the client's does from its send, not from when the loop
	// takes it.
	type arrived struct {
		req *pb.WriteStreamRequest
		at  time.Time
	}
	reqs, recvErr := make(chan arrived, streamReadAhead), make(chan error, 1)
	go func() {
		defer close(reqs)
		for {
			req, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- arrived{req, time.Now()}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var req *pb.WriteStreamRequest
		var start time.Time
		select {
		case r, ok := <-reqs:
			if !ok {
				select {
				case err := <-recvErr:
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				default: // the reader stopped for ctx
					return status.FromContextError(ctx.Err()).Err()
				}
			}
			req, start = r.req, r.at
			if testHookStreamTook != nil {
				testHookStreamTook(func() bool { return len(recvErr) > 0 })
			}
		case <-n.draining.Done():
			return errStreamShutdown
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		select {
		case w.slots <- struct{}{}:
		case <-n.draining.Done():
			return errStreamShutdown
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		w.wg.Add(1)
		wid := req.Id
		deadline := streamDeadline
		if req.TimeoutMs > 0 {
			if d := start.Add(time.Duration(req.TimeoutMs) * time.Millisecond); deadline.IsZero() || d.Before(deadline) {
				deadline = d
			}
		}
		if err := n.rateLimit(ctx, id, known); err != nil {
			w.answer(wid, start, nil, err)
			continue
		}
		if len(req.GetWrite().GetMutations()) == 0 {
			w.answer(wid, start, nil, invalidf("write.mutations is empty"))
			continue
		}
		p, err := n.prepare(req.Write.Mutations, req.Write.Consistency)
		if err != nil {
			w.answer(wid, start, nil, err)
			continue
		}
		// Waiting here for room in the node's write budget (until near
		// the write's own deadline) stops the stream's loop, then its
		// reader, so flow control holds the client back.
		p, release, err := n.admit(ctx, req.Write.Mutations, req.Write.Consistency, p, deadline)
		if err != nil {
			w.answer(wid, start, nil, err)
			continue
		}
		n.commits.submit(queuedWrite{p: p, c: req.Write.Consistency, internal: internal, deadline: deadline, done: func(res []*pb.WriteResult, err error) {
			release()
			w.answer(wid, start, res, err)
		}})
	}
}

// streamAnswers collects a stream's answers for its sender.
type streamAnswers struct {
	n     *Node
	slots chan struct{} // one per write taken and not yet sent an answer
	out   chan answer   // room for every slot: answer never blocks
	wg    sync.WaitGroup
}

type answer struct {
	resp  *pb.WriteStreamResponse
	start time.Time
	code  codes.Code
}

// answer queues the response to write id.
func (w *streamAnswers) answer(id uint64, start time.Time, res []*pb.WriteResult, err error) {
	resp := &pb.WriteStreamResponse{Id: id, Results: res}
	if err != nil {
		resp.Results = nil
		resp.Status, _ = proto.Marshal(status.Convert(err).Proto())
	}
	w.out <- answer{resp: resp, start: start, code: status.Code(err)}
	w.wg.Done()
}

// send sends the answers until out is closed. After a failed Send (the
// client is gone) it discards them, so that no writer waits on it.
func (w *streamAnswers) send(st pb.Data_WriteStreamServer) {
	var failed bool
	for a := range w.out {
		if !failed && st.Send(a.resp) != nil {
			failed = true
		}
		<-w.slots
		code := a.code
		if failed && code == codes.OK {
			code = codes.Canceled // the answer did not reach the client
		}
		w.n.metrics.latency.WithLabelValues(methodWriteStream).Observe(time.Since(a.start).Seconds())
		w.n.metrics.requests.WithLabelValues(methodWriteStream, code.String()).Inc()
	}
}
