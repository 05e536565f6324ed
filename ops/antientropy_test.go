package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/replication"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// replicaClient returns a Replica client of the node at addr, closed when
// the test ends.
func replicaClient(t *testing.T, addr string) pb.ReplicaClient {
	t.Helper()
	cc, err := netx.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewReplicaClient(cc)
}

// leafOn returns the readable leaf of m that holds hash h of table on
// node.
func leafOn(t *testing.T, m *gizzard.Map, table string, h uint64, node string) string {
	t.Helper()
	leaves, err := readableLeaves(m, table, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leaves {
		if l.Node == node {
			return l.Shard
		}
	}
	t.Fatalf("no readable leaf of %s hash %s on %s: %v", table, hex64(h), node, leaves)
	return ""
}

// behindTheRouter applies versioned mutations, each naming its shard, to
// one replica directly, as a router would but to that replica only.
func behindTheRouter(t *testing.T, addr string, v uint64, muts ...*pb.Mutation) {
	t.Helper()
	r, err := replicaClient(t, addr).Apply(t.Context(), &pb.ApplyRequest{Mutations: muts, MapVersion: v})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range r.Outcomes {
		if o != pb.Outcome_OUTCOME_APPLIED {
			t.Fatalf("mutation %d applied behind the router: %s", i, o)
		}
	}
}

func putMut(shard, key, value string, v *pb.Version) *pb.Mutation {
	return &pb.Mutation{Table: "statuses", Shard: shard, Version: v, Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte(key), Value: []byte(value)}}}
}

// aeRun runs ops verify or repair with --json and decodes the report; err
// is the command's error.
func aeRun(t *testing.T, args ...string) (aeReport, error) {
	t.Helper()
	out, errOut, err := runOps(t, append(args, "--json")...)
	var rep aeReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("ops %s: %v; its output does not decode: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, jerr, out, errOut)
	}
	return rep, err
}

// differingKeys lists the keys of a check, checking that each lies in its
// range: the key's table and routing hash.
func differingKeys(t *testing.T, c aeCheck) []string {
	t.Helper()
	var keys []string
	for _, r := range c.Differing {
		lo, err := parseBase(r.Lo)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range r.Keys {
			var h uint64
			var table string
			if q, ok := strings.CutPrefix(k.Key, "content "); ok {
				var key string
				table, key, _ = strings.Cut(q, " ")
				uq := strings.Trim(key, `"`)
				h = gizzard.Hash([]byte(uq))
			} else {
				var owner, id uint64
				if _, err := fmt.Sscanf(k.Key, "index %s owner=%d id=%d", &table, &owner, &id); err != nil {
					t.Fatalf("key %q: %v", k.Key, err)
				}
				h = gizzard.OwnerHash(owner)
			}
			inHi := r.Hi == "0x10000000000000000"
			if !inHi {
				hi, err := parseBase(r.Hi)
				if err != nil {
					t.Fatal(err)
				}
				inHi = h < hi
			}
			if table != r.Table || h < lo || !inHi {
				t.Errorf("key %s (hash %s) is listed in range %s", k.Key, hex64(h), r)
			}
			keys = append(keys, k.Key)
		}
		if r.More != 0 {
			t.Errorf("range %s: %d keys not listed", r, r.More)
		}
	}
	slices.Sort(keys)
	return keys
}

// copyVersion returns what the copy on node (of site, if set) holds of key.
func copyVersion(t *testing.T, c aeCheck, key, site, node string) string {
	t.Helper()
	for _, r := range c.Differing {
		for _, k := range r.Keys {
			if k.Key != key {
				continue
			}
			for _, cp := range k.Copies {
				if cp.Node == node && (site == "" || cp.Site == site) {
					return cp.Version
				}
			}
		}
	}
	t.Fatalf("no copy of %s on %s %s in the report", key, site, node)
	return ""
}

// TestVerifyRepairReplicas: in a three-node site whose trees have three
// readable replicas, writes that reach one replica only, behind the
// router's back (a new key, a newer overwrite, a newer delete and an index
// entry), are reported by ops verify with their ranges and each replica's
// version; repair --dry-run sends nothing; ops repair sends the newest
// versions to the other two replicas, which then return them, and verify
// is clean.
func TestVerifyRepairReplicas(t *testing.T) {
	nodes := startSite(t, 2)
	addr := nodes[0].addr
	s := newSession(&options{addr: addr, timeout: 10 * time.Second, who: "erin@test"}, io.Discard, io.Discard)
	defer s.close()
	m := getMap(t, nodes[0])
	steps, err := devReplicaSteps(m, []string{"node-0", "node-1", "node-2"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.proposeAt(t.Context(), addr, steps)
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		for _, n := range nodes {
			if got := getMap(t, n).Version; got < v {
				return fmt.Errorf("%s routes with version %d, want %d", n.addr, got, v)
			}
		}
		return nil
	})

	// Data through the router, on every replica.
	versions := map[string]*pb.Version{}
	for i := range 40 {
		key := fmt.Sprintf("k%03d", i)
		r, err := nodes[i%3].data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("v-" + key), Consistency: pb.Consistency_CONSISTENCY_ALL})
		if err != nil {
			t.Fatal(err)
		}
		versions[key] = r.Version
	}
	var entryIDs []uint64
	for i := range 8 {
		r, err := nodes[0].data.Append(t.Context(), &pb.AppendRequest{Table: "user_timeline", Owner: uint64(i%4 + 1), Payload: []byte("p"), Consistency: pb.Consistency_CONSISTENCY_ALL})
		if err != nil {
			t.Fatal(err)
		}
		entryIDs = append(entryIDs, r.Id)
	}
	if out := mustOps(t, "--addr", addr, "verify", "--rounds", "1"); !strings.Contains(out, "equal: every copy") {
		t.Fatalf("verify before any divergence:\n%s", out)
	}

	// Behind the router, to node-2's replicas only. Older than the
	// verification's start, so that they are not taken for writes in flight.
	m = getMap(t, nodes[0])
	old := &pb.Version{Hlc: uint64(time.Now().Add(-time.Minute).UnixMilli()) << 16}
	on2 := func(table string, h uint64) string { return leafOn(t, m, table, h, "node-2") }
	v7, v11 := versions["k007"], versions["k011"]
	strayID := entryIDs[len(entryIDs)-1] + 1
	behindTheRouter(t, nodes[2].addr, m.Version,
		putMut(on2("statuses", gizzard.Hash([]byte("stray"))), "stray", "x", old),
		putMut(on2("statuses", gizzard.Hash([]byte("k007"))), "k007", "newer", &pb.Version{Hlc: v7.Hlc + 1, Site: v7.Site}),
		&pb.Mutation{Table: "statuses", Shard: on2("statuses", gizzard.Hash([]byte("k011"))), Version: &pb.Version{Hlc: v11.Hlc + 1, Site: v11.Site},
			Op: &pb.Mutation_Delete_{Delete: &pb.Mutation_Delete{Key: []byte("k011")}}},
		&pb.Mutation{Table: "user_timeline", Shard: on2("user_timeline", gizzard.OwnerHash(2)), Version: old,
			Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: 2, Id: strayID, Payload: []byte("stray")}}},
	)
	want := []string{
		`content statuses "k007"`, `content statuses "k011"`, `content statuses "stray"`,
		fmt.Sprintf("index user_timeline owner=2 id=%d", strayID),
	}
	slices.Sort(want)

	rep, err := aeRun(t, "--addr", addr, "verify", "--rounds", "2")
	if !errors.Is(err, errDiverged) {
		t.Fatalf("verify after a divergence: %v, want %v", err, errDiverged)
	}
	if got := differingKeys(t, rep.Verify); !slices.Equal(got, want) || rep.Verify.Keys != len(want) || rep.Verify.Rounds != 2 {
		t.Fatalf("verify reports keys %q (%d, %d rounds), want %q", got, rep.Verify.Keys, rep.Verify.Rounds, want)
	}
	if d := rep.Verify.Digests; len(d) != 1 || d[0].ReplicasAgree || d[0].Shards != 6 {
		t.Fatalf("digests: %+v", d)
	}
	for key, want := range map[string]string{
		`content statuses "stray"`: "missing",
		`content statuses "k011"`:  versionString(versions["k011"]),
	} {
		for _, n := range []string{"node-0", "node-1"} {
			if got := copyVersion(t, rep.Verify, key, "", n); got != want {
				t.Errorf("%s on %s: %s, want %s", key, n, got, want)
			}
		}
	}
	if got := copyVersion(t, rep.Verify, `content statuses "k011"`, "", "node-2"); !strings.HasSuffix(got, " deleted") {
		t.Errorf("k011 on node-2: %s, want a tombstone", got)
	}
	// The text report and the one-line error.
	out, _, err := runOps(t, "--addr", addr, "verify", "--rounds", "1")
	if err == nil || !strings.Contains(err.Error(), "4 keys in") || !strings.Contains(err.Error(), "ops repair") {
		t.Fatalf("verify's error: %v", err)
	}
	if !strings.Contains(out, `content statuses "stray": newest `) || !strings.Contains(out, "missing at node-") {
		t.Fatalf("verify's report:\n%s", out)
	}
	// --shard and --table narrow it down.
	root, _ := m.Lookup("statuses", gizzard.Hash([]byte("stray")))
	rep, err = aeRun(t, "--addr", addr, "verify", "--rounds", "1", "--shard", root.Root, "--table", "statuses")
	if !errors.Is(err, errDiverged) || len(rep.Tables) != 1 {
		t.Fatalf("verify --shard %s --table statuses: %v, tables %v", root.Root, err, rep.Tables)
	}
	for _, k := range differingKeys(t, rep.Verify) {
		h := gizzard.Hash([]byte(strings.Trim(strings.TrimPrefix(k, "content statuses "), `"`)))
		if f, _ := m.Lookup("statuses", h); f.Root != root.Root {
			t.Errorf("verify --shard %s lists %s, of tree %s", root.Root, k, f.Root)
		}
	}

	// Digests only: the two ranges, not their keys.
	dg, err := s.antiEntropy(t.Context(), []siteEndpoint{{Name: "local", Addr: addr}}, aeOptions{DigestsOnly: true})
	if err != nil || dg.ok() || dg.Verify.Unequal != 2 || dg.Verify.Keys != 0 || !strings.HasPrefix(dg.summary(), "digests: 2 of 14 ranges differ") {
		t.Fatalf("digests only: %v; %s; %+v", err, dg.summary(), dg.Verify)
	}

	// The descent: with spans of at most one record, the same keys are
	// found, in sub-spans of the tables' spans.
	p, err := s.aePlan(t.Context(), []siteEndpoint{{Name: "local", Addr: addr}}, aeOptions{Tables: []string{"statuses", "user_timeline"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.sets {
		p.sets[i].leaf = 1
	}
	c, err := compareCopies(t.Context(), p.sets, compareOptions{start: time.Now(), rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	var narrowed []string
	for _, sd := range c.diffs {
		if whole := p.sets[sd.set].spans[0]; bytes.Equal(sd.span.Start, whole.Start) && bytes.Equal(sd.span.End, whole.End) {
			t.Errorf("%s was read whole, not narrowed down", sd.span)
		}
		for _, d := range sd.diffs {
			narrowed = append(narrowed, d.key)
		}
	}
	if slices.Sort(narrowed); !slices.Equal(narrowed, want) {
		t.Fatalf("the descent finds %q, want %q", narrowed, want)
	}

	out, _, err = runOps(t, "--addr", addr, "repair", "--dry-run", "--rounds", "1")
	if !errors.Is(err, errDiverged) || !strings.Contains(out, "repair (dry run): would send 4 keys to 8 copies:") || !strings.Contains(err.Error(), "without --dry-run") {
		t.Fatalf("repair --dry-run: %v\n%s", err, out)
	}
	t.Logf("repair --dry-run:\n%s", out)
	rep, err = aeRun(t, "--addr", addr, "repair", "--rounds", "1")
	if err != nil {
		t.Fatalf("repair: %v; %+v", err, rep)
	}
	if r := rep.Repair; r.Keys != 4 || r.Writes != 8 || r.Applied != 8 || len(r.Unresolved) != 0 {
		t.Fatalf("repair sent %+v, want 4 keys to 8 copies, all applied", r)
	}
	if rep.After == nil || !rep.After.ok() || !rep.After.Digests[0].ReplicasAgree {
		t.Fatalf("after the repair: %+v", rep.After)
	}
	if out := mustOps(t, "--addr", addr, "verify", "--rounds", "1"); !strings.Contains(out, "equal: every copy") {
		t.Fatalf("verify after the repair:\n%s", out)
	}

	// Every replica now returns the newest versions.
	for i, n := range nodes {
		leaf := func(table string, h uint64) string { return leafOn(t, m, table, h, fmt.Sprintf("node-%d", i)) }
		g, err := n.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("stray"), Shard: leaf("statuses", gizzard.Hash([]byte("stray")))})
		if err != nil || string(g.Value) != "x" {
			t.Errorf("node-%d: stray: %v %v", i, g, err)
		}
		g, err = n.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k007"), Shard: leaf("statuses", gizzard.Hash([]byte("k007")))})
		if err != nil || string(g.Value) != "newer" || g.Version.Hlc != v7.Hlc+1 {
			t.Errorf("node-%d: k007: %v %v", i, g, err)
		}
		g, err = n.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k011"), Shard: leaf("statuses", gizzard.Hash([]byte("k011")))})
		if status.Code(err) != codes.NotFound {
			t.Errorf("node-%d: k011: %v %v, want NotFound", i, g, err)
		}
		rg, err := n.data.Range(t.Context(), &pb.RangeRequest{Table: "user_timeline", Owner: 2, Limit: 100, Shard: leaf("user_timeline", gizzard.OwnerHash(2))})
		if err != nil || !slices.ContainsFunc(rg.Entries, func(e *pb.Entry) bool { return e.Id == strayID }) {
			t.Errorf("node-%d: owner 2's entries lack %d: %v %v", i, strayID, rg, err)
		}
	}
}

// replicaApplier is a relay's way into its site.
type replicaApplier struct{ c pb.ReplicaClient }

func (a replicaApplier) ApplyRemote(ctx context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	return a.c.ApplyRemote(ctx, r)
}

// startRelay runs, until the test ends, a relay applying the streams of
// sources to the site of the node at addr.
func startRelay(t *testing.T, site, addr string, sources ...replication.Source) {
	t.Helper()
	r, err := replication.NewRelay(replication.RelayConfig{LocalSite: site, Sources: sources, Applier: replicaApplier{replicaClient(t, addr)}, Batch: 64, MaxWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("relay of %s: %v", site, err)
		}
	})
}

// TestVerifyRepairAcrossSites: two one-node sites whose maps cut the hash
// space differently (two and three shard trees), linked by relays, hold the
// same data; a divergence injected at site-b only (a key site-a lacks, a
// newer overwrite) is found by ops verify across the sites, and ops repair
// --sites, taking the addresses from a dev deployment record, sends the
// newest versions to site-a; the sites' digests are then equal.
func TestVerifyRepairAcrossSites(t *testing.T) {
	type siteNode struct {
		*testNode
		name string
		id   uint32
		url  string
	}
	var sites []siteNode
	for i, shards := range []int{2, 3} {
		name := fmt.Sprintf("site-%c", 'a'+i)
		tn := startNode(t, node.Config{NodeID: "node-0", SiteName: name, SiteID: uint32(i + 1), DefaultShards: shards, HeartbeatInterval: 200 * time.Millisecond})
		sites = append(sites, siteNode{testNode: tn, name: name, id: uint32(i + 1), url: getMap(t, tn).Sites[name].NATSURL})
	}
	a, b := sites[0], sites[1]
	s := newSession(&options{addr: a.addr, timeout: 10 * time.Second, who: "erin@test"}, io.Discard, io.Discard)
	defer s.close()
	for _, st := range sites {
		for _, o := range sites {
			if o.name == st.name {
				continue
			}
			if _, err := s.proposeAt(t.Context(), st.addr, []gizzard.Step{{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: o.name, ID: o.id, NATSURL: o.url}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	startRelay(t, a.name, a.addr, replication.Source{Name: b.name, ID: b.id, NATSURL: b.url})
	startRelay(t, b.name, b.addr, replication.Source{Name: a.name, ID: a.id, NATSURL: a.url})

	// Writes at both sites, relayed to the other.
	versions := map[string]*pb.Version{}
	for i := range 30 {
		key := fmt.Sprintf("k%03d", i)
		r, err := sites[i%2].data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("v-" + key)})
		if err != nil {
			t.Fatal(err)
		}
		versions[key] = r.Version
	}
	checkFor(t, 30*time.Second, func() error {
		for key, v := range versions {
			for _, st := range sites {
				g, err := st.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(key)})
				if err != nil {
					return fmt.Errorf("%s: %s: %w", st.name, key, err)
				}
				if g.Version.Hlc != v.Hlc || g.Version.Site != v.Site {
					return fmt.Errorf("%s: %s at %s, want %s", st.name, key, versionString(g.Version), versionString(v))
				}
			}
		}
		return nil
	})
	both := []string{"--site-addr", "site-a=" + a.addr, "--site-addr", "site-b=" + b.addr, "--rounds", "1"}
	rep, err := aeRun(t, append([]string{"verify"}, both...)...)
	if err != nil || !rep.Verify.ok() || rep.Verify.Digests[0].Digest != rep.Verify.Digests[1].Digest || rep.Verify.Digests[0].Records == 0 {
		t.Fatalf("verify of converged sites: %v; %+v", err, rep.Verify)
	}
	// Site-a cuts statuses at 2^63, site-b at thirds: four pieces.
	if n := len(cutHashSpace([]*gizzard.Map{getMap(t, a.testNode), getMap(t, b.testNode)}, "statuses")); n != 4 {
		t.Fatalf("statuses is cut in %d pieces, want 4", n)
	}

	// Behind site-b's router, on site-b only.
	mb := getMap(t, b.testNode)
	old := &pb.Version{Hlc: uint64(time.Now().Add(-time.Minute).UnixMilli()) << 16, Site: b.id}
	v3 := versions["k003"]
	behindTheRouter(t, b.addr, mb.Version,
		putMut(leafOn(t, mb, "statuses", gizzard.Hash([]byte("only-b")), "node-0"), "only-b", "b", old),
		putMut(leafOn(t, mb, "statuses", gizzard.Hash([]byte("k003")), "node-0"), "k003", "newer", &pb.Version{Hlc: v3.Hlc + 1, Site: v3.Site}),
	)
	rep, err = aeRun(t, append([]string{"verify"}, both...)...)
	if !errors.Is(err, errDiverged) {
		t.Fatalf("verify across sites after a divergence: %v", err)
	}
	want := []string{`content statuses "k003"`, `content statuses "only-b"`}
	if got := differingKeys(t, rep.Verify); !slices.Equal(got, want) {
		t.Fatalf("verify across sites reports %q, want %q", got, want)
	}
	if got := copyVersion(t, rep.Verify, `content statuses "only-b"`, "site-a", "node-0"); got != "missing" {
		t.Fatalf("only-b at site-a: %s", got)
	}
	if d := rep.Verify.Digests; d[0].Digest == d[1].Digest || !d[0].ReplicasAgree {
		t.Fatalf("digests after a divergence: %+v", d)
	}

	// Repair, with the sites' addresses from a dev deployment record.
	dir := filepath.Join(t.TempDir(), "dev")
	rec := &devSite{Dir: dir, Sites: []devSubsite{
		{Name: "site-a", ID: 1, Nodes: []devNode{{ID: "node-0", GRPCAddr: a.addr}}},
		{Name: "site-b", ID: 2, Nodes: []devNode{{ID: "node-0", GRPCAddr: b.addr}}},
	}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := rec.write(); err != nil {
		t.Fatal(err)
	}
	rep, err = aeRun(t, "repair", "--sites", "site-a,site-b", "--dir", dir, "--rounds", "1")
	if err != nil {
		t.Fatalf("repair across sites: %v; %+v", err, rep)
	}
	if r := rep.Repair; r.Keys != 2 || r.Writes != 2 || r.Applied != 2 {
		t.Fatalf("repair sent %+v, want 2 keys to site-a", r)
	}
	for _, sd := range rep.Repair.Sends {
		if !strings.HasPrefix(sd.From, "site-b ") || len(sd.To) != 1 || !strings.HasPrefix(sd.To[0], "site-a ") {
			t.Errorf("repair sent %s from %s to %v, want from site-b to site-a", sd.Key, sd.From, sd.To)
		}
	}
	if d := rep.After.Digests; !rep.After.ok() || d[0].Digest != d[1].Digest || d[0].Records != d[1].Records {
		t.Fatalf("after the repair: %+v", rep.After)
	}
	if sum := rep.summary(); !strings.HasPrefix(sum, "2 keys differ in 2 of 28 ranges; repaired 2 keys (2 copies); after: equal; digests site-a ") {
		t.Errorf("summary: %s", sum)
	}
	dg, err := s.antiEntropy(t.Context(), []siteEndpoint{{Name: "site-a", Addr: a.addr}, {Name: "site-b", Addr: b.addr}}, aeOptions{DigestsOnly: true})
	if ds := dg.digests(); err != nil || !dg.ok() || ds["site-a"].Digest != ds["site-b"].Digest || ds["site-a"].Records != 31 {
		t.Fatalf("digests only after the repair: %v; %s", err, dg.summary())
	}
	g, err := a.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("only-b")})
	if err != nil || string(g.Value) != "b" || g.Version.Site != b.id {
		t.Fatalf("site-a: only-b: %v %v", g, err)
	}
	g, err = a.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k003")})
	if err != nil || string(g.Value) != "newer" {
		t.Fatalf("site-a: k003: %v %v", g, err)
	}
}
