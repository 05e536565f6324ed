package router

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/shard"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gatedRemote answers every Apply once the gate is open, and records the
// keys it was sent. With refuseFirst, its first Apply answers Unavailable
// at once.
type gatedRemote struct {
	gate        chan struct{}
	refuseFirst bool
	mu          sync.Mutex
	started     int
	keys        []string
}

func (g *gatedRemote) Apply(ctx context.Context, _ string, muts []shard.Mutation, _ uint64) ([]shard.Outcome, error) {
	g.mu.Lock()
	g.started++
	first := g.started == 1
	for _, m := range muts {
		g.keys = append(g.keys, string(m.Key))
	}
	g.mu.Unlock()
	if first && g.refuseFirst {
		return nil, status.Error(codes.Unavailable, "not answering")
	}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	outs := make([]shard.Outcome, len(muts))
	for i := range outs {
		outs[i] = shard.Applied
	}
	return outs, nil
}

func (g *gatedRemote) state() (started int, keys []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.started, slices.Clone(g.keys)
}

// waitUntil polls cond until it holds or a deadline passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCoalescerSkipsExpiredDeliveries: a delivery whose caller stopped
// waiting while it queued behind a slow replica is not sent (the journal
// delivers it again); the others are, and their callers get the answer.
func TestCoalescerSkipsExpiredDeliveries(t *testing.T) {
	remote := &gatedRemote{gate: make(chan struct{})}
	r := New(Config{Store: openStore(t), Remote: remote, ReplicaTimeout: time.Minute})
	var open sync.Once
	release := func() { open.Do(func() { close(remote.gate) }) }
	defer r.stopCoalescers()
	defer release()
	const addr = "replica:1"
	put := func(key string) []shard.Mutation {
		return []shard.Mutation{{Op: shard.OpPut, Shard: "s", Table: "t", Key: []byte(key), Value: []byte("v")}}
	}
	errs := make(chan error, coalesceWorkers+1)
	deliver := func(ctx context.Context, key string) {
		_, err := r.applyRemote(ctx, addr, put(key), 1)
		errs <- err
	}
	// Every worker is busy with a delivery the replica has not answered
	// (one at a time, or the first worker would take both).
	for i := range coalesceWorkers {
		go deliver(context.Background(), fmt.Sprintf("busy%d", i))
		waitUntil(t, "a worker sending", func() bool { n, _ := remote.state(); return n == i+1 })
	}
	c := r.coalescerFor(addr)

	// One delivery queues, and its caller gives up.
	ctx, cancel := context.WithCancel(context.Background())
	expired := make(chan error, 1)
	go func() {
		_, err := r.applyRemote(ctx, addr, put("expired"), 1)
		expired <- err
	}()
	waitUntil(t, "the delivery queued", func() bool { return len(c.ch) == 1 })
	cancel()
	if err := <-expired; err == nil {
		t.Fatal("a delivery whose caller gave up reported success")
	}
	// Another queues behind it, and its caller waits.
	go deliver(context.Background(), "live")
	waitUntil(t, "the second delivery queued", func() bool { return len(c.ch) == 2 })

	release()
	for range coalesceWorkers + 1 {
		if err := <-errs; err != nil {
			t.Fatalf("a delivery whose caller waited failed: %v", err)
		}
	}
	_, keys := remote.state()
	if slices.Contains(keys, "expired") || !slices.Contains(keys, "live") {
		t.Fatalf("the replica was sent %q: want the live delivery and not the expired one", keys)
	}
	var m dto.Metric
	if err := r.metrics.deliveriesExpired.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 1 {
		t.Fatalf("aviary_router_deliveries_expired_total = %v, want 1", got)
	}
}

// TestWritesSkipUnavailableNode: once a delivery to a node has timed out,
// writes leave their deliveries to it to the journal instead of each
// holding a goroutine for the replica timeout; the retry loop delivers
// them when the node answers again, and writes then deliver at once.
func TestWritesSkipUnavailableNode(t *testing.T) {
	h := newHungNode(t, time.Hour, 100*time.Millisecond)
	r, st, remote, write, down, release := h.r, h.st, h.remote, h.write, h.down, h.release
	ctx := context.Background()

	write("first")
	waitUntil(t, "the delivery to a hung node timing out", down)
	const writes = 50
	for i := range writes {
		write(fmt.Sprintf("k%d", i))
	}
	if started, _ := remote.state(); started != 1 {
		t.Fatalf("%d deliveries sent to a node known to be unavailable, want only the first", started)
	}
	skipped := func() float64 {
		var m dto.Metric
		if err := r.metrics.deliveriesSkipped.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	if got := skipped(); got != writes {
		t.Fatalf("aviary_router_deliveries_skipped_total = %v, want %d", got, writes)
	}
	jobs, err := st.Jobs(false, 0, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != writes+1 {
		t.Fatalf("%d jobs journaled for the unavailable node, want %d", len(jobs), writes+1)
	}

	// The node answers again: the retry loop delivers every job, and the
	// node is no longer skipped.
	release()
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		r.Run(runCtx)
	}()
	defer func() {
		stop()
		<-ran
	}()
	waitUntil(t, "the retry loop delivering every job", func() bool {
		jobs, err := st.Jobs(false, 0, "", 1)
		return err == nil && len(jobs) == 0 && !down()
	})
	_, keys := remote.state()
	for i := range writes {
		if !slices.Contains(keys, fmt.Sprintf("k%d", i)) {
			t.Fatalf("k%d never reached the node", i)
		}
	}
	write("after")
	waitUntil(t, "a write's delivery once the node answers again", func() bool {
		_, keys := remote.state()
		return slices.Contains(keys, "after")
	})
	if got := skipped(); got != writes {
		t.Fatalf("aviary_router_deliveries_skipped_total = %v after the node answered again, want still %d", got, writes)
	}
}

// TestProbeAfterDownFor: DownFor after a node was found unavailable, one
// write's delivery goes to it to see whether it answers; the others go on
// to the journal until it does.
func TestProbeAfterDownFor(t *testing.T) {
	// The node refuses the first delivery at once, then hangs (for longer
	// than the test, so there is one probe only).
	h := newHungNode(t, 50*time.Millisecond, time.Minute)
	h.remote.refuseFirst = true
	h.write("first")
	waitUntil(t, "the node refusing the first delivery", h.down)
	time.Sleep(60 * time.Millisecond) // DownFor passes (a duration under test, not synchronisation)
	for i := range 10 {
		h.write(fmt.Sprintf("k%d", i))
	}
	waitUntil(t, "the probe reaching the node", func() bool { n, _ := h.remote.state(); return n == 2 })
	if _, keys := h.remote.state(); !slices.Equal(keys, []string{"first", "k0"}) {
		t.Fatalf("deliveries sent: %q; want the first and one probe (k0)", keys)
	}
}

// hungNode is a router on node "self" whose writes to table "both" have a
// readable replica here and one on node "other", which hangs until
// release.
type hungNode struct {
	t       *testing.T
	r       *Router
	st      *shard.Store
	remote  *gatedRemote
	release func()
}

func newHungNode(t *testing.T, downFor, timeout time.Duration) *hungNode {
	t.Helper()
	ctx := context.Background()
	st := openStore(t)
	if _, err := st.CreateShard(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTable(ctx, "both", shard.KindContent); err != nil {
		t.Fatal(err)
	}
	remote := &gatedRemote{gate: make(chan struct{})}
	h := &hungNode{t: t, st: st, remote: remote}
	h.r = New(Config{NodeID: "self", Store: st, Map: localMap(t), Remote: remote, ReplicaTimeout: timeout, DownFor: downFor})
	var open sync.Once
	h.release = func() { open.Do(func() { close(remote.gate) }) }
	t.Cleanup(func() { // before the store closes
		h.release()
		h.r.wg.Wait() // deliveries settled
		h.r.stopCoalescers()
	})
	return h
}

func (h *hungNode) write(key string) {
	h.t.Helper()
	ctx := context.Background()
	muts := []shard.Mutation{{Op: shard.OpPut, Table: "both", Key: []byte(key), Value: []byte("v"), Version: shard.Version{HLC: 1 << 30, Site: 1}}}
	if _, err := h.r.Write(ctx, muts, One); err != nil {
		h.t.Fatalf("write %s: %v", key, err)
	}
}

// down reports whether the router takes node "other" for unavailable.
func (h *hungNode) down() bool {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	return h.r.mu.down["other"] != nil
}

// TestCoalescerQueueFull: a delivery to a node that already has a full
// queue of deliveries waiting fails at once, as unavailable, instead of
// waiting for room.
func TestCoalescerQueueFull(t *testing.T) {
	remote := &gatedRemote{gate: make(chan struct{})}
	r := New(Config{Store: openStore(t), Remote: remote, ReplicaTimeout: time.Minute})
	const addr = "replica:1"
	put := []shard.Mutation{{Op: shard.OpPut, Shard: "s", Table: "t", Key: []byte("k"), Value: []byte("v")}}
	var wg sync.WaitGroup
	defer func() {
		close(remote.gate)
		wg.Wait()
		r.stopCoalescers()
	}()
	deliver := func() {
		wg.Go(func() { _, _ = r.applyRemote(context.Background(), addr, put, 1) })
	}
	for i := range coalesceWorkers { // every worker busy, one at a time
		deliver()
		waitUntil(t, "a worker sending", func() bool { n, _ := remote.state(); return n == i+1 })
	}
	c := r.coalescerFor(addr)
	for range cap(c.ch) {
		deliver()
	}
	waitUntil(t, "the queue filling", func() bool { return len(c.ch) == cap(c.ch) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // fails, rather than hangs, if it waits for room
	defer cancel()
	_, err := r.applyRemote(ctx, addr, put, 1)
	if !Unavailable(err) || !strings.Contains(err.Error(), "does not keep up") {
		t.Fatalf("a delivery behind a full queue: %v, want Unavailable at once", err)
	}
}
