package node

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/shard"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// site is three in-process nodes at fixed addresses: node-0 founds the site,
// node-1 and node-2 join it, and every tree gets a readable replica on each.
type site struct {
	cfgs  []Config
	nodes []*testNode
}

func newSite(t *testing.T, opts ...func(*Config)) *site {
	t.Helper()
	s := &site{}
	dir := t.TempDir()
	for i := range 3 {
		cfg := Config{
			DataDir: filepath.Join(dir, string(rune('a'+i))), NodeID: "node-" + string(rune('0'+i)), WorkerID: uint32(i),
			GRPCAddr: testnet.Addr(t), RaftAddr: testnet.Addr(t), DefaultShards: 2, ReplicaTimeout: time.Second,
		}
		for _, o := range opts {
			o(&cfg)
		}
		if i > 0 {
			cfg.Join = s.nodes[0].n.GRPCAddr()
		}
		s.cfgs = append(s.cfgs, cfg)
		s.nodes = append(s.nodes, startNode(t, cfg))
		// Keep the addresses for restarts.
		s.cfgs[i].GRPCAddr = s.nodes[i].n.GRPCAddr()
	}
	m := s.nodes[0].n.ns.Map()
	c := gizzard.Change{Who: "test"}
	for _, root := range m.Roots() {
		for _, cfg := range s.cfgs[1:] {
			leaf := root + "-" + cfg.NodeID
			c.Steps = append(c.Steps,
				gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: leaf, Kind: gizzard.KindPhysical, Node: cfg.NodeID}},
				gizzard.Step{Op: gizzard.OpAddLink, Parent: root, Child: leaf, Weight: 1})
		}
	}
	s.propose(t, c)
	return s
}

// propose commits a change through node-1 (which forwards it to the
// leader) and waits until every running node routes with it.
func (s *site) propose(t *testing.T, c gizzard.Change) {
	t.Helper()
	b, _ := json.Marshal(c)
	// Right after a site starts, or a leader change, the nameserver may
	// have no leader for a moment (Unavailable): retry that.
	var r *pb.ProposeResponse
	waitFor(t, 10*time.Second, func() error {
		var err error
		r, err = s.nodes[1].ns.Propose(t.Context(), &pb.ProposeRequest{ChangeJson: b})
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatal(err)
		}
		return err
	})
	for _, tn := range s.nodes {
		if tn == nil {
			continue
		}
		waitFor(t, 10*time.Second, func() error {
			if v := tn.n.routedVersion.Load(); v < r.Version {
				return status.Errorf(codes.Unavailable, "%s at version %d, want %d", tn.n.cfg.NodeID, v, r.Version)
			}
			return nil
		})
	}
}

// leafOf returns the physical shard of tree root on node.
func leafOf(m *gizzard.Map, root, node string) string {
	plan, _ := m.PlanWrite(root)
	for _, l := range plan.Targets {
		if l.Node == node {
			return l.Shard
		}
	}
	return ""
}

// onReplica reads key from the physical shard of its tree on node i.
func (s *site) onReplica(t *testing.T, i int, key string) (*pb.GetResponse, error) {
	t.Helper()
	m := s.nodes[0].n.ns.Map()
	fw, err := m.Lookup("statuses", gizzard.Hash([]byte(key)))
	if err != nil {
		t.Fatal(err)
	}
	return s.nodes[i].data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(key), Shard: leafOf(m, fw.Root, s.cfgs[i].NodeID)})
}

func TestConsistencyAllAndOne(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	r, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("all"), Value: []byte("v"), Consistency: pb.Consistency_CONSISTENCY_ALL})
	if err != nil {
		t.Fatal(err)
	}
	if r.Replicas != 3 || r.Acked != 3 {
		t.Fatalf("ALL write: replicas %d acked %d, want 3 and 3", r.Replicas, r.Acked)
	}
	for i := range 3 {
		g, err := s.onReplica(t, i, "all")
		if err != nil || g.Version.Hlc != r.Version.Hlc {
			t.Fatalf("ALL write on replica %d: %v %v", i, g, err)
		}
	}

	// node-2 goes away: ONE still succeeds, ALL does not.
	if err := s.nodes[2].stop(); err != nil {
		t.Fatal(err)
	}
	s.nodes[2] = nil
	v1, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("one"), Value: []byte("v1")})
	if err != nil {
		t.Fatalf("ONE write with a replica down: %v", err)
	}
	if v1.Replicas != 3 || v1.Acked < 1 {
		t.Fatalf("ONE write: replicas %d acked %d", v1.Replicas, v1.Acked)
	}
	_, err = s.nodes[1].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("all-down"), Value: []byte("v"), Consistency: pb.Consistency_CONSISTENCY_ALL})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("ALL write with a replica down: %v, want Unavailable", err)
	}
	// A newer write of the same key, also missing on node-2: when node-2
	// returns, both retries reach it in some order and the newer one wins.
	v2, err := s.nodes[1].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("one"), Value: []byte("v2")})
	if err != nil {
		t.Fatal(err)
	}

	s.nodes[2] = startNode(t, s.cfgs[2])
	for i := range 2 {
		waitFor(t, 30*time.Second, func() error {
			jobs, err := s.nodes[i].admin.ListJobs(ctx, &pb.ListJobsRequest{})
			if err != nil {
				return err
			}
			if len(jobs.Jobs) > 0 {
				return status.Errorf(codes.Unavailable, "node-%d has %d pending jobs", i, len(jobs.Jobs))
			}
			return nil
		})
	}
	for i := range 3 {
		g, err := s.onReplica(t, i, "one")
		if err != nil || string(g.Value) != "v2" || g.Version.Hlc != v2.Version.Hlc {
			t.Fatalf("replica %d after the fault healed: %v %v (want v2@%d)", i, g, err, v2.Version.Hlc)
		}
		if _, err := s.onReplica(t, i, "all-down"); err != nil {
			t.Fatalf("replica %d lacks the journaled ALL write after the fault healed: %v", i, err)
		}
	}
	_ = v1
}

func TestTreeKindsThroughTheRouter(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	m := s.nodes[0].n.ns.Map()
	roots := m.Roots()
	// Put the first tree under a Blocked root and the second under a
	// BlackHole root, re-pointing every table's forwardings at them.
	root0, root1 := roots[0], roots[1]
	blk, bh := "blocked-0", "blackhole-1"
	var steps []gizzard.Step
	for tbl, fs := range m.Forwardings {
		for _, f := range fs {
			switch f.Root {
			case root0:
				steps = append(steps, gizzard.Step{Op: gizzard.OpRemoveForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: root0}},
					gizzard.Step{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: blk}})
			case root1:
				steps = append(steps, gizzard.Step{Op: gizzard.OpRemoveForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: root1}},
					gizzard.Step{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: bh}})
			}
		}
	}
	c := gizzard.Change{Who: "test", Steps: append([]gizzard.Step{
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: blk, Kind: gizzard.KindBlocked}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: bh, Kind: gizzard.KindBlackHole}},
	}, steps...)}
	c.Steps = append(c.Steps,
		gizzard.Step{Op: gizzard.OpAddLink, Parent: blk, Child: root0, Weight: 1},
		gizzard.Step{Op: gizzard.OpAddLink, Parent: bh, Child: root1, Weight: 1})
	s.propose(t, c)

	m = s.nodes[0].n.ns.Map()
	var keyBlocked, keyHole string
	for i := 0; keyBlocked == "" || keyHole == ""; i++ {
		k := fmt.Sprintf("key-%d", i)
		fw, err := m.Lookup("statuses", gizzard.Hash([]byte(k)))
		if err != nil {
			t.Fatal(err)
		}
		switch fw.Root {
		case blk:
			keyBlocked = k
		case bh:
			keyHole = k
		}
	}
	_, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(keyBlocked), Value: []byte("v")})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("write to a blocked tree: %v, want FailedPrecondition", err)
	}
	if _, err := s.nodes[0].data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(keyBlocked)}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("read of a blocked tree: %v, want FailedPrecondition", err)
	}
	r, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(keyHole), Value: []byte("v")})
	if err != nil || r.Replicas != 0 {
		t.Fatalf("write to a black hole: %v %v, want accepted with 0 replicas", r, err)
	}
	for i := range 3 {
		leaf := leafOf(m, root1, s.cfgs[i].NodeID)
		g, err := s.nodes[i].data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(keyHole), Shard: leaf})
		if status.Code(err) != codes.NotFound || leaf == "" {
			t.Fatalf("black-holed write on replica %d (%q): %v %v", i, leaf, g, err)
		}
	}
}

func TestClientFailsOver(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	c, err := client.Dial([]string{s.cfgs[0].GRPCAddr, s.cfgs[1].GRPCAddr, s.cfgs[2].GRPCAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("a"), Value: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	if err := s.nodes[0].stop(); err != nil {
		t.Fatal(err)
	}
	s.nodes[0] = nil
	if _, err := c.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("b"), Value: []byte("2")}); err != nil {
		t.Fatalf("put with the first node down: %v", err)
	}
	// With consistency ONE a read may reach a replica the write has not
	// reached yet, so the reads wait for the deliveries.
	for _, k := range []string{"a", "b"} {
		waitFor(t, 10*time.Second, func() error {
			_, err := c.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(k)})
			return err
		})
	}
}

// TestNodeRestartsOnNewAddresses restarts a node on other ports: it asks
// the site to update its addresses (raft and map) and is reachable again.
func TestNodeRestartsOnNewAddresses(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	if err := s.nodes[2].stop(); err != nil {
		t.Fatal(err)
	}
	cfg := s.cfgs[2]
	cfg.GRPCAddr, cfg.RaftAddr = "", testnet.Addr(t)
	s.nodes[2] = startNode(t, cfg)
	newAddr := s.nodes[2].n.GRPCAddr()
	if newAddr == s.cfgs[2].GRPCAddr {
		t.Fatalf("restarted on the same address %s", newAddr)
	}
	waitFor(t, 20*time.Second, func() error {
		if got := s.nodes[0].n.ns.Map().Nodes["node-2"]; got.GRPCAddr != newAddr || got.RaftAddr != cfg.RaftAddr {
			return fmt.Errorf("map lists node-2 at %+v", got)
		}
		return nil
	})
	r, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("moved"), Value: []byte("v"), Consistency: pb.Consistency_CONSISTENCY_ALL})
	if err != nil || r.Acked != 3 {
		t.Fatalf("ALL write after node-2 moved: %v %v", r, err)
	}
	// node-2 is still a raft member at its new address: a change commits
	// and reaches it.
	s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "after_move", Kind: gizzard.TableContent}}}})
}

// TestExportCopiesAShardBetweenNodes copies a physical shard from node-0 to
// a new shard on node-1 page by page (ShardAdmin.ExportPage, then
// Replica.Apply) and checks that the copy is digest-equal.
func TestExportCopiesAShardBetweenNodes(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	for i := range 300 {
		if _, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(fmt.Sprint("k", i)), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if _, err := s.nodes[0].data.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: uint64(1 + i%7), Payload: []byte("p")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.nodes[0].data.Delete(ctx, &pb.DeleteRequest{Table: "statuses", Key: []byte("k1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.nodes[1].admin.CreateShard(ctx, &pb.CreateShardRequest{Name: "copy"}); err != nil {
		t.Fatal(err)
	}
	replica := pb.NewReplicaClient(s.nodes[1].conn)
	var after []byte
	for {
		page, err := s.nodes[0].admin.ExportPage(ctx, &pb.ExportPageRequest{Shard: "default-000", After: after, Limit: 50})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page.Mutations {
			m.Shard = "copy"
		}
		if len(page.Mutations) > 0 {
			if _, err := replica.Apply(ctx, &pb.ApplyRequest{Mutations: page.Mutations}); err != nil {
				t.Fatal(err)
			}
		}
		if page.Done {
			break
		}
		after = page.Next
	}
	src, err := s.nodes[0].admin.DigestShard(ctx, &pb.DigestShardRequest{Name: "default-000"})
	if err != nil {
		t.Fatal(err)
	}
	dst, err := s.nodes[1].admin.DigestShard(ctx, &pb.DigestShardRequest{Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	if src.SumHex != dst.SumHex || src.Records == 0 {
		t.Fatalf("copy digest %s (%d records), source %s (%d records)", dst.SumHex, dst.Records, src.SumHex, src.Records)
	}
}

// TestSiteStateRefusesWrites: while the map lists the node's site in a
// state other than active, its clients' writes are refused with
// FailedPrecondition naming the site to use, at every node; writes from
// other sites still apply; active again, writes succeed.
func TestSiteStateRefusesWrites(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	local := s.nodes[0].n.ns.Map().Sites[s.nodes[0].n.cfg.SiteName]
	other := gizzard.Site{Name: "b", ID: local.ID + 1, NATSURL: "nats://127.0.0.1:4222"}
	s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpAddSite, Site: &other}}})
	for _, st := range []gizzard.SiteState{gizzard.SiteDraining, gizzard.SiteFenced, gizzard.SiteRecovering} {
		fenced := local
		fenced.State, fenced.Use = st, "b"
		s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &fenced}}})
		for i, tn := range s.nodes {
			// A draining site holds a write until its deadline (or the
			// map moves on), then refuses it.
			pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			_, err := tn.data.Put(pctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")})
			cancel()
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("%s: put at node %d: %v, want FailedPrecondition", st, i, err)
			}
			r, ok := client.ParseSiteRefusal(err)
			if !ok || r.Site != local.Name || r.State != string(st) || r.Use != "b" {
				t.Fatalf("%s: refusal %+v (%v) from %v", st, r, ok, err)
			}
			if !strings.Contains(err.Error(), `write to site "b"`) {
				t.Fatalf("%s: the message does not name the site to use: %v", st, err)
			}
			// So is a write on a stream: held no longer than its writer
			// waits, its refusal arrives in time.
			c, err := client.Dial([]string{tn.n.GRPCAddr()})
			if err != nil {
				t.Fatal(err)
			}
			ws := c.Stream()
			pctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
			_, err = ws.Put(pctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")})
			cancel()
			_ = ws.Close()
			_ = c.Close()
			if r, ok := client.ParseSiteRefusal(err); !ok || r.Use != "b" {
				t.Fatalf("%s: stream put at node %d: %v, want a refusal naming b", st, i, err)
			}
		}
		// A write another site accepted is applied all the same.
		mut := shard.Mutation{Op: shard.OpPut, Table: "statuses", Key: []byte("remote-" + string(st)), Value: []byte("r"), Version: shard.Version{HLC: s.nodes[0].n.hlc.Now(), Site: other.ID}}
		if _, err := s.nodes[0].n.router.WriteRemote(ctx, []shard.Mutation{mut}, router.All, router.Origin{Site: other.ID, Node: "b-0", Seq: 1}, nil); err != nil {
			t.Fatalf("%s: remote write: %v", st, err)
		}
	}
	local.State = gizzard.SiteActive
	s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &local}}})
	if _, err := s.nodes[1].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("put once active again: %v", err)
	}

	// Held while draining, a write goes on when the site is fenced
	// (refused, naming the site to use) or active again (applied).
	for _, next := range []gizzard.SiteState{gizzard.SiteFenced, gizzard.SiteActive} {
		draining := local
		draining.State, draining.Use = gizzard.SiteDraining, "b"
		s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &draining}}})
		held := make(chan error, 1)
		go func() {
			_, err := s.nodes[2].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("held-" + string(next)), Value: []byte("v")})
			held <- err
		}()
		waitFor(t, 10*time.Second, func() error {
			if n := s.nodes[2].n.router.Held(); n < 1 {
				return fmt.Errorf("%d writes held", n)
			}
			return nil
		})
		select {
		case err := <-held:
			t.Fatalf("a write at a draining site returned %v before the map moved on", err)
		default:
		}
		after := local
		after.State = next
		if next != gizzard.SiteActive {
			after.Use = "b"
		}
		s.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &after}}})
		err := <-held
		if r, ok := client.ParseSiteRefusal(err); next == gizzard.SiteFenced && (!ok || r.State != "fenced" || r.Use != "b") {
			t.Fatalf("held write, then fenced: %v", err)
		}
		if next == gizzard.SiteActive && err != nil {
			t.Fatalf("held write, then active: %v", err)
		}
	}
}

// TestStartRecovering: a node started recovering refuses its clients'
// writes, as recovering, while its map says its site is active; once the
// map has listed the site recovering, the map decides (active: writes).
func TestStartRecovering(t *testing.T) {
	tn := startNode(t, Config{NodeID: "node-0", StartRecovering: true})
	ctx := t.Context()
	put := func() error {
		_, err := tn.data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")})
		return err
	}
	if r, ok := client.ParseSiteRefusal(put()); !ok || r.State != string(gizzard.SiteRecovering) {
		t.Fatalf("a node started recovering took a write (refusal %+v, %v)", r, ok)
	}
	self := tn.n.ns.Map().Sites[tn.n.cfg.SiteName]
	for _, st := range []gizzard.SiteState{gizzard.SiteRecovering, gizzard.SiteActive} {
		self.State = st
		b, _ := json.Marshal(gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &self}}})
		r, err := tn.ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: b})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() error {
			if v := tn.n.routedVersion.Load(); v < r.Version {
				return fmt.Errorf("at version %d, want %d", v, r.Version)
			}
			return nil
		})
	}
	if err := put(); err != nil {
		t.Fatalf("recovering, then active: %v", err)
	}
}

// hedgeSite is a 3-node site whose every tree has a replica on each node,
// holding keys h0..h29, where node-1 holds every read of its replicas
// until the test ends (held counts them).
func hedgeSite(t *testing.T) (s *site, held *atomic.Int32) {
	s = newSite(t, func(c *Config) { c.ReplicaTimeout = time.Minute })
	ctx := t.Context()
	for i := range 30 {
		if _, err := s.nodes[0].data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: fmt.Appendf(nil, "h%d", i), Value: []byte("v"),
			Consistency: pb.Consistency_CONSISTENCY_ALL}); err != nil {
			t.Fatal(err)
		}
	}
	release := make(chan struct{})
	held = new(atomic.Int32)
	hook := func(node string) {
		if node == "node-1" {
			held.Add(1)
			<-release
		}
	}
	testHookNamedGet.Store(&hook)
	t.Cleanup(func() {
		close(release)
		testHookNamedGet.Store(nil)
	})
	return s, held
}

// hedgedGet reads key hi through node-0. Without hedging, a read that
// asked node-1 first would wait the replica timeout, a minute: past its
// deadline.
func hedgedGet(t *testing.T, s *site, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	g, err := s.nodes[0].data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: fmt.Appendf(nil, "h%d", i%30)})
	if err != nil || string(g.Value) != "v" {
		t.Fatalf("read %d with node-1 not answering: %v %v", i, g, err)
	}
}

// TestReadsHedged: a routed read whose replica does not answer is also
// sent to the next replica after the hedge delay, long before the
// replica timeout, and answered from it.
func TestReadsHedged(t *testing.T) {
	s, held := hedgeSite(t)
	for i := range 30 {
		hedgedGet(t, s, i)
	}
	if held.Load() == 0 {
		t.Fatal("no read asked node-1: the test proved nothing")
	}
	var m dto.Metric
	if err := s.nodes[0].n.metrics.readHedges.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got < 1 {
		t.Fatalf("aviary_node_read_hedges_total = %v after %d reads asked node-1", got, held.Load())
	}
	// The reads node-1 lost were cancelled, not judged: it is not taken
	// for down (its replica timeout, a minute, has not passed).
	if d := s.nodes[0].n.router.NodesDown([]gizzard.Leaf{{Node: "node-1"}}); len(d) == 1 && d[0] {
		t.Fatal("node-1 taken for down by the reads it lost to a hedge")
	}
}
