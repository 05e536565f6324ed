package router

import (
	"context"
	"sync"

	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Deliveries to one remote node are coalesced: concurrent writes bound for
// the same node travel in one Replica.Apply (each mutation names its shard),
// so a replica costs one RPC and one fsync for many writes instead of one
// each. A batch the replica refuses is split and sent write by write, so
// one bad write cannot hold back the others. A delivery whose caller gave
// up while it queued (its deadline passed: the replica is slower than the
// writes bound for it) is not sent: the caller records its job as failed,
// and the journal delivers it again after a backoff, so sending it
// as well would only add to the replica's backlog.
const (
	coalesceWorkers      = 2   // concurrent Apply RPCs per node
	coalesceMaxWrites    = 128 // writes merged into one RPC
	coalesceMaxMutations = 500 // mutations merged into one RPC
)

type pendingDelivery struct {
	ctx        context.Context // the caller's: done once it stopped waiting
	muts       []shard.Mutation
	mapVersion uint64
	done       chan deliveryResult // buffered
}

type deliveryResult struct {
	outs []shard.Outcome
	err  error
}

// coalescer merges the deliveries to one node address.
type coalescer struct {
	r    *Router
	addr string
	ch   chan *pendingDelivery
}

// coalescers holds one coalescer per node address and the goroutines that
// run them; they stop when the router's Run ends.
type coalescers struct {
	mu      sync.Mutex
	byAddr  map[string]*coalescer
	stopped bool
	quit    chan struct{}
	wg      sync.WaitGroup
}

// applyRemote sends muts to the node at addr, merged with other writes
// bound there at the same time.
func (r *Router) applyRemote(ctx context.Context, addr string, muts []shard.Mutation, mapVersion uint64) ([]shard.Outcome, error) {
	c := r.coalescerFor(addr)
	if c == nil { // the router is stopping: no merging
		return r.cfg.Remote.Apply(ctx, addr, muts, mapVersion)
	}
	p := &pendingDelivery{ctx: ctx, muts: muts, mapVersion: mapVersion, done: make(chan deliveryResult, 1)}
	select {
	case c.ch <- p:
	default:
		// As many deliveries wait for the node as a queue holds: it is
		// not keeping up, or it hangs. Waiting for room would hold this
		// goroutine and its mutations up to ReplicaTimeout, and thousands
		// like it; the journal holds them instead (skipNode).
		return nil, status.Errorf(codes.Unavailable, "router: %d deliveries already wait for %s, which does not keep up; the write is journaled and will be delivered", cap(c.ch), addr)
	}
	select {
	case res := <-p.done:
		return res.outs, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Router) coalescerFor(addr string) *coalescer {
	cs := &r.coal
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.stopped {
		return nil
	}
	if c, ok := cs.byAddr[addr]; ok {
		return c
	}
	if cs.byAddr == nil {
		cs.byAddr = map[string]*coalescer{}
		cs.quit = make(chan struct{})
	}
	c := &coalescer{r: r, addr: addr, ch: make(chan *pendingDelivery, 1024)}
	cs.byAddr[addr] = c
	for range coalesceWorkers {
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			c.run(cs.quit)
		}()
	}
	return c
}

// stopCoalescers ends the coalescers' goroutines once no delivery can
// reach them any more. Calling it again changes nothing.
func (r *Router) stopCoalescers() {
	cs := &r.coal
	cs.mu.Lock()
	if cs.quit != nil && !cs.stopped {
		close(cs.quit)
	}
	cs.stopped = true
	cs.mu.Unlock()
	cs.wg.Wait()
}

func (c *coalescer) run(quit <-chan struct{}) {
	for {
		var batch []*pendingDelivery
		n := 0
		select {
		case p := <-c.ch:
			if !c.expired(p) {
				batch, n = append(batch, p), len(p.muts)
			}
		case <-quit:
			return
		}
	drain:
		for len(batch) < coalesceMaxWrites && n < coalesceMaxMutations {
			select {
			case p := <-c.ch:
				if !c.expired(p) {
					batch, n = append(batch, p), n+len(p.muts)
				}
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			c.send(batch)
		}
	}
}

// expired reports (and counts) a delivery whose caller no longer waits for
// it: it is not sent (see above).
func (c *coalescer) expired(p *pendingDelivery) bool {
	if p.ctx.Err() == nil {
		return false
	}
	c.r.metrics.deliveriesExpired.Inc()
	return true
}

// send applies a batch of deliveries in one RPC, or one by one if the
// replica refuses the merged batch for a reason other than being down.
func (c *coalescer) send(batch []*pendingDelivery) {
	r := c.r
	apply := func(muts []shard.Mutation, v uint64) ([]shard.Outcome, error) {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ReplicaTimeout)
		defer cancel()
		return r.cfg.Remote.Apply(ctx, c.addr, muts, v)
	}
	if len(batch) > 1 {
		// The merged batch carries the oldest version of its writes, so
		// that a fence refuses it if it refuses any of them; the writes are
		// then sent one by one, each with its own version.
		var muts []shard.Mutation
		v := batch[0].mapVersion
		for _, p := range batch {
			muts = append(muts, p.muts...)
			v = min(v, p.mapVersion)
		}
		outs, err := apply(muts, v)
		if err == nil {
			off := 0
			for _, p := range batch {
				p.done <- deliveryResult{outs: outs[off : off+len(p.muts)]}
				off += len(p.muts)
			}
			return
		}
		if Unavailable(err) {
			for _, p := range batch {
				p.done <- deliveryResult{err: err}
			}
			return
		}
	}
	for _, p := range batch {
		if c.expired(p) {
			continue
		}
		outs, err := apply(p.muts, p.mapVersion)
		p.done <- deliveryResult{outs: outs, err: err}
	}
}
