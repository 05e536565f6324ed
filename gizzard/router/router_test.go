package router

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	r := New(Config{Store: openStore(t), RetryMin: 100 * time.Millisecond, RetryMax: 2 * time.Second})
	for _, tc := range []struct {
		attempts int
		base     time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		{6, 2 * time.Second},
		{60, 2 * time.Second},
	} {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := r.backoff(tc.attempts)
			if d < tc.base/2 || d > tc.base {
				t.Fatalf("attempt %d: backoff %s outside [%s, %s]", tc.attempts, d, tc.base/2, tc.base)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("attempt %d: no jitter (%v)", tc.attempts, seen)
		}
	}
}

func TestUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection refused"), true},
		{status.Error(codes.DeadlineExceeded, "slow"), true},
		{fmt.Errorf("deliver: %w", context.DeadlineExceeded), true},
		{shard.ErrClosed, true},
		{status.Error(codes.InvalidArgument, "bad"), false},
		{status.Error(codes.NotFound, "shard: no such shard"), false},
		{errors.New("disk on fire"), false},
	} {
		if got := Unavailable(tc.err); got != tc.want {
			t.Errorf("Unavailable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestTargetRoundTrip(t *testing.T) {
	l := gizzard.Leaf{Node: "node-1", Shard: "default-003-node-1"}
	if got := parseTarget(Target(l)); got != l {
		t.Fatalf("parseTarget(Target(%v)) = %v", l, got)
	}
}

// TestLocalWriteIsOneBatch writes through a router whose every replica is
// local: the write is applied, no journal entry or job is left behind,
// and a tree that refuses writes refuses the whole batch.
func TestLocalWriteIsOneBatch(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if _, err := st.CreateShard(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CreateTable(ctx, "t", shard.KindContent); err != nil {
		t.Fatal(err)
	}
	m := gizzard.NewMap()
	if err := m.Apply(gizzard.Change{Who: "test", Steps: []gizzard.Step{
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "self"}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "t", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "a", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "b", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "r", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "a", Weight: 1}, {Child: "b", Weight: 1}}}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "t", Base: 0, Root: "r"}},
	}}); err != nil {
		t.Fatal(err)
	}
	r := New(Config{NodeID: "self", Store: st, Map: func() *gizzard.Map { return m }})
	v := shard.Version{HLC: 1 << 30, Site: 1}
	res, err := r.Write(ctx, []shard.Mutation{{Op: shard.OpPut, Table: "t", Key: []byte("k"), Value: []byte("v"), Version: v}}, All)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Replicas != 2 || res[0].Acked != 2 || res[0].Outcome != shard.Applied || res[0].Root != "r" {
		t.Fatalf("result %+v", res[0])
	}
	for _, sh := range []string{"a", "b"} {
		got, err := st.Get(ctx, sh, "t", []byte("k"))
		if err != nil || got.Version != v {
			t.Fatalf("replica %s: %v %v", sh, got, err)
		}
	}
	if n, _ := st.CountJobs(false, 10); n != 0 || st.JournalSeq() != 0 {
		t.Fatalf("a local write left %d jobs and journal seq %d", n, st.JournalSeq())
	}
}

func openStore(t testing.TB) *shard.Store {
	t.Helper()
	st, err := shard.Open(t.TempDir(), shard.Options{CacheBytes: 1 << 20, MemTableBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestLocal: a write is local (the node's commit queue may combine it with
// others) only when this node's readable replicas acknowledge it alone.
func TestLocal(t *testing.T) {
	r := New(Config{NodeID: "self", Store: openStore(t), Map: localMap(t)})
	put := func(table string) shard.Mutation {
		return shard.Mutation{Op: shard.OpPut, Table: table, Key: []byte("k"), Value: []byte("v")}
	}
	for _, c := range []struct {
		name string
		muts []shard.Mutation
		cons Consistency
		want bool
	}{
		{"a readable replica here", []shard.Mutation{put("both")}, One, true},
		{"consistency ALL", []shard.Mutation{put("both")}, All, false},
		{"only on another node", []shard.Mutation{put("remote")}, One, false},
		{"one mutation only on another node", []shard.Mutation{put("both"), put("remote")}, One, false},
		{"a write-only copy here", []shard.Mutation{put("wo")}, One, false},
		{"an unknown table", []shard.Mutation{put("nope")}, One, false},
		{"no readable replica anywhere, a copy here", []shard.Mutation{put("wonly")}, One, true},
		{"a black hole", []shard.Mutation{put("hole"), put("both")}, One, true},
		{"a tree whose migration is verified", []shard.Mutation{put("syncing")}, One, false},
		{"a black hole, and a mutation only on another node", []shard.Mutation{put("hole"), put("remote")}, One, false},
	} {
		if got := r.Local(c.muts, c.cons); got != c.want {
			t.Errorf("%s: Local %v, want %v", c.name, got, c.want)
		}
	}
}

// BenchmarkLocal: the commit queue asks Local of every write.
//
//	go test ./gizzard/router -run - -bench Local -benchmem
func BenchmarkLocal(b *testing.B) {
	r := New(Config{NodeID: "self", Store: openStore(b), Map: localMap(b)})
	muts := []shard.Mutation{{Op: shard.OpPut, Table: "both", Key: []byte("k"), Value: []byte("v")}}
	b.ReportAllocs()
	for b.Loop() {
		if !r.Local(muts, One) {
			b.Fatal("not local")
		}
	}
}

// localMap is TestLocal's map: node self, node other, and a table for each
// case of where a write's replicas are.
func localMap(t testing.TB) func() *gizzard.Map {
	m := gizzard.NewMap()
	if err := m.Apply(gizzard.Change{Who: "test", Steps: []gizzard.Step{
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "self"}},
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "other"}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "both", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "remote", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "wo", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "a", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "b", Kind: gizzard.KindPhysical, Node: "other"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "c", Kind: gizzard.KindPhysical, Node: "other"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "d", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "e", Kind: gizzard.KindPhysical, Node: "other"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "r", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "a", Weight: 1}, {Child: "b", Weight: 1}}}},
		// A write-only copy here does not acknowledge a read's replica.
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "w", Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: "d", Weight: 1}}}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "rw", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "w", Weight: 1}, {Child: "e", Weight: 1}}}},
		// Only a write-only copy, here: no readable replica anywhere.
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "f", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "wf", Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: "f", Weight: 1}}}},
		// A black hole on another node: no replica to wait for.
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "g", Kind: gizzard.KindPhysical, Node: "other"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "bh", Kind: gizzard.KindBlackHole, Children: []gizzard.Link{{Child: "g", Weight: 1}}}},
		// A tree with a readable replica here, whose migration is verified:
		// its writes need every replica.
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "h", Kind: gizzard.KindPhysical, Node: "self"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "i", Kind: gizzard.KindPhysical, Node: "other"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "rs", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "h", Weight: 1}, {Child: "i", Weight: 1}}}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "syncing", Kind: gizzard.TableContent}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "syncing", Base: 0, Root: "rs"}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "wonly", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "hole", Kind: gizzard.TableContent}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "wonly", Base: 0, Root: "wf"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "hole", Base: 0, Root: "bh"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "both", Base: 0, Root: "r"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "remote", Base: 0, Root: "c"}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "wo", Base: 0, Root: "rw"}},
	}}); err != nil {
		t.Fatal(err)
	}
	m.Migrations = map[string]gizzard.Migration{"m1": {ID: "m1", Root: "rs", State: gizzard.MigrationVerified}}
	return func() *gizzard.Map { return m }
}
