package node

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// writeBudget bounds the bytes of clients' writes the node has taken and
// not yet answered (Config.MaxWriteBytesInFlight). Writes wait for room
// in the order they asked for it, so a large one is not passed over for
// ever by small ones.
type writeBudget struct {
	limit   int64
	sem     *semaphore.Weighted
	used    atomic.Int64  // for the gauge
	waited  atomic.Uint64 // writes that found no room at once
	drained context.Context
}

// newWriteBudget returns a budget of limit bytes whose waits end when
// drained does (the node shuts down).
func newWriteBudget(limit int64, drained context.Context) *writeBudget {
	return &writeBudget{limit: limit, sem: semaphore.NewWeighted(limit), drained: drained}
}

// register exports the budget's use.
func (b *writeBudget) register(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "aviary_node_write_bytes_in_flight",
			Help: "Key, value and payload bytes of clients' writes taken and not yet answered (bounded by --max-write-bytes-in-flight).",
		}, func() float64 { return float64(b.used.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "aviary_node_write_budget_waits_total",
			Help: "Clients' writes that found no room under --max-write-bytes-in-flight at once and waited for it.",
		}, func() float64 { return float64(b.waited.Load()) }),
	)
}

// take reserves size bytes, waiting for room until nine tenths of the
// time left before deadline have passed (so that the caller hears why:
// ResourceExhausted; no bound if deadline is zero), ctx ends, or the node
// starts shutting down; release gives them back once the write is
// answered. A write of size 0 (nothing counted: say, Removes of entries
// without payload) takes nothing; one larger than the whole budget is
// refused at once.
func (b *writeBudget) take(ctx context.Context, size int, deadline time.Time) (release func(), waited bool, err error) {
	n := int64(size)
	if n <= 0 {
		return func() {}, false, nil
	}
	if n > b.limit {
		return nil, false, status.Errorf(codes.ResourceExhausted,
			"write of %d bytes of keys, values and payloads: larger than --max-write-bytes-in-flight, %d", n, b.limit)
	}
	if !b.sem.TryAcquire(n) {
		waited = true
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return nil, waited, status.Error(codes.DeadlineExceeded, "the write's deadline passed before the node took it")
		}
		b.waited.Add(1)
		var wctx context.Context
		var cancel context.CancelFunc
		if deadline.IsZero() {
			wctx, cancel = context.WithCancel(ctx)
		} else {
			wctx, cancel = context.WithDeadline(ctx, deadline.Add(-time.Until(deadline)/10))
		}
		stop := context.AfterFunc(b.drained, cancel)
		err := b.sem.Acquire(wctx, n)
		stop()
		cancel()
		switch {
		case err == nil:
		case b.drained.Err() != nil:
			return nil, waited, status.Error(codes.Unavailable, "node is shutting down: the write was not applied (it was waiting for room under --max-write-bytes-in-flight)")
		case ctx.Err() != nil:
			return nil, waited, status.FromContextError(ctx.Err()).Err()
		default:
			return nil, waited, status.Errorf(codes.ResourceExhausted,
				"no room for this write's %d bytes before its deadline: the node holds %d bytes of writes not yet answered (--max-write-bytes-in-flight %d); retry later or elsewhere",
				n, b.used.Load(), b.limit)
		}
	}
	b.used.Add(n)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			b.used.Add(-n)
			b.sem.Release(n)
		}
	}, waited, nil
}
