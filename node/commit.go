package node

import (
	"context"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/shard"
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
// of consistency ALL is applied alone, as its outcome depends on its own
// replicas; others are combined with the writes queued beside them that
// have the same consistency, all name shards or none, and are Aviary's own
// or not, up to the node's batch limits (mutations and bytes). A combined
// batch applies or fails as a whole, like one Write of all its mutations,
// and each write in it gets the results of its own mutations; every write
// was checked before it queued (prepare), so what fails a batch is what
// would have failed each of its writes (the site not active, a shard
// fenced, the node shutting down).
type commitQueue struct {
	n *Node

	mu      sync.Mutex
	queue   []queuedWrite
	running int
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
// from a committer's goroutine.
func (q *commitQueue) submit(w queuedWrite) {
	q.mu.Lock()
	q.queue = append(q.queue, w)
	start := q.running < committers
	if start {
		q.running++
	}
	q.mu.Unlock()
	if start {
		go q.run()
	}
}

// apply queues a write and waits for it, or for ctx: a write whose caller
// gave up may still be applied, as with any call that ends without an
// answer.
func (q *commitQueue) apply(ctx context.Context, p prepared, c pb.Consistency) ([]*pb.WriteResult, error) {
	type result struct {
		res []*pb.WriteResult
		err error
	}
	ch := make(chan result, 1)
	d, _ := ctx.Deadline()
	q.submit(queuedWrite{p: p, c: c, internal: router.IsInternal(ctx), deadline: d, done: func(res []*pb.WriteResult, err error) {
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
	for first.c != pb.Consistency_CONSISTENCY_ALL && k < len(q.queue) {
		next := q.queue[k]
		if next.c != first.c || next.p.named != first.p.named || next.internal != first.internal ||
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
	p := batch[0].p
	if len(batch) > 1 {
		n := 0
		for _, w := range batch {
			n += len(w.p.muts)
		}
		p.muts = make([]shard.Mutation, 0, n)
		for _, w := range batch {
			p.muts = append(p.muts, w.p.muts...)
		}
	}
	// A batch outlives the calls it carries, and during a graceful
	// shutdown the calls in flight finish before the store closes.
	ctx := context.Background()
	if batch[0].internal {
		ctx = router.Internal(ctx)
	}
	// A draining site holds writes no longer than the first caller's
	// deadline: each is refused in time to hear it.
	var hold time.Time
	for _, w := range batch {
		if !w.deadline.IsZero() && (hold.IsZero() || w.deadline.Before(hold)) {
			hold = w.deadline
		}
	}
	if !hold.IsZero() {
		ctx = router.HoldUntil(ctx, hold)
	}
	res, err := q.n.apply(ctx, p, batch[0].c)
	off := 0
	for _, w := range batch {
		k := len(w.p.muts)
		if err != nil {
			w.done(nil, err)
		} else {
			w.done(res[off:off+k:off+k], nil)
		}
		off += k
	}
}
