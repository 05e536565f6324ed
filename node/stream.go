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

// streamInflight bounds the writes of one WriteStream received but not yet
// answered. Past it the node stops reading the stream, and gRPC's flow
// control holds the client back.
const streamInflight = 1024

const methodWriteStream = "/aviary.v1.Data/WriteStream"

// WriteStream applies the writes a client streams. Each request is checked
// as it arrives (a bad one is answered at once) and queued for the node's
// committers (commitQueue), which apply it with the writes queued beside
// it, from this stream and others, and answer it once it is durable.
func (d *dataServer) WriteStream(st pb.Data_WriteStreamServer) error {
	n := d.n
	ctx := st.Context()
	id, known := n.caller(ctx)
	internal := router.IsInternal(ctx)
	streamDeadline, _ := ctx.Deadline()
	w := &streamAnswers{n: n, st: st, slots: make(chan struct{}, streamInflight)}
	// Answers are sent by committers: the call must not end before them.
	defer w.wg.Wait()
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		w.wg.Add(1)
		wid, start := req.Id, time.Now()
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
		p, err := n.prepare(req.Write.Mutations)
		if err != nil {
			w.answer(wid, start, nil, err)
			continue
		}
		n.commits.submit(queuedWrite{p: p, c: req.Write.Consistency, internal: internal, deadline: deadline, done: func(res []*pb.WriteResult, err error) {
			w.answer(wid, start, res, err)
		}})
	}
}

// streamAnswers sends a stream's answers, one at a time.
type streamAnswers struct {
	n      *Node
	st     pb.Data_WriteStreamServer
	slots  chan struct{} // one per write received and not yet answered
	wg     sync.WaitGroup
	sendMu sync.Mutex
}

// answer sends the response to write id and frees its slot.
func (w *streamAnswers) answer(id uint64, start time.Time, res []*pb.WriteResult, err error) {
	defer w.wg.Done()
	resp := &pb.WriteStreamResponse{Id: id, Results: res}
	if err != nil {
		resp.Results = nil
		resp.Status, _ = proto.Marshal(status.Convert(err).Proto())
	}
	w.sendMu.Lock()
	sendErr := w.st.Send(resp)
	w.sendMu.Unlock()
	<-w.slots
	code := status.Code(err)
	if sendErr != nil && err == nil {
		code = codes.Canceled // the client is gone; Recv reports why
	}
	w.n.metrics.latency.WithLabelValues(methodWriteStream).Observe(time.Since(start).Seconds())
	w.n.metrics.requests.WithLabelValues(methodWriteStream, code.String()).Inc()
}
