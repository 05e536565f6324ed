package router

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/shard"
	dto "github.com/prometheus/client_model/go"
)

// gatedRemote answers every Apply once the gate is open, and records the
// keys it was sent.
type gatedRemote struct {
	gate    chan struct{}
	mu      sync.Mutex
	started int
	keys    []string
}

func (g *gatedRemote) Apply(ctx context.Context, _ string, muts []shard.Mutation, _ uint64) ([]shard.Outcome, error) {
	g.mu.Lock()
	g.started++
	for _, m := range muts {
		g.keys = append(g.keys, string(m.Key))
	}
	g.mu.Unlock()
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
