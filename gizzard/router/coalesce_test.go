package router

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gatedRemote answers every Apply once the gate is open, and records the
// keys it was sent. With refuse, an Apply while the gate is closed answers
// Unavailable at once instead of waiting.
type gatedRemote struct {
	gate      chan struct{}
	refuse    bool
	mu        sync.Mutex
	started   int
	active    int // Applies not yet returned
	maxActive int
	keys      []string
}

func (g *gatedRemote) Apply(ctx context.Context, _ string, muts []shard.Mutation, _ uint64) ([]shard.Outcome, error) {
	g.mu.Lock()
	g.started++
	g.active++
	g.maxActive = max(g.maxActive, g.active)
	for _, m := range muts {
		g.keys = append(g.keys, string(m.Key))
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.active--
		g.mu.Unlock()
	}()
	if g.refuse {
		select {
		case <-g.gate:
		default:
			return nil, status.Error(codes.Unavailable, "not answering")
		}
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

// TestWritesSkipUnavailableNode: once a delivery to a node has found it
// unavailable, writes leave their deliveries to it to the journal instead
// of each holding a goroutine for as long as the node may take; once the node answers the
// retry loop's probe, the loop delivers them, and writes deliver at once.
func TestWritesSkipUnavailableNode(t *testing.T) {
	h := newDownNode(t, time.Hour)
	r, st, remote, write, down, release := h.r, h.st, h.remote, h.write, h.down, h.release
	ctx := context.Background()

	write("first")
	waitUntil(t, "the node refusing a delivery", down)
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

	// The node answers again: after DownFor the retry loop probes it, then
	// delivers every job, and the node is no longer skipped.
	release()
	h.wall.Advance(time.Hour)
	h.clock.Advance(time.Second) // after the failures
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
	// The node refuses every delivery, so that after the probe it is down
	// again, and DownFor does not pass again.
	h := newDownNode(t, 50*time.Millisecond)
	h.write("first")
	waitUntil(t, "the node refusing the first delivery", h.down)
	h.wall.Advance(50 * time.Millisecond)
	for i := range 10 {
		h.write(fmt.Sprintf("k%d", i))
	}
	waitUntil(t, "the probe reaching the node", func() bool { n, _ := h.remote.state(); return n == 2 })
	if _, keys := h.remote.state(); !slices.Equal(keys, []string{"first", "k0"}) {
		t.Fatalf("deliveries sent: %q; want the first and one probe (k0)", keys)
	}
}

// downNode is a router on node "self" whose writes to table "both" have a
// readable replica here and one on node "other", which refuses every
// delivery (Unavailable) until release. (A replica timeout of a minute
// never passes in the tests, which so do not depend on how fast the
// machine is.) Its clocks, the router's and the wall time it holds nodes down
// by, move only when told to (and apart, so that a test mixing them up
// fails).
type downNode struct {
	t       *testing.T
	r       *Router
	st      *shard.Store
	remote  *gatedRemote
	clock   *ids.ManualClock
	wall    *ids.ManualClock
	release func()
}

func newDownNode(t *testing.T, downFor time.Duration, tweak ...func(*Config)) *downNode {
	t.Helper()
	ctx := context.Background()
	st := openStore(t)
	if _, err := st.CreateShard(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTable(ctx, "both", shard.KindContent); err != nil {
		t.Fatal(err)
	}
	remote := &gatedRemote{gate: make(chan struct{}), refuse: true}
	h := &downNode{t: t, st: st, remote: remote,
		clock: ids.NewManualClock(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)),
		wall:  ids.NewManualClock(time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC))}
	cfg := Config{NodeID: "self", Store: st, Map: localMap(t), Remote: remote, Clock: h.clock, ReplicaTimeout: time.Minute, DownFor: downFor}
	for _, f := range tweak {
		f(&cfg)
	}
	h.r = New(cfg)
	h.r.wall = h.wall.Now
	var open sync.Once
	h.release = func() { open.Do(func() { close(remote.gate) }) }
	t.Cleanup(func() { // before the store closes
		h.release()
		h.r.wg.Wait() // deliveries settled
		h.r.stopCoalescers()
	})
	return h
}

func (h *downNode) write(key string) {
	h.t.Helper()
	ctx := context.Background()
	muts := []shard.Mutation{{Op: shard.OpPut, Table: "both", Key: []byte(key), Value: []byte("v"), Version: shard.Version{HLC: 1 << 30, Site: 1}}}
	if _, err := h.r.Write(ctx, muts, One); err != nil {
		h.t.Fatalf("write %s: %v", key, err)
	}
}

// down reports whether the router takes node "other" for unavailable.
func (h *downNode) down() bool {
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

// counter reads a Prometheus counter.
func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// writeBacklog writes n keys k0.. concurrently (sharing fsyncs), failing
// the test on any error.
func (h *downNode) writeBacklog(n int) {
	h.t.Helper()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				muts := []shard.Mutation{{Op: shard.OpPut, Table: "both", Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v"), Version: shard.Version{HLC: 1 << 30, Site: 1}}}
				if _, err := h.r.Write(context.Background(), muts, One); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		h.t.Fatalf("write: %v", err)
	}
}

// run starts the retry loop until the test ends.
func (h *downNode) run() {
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.r.Run(ctx)
	}()
	h.t.Cleanup(func() {
		stop()
		<-ran
	})
}

// TestRetryLoopHoldsDownNode: while a node is down, the retry loop neither
// sends its jobs nor reads them, scan after scan (a backlog would
// otherwise cost a read of every job per scan, and a node that hangs
// would take every delivery slot); once DownFor has passed it sends one
// job as a probe, not one per free slot.
func TestRetryLoopHoldsDownNode(t *testing.T) {
	const backlog = 600
	h := newDownNode(t, time.Hour, func(c *Config) {
		c.RetryMin, c.RetryMax = time.Millisecond, time.Minute // a scan at least every minute
	})
	h.write("first")
	waitUntil(t, "the node refusing a delivery", h.down)
	h.writeBacklog(backlog)
	h.run()

	scans := func() float64 { return counter(t, h.r.metrics.scans) }
	for range 3 {
		before := scans()
		h.wall.Advance(time.Minute)
		waitUntil(t, "a scan", func() bool { return scans() > before })
	}
	if got := counter(t, h.r.metrics.scannedJobs); got != 0 {
		t.Fatalf("the retry loop's scans read %v jobs of a node that is down, want 0", got)
	}
	if started, _ := h.remote.state(); started != 1 {
		t.Fatalf("%d deliveries sent to a node that is down, want only the first", started)
	}

	// DownFor passes: one probe, which times out; the node is down again.
	h.wall.Advance(time.Hour)
	waitUntil(t, "the probe failing", func() bool {
		h.r.mu.Lock()
		defer h.r.mu.Unlock()
		d := h.r.mu.down["other"]
		n, _ := h.remote.state()
		return n > 1 && d != nil && !d.probing && len(h.r.mu.inflight) == 0
	})
	h.remote.mu.Lock()
	started, most := h.remote.started, h.remote.maxActive
	h.remote.mu.Unlock()
	if started != 2 || most != 1 {
		t.Fatalf("after DownFor the retry loop sent %d deliveries (at most %d at once), want one probe", started-1, most)
	}
	if got := counter(t, h.r.metrics.scannedJobs); got != 1 {
		t.Fatalf("the probe's scan read %v jobs of the %d, want the probe's only", got, backlog+1)
	}
}

// TestJobsDueWhenNodeAnswers: when a node that was down answers a probe,
// the jobs that failed while it was down are delivered at once, not after
// their backoff.
func TestJobsDueWhenNodeAnswers(t *testing.T) {
	const backoff = 1000 * time.Hour
	h := newDownNode(t, time.Hour, func(c *Config) {
		c.RetryMin, c.RetryMax = backoff, backoff
	})
	h.write("first")
	waitUntil(t, "the node refusing a delivery", h.down)
	const backlog = 20
	h.writeBacklog(backlog)
	h.release()
	h.run()
	h.clock.Advance(time.Second) // after the failures
	h.wall.Advance(time.Hour)    // DownFor: the probe goes, and the node answers
	h.r.poke()                   // (the loop ticks every RetryMin)
	waitUntil(t, "every job delivered", func() bool {
		jobs, err := h.st.Jobs(false, 0, "", 1)
		return err == nil && len(jobs) == 0
	})
	if h.down() {
		t.Fatal("the node answered and is still taken for down")
	}
	_, keys := h.remote.state()
	for i := range backlog {
		if !slices.Contains(keys, fmt.Sprintf("k%d", i)) {
			t.Fatalf("k%d never reached the node", i)
		}
	}
}

// TestProbeMovesOn: a probe that never reaches its node (its job cannot be
// read) does not hold the node down for ever, and the next probe is
// another job.
func TestProbeMovesOn(t *testing.T) {
	h := newDownNode(t, time.Hour)
	// The oldest job for the node is unreadable (its entry is not a
	// journal entry) and has failed once.
	seq, err := h.st.JournalAppend(context.Background(), []byte("x"), []string{"other/a"})
	if err != nil {
		t.Fatal(err)
	}
	now := h.clock.Now()
	if err := h.st.JobFailed(shard.Job{Seq: seq, Target: "other/a", Attempts: 1, Failed: now, Next: now}, false); err != nil {
		t.Fatal(err)
	}
	h.write("first")
	waitUntil(t, "the node refusing a delivery", h.down)
	h.release()
	h.run()
	h.clock.Advance(time.Second)
	h.wall.Advance(time.Hour) // DownFor: the probe is the unreadable job
	h.r.poke()
	waitUntil(t, "the first probe failing", func() bool {
		h.r.mu.Lock()
		defer h.r.mu.Unlock()
		return h.r.mu.probed["other"].seq == seq && len(h.r.mu.inflight) == 0
	})
	if n, _ := h.remote.state(); n != 1 {
		t.Fatalf("%d deliveries reached the node, want the first only", n)
	}
	h.wall.Advance(time.Hour + time.Minute) // the probe has expired (ReplicaTimeout + DownFor)
	h.r.poke()
	waitUntil(t, "a probe of another job, and the node answering", func() bool {
		_, keys := h.remote.state()
		return slices.Equal(keys, []string{"first", "first"}) && !h.down()
	})
}

// TestProbesTakeTurns: each probe of a node that stays down is a later job
// than the last, and after the last job the first again.
func TestProbesTakeTurns(t *testing.T) {
	h := newDownNode(t, time.Hour)
	h.write("first")
	waitUntil(t, "the node refusing a delivery", h.down)
	h.write("second") // skipped: journaled
	h.run()
	want := []string{"first"}
	for _, key := range []string{"first", "second", "first"} {
		h.wall.Advance(time.Hour)
		h.r.poke()
		want = append(want, key)
		waitUntil(t, "a probe, refused", func() bool {
			h.r.mu.Lock()
			defer h.r.mu.Unlock()
			d := h.r.mu.down["other"]
			n, _ := h.remote.state()
			return n == len(want) && d != nil && !d.probing && len(h.r.mu.inflight) == 0
		})
	}
	if _, keys := h.remote.state(); !slices.Equal(keys, want) {
		t.Fatalf("deliveries sent: %q, want %q", keys, want)
	}
}

// TestReadsTakeNodeDown: a read that times out takes its node for down
// (writes skip it, reads ask it last for DownFor); a read that reaches it
// again, or a delivery's answer, takes it for up. A node a delivery found
// unavailable stays down for reads until a delivery reaches it.
func TestReadsTakeNodeDown(t *testing.T) {
	h := newDownNode(t, time.Hour)
	r := h.r
	other := []gizzard.Leaf{{Node: "self"}, {Node: "other"}}
	if d := r.NodesDown(other); d != nil {
		t.Fatalf("nothing failed, and NodesDown says %v", d)
	}
	r.NodeUnavailable("other", status.Error(codes.Canceled, "the connection closed"))
	if r.NodesDown(other) != nil {
		t.Fatal("a cancelled read took the node for down")
	}
	r.NodeUnavailable("other", status.Error(codes.DeadlineExceeded, "read timed out"))
	if d := r.NodesDown(other); !slices.Equal(d, []bool{false, true}) || r.skipNode("other") == nil {
		t.Fatalf("after a read timed out: NodesDown %v, writes skip it: %v; want it down for both", d, r.skipNode("other") != nil)
	}
	h.wall.Advance(time.Hour) // DownFor: reads try it again
	if d := r.NodesDown(other); !slices.Equal(d, []bool{false, false}) {
		t.Fatalf("DownFor after a read timed out, NodesDown %v; want it asked again", d)
	}
	r.NodeReadAnswered("other")
	if h.down() {
		t.Fatal("a node a read reached again is still taken for down")
	}

	r.nodeAnswered("other", status.Error(codes.Unavailable, "refused")) // a delivery
	h.wall.Advance(2 * time.Hour)
	r.NodeReadAnswered("other")
	if d := r.NodesDown(other); !slices.Equal(d, []bool{false, true}) {
		t.Fatalf("a node a delivery found unavailable: NodesDown %v after a read answered; want it last until a delivery reaches it", d)
	}
}
