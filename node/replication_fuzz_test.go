package node

import (
	"context"
	"encoding/binary"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fuzzNow is the wall time of the replica FuzzApplyRemote drives.
var fuzzNow = time.Date(2026, 5, 15, 12, 0, 0, 0, time.UTC)

// replicaForFuzz returns the Replica service of a node of site "east" (id
// 1) that holds every shard of its map, in memory and ready, without its
// servers, NATS or nameserver: what ApplyRemote needs.
func replicaForFuzz(t *testing.T) (*replicaServer, *Node) {
	ctx := context.Background()
	clock := ids.NewManualClock(fuzzNow)
	st, err := shard.Open("db", shard.Options{FS: vfs.NewMem(), Clock: clock, CacheBytes: 1 << 20, MemTableBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.CreateShard(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTable(ctx, "posts", shard.KindContent); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTable(ctx, "timeline", shard.KindIndex); err != nil {
		t.Fatal(err)
	}
	m := gizzard.NewMap()
	if err := m.Apply(gizzard.Change{At: fuzzNow, Steps: []gizzard.Step{
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "self"}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "posts", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "timeline", Kind: gizzard.TableIndex}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "p1", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "posts", Root: "p1"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "timeline", Root: "p1"}},
		{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: "east", ID: 1, NATSURL: "nats://e"}},
		{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: "west", ID: 2, NATSURL: "nats://w"}},
	}}); err != nil {
		t.Fatal(err)
	}
	n := &Node{
		cfg:   Config{NodeID: "self", SiteID: 1, SiteName: "east", Limits: st.Limits(), Clock: clock, MaxClockSkew: 10 * time.Second},
		log:   slog.New(slog.DiscardHandler),
		store: st,
		hlc:   ids.NewHLC(clock, 10*time.Second),
		fence: newFence(),
	}
	n.fence.install(m)
	n.ready.Store(true)
	n.repl = &replicator{n: n}
	n.repl.mu.origins = map[originKey]*originState{}
	n.router = router.New(router.Config{NodeID: "self", Site: "east", Store: st, Map: n.routedMap, Clock: clock, Admit: n.fence.admit})
	return &replicaServer{n: n}, n
}

// gapWatermark is how a relay reads a gap's watermark (replication's
// parseGap).
var gapWatermark = regexp.MustCompile(`applied up to (\d+)`)

// FuzzApplyRemote decodes arbitrary bytes as an ApplyRemoteRequest (a
// relay's batch of another site's replication messages: entries and
// heartbeats) and applies it to a replica. It must never panic and answer
// errors as gRPC statuses; a gap names the watermark the relay reads. A
// request applied accounts for every entry (applied or skipped as already
// applied), persists the watermark it reports, and delivered again is
// skipped whole: redelivery is harmless.
func FuzzApplyRemote(f *testing.F) {
	v := func(agoMs int64) *pb.Version {
		return &pb.Version{Hlc: uint64(ids.MakeTimestamp(fuzzNow.UnixMilli()-agoMs, 0)), Site: 2}
	}
	id := uint64(ids.NewID(fuzzNow.Add(-time.Hour), 2, 1, 1))
	put := &pb.Mutation{Table: "posts", Version: v(1000), Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("k"), Value: []byte("v")}}}
	del := &pb.Mutation{Table: "posts", Version: v(500), Op: &pb.Mutation_Delete_{Delete: &pb.Mutation_Delete{Key: []byte("k")}}}
	app := &pb.Mutation{Table: "timeline", Version: v(900), Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: 42, Id: id, Payload: []byte{1}}}}
	rem := &pb.Mutation{Table: "timeline", Version: v(800), Op: &pb.Mutation_Remove_{Remove: &pb.Mutation_Remove{Owner: 42, Id: id}}}
	entry := func(seq, prev uint64, muts ...*pb.Mutation) *pb.ReplicationMessage {
		return &pb.ReplicationMessage{OriginSite: 2, OriginNode: "w1", Seq: seq, PrevSeq: prev, AtUnixMs: fuzzNow.UnixMilli() - 100, Mutations: muts}
	}
	hb := &pb.ReplicationMessage{OriginSite: 2, OriginNode: "w1", Seq: 3, PrevSeq: 3, AtUnixMs: fuzzNow.UnixMilli(), Heartbeat: true}
	for _, req := range []*pb.ApplyRemoteRequest{
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, put, app), entry(2, 1, rem), hb, entry(3, 2, del)}},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(2, 1, put)}},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, del), entry(2, 1, put)}},
		{OriginSite: 2, OriginNode: "w1", AllowGap: true, Entries: []*pb.ReplicationMessage{entry(5, 4, put), entry(4, 3, del)}},
		{OriginSite: 2, OriginNode: "w1", SiteWatermark: 7, Pending: 3, Entries: []*pb.ReplicationMessage{entry(8, 7, app), entry(7, 6, rem)}},
		{OriginSite: 1, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, put)}},
		{OriginSite: 40, OriginNode: "w 1"},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, &pb.Mutation{Table: "posts"})}},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, &pb.Mutation{Table: "posts", Op: put.Op})}},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, &pb.Mutation{Table: "posts", Op: put.Op, Version: &pb.Version{Hlc: ^uint64(0), Site: 2}})}},
		{OriginSite: 2, OriginNode: "w1", Entries: []*pb.ReplicationMessage{entry(1, 0, &pb.Mutation{Table: "nope", Op: put.Op, Version: v(1)})}},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x08, 0x02, 0x12, 0x02, 'w', '1', 0x1a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.ApplyRemoteRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		srv, n := replicaForFuzz(t)
		ctx := context.Background()
		resp, err := srv.ApplyRemote(ctx, &req)
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("ApplyRemote error is not a gRPC status: %v", err)
			}
			if strings.HasPrefix(st.Message(), "gap:") {
				if st.Code() != codes.FailedPrecondition || gapWatermark.FindStringSubmatch(st.Message()) == nil {
					t.Fatalf("a gap a relay cannot read: %v", err)
				}
			}
			return
		}
		entries, heartbeats, empty := 0, 0, 0
		for _, e := range req.Entries {
			switch {
			case e.Heartbeat:
				heartbeats++
			case len(e.Mutations) == 0:
				empty++
				entries++
			default:
				entries++
			}
		}
		if int(resp.Applied+resp.Skipped) != entries {
			t.Fatalf("%d entries and %d heartbeats: %d applied, %d skipped", entries, heartbeats, resp.Applied, resp.Skipped)
		}
		if empty > 0 {
			// An entry without mutations (origins publish none) is
			// counted applied, but its seq reaches the watermark only
			// with a later entry's write: the checks below do not hold.
			return
		}
		o := originKey{req.OriginSite, req.OriginNode}
		if resp.Applied > 0 {
			b, ok, err := n.store.ImportState(watermarkKey(o))
			if err != nil || !ok || len(b) != 8 || binary.BigEndian.Uint64(b) != resp.Watermark {
				t.Fatalf("watermark %d reported, %x stored (%v, %v)", resp.Watermark, b, ok, err)
			}
		}
		again, err := srv.ApplyRemote(ctx, &req)
		if err != nil || again.Applied != 0 || int(again.Skipped) != entries || again.Watermark != resp.Watermark {
			t.Fatalf("redelivered: %v (%v); first delivery %v", again, err, resp)
		}
	})
}
