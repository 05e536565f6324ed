package home

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// mergeHook runs onMerge before each ReplicaMerge it answers.
type mergeHook struct {
	*Service
	onMerge func()
}

func (m mergeHook) ReplicaMerge(ctx context.Context, r *pb.ReplicaMergeRequest) (*pb.ReplicaMergeResponse, error) {
	m.onMerge()
	return m.Service.ReplicaMerge(ctx, r)
}

// catchUpSite is node a, holding want, and node b, behind: it holds a
// stale copy of timeline 1 and none of 2. Both serve the Timelines API on
// loopback; b runs onMerge before each merge it answers. Extra members
// are listed as timeline nodes too.
type catchUpSite struct {
	a, b  *Service
	stB   *timeline.Store
	want  map[uint64][]timeline.Entry
	merge atomic.Int32
}

func newCatchUpSite(t *testing.T, repairQueue int, onMerge func(*catchUpSite), extra ...Member) *catchUpSite {
	t.Helper()
	newStore := func() *timeline.Store {
		st, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
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
	addrB := serve(t, mergeHook{cs.b, func() {
		cs.merge.Add(1)
		onMerge(cs)
	}})
	stA := newStore()
	for o, es := range cs.want {
		stA.Merge(o, es)
	}
	cs.a, err = New(Config{NodeID: "a", Store: stA, Data: &fakeData{}, NewID: noIDs, Dial: dial, RepairQueue: repairQueue}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.a.endLife)
	members := Members{Timeline: append([]Member{{ID: "a", Addr: "a:1"}, {ID: "b", Addr: addrB}}, extra...), Site: 1, Sites: []uint32{1}}
	for _, s := range []*Service{cs.a, cs.b} {
		if err := s.SetMembers(members); err != nil {
			t.Fatal(err)
		}
	}
	return cs
}

// behind returns a's marking of b, nil if b is not behind.
func (cs *catchUpSite) behind() *behindNode {
	cs.a.repairMu.Lock()
	defer cs.a.repairMu.Unlock()
	return cs.a.behind["b"]
}

// missed returns the timelines a noted for b after its catch-up, and
// whether there were too many.
func (cs *catchUpSite) missed() ([]uint64, bool) {
	cs.a.repairMu.Lock()
	defer cs.a.repairMu.Unlock()
	bn := cs.a.behind["b"]
	if bn == nil {
		return nil, false
	}
	return slices.Sorted(maps.Keys(bn.missed)), bn.overflow
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

// TestCatchUp: a repair that finds the queue full marks its node behind.
// A catch-up merges into it every timeline its siblings hold; the repairs
// asked for during it are queued after it, unless there are too many:
// then the node stays behind, for another catch-up. A retried repair of a
// node behind is covered by its catch-up; a node taken for down is not
// caught up.
func TestCatchUp(t *testing.T) {
	var during []uint64 // repairs of b asked for while b is caught up
	cs := newCatchUpSite(t, 2, func(cs *catchUpSite) {
		for _, o := range during {
			cs.a.scheduleRepair(repair{owner: o, node: "b"})
		}
	})
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
	if m, over := cs.missed(); !slices.Equal(m, []uint64{2}) || over {
		t.Fatalf("noted %v (overflow %v), want [2]", m, over)
	}

	a.markDown("b")
	a.catchUp(t.Context(), "b")
	if cs.merge.Load() != 0 || cs.behind() == nil {
		t.Fatalf("a node taken for down was caught up (%d merges)", cs.merge.Load())
	}
	a.markUp("b")

	// Two repairs asked for during the catch-up: more than half the queue.
	during = []uint64{2, 3}
	a.catchUp(t.Context(), "b")
	if cs.merge.Load() == 0 {
		t.Fatal("the catch-up merged nothing into b")
	}
	cs.checkB(t)
	bn := cs.behind()
	if bn == nil || !bn.next.After(time.Now()) {
		t.Fatalf("b is not behind, waiting, after too many repairs were asked for during its catch-up (%+v)", bn)
	}

	// The repair workers take what is queued; one repair is asked for
	// during the next catch-up, which takes b off and queues it.
	for range 2 {
		a.repairMu.Lock()
		delete(a.queued, <-a.repairs)
		a.repairMu.Unlock()
	}
	during = []uint64{2}
	a.catchUp(t.Context(), "b")
	if cs.behind() != nil {
		t.Fatal("b is still behind after a catch-up that all its siblings answered")
	}
	a.repairMu.Lock()
	queued := a.queued[repair{owner: 2, node: "b"}]
	a.repairMu.Unlock()
	if !queued {
		t.Fatal("the repair asked for during the catch-up was not queued after it")
	}
	cs.checkB(t)
}

// TestCatchUpSourceDown: a sibling that does not answer holds back no
// other's copies, and the node stays behind, for a later catch-up.
func TestCatchUpSourceDown(t *testing.T) {
	// Node "0" is listed first and refuses connections.
	dead := testnet.Addr(t)
	cs := newCatchUpSite(t, 16, func(*catchUpSite) {}, Member{ID: "0", Addr: dead})
	cs.a.repairMu.Lock()
	cs.a.markBehindLocked("b")
	cs.a.repairMu.Unlock()
	cs.a.catchUp(t.Context(), "b")
	cs.checkB(t)
	if bn := cs.behind(); bn == nil || !bn.next.After(time.Now()) {
		t.Fatalf("b is not behind, waiting, after a catch-up a sibling did not answer (%+v)", bn)
	}
}

// TestRepairSources: a repair of a timeline no sibling holds is done (the
// next read rebuilds it), and a sibling that is behind is no source.
func TestRepairSources(t *testing.T) {
	cs := newCatchUpSite(t, 16, func(*catchUpSite) {})
	ctx := t.Context()
	if err := cs.a.repairOne(ctx, repair{owner: 9, node: "b"}); err != nil {
		t.Fatalf("repair of a timeline no sibling holds: %v", err)
	}
	cs.a.repairMu.Lock()
	cs.a.markBehindLocked("a")
	cs.a.repairMu.Unlock()
	if err := cs.a.repairOne(ctx, repair{owner: 1, node: "b"}); err == nil || cs.merge.Load() != 0 {
		t.Fatalf("a repair copied from a sibling that is behind (err %v, %d merges)", err, cs.merge.Load())
	}
	cs.a.repairMu.Lock()
	delete(cs.a.behind, "a")
	cs.a.repairMu.Unlock()
	if err := cs.a.repairOne(ctx, repair{owner: 1, node: "b"}); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := cs.stB.Read(1, 0, 0, 50); !slices.Equal(got, cs.want[1]) {
		t.Fatalf("timeline 1 on b after its repair: %v, want %v", got, cs.want[1])
	}
}
