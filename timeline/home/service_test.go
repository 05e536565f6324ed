package home

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeData is an index in memory: the following and user_timeline tables,
// with a seam to fail the next reads of the following table.
type fakeData struct {
	mu        sync.Mutex
	following map[uint64][]uint64 // user -> followees
	posts     map[uint64][]uint64 // author -> status ids, newest first
	failReads int                 // following reads still to fail
}

func (d *fakeData) Write(context.Context, *pb.WriteRequest) (*pb.WriteResponse, error) {
	return nil, errors.New("fakeData: writes are not supported")
}

func (d *fakeData) Count(context.Context, *pb.CountRequest) (*pb.CountResponse, error) {
	return &pb.CountResponse{}, nil
}

// Range answers one page holding every entry: the tests' tables are small.
func (d *fakeData) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	resp := &pb.RangeResponse{}
	switch r.Table {
	case TableFollowing:
		if d.failReads > 0 {
			d.failReads--
			return nil, status.Error(codes.Unavailable, "index unavailable")
		}
		for _, id := range d.following[r.Owner] {
			resp.Entries = append(resp.Entries, &pb.Entry{Id: id})
		}
	case TablePosts:
		for _, id := range d.posts[r.Owner] {
			if (r.MaxId == 0 || id <= r.MaxId) && id > r.SinceId {
				resp.Entries = append(resp.Entries, &pb.Entry{Id: id, Payload: binary.LittleEndian.AppendUint32(nil, 0)})
			}
		}
	}
	return resp, nil
}

// newTestService returns the service of node "a" of a site whose timeline
// nodes are "a" and others: a's replica calls go to its own store, and
// calls to the others fail (they cannot be dialled).
func newTestService(t *testing.T, data Data, others ...string) (*Service, *timeline.Store) {
	t.Helper()
	st, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{
		NodeID: "a",
		Store:  st,
		Data:   data,
		Dial:   func(addr string) (*grpc.ClientConn, error) { return nil, errors.New("no network in this test") },
		NewID:  func() (uint64, error) { return 0, errors.New("no ids in this test") },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.endLife()
		s.building.wg.Wait()
	})
	members := Members{Timeline: []Member{{ID: "a", Addr: "a:1"}}, Site: 1, Sites: []uint32{1}}
	for _, id := range others {
		members.Timeline = append(members.Timeline, Member{ID: id, Addr: id + ":1"})
	}
	if err := s.SetMembers(members); err != nil {
		t.Fatal(err)
	}
	return s, st
}

func resultIDs(r *pb.TimelineResult) []uint64 {
	ids := make([]uint64, len(r.Entries))
	for i, e := range r.Entries {
		ids[i] = e.StatusId
	}
	return ids
}

// TestRebuildFailureThenRead: a read whose rebuild fails leaves no
// timeline a later read would take as whole, so the next read rebuilds it
// from the index. The failed rebuild's reservation keeps what is pushed
// after it, and the next rebuild merges that in.
func TestRebuildFailureThenRead(t *testing.T) {
	const owner, followee = 7, 8
	data := &fakeData{
		following: map[uint64][]uint64{owner: {followee}},
		posts:     map[uint64][]uint64{owner: {30, 10}, followee: {40, 20}},
		failReads: 1,
	}
	s, st := newTestService(t, data)
	ctx := context.Background()
	read := func() (*pb.TimelineResult, error) {
		resp, err := s.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: owner, Limit: 10}}})
		if err != nil {
			return nil, err
		}
		return resp.Results[0], nil
	}

	if _, err := read(); status.Code(err) != codes.Unavailable {
		t.Fatalf("read with the index down: %v, want Unavailable", err)
	}
	if st.Has(owner) {
		t.Fatal("a failed rebuild left a timeline readers take as held")
	}
	// A post delivered while the timeline is not yet rebuilt.
	if _, err := s.Push(ctx, &pb.PushRequest{Entry: &pb.TimelineEntry{StatusId: 50, AuthorId: followee}, Owners: []uint64{owner}}); err != nil {
		t.Fatal(err)
	}

	res, err := read()
	if err != nil {
		t.Fatalf("read after the index is back: %v", err)
	}
	if want := []uint64{40, 30, 20, 10}; !res.Rebuilt || !slices.Equal(resultIDs(res), want) {
		t.Fatalf("read after the index is back: rebuilt %v, entries %v; want rebuilt, %v", res.Rebuilt, resultIDs(res), want)
	}
	res, err = read()
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{50, 40, 30, 20, 10}; res.Rebuilt || res.Node != "a" || !slices.Equal(resultIDs(res), want) {
		t.Fatalf("read of the rebuilt timeline: rebuilt %v, node %q, entries %v; want node a, %v", res.Rebuilt, res.Node, resultIDs(res), want)
	}
}

// TestPushFailed: Push counts one failure per owner listed (repeats
// included) for each replica of it that cannot be reached.
func TestPushFailed(t *testing.T) {
	s, st := newTestService(t, &fakeData{}, "b", "c", "d")
	owners := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 1}
	st.Replace(2, nil)
	v, _ := s.current()
	var want uint32
	for _, o := range owners {
		for _, n := range v.replicas(o) {
			if n != "" && n != "a" {
				want++
			}
		}
	}
	resp, err := s.Push(context.Background(), &pb.PushRequest{Entry: &pb.TimelineEntry{StatusId: 9, AuthorId: 1}, Owners: owners})
	if err != nil {
		t.Fatal(err)
	}
	var wantAdded uint32 // owner 2, if this node is a replica of it
	if reps := v.replicas(2); slices.Contains(reps[:], "a") {
		wantAdded = 1
	}
	if resp.Failed != want || resp.Added != wantAdded {
		t.Fatalf("Push: failed %d, added %d; want %d, %d", resp.Failed, resp.Added, want, wantAdded)
	}
}

// exportStream collects what ReplicaExport sends.
type exportStream struct {
	grpc.ServerStream // nil: only Send and Context are called
	ctx               context.Context
	got               []*pb.ReplicaTimeline
}

func (e *exportStream) Send(r *pb.ReplicaExportResponse) error {
	e.got = append(e.got, r.Timelines...)
	return nil
}

func (e *exportStream) Context() context.Context { return e.ctx }

// TestReplicaExport: the export to a node is every timeline held here
// that the rings place on it, whole, and nothing else.
func TestReplicaExport(t *testing.T) {
	s, st := newTestService(t, &fakeData{})
	ring := []string{"a", "b", "c", "d", "e"}
	rings, err := timeline.NewRings(ring, s.cfg.Rings)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]int{}
	for o := uint64(1); o <= 300; o++ {
		switch o % 4 {
		case 0:
			st.Reserve(o) // pending: never exported
			st.Push(o, timeline.Entry{StatusID: o})
			continue
		case 1:
			st.Replace(o, nil)
		default:
			st.Replace(o, []timeline.Entry{{StatusID: o}, {StatusID: o + 1000}})
		}
		if reps := rings.Replicas(o); slices.Contains(reps[:], "c") {
			want[o] = st.Len(o)
		}
	}
	stream := &exportStream{ctx: context.Background()}
	if err := s.ReplicaExport(&pb.ReplicaExportRequest{Node: "c", RingNodes: ring}, stream); err != nil {
		t.Fatal(err)
	}
	if len(stream.got) != len(want) || len(want) < exportBatch {
		t.Fatalf("exported %d timelines, want %d (more than a batch of %d)", len(stream.got), len(want), exportBatch)
	}
	for _, tl := range stream.got {
		n, ok := want[tl.Owner]
		if !ok || !tl.Held || len(tl.Entries) != n || tl.Length != uint32(n) {
			t.Errorf("exported owner %d: held %v, %d entries, length %d; want placed on c, held, %d", tl.Owner, tl.Held, len(tl.Entries), tl.Length, n)
		}
		delete(want, tl.Owner)
	}
}

// TestCelebritiesAdd: the set is replaced only when an id is new.
func TestCelebritiesAdd(t *testing.T) {
	var c celebrities
	c.add(1, 2)
	before := c.set.Load()
	c.add(2, 1)
	c.add()
	if c.set.Load() != before {
		t.Fatal("adding known ids replaced the set")
	}
	c.add(1, 3, 2)
	if c.set.Load() == before || !c.has(1) || !c.has(2) || !c.has(3) || c.has(4) || len(c.all()) != 3 {
		t.Fatalf("after adding 3: %v", c.all())
	}
	if len(*before) != 2 {
		t.Fatalf("adding changed the set readers had loaded: %v", *before)
	}
}

// TestSkipPush: no push goes to a node a call failed to less than downFor
// ago; after that one push goes, as a probe, and the others wait for its
// answer, or for as long as it may take.
func TestSkipPush(t *testing.T) {
	s := &Service{cfg: Config{ReplicaTimeout: time.Minute}, down: map[string]*nodeDown{}}
	skip := func() bool { sk, _ := s.skipPush("n"); return sk }
	if skip() || s.isDown("n") {
		t.Fatal("a node nothing failed to is skipped")
	}
	s.markDown("n")
	if !skip() || !s.isDown("n") {
		t.Fatal("a node a push just failed to is pushed to")
	}
	s.down["n"].until = time.Now().Add(-time.Millisecond) // downFor has passed
	if skip() {
		t.Fatal("no probe after downFor")
	}
	if !skip() || !s.isDown("n") {
		t.Fatal("a second push while the probe is out")
	}
	s.markDown("n") // a read fails while the probe is out
	s.down["n"].until = time.Now().Add(-time.Millisecond)
	if !skip() {
		t.Fatal("a second push went out after a read failed while the probe is out")
	}
	s.pushFailed("n", true) // the probe failed
	if !skip() {
		t.Fatal("a push went out less than downFor after the probe failed")
	}
	s.down["n"].until = time.Now().Add(-time.Millisecond)
	if skip() {
		t.Fatal("no probe downFor after the last failed")
	}
	s.probeAbandoned("n") // its caller gave up: the probe's answer is unknown
	if skip() {
		t.Fatal("no probe after the last was abandoned")
	}
	s.down["n"].probeAt = time.Now().Add(-time.Minute - downFor) // never answered
	if skip() {
		t.Fatal("no probe after the last outlived ReplicaTimeout")
	}
	if !skip() {
		t.Fatal("a second push while the new probe is out")
	}
	s.markUp("n")
	if skip() || s.isDown("n") {
		t.Fatal("a node that answered the probe is skipped")
	}
}
