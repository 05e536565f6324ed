package replication_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/replication"
	"github.com/aviarydb/aviary/replication/natsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// site is a one-node site run in-process, with its embedded NATS, and the
// relay that applies the other sites' streams to it.
type site struct {
	name string
	id   uint32
	n    *node.Node
	cc   *grpc.ClientConn
	data pb.DataClient
	ns   pb.NameserverClient
	rep  pb.ReplicaClient
	adm  pb.ShardAdminClient
	url  string

	stopNode  func()
	relayStop context.CancelFunc
	relayDone chan error
	relay     *replication.Relay
}

func startSite(t *testing.T, name string, id uint32) *site {
	t.Helper()
	return startSiteWith(t, node.Config{SiteName: name, SiteID: id})
}

// offsetClock is the system clock shifted by a fixed offset.
type offsetClock time.Duration

func (o offsetClock) Now() time.Time { return time.Now().Add(time.Duration(o)) }

// startSiteWith starts a site from cfg's SiteName, SiteID, NATSURL and
// Clock.
func startSiteWith(t *testing.T, cfg node.Config) *site {
	t.Helper()
	name, id := cfg.SiteName, cfg.SiteID
	cfg.NodeID, cfg.DataDir, cfg.DefaultShards = "node-0", t.TempDir(), 2
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.RaftAddr, cfg.NATSAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CacheBytes, cfg.HeartbeatInterval = 8<<20, 200*time.Millisecond
	n, err := node.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	s := &site{name: name, id: id, n: n, stopNode: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("site %s: %v", name, err)
			}
		})
	}}
	t.Cleanup(s.stopNode)
	s.cc, err = netx.Dial(n.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.cc.Close() })
	s.data, s.ns, s.rep, s.adm = pb.NewDataClient(s.cc), pb.NewNameserverClient(s.cc), pb.NewReplicaClient(s.cc), pb.NewShardAdminClient(s.cc)
	waitFor(t, 20*time.Second, func() error {
		st, err := s.ns.Status(t.Context(), &pb.StatusRequest{})
		if err != nil || !st.Ready {
			return fmt.Errorf("not ready: %v %v", st, err)
		}
		return nil
	})
	s.url = s.siteMap(t).Sites[name].NATSURL
	if s.url == "" {
		t.Fatalf("site %s: no NATS URL in its map", name)
	}
	return s
}

func (s *site) siteMap(t *testing.T) *gizzard.Map {
	t.Helper()
	r, err := s.ns.GetMap(t.Context(), &pb.GetMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m := gizzard.NewMap()
	if err := json.Unmarshal(r.MapJson, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (s *site) propose(t *testing.T, steps ...gizzard.Step) {
	t.Helper()
	b, _ := json.Marshal(gizzard.Change{Steps: steps, Who: "test", At: time.Now()})
	if _, err := s.ns.Propose(t.Context(), &pb.ProposeRequest{ChangeJson: b}); err != nil {
		t.Fatal(err)
	}
}

// applier is the relay's way into its site.
type applier struct{ c pb.ReplicaClient }

func (a applier) ApplyRemote(ctx context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	return a.c.ApplyRemote(ctx, r)
}

func (s *site) startRelay(t *testing.T, sites []*site) {
	t.Helper()
	var sources []replication.Source
	for _, o := range sites {
		if o != s {
			sources = append(sources, replication.Source{Name: o.name, ID: o.id, NATSURL: o.url})
		}
	}
	r, err := replication.NewRelay(replication.RelayConfig{LocalSite: s.name, Sources: sources, Applier: applier{s.rep}, Batch: 64, MaxWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.relay, s.relayStop, s.relayDone = r, cancel, make(chan error, 1)
	go func() { s.relayDone <- r.Run(ctx) }()
	t.Cleanup(s.stopRelay)
}

func (s *site) stopRelay() {
	if s.relayStop != nil {
		s.relayStop()
		<-s.relayDone
		s.relayStop = nil
	}
}

// startSites starts n one-node sites, each listing all of them, with
// their relays.
func startSites(t *testing.T, n int) []*site {
	t.Helper()
	var sites []*site
	for i := range n {
		sites = append(sites, startSite(t, fmt.Sprintf("site-%c", 'a'+i), uint32(i+1)))
	}
	link(t, sites)
	return sites
}

// link lists every site in every site's map and starts their relays.
func link(t *testing.T, sites []*site) {
	t.Helper()
	for _, s := range sites {
		for _, o := range sites {
			if o != s {
				s.propose(t, gizzard.Step{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: o.name, ID: o.id, NATSURL: o.url}})
			}
		}
	}
	for _, s := range sites {
		s.startRelay(t, sites)
	}
}

func waitFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	t.Fatalf("condition not met after %s: %v", total, err)
}

func testSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("AVIARY_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed=%d (replay with AVIARY_SEED=%d)", seed, seed)
	return seed
}

// version orders acknowledged writes by last-writer-wins.
type version struct {
	hlc  uint64
	site uint32
}

func (v version) newer(w version) bool {
	return v.hlc > w.hlc || v.hlc == w.hlc && v.site > w.site
}

// history records acknowledged writes of a shared key space.
type history struct {
	mu   sync.Mutex
	last map[string]version // key -> newest acknowledged version
	del  map[string]bool    // key -> whether that newest write was a delete
}

func (h *history) ack(key string, v version, deleted bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.last[key]; !ok || v.newer(cur) {
		h.last[key], h.del[key] = v, deleted
	}
}

// write drives conflicting puts and deletes on a small shared key space
// at every site until ctx ends.
func write(ctx context.Context, sites []*site, seed uint64, h *history, errs *[]error, mu *sync.Mutex) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, s := range sites {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				key := fmt.Sprintf("k%03d", rng.IntN(200))
				var r *pb.WriteResult
				var err error
				deleted := rng.IntN(5) == 0
				if deleted {
					r, err = s.data.Delete(context.Background(), &pb.DeleteRequest{Table: "statuses", Key: []byte(key)})
				} else {
					r, err = s.data.Put(context.Background(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(fmt.Sprintf("%s from %s #%d", key, s.name, n))})
				}
				if err != nil {
					mu.Lock()
					*errs = append(*errs, fmt.Errorf("%s: %w", s.name, err))
					mu.Unlock()
					continue
				}
				h.ack(key, version{r.Version.Hlc, r.Version.Site}, deleted)
			}
		})
	}
	return &wg
}

// converged checks that every site returns, for every key, the newest
// acknowledged write, and that the sites' shards are digest-equal.
func converged(t *testing.T, sites []*site, h *history) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, want := range h.last {
		for _, s := range sites {
			r, err := s.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(key)})
			if h.del[key] {
				if status.Code(err) != codes.NotFound {
					return fmt.Errorf("%s: key %s: want deleted (at %d@%d), got %v %v", s.name, key, want.hlc, want.site, r, err)
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("%s: key %s: %v", s.name, key, err)
			}
			if got := (version{r.Version.Hlc, r.Version.Site}); got != want {
				return fmt.Errorf("%s: key %s: version %d@%d, want %d@%d", s.name, key, got.hlc, got.site, want.hlc, want.site)
			}
		}
	}
	for _, shard := range []string{"default-000", "default-001"} {
		var first []byte
		for _, s := range sites {
			d, err := s.adm.DigestData(t.Context(), &pb.DigestDataRequest{Shard: shard})
			if err != nil {
				return err
			}
			if first == nil {
				first = d.Sum
			} else if string(d.Sum) != string(first) {
				return fmt.Errorf("%s of %s differs from %s's (%d records)", shard, s.name, sites[0].name, d.Records)
			}
		}
	}
	return nil
}

// TestThreeSitesConverge writes conflicting puts and deletes of the same
// keys at three sites at once; once writes stop, every site holds the
// newest acknowledged write of every key, and their shards are equal.
func TestThreeSitesConverge(t *testing.T) {
	sites := startSites(t, 3)
	h := &history{last: map[string]version{}, del: map[string]bool{}}
	var mu sync.Mutex
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	write(ctx, sites, testSeed(t), h, &errs, &mu).Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writes failed: %v", err)
	}
	waitFor(t, 60*time.Second, func() error { return converged(t, sites, h) })
	var conflicts int
	for _, s := range sites {
		st, err := s.rep.ReplicationStatus(t.Context(), &pb.ReplicationStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		conflicts += len(st.Conflicts)
		if len(st.Origins) != 2 {
			t.Errorf("%s has %d paths, want 2: %v", s.name, len(st.Origins), st.Origins)
		}
	}
	t.Logf("%d keys converged on 3 sites; %d conflicts logged", len(h.last), conflicts)
	if conflicts == 0 {
		t.Error("conflicting writes of 200 keys from 3 sites logged no conflict")
	}
}

// TestRelayRestartsAndCatchesUp stops one site's relay under load and
// starts another in its place (a crash: the same durable consumer); it
// catches up, nothing is lost, and what is delivered again changes
// nothing.
func TestRelayRestartsAndCatchesUp(t *testing.T) {
	sites := startSites(t, 3)
	h := &history{last: map[string]version{}, del: map[string]bool{}}
	var mu sync.Mutex
	var errs []error
	seed := testSeed(t)
	ctx, cancel := context.WithCancel(context.Background())
	wg := write(ctx, sites, seed, h, &errs, &mu)
	rng := rand.New(rand.NewPCG(seed, 99))
	for range 3 {
		time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond) // a random point of the load
		sites[1].stopRelay()
		time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond) // the relay stays down a while
		sites[1].startRelay(t, sites)
	}
	cancel()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writes failed: %v", err)
	}
	waitFor(t, 60*time.Second, func() error { return converged(t, sites, h) })
}

// TestWritesWhileNATSIsDown stops site A's NATS (an external server here)
// under load: A's local writes keep succeeding, its outbox holds them, and
// once NATS is back they reach the other sites.
func TestWritesWhileNATSIsDown(t *testing.T) {
	dir := t.TempDir()
	srv, err := natsx.StartServer(natsx.ServerConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Port()
	t.Cleanup(func() { srv.Shutdown() })
	a := startSiteWith(t, node.Config{SiteName: "site-a", SiteID: 1, NATSURL: srv.ClientURL()})
	b := startSite(t, "site-b", 2)
	sites := []*site{a, b}
	link(t, sites)
	h := &history{last: map[string]version{}, del: map[string]bool{}}
	var mu sync.Mutex
	var errs []error
	seed := testSeed(t)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	write(ctx, sites, seed, h, &errs, &mu).Wait()
	cancel()
	srv.Shutdown()
	ctx, cancel = context.WithTimeout(context.Background(), 1500*time.Millisecond)
	write(ctx, sites[:1], seed+1, h, &errs, &mu).Wait() // A alone, NATS down
	cancel()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writes failed while NATS was down: %v", err)
	}
	st, err := a.rep.ReplicationStatus(t.Context(), &pb.ReplicationStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.NatsConnected || st.OutboxEntries == 0 {
		t.Fatalf("with NATS down: connected %v, outbox %d entries", st.NatsConnected, st.OutboxEntries)
	}
	t.Logf("outbox while NATS is down: %d entries", st.OutboxEntries)
	srv, err = natsx.StartServer(natsx.ServerConfig{Dir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() error { return converged(t, sites, h) })
	waitFor(t, 30*time.Second, func() error {
		st, err := a.rep.ReplicationStatus(t.Context(), &pb.ReplicationStatusRequest{})
		if err != nil {
			return err
		}
		if st.OutboxEntries != 0 {
			return fmt.Errorf("outbox still holds %d entries (watermarks %v, published %d)", st.OutboxEntries, st.SiteWatermarks, st.PublishedSeq)
		}
		return nil
	})
}

// TestClockSkew runs site A's clock 2s ahead of B's (within the 10s
// bound): conflicting writes still converge by last-writer-wins and B's
// conflict log shows its losing writes. A version beyond the bound is
// refused.
func TestClockSkew(t *testing.T) {
	a := startSiteWith(t, node.Config{SiteName: "site-a", SiteID: 1, Clock: offsetClock(2 * time.Second)})
	b := startSite(t, "site-b", 2)
	sites := []*site{a, b}
	link(t, sites)
	h := &history{last: map[string]version{}, del: map[string]bool{}}
	var mu sync.Mutex
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	write(ctx, sites, testSeed(t), h, &errs, &mu).Wait()
	cancel()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() error { return converged(t, sites, h) })
	st, err := a.rep.ReplicationStatus(t.Context(), &pb.ReplicationStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Conflicts) == 0 {
		t.Error("site A, 2s ahead, logged no losing write from B")
	}
	far := &pb.Version{Hlc: uint64(time.Now().Add(time.Minute).UnixMilli()) << 16, Site: 2}
	_, err = b.data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("far"), Value: []byte("x"), Shard: "default-000", Version: far})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a version a minute ahead: %v, want InvalidArgument", err)
	}
}

// TestGapIsRepaired lets site A's stream drop messages (a 1s age limit)
// while B's relay is down: when it returns it finds the gap, reports it,
// asks A to publish the missing entries again from its outbox, and B
// converges.
func TestGapIsRepaired(t *testing.T) {
	a := startSiteWith(t, node.Config{SiteName: "site-a", SiteID: 1, ReplicationMaxAge: time.Second})
	b := startSite(t, "site-b", 2)
	sites := []*site{a, b}
	link(t, sites)
	h := &history{last: map[string]version{}, del: map[string]bool{}}
	var mu sync.Mutex
	var errs []error
	seed := testSeed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	write(ctx, sites[:1], seed, h, &errs, &mu).Wait()
	cancel()
	waitFor(t, 30*time.Second, func() error { return converged(t, sites, h) })
	b.stopRelay()
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	write(ctx, sites[:1], seed+1, h, &errs, &mu).Wait()
	cancel()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Wait until the stream has dropped entries B has not applied.
	st, err := b.rep.ReplicationStatus(t.Context(), &pb.ReplicationStatusRequest{})
	if err != nil || len(st.Origins) != 1 {
		t.Fatalf("B's paths: %v %v", st, err)
	}
	waitFor(t, 30*time.Second, func() error { return expired(t, a, st.Origins[0].Watermark+1) })
	b.startRelay(t, sites)
	waitFor(t, 60*time.Second, func() error { return converged(t, sites, h) })
	if got := b.relay.Status(); len(got) != 1 || got[0].Gaps == 0 {
		t.Errorf("B's relay counted no gap: %+v", got)
	}
}

// expired reports nil once A's stream no longer holds the message of
// outbox entry seq (its first message is newer).
func expired(t *testing.T, a *site, seq uint64) error {
	nc, js, err := natsx.Connect(t.Context(), a.url, "test")
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := js.Stream(t.Context(), replication.StreamName(a.name))
	if err != nil {
		return err
	}
	first, err := s.Info(t.Context())
	if err != nil {
		return err
	}
	msg, err := s.GetMsg(t.Context(), first.State.FirstSeq)
	if err != nil {
		return err
	}
	var m pb.ReplicationMessage
	if err := proto.Unmarshal(msg.Data, &m); err != nil {
		return err
	}
	if !m.Heartbeat && m.Seq <= seq {
		return fmt.Errorf("the stream still holds entry %d", m.Seq)
	}
	if m.Heartbeat && m.Seq < seq {
		return fmt.Errorf("the stream still holds a heartbeat of %d", m.Seq)
	}
	return nil
}
