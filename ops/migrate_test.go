package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
)

// workload writes and reads through every node of a site, recording each
// acknowledged write and counting every failed request.
type workload struct {
	mu        sync.Mutex
	acked     map[string]uint64 // statuses key -> acknowledged HLC
	keys      []string
	entries   map[uint64]uint64 // user_timeline owner -> acknowledged appends
	writes    atomic.Int64
	reads     atomic.Int64
	writeErrs atomic.Int64
	readErrs  atomic.Int64
	firstErr  atomic.Value
	// firstReadErr is the first failed read's error.
	firstReadErr atomic.Value
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

func (w *workload) fail(what string, err error) {
	w.firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", what, err))
}

func startWorkload(t *testing.T, nodes []*testNode, writers, readers int) *workload {
	t.Helper()
	// Requests run to their end even when the workload stops, so that
	// every write that took effect is recorded: stopping is checked
	// between requests.
	ctx := context.Background()
	stopping, cancel := context.WithCancel(ctx)
	w := &workload{acked: map[string]uint64{}, entries: map[uint64]uint64{}, cancel: cancel}
	for i := range writers {
		d := nodes[i%len(nodes)].data
		w.wg.Go(func() {
			for n := 0; stopping.Err() == nil; n++ {
				key := fmt.Sprintf("w%d-%d", i, n)
				r, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("value of " + key)})
				if err != nil {
					w.writeErrs.Add(1)
					w.fail("put "+key, err)
					continue
				}
				owner := uint64(i*100 + n%20 + 1)
				_, aerr := d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: owner, Payload: []byte(key)})
				w.mu.Lock()
				w.acked[key] = r.Version.Hlc
				w.keys = append(w.keys, key)
				if aerr == nil {
					w.entries[owner]++
				}
				w.mu.Unlock()
				if aerr != nil {
					w.writeErrs.Add(1)
					w.fail("append", aerr)
				}
				w.writes.Add(1)
			}
		})
	}
	for i := range readers {
		d := nodes[(i+1)%len(nodes)].data
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		w.wg.Go(func() {
			for stopping.Err() == nil {
				w.mu.Lock()
				if len(w.keys) == 0 {
					w.mu.Unlock()
					time.Sleep(time.Millisecond) // nothing to read yet
					continue
				}
				key := w.keys[rng.IntN(len(w.keys))]
				want := w.acked[key]
				w.mu.Unlock()
				r, err := d.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)})
				w.reads.Add(1)
				switch {
				case err != nil:
					w.readErrs.Add(1)
					w.fail("get "+key, err)
					w.firstReadErr.CompareAndSwap(nil, err.Error())
				case r.Version.GetHlc() < want:
					// ONE acknowledges after one replica; a read may
					// reach another replica first. Count it as an error
					// only for single-replica trees, which the tests use.
					w.readErrs.Add(1)
					w.fail("get "+key, fmt.Errorf("version %d older than the acknowledged %d", r.Version.GetHlc(), want))
				}
			}
		})
	}
	return w
}

// waitWrites waits until n more writes are acknowledged.
func (w *workload) waitWrites(t *testing.T, n int64) {
	t.Helper()
	target := w.writes.Load() + n
	checkFor(t, time.Minute, func() error {
		if got := w.writes.Load(); got < target {
			return fmt.Errorf("%d writes, waiting for %d (errors %d: %v)", got, target, w.writeErrs.Load(), w.firstErr.Load())
		}
		return nil
	})
}

func (w *workload) stop() {
	w.cancel()
	w.wg.Wait()
}

// check asserts that no request failed and that every acknowledged write
// is readable through via with its acknowledged version, and every
// owner's count is exact.
func (w *workload) check(t *testing.T, via *testNode) {
	t.Helper()
	if n := w.writeErrs.Load() + w.readErrs.Load(); n != 0 {
		t.Errorf("%d writes and %d reads of %d and %d failed; first: %v; first read: %v", w.writeErrs.Load(), w.readErrs.Load(), w.writes.Load(), w.reads.Load(), w.firstErr.Load(), w.firstReadErr.Load())
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range w.acked {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		r, err := via.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(k)})
		if err != nil {
			t.Fatalf("acknowledged key %s: %v", k, err)
		}
		if r.Version.Hlc != w.acked[k] {
			t.Fatalf("acknowledged key %s: version %d, acknowledged %d", k, r.Version.Hlc, w.acked[k])
		}
	}
	for owner, n := range w.entries {
		r, err := via.data.Count(t.Context(), &pb.CountRequest{Table: "user_timeline", Owner: owner})
		if err != nil {
			t.Fatalf("count of owner %d: %v", owner, err)
		}
		if r.Total != n {
			t.Fatalf("owner %d: count %d, acknowledged appends %d", owner, r.Total, n)
		}
	}
	t.Logf("checked %d keys and %d owners; %d writes and %d reads during the run", len(keys), len(w.entries), w.writes.Load(), w.reads.Load())
}

// adminOf returns a ShardAdmin client of a node.
func adminOf(t *testing.T, tn *testNode) pb.ShardAdminClient {
	t.Helper()
	s := newSession(&options{timeout: 10 * time.Second}, io.Discard, io.Discard)
	t.Cleanup(s.close)
	a, err := s.admin(tn.addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// shardsOn lists the shards a node holds.
func shardsOn(t *testing.T, tn *testNode) []string {
	t.Helper()
	a := adminOf(t, tn)
	r, err := a.ListShards(t.Context(), &pb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, sh := range r.Shards {
		out = append(out, sh.Name)
	}
	return out
}

// TestMigrateSplitRebalanceUnderLoad moves a shard, splits a tree and
// rebalances the site while writers and readers run through every node;
// no request fails and every acknowledged write is there afterwards.
func TestMigrateSplitRebalanceUnderLoad(t *testing.T) {
	nodes := startSite(t, 4)
	addr := nodes[1].addr
	ops := func(args ...string) []string {
		return append([]string{"--addr", addr, "--timeout", "10s", "--who", "carol@test"}, args...)
	}
	w := startWorkload(t, nodes, 4, 2)
	defer w.stop()
	w.waitWrites(t, 2000)

	out := mustOps(t, ops("migrate", "default-001", "--to", "node-1", "--rate", "0")...)
	for _, want := range []string{"attaching default-001.1 on node-1", "verified:", "cutting over", "done: moved default-001"} {
		if !strings.Contains(out, want) {
			t.Fatalf("migrate output lacks %q:\n%s", want, out)
		}
	}
	m := getMap(t, nodes[1])
	if leaves := leavesUnder(m, "rep-001"); len(leaves) != 1 || leaves[0].ID != "default-001.1" || leaves[0].Node != "node-1" {
		t.Fatalf("rep-001 after the move: %+v", leaves)
	}
	checkFor(t, 10*time.Second, func() error {
		if slices.Contains(shardsOn(t, nodes[0]), "default-001") {
			return errors.New("node-0 still holds default-001")
		}
		return nil
	})
	w.waitWrites(t, 500)

	out = mustOps(t, ops("split", "rep-002", "--node", "node-2", "--rate", "0")...)
	if !strings.Contains(out, "done: split rep-002") {
		t.Fatalf("split output:\n%s", out)
	}
	m = getMap(t, nodes[1])
	if fs := m.Forwardings["statuses"]; len(fs) != 5 {
		t.Fatalf("statuses forwardings after the split: %+v", fs)
	}
	w.waitWrites(t, 500)

	plan := mustOps(t, ops("rebalance", "--dry-run")...)
	if !strings.Contains(plan, "plan:") || strings.Contains(plan, "FAIL") {
		t.Fatalf("rebalance --dry-run:\n%s", plan)
	}
	mustOps(t, ops("rebalance", "--rate", "0", "--parallel", "2")...)
	m = getMap(t, nodes[1])
	perNode := map[string]int{}
	for _, sh := range m.Shards {
		if sh.Kind == gizzard.KindPhysical {
			perNode[sh.Node]++
		}
	}
	if lo, hi := min(perNode["node-0"], perNode["node-1"], perNode["node-2"]), max(perNode["node-0"], perNode["node-1"], perNode["node-2"]); hi-lo > 1 {
		t.Fatalf("shards per node after rebalance: %v", perNode)
	}
	w.waitWrites(t, 500)
	w.stop()

	out = mustOps(t, ops("migrations", "--all")...)
	if strings.Count(out, " done ") < 3 {
		t.Fatalf("migrations --all:\n%s", out)
	}
	w.check(t, nodes[2])
	// The split's halves hold only their own records: the two shards
	// together hold each key of the old tree once.
	total := uint64(0)
	for _, id := range []string{"default-002", "default-002.1"} {
		sh := m.Shards[id]
		tn := nodes[sh.Node[len(sh.Node)-1]-'0']
		d, err := adminOf(t, tn).DigestData(t.Context(), &pb.DigestDataRequest{Shard: id})
		if err != nil {
			t.Fatal(err)
		}
		total += d.Records
	}
	want := uint64(0)
	for k := range w.acked {
		fw, err := m.Lookup("statuses", gizzard.Hash([]byte(k)))
		if err != nil {
			t.Fatal(err)
		}
		if fw.Root == "rep-002" || fw.Root == "rep-002.1" {
			want++
		}
	}
	for owner := range w.entries {
		fw, _ := m.Lookup("user_timeline", gizzard.OwnerHash(owner))
		if fw.Root == "rep-002" || fw.Root == "rep-002.1" {
			want += w.entries[owner]
		}
	}
	if total != want {
		t.Errorf("the split's two shards hold %d records, want %d (each key once)", total, want)
	}
}

// TestMigrateCancelAtEachStep stops a migration at every step before
// cleanup, cancels it, and checks that the original layout serves every
// acknowledged write and the partial copy is gone.
func TestMigrateCancelAtEachStep(t *testing.T) {
	nodes := startSite(t, 2)
	addr := nodes[0].addr
	w := startWorkload(t, nodes, 2, 1)
	defer w.stop()
	w.waitWrites(t, 500)
	for _, at := range []gizzard.MigrationState{gizzard.MigrationPlanned, gizzard.MigrationCopying, gizzard.MigrationCopied, gizzard.MigrationVerified, gizzard.MigrationCutover, gizzard.MigrationCleanup} {
		t.Run(string(at), func(t *testing.T) {
			s := newSession(&options{addr: addr, timeout: 10 * time.Second, who: "dave@test"}, &strings.Builder{}, &strings.Builder{})
			defer s.close()
			var log strings.Builder
			d := &driver{s: s, out: &log, poll: 50 * time.Millisecond, mu: &sync.Mutex{}, stopAt: at}
			m, err := s.siteMap(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			g, err := planMove(m, "default-001", "node-2", "", "0", false, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.startMigration(t.Context(), d, g); !errors.Is(err, errStopped) {
				t.Fatalf("driver: %v\n%s", err, log.String())
			}
			w.waitWrites(t, 200)
			_, errOut, err := runOps(t, "--addr", addr, "migrate", "cancel", g.ID)
			if at == gizzard.MigrationCleanup {
				if !errors.Is(err, ErrCannotCancel) {
					t.Fatalf("cancel at cleanup: %v", err)
				}
				// Let it finish, then move the shard back for the next step.
				d.stopAt = ""
				if err := d.run(t.Context(), g.ID); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err != nil {
				t.Fatalf("cancel at %s: %v %s", at, err, errOut)
			}
			m = getMap(t, nodes[0])
			if got := m.Migrations[g.ID].State; got != gizzard.MigrationCancelled {
				t.Fatalf("state after cancel: %s", got)
			}
			if leaves := leavesUnder(m, "rep-001"); len(leaves) != 1 || leaves[0].ID != "default-001" {
				t.Fatalf("rep-001 after cancel: %+v", leaves)
			}
			if ch := m.Shards["rep-001"].Children; len(ch) != 1 || ch[0].Child != "default-001" {
				t.Fatalf("rep-001 children after cancel: %+v", ch)
			}
			if slices.Contains(shardsOn(t, nodes[2]), g.Dest) {
				t.Fatalf("node-2 still holds the partial copy %s", g.Dest)
			}
			w.waitWrites(t, 200)
		})
	}
	w.stop()
	w.check(t, nodes[1])
}

// TestMigrateVerifyFindsDivergence injects a record into the destination
// behind the router's back: verification names the key and refuses the
// cutover; --force goes past it.
func TestMigrateVerifyFindsDivergence(t *testing.T) {
	nodes := startSite(t, 2)
	addr := nodes[0].addr
	w := startWorkload(t, nodes, 2, 1)
	defer w.stop()
	w.waitWrites(t, 300)

	s := newSession(&options{addr: addr, timeout: 10 * time.Second, who: "erin@test"}, io.Discard, io.Discard)
	defer s.close()
	var log strings.Builder
	d := &driver{s: s, out: &log, poll: 50 * time.Millisecond, mu: &sync.Mutex{}, stopAt: gizzard.MigrationCopied}
	m, err := s.siteMap(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	g, err := planMove(m, "default-000", "node-1", "", "0", false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.startMigration(t.Context(), d, g); !errors.Is(err, errStopped) {
		t.Fatalf("driver: %v\n%s", err, log.String())
	}
	// An old version, so that it is not taken for a write in flight.
	old := &pb.Version{Hlc: uint64(time.Now().Add(-time.Hour).UnixMilli()) << 16, Site: 0}
	if _, err := nodes[1].data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("stray"), Value: []byte("x"), Shard: g.Dest, Version: old}); err != nil {
		t.Fatal(err)
	}
	d.stopAt = ""
	err = d.run(t.Context(), g.ID)
	if !errors.Is(err, errVerifyFailed) {
		t.Fatalf("run after a divergence: %v\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), `content statuses "stray": source missing, destination`) {
		t.Fatalf("the report does not name the stray key:\n%s", log.String())
	}
	if st := getMap(t, nodes[0]).Migrations[g.ID].State; st != gizzard.MigrationCopied {
		t.Fatalf("state after a failed verification: %s, want copied", st)
	}
	out := mustOps(t, "--addr", addr, "migrate", "resume", g.ID, "--force")
	if !strings.Contains(out, "done: moved default-000") {
		t.Fatalf("resume --force:\n%s", out)
	}
	if note := getMap(t, nodes[0]).Migrations[g.ID].Note; !strings.Contains(note, "forced past a failed verification") {
		t.Fatalf("note after --force: %q", note)
	}
	w.stop()
	w.check(t, nodes[2])
}

// TestMigratePauseResume pauses a throttled copy from another ops process:
// the copy stops where it is and goes on from there once resumed.
func TestMigratePauseResume(t *testing.T) {
	nodes := startSite(t, 2)
	addr := nodes[0].addr
	w := startWorkload(t, nodes, 2, 1)
	defer w.stop()
	w.waitWrites(t, 2000)
	m := getMap(t, nodes[0])
	g, err := planMove(m, "default-001", "node-2", "", "", false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var out string
	go func() {
		var err error
		out, _, err = runOps(t, "--addr", addr, "migrate", "default-001", "--to", "node-2", "--rate", "300rec/s", "--poll", "20ms")
		done <- err
	}()
	var id string
	admin := adminOf(t, nodes[2])
	copied := func() uint64 {
		p, err := admin.CopyState(t.Context(), &pb.CopyStateRequest{MigrationId: id})
		if err != nil {
			t.Fatal(err)
		}
		return p.Records
	}
	checkFor(t, 30*time.Second, func() error {
		for _, x := range getMap(t, nodes[0]).ActiveMigrations() {
			if x.Source == g.Source && x.State == gizzard.MigrationCopying {
				id = x.ID
				if copied() > 0 {
					return nil
				}
			}
		}
		return errors.New("no copy under way yet")
	})
	mustOps(t, "--addr", addr, "migrate", "pause", id)
	// Once the driver has stopped the copy, the cursor stays put.
	var at uint64
	checkFor(t, 10*time.Second, func() error {
		a := copied()
		time.Sleep(300 * time.Millisecond) // at 300 rec/s a running copy moves in this time
		if b := copied(); a != b {
			return fmt.Errorf("copy still moving: %d then %d", a, b)
		}
		at = a
		return nil
	})
	if st := getMap(t, nodes[0]).Migrations[id]; !st.Paused || st.State != gizzard.MigrationCopying {
		t.Fatalf("after pause: %+v", st)
	}
	out2 := mustOps(t, "--addr", addr, "migrate", "resume", id, "--rate", "0")
	if err := <-done; err != nil {
		t.Fatalf("first driver: %v\n%s", err, out)
	}
	if !strings.Contains(out2+out, "done: moved default-001") || !strings.Contains(out2+out, fmt.Sprintf("copy resumes after %d records", at)) {
		t.Fatalf("after resume:\n%s\n%s", out, out2)
	}
	w.stop()
	w.check(t, nodes[1])
}
