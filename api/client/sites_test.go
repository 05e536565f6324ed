package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/aviarydb/aviary/node"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	// hashicorp/raft does not track the goroutines serving inbound raft
	// connections; each ends when its peer closes the connection.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}

// waitFor polls fn until it returns nil or the deadline passes.
func waitFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("condition not met after %s: %v", total, err)
}

// testSite is a one-node site: an in-process node that founds its own
// site, without replication (data does not cross sites).
type testSite struct {
	name string
	id   uint32
	cfg  node.Config
	stop func()
	ns   pb.NameserverClient
	data pb.DataClient
}

func startSite(t *testing.T, name string, id uint32) *testSite {
	t.Helper()
	ts := &testSite{name: name, id: id, cfg: node.Config{
		DataDir: t.TempDir(), GRPCAddr: testnet.Addr(t), HTTPAddr: "127.0.0.1:0", RaftAddr: testnet.Addr(t),
		NodeID: name + "-0", SiteName: name, SiteID: id, DefaultShards: 1, NATSURL: node.NATSOff,
	}}
	addr := ts.start(t)
	ts.cfg.GRPCAddr = addr // restarts listen where clients expect the site
	return ts
}

// start runs the node until stop or the end of the test, and waits until
// it serves.
func (ts *testSite) start(t *testing.T) string {
	t.Helper()
	n, err := node.New(t.Context(), ts.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	cc, err := netx.Dial(n.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	ts.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("site %s: node run: %v", ts.name, err)
			}
			_ = cc.Close()
		})
	}
	t.Cleanup(ts.stop)
	ts.ns, ts.data = pb.NewNameserverClient(cc), pb.NewDataClient(cc)
	hc := healthpb.NewHealthClient(cc)
	waitFor(t, 10*time.Second, func() error {
		r, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if r.Status != healthpb.HealthCheckResponse_SERVING {
			return errors.New(r.Status.String())
		}
		return nil
	})
	return n.GRPCAddr()
}

// propose commits c and waits until the node routes with it.
func (ts *testSite) propose(t *testing.T, c gizzard.Change) {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ts.ns.Propose(t.Context(), &pb.ProposeRequest{ChangeJson: b})
	if err != nil {
		t.Fatalf("site %s: propose %v: %v", ts.name, c.Steps, err)
	}
	waitFor(t, 10*time.Second, func() error {
		st, err := ts.ns.Status(t.Context(), &pb.StatusRequest{})
		if err != nil {
			return err
		}
		if st.MapVersion < r.Version {
			return fmt.Errorf("site %s routes with map version %d, want %d", ts.name, st.MapVersion, r.Version)
		}
		return nil
	})
}

// knows adds the other sites to ts's site map, so that a refusal can name
// them.
func (ts *testSite) knows(t *testing.T, others ...*testSite) {
	t.Helper()
	c := gizzard.Change{Who: "test"}
	for _, o := range others {
		c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: o.name, ID: o.id}})
	}
	ts.propose(t, c)
}

// setState puts ts's own site in state, sending its clients to use.
func (ts *testSite) setState(t *testing.T, state gizzard.SiteState, use string) {
	t.Helper()
	r, err := ts.ns.GetMap(t.Context(), &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var m gizzard.Map
	if err := json.Unmarshal(r.MapJson, &m); err != nil {
		t.Fatal(err)
	}
	site, ok := m.Sites[ts.name]
	if !ok {
		t.Fatalf("site %s is not in its own map", ts.name)
	}
	site.State, site.Use = state, use
	ts.propose(t, gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &site}}})
}

func (ts *testSite) site() client.Site {
	return client.Site{Name: ts.name, Addrs: []string{ts.cfg.GRPCAddr}}
}

// switches records OnSwitch's calls.
type switches struct {
	mu  sync.Mutex
	got []string // "from->to: reason"
}

func (s *switches) record(from, to, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, from+"->"+to+": "+reason)
}

func (s *switches) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func dialSites(t *testing.T, sites []client.Site, opts ...client.SiteOption) *client.Sites {
	t.Helper()
	s, err := client.DialSites(sites, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func putAt(t *testing.T, s *client.Sites, key string) *pb.WriteResult {
	t.Helper()
	r, err := s.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("v")})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return r
}

// landsAt checks that a write's version was stamped by site want.
func landsAt(t *testing.T, r *pb.WriteResult, want *testSite) {
	t.Helper()
	if got := r.GetVersion().GetSite(); got != want.id {
		t.Fatalf("write stamped by site id %d, want %d (%s)", got, want.id, want.name)
	}
}

func newClock() *ids.ManualClock { return ids.NewManualClock(time.Unix(1_750_000_000, 0)) }

// TestSitesFailOverOnRefusal: a fenced site's refusal sends writes to the
// site it names, and they come back once it is active and the back-off has
// passed.
func TestSitesFailOverOnRefusal(t *testing.T) {
	a, b := startSite(t, "a", 1), startSite(t, "b", 2)
	a.knows(t, b)
	clock := newClock()
	var sw switches
	s := dialSites(t, []client.Site{a.site(), b.site()}, client.WithClock(clock), client.OnSwitch(sw.record))
	ctx := t.Context()

	landsAt(t, putAt(t, s, "k0"), a)
	if got := s.Current(); got != "a" {
		t.Fatalf("current %q, want a", got)
	}

	a.setState(t, gizzard.SiteFenced, "b")
	landsAt(t, putAt(t, s, "k1"), b)
	if got := s.Current(); got != "b" {
		t.Fatalf("current %q after a's refusal, want b", got)
	}
	if got := sw.list(); len(got) != 1 || !strings.HasPrefix(got[0], "a->b: ") || !strings.Contains(got[0], "refused") || !strings.Contains(got[0], "fenced") {
		t.Fatalf("switches %q, want one a->b naming the refusal", got)
	}
	// The write was applied at b only, and reads go to b too.
	if _, err := b.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k1")}); err != nil {
		t.Fatalf("k1 at b: %v", err)
	}
	if _, err := a.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k1")}); status.Code(err) != codes.NotFound {
		t.Fatalf("k1 at a: %v, want NotFound", err)
	}
	if _, err := s.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k1")}); err != nil {
		t.Fatalf("read through the sites: %v", err)
	}

	// a is active again, but its back-off has not passed: writes stay at b.
	a.setState(t, gizzard.SiteActive, "")
	landsAt(t, putAt(t, s, "k2"), b)
	clock.Advance(client.DefaultBackoff)
	// The next call probes a; the write after the probe goes to a.
	i := 0
	waitFor(t, 10*time.Second, func() error {
		i++
		if got := putAt(t, s, fmt.Sprint("back-", i)).GetVersion().GetSite(); got != a.id {
			return fmt.Errorf("write stamped by site id %d", got)
		}
		return nil
	})
	if got := s.Current(); got != "a" {
		t.Fatalf("current %q after failback, want a", got)
	}
	if got := sw.list(); len(got) != 2 || !strings.HasPrefix(got[1], "b->a: ") || !strings.Contains(got[1], "accepts writes") {
		t.Fatalf("switches %q, want a->b then b->a", got)
	}
	t.Logf("switches: %q", sw.list())
}

// TestSitesFailOverWhenUnreachable: writes go to the next site while no
// node of the first answers, and come back when it returns.
func TestSitesFailOverWhenUnreachable(t *testing.T) {
	a, b := startSite(t, "a", 1), startSite(t, "b", 2)
	clock := newClock()
	var sw switches
	s := dialSites(t, []client.Site{a.site(), b.site()}, client.WithClock(clock), client.OnSwitch(sw.record))

	landsAt(t, putAt(t, s, "k0"), a)
	a.stop()
	landsAt(t, putAt(t, s, "k1"), b)
	if got := s.Current(); got != "b" {
		t.Fatalf("current %q with a down, want b", got)
	}
	if got := sw.list(); len(got) != 1 || !strings.HasPrefix(got[0], "a->b: ") || !strings.Contains(got[0], "unreachable") {
		t.Fatalf("switches %q, want one a->b naming unreachability", got)
	}

	// a returns on the same address; until its back-off passes, writes
	// stay at b.
	a.start(t)
	landsAt(t, putAt(t, s, "k2"), b)
	clock.Advance(client.DefaultBackoff)
	i := 0
	waitFor(t, 10*time.Second, func() error {
		i++
		if got := putAt(t, s, fmt.Sprint("back-", i)).GetVersion().GetSite(); got != a.id {
			return fmt.Errorf("write stamped by site id %d", got)
		}
		return nil
	})
	if got := s.Current(); got != "a" {
		t.Fatalf("current %q after a returned, want a", got)
	}
	if got := sw.list(); len(got) != 2 || !strings.HasPrefix(got[1], "b->a: ") {
		t.Fatalf("switches %q, want a->b then b->a", got)
	}
	t.Logf("switches: %q", sw.list())
}

// TestSitesEverySiteRefuses: when every site refuses, the call fails with
// the refusal, not a generic error; reads are still served.
func TestSitesEverySiteRefuses(t *testing.T) {
	a, b := startSite(t, "a", 1), startSite(t, "b", 2)
	a.knows(t, b)
	b.knows(t, a)
	a.setState(t, gizzard.SiteFenced, "b")
	b.setState(t, gizzard.SiteRecovering, "a")
	s := dialSites(t, []client.Site{a.site(), b.site()}, client.WithClock(newClock()))
	ctx := t.Context()

	_, err := s.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("put with every site refusing: %v, want FailedPrecondition", err)
	}
	if r, ok := client.ParseSiteRefusal(err); !ok || r.Site != "a" || r.State != "fenced" || r.Use != "b" {
		t.Fatalf("refusal %+v (%v) from %v, want a's", r, ok, err)
	}
	for _, want := range []string{`site "a" is fenced and takes no writes; write to site "b"`, `site "b" is recovering and takes no writes; write to site "a"`} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	if _, err := s.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("k")}); status.Code(err) != codes.NotFound {
		t.Fatalf("read with every site refusing writes: %v, want NotFound", err)
	}
}
