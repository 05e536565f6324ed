package home

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// serve serves s's Timelines API over gRPC on a loopback port until the
// test ends, and returns its address.
func serve(t testing.TB, s pb.TimelinesServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterTimelinesServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// olderReplica answers ReplicaRead as a node that predates
// ReplicaReadRequest.packed does: with entries.
type olderReplica struct{ *Service }

func (o olderReplica) ReplicaRead(ctx context.Context, r *pb.ReplicaReadRequest) (*pb.ReplicaReadResponse, error) {
	return o.Service.ReplicaRead(ctx, &pb.ReplicaReadRequest{Queries: r.Queries})
}

// brokenReplica answers ReplicaRead with a column short.
type brokenReplica struct{ *Service }

func (b brokenReplica) ReplicaRead(ctx context.Context, r *pb.ReplicaReadRequest) (*pb.ReplicaReadResponse, error) {
	resp, err := b.Service.ReplicaRead(ctx, r)
	for _, t := range resp.GetResults() {
		if len(t.Flags) > 0 {
			t.Flags = t.Flags[1:]
		}
	}
	return resp, err
}

// TestReadPackedFromReplica: a packed read that another replica answers
// (over gRPC, on loopback) carries the same entries, as columns, as an
// unpacked one, whether the replica answers packed or, as an older node
// does, with entries. An answer whose columns differ in length is refused.
func TestReadPackedFromReplica(t *testing.T) {
	t.Run("packed", func(t *testing.T) { testReadFromReplica(t, func(s *Service) pb.TimelinesServer { return s }) })
	t.Run("older", func(t *testing.T) {
		testReadFromReplica(t, func(s *Service) pb.TimelinesServer { return olderReplica{s} })
	})
	t.Run("broken", func(t *testing.T) {
		testReadFromReplica(t, func(s *Service) pb.TimelinesServer { return brokenReplica{s} })
	})
}

func testReadFromReplica(t *testing.T, as func(*Service) pb.TimelinesServer) {
	const owner = 7
	stB, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	want := []timeline.Entry{{StatusID: 90, AuthorID: 3, Flags: 1}, {StatusID: 60, AuthorID: 4, Flags: 2}, {StatusID: 30, AuthorID: 3, Flags: 0}}
	stB.Merge(owner, want)
	noDial := func(string) (*grpc.ClientConn, error) { return nil, errors.New("no dialling from b in this test") }
	b, err := New(Config{NodeID: "b", Store: stB, Data: &fakeData{}, Dial: noDial,
		NewID: func() (uint64, error) { return 0, errors.New("no ids in this test") }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.endLife)
	addrB := serve(t, as(b))

	stA, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{NodeID: "a", Store: stA, Data: &fakeData{},
		Dial: func(string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addrB, grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
		NewID: func() (uint64, error) { return 0, errors.New("no ids in this test") }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.endLife()
		a.building.wg.Wait()
	})
	members := Members{Timeline: []Member{{ID: "a", Addr: "a:1"}, {ID: "b", Addr: addrB}}, Site: 1, Sites: []uint32{1}}
	for _, s := range []*Service{a, b} {
		if err := s.SetMembers(members); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := a.current()
	if reps := v.replicas(owner); !slices.Contains(reps[:], "b") {
		t.Fatalf("timeline %d's replicas do not include b", owner)
	}

	ctx := context.Background()
	q := []*pb.TimelineQuery{{Owner: owner, Limit: 10}}
	if _, broken := as(b).(brokenReplica); broken {
		_, err := a.replicaRead(ctx, v, "b", &pb.ReplicaReadRequest{Queries: q, Packed: true})
		if err == nil || !strings.Contains(err.Error(), "columns of different lengths") {
			t.Fatalf("a broken packed answer read with error %v", err)
		}
		return
	}
	// a does not hold the timeline: b answers both reads (a schedules a
	// repair, but its repair loop does not run in this test).
	packed, err := a.Read(ctx, &pb.ReadRequest{Queries: q, Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	r := packed.Results[0]
	if r.Node != "b" || r.Rebuilt || len(r.Entries) != 0 {
		t.Fatalf("packed read answered by %q (rebuilt %v) with %d entries; want b's answer, packed", r.Node, r.Rebuilt, len(r.Entries))
	}
	var got []timeline.Entry
	for k := range r.StatusIds {
		got = append(got, timeline.Entry{StatusID: r.StatusIds[k], AuthorID: r.AuthorIds[k], Flags: r.Flags[k]})
	}
	if len(r.AuthorIds) != len(r.StatusIds) || len(r.Flags) != len(r.StatusIds) || !slices.Equal(got, want) {
		t.Fatalf("packed columns %v %v %v, want %v", r.StatusIds, r.AuthorIds, r.Flags, want)
	}
	plain, err := a.Read(ctx, &pb.ReadRequest{Queries: q})
	if err != nil {
		t.Fatal(err)
	}
	if p := plain.Results[0]; !slices.Equal(toEntries(p.Entries), want) || len(p.StatusIds) != 0 {
		t.Fatalf("unpacked read: entries %v, %d packed values; want %v and none", toEntries(p.Entries), len(p.StatusIds), want)
	}
}

// BenchmarkRead reads a 20-entry timeline over gRPC on loopback, from the
// node holding it, with and without packed results: allocations per read
// (both sides, in this one process) are what packing saves.
//
//	go test ./timeline/home -run - -bench Read -benchmem
func BenchmarkRead(b *testing.B) {
	const owner = 7
	st, err := timeline.NewStore(timeline.Options{Capacity: 800, Shards: 4})
	if err != nil {
		b.Fatal(err)
	}
	st.Merge(owner, fullTimeline())
	s, err := New(Config{NodeID: "a", Store: st, Data: &fakeData{},
		Dial:  func(string) (*grpc.ClientConn, error) { return nil, errors.New("no dialling in this benchmark") },
		NewID: func() (uint64, error) { return 0, errors.New("no ids in this benchmark") }}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.endLife)
	if err := s.SetMembers(Members{Timeline: []Member{{ID: "a", Addr: "a:1"}}, Site: 1, Sites: []uint32{1}}); err != nil {
		b.Fatal(err)
	}
	benchmarkReads(b, serve(b, s), 7, "a")
}

// TestMergeColumns: a timeline merged into a replica may come as columns;
// columns of different lengths are refused, and nothing is installed.
func TestMergeColumns(t *testing.T) {
	st, err := timeline.NewStore(timeline.Options{Capacity: 50, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{NodeID: "a", Store: st, Data: &fakeData{},
		Dial:  func(string) (*grpc.ClientConn, error) { return nil, errors.New("no dialling in this test") },
		NewID: func() (uint64, error) { return 0, errors.New("no ids in this test") }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.endLife)
	ctx := context.Background()
	bad := &pb.ReplicaTimeline{Owner: 8, Held: true, StatusIds: []uint64{9, 7}, AuthorIds: []uint64{1, 2}, Flags: []uint32{0}}
	if _, err := s.ReplicaMerge(ctx, &pb.ReplicaMergeRequest{Timelines: []*pb.ReplicaTimeline{bad}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("merging columns of different lengths: %v, want InvalidArgument", err)
	}
	if st.Has(8) {
		t.Fatal("a refused merge installed its timeline")
	}
	good := &pb.ReplicaTimeline{Owner: 7, Held: true, StatusIds: []uint64{9, 7}, AuthorIds: []uint64{1, 2}, Flags: []uint32{3, 4}}
	if _, err := s.ReplicaMerge(ctx, &pb.ReplicaMergeRequest{Timelines: []*pb.ReplicaTimeline{good}}); err != nil {
		t.Fatal(err)
	}
	want := []timeline.Entry{{StatusID: 9, AuthorID: 1, Flags: 3}, {StatusID: 7, AuthorID: 2, Flags: 4}}
	if got, held := st.Get(7); !held || !slices.Equal(got, want) {
		t.Fatalf("merged columns: %v (held %v), want %v", got, held, want)
	}
}

// BenchmarkReadRemote reads a 20-entry timeline through a node that does
// not hold it: the node asks the replica that does (ReplicaRead) over gRPC
// on loopback, then answers the client. Allocations per read cover the
// client, the node and the replica, all in this one process.
//
//	go test ./timeline/home -run - -bench ReadRemote -benchmem
func BenchmarkReadRemote(b *testing.B) {
	const owner = 7
	stB, err := timeline.NewStore(timeline.Options{Capacity: 800, Shards: 4})
	if err != nil {
		b.Fatal(err)
	}
	stB.Merge(owner, fullTimeline())
	noIDs := func() (uint64, error) { return 0, errors.New("no ids in this benchmark") }
	replica, err := New(Config{NodeID: "b", Store: stB, Data: &fakeData{}, NewID: noIDs,
		Dial: func(string) (*grpc.ClientConn, error) { return nil, errors.New("no dialling from b in this benchmark") }}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(replica.endLife)
	addrB := serve(b, replica)
	// The node asked holds no timelines: a router-only timeline node.
	node, err := New(Config{NodeID: "a", Data: &fakeData{}, NewID: noIDs,
		Dial: func(string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addrB, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(node.endLife)
	members := Members{Timeline: []Member{{ID: "b", Addr: addrB}}, Site: 1, Sites: []uint32{1}}
	for _, s := range []*Service{node, replica} {
		if err := s.SetMembers(members); err != nil {
			b.Fatal(err)
		}
	}
	benchmarkReads(b, serve(b, node), 7, "b")
}

// fullTimeline is 800 entries, newest first.
func fullTimeline() []timeline.Entry {
	var es []timeline.Entry
	for i := range 800 {
		es = append(es, timeline.Entry{StatusID: uint64(1_000_000_000_000 - i), AuthorID: uint64(i%97 + 1), Flags: uint32(i % 3)})
	}
	return es
}

// benchmarkReads reads owner's newest 20 entries through the node serving
// at addr, with and without packed results, and checks that node answered
// from its replica.
func benchmarkReads(b *testing.B, addr string, owner uint64, node string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cc.Close() })
	c := pb.NewTimelinesClient(cc)
	for _, packed := range []bool{false, true} {
		name := "entries"
		if packed {
			name = "packed"
		}
		b.Run(name, func(b *testing.B) {
			req := &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: owner, Limit: 20}}, Packed: packed}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Read(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				if r := resp.Results[0]; r.Node != node || len(r.Entries)+len(r.StatusIds) != 20 {
					b.Fatalf("read %d entries and %d packed from %q", len(r.Entries), len(r.StatusIds), r.Node)
				}
			}
		})
	}
}
