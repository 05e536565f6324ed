package ops

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSite runs the CLI in-process against a three-node in-process site.
// The subtests share the site and run in order: each changes the map the
// next one sees.
func TestSite(t *testing.T) {
	nodes := startSite(t, 4)
	// Changes go through a follower, which forwards them to the leader.
	addr := nodes[1].addr
	ops := func(args ...string) []string {
		return append([]string{"--addr", addr, "--timeout", "10s", "--who", "alice@test"}, args...)
	}

	t.Run("ping and nodes agree", func(t *testing.T) {
		out := mustOps(t, ops("ping", "--wait", "10s")...)
		m := getMap(t, nodes[1])
		if want := fmt.Sprintf("all nodes agree on version %d", m.Version); !strings.Contains(out, want) {
			t.Fatalf("ping:\n%s\nwant %q", out, want)
		}
		var r pingReport
		if err := json.Unmarshal([]byte(mustOps(t, ops("ping", "--json")...)), &r); err != nil {
			t.Fatal(err)
		}
		if !r.Agree || r.Version != m.Version || len(r.Nodes) != 3 {
			t.Fatalf("ping --json: %+v", r)
		}
		out = mustOps(t, ops("nodes")...)
		for _, n := range nodes {
			if !strings.Contains(out, n.addr) {
				t.Fatalf("nodes lists no %s:\n%s", n.addr, out)
			}
		}
		if got := strings.Count(out, "ready"); got != 3 {
			t.Fatalf("nodes: %d ready, want 3:\n%s", got, out)
		}
		if !strings.Contains(out, "Leader") || strings.Count(out, "Follower") != 2 {
			t.Fatalf("nodes: want one leader and two followers:\n%s", out)
		}
	})

	t.Run("tree show", func(t *testing.T) {
		out := mustOps(t, ops("tree", "show", "rep-000", "rep-003")...)
		want := `rep-000 (replicating)
└── default-000 (physical on node-0)
rep-003 (replicating)
└── default-003 (physical on node-0)
`
		if out != want {
			t.Fatalf("tree show:\n%s\nwant:\n%s", out, want)
		}
		if out := mustOps(t, ops("tree", "show")...); strings.Count(out, "(replicating)") != 4 {
			t.Fatalf("tree show of every root:\n%s", out)
		}
		if _, _, err := runOps(t, ops("tree", "show", "nope")...); err == nil || !strings.Contains(err.Error(), `shard "nope" does not exist`) {
			t.Fatalf("tree show nope: %v", err)
		}
	})

	t.Run("replica add promote remove", func(t *testing.T) {
		out := mustOps(t, ops("replica", "add", "rep-000", "--node", "node-1")...)
		if !strings.Contains(out, "write-only") || !strings.Contains(out, "ops replica promote rep-000 default-000-node-1") {
			t.Fatalf("replica add says:\n%s", out)
		}
		m := getMap(t, nodes[1])
		if got, want := m.Shards["rep-000"].Children, []gizzard.Link{{Child: "default-000", Weight: 1}, {Child: "default-000-node-1-wo", Weight: 1}}; !slices.Equal(got, want) {
			t.Fatalf("rep-000 children %v, want %v", got, want)
		}
		wo := m.Shards["default-000-node-1-wo"]
		if wo.Kind != gizzard.KindWriteOnly || len(wo.Children) != 1 || wo.Children[0].Child != "default-000-node-1" {
			t.Fatalf("wrapper %+v", wo)
		}
		if leaf := m.Shards["default-000-node-1"]; leaf.Kind != gizzard.KindPhysical || leaf.Node != "node-1" {
			t.Fatalf("leaf %+v", leaf)
		}
		want := `rep-000 (replicating)
├── default-000 (physical on node-0)
└── default-000-node-1-wo (write_only)
    └── default-000-node-1 (physical on node-1)
`
		if out := mustOps(t, ops("tree", "show", "rep-000")...); out != want {
			t.Fatalf("tree after add:\n%s\nwant:\n%s", out, want)
		}

		mustOps(t, ops("replica", "promote", "rep-000", "default-000-node-1")...)
		m = getMap(t, nodes[1])
		if got, want := m.Shards["rep-000"].Children, []gizzard.Link{{Child: "default-000", Weight: 1}, {Child: "default-000-node-1", Weight: 1}}; !slices.Equal(got, want) {
			t.Fatalf("after promote: rep-000 children %v, want %v", got, want)
		}
		if _, ok := m.Shards["default-000-node-1-wo"]; ok {
			t.Fatal("after promote: the wrapper is still in the map")
		}

		// A write-only replica on node-2, so that removing both readable
		// ones would leave rep-000 with none.
		mustOps(t, ops("replica", "add", "rep-000", "--node", "node-2")...)
		mustOps(t, ops("replica", "remove", "rep-000", "default-000-node-1")...)
		_, _, err := runOps(t, ops("replica", "remove", "rep-000", "default-000")...)
		if !errors.Is(err, ErrLastReadable) {
			t.Fatalf("removing the last readable replica: %v", err)
		}
		mustOps(t, ops("replica", "remove", "rep-000", "default-000-node-2-wo")...)
		m = getMap(t, nodes[1])
		if got, want := m.Shards["rep-000"].Children, []gizzard.Link{{Child: "default-000", Weight: 1}}; !slices.Equal(got, want) {
			t.Fatalf("after remove: rep-000 children %v, want %v", got, want)
		}
		for _, id := range []string{"default-000-node-1", "default-000-node-2", "default-000-node-2-wo"} {
			if _, ok := m.Shards[id]; ok {
				t.Fatalf("after remove: %s is still in the map", id)
			}
		}
		// The removed replica's data stays on node-1: adding it again by the
		// same id would resurrect old data, and is refused.
		checkFor(t, 10*time.Second, func() error {
			_, _, err := runOps(t, ops("replica", "add", "rep-000", "--node", "node-1")...)
			if err == nil || !strings.Contains(err.Error(), "still holds a physical shard") {
				return fmt.Errorf("re-adding a removed replica: %v", err)
			}
			return nil
		})
		// Dropping its data needs --yes, is refused for a shard the map
		// still assigns, and then lets the replica be added again.
		if _, _, err := runOps(t, ops("shard", "drop-data", "node-1", "default-000-node-1")...); !errors.Is(err, ErrNotConfirmed) {
			t.Fatalf("drop-data without --yes: %v", err)
		}
		if _, _, err := runOps(t, ops("shard", "drop-data", "node-0", "default-000", "--yes")...); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("drop-data of a shard in the map: %v", err)
		}
		mustOps(t, ops("shard", "drop-data", "node-1", "default-000-node-1", "--yes")...)
		mustOps(t, ops("replica", "add", "rep-000", "--node", "node-1")...)
	})

	t.Run("forwardings", func(t *testing.T) {
		_, _, err := runOps(t, ops("forwarding", "set", "statuses", "0xZZ", "rep-000")...)
		if err == nil || !strings.Contains(err.Error(), `base "0xZZ"`) {
			t.Fatalf("bad base: %v", err)
		}
		_, _, err = runOps(t, ops("forwarding", "remove", "statuses", "12345")...)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "no forwarding") {
			t.Fatalf("removing a missing forwarding: %v (code %v)", err, status.Code(err))
		}
		mustOps(t, ops("table", "create", "likes", "--kind", "index")...)
		mustOps(t, ops("forwarding", "set", "likes", "0", "rep-001")...)
		mustOps(t, ops("forwarding", "set", "likes", "0x8000000000000000", "rep-002")...)
		out := mustOps(t, ops("forwardings", "likes")...)
		want := "TABLE  BASE                ROOT\nlikes  0x0000000000000000  rep-001\nlikes  0x8000000000000000  rep-002\n"
		if out != want {
			t.Fatalf("forwardings likes:\n%s\nwant:\n%s", out, want)
		}
		_, _, err = runOps(t, ops("forwarding", "remove", "likes", "9223372036854775808", "--root", "rep-003")...)
		if err == nil || !strings.Contains(err.Error(), `points to "rep-002", not "rep-003"`) {
			t.Fatalf("guarded remove: %v", err)
		}
		mustOps(t, ops("forwarding", "remove", "likes", "9223372036854775808", "--root", "rep-002")...)
		if fs := getMap(t, nodes[1]).Forwardings["likes"]; len(fs) != 1 || fs[0].Root != "rep-001" {
			t.Fatalf("likes forwardings %v", fs)
		}
	})

	t.Run("lookup", func(t *testing.T) {
		var r lookupResult
		if err := json.Unmarshal([]byte(mustOps(t, ops("lookup", "statuses", "1001", "--json")...)), &r); err != nil {
			t.Fatal(err)
		}
		m := getMap(t, nodes[1])
		h := gizzard.Hash([]byte("1001"))
		f, err := m.Lookup("statuses", h)
		if err != nil {
			t.Fatal(err)
		}
		if r.Hash != h || r.Root != f.Root || r.Base != f.Base || len(r.WriteTargets) == 0 || len(r.ReadOrder) == 0 {
			t.Fatalf("lookup: %+v, want hash %x root %s", r, h, f.Root)
		}
		out := mustOps(t, ops("lookup", "likes", "--owner", "42")...)
		if want := hex64(gizzard.OwnerHash(42)); !strings.Contains(out, want) || !strings.Contains(out, "rep-00") {
			t.Fatalf("lookup --owner:\n%s\nwant hash %s", out, want)
		}
		if _, _, err := runOps(t, ops("lookup", "statuses", "--owner", "1")...); err == nil || !strings.Contains(err.Error(), "content table") {
			t.Fatalf("lookup content table by owner: %v", err)
		}
		if _, _, err := runOps(t, ops("lookup", "likes", "k")...); err == nil || !strings.Contains(err.Error(), "--owner") {
			t.Fatalf("lookup index table by key: %v", err)
		}
	})

	t.Run("audit", func(t *testing.T) {
		var entries []gizzard.AuditEntry
		if err := json.Unmarshal([]byte(mustOps(t, ops("audit", "--limit", "0", "--json")...)), &entries); err != nil {
			t.Fatal(err)
		}
		var mine []string
		for _, e := range entries {
			if e.Who == "alice@test" {
				mine = append(mine, e.What)
			}
		}
		if len(mine) < 8 || !strings.HasPrefix(mine[0], `create_shard physical "default-000-node-1" on node "node-1"`) {
			t.Fatalf("audit by alice@test: %q", mine)
		}
		out := mustOps(t, ops("audit", "--limit", "2")...)
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(lines[2], "alice@test") {
			t.Fatalf("audit --limit 2:\n%s", out)
		}
	})

	t.Run("json output parses", func(t *testing.T) {
		for _, args := range [][]string{
			{"nodes"}, {"ping"}, {"tables"}, {"shards"}, {"shards", "--sizes"}, {"forwardings"},
			{"tree", "show"}, {"lookup", "users", "x"}, {"audit"}, {"version"}, {"jobs", "--all"},
			{"errors", "list", "--all"}, {"link", "weight", "rep-001", "default-001", "2"},
		} {
			out := mustOps(t, ops(append(args, "--json")...)...)
			var v any
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Errorf("%s --json: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		var rows []struct {
			ID        string  `json:"id"`
			Kind      string  `json:"kind"`
			SizeBytes *uint64 `json:"size_bytes"`
		}
		if err := json.Unmarshal([]byte(mustOps(t, ops("shards", "--sizes", "--json")...)), &rows); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if (r.Kind == "physical") != (r.SizeBytes != nil) {
				t.Errorf("shard %s (%s): size %v", r.ID, r.Kind, r.SizeBytes)
			}
		}
	})

	t.Run("jobs on an idle site", func(t *testing.T) {
		if out := mustOps(t, ops("jobs", "--all")...); out != "no pending jobs\n" {
			t.Fatalf("jobs --all: %q", out)
		}
		var l jobList
		if err := json.Unmarshal([]byte(mustOps(t, ops("jobs", "--node", "node-2", "--json")...)), &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Jobs) != 0 || len(l.Errors) != 0 {
			t.Fatalf("jobs --node node-2: %+v", l)
		}
		_, _, err := runOps(t, ops("errors", "drop", "node-0", "1", "node-1/x")...)
		if !errors.Is(err, ErrNotConfirmed) {
			t.Fatalf("drop without --yes: %v", err)
		}
		_, _, err = runOps(t, ops("errors", "retry", "node-0", "1", "node-1/x")...)
		if status.Code(err) != codes.NotFound {
			t.Fatalf("retry a missing job: %v", err)
		}
	})

	t.Run("invalid change", func(t *testing.T) {
		before := getMap(t, nodes[1]).Version
		// rep-001 is the root of forwardings: it cannot get a parent.
		out, errOut, err := runOps(t, ops("link", "add", "rep-000", "rep-001")...)
		if err == nil {
			t.Fatalf("link add of a forwarding root succeeded:\n%s", out)
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "gizzard: invalid change") {
			t.Fatalf("error %v (code %v)", err, status.Code(err))
		}
		if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "Error: change via "+addr) {
			t.Fatalf("stderr %q, want one line", errOut)
		}
		if after := getMap(t, nodes[1]).Version; after != before {
			t.Fatalf("map version %d -> %d after a refused change", before, after)
		}
		_, _, err = runOps(t, "--addr", "127.0.0.1:1", "--timeout", "2s", "version")
		if err == nil || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("unreachable node: %v", err)
		}
	})

	t.Run("environment", func(t *testing.T) {
		t.Setenv("AVIARY_OPS_ADDR", nodes[2].addr)
		t.Setenv("AVIARY_OPS_JSON", "true")
		out := mustOps(t, "version")
		var v struct{ Version uint64 }
		if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == 0 {
			t.Fatalf("version via environment: %q %v", out, err)
		}
		// A flag on the command line wins.
		if _, _, err := runOps(t, "--addr", "127.0.0.1:1", "--timeout", "2s", "version"); err == nil {
			t.Fatal("--addr did not override AVIARY_OPS_ADDR")
		}
	})

	t.Run("a stopped node is unreachable and owed jobs", func(t *testing.T) {
		mustOps(t, ops("replica", "add", "rep-001", "--node", "node-2", "--readable")...)
		mustOps(t, ops("ping", "--wait", "10s")...)
		nodes[2].stop()
		out, _, err := runOps(t, ops("ping", "--timeout", "2s")...)
		if !errors.Is(err, ErrNotAgreed) || !strings.Contains(err.Error(), "unreachable: node-2") {
			t.Fatalf("ping with node-2 stopped: %v\n%s", err, out)
		}
		if !strings.Contains(out, "unreachable: connection refused") {
			t.Fatalf("ping with node-2 stopped:\n%s", out)
		}
		out = mustOps(t, ops("nodes")...)
		if got := strings.Count(out, "ready"); got != 2 || !strings.Contains(out, "connection refused") {
			t.Fatalf("nodes with node-2 stopped:\n%s", out)
		}

		// A write to rep-001 through node-1 leaves a job for node-2.
		m := getMap(t, nodes[1])
		key := ""
		for i := 0; key == ""; i++ {
			k := strconv.Itoa(i)
			if f, err := m.Lookup("statuses", gizzard.Hash([]byte(k))); err == nil && f.Root == "rep-001" {
				key = k
			}
		}
		if _, err := nodes[1].data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		var l jobList
		if err := json.Unmarshal([]byte(mustOps(t, ops("jobs", "--json")...)), &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Jobs) != 1 || l.Jobs[0].Node != "node-1" || l.Jobs[0].Target != "node-2/default-001-node-2" {
			t.Fatalf("jobs of node-1: %+v", l)
		}
		out = mustOps(t, ops("jobs")...)
		t.Logf("jobs:\n%s", out)
		if !strings.Contains(out, "node-2/default-001-node-2") || !strings.HasPrefix(out, "NODE") {
			t.Fatalf("jobs of node-1:\n%s", out)
		}
	})
}
