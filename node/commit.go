package node

import (
	"context"
	"errors"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// committers bounds the batches the node applies at once. Writes that
// arrive while they are all busy queue, and the next free committer takes
// every compatible write queued and applies them as one batch: one router
// write, one journal entry, one Pebble commit and one fsync for many
// clients' writes. Pebble groups concurrent commits into one fsync too,
// but each commit, and each router write before it, has a cost of its own
// that this amortises. A few committers keep the log busy: while one waits
// for an fsync, the next builds the batch that goes into the following one
// (`go run ./cmd/bench --workloads put,putstream` measured 2, 4 and 8 alike).
const committers = 4

// commitQueue applies prepared writes in batches (see committers). A write
// that this node's replicas alone acknowledge (prepared.local: not of
// consistency ALL, every mutation with a readable replica here) is
// combined with the local writes queued beside it that have the same
// consistency, all name shards or none, and are Aviary's own or not, up to
// the node's batch limits (mutations and bytes); any other write is applied
// alone, so that one waiting on other nodes holds back no other. Each write
// of a batch gets the answer it would have got alone: every write was
// checked before it queued (prepare); a write whose own mutations reached
// enough replicas is acknowledged even if others of its batch did not; and
// when a batch is refused before anything is applied (one write's tree is
// read-only or blocked, say), its writes are applied one by one, each to
// its own answer.
type commitQueue struct {
	n *Node

	mu      sync.Mutex
	queue   []queuedWrite
	running int
	closed  bool
	wg      sync.WaitGroup // running committers
}

// queuedWrite is a write waiting for a committer.
type queuedWrite struct {
	p        prepared
	c        pb.Consistency
	internal bool      // Aviary's own (router.Internal): not held by the site's state
	deadline time.Time // the caller's, if it has one
	done     func(res []*pb.WriteResult, err error)
}

// submit queues a write; done is called once with its results or error,
// from a committer's goroutine (or at once, refused, if the queue is
// closed).
func (q *commitQueue) submit(w queuedWrite) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		w.done(nil, status.Error(codes.Unavailable, "node is shutting down; the write was not applied"))
		return
	}
	q.queue = append(q.queue, w)
	start := q.running < committers
	if start {
		q.running++
		q.wg.Add(1)
	}
	q.mu.Unlock()
	if start {
		go q.run()
	}
}

// close refuses new writes and waits for the committers to apply what is
// queued: the node calls it once no call can submit more (its gRPC server
// has stopped), before it stops the router and closes the store.
func (q *commitQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.wg.Wait()
}

// apply queues a write and waits for it, or for ctx: a write whose caller
// gave up may still be applied, as with any call that ends without an
// answer. release (the write's room in the node's write budget: admit)
// is called once it is answered.
func (q *commitQueue) apply(ctx context.Context, p prepared, c pb.Consistency, release func()) ([]*pb.WriteResult, error) {
	type result struct {
		res []*pb.WriteResult
		err error
	}
	ch := make(chan result, 1)
	d, _ := ctx.Deadline()
	q.submit(queuedWrite{p: p, c: c, internal: router.IsInternal(ctx), deadline: d, done: func(res []*pb.WriteResult, err error) {
		release()
		ch <- result{res, err}
	}})
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// run applies batches until the queue is empty. It stops under mu, having
// found the queue empty, so no write queued is left without a committer.
func (q *commitQueue) run() {
	defer q.wg.Done()
	for {
		batch := q.take()
		if batch == nil {
			return
		}
		q.applyBatch(batch)
	}
}

// take removes the longest prefix of the queue that can be one batch, or
// returns nil and stops counting its caller when the queue is empty.
func (q *commitQueue) take() []queuedWrite {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		q.running--
		return nil
	}
	first, lim := q.queue[0], &q.n.cfg.Limits
	k, muts, bytes := 1, len(first.p.muts), first.p.bytes
	// While the site drains, clients' writes are held, each until its own
	// deadline: they go alone.
	combine := first.p.local && (first.internal || first.p.named || !q.n.router.Draining())
	for combine && k < len(q.queue) {
		next := q.queue[k]
		if !next.p.local || next.c != first.c || next.p.named != first.p.named || next.internal != first.internal ||
			muts+len(next.p.muts) > lim.MaxBatchMutations || bytes+next.p.bytes > lim.MaxBatchBytes {
			break
		}
		muts += len(next.p.muts)
		bytes += next.p.bytes
		k++
	}
	batch := make([]queuedWrite, k)
	copy(batch, q.queue)
	clear(q.queue[:k]) // drop the references the backing array keeps
	q.queue = q.queue[k:]
	if len(q.queue) == 0 {
		q.queue = nil
	}
	return batch
}

func (q *commitQueue) applyBatch(batch []queuedWrite) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	if len(batch) == 1 {
		w := batch[0]
		w.done(q.n.apply(ctx, w.p, w.c))
		return
	}
	n := 0
	for _, w := range batch {
		n += len(w.p.muts)
	}
	muts := make([]shard.Mutation, 0, n)
	for _, w := range batch {
		muts = append(muts, w.p.muts...)
	}
	outcomes, rr, err := q.n.applyMuts(ctx, muts, batch[0].p.named, batch[0].c)
	off := 0
	for _, w := range batch {
		k := len(w.p.muts)
		part := muts[off : off+k : off+k]
		switch {
		case err == nil:
			if rr != nil {
				w.done(q.n.results(part, nil, rr[off:off+k]), nil)
			} else {
				w.done(q.n.results(part, outcomes[off:off+k], nil), nil)
			}
		case errors.Is(err, router.ErrNotEnoughReplicas):
			// Some trees of the batch lacked replicas: a write whose own
			// mutations had enough is acknowledged (it is durable), the
			// others get the error, as each would alone.
			if rr != nil && router.Satisfied(rr[off:off+k], routerConsistency(w.c)) {
				w.done(q.n.results(part, nil, rr[off:off+k]), nil)
			} else {
				w.done(nil, toStatus(err))
			}
		case ctx.Err() != nil, errors.Is(err, router.ErrSiteNotActive):
			// What every write of the batch would have met alone.
			w.done(nil, toStatus(err))
		default:
			// Refused before anything was applied, most likely by one
			// write's tree (read-only, blocked, no route) or named shard:
			// each write is applied alone to get its own answer. Applying
			// one again is harmless if it was applied after all: versions
			// and ids were stamped once, in prepare.
			w.done(q.n.apply(ctx, w.p, w.c))
		}
		off += k
	}
}

// batchContext is the context a batch is applied under: not its callers'
// (a batch outlives any one of them, and a graceful shutdown lets the
// calls in flight finish), but ending at the latest of their deadlines,
// or after maxBatchWait if one has none, so that no batch waits without
// bound (for a map version, say). A draining site holds the batch no
// longer than its first caller's deadline (router.HoldUntil): each is
// refused in time to hear it.
func batchContext(batch []queuedWrite) (context.Context, context.CancelFunc) {
	var first, last time.Time
	for _, w := range batch {
		d := w.deadline
		if d.IsZero() {
			d = time.Now().Add(maxBatchWait)
		}
		if first.IsZero() || d.Before(first) {
			first = d
		}
		if d.After(last) {
			last = d
		}
	}
	ctx := context.Background()
	if batch[0].internal {
		ctx = router.Internal(ctx)
	}
	ctx = router.HoldUntil(ctx, first)
	return context.WithDeadline(ctx, last)
}

// maxBatchWait bounds a batch none of whose callers has a deadline (as the
// node's default deadline of unary calls does for a call).
const maxBatchWait = 30 * time.Second
