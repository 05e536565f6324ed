package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/tltest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// timelineSite is a 3-node site whose nodes all have the timeline role.
func timelineSite(t *testing.T, capacity, celebrity int) *site {
	t.Helper()
	s := newSite(t, func(c *Config) {
		c.Timeline = true
		c.Timelines = TimelineConfig{Capacity: capacity, CelebrityFollowers: celebrity, FanoutPartitions: 4}
	})
	for _, tn := range s.nodes {
		waitFor(t, 10*time.Second, func() error {
			if n := len(tn.n.timelines.RingNodes()); n != 3 {
				return fmt.Errorf("%s sees %d timeline nodes", tn.n.cfg.NodeID, n)
			}
			return nil
		})
	}
	return s
}

func (s *site) timelines(i int) pb.TimelinesClient { return pb.NewTimelinesClient(s.nodes[i].conn) }

// graph is a follow graph and the posts of a test.
type graph struct{ *tltest.Graph }

// postedGraph builds a Zipf follow graph of users with up to follows
// follows each on the site (randomly seeded, the seed logged), posts on it,
// and waits until the posts are fanned out.
func (s *site) postedGraph(t *testing.T, users, follows, posts int) graph {
	t.Helper()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	g := graph{tltest.Zipf(r, users, follows)}
	g.build(t, s, r, posts)
	s.waitFanout(t, 4)
	return g
}

// waitFanout waits until every fan-out queue partition of site 0 is empty.
func (s *site) waitFanout(t *testing.T, partitions int) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		return tltest.FanoutPending(t.Context(), s.nodes[0].data, 0, partitions)
	})
}

// build writes the graph's follows, creates every home timeline (a first
// read rebuilds it: empty), and posts `posts` statuses by random authors,
// through random nodes.
func (g graph) build(t *testing.T, s *site, r *rand.Rand, posts int) {
	t.Helper()
	ctx := t.Context()
	for u, fs := range g.Following {
		for _, f := range fs {
			if _, err := s.timelines(r.IntN(3)).Follow(ctx, &pb.FollowRequest{FollowerId: u, FolloweeId: f}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for u := uint64(1); u <= uint64(g.Users); u++ {
		if _, err := s.timelines(r.IntN(3)).Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u}}}); err != nil {
			t.Fatal(err)
		}
	}
	for range posts {
		a := uint64(r.IntN(g.Users)) + 1
		resp, err := s.timelines(r.IntN(3)).Post(ctx, &pb.PostRequest{AuthorId: a, Flags: 7})
		if err != nil {
			t.Fatal(err)
		}
		g.Posts[a] = append(g.Posts[a], resp.StatusId)
	}
}

// check reads every home timeline through node i and compares it with the
// graph; with replicas, it also compares the three replicas' copies.
func (g graph) check(t *testing.T, s *site, i, capacity int, replicas bool) {
	t.Helper()
	ctx := t.Context()
	for u := uint64(1); u <= uint64(g.Users); u++ {
		// Packed first: after a restart it is the read that rebuilds.
		q := []*pb.TimelineQuery{{Owner: u, Limit: int32(capacity)}}
		packed, err := s.timelines(i).Read(ctx, &pb.ReadRequest{Queries: q, Packed: true})
		if err != nil {
			t.Fatalf("packed read %d: %v", u, err)
		}
		resp, err := s.timelines(i).Read(ctx, &pb.ReadRequest{Queries: q})
		if err != nil {
			t.Fatalf("read %d: %v", u, err)
		}
		if got, want := tltest.StatusIDs(resp.Results[0].Entries), g.Expected(u, capacity); !slices.Equal(got, want) {
			t.Fatalf("timeline %d: got %d entries %v\nwant %d %v", u, len(got), got, len(want), want)
		}
		if err := samePacked(resp.Results[0].Entries, packed.Results[0]); err != nil {
			t.Fatalf("timeline %d: %v", u, err)
		}
		if !replicas {
			continue
		}
		var copies [][]uint64
		for j := range s.nodes {
			rr, err := s.timelines(j).ReplicaRead(ctx, &pb.ReplicaReadRequest{Queries: []*pb.TimelineQuery{{Owner: u, Limit: int32(capacity)}}})
			if err != nil {
				t.Fatal(err)
			}
			if !rr.Results[0].Held {
				t.Fatalf("timeline %d is not held on node %d", u, j)
			}
			ids := tltest.StatusIDs(rr.Results[0].Entries)
			if len(ids) > capacity {
				t.Fatalf("timeline %d on node %d holds %d entries, capacity %d", u, j, len(ids), capacity)
			}
			if len(slices.Compact(slices.Clone(ids))) != len(ids) {
				t.Fatalf("timeline %d on node %d holds a status twice: %v", u, j, ids)
			}
			copies = append(copies, ids)
		}
		for j := 1; j < len(copies); j++ {
			if !slices.Equal(copies[0], copies[j]) {
				t.Fatalf("timeline %d: replicas differ:\nnode 0: %v\nnode %d: %v", u, copies[0], j, copies[j])
			}
		}
	}
}

// TestTimelineFanoutZipf posts over a Zipf follow graph and checks that
// every post is on every follower's timeline exactly once, newest first,
// bounded; the most followed authors pass the celebrity threshold and are
// merged in at read time.
func TestTimelineFanoutZipf(t *testing.T) {
	const capacity, users = 30, 120
	s := timelineSite(t, capacity, 40)
	g := s.postedGraph(t, users, 8, 400)
	celebs := 0
	for _, tn := range s.nodes {
		celebs = max(celebs, tn.n.timelines.Celebrities())
	}
	if celebs == 0 {
		t.Errorf("no author passed the celebrity threshold: the graph does not test the read-time merge")
	}
	g.check(t, s, 1, capacity, true)
}

// TestTimelineNodeDownUnderReads stops one of three timeline nodes while
// reads run through the others: no read fails. After it restarts (empty)
// it is refilled from its siblings and agrees with them.
func TestTimelineNodeDownUnderReads(t *testing.T) {
	const capacity, users = 20, 60
	s := timelineSite(t, capacity, 1000)
	g := s.postedGraph(t, users, 5, 150)

	ctx, cancel := context.WithCancel(t.Context())
	var reads, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			c := s.timelines(w % 2) // nodes 0 and 1 stay up
			for i := 0; ctx.Err() == nil; i++ {
				u := uint64(i*7+w)%users + 1
				_, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: u}}})
				if ctx.Err() != nil {
					return
				}
				reads.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	waitFor(t, 10*time.Second, func() error {
		if reads.Load() < 200 {
			return errors.New("warming up")
		}
		return nil
	})
	if err := s.nodes[2].stop(); err != nil {
		t.Fatal(err)
	}
	before := reads.Load()
	waitFor(t, 20*time.Second, func() error {
		if reads.Load() < before+500 {
			return fmt.Errorf("%d reads since the stop", reads.Load()-before)
		}
		return nil
	})
	cancel()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d reads failed with a node down; first: %v", n, reads.Load(), firstErr.Load())
	}
	t.Logf("%d reads, none failed, %d of them with node-2 down", reads.Load(), reads.Load()-before)

	// Restart node-2 (its memory is empty) and wait for its refill.
	s.nodes[2] = startNode(t, s.cfgs[2])
	waitFor(t, 20*time.Second, func() error {
		if got := s.nodes[2].n.timelines.Held(); got < users {
			return fmt.Errorf("node-2 holds %d of %d timelines", got, users)
		}
		return nil
	})
	g.check(t, s, 2, capacity, true)
}

// TestTimelineRebuiltFromIndex loses every replica of every timeline (all
// three nodes restart with empty memory) and checks that reads rebuild them
// from the index as it says they are.
func TestTimelineRebuiltFromIndex(t *testing.T) {
	const capacity, users = 25, 60
	s := timelineSite(t, capacity, 1000)
	g := s.postedGraph(t, users, 6, 200)
	for i := range s.nodes {
		if err := s.nodes[i].stop(); err != nil {
			t.Fatal(err)
		}
	}
	// All at once: a lone voter of three cannot elect a leader.
	for i := range s.nodes {
		s.nodes[i] = launchNode(t, s.cfgs[i])
	}
	for _, tn := range s.nodes {
		tn.waitServing(t)
	}
	for _, tn := range s.nodes {
		if n := tn.n.timelines.Held(); n != 0 {
			t.Fatalf("%s holds %d timelines after a restart", tn.n.cfg.NodeID, n)
		}
	}
	resp, err := s.timelines(0).Read(t.Context(), &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Results[0].Rebuilt {
		t.Fatalf("timeline 1 was not rebuilt: answered by %q", resp.Results[0].Node)
	}
	g.check(t, s, 0, capacity, true)
}

func TestTimelineBadInput(t *testing.T) {
	s := timelineSite(t, 20, 1000)
	c := s.timelines(0)
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"read nothing", func() error { _, err := c.Read(ctx, &pb.ReadRequest{}); return err }},
		{"read owner 0", func() error {
			_, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: 0}}})
			return err
		}},
		{"read past capacity", func() error {
			_, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: 1, Limit: 21}}})
			return err
		}},
		{"post without author", func() error { _, err := c.Post(ctx, &pb.PostRequest{}); return err }},
		{"follow self", func() error { _, err := c.Follow(ctx, &pb.FollowRequest{FollowerId: 3, FolloweeId: 3}); return err }},
		{"push without entry", func() error { _, err := c.Push(ctx, &pb.PushRequest{Owners: []uint64{1}}); return err }},
		{"push to owner 0", func() error {
			_, err := c.Push(ctx, &pb.PushRequest{Entry: &pb.TimelineEntry{StatusId: 1}, Owners: []uint64{0}})
			return err
		}},
		{"remove status 0", func() error { _, err := c.Remove(ctx, &pb.TimelineRemoveRequest{Owners: []uint64{1}}); return err }},
		{"merge owner 0", func() error {
			_, err := c.ReplicaMerge(ctx, &pb.ReplicaMergeRequest{Timelines: []*pb.ReplicaTimeline{{}}})
			return err
		}},
	} {
		err := tc.call()
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() == "" {
			t.Errorf("%s: got %v, want InvalidArgument with a message", tc.name, err)
		}
	}
}

// samePacked reports how a packed result differs from entries, if it does.
func samePacked(entries []*pb.TimelineEntry, r *pb.TimelineResult) error {
	if len(r.Entries) != 0 {
		return fmt.Errorf("packed result has %d entries, want none", len(r.Entries))
	}
	if len(r.StatusIds) != len(entries) || len(r.AuthorIds) != len(entries) || len(r.Flags) != len(entries) {
		return fmt.Errorf("packed columns of %d, %d, %d values; want %d", len(r.StatusIds), len(r.AuthorIds), len(r.Flags), len(entries))
	}
	for k, e := range entries {
		if r.StatusIds[k] != e.StatusId || r.AuthorIds[k] != e.AuthorId || r.Flags[k] != e.Flags {
			return fmt.Errorf("packed entry %d is (%d, %d, %d), want (%d, %d, %d)", k, r.StatusIds[k], r.AuthorIds[k], r.Flags[k], e.StatusId, e.AuthorId, e.Flags)
		}
	}
	return nil
}
