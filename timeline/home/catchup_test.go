package home

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
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

// TestCatchUp: a repair that finds the queue full marks its node behind;
// a catch-up merges into it every timeline its sibling holds, and takes it
// off only if it missed no push meanwhile. A retried repair of a node
// behind is no push missed; a node taken for down is not caught up.
func TestCatchUp(t *testing.T) {
	newStore := func() *timeline.Store {
		st, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	noIDs := func() (uint64, error) { return 0, errors.New("no ids in this test") }

	// b is the node behind: it holds a stale copy of timeline 1 and none
	// of 2.
	stB := newStore()
	stB.Merge(1, []timeline.Entry{{StatusID: 10, AuthorID: 5}})
	b, err := New(Config{NodeID: "b", Store: stB, Data: &fakeData{}, NewID: noIDs,
		Dial: func(string) (*grpc.ClientConn, error) { return nil, errors.New("no dialling from b in this test") }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.endLife)
	var a *Service
	var merges atomic.Int32
	bump := atomic.Bool{}
	addrB := serve(t, mergeHook{b, func() {
		merges.Add(1)
		if bump.Load() { // a push to b fails while it is caught up
			a.scheduleRepair(repair{owner: 2, node: "b"})
		}
	}})

	stA := newStore()
	want := map[uint64][]timeline.Entry{
		1: {{StatusID: 30, AuthorID: 6}, {StatusID: 20, AuthorID: 5}, {StatusID: 10, AuthorID: 5}},
		2: {{StatusID: 40, AuthorID: 7}},
	}
	for o, es := range want {
		stA.Merge(o, es)
	}
	a, err = New(Config{NodeID: "a", Store: stA, Data: &fakeData{}, NewID: noIDs, RepairQueue: 1,
		Dial: func(string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addrB, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.endLife)
	members := Members{Timeline: []Member{{ID: "a", Addr: "a:1"}, {ID: "b", Addr: addrB}}, Site: 1, Sites: []uint32{1}}
	for _, s := range []*Service{a, b} {
		if err := s.SetMembers(members); err != nil {
			t.Fatal(err)
		}
	}
	gen := func() uint64 {
		a.repairMu.Lock()
		defer a.repairMu.Unlock()
		if bn := a.behind["b"]; bn != nil {
			return bn.gen
		}
		return 0
	}

	a.scheduleRepair(repair{owner: 1, node: "b"}) // queued
	if gen() != 0 {
		t.Fatal("b is behind with room in the repair queue")
	}
	a.scheduleRepair(repair{owner: 2, node: "b"}) // the queue is full
	if gen() != 1 {
		t.Fatalf("b's gen is %d after a repair found the queue full, want 1", gen())
	}
	a.requeueRepair(repair{owner: 1, node: "b"})
	if gen() != 1 {
		t.Fatalf("a retried repair counted as a push missed (gen %d)", gen())
	}

	a.markDown("b")
	a.catchUp(t.Context(), "b")
	if merges.Load() != 0 || gen() != 1 {
		t.Fatalf("a node taken for down was caught up (%d merges, gen %d)", merges.Load(), gen())
	}
	a.markUp("b")

	bump.Store(true)
	a.catchUp(t.Context(), "b")
	if merges.Load() == 0 {
		t.Fatal("the catch-up merged nothing into b")
	}
	if gen() != 2 {
		t.Fatalf("b is not behind (gen %d, want 2) after it missed a push during its catch-up", gen())
	}
	bump.Store(false)
	a.catchUp(t.Context(), "b")
	if gen() != 0 {
		t.Fatalf("b is still behind (gen %d) after a catch-up it missed nothing during", gen())
	}
	for o, es := range want {
		got, _, held := stB.Read(o, 0, 0, 50)
		if !held || !slices.Equal(got, es) {
			t.Errorf("timeline %d on b after the catch-up: %v (held %v), want %v", o, got, held, es)
		}
	}
	// A repair worker takes the repair queued first; there is room again.
	a.repairMu.Lock()
	delete(a.queued, <-a.repairs)
	a.repairMu.Unlock()
	a.scheduleRepair(repair{owner: 2, node: "b"})
	if gen() != 0 {
		t.Fatal("a repair after the catch-up marked b behind, with room in the queue")
	}
}
