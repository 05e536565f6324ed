package nameserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// hashicorp/raft does not track the goroutines serving inbound raft
	// connections; each ends when its peer closes the connection.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}

// cluster is n voters on loopback, the first bootstrapped, the rest added.
type cluster struct {
	t    *testing.T
	dirs []string
	srv  []*Server
}

func openVoter(t *testing.T, id, dir string, bootstrap bool) *Server {
	t.Helper()
	s, err := Open(t.Context(), Config{NodeID: id, RaftAddr: "127.0.0.1:0", Dir: dir, Bootstrap: bootstrap, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{t: t}
	for i := range n {
		c.dirs = append(c.dirs, t.TempDir())
		c.srv = append(c.srv, openVoter(t, fmt.Sprintf("n%d", i), c.dirs[i], i == 0))
	}
	t.Cleanup(func() {
		for _, s := range c.srv {
			if s != nil {
				_ = s.Close()
			}
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	leader := c.leader(ctx)
	for i := 1; i < n; i++ {
		if err := leader.AddMember(ctx, fmt.Sprintf("n%d", i), c.srv[i].Addr()); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// leader waits for a leader among the open servers.
func (c *cluster) leader(ctx context.Context) *Server {
	c.t.Helper()
	for {
		for _, s := range c.srv {
			if s != nil && s.IsLeader() {
				return s
			}
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("no leader: %v", ctx.Err())
		case <-time.After(10 * time.Millisecond): // polling interval
		}
	}
}

func addNode(id string) gizzard.Change {
	return gizzard.Change{Who: "test", From: "127.0.0.1", Steps: []gizzard.Step{{
		Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: id, GRPCAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2"},
	}}}
}

// propose retries a change on whichever server leads until it commits.
func (c *cluster) propose(ctx context.Context, ch gizzard.Change) uint64 {
	c.t.Helper()
	for {
		v, err := c.leader(ctx).Propose(ctx, ch)
		if err == nil {
			return v
		}
		if !errors.Is(err, ErrNotLeader) {
			c.t.Fatalf("propose: %v", err)
		}
	}
}

func mapJSON(t *testing.T, m *gizzard.Map) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReplicatesAndValidates(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	v := c.propose(ctx, addNode("a"))
	if v != 1 {
		t.Fatalf("version %d, want 1", v)
	}
	// An invalid change is refused before it is committed.
	bad := gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpRemoveNode, NodeID: "nope"}}}
	if _, err := c.leader(ctx).Propose(ctx, bad); !errors.Is(err, gizzard.ErrInvalidChange) {
		t.Fatalf("invalid change: %v", err)
	}
	// Followers refuse proposals and name the leader.
	for _, s := range c.srv {
		if !s.IsLeader() {
			if _, err := s.Propose(ctx, addNode("b")); !errors.Is(err, ErrNotLeader) {
				t.Fatalf("follower propose: %v", err)
			}
		}
	}
	// Every voter reaches version 1 with identical maps.
	for _, s := range c.srv {
		m, err := s.Wait(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if m.Version != 1 || mapJSON(t, m) != mapJSON(t, c.srv[0].Map()) {
			t.Fatalf("voter map differs: %s", mapJSON(t, m))
		}
		if len(m.Audit) != 1 || m.Audit[0].Who != "test" {
			t.Fatalf("audit %v", m.Audit)
		}
	}
}

// TestLeaderFailover closes the leader and checks that the map is writable
// again within 5 seconds, with its audit log intact.
func TestLeaderFailover(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := range 5 {
		c.propose(ctx, addNode(fmt.Sprintf("a%d", i)))
	}
	old := c.leader(ctx)
	for i, s := range c.srv {
		if s == old {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			c.srv[i] = nil
		}
	}
	start := time.Now()
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	defer fcancel()
	v := c.propose(fctx, addNode("after-failover"))
	took := time.Since(start)
	t.Logf("map writable again %s after the leader stopped", took.Round(time.Millisecond))
	if v != 6 {
		t.Fatalf("version after failover %d, want 6", v)
	}
	m := c.leader(ctx).Map()
	if len(m.Audit) != 6 {
		t.Fatalf("audit has %d entries, want 6", len(m.Audit))
	}
	for i, e := range m.Audit {
		if e.Version != uint64(i+1) {
			t.Fatalf("audit entry %d has version %d", i, e.Version)
		}
	}
}

// TestRestartRecoversFromDisk restarts a single voter and checks that the
// map is rebuilt from its log and snapshot.
func TestRestartRecoversFromDisk(t *testing.T) {
	dir := t.TempDir()
	s := openVoter(t, "n0", dir, true)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := s.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := s.Propose(ctx, addNode(fmt.Sprintf("a%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Propose(ctx, addNode("after-snapshot")); err != nil {
		t.Fatal(err)
	}
	want := mapJSON(t, s.Map())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openVoter(t, "n0", dir, true)
	defer s.Close()
	m, err := s.Wait(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got := mapJSON(t, m); got != want {
		t.Fatalf("map after restart\n%s\nwant\n%s", got, want)
	}
}

// TestFourthNodeIsNonVoter checks that a site keeps MaxVoters voters and
// adds further nodes as non-voters, which still receive the map.
func TestFourthNodeIsNonVoter(t *testing.T) {
	c := newCluster(t, 4)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	f := c.leader(ctx).raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, sv := range f.Configuration().Servers {
		if sv.Suffrage.String() == "Voter" {
			voters++
		}
	}
	if voters != MaxVoters || len(f.Configuration().Servers) != 4 {
		t.Fatalf("%d voters among %d servers, want %d among 4", voters, len(f.Configuration().Servers), MaxVoters)
	}
	v := c.propose(ctx, addNode("x"))
	if _, err := c.srv[3].Wait(ctx, v-1); err != nil {
		t.Fatalf("non-voter did not receive the map: %v", err)
	}
}
