package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/replication/natsx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	srcSite   = "site-a"
	srcID     = 1
	localSite = "site-b"
	waitLimit = 15 * time.Second // below the ack wait of the tests where that matters
)

// fakeApplier applies like Replica.ApplyRemote does, without data: a
// watermark per origin node, entries at or below it skipped, an entry
// whose prev_seq is above it a gap. It records every entry applied.
type fakeApplier struct {
	// before, if set, is called first on every call (1, 2, ...); an error
	// it returns is ApplyRemote's. after is called once a call succeeded.
	before func(call int, r *pb.ApplyRemoteRequest) error
	after  func(call int)

	mu         sync.Mutex
	calls      int
	wm         map[string]uint64
	applied    map[string][]uint64 // origin node → sequences applied, in order
	seen       map[string]int      // "node/seq" → times an entry was passed in
	heartbeats int
	changed    chan struct{} // closed and replaced after every call
}

func newFakeApplier() *fakeApplier {
	return &fakeApplier{wm: map[string]uint64{}, applied: map[string][]uint64{}, seen: map[string]int{}, changed: make(chan struct{})}
}

func (f *fakeApplier) ApplyRemote(_ context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		close(f.changed)
		f.changed = make(chan struct{})
	}()
	f.calls++
	if f.before != nil {
		if err := f.before(f.calls, r); err != nil {
			return nil, err
		}
	}
	if r.OriginSite != srcID {
		return nil, status.Errorf(codes.InvalidArgument, "origin_site %d", r.OriginSite)
	}
	node := r.OriginNode
	resp := &pb.ApplyRemoteResponse{}
	for _, e := range r.Entries {
		if e.Heartbeat {
			f.heartbeats++
			continue
		}
		f.seen[fmt.Sprintf("%s/%d", node, e.Seq)]++
		if e.Seq <= f.wm[node] {
			resp.Skipped++
			continue
		}
		if e.PrevSeq > f.wm[node] {
			return nil, status.Errorf(codes.FailedPrecondition, "gap: origin %s/%s applied up to %d, next entry %d follows %d", srcSite, node, f.wm[node], e.Seq, e.PrevSeq)
		}
		f.wm[node] = e.Seq
		f.applied[node] = append(f.applied[node], e.Seq)
		resp.Applied++
	}
	resp.Watermark = f.wm[node]
	if f.after != nil {
		f.after(f.calls)
	}
	return resp, nil
}

// await waits until cond, called with f.mu held, is true.
func (f *fakeApplier) await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		ok, ch := cond(), f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("timed out waiting for %s; watermarks %v, heartbeats %d, calls %d", what, f.wm, f.heartbeats, f.calls)
		}
	}
}

// checkApplied fails unless node's entries 1..n were applied once each, in
// order.
func (f *fakeApplier) checkApplied(t *testing.T, node string, n int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	got := f.applied[node]
	if len(got) != n {
		t.Fatalf("node %s: %d entries applied, want %d", node, len(got), n)
	}
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("node %s: applied %v..., want 1..%d in order, once each", node, got[:i+1], n)
		}
	}
}

// eventually polls cond until it holds; for conditions that depend on time
// passing (a stall) or on the server (acknowledgements processed).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// source is an origin site: an embedded NATS with the site's stream, as
// the site's nodes create it.
type source struct {
	t   *testing.T
	srv *natsx.Server
	js  jetstream.JetStream
}

func newSource(t *testing.T) *source {
	t.Helper()
	srv, err := natsx.StartServer(natsx.ServerConfig{Dir: t.TempDir(), ServerName: "test-" + srcSite})
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nc, js, err := natsx.Connect(testCtx(t), srv.ClientURL(), "test-origin")
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	if _, err := natsx.EnsureStream(testCtx(t), js, natsx.StreamConfig{Name: StreamName(srcSite), Subjects: []string{SubjectAll(srcSite)}}); err != nil {
		t.Fatalf("EnsureStream: %v", err)
	}
	return &source{t: t, srv: srv, js: js}
}

func (s *source) Source() Source {
	return Source{Name: srcSite, ID: srcID, NATSURL: s.srv.ClientURL()}
}

func (s *source) publish(m *pb.ReplicationMessage) {
	s.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		s.t.Fatal(err)
	}
	s.publishRaw(m.OriginNode, b)
}

func (s *source) publishRaw(node string, b []byte) {
	s.t.Helper()
	if _, err := s.js.Publish(testCtx(s.t), Subject(srcSite, node), b); err != nil {
		s.t.Fatalf("publish: %v", err)
	}
}

func (s *source) kv(bucket string) jetstream.KeyValue {
	s.t.Helper()
	kv, err := natsx.EnsureKV(testCtx(s.t), s.js, bucket)
	if err != nil {
		s.t.Fatalf("EnsureKV: %v", err)
	}
	return kv
}

func (s *source) consumer() jetstream.Consumer {
	s.t.Helper()
	c, err := s.js.Consumer(testCtx(s.t), StreamName(srcSite), ConsumerName(localSite))
	if err != nil {
		s.t.Fatalf("consumer: %v", err)
	}
	return c
}

// awaitValue waits until key of kv holds want.
func awaitValue(t *testing.T, kv jetstream.KeyValue, key, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	w, err := kv.Watch(ctx, key)
	if err != nil {
		t.Fatalf("watch %s: %v", key, err)
	}
	defer func() { _ = w.Stop() }()
	last := "(none)"
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				continue // the end of the initial values
			}
			if last = string(e.Value()); last == want {
				return
			}
		case <-ctx.Done():
			t.Fatalf("key %s: %s, want %s", key, last, want)
		}
	}
}

// origin publishes one node's entries with their sequence chain.
type origin struct {
	s         *source
	node      string
	seq, prev uint64
}

func (o *origin) entries(n int) {
	for range n {
		o.seq++
		o.s.publish(&pb.ReplicationMessage{OriginSite: srcID, OriginNode: o.node, Seq: o.seq, PrevSeq: o.prev, AtUnixMs: time.Now().UnixMilli()})
		o.prev = o.seq
	}
}

func (o *origin) heartbeat() {
	o.s.publish(&pb.ReplicationMessage{OriginSite: srcID, OriginNode: o.node, Seq: o.seq, PrevSeq: o.seq, AtUnixMs: time.Now().UnixMilli(), Heartbeat: true})
}

// running is a relay running in the background.
type running struct {
	r      *Relay
	cancel context.CancelFunc
	done   chan error
}

func startRelay(t *testing.T, cfg RelayConfig) *running {
	t.Helper()
	if cfg.LocalSite == "" {
		cfg.LocalSite = localSite
	}
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatalf("NewRelay: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &running{r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rn.done <- r.Run(ctx) }()
	t.Cleanup(func() { rn.stop(t) })
	return rn
}

// stop ends the relay and waits for Run to return (once).
func (rn *running) stop(t *testing.T) {
	t.Helper()
	rn.cancel()
	if rn.done == nil {
		return
	}
	select {
	case err := <-rn.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after its context ended")
	}
	rn.done = nil
}

func pathOf(t *testing.T, r *Relay) PathStatus {
	t.Helper()
	st := r.Status()
	if len(st) != 1 {
		t.Fatalf("Status: %d paths, want 1: %+v", len(st), st)
	}
	return st[0]
}

// metric returns the value of the series of name for srcSite.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "source" && l.GetValue() == srcSite {
					switch {
					case m.Counter != nil:
						return m.Counter.GetValue()
					case m.Gauge != nil:
						return m.Gauge.GetValue()
					case m.Histogram != nil:
						return float64(m.Histogram.GetSampleCount())
					}
				}
			}
		}
	}
	t.Fatalf("no metric %s{source=%q}", name, srcSite)
	return 0
}

func TestRelayAppliesInOrderAndReportsWatermarks(t *testing.T) {
	s := newSource(t)
	n1, n2 := &origin{s: s, node: "node-1"}, &origin{s: s, node: "node-2"}
	// Interleaved, with heartbeats and one undecodable message.
	for i := range 10 {
		n1.entries(20)
		n2.entries(20)
		if i%3 == 0 {
			n1.heartbeat()
			n2.heartbeat()
		}
		if i == 4 {
			s.publishRaw("node-1", []byte{0xff, 0xff, 0xff})
		}
	}
	f := newFakeApplier()
	reg := prometheus.NewRegistry()
	rn := startRelay(t, RelayConfig{Sources: []Source{s.Source()}, Applier: f, Batch: 16, Registry: reg})
	f.await(t, "the backlog", func() bool { return f.wm["node-1"] == 200 && f.wm["node-2"] == 200 })

	// The live tail.
	n1.entries(50)
	n2.heartbeat()
	n2.entries(50)
	f.await(t, "the tail", func() bool { return f.wm["node-1"] == 250 && f.wm["node-2"] == 250 && f.heartbeats >= 9 })
	f.checkApplied(t, "node-1", 250)
	f.checkApplied(t, "node-2", 250)

	wm := s.kv(WatermarkBucket)
	awaitValue(t, wm, WatermarkKey(srcSite, "node-1", localSite), "250")
	awaitValue(t, wm, WatermarkKey(srcSite, "node-2", localSite), "250")

	cons := s.consumer()
	eventually(t, "every message acknowledged", func() bool {
		info, err := cons.Info(testCtx(t))
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	if info := cons.CachedInfo(); info.Config.MaxAckPending != 64 || info.Config.AckPolicy != jetstream.AckExplicitPolicy ||
		info.Config.FilterSubject != SubjectAll(srcSite) || info.Config.AckWait != AckWait {
		t.Errorf("consumer config %+v", info.Config)
	}

	eventually(t, "the status to count every apply", func() bool { return pathOf(t, rn.r).Applied == 500 })
	st := pathOf(t, rn.r)
	if !st.Connected || st.Stalled || st.Errors != 1 || st.Gaps != 0 || st.Source != srcSite || st.SourceID != srcID {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(st.LastError, "undecodable") {
		t.Errorf("last error %q, want the undecodable message", st.LastError)
	}
	if len(st.Origins) != 2 || st.Origins[0].Node != "node-1" || st.Origins[0].Watermark != 250 || st.Origins[1].Watermark != 250 {
		t.Errorf("origins %+v", st.Origins)
	}
	if st.LastHeard.IsZero() || st.LagSeconds > 5 {
		t.Errorf("last heard %v, lag %.3fs", st.LastHeard, st.LagSeconds)
	}
	for name, want := range map[string]float64{
		"aviary_relay_applied_entries_total": 500,
		"aviary_relay_errors_total":          1,
		"aviary_relay_gaps_total":            0,
		"aviary_relay_stalled":               0,
		"aviary_relay_connected":             1,
	} {
		if got := metric(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if metric(t, reg, "aviary_relay_apply_batch_seconds") == 0 {
		t.Error("no apply observed")
	}
	eventually(t, "lag 0 messages", func() bool { return pathOf(t, rn.r).LagMessages == 0 })
	rn.stop(t)
	if st := rn.r.Status(); len(st) != 0 {
		t.Errorf("status after Run: %+v", st)
	}
}

func TestRelayResumesAfterRestart(t *testing.T) {
	s := newSource(t)
	n1, n2 := &origin{s: s, node: "node-1"}, &origin{s: s, node: "node-2"}
	for range 30 {
		n1.entries(5)
		n2.entries(5)
	}
	n1.heartbeat()

	f := newFakeApplier()
	reached, cancelled := make(chan struct{}), make(chan struct{})
	f.after = func(call int) {
		if call == 5 {
			// Stop the relay in the middle of an apply, with the other
			// node's messages of the batch fetched and not applied yet.
			close(reached)
			<-cancelled
		}
	}
	rn := startRelay(t, RelayConfig{Sources: []Source{s.Source()}, Applier: f, Batch: 20, ackWait: time.Minute})
	<-reached
	rn.cancel()
	close(cancelled)
	rn.stop(t)
	f.mu.Lock()
	first := len(f.applied["node-1"]) + len(f.applied["node-2"])
	f.after = nil
	f.mu.Unlock()
	if first == 0 || first >= 300 {
		t.Fatalf("first relay applied %d entries; want it stopped midway", first)
	}

	n1.entries(50)
	n2.entries(50)
	// Messages the first relay fetched and did not apply were handed back:
	// the second gets them now, not after the ack wait (a minute here).
	rn2 := startRelay(t, RelayConfig{Sources: []Source{s.Source()}, Applier: f, Batch: 20, ackWait: time.Minute})
	f.await(t, "every entry", func() bool { return f.wm["node-1"] == 200 && f.wm["node-2"] == 200 })
	f.checkApplied(t, "node-1", 200)
	f.checkApplied(t, "node-2", 200)
	eventually(t, "the status to count every apply", func() bool { return pathOf(t, rn2.r).Applied == uint64(400-first) })
	if st := pathOf(t, rn2.r); st.Gaps != 0 || st.Errors != 0 {
		t.Errorf("second relay's status %+v (first applied %d)", st, first)
	}
	awaitValue(t, s.kv(WatermarkBucket), WatermarkKey(srcSite, "node-1", localSite), "200")
	awaitValue(t, s.kv(WatermarkBucket), WatermarkKey(srcSite, "node-2", localSite), "200")
}

func TestRelayWaitsForUnacknowledgedBeforeCallingAGap(t *testing.T) {
	s := newSource(t)
	n1 := &origin{s: s, node: "node-1"}
	n1.entries(30)

	// A relay that died after fetching the first five messages, leaving
	// them unacknowledged until the ack wait.
	cfg := RelayConfig{LocalSite: localSite, Batch: 8, ackWait: time.Second}
	cons, err := s.js.CreateOrUpdateConsumer(testCtx(t), StreamName(srcSite), consumerConfig(&cfg, srcSite))
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(5, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	dead := 0
	for range b.Messages() {
		dead++
	}
	if dead != 5 {
		t.Fatalf("fetched %d messages, want 5 (%v)", dead, b.Error())
	}

	f := newFakeApplier()
	cfg.Sources, cfg.Applier = []Source{s.Source()}, f
	rn := startRelay(t, cfg)
	f.await(t, "every entry", func() bool { return f.wm["node-1"] == 30 })
	f.checkApplied(t, "node-1", 30)
	st := pathOf(t, rn.r)
	if st.Gaps != 0 {
		t.Errorf("%d gaps reported for messages that were only waiting for redelivery", st.Gaps)
	}
	_, err = s.kv(RepublishBucket).Get(testCtx(t), RepublishKey(srcSite, "node-1", localSite))
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("republish key: %v, want none", err)
	}
}

func TestRelayGapAsksForRepublish(t *testing.T) {
	s := newSource(t)
	rp := s.kv(RepublishBucket)
	n1 := &origin{s: s, node: "node-1"}
	n1.entries(3)
	// Entry 4 is lost: 5 follows 4.
	n1.s.publish(&pb.ReplicationMessage{OriginSite: srcID, OriginNode: "node-1", Seq: 5, PrevSeq: 4, AtUnixMs: time.Now().UnixMilli()})

	f := newFakeApplier()
	reg := prometheus.NewRegistry()
	rn := startRelay(t, RelayConfig{Sources: []Source{s.Source()}, Applier: f, Batch: 16, Registry: reg})

	key := RepublishKey(srcSite, "node-1", localSite)
	awaitValue(t, rp, key, "3")
	st := pathOf(t, rn.r)
	if st.Gaps != 1 || len(st.Origins) != 1 || !strings.Contains(st.Origins[0].Gap, "applied up to 3") {
		t.Errorf("status after the gap: %+v", st)
	}
	// The origin node answers as Aviary's does: it clears the request and
	// publishes again after the watermark.
	if err := rp.Delete(testCtx(t), key); err != nil {
		t.Fatal(err)
	}
	n1.seq, n1.prev = 3, 3
	n1.entries(2)

	f.await(t, "the repair", func() bool { return f.wm["node-1"] == 5 })
	f.checkApplied(t, "node-1", 5)
	cons := s.consumer()
	eventually(t, "every message acknowledged", func() bool {
		info, err := cons.Info(testCtx(t))
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	// The first 5 failed on the gap and, the repair asked for, was
	// acknowledged (the republish covers it); the republished 5 applied.
	f.mu.Lock()
	if n := f.seen["node-1/5"]; n < 2 {
		t.Errorf("entry 5 passed in %d times, want at least 2 (the first, the republished one)", n)
	}
	f.mu.Unlock()
	eventually(t, "the gap to clear", func() bool { return pathOf(t, rn.r).Origins[0].Gap == "" })
	if st := pathOf(t, rn.r); st.Gaps != 1 {
		t.Errorf("status after the repair: %+v", st)
	}
	if got := metric(t, reg, "aviary_relay_gaps_total"); got != 1 {
		t.Errorf("gaps metric %v", got)
	}
	awaitValue(t, s.kv(WatermarkBucket), WatermarkKey(srcSite, "node-1", localSite), "5")
}

func TestRelayRetriesAFailedApply(t *testing.T) {
	s := newSource(t)
	n1 := &origin{s: s, node: "node-1"}
	n1.entries(40)
	f := newFakeApplier()
	f.before = func(call int, _ *pb.ApplyRemoteRequest) error {
		if call <= 2 {
			return status.Error(codes.Unavailable, "node is not ready")
		}
		return nil
	}
	rn := startRelay(t, RelayConfig{Sources: []Source{s.Source()}, Applier: f, Batch: 16})
	f.await(t, "every entry", func() bool { return f.wm["node-1"] == 40 })
	f.checkApplied(t, "node-1", 40)
	if st := pathOf(t, rn.r); st.Errors != 2 || !strings.Contains(st.LastError, "not ready") {
		t.Errorf("status %+v", st)
	}
}

func TestRelayReportsStall(t *testing.T) {
	s := newSource(t)
	n1 := &origin{s: s, node: "node-1"}

	// A second source whose NATS does not answer.
	deadURL := "nats://" + testnet.Addr(t)

	const stall = 500 * time.Millisecond
	f := newFakeApplier()
	reg := prometheus.NewRegistry()
	rn := startRelay(t, RelayConfig{
		Sources: []Source{s.Source(), {Name: "site-c", ID: 3, NATSURL: deadURL}},
		Applier: f, StallAfter: stall, MaxWait: 20 * time.Millisecond, Registry: reg,
	})
	n1.heartbeat()
	f.await(t, "a heartbeat", func() bool { return f.heartbeats == 1 })
	st := rn.r.Status()
	if len(st) != 2 || st[0].Source != srcSite || st[1].Source != "site-c" {
		t.Fatalf("status %+v", st)
	}
	eventually(t, "the heartbeat in the status", func() bool { return len(rn.r.Status()[0].Origins) == 1 })
	if a := rn.r.Status()[0]; a.Stalled || !a.Connected || a.LagSeconds >= stall.Seconds() {
		t.Errorf("fresh path: %+v", a)
	}

	// No more heartbeats: both paths stall, and their lag grows.
	eventually(t, "both paths stalled", func() bool {
		st := rn.r.Status()
		return st[0].Stalled && st[1].Stalled
	})
	st = rn.r.Status()
	for _, p := range st {
		if p.LagSeconds < stall.Seconds() {
			t.Errorf("%s: stalled with lag %.3fs", p.Source, p.LagSeconds)
		}
	}
	if st[1].Connected || !st[1].LastHeard.IsZero() {
		t.Errorf("unreachable source: %+v", st[1])
	}
	if got := metric(t, reg, "aviary_relay_stalled"); got != 1 {
		t.Errorf("stalled metric %v", got)
	}
	if got := metric(t, reg, "aviary_relay_lag_seconds"); got < stall.Seconds() {
		t.Errorf("lag metric %v", got)
	}
	before := st[0].LagSeconds
	eventually(t, "the lag to grow", func() bool { return rn.r.Status()[0].LagSeconds > before })

	// A heartbeat again: fresh.
	n1.heartbeat()
	f.await(t, "the second heartbeat", func() bool { return f.heartbeats == 2 })
	eventually(t, "the path to be fresh again", func() bool { return !rn.r.Status()[0].Stalled })
	if a := rn.r.Status()[0]; a.LagSeconds >= stall.Seconds() {
		t.Errorf("path after a heartbeat: %+v", a)
	}
}

func TestRelaySetSources(t *testing.T) {
	s := newSource(t)
	n1 := &origin{s: s, node: "node-1"}
	n1.entries(10)
	f := newFakeApplier()
	reg := prometheus.NewRegistry()
	rn := startRelay(t, RelayConfig{Applier: f, Registry: reg})
	if st := rn.r.Status(); len(st) != 0 {
		t.Fatalf("status with no sources: %+v", st)
	}

	rn.r.SetSources([]Source{s.Source(), {Name: localSite, NATSURL: "nats://127.0.0.1:1"}, {Name: "no-url"}})
	f.await(t, "the first entries", func() bool { return f.wm["node-1"] == 10 })
	if st := rn.r.Status(); len(st) != 1 {
		t.Fatalf("status %+v: want only the valid source", st)
	}

	rn.r.SetSources(nil)
	eventually(t, "the path to go", func() bool { return len(rn.r.Status()) == 0 })
	n1.entries(10)
	rn.r.SetSources([]Source{s.Source()})
	f.await(t, "the rest", func() bool { return f.wm["node-1"] == 20 })
	f.checkApplied(t, "node-1", 20)

	// A changed URL restarts the path.
	src := s.Source()
	src.NATSURL = strings.Replace(src.NATSURL, "127.0.0.1", "localhost", 1)
	rn.r.SetSources([]Source{src})
	n1.entries(5)
	f.await(t, "entries after the change", func() bool { return f.wm["node-1"] == 25 })
	f.checkApplied(t, "node-1", 25)
	if st := pathOf(t, rn.r); st.NATSURL != src.NATSURL {
		t.Errorf("status %+v", st)
	}
	if slices.ContainsFunc(rn.r.Status(), func(p PathStatus) bool { return p.Source == localSite }) {
		t.Error("the local site is relayed")
	}
}

func TestNewRelayChecksConfig(t *testing.T) {
	f := newFakeApplier()
	for _, cfg := range []RelayConfig{
		{Applier: f},
		{LocalSite: localSite},
		{LocalSite: localSite, Applier: f, Batch: -1},
		{LocalSite: localSite, Applier: f, Sources: []Source{{Name: localSite, NATSURL: "nats://x:1"}}},
		{LocalSite: localSite, Applier: f, Sources: []Source{{Name: "a", NATSURL: "nats://x:1"}, {Name: "a", NATSURL: "nats://y:1"}}},
		{LocalSite: localSite, Applier: f, Sources: []Source{{Name: "a"}}},
	} {
		if _, err := NewRelay(cfg); err == nil {
			t.Errorf("NewRelay(%+v) succeeded", cfg)
		}
	}
	r, err := NewRelay(RelayConfig{LocalSite: localSite, Applier: f})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.Batch != DefaultBatch || r.cfg.MaxWait != DefaultMaxWait || r.cfg.StallAfter != DefaultStallAfter {
		t.Errorf("defaults %+v", r.cfg)
	}
}
