package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/timex"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Tables the workloads use: two of the node's default tables.
const (
	contentTable = "statuses"      // put, batch100, get
	indexTable   = "user_timeline" // range20
)

// Workload shapes.
const (
	batchMutations   = 100  // mutations per batch100 Write
	preloadBatch     = 1000 // keys or entries per preload Write (the node's default batch limit)
	rangeLimit       = 20   // Range limit of range20
	entryPayloadSize = 16   // payload bytes of a range20 index entry
	entrySpread      = 60 * 24 * time.Hour
)

// Key prefixes keep each workload's keys apart.
const (
	prefixPut   = 'p'
	prefixBatch = 'b'
	prefixGet   = 'g'
)

// workloadNames are the workloads in the order they run by default.
var workloadNames = []string{"ping", "put", "putstream", "batch100", "get", "range20"}

// opFunc performs one operation of a workload.
type opFunc func(ctx context.Context) error

// result is the measurement of one workload on one target.
type result struct {
	Workload    string
	Target      string // "node" or "raw"; for router, "r=<replicas> <consistency>" or "<n> nodes"
	Concurrency int
	MutsPerOp   int // mutations per operation; 0 for reads
	Ops         uint64
	Errors      uint64
	Elapsed     time.Duration
	Interrupted bool
	Hist        *Histogram
	// Service, of a paced run, times each operation from when it was
	// sent, where Hist times it from when the schedule gave it: the
	// difference is queueing for a free client and the load generator's
	// own lateness in waking for it.
	Service *Histogram
	// ErrSamples counts errors by message, for a bounded number of
	// distinct messages.
	ErrSamples map[string]uint64
	// Router results: the replicas of every shard tree, the consistency
	// label, and the nodes of the site (0 and "" otherwise).
	Replicas    int
	Consistency string
	Nodes       int
	// LatencyOnly: the operations are timed one at a time and their rate
	// means nothing (map-propagation); no throughput is printed.
	LatencyOnly bool
}

// OpsPerSec is the throughput of successful operations.
func (r *result) OpsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// maxErrSamples bounds the distinct error messages kept per client.
const maxErrSamples = 8

// runLoop runs newOp's operations from conc goroutines: warmup first (not
// measured), then until duration has passed. Every goroutine gets its own
// operation (and so its own buffers and random source) and its own histogram;
// they are merged at the end. An operation is measured if it started after
// the warmup and before the deadline; the elapsed time runs from the end of
// the warmup to the end of the last measured operation. When ctx ends, the
// clients stop, operations cut short are discarded, and the result so far is
// returned marked Interrupted (nil if the warmup had not finished).
func runLoop(ctx context.Context, workload, target string, conc, mutsPerOp int, warmup, duration time.Duration, newOp func(worker int) opFunc) *result {
	return runPaced(ctx, workload, target, conc, mutsPerOp, 0, warmup, duration, newOp)
}

// runPaced is runLoop with the clients sharing a schedule of rate
// operations a second (an open loop; 0: back to back, as runLoop). An
// operation's latency runs from the time the schedule gave it, so one that
// waited for a free client counts the wait (no coordinated omission); it
// is measured if that time is after the warmup and before the deadline.
func runPaced(ctx context.Context, workload, target string, conc, mutsPerOp, rate int, warmup, duration time.Duration, newOp func(worker int) opFunc) *result {
	type client struct {
		h, sv *Histogram
		errs  map[string]uint64
		nerr  uint64
		last  time.Time
	}
	cs := make([]client, conc)
	start := time.Now()
	measureFrom := start.Add(warmup)
	deadline := measureFrom.Add(duration)
	sched := &schedule{start: start, rate: rate}
	var wg sync.WaitGroup
	for w := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &cs[w]
			c.h = NewHistogram()
			if rate > 0 {
				c.sv = NewHistogram()
			}
			op := newOp(w)
			for ctx.Err() == nil {
				t0 := time.Now()
				if rate > 0 {
					var ok bool
					if t0, ok = sched.wait(ctx, deadline); !ok {
						return
					}
				} else if !t0.Before(deadline) {
					return
				}
				sent := t0
				if rate > 0 {
					sent = time.Now()
				}
				err := op(ctx)
				t1 := time.Now()
				if ctx.Err() != nil {
					return // interrupted: the operation's outcome is unknown
				}
				if t0.Before(measureFrom) {
					continue
				}
				c.last = t1
				if err != nil {
					c.nerr++
					msg := err.Error()
					if _, ok := c.errs[msg]; ok || len(c.errs) < maxErrSamples {
						if c.errs == nil {
							c.errs = map[string]uint64{}
						}
						c.errs[msg]++
					}
					continue
				}
				c.h.RecordDuration(t1.Sub(t0))
				if c.sv != nil {
					c.sv.RecordDuration(t1.Sub(sent))
				}
			}
		}()
	}
	wg.Wait()

	r := &result{Workload: workload, Target: target, Concurrency: conc, MutsPerOp: mutsPerOp,
		Hist: NewHistogram(), ErrSamples: map[string]uint64{}, Interrupted: ctx.Err() != nil}
	if rate > 0 {
		r.Service = NewHistogram()
	}
	var end time.Time
	for i := range cs {
		c := &cs[i]
		r.Hist.Merge(c.h)
		if r.Service != nil {
			r.Service.Merge(c.sv)
		}
		r.Errors += c.nerr
		for m, n := range c.errs {
			r.ErrSamples[m] += n
		}
		if c.last.After(end) {
			end = c.last
		}
	}
	if r.Interrupted {
		end = time.Now()
	}
	if !end.After(measureFrom) {
		return nil
	}
	r.Ops = r.Hist.Count()
	r.Elapsed = end.Sub(measureFrom)
	return r
}

// schedule is rate operations a second from start, shared by clients: an
// open loop's slots.
type schedule struct {
	start time.Time
	rate  int
	next  atomic.Int64
}

// wait takes the next slot and sleeps until its time, which it returns;
// false if that time is not before end, or ctx ended.
func (s *schedule) wait(ctx context.Context, end time.Time) (time.Time, bool) {
	at := s.start.Add(time.Duration(s.next.Add(1)-1) * time.Second / time.Duration(s.rate))
	if !at.Before(end) {
		return at, false
	}
	if d := time.Until(at); d > 0 && timex.Sleep(ctx, d) != nil {
		return at, false
	}
	return at, true
}

// newRand returns a random source for one client, seeded afresh.
func newRand() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// fillRandom fills b with random (incompressible) bytes.
func fillRandom(rng *rand.Rand, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, rng.Uint64())
		b = b[8:]
	}
	if len(b) > 0 {
		var t [8]byte
		binary.LittleEndian.PutUint64(t[:], rng.Uint64())
		copy(b, t[:])
	}
}

const hexDigits = "0123456789abcdef"

// keyLen is the length of every benchmark key: a prefix byte and 16 hex
// digits.
const keyLen = 17

// appendKey appends the key of number n in the space of prefix.
func appendKey(dst []byte, prefix byte, n uint64) []byte {
	dst = append(dst, prefix)
	for s := 60; s >= 0; s -= 4 {
		dst = append(dst, hexDigits[(n>>s)&15])
	}
	return dst
}

// entryID returns the id of entry j of owner: a time within the last
// entrySpread (a minute short of now, so never in the future), drawn from a
// source seeded by the owner, so that an owner's entries span one to three
// months and a Range of the newest ones sometimes crosses a month partition.
// The sequence field is j, which keeps an owner's ids distinct.
func entryID(now time.Time, owner uint64, j int) uint64 {
	rng := rand.New(rand.NewPCG(owner, uint64(j)))
	t := now.Add(-time.Minute - time.Duration(rng.Int64N(int64(entrySpread))))
	return uint64(ids.NewID(t, 0, ids.MaxWorker, uint32(j)))
}

// preload runs fill over [0, total) in chunks of chunk items from workers
// goroutines, printing progress every 5 seconds and the total time. It stops
// at the first error.
func (b *bench) preload(ctx context.Context, what string, total, chunk, workers int, fill func(ctx context.Context, worker, lo, hi int) error) error {
	if total == 0 {
		return nil
	}
	start := time.Now()
	b.printf("# %s: preloading %d items in batches of %d from %d clients\n", what, total, chunk, workers)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, done atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				lo := int(next.Add(int64(chunk))) - chunk
				if lo >= total {
					return
				}
				hi := min(lo+chunk, total)
				if err := fill(ctx, w, lo, hi); err != nil {
					cancel(fmt.Errorf("items [%d, %d): %w", lo, hi, err))
					return
				}
				done.Add(int64(hi - lo))
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case <-tick.C:
			n := done.Load()
			b.printf("#   %s: %d/%d (%.0f%%), %.0f items/s\n", what, n, total,
				100*float64(n)/float64(total), float64(n)/time.Since(start).Seconds())
		case <-finished:
			waiting = false
		}
	}
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("%s: preload: %w", what, err)
	}
	el := time.Since(start)
	b.printf("# %s: preloaded %d items in %s (%.0f items/s)\n", what, total, el.Round(time.Millisecond), float64(total)/el.Seconds())
	return nil
}

// nodePing: one health Check per operation, over the clients'
// connections and through the node's interceptors, but with no storage
// work and no fsync.
func (b *bench) nodePing(_ context.Context) (func(int) opFunc, error) {
	return func(w int) opFunc { return healthCheck(b.conns[w%len(b.conns)]) }, nil
}

// healthCheck returns a call of cc's health Check: a unary round trip
// through a node's interceptors with no work behind it.
func healthCheck(cc *grpc.ClientConn) opFunc {
	hc, req := healthpb.NewHealthClient(cc), &healthpb.HealthCheckRequest{}
	return func(ctx context.Context) error {
		_, err := hc.Check(ctx, req)
		return err
	}
}

// nodePut: one durable Put RPC of a new random key per operation.
func (b *bench) nodePut(_ context.Context) (func(int) opFunc, error) {
	return putOps(unary(b.client), b.cfg.ValueBytes, pb.Consistency_CONSISTENCY_DEFAULT, 0), nil
}

// nodePutStream: the put workload over write streams (client.Stream), one
// per connection, shared by the clients on it: each operation is still one
// durable Put of a new random key, waited for alone, but it is a message on
// a stream rather than a unary call, and the node applies the puts that
// arrive together in one batch.
func (b *bench) nodePutStream(_ context.Context) (func(int) opFunc, error) {
	streams := make([]*client.Stream, len(b.conns))
	for i := range streams {
		c, err := dialClient(b.addr)
		if err != nil {
			return nil, err
		}
		b.closers = append(b.closers, c.Close)
		streams[i] = c.Stream()
		b.closers = append(b.closers, streams[i].Close)
	}
	return putOps(func(w int) putter { return streams[w%len(streams)] }, b.cfg.ValueBytes, pb.Consistency_CONSISTENCY_DEFAULT, 0), nil
}

// putter sends one Put: a DataClient's unary call or a client.Stream.
type putter interface {
	Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error)
}

// putOps is the put workload, shared by put and router: one Put RPC of a
// new random key of valueBytes random bytes per operation, with
// consistency, from client goroutine w over client(w). A positive
// wantReplicas also checks the acknowledgement: the write went to that many
// replicas, and at least one (all, for CONSISTENCY_ALL) had applied it.
func putOps(client func(int) putter, valueBytes int, consistency pb.Consistency, wantReplicas int) func(int) opFunc {
	return func(w int) opFunc {
		c, rng := client(w), newRand()
		key, val := make([]byte, 0, keyLen), make([]byte, valueBytes)
		req := &pb.PutRequest{Table: contentTable, Consistency: consistency}
		return func(ctx context.Context) error {
			key = appendKey(key[:0], prefixPut, rng.Uint64())
			fillRandom(rng, val)
			req.Key, req.Value = key, val
			resp, err := c.Put(ctx, req)
			if err != nil || wantReplicas <= 0 {
				return err
			}
			wantAcked := uint32(1)
			if consistency == pb.Consistency_CONSISTENCY_ALL {
				wantAcked = uint32(wantReplicas)
			}
			if resp.Replicas != uint32(wantReplicas) || resp.Acked < wantAcked {
				return fmt.Errorf("put: acknowledged with %d of %d replicas applied, want %d of %d",
					resp.Acked, resp.Replicas, wantAcked, wantReplicas)
			}
			return nil
		}
	}
}

// unary sends the Puts of client goroutine w as unary calls on client(w).
func unary(client func(int) pb.DataClient) func(int) putter {
	return func(w int) putter { return unaryPutter{client(w)} }
}

type unaryPutter struct{ c pb.DataClient }

func (u unaryPutter) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return u.c.Put(ctx, r)
}

// nodeBatch100: one Write RPC of batchMutations Puts of new random keys.
func (b *bench) nodeBatch100(_ context.Context) (func(int) opFunc, error) {
	return func(w int) opFunc {
		c, rng := b.client(w), newRand()
		puts := make([]*pb.Mutation_Put, batchMutations)
		req := &pb.WriteRequest{Mutations: make([]*pb.Mutation, batchMutations)}
		for i := range puts {
			puts[i] = &pb.Mutation_Put{Key: make([]byte, 0, keyLen), Value: make([]byte, b.cfg.ValueBytes)}
			req.Mutations[i] = &pb.Mutation{Table: contentTable, Op: &pb.Mutation_Put_{Put: puts[i]}}
		}
		return func(ctx context.Context) error {
			for _, p := range puts {
				p.Key = appendKey(p.Key[:0], prefixBatch, rng.Uint64())
				fillRandom(rng, p.Value)
			}
			resp, err := c.Write(ctx, req)
			if err == nil && len(resp.Results) != batchMutations {
				err = fmt.Errorf("write: %d results for %d mutations", len(resp.Results), batchMutations)
			}
			return err
		}
	}, nil
}

// nodeGet preloads --keys keys with Write batches, then reads uniformly
// random ones with Get, checking the value's length.
func (b *bench) nodeGet(ctx context.Context) (func(int) opFunc, error) {
	vb := b.cfg.ValueBytes
	fill := func(ctx context.Context, w, lo, hi int) error {
		rng := newRand()
		req := &pb.WriteRequest{Mutations: make([]*pb.Mutation, 0, hi-lo)}
		for i := lo; i < hi; i++ {
			v := make([]byte, vb)
			fillRandom(rng, v)
			req.Mutations = append(req.Mutations, &pb.Mutation{Table: contentTable,
				Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: appendKey(nil, prefixGet, uint64(i)), Value: v}}})
		}
		_, err := b.client(w).Write(ctx, req)
		return err
	}
	if err := b.preload(ctx, "get (node)", b.cfg.Keys, preloadBatch, b.cfg.Concurrency, fill); err != nil {
		return nil, err
	}
	return func(w int) opFunc {
		c, rng := b.client(w), newRand()
		key := make([]byte, 0, keyLen)
		req := &pb.GetRequest{Table: contentTable}
		return func(ctx context.Context) error {
			key = appendKey(key[:0], prefixGet, rng.Uint64N(uint64(b.cfg.Keys)))
			req.Key = key
			resp, err := c.Get(ctx, req)
			if err == nil && len(resp.Value) != vb {
				err = fmt.Errorf("get: value of %d bytes, want %d", len(resp.Value), vb)
			}
			return err
		}
	}, nil
}

// nodeRange20 preloads --owners owners' --entries-per-owner index entries
// with Write batches of Appends carrying explicit ids, then reads the newest
// rangeLimit entries of uniformly random owners with Range, checking the
// count.
func (b *bench) nodeRange20(ctx context.Context) (func(int) opFunc, error) {
	per := b.cfg.EntriesPerOwner
	now := time.Now()
	fill := func(ctx context.Context, w, lo, hi int) error {
		rng := newRand()
		req := &pb.WriteRequest{Mutations: make([]*pb.Mutation, 0, hi-lo)}
		for k := lo; k < hi; k++ {
			owner, j := uint64(k/per+1), k%per
			p := make([]byte, entryPayloadSize)
			fillRandom(rng, p)
			req.Mutations = append(req.Mutations, &pb.Mutation{Table: indexTable,
				Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: owner, Id: entryID(now, owner, j), Payload: p}}})
		}
		_, err := b.client(w).Write(ctx, req)
		return err
	}
	if err := b.preload(ctx, "range20 (node)", b.cfg.Owners*per, preloadBatch, b.cfg.Concurrency, fill); err != nil {
		return nil, err
	}
	want := min(rangeLimit, per)
	return func(w int) opFunc {
		c, rng := b.client(w), newRand()
		req := &pb.RangeRequest{Table: indexTable, Limit: rangeLimit}
		return func(ctx context.Context) error {
			req.Owner = 1 + rng.Uint64N(uint64(b.cfg.Owners))
			resp, err := c.Range(ctx, req)
			if err == nil && len(resp.Entries) != want {
				err = fmt.Errorf("range: owner %d: %d entries, want %d", req.Owner, len(resp.Entries), want)
			}
			return err
		}
	}, nil
}
