package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/testnet"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// siteNode is one node process of a local site, with fixed ports so that it
// can be restarted at the same addresses.
type siteNode struct {
	id               string
	dir              string
	grpc, http, raft string
	join             string
	worker           int
	extra            []string // further flags
	p                *proc
	data             pb.DataClient
	admin            pb.ShardAdminClient
	ns               pb.NameserverClient
}

func (s *siteNode) start(t *testing.T) {
	t.Helper()
	args := []string{"--data-dir", s.dir, "--grpc-addr", s.grpc, "--http-addr", s.http, "--raft-addr", s.raft, "--nats-addr", "127.0.0.1:0",
		"--node-id", s.id, "--worker-id", fmt.Sprint(s.worker), "--shards", "4", "--log-format", "json", "--replica-timeout", "2s"}
	if s.join != "" {
		args = append(args, "--join", s.join)
	}
	args = append(args, s.extra...)
	s.p = startProc(t, exec.Command(nodeBinary(t), args...))
	cc, err := netx.Dial(s.grpc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	s.data, s.admin, s.ns = pb.NewDataClient(cc), pb.NewShardAdminClient(cc), pb.NewNameserverClient(cc)
}

// startSite starts n nodes: node-0 founds the site, the others join it;
// then every tree gets a readable replica on every other node.
func startSite(t *testing.T, n int) []*siteNode {
	t.Helper()
	nodes := startNodes(t, n)
	replicateEverywhere(t, nodes)
	return nodes
}

// startNodes starts n nodes with 4 trees: node-0 founds the site and holds
// every tree's only replica; the others join it.
func startNodes(t *testing.T, n int) []*siteNode {
	t.Helper()
	dir := t.TempDir()
	var nodes []*siteNode
	for i := range n {
		s := &siteNode{id: fmt.Sprintf("node-%d", i), dir: filepath.Join(dir, fmt.Sprint(i)), worker: i,
			grpc: testnet.Addr(t), http: testnet.Addr(t), raft: testnet.Addr(t)}
		if i > 0 {
			s.join = nodes[0].grpc
		}
		s.start(t)
		nodes = append(nodes, s)
	}
	return nodes
}

// replicateEverywhere gives every tree a readable replica on every node
// but node-0.
func replicateEverywhere(t *testing.T, nodes []*siteNode) {
	t.Helper()
	ctx := t.Context()
	mr, err := nodes[0].ns.GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var m gizzard.Map
	if err := json.Unmarshal(mr.MapJson, &m); err != nil {
		t.Fatal(err)
	}
	c := gizzard.Change{Who: "site_test"}
	for _, root := range m.Roots() {
		for _, s := range nodes[1:] {
			leaf := root + "-" + s.id
			c.Steps = append(c.Steps,
				gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: leaf, Kind: gizzard.KindPhysical, Node: s.id}},
				gizzard.Step{Op: gizzard.OpAddLink, Parent: root, Child: leaf, Weight: 1})
		}
	}
	b, _ := json.Marshal(c)
	pr, err := nodes[1].ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: b}) // forwarded to the leader
	if err != nil {
		t.Fatal(err)
	}
	waitVersion(t, nodes, pr.Version)
}

// waitVersion waits until every running node routes with version v or later.
func waitVersion(t *testing.T, nodes []*siteNode, v uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range nodes {
		for {
			st, err := s.ns.Status(t.Context(), &pb.StatusRequest{})
			if err == nil && st.MapVersion >= v {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not reach map version %d: %v %v", s.id, v, st, err)
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
	}
}

// load writes unique keys through the given nodes until stopped, recording
// every acknowledged write and every error.
type load struct {
	mu     sync.Mutex
	acked  map[string]uint64 // key -> acknowledged hlc
	errs   []error
	count  atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startLoad(via []*siteNode, writers int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{acked: map[string]uint64{}, cancel: cancel}
	for w := range writers {
		d := via[w%len(via)].data
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				r, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(key)})
				if ctx.Err() != nil {
					return
				}
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err)
				} else {
					l.acked[key] = r.Version.Hlc
				}
				l.mu.Unlock()
				l.count.Add(1)
			}
		}()
	}
	return l
}

func (l *load) waitFor(t *testing.T, more int64) {
	t.Helper()
	target := l.count.Load() + more
	deadline := time.Now().Add(time.Minute)
	for l.count.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("load stalled at %d writes", l.count.Load())
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// stopChecked stops the load and fails the test if any write failed
// (during says when, for the message).
func (l *load) stopChecked(t *testing.T, during string) {
	t.Helper()
	l.stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		t.Fatalf("%d of %d writes failed %s; first: %v", len(l.errs), l.count.Load(), during, l.errs[0])
	}
	t.Logf("%d writes, none failed", len(l.acked))
}

// waitJobsDrained waits until no node has pending router jobs.
func waitJobsDrained(t *testing.T, nodes []*siteNode) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, s := range nodes {
		for {
			r, err := s.admin.ListJobs(t.Context(), &pb.ListJobsRequest{Limit: 10})
			if err == nil && len(r.Jobs) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still has pending jobs: %v %v", s.id, r, err)
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
		if r, err := s.admin.ListJobs(t.Context(), &pb.ListJobsRequest{ErrorQueue: true}); err != nil || len(r.Jobs) > 0 {
			t.Fatalf("%s has jobs in its error queue: %v %v", s.id, r, err)
		}
	}
}

// checkConverged checks that every replica of every tree is digest-equal
// and that every acknowledged key is readable through every node.
func checkConverged(t *testing.T, nodes []*siteNode, l *load) {
	t.Helper()
	ctx := t.Context()
	byID := map[string]*siteNode{}
	for _, s := range nodes {
		byID[s.id] = s
	}
	mr, err := nodes[0].ns.GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var m gizzard.Map
	if err := json.Unmarshal(mr.MapJson, &m); err != nil {
		t.Fatal(err)
	}
	for _, root := range m.Roots() {
		plan, err := m.PlanWrite(root)
		if err != nil {
			t.Fatal(err)
		}
		var first *pb.DigestShardResponse
		for _, leaf := range plan.Targets {
			d, err := byID[leaf.Node].admin.DigestShard(ctx, &pb.DigestShardRequest{Name: leaf.Shard})
			if err != nil {
				t.Fatalf("digest %s on %s: %v", leaf.Shard, leaf.Node, err)
			}
			if first == nil {
				first = d
				continue
			}
			if d.SumHex != first.SumHex {
				t.Fatalf("tree %s: replica %s on %s has digest %s (%d records), first replica %s (%d records)",
					root, leaf.Shard, leaf.Node, d.SumHex[:16], d.Records, first.SumHex[:16], first.Records)
			}
		}
		t.Logf("tree %s: %d replicas digest-equal, %d records", root, len(plan.Targets), first.Records)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, hlc := range l.acked {
		for _, s := range nodes {
			g, err := s.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)})
			if err != nil || g.Version.Hlc < hlc {
				t.Fatalf("acknowledged key %q through %s: %v %v", key, s.id, g, err)
			}
		}
	}
}

// TestSiteSurvivesReplicaKill kills one of three replica nodes with SIGKILL
// under a sustained write load: writes keep succeeding; after it restarts,
// the retries drain and every replica of every shard is digest-equal.
func TestSiteSurvivesReplicaKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	nodes := startSite(t, 3)
	l := startLoad(nodes[:2], 8)
	l.waitFor(t, 300)
	nodes[2].p.kill()
	t.Logf("killed %s after %d writes", nodes[2].id, l.count.Load())
	l.waitFor(t, 500)
	nodes[2].start(t)
	l.waitFor(t, 300)
	l.stopChecked(t, "while a replica was down")
	waitJobsDrained(t, nodes)
	checkConverged(t, nodes, l)
}

// TestSiteSurvivesHungReplica stops one node of three with SIGSTOP under
// write load: a node that hangs rather than refusing connections. Writes
// through the other two keep succeeding. The writing nodes hold at most a
// queue's worth of deliveries to it, and once those have timed out their
// goroutines fall back to about what they were before (their deliveries to
// the hung node go to the journal instead of each holding a goroutine for
// the replica timeout). After SIGCONT every job is delivered and the site
// converges.
func TestSiteSurvivesHungReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	nodes := startSite(t, 3)
	l := startLoad(nodes[:2], 8)
	l.waitFor(t, 300)
	// What the writing nodes' retry loops do while the replica hangs.
	work := []string{"process_cpu_seconds_total", "aviary_router_retry_scans_total", "aviary_router_retry_scanned_jobs_total"}
	before := goroutines(t, nodes[0]) + goroutines(t, nodes[1])
	worked, writes := sums(t, nodes[:2], work...), l.count.Load()
	resume := nodes[2].p.pause()
	defer resume()
	paused := time.Now()
	l.waitFor(t, 300)
	// The writers' first deliveries to it time out after --replica-timeout
	// (2s): from then on the writing nodes hold no goroutine per write for
	// it.
	// Before that, each holds at most a queue's worth of deliveries waiting
	// for it (1024, two batches of up to 128 in flight, up to 64 retries);
	// more are journaled at once.
	const queue = 1024 + 2*128 + 64
	var during, peak int
	for {
		during = goroutines(t, nodes[0]) + goroutines(t, nodes[1])
		peak = max(peak, during)
		if time.Since(paused) > 4*time.Second && during < before+400 {
			break
		}
		if time.Since(paused) > 30*time.Second {
			t.Fatalf("the writing nodes hold %d goroutines 30s after a replica hung, %d before", during, before)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	t.Logf("goroutines of the writing nodes: %d before the replica hung, at most %d while deliveries to it timed out, %d after %s",
		before, peak, during, time.Since(paused).Round(time.Millisecond))
	if peak > before+2*queue+400 {
		t.Fatalf("the writing nodes held %d goroutines while a replica hung, %d before: more than a queue of deliveries each", peak, before)
	}
	l.waitFor(t, 300)
	// What the writing nodes' retry loops did while the replica hung (for
	// the record: the router's tests check it).
	after := sums(t, nodes[:2], work...)
	t.Logf("while a replica hung for %s: %d writes; the writing nodes used %.1f CPU-seconds, and their retry loops scanned the journal %.0f times, reading %.0f jobs",
		time.Since(paused).Round(time.Millisecond), l.count.Load()-writes, after[0]-worked[0], after[1]-worked[1], after[2]-worked[2])
	resume()
	resumed := time.Now()
	l.waitFor(t, 300)
	l.stopChecked(t, "while a replica hung")
	waitJobsDrained(t, nodes)
	t.Logf("every job delivered %s after the replica resumed", time.Since(resumed).Round(time.Millisecond))
	checkConverged(t, nodes, l)
}

// goroutines reads a node's go_goroutines from its /metrics.
func goroutines(t *testing.T, s *siteNode) int {
	t.Helper()
	return int(sums(t, []*siteNode{s}, "go_goroutines")[0])
}

// sums adds unlabelled metrics over nodes, reading each node's /metrics
// once.
func sums(t *testing.T, nodes []*siteNode, names ...string) []float64 {
	t.Helper()
	out := make([]float64, len(names))
	for _, s := range nodes {
		resp, err := http.Get("http://" + s.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		values := map[string]float64{}
		for line := range strings.Lines(string(body)) {
			name, v, ok := strings.Cut(strings.TrimSpace(line), " ")
			if !ok || strings.HasPrefix(name, "#") {
				continue
			}
			if n, err := strconv.ParseFloat(v, 64); err == nil {
				values[name] = n
			}
		}
		for i, name := range names {
			n, ok := values[name]
			if !ok {
				t.Fatalf("no %s in %s's metrics", name, s.id)
			}
			out[i] += n
		}
	}
	return out
}

// TestSiteSurvivesLeaderKill kills the nameserver leader with SIGKILL: the
// shard map is writable again within 5 seconds, the other routers keep
// routing, and the audit log is intact.
func TestSiteSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node site of real processes")
	}
	nodes := startSite(t, 3)
	ctx := t.Context()
	st, err := nodes[1].ns.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var leader *siteNode
	var others []*siteNode
	for _, s := range nodes {
		if s.id == st.LeaderId {
			leader = s
		} else {
			others = append(others, s)
		}
	}
	if leader == nil {
		t.Fatalf("no leader in %v", st)
	}
	before, err := others[0].ns.GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(others, 4)
	l.waitFor(t, 200)
	leader.p.kill()
	killed := time.Now()
	change, _ := json.Marshal(gizzard.Change{Who: "site_test", Steps: []gizzard.Step{{
		Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "after_failover", Kind: "content"},
	}}})
	var v uint64
	for {
		r, err := others[0].ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: change})
		if err == nil {
			v = r.Version
			break
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("propose after leader kill: %v", err)
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("map not writable 5s after the leader was killed: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	t.Logf("map writable again %s after the leader was killed", time.Since(killed).Round(time.Millisecond))
	l.waitFor(t, 300)
	l.stopChecked(t, "after the leader was killed")
	waitVersion(t, others, v)
	after, err := others[1].ns.GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var mb, ma gizzard.Map
	_ = json.Unmarshal(before.MapJson, &mb)
	_ = json.Unmarshal(after.MapJson, &ma)
	if len(ma.Audit) != len(mb.Audit)+1 {
		t.Fatalf("audit has %d entries, want %d", len(ma.Audit), len(mb.Audit)+1)
	}
	for i, e := range mb.Audit {
		if ma.Audit[i].Version != e.Version || ma.Audit[i].What != e.What {
			t.Fatalf("audit entry %d changed: %+v, was %+v", i, ma.Audit[i], e)
		}
	}
}
