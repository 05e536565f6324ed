package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/internal/tltest"
)

// fanoutPartitions is the nodes' default --fanout-partitions.
const fanoutPartitions = 16

// tlSite is a 3-node site of real processes, all with the timeline role,
// with a Timelines client per node.
type tlSite struct {
	nodes []*siteNode
	tl    []pb.TimelinesClient
}

// startTimelineSite starts a site like startSite, with the given timeline
// capacity and a celebrity threshold no author reaches (everything is
// pushed).
func startTimelineSite(t *testing.T, capacity int, extra ...string) *tlSite {
	t.Helper()
	dir := t.TempDir()
	ts := &tlSite{tl: make([]pb.TimelinesClient, 3)}
	for i := range 3 {
		s := &siteNode{id: fmt.Sprintf("node-%d", i), dir: filepath.Join(dir, fmt.Sprint(i)), worker: i,
			grpc: testnet.Addr(t), http: testnet.Addr(t), raft: testnet.Addr(t),
			extra: append([]string{"--timeline-capacity", fmt.Sprint(capacity), "--celebrity-followers", "1000"}, extra...)}
		if i > 0 {
			s.join = ts.nodes[0].grpc
		}
		s.start(t)
		ts.nodes = append(ts.nodes, s)
	}
	// Once every node routes with the replicated map, it has installed that
	// map's timeline nodes (all three) on its rings.
	replicateEverywhere(t, ts.nodes)
	for i := range ts.nodes {
		ts.dial(t, i)
	}
	return ts
}

// dial (re)creates node i's Timelines client, after a (re)start.
func (ts *tlSite) dial(t *testing.T, i int) {
	t.Helper()
	cc, err := netx.Dial(ts.nodes[i].grpc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ts.tl[i] = pb.NewTimelinesClient(cc)
}

// poll calls f until it returns nil, failing the test at the deadline.
func poll(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// waitFanout waits until every fan-out queue partition of site 0 is empty.
func (ts *tlSite) waitFanout(t *testing.T) {
	t.Helper()
	poll(t, 30*time.Second, func() error {
		return tltest.FanoutPending(t.Context(), ts.nodes[0].data, 0, fanoutPartitions)
	})
}

// tlGraph is a follow graph and the acknowledged posts of a test.
type tlGraph struct{ *tltest.Graph }

// postedGraph builds a Zipf follow graph of users with up to follows
// follows each on the site (seeded by testSeed), posts on it, and waits
// until the posts are fanned out. It returns the random source for more.
func (ts *tlSite) postedGraph(t *testing.T, users, follows, posts int) (tlGraph, *rand.Rand) {
	t.Helper()
	r := rand.New(rand.NewPCG(testSeed(t), 0))
	g := tlGraph{tltest.Zipf(r, users, follows)}
	g.build(t, ts, r, posts)
	ts.waitFanout(t)
	return g, r
}

// overflowing counts the timelines with more entries than capacity.
func (g tlGraph) overflowing(capacity int) int {
	n := 0
	for u := uint64(1); u <= uint64(g.Users); u++ {
		if len(g.All(u)) > capacity {
			n++
		}
	}
	return n
}

// build writes the follows, creates every timeline (a first read rebuilds
// it: empty), and posts statuses by random authors, all through random
// nodes.
func (g tlGraph) build(t *testing.T, ts *tlSite, r *rand.Rand, posts int) {
	t.Helper()
	ctx := t.Context()
	for u := uint64(1); u <= uint64(g.Users); u++ {
		for _, f := range g.Following[u] {
			if _, err := ts.tl[r.IntN(3)].Follow(ctx, &pb.FollowRequest{FollowerId: u, FolloweeId: f}); err != nil {
				t.Fatalf("follow %d -> %d: %v", u, f, err)
			}
		}
	}
	for u := uint64(1); u <= uint64(g.Users); u++ {
		if _, err := ts.tl[r.IntN(3)].Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u}}}); err != nil {
			t.Fatalf("first read of %d: %v", u, err)
		}
	}
	for range posts {
		a := uint64(r.IntN(g.Users)) + 1
		resp, err := ts.tl[r.IntN(3)].Post(ctx, &pb.PostRequest{AuthorId: a, Flags: 7})
		if err != nil {
			t.Fatalf("post by %d: %v", a, err)
		}
		g.Posts[a] = append(g.Posts[a], resp.StatusId)
	}
}

// replicaCopies reads every user's timeline from node i's memory only.
func (ts *tlSite) replicaCopies(ctx context.Context, i, users, capacity int) ([]*pb.ReplicaTimeline, error) {
	req := &pb.ReplicaReadRequest{}
	for u := 1; u <= users; u++ {
		req.Queries = append(req.Queries, &pb.TimelineQuery{Owner: uint64(u), Limit: int32(capacity)})
	}
	rr, err := ts.tl[i].ReplicaRead(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(rr.Results) != users {
		return nil, fmt.Errorf("node-%d answered %d of %d timelines", i, len(rr.Results), users)
	}
	return rr.Results, nil
}

// checkReplicas checks that every node holds every timeline, bounded,
// without duplicates, and that the three copies are identical.
func (g tlGraph) checkReplicas(t *testing.T, ts *tlSite, capacity int) {
	t.Helper()
	// Replicas a rebuild or a push could not reach are repaired in the
	// background: they converge, so wait for it.
	poll(t, 30*time.Second, func() error { return g.replicasAgree(t, ts, capacity) })
}

// replicasAgree says how the replicas' copies of every timeline differ, if
// they do.
func (g tlGraph) replicasAgree(t *testing.T, ts *tlSite, capacity int) error {
	var copies [][]*pb.ReplicaTimeline
	for i := range ts.nodes {
		c, err := ts.replicaCopies(t.Context(), i, g.Users, capacity)
		if err != nil {
			return err
		}
		copies = append(copies, c)
	}
	for u := range g.Users {
		for i, c := range copies {
			rt := c[u]
			if !rt.Held {
				return fmt.Errorf("timeline %d is not held on node-%d", u+1, i)
			}
			ids := tltest.StatusIDs(rt.Entries)
			if len(ids) > capacity || int(rt.Length) > capacity {
				t.Fatalf("timeline %d on node-%d holds %d entries (length %d), capacity %d", u+1, i, len(ids), rt.Length, capacity)
			}
			if len(slices.Compact(slices.Clone(ids))) != len(ids) {
				t.Fatalf("timeline %d on node-%d holds a status twice: %v", u+1, i, ids)
			}
			if first := tltest.StatusIDs(copies[0][u].Entries); !slices.Equal(first, ids) {
				return fmt.Errorf("timeline %d: replicas differ:\nnode-0: %v\nnode-%d: %v", u+1, first, i, ids)
			}
		}
	}
	return nil
}

// checkReads reads every timeline through node i and compares it with the
// graph.
func (g tlGraph) checkReads(t *testing.T, ts *tlSite, i, capacity int) {
	t.Helper()
	for u := uint64(1); u <= uint64(g.Users); u++ {
		resp, err := ts.tl[i].Read(t.Context(), &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u, Limit: int32(capacity)}}})
		if err != nil {
			t.Fatalf("read %d through node-%d: %v", u, i, err)
		}
		if got, want := tltest.StatusIDs(resp.Results[0].Entries), g.Expected(u, capacity); !slices.Equal(got, want) {
			t.Fatalf("timeline %d through node-%d: got %d entries %v\nwant %d %v", u, i, len(got), got, len(want), want)
		}
	}
}

// TestTimelineKillOneNodeUnderReads SIGKILLs one of three timeline node
// processes while reads run through the other two: no read fails or is
// wrong. The restarted node (its memory empty) is refilled from its
// siblings, serves the expected timelines, and agrees with them.
func TestTimelineKillOneNodeUnderReads(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	const capacity, users = 12, 60
	ts := startTimelineSite(t, capacity)
	g, r := ts.postedGraph(t, users, 5, 150)
	t.Logf("%d of %d timelines have more than %d entries", g.overflowing(capacity), users, capacity)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var reads, failed, wrong atomic.Int64
	var firstErr, firstWrong atomic.Value
	var wg sync.WaitGroup
	readSeed := r.Uint64() // the readers' sources, from the test's seed
	for w := range 4 {
		rr := rand.New(rand.NewPCG(readSeed, uint64(w)+1))
		c := ts.tl[w%2] // node-0 and node-1 stay up
		wg.Go(func() {
			for ctx.Err() == nil {
				u := uint64(rr.IntN(users)) + 1
				resp, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u, Limit: capacity}}})
				if ctx.Err() != nil {
					return
				}
				reads.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("timeline %d through node-%d: %v", u, w%2, err))
					continue
				}
				if got, want := tltest.StatusIDs(resp.Results[0].Entries), g.Expected(u, capacity); !slices.Equal(got, want) {
					wrong.Add(1)
					firstWrong.CompareAndSwap(nil, fmt.Sprintf("timeline %d through node-%d (answered by %q): got %v, want %v",
						u, w%2, resp.Results[0].Node, got, want))
				}
			}
		})
	}
	poll(t, 30*time.Second, func() error {
		if n := reads.Load(); n < 200 {
			return fmt.Errorf("%d reads before the kill", n)
		}
		return nil
	})
	ts.nodes[2].p.kill()
	killed, before := time.Now(), reads.Load()
	t.Logf("killed node-2 with SIGKILL after %d reads", before)
	// Read on for a while after the kill: past the 1s for which a failed
	// replica is asked last, so node-2 is tried and fails again.
	poll(t, 60*time.Second, func() error {
		if n := reads.Load() - before; n < 1000 || time.Since(killed) < 3*time.Second {
			return fmt.Errorf("%d reads in %v since the kill", n, time.Since(killed).Round(time.Millisecond))
		}
		return nil
	})
	cancel()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d reads failed with node-2 killed; first: %v", n, reads.Load(), firstErr.Load())
	}
	if n := wrong.Load(); n > 0 {
		t.Errorf("%d of %d reads answered a wrong timeline; first: %v", n, reads.Load(), firstWrong.Load())
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d reads, none failed or wrong, %d of them in %v after the kill",
		reads.Load(), reads.Load()-before, time.Since(killed).Round(time.Millisecond))

	// Restart node-2 at the same addresses: its memory is empty until its
	// siblings refill it.
	restarted := time.Now()
	ts.nodes[2].start(t)
	ts.dial(t, 2)
	poll(t, 30*time.Second, func() error {
		c, err := ts.replicaCopies(t.Context(), 2, users, capacity)
		if err != nil {
			return err
		}
		held := 0
		for _, rt := range c {
			if rt.Held {
				held++
			}
		}
		if held < users {
			return fmt.Errorf("node-2 holds %d of %d timelines", held, users)
		}
		return nil
	})
	t.Logf("node-2 refilled %v after its restart", time.Since(restarted).Round(time.Millisecond))
	g.checkReads(t, ts, 2, capacity)
	g.checkReplicas(t, ts, capacity)
}

// TestTimelineHungNode stops one of three timeline node processes with
// SIGSTOP (a node that hangs, rather than refusing connections, as a
// killed one does) while posts are made through the other two. The
// fan-out goes on delivering them to the replicas that answer: a batch
// does not wait out a call timeout for the hung node, and while a push to
// it is out to see whether it answers, the others skip it. Reads through
// the other two see every post. After SIGCONT the stopped node's replicas
// are repaired and agree with their siblings.
func TestTimelineHungNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	ts, _ := testTimelineHungNode(t)
	// Its repairs sufficed: the queue (4096) held them, and it was stopped
	// for far less than they are retried (about two minutes).
	if n := sums(t, ts.nodes[:2], `aviary_timeline_catchups_total{outcome="done"}`)[0]; n != 0 {
		t.Errorf("node-2 was caught up whole %v times: its repairs should have sufficed", n)
	}
}

// TestTimelineHungNodeCaughtUp is TestTimelineHungNode with repair queues
// far too short for what node-2 misses while it is stopped: the other
// nodes mark it behind, and once it answers they catch it up whole from
// its siblings. Without that, the repairs dropped would leave it serving
// stale timelines for good.
func TestTimelineHungNodeCaughtUp(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	ts, g := testTimelineHungNode(t, "--timeline-repair-queue", "1")
	// The replicas may agree before the catch-up that made them agree has
	// counted itself done.
	poll(t, 30*time.Second, func() error {
		if n := sums(t, ts.nodes[:2], "aviary_timeline_nodes_behind")[0]; n > 0 {
			return fmt.Errorf("node-0 and node-1 still hold %v node(s) behind", n)
		}
		return nil
	})
	// Node-2 answers its reads from its own memory first: it serves what
	// the index says, not what it held when it was stopped.
	g.checkReads(t, ts, 2, hungCapacity)
	s := sums(t, ts.nodes[:2], `aviary_timeline_repairs_total{outcome="dropped"}`, `aviary_timeline_catchups_total{outcome="done"}`,
		`aviary_timeline_catchups_total{outcome="again"}`, `aviary_timeline_catchups_total{outcome="failed"}`)
	t.Logf("%.0f repairs dropped; catch-ups: %.0f done, %.0f again, %.0f failed", s[0], s[1], s[2], s[3])
	if s[0] == 0 || s[1] == 0 {
		t.Errorf("the test did not overflow the repair queues (%v dropped) and catch node-2 up (%v catch-ups)", s[0], s[1])
	}
}

// hungCapacity is the timeline capacity of testTimelineHungNode's site.
const hungCapacity = 12

func testTimelineHungNode(t *testing.T, extra ...string) (*tlSite, tlGraph) {
	const capacity, users = hungCapacity, 40
	ts := startTimelineSite(t, capacity, extra...)
	g, r := ts.postedGraph(t, users, 5, 50)
	resume := ts.nodes[2].p.pause()
	defer resume()
	stopped := time.Now()
	// Two rounds: the first finds node-2 hung (its pushes time out), the
	// second finds it taken for down (one push probes it, the others
	// skip it). Each round's calls are bounded, so that a stall fails the
	// test rather than hangs it.
	for round := range 2 {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		for range 100 {
			a := uint64(r.IntN(g.Users)) + 1
			resp, err := ts.tl[r.IntN(2)].Post(ctx, &pb.PostRequest{AuthorId: a, Flags: 7})
			if err != nil {
				t.Fatalf("post by %d with node-2 stopped: %v", a, err)
			}
			g.Posts[a] = append(g.Posts[a], resp.StatusId)
		}
		// Unbounded, a push to the hung node would wait out the 30s call
		// timeout, batch after batch: 20s a round is far beyond what the
		// fan-out needs with it bounded (--replica-timeout 2s) and then
		// skipped.
		poll(t, 20*time.Second, func() error {
			return tltest.FanoutPending(ctx, ts.nodes[0].data, 0, fanoutPartitions)
		})
		t.Logf("round %d: 100 posts fanned out %v after node-2 stopped", round+1, time.Since(stopped).Round(time.Millisecond))
	}
	skipped := sums(t, ts.nodes[:2], "aviary_timeline_pushes_skipped_total")[0]
	t.Logf("%.0f pushes to node-2 skipped", skipped)
	if skipped == 0 {
		t.Error("no push to the hung node was skipped: each waited for it")
	}
	// (Timeline reads hedge to the next replica: they do not wait for
	// node-2.)
	g.checkReads(t, ts, 0, capacity)
	g.checkReads(t, ts, 1, capacity)
	resume()
	g.checkReplicas(t, ts, capacity)
	return ts, g
}

// TestTimelineKillAllReplicasRebuilt SIGKILLs all three node processes, so
// that no replica of any timeline survives, restarts them, and checks that
// reads rebuild every timeline from the index exactly as the acknowledged
// posts and follows say, and install it on every replica.
func TestTimelineKillAllReplicasRebuilt(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	const capacity, users = 12, 40
	ts := startTimelineSite(t, capacity)
	g, r := ts.postedGraph(t, users, 5, 100)
	t.Logf("%d of %d timelines have more than %d entries", g.overflowing(capacity), users, capacity)

	for _, s := range ts.nodes {
		s.p.kill()
	}
	// All at once: a lone raft voter of three cannot elect a leader, so a
	// node does not become ready before a second one runs.
	var wg sync.WaitGroup
	for _, s := range ts.nodes {
		wg.Go(func() { s.start(t) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i := range ts.nodes {
		ts.dial(t, i)
	}
	ctx := t.Context()
	for i := range ts.nodes {
		c, err := ts.replicaCopies(ctx, i, users, capacity)
		if err != nil {
			t.Fatal(err)
		}
		for _, rt := range c {
			if rt.Held {
				t.Fatalf("node-%d holds timeline %d after all nodes were killed: %v", i, rt.Owner, tltest.StatusIDs(rt.Entries))
			}
		}
	}
	// The first read of each timeline, through a random node, rebuilds it.
	order := r.Perm(users)
	for _, k := range order {
		u, i := uint64(k+1), r.IntN(3)
		resp, err := ts.tl[i].Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u, Limit: capacity}}})
		if err != nil {
			t.Fatalf("first read of %d through node-%d: %v", u, i, err)
		}
		res := resp.Results[0]
		if !res.Rebuilt {
			t.Fatalf("first read of timeline %d through node-%d was not rebuilt: answered by %q", u, i, res.Node)
		}
		if got, want := tltest.StatusIDs(res.Entries), g.Expected(u, capacity); !slices.Equal(got, want) {
			t.Fatalf("rebuilt timeline %d: got %d entries %v\nwant %d %v", u, len(got), got, len(want), want)
		}
	}
	g.checkReplicas(t, ts, capacity)
	g.checkReads(t, ts, 0, capacity)
}
