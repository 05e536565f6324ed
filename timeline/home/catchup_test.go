package home

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/timeline"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// mergeHook runs onMerge before each ReplicaMerge it answers, and fails
// the merge with onMerge's error.
type mergeHook struct {
	*Service
	onMerge func() error
}

func (m mergeHook) ReplicaMerge(ctx context.Context, r *pb.ReplicaMergeRequest) (*pb.ReplicaMergeResponse, error) {
	if err := m.onMerge(); err != nil {
		return nil, err
	}
	return m.Service.ReplicaMerge(ctx, r)
}

// stuckExport is a node whose ReplicaExport sends nothing until its
// caller gives up.
type stuckExport struct {
	pb.UnimplementedTimelinesServer
	calls *atomic.Int32 // if not nil, counts the exports asked for
}

func (x stuckExport) ReplicaExport(_ *pb.ReplicaExportRequest, stream pb.Timelines_ReplicaExportServer) error {
	if x.calls != nil {
		x.calls.Add(1)
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// catchUpSite is node a, holding want, and node b, behind: it holds a
// stale copy of timeline 1 and none of 2. Both serve the Timelines API on
// loopback.
type catchUpSite struct {
	a, b  *Service
	stB   *timeline.Store
	want  map[uint64][]timeline.Entry
	merge atomic.Int32
}

type catchUpOpts struct {
	capacity, repairQueue int
	replicaTimeout        time.Duration
	// onMerge runs before each merge b answers; an error fails it.
	onMerge func(*catchUpSite) error
	// extra are listed as timeline nodes too.
	extra []Member
}

func newCatchUpSite(t testing.TB, o catchUpOpts) *catchUpSite {
	t.Helper()
	newStore := func() *timeline.Store {
		st, err := timeline.NewStore(timeline.Options{Capacity: o.capacity, Shards: 4})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	noIDs := func() (uint64, error) { return 0, errors.New("no ids in this test") }
	dial := func(addr string) (*grpc.ClientConn, error) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			t.Cleanup(func() { _ = cc.Close() })
		}
		return cc, err
	}
	cs := &catchUpSite{stB: newStore(), want: map[uint64][]timeline.Entry{
		1: {{StatusID: 30, AuthorID: 6}, {StatusID: 20, AuthorID: 5}, {StatusID: 10, AuthorID: 5}},
		2: {{StatusID: 40, AuthorID: 7}},
	}}
	cs.stB.Merge(1, []timeline.Entry{{StatusID: 10, AuthorID: 5}})
	var err error
	cs.b, err = New(Config{NodeID: "b", Store: cs.stB, Data: &fakeData{}, NewID: noIDs, Dial: dial}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.b.endLife)
	addrB := serve(t, mergeHook{cs.b, func() error {
		cs.merge.Add(1)
		if o.onMerge == nil {
			return nil
		}
		return o.onMerge(cs)
	}})
	stA := newStore()
	for o, es := range cs.want {
		stA.Merge(o, es)
	}
	cs.a, err = New(Config{NodeID: "a", Store: stA, Data: &fakeData{}, NewID: noIDs, Dial: dial,
		RepairQueue: o.repairQueue, ReplicaTimeout: o.replicaTimeout}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.a.endLife)
	members := Members{Timeline: append([]Member{{ID: "a", Addr: "a:1"}, {ID: "b", Addr: addrB}}, o.extra...), Site: 1, Sites: []uint32{1}}
	for _, s := range []*Service{cs.a, cs.b} {
		if err := s.SetMembers(members); err != nil {
			t.Fatal(err)
		}
	}
	return cs
}

// behind returns a copy of a's marking of b, nil if b is not behind.
func (cs *catchUpSite) behind() *behindNode {
	cs.a.repairMu.Lock()
	defer cs.a.repairMu.Unlock()
	bn := cs.a.behind["b"]
	if bn == nil {
		return nil
	}
	c := *bn
	c.missed = maps.Clone(bn.missed)
	c.sources = slices.Clone(bn.sources)
	return &c
}

// missed returns the repairs of b a noted, and whether there were too
// many.
func (cs *catchUpSite) missed() ([]uint64, bool) {
	bn := cs.behind()
	if bn == nil {
		return nil, false
	}
	return slices.Sorted(maps.Keys(bn.missed)), bn.overflow
}

func (cs *catchUpSite) mark() {
	cs.a.repairMu.Lock()
	cs.a.markBehindLocked("b")
	cs.a.repairMu.Unlock()
}

func (cs *catchUpSite) queued(r repair) bool {
	cs.a.repairMu.Lock()
	defer cs.a.repairMu.Unlock()
	return cs.a.queued[r]
}

// drain takes what the repair queue holds, as the repair workers do.
func (cs *catchUpSite) drain() {
	for {
		select {
		case r := <-cs.a.repairs:
			cs.a.repairMu.Lock()
			delete(cs.a.queued, r)
			cs.a.repairMu.Unlock()
		default:
			return
		}
	}
}

func (cs *catchUpSite) checkB(t *testing.T) {
	t.Helper()
	for o, es := range cs.want {
		got, _, held := cs.stB.Read(o, 0, 0, 50)
		if !held || !slices.Equal(got, es) {
			t.Errorf("timeline %d on b after the catch-up: %v (held %v), want %v", o, got, held, es)
		}
	}
}

// waiting fails the test unless b is behind and not due before about
// wait from now.
func (cs *catchUpSite) waiting(t *testing.T, wait time.Duration) *behindNode {
	t.Helper()
	bn := cs.behind()
	if bn == nil {
		t.Fatal("b is not behind")
	}
	if d := time.Until(bn.next); d > wait || d < wait-time.Second {
		t.Fatalf("b is due in %v, want about %v", d, wait)
	}
	return bn
}

// TestCatchUp: a repair that finds the queue full marks its node behind.
// A catch-up merges into it every timeline its siblings hold; the repairs
// asked for during it are queued after it, unless there are too many:
// then the node stays behind, for another catch-up after a wait that
// doubles. One the node itself fails is tried again after the first wait.
// A retried repair of a node behind is covered by its catch-up; a node
// taken for down is not caught up.
func TestCatchUp(t *testing.T) {
	var during []uint64 // repairs of b asked for while b is caught up
	var failMerge atomic.Bool
	cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 2, onMerge: func(cs *catchUpSite) error {
		for _, o := range during {
			cs.a.scheduleRepair(repair{owner: o, node: "b"})
		}
		if failMerge.Load() {
			return status.Error(codes.Unavailable, "b fails its merges")
		}
		return nil
	}})
	a := cs.a
	a.scheduleRepair(repair{owner: 1, node: "b"})
	a.scheduleRepair(repair{owner: 3, node: "b"}) // the queue (2) is full
	if cs.behind() != nil {
		t.Fatal("b is behind with room in the repair queue")
	}
	a.scheduleRepair(repair{owner: 2, node: "b"})
	if cs.behind() == nil {
		t.Fatal("b is not behind after a repair found the queue full")
	}
	a.requeueRepair(repair{owner: 1, node: "b"})
	if m, _ := cs.missed(); len(m) != 0 {
		t.Fatalf("a retried repair is noted for after the catch-up: %v", m)
	}
	a.scheduleRepair(repair{owner: 2, node: "b"})
	a.scheduleRepair(repair{owner: 2, node: "b"})
	if m, over := cs.missed(); !slices.Equal(m, []uint64{2}) || over {
		t.Fatalf("noted %v (overflow %v), want [2]", m, over)
	}

	a.markDown("b")
	a.catchUp(t.Context(), "b")
	if cs.merge.Load() != 0 || cs.behind() == nil {
		t.Fatalf("a node taken for down was caught up (%d merges)", cs.merge.Load())
	}
	a.markUp("b")

	// b fails the merge: tried again after the first wait, which does
	// not grow.
	failMerge.Store(true)
	a.catchUp(t.Context(), "b")
	failMerge.Store(false)
	if bn := cs.waiting(t, catchUpRetry); bn.wait != catchUpRetry {
		t.Fatalf("the wait grew to %v after a catch-up b did not answer", bn.wait)
	}
	a.markUp("b") // its merge failure took it for down

	// Two repairs asked for during the catch-up: more than half the queue.
	during = []uint64{2, 3}
	a.catchUp(t.Context(), "b")
	if cs.merge.Load() < 2 {
		t.Fatal("the catch-up merged nothing into b")
	}
	cs.checkB(t)
	if bn := cs.waiting(t, catchUpRetry); bn.wait != 2*catchUpRetry {
		t.Fatalf("the next wait is %v after a catch-up that noted too many repairs, want %v", bn.wait, 2*catchUpRetry)
	}

	// One repair is asked for during the next catch-up, which takes b off
	// and queues it.
	cs.drain()
	during = []uint64{2}
	a.catchUp(t.Context(), "b")
	if cs.behind() != nil {
		t.Fatal("b is still behind after a catch-up that all its siblings answered")
	}
	if !cs.queued(repair{owner: 2, node: "b"}) {
		t.Fatal("the repair asked for during the catch-up was not queued after it")
	}
	cs.checkB(t)
}

// TestCatchUpSourceDown: a sibling that does not answer holds back no
// other's copies; the repairs noted are queued, and the node stays
// behind, for a catch-up from that sibling alone.
func TestCatchUpSourceDown(t *testing.T) {
	// Node "0" is listed first and refuses connections.
	cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16, extra: []Member{{ID: "0", Addr: testnet.Addr(t)}},
		onMerge: func(cs *catchUpSite) error {
			cs.a.scheduleRepair(repair{owner: 2, node: "b"})
			return nil
		}})
	cs.mark()
	cs.a.catchUp(t.Context(), "b")
	cs.checkB(t)
	bn := cs.waiting(t, catchUpRetry)
	if !slices.Equal(bn.sources, []string{"0"}) {
		t.Fatalf("the next catch-up asks %v, want [0]", bn.sources)
	}
	if !cs.queued(repair{owner: 2, node: "b"}) || len(bn.missed) != 0 {
		t.Fatalf("the repair noted during the catch-up was not queued after it (still noted: %v)", bn.missed)
	}
	// The catch-up from "0" alone does not cover it: the repair workers
	// carry it out.
	cs.a.repairMu.Lock()
	covered := cs.a.coveredLocked(repair{owner: 2, node: "b"})
	cs.a.repairMu.Unlock()
	if covered {
		t.Fatal("a repair queued after a catch-up some sources failed is taken for covered")
	}
}

// TestCatchUpSourceHangs: a sibling that sends nothing is given up after
// the replica timeout, taken for down, and holds back no other's copies.
func TestCatchUpSourceHangs(t *testing.T) {
	cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16, replicaTimeout: 500 * time.Millisecond,
		extra: []Member{{ID: "0", Addr: serve(t, stuckExport{})}}})
	v, _ := cs.a.current()
	// The test's deadline only bounds a failure: without the idle timer
	// the export would wait for it.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// Connected to b before: the timeout bounds the merges into b too.
	if _, err := cs.a.replicaMerge(ctx, v, "b", &pb.ReplicaMergeRequest{}); err != nil {
		t.Fatal(err)
	}
	_, failed, err := cs.a.catchUpFrom(ctx, v, "b", nil)
	if !slices.Equal(failed, []string{"0"}) || err == nil || !strings.Contains(err.Error(), "sent nothing") {
		t.Fatalf("catch-up from a source that hangs: failed %v, err %v", failed, err)
	}
	cs.checkB(t)
	cs.a.mu.Lock()
	_, down := cs.a.down["0"]
	cs.a.mu.Unlock()
	if !down {
		t.Fatal("the source that hung was not taken for down")
	}
}

// hungRefill is node a's refill on a site where b holds timeline 3
// (fresh) and an empty timeline 4, and a third sibling, "0", sends
// nothing until it is given up.
type hungRefill struct {
	cs            *catchUpSite
	calls         atomic.Int32 // exports "0" was asked for
	fresh         []timeline.Entry
	ctx           context.Context
	cancel        context.CancelFunc
	changed, done chan struct{}
}

func startHungRefill(t *testing.T, replicaTimeout time.Duration) *hungRefill {
	h := &hungRefill{fresh: []timeline.Entry{{StatusID: 50, AuthorID: 8, Flags: 3}}, changed: make(chan struct{}), done: make(chan struct{})}
	h.cs = newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16, replicaTimeout: replicaTimeout,
		extra: []Member{{ID: "0", Addr: serve(t, stuckExport{calls: &h.calls})}}})
	h.cs.stB.Merge(3, h.fresh)
	h.cs.stB.Merge(4, nil) // held and empty: sent with no columns
	v, _ := h.cs.a.current()
	// The test's deadline only bounds a failure.
	h.ctx, h.cancel = context.WithTimeout(t.Context(), time.Minute)
	go func() {
		defer close(h.done)
		h.cs.a.refill(h.ctx, v, h.changed)
	}()
	t.Cleanup(func() {
		close(h.changed) // a view change ends a refill that is still retrying
		h.cancel()       // and the export from "0"
		<-h.done
	})
	return h
}

// waitMerged waits until a holds b's copy of timeline 3 and "0" was
// asked for its export at least calls times.
func (h *hungRefill) waitMerged(t *testing.T, calls int32) {
	t.Helper()
	for {
		if got, _ := h.cs.a.store.Get(3); slices.Equal(got, h.fresh) && h.calls.Load() >= calls {
			return
		}
		select {
		case <-h.done:
			t.Fatal("the refill returned without b's copy of timeline 3")
		case <-h.ctx.Done():
			t.Fatalf("b's copy of timeline 3 was not merged while \"0\" hung, or \"0\" was asked fewer than %d times (%d)", calls, h.calls.Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestRefillSourceHangs: a refill is not held back by a sibling that
// sends nothing: it is given up after the replica timeout and taken for
// down, the other siblings' copies are merged, and it is asked again.
func TestRefillSourceHangs(t *testing.T) {
	h := startHungRefill(t, 500*time.Millisecond)
	h.waitMerged(t, 2) // without the idle timer, "0" is asked once
	if got, held := h.cs.a.store.Get(4); !held || len(got) != 0 {
		t.Fatalf("b's empty timeline 4 refilled as held %v with %d entries, want held and empty", held, len(got))
	}
	h.cs.a.mu.Lock()
	_, down := h.cs.a.down["0"]
	h.cs.a.mu.Unlock()
	if !down {
		t.Fatal("the sibling that hung was not taken for down")
	}
	select {
	case <-h.done:
		t.Fatal("the refill ended with a sibling it never heard from")
	default:
	}
}

// TestRefillAllAtOnce: a refill asks every sibling at once, so one that
// hangs does not delay the others' copies even by the replica timeout.
func TestRefillAllAtOnce(t *testing.T) {
	startHungRefill(t, time.Hour).waitMerged(t, 1)
}

// olderExport is a node that predates ReplicaExportRequest.packed: it
// sends entries whatever it is asked.
type olderExport struct {
	pb.UnimplementedTimelinesServer
	owner   uint64
	entries []*pb.TimelineEntry
}

func (x olderExport) ReplicaExport(_ *pb.ReplicaExportRequest, stream pb.Timelines_ReplicaExportServer) error {
	return stream.Send(&pb.ReplicaExportResponse{Timelines: []*pb.ReplicaTimeline{
		{Owner: x.owner, Held: true, Entries: x.entries, Length: uint32(len(x.entries))}}})
}

// TestRefillFromOlderNode: a refill that asks for columns reads the
// entries of a sibling that does not know the field.
func TestRefillFromOlderNode(t *testing.T) {
	older := olderExport{owner: 5, entries: []*pb.TimelineEntry{{StatusId: 70, AuthorId: 9, Flags: 1}, {StatusId: 60, AuthorId: 8}}}
	cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16, extra: []Member{{ID: "0", Addr: serve(t, older)}}})
	v, _ := cs.a.current()
	n, err := cs.a.refillFrom(t.Context(), v, "0")
	if err != nil || n != 1 {
		t.Fatalf("refill from an older node: %d timelines, %v", n, err)
	}
	want := []timeline.Entry{{StatusID: 70, AuthorID: 9, Flags: 1}, {StatusID: 60, AuthorID: 8}}
	if got, _ := cs.a.store.Get(5); !slices.Equal(got, want) {
		t.Fatalf("timeline 5 refilled as %v, want %v", got, want)
	}
}

// mergeRecorder is a node that records the ReplicaMerge requests it gets
// and answers columns: answers[i] to the i-th, the last one after that (a
// node older than the field leaves it false, and reads only entries).
type mergeRecorder struct {
	pb.UnimplementedTimelinesServer
	answers []bool
	mu      sync.Mutex
	reqs    []*pb.ReplicaMergeRequest
}

func (m *mergeRecorder) ReplicaMerge(_ context.Context, r *pb.ReplicaMergeRequest) (*pb.ReplicaMergeResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reqs = append(m.reqs, proto.Clone(r).(*pb.ReplicaMergeRequest))
	return &pb.ReplicaMergeResponse{Columns: m.answers[min(len(m.reqs), len(m.answers))-1]}, nil
}

// TestCatchUpColumns: a catch-up sends its first merge as entries, and
// the next ones as columns only to a node that answered that it reads
// them; a node that did not gets entries throughout, and one that stops
// saying so (restarted older) gets the batch it got as columns again as
// entries. Either way it gets every entry.
func TestCatchUpColumns(t *testing.T) {
	if resp, err := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16}).b.ReplicaMerge(t.Context(), &pb.ReplicaMergeRequest{}); err != nil || !resp.Columns {
		t.Fatalf("a node's ReplicaMerge answers %v, %v: want columns", resp, err)
	}
	for _, tc := range []struct {
		name    string
		answers []bool
		packed  []bool // whether each merge is sent as columns
		reads   bool   // whether the node reads the columns sent (the downgraded one does not: it is older by then)
	}{
		{"older", []bool{false}, []bool{false, false}, false},
		{"newer", []bool{true}, []bool{false, true}, true},
		{"downgraded", []bool{true, false}, []bool{false, true, false}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &mergeRecorder{answers: tc.answers}
			cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16, extra: []Member{{ID: "t", Addr: serve(t, rec)}}})
			const owners = exportBatch + 10 // two batches
			for o := uint64(1); o <= owners; o++ {
				cs.a.store.Merge(o, []timeline.Entry{{StatusID: 100 + o, AuthorID: o, Flags: uint32(o)}, {StatusID: 50, AuthorID: 1}})
			}
			v, _ := cs.a.current()
			n, failed, err := cs.a.catchUpFrom(t.Context(), v, "t", []string{"a"})
			if err != nil || len(failed) > 0 || n != owners {
				t.Fatalf("catch-up: %d timelines, failed %v, %v", n, failed, err)
			}
			got := map[uint64][]timeline.Entry{}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.reqs) != len(tc.packed) {
				t.Fatalf("%d merges, want %d", len(rec.reqs), len(tc.packed))
			}
			for i, r := range rec.reqs {
				for _, tl := range r.Timelines {
					packed := len(tl.StatusIds) > 0
					if want := tc.packed[i]; packed != want || packed == (len(tl.Entries) > 0) {
						t.Fatalf("merge %d: timeline %d with %d entries and %d columns, want columns %v", i, tl.Owner, len(tl.Entries), len(tl.StatusIds), want)
					}
					if !packed || tc.reads {
						got[tl.Owner] = replicaEntries(tl)
					}
				}
			}
			for o := uint64(1); o <= owners; o++ {
				want, _ := cs.a.store.Get(o)
				if !slices.Equal(got[o], want) {
					t.Fatalf("timeline %d merged as %v, want %v", o, got[o], want)
				}
			}
		})
	}
}

// TestRepairSources: a repair of a timeline no sibling holds is retried
// (a sibling may hold it reserved for a rebuild), but when it is given up
// its node is not marked behind; a sibling that is behind is no source.
func TestRepairSources(t *testing.T) {
	cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16})
	a, ctx := cs.a, t.Context()
	absent := repair{owner: 9, node: "b"}
	err := a.repairOne(ctx, absent)
	if !errors.Is(err, errNoSource) {
		t.Fatalf("repair of a timeline no sibling holds: %v", err)
	}
	a.repairMu.Lock()
	a.attempts[absent] = repairAttempts - 1
	a.repairMu.Unlock()
	a.retryRepair(absent, err)
	if cs.behind() != nil {
		t.Fatal("b is behind after a repair of a timeline no sibling holds was given up")
	}
	a.repairMu.Lock()
	a.attempts[absent] = repairAttempts - 1
	a.repairMu.Unlock()
	a.retryRepair(absent, status.Error(codes.Unavailable, "b is down"))
	if cs.behind() == nil {
		t.Fatal("b is not behind after its repair was given up")
	}

	// a, behind itself, is no source.
	a.repairMu.Lock()
	a.behind = map[string]*behindNode{}
	a.markBehindLocked("a")
	a.repairMu.Unlock()
	if err := a.repairOne(ctx, repair{owner: 1, node: "b"}); err == nil || cs.merge.Load() != 0 {
		t.Fatalf("a repair copied from a sibling that is behind (err %v, %d merges)", err, cs.merge.Load())
	}
	a.repairMu.Lock()
	delete(a.behind, "a")
	a.repairMu.Unlock()
	if err := a.repairOne(ctx, repair{owner: 1, node: "b"}); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := cs.stB.Read(1, 0, 0, 50); !slices.Equal(got, cs.want[1]) {
		t.Fatalf("timeline 1 on b after its repair: %v, want %v", got, cs.want[1])
	}
}

// TestCatchUpTransitions: the states of a node behind. While the next
// catch-up asks some sources only, repairs are queued (it covers nothing),
// and a repair given up, or too many noted, call for a whole one. A
// catch-up whose noted repairs find the queue full leaves the node behind
// again, after a longer wait. The repair workers drop the repairs a whole
// catch-up to come covers.
func TestCatchUpTransitions(t *testing.T) {
	r := func(o uint64) repair { return repair{owner: o, node: "b"} }
	t.Run("partial", func(t *testing.T) {
		cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 2, extra: []Member{{ID: "0", Addr: testnet.Addr(t)}}})
		a := cs.a
		cs.mark()
		a.catchUp(t.Context(), "b") // "0" refuses: next from "0" alone
		if bn := cs.behind(); bn == nil || !slices.Equal(bn.sources, []string{"0"}) {
			t.Fatalf("after a catch-up a source failed: %+v", bn)
		}
		a.scheduleRepair(r(1))
		a.requeueRepair(r(2))
		if !cs.queued(r(1)) || !cs.queued(r(2)) {
			t.Fatal("repairs of a node waiting for a catch-up from some sources are not queued")
		}
		a.scheduleRepair(r(3)) // the queue is full: noted
		if bn := cs.behind(); len(bn.missed) != 1 || bn.sources == nil {
			t.Fatalf("a repair that found the queue full: %+v", bn)
		}
		a.repairMu.Lock()
		a.attempts[r(3)] = 7 // it had failed before
		a.repairMu.Unlock()
		a.scheduleRepair(r(4)) // more than half the queue noted
		if bn := cs.behind(); bn.sources != nil || !bn.overflow || len(bn.missed) != 0 {
			t.Fatalf("too many repairs noted, and no whole catch-up to come: %+v", bn)
		}
		a.repairMu.Lock()
		_, counted := a.attempts[r(3)]
		a.repairMu.Unlock()
		if counted {
			t.Fatal("a noted repair given up for a whole catch-up keeps its attempt count")
		}

		cs.drain()
		a.catchUp(t.Context(), "b")
		if bn := cs.behind(); bn == nil || bn.sources == nil {
			t.Fatalf("after a whole catch-up a source failed: %+v", bn)
		}
		a.repairMu.Lock()
		a.attempts[r(5)] = repairAttempts - 1
		a.repairMu.Unlock()
		a.retryRepair(r(5), status.Error(codes.Unavailable, "b is down"))
		if bn := cs.behind(); bn.sources != nil {
			t.Fatalf("a repair was given up, and no whole catch-up to come: %+v", bn)
		}
	})
	t.Run("overflow-and-source-down", func(t *testing.T) {
		// During a whole catch-up "0" refuses and too many repairs are
		// noted: the next must be whole again.
		cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 2, extra: []Member{{ID: "0", Addr: testnet.Addr(t)}},
			onMerge: func(cs *catchUpSite) error {
				cs.a.scheduleRepair(r(1))
				cs.a.scheduleRepair(r(2))
				return nil
			}})
		cs.mark()
		cs.a.catchUp(t.Context(), "b")
		if bn := cs.behind(); bn == nil || bn.sources != nil {
			t.Fatalf("after a catch-up that noted too many repairs and a source failed: %+v", bn)
		}
	})
	t.Run("full-after", func(t *testing.T) {
		cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 2, onMerge: func(cs *catchUpSite) error {
			cs.a.scheduleRepair(r(4))
			return nil
		}})
		a := cs.a
		a.scheduleRepair(r(1))
		a.scheduleRepair(r(2))
		a.scheduleRepair(r(3)) // the queue is full: b is behind
		a.catchUp(t.Context(), "b")
		cs.checkB(t)
		// r(4) was noted during the catch-up and found the queue full.
		if bn := cs.waiting(t, catchUpRetry); bn.wait != 2*catchUpRetry || bn.sources != nil {
			t.Fatalf("behind again after its catch-up: %+v", bn)
		}
	})
	t.Run("covered", func(t *testing.T) {
		cs := newCatchUpSite(t, catchUpOpts{capacity: 50, repairQueue: 16})
		a := cs.a
		a.scheduleRepair(r(1))
		cs.mark()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { a.runRepairs(ctx); close(done) }()
		// Dropped, or carried out: either ends the wait.
		repairs := func(outcome string) float64 {
			var m dto.Metric
			if err := a.metrics.repairs.WithLabelValues(outcome).Write(&m); err != nil {
				t.Fatal(err)
			}
			return m.GetCounter().GetValue()
		}
		dropped := func() float64 { return repairs("dropped") }
		deadline := time.Now().Add(10 * time.Second)
		for dropped()+repairs("done")+repairs("failed") == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the repair workers did not take the repair within 10s")
			}
			time.Sleep(time.Millisecond) // polling interval
		}
		cancel()
		<-done
		if n := cs.merge.Load(); n != 0 || dropped() != 1 {
			t.Fatalf("a repair that a whole catch-up to come covers was carried out (%d merges, %v dropped)", n, dropped())
		}
	})
}

// TestWithin: a call that does not return in time is ended and reported
// timed out; one that returns in time is neither.
func TestWithin(t *testing.T) {
	ended := make(chan struct{})
	timedOut, cancelled, err := within(time.Millisecond, func() { close(ended) }, func() error {
		<-ended
		return context.Canceled
	})
	if !timedOut || !cancelled || err == nil {
		t.Fatalf("a call that waited for its end: timed out %v, ended %v, err %v", timedOut, cancelled, err)
	}
	var calls atomic.Int32
	timedOut, cancelled, err = within(time.Hour, func() { calls.Add(1) }, func() error { return nil })
	if timedOut || cancelled || err != nil || calls.Load() != 0 {
		t.Fatalf("a call that returned at once: timed out %v, ended %v, err %v, cancel called %d times", timedOut, cancelled, err, calls.Load())
	}
}
