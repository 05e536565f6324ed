package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/node"
	"google.golang.org/grpc"
)

// The router workload: a put workload through the routing layer of an
// in-process 3-node site, once per --replicas value, and the time a shard
// map change takes to reach every node.
const (
	routerWorkload  = "router"          // its name in --workloads
	routerPutName   = "router-put"      // the workload of its put rows
	propagationName = "map-propagation" // the workload of its propagation row
	siteNodes       = 3                 // nodes of a site
	siteShards      = 8                 // shard trees a site is seeded with
	maxSiteReplicas = siteNodes         // one replica per node at most
)

// Bounds of the site's setup and of the propagation measurement. They are
// generous: they only turn a hung site into an error.
const (
	siteReadyTimeout   = 60 * time.Second // a node joining and becoming ready
	siteVersionTimeout = 30 * time.Second // every node routing with a map version
	siteDrainTimeout   = 60 * time.Second // replication backlog delivered
	propagationTimeout = 10 * time.Second // one change reaching every Watch stream
)

// propagationChanges is the number of map changes map-propagation times;
// tests lower it.
var propagationChanges = 200

// consistencies are the consistency levels router-put is measured with, and
// their labels: the default (which is ONE) and ALL.
var consistencies = []struct {
	level pb.Consistency
	label string
}{
	{pb.Consistency_CONSISTENCY_DEFAULT, "ONE"},
	{pb.Consistency_CONSISTENCY_ALL, "ALL"},
}

// site is an in-process site: node-0 founds it, the others join it.
type site struct {
	dir   string
	nodes []*node.Node
	stops []func() error // cancel a node's Run and wait for it
	conns []*grpc.ClientConn
	ns    []pb.NameserverClient
	admin []pb.ShardAdminClient
}

// startSite starts a site of nodes nodes whose map is seeded with shards
// shard trees (all on node-0), with its data under dir, one node after
// another (each ready before the next starts), and returns once every node
// is ready. On error whatever was started is stopped.
func startSite(ctx context.Context, dir string, nodes, shards int, opts ...func(*node.Config)) (s *site, err error) {
	s = &site{dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.stop())
			s = nil
		}
	}()
	for i := range nodes {
		cfg := node.Config{
			DataDir:       filepath.Join(dir, fmt.Sprintf("node-%d", i)),
			NodeID:        fmt.Sprintf("node-%d", i),
			WorkerID:      uint32(i),
			GRPCAddr:      "127.0.0.1:0",
			HTTPAddr:      "127.0.0.1:0",
			RaftAddr:      "127.0.0.1:0",
			DefaultShards: shards,
		}
		if i > 0 {
			cfg.Join = s.nodes[0].GRPCAddr()
		}
		for _, o := range opts {
			o(&cfg)
		}
		if err := secure(&cfg); err != nil {
			return nil, err
		}
		n, err := node.New(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", cfg.NodeID, err)
		}
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(runCtx) }()
		s.nodes = append(s.nodes, n)
		s.stops = append(s.stops, func() error {
			cancel()
			if err := <-done; err != nil {
				return fmt.Errorf("%s: %w", cfg.NodeID, err)
			}
			return nil
		})
		cc, err := dial(n.GRPCAddr())
		if err != nil {
			return nil, err
		}
		s.conns = append(s.conns, cc)
		s.ns = append(s.ns, pb.NewNameserverClient(cc))
		s.admin = append(s.admin, pb.NewShardAdminClient(cc))
		rctx, rcancel := context.WithTimeout(ctx, siteReadyTimeout)
		err = n.WaitReady(rctx)
		rcancel()
		if err != nil {
			return nil, fmt.Errorf("%s (join %q): not ready: %w", cfg.NodeID, cfg.Join, err)
		}
	}
	return s, nil
}

// stop closes the site's client connections, then stops every node (at
// once) and waits for them. It may be called more than once.
func (s *site) stop() error {
	for _, cc := range s.conns {
		_ = cc.Close()
	}
	s.conns = nil
	errs := make([]error, len(s.stops))
	var wg sync.WaitGroup
	for i, stop := range s.stops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = stop()
		}()
	}
	wg.Wait()
	s.stops = nil
	return errors.Join(errs...)
}

// getMap returns node i's copy of the shard map.
func (s *site) getMap(ctx context.Context, i int) (*gizzard.Map, error) {
	r, err := s.ns[i].GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		return nil, fmt.Errorf("node-%d: get map: %w", i, err)
	}
	var m gizzard.Map
	if err := json.Unmarshal(r.MapJson, &m); err != nil {
		return nil, fmt.Errorf("node-%d: decode map: %w", i, err)
	}
	return &m, nil
}

// replicate gives every shard tree (a Replicating root) r readable replicas:
// it adds r-1 physical shards, on node-1, node-2, ..., linked under each
// root, in one change proposed through node-0, and waits until every node
// routes with it. It returns the map version and the number of trees.
func (s *site) replicate(ctx context.Context, r int) (version uint64, trees int, err error) {
	m, err := s.getMap(ctx, 0)
	if err != nil {
		return 0, 0, err
	}
	// Computed from version m.Version: it must apply to that version only.
	c := gizzard.Change{Who: "aviary-bench", IfVersion: m.Version}
	for _, root := range m.Roots() {
		sh := m.Shards[root]
		if sh.Kind != gizzard.KindReplicating {
			continue
		}
		trees++
		if len(sh.Children) != 1 {
			return 0, 0, fmt.Errorf("tree %q has %d replicas, want 1 in a fresh site", root, len(sh.Children))
		}
		for i := 1; i < r; i++ {
			nodeID := fmt.Sprintf("node-%d", i)
			leaf := root + "-" + nodeID
			c.Steps = append(c.Steps,
				gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: leaf, Kind: gizzard.KindPhysical, Node: nodeID}},
				gizzard.Step{Op: gizzard.OpAddLink, Parent: root, Child: leaf, Weight: 1})
		}
	}
	if trees == 0 {
		return 0, 0, errors.New("the site's map has no replicating shard trees")
	}
	version = m.Version
	if len(c.Steps) > 0 {
		body, err := json.Marshal(c)
		if err != nil {
			return 0, 0, err
		}
		resp, err := s.ns[0].Propose(ctx, &pb.ProposeRequest{ChangeJson: body})
		if err != nil {
			return 0, 0, fmt.Errorf("propose %d replicas per tree: %w", r, err)
		}
		version = resp.Version
	}
	return version, trees, s.waitVersion(ctx, version)
}

// waitVersion waits until every node's router routes with map version v or
// a later one (Status map_version).
func (s *site) waitVersion(ctx context.Context, v uint64) error {
	ctx, cancel := context.WithTimeout(ctx, siteVersionTimeout)
	defer cancel()
	for i, ns := range s.ns {
		for {
			st, err := ns.Status(ctx, &pb.StatusRequest{})
			if err == nil && st.MapVersion >= v {
				break
			}
			if ctx.Err() != nil {
				if err == nil {
					err = fmt.Errorf("at map version %d", st.MapVersion)
				}
				return fmt.Errorf("node-%d does not route with map version %d: %w", i, v, err)
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	}
	return nil
}

// drain waits until no node has replica jobs left: every write journaled so
// far has been applied by all its replicas. With consistency ONE the
// replicas beyond the first are written after the acknowledgement, so a
// backlog may outlive a measurement; draining keeps it out of the next.
func (s *site) drain(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, siteDrainTimeout)
	defer cancel()
	for i, admin := range s.admin {
		for {
			r, err := admin.ListJobs(ctx, &pb.ListJobsRequest{Limit: 1})
			if err == nil && len(r.Jobs) == 0 {
				break
			}
			if ctx.Err() != nil {
				if err == nil {
					err = errors.New("replica jobs still pending")
				}
				return time.Since(start), fmt.Errorf("node-%d: backlog not drained after %s: %w", i, time.Since(start).Round(time.Millisecond), err)
			}
			time.Sleep(10 * time.Millisecond) // polling interval
		}
	}
	return time.Since(start), nil
}

// runRouter runs the router workload: for each --replicas value a fresh
// site, router-put with each consistency, and on the site with the most
// replicas map-propagation; then the throughput ratios. It returns the
// errors of shutting the sites down; failed operations are reported and
// counted as results are.
func (b *bench) runRouter(ctx context.Context) error {
	c := &b.cfg
	propAt := 0 // the index of the largest replica count
	for i, r := range c.Replicas {
		if r >= c.Replicas[propAt] {
			propAt = i
		}
	}
	results := map[string][]*result{} // by consistency label, in --replicas order
	var shutdownErrs []error
	for i, r := range c.Replicas {
		if ctx.Err() != nil {
			break
		}
		res, err := b.routerSite(ctx, r, i == propAt)
		for label, rr := range res {
			results[label] = append(results[label], rr)
		}
		if err != nil {
			b.printf("# router r=%d: shutting the site down: %v\n", r, err)
			shutdownErrs = append(shutdownErrs, fmt.Errorf("router r=%d: %w", r, err))
		}
	}
	if ctx.Err() == nil && len(c.Replicas) > 1 {
		for _, cons := range consistencies {
			rs := results[cons.label]
			for _, r := range c.Replicas[1:] {
				b.siteRatio(cons.label, r, c.Replicas[0], resultFor(rs, r), resultFor(rs, c.Replicas[0]))
			}
		}
	}
	return errors.Join(shutdownErrs...)
}

// resultFor returns the result of replica count r, or nil.
func resultFor(rs []*result, r int) *result {
	for _, x := range rs {
		if x.Replicas == r {
			return x
		}
	}
	return nil
}

// routerSite starts a site, gives its trees r replicas, measures router-put
// with each consistency and, if prop, map propagation, and shuts the site
// down. It returns the put results by consistency label (a failed setup
// gives none) and the error of the shutdown.
func (b *bench) routerSite(ctx context.Context, r int, prop bool) (_ map[string]*result, shutdownErr error) {
	c := &b.cfg
	dir := filepath.Join(b.root, fmt.Sprintf("site-r%d", r))
	setupFailed := func(err error) {
		if ctx.Err() == nil {
			b.report(&result{Workload: routerPutName, Target: fmt.Sprintf("r=%d", r), Concurrency: c.Concurrency, MutsPerOp: 1,
				Replicas: r, Nodes: siteNodes, Errors: 1, Hist: NewHistogram(), ErrSamples: map[string]uint64{"setup: " + err.Error(): 1}})
		}
	}
	start := time.Now()
	s, err := startSite(ctx, dir, siteNodes, siteShards)
	if err != nil {
		setupFailed(err)
		return nil, os.RemoveAll(dir)
	}
	defer func() {
		t := time.Now()
		shutdownErr = errors.Join(s.stop(), os.RemoveAll(dir))
		b.printf("# router r=%d: site shut down in %s\n", r, time.Since(t).Round(time.Millisecond))
	}()
	version, trees, err := s.replicate(ctx, r)
	if err != nil {
		setupFailed(err)
		return nil, nil
	}
	replicas := "replicas"
	if r == 1 {
		replicas = "replica"
	}
	b.printf("# router r=%d: %d-node site up in %s: %d shard trees with %d %s each, map version %d on every node, data in %s\n",
		r, siteNodes, time.Since(start).Round(time.Millisecond), trees, r, replicas, version, dir)

	// --conns connections to each node, interleaved so that client w
	// writes through node w mod siteNodes.
	var clients []pb.DataClient
	for range c.Conns {
		for _, n := range s.nodes {
			cc, err := dial(n.GRPCAddr())
			if err != nil {
				setupFailed(err)
				return nil, nil
			}
			defer cc.Close()
			clients = append(clients, pb.NewDataClient(cc))
		}
	}
	client := func(w int) pb.DataClient { return clients[w%len(clients)] }

	out := map[string]*result{}
	for _, cons := range consistencies {
		if ctx.Err() != nil {
			return out, nil
		}
		res := runLoop(ctx, routerPutName, fmt.Sprintf("r=%d %s", r, cons.label), c.Concurrency, 1, c.Warmup, c.Duration,
			putOps(unary(client), c.ValueBytes, cons.level, r))
		if res == nil {
			return out, nil
		}
		res.Replicas, res.Consistency, res.Nodes = r, cons.label, siteNodes
		b.report(res)
		out[cons.label] = res
		b.drainSite(ctx, s, r)
	}
	if prop && ctx.Err() == nil {
		if res := b.mapPropagation(ctx, s, propagationChanges); res != nil {
			b.report(res)
		}
	}
	return out, nil
}

// drainSite drains the site's replication backlog and says how long it took
// if that was noticeable.
func (b *bench) drainSite(ctx context.Context, s *site, r int) {
	d, err := s.drain(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		b.printf("# router r=%d: %v\n", r, err)
	case d >= 50*time.Millisecond:
		b.printf("# router r=%d: replication backlog drained in %s\n", r, d.Round(time.Millisecond))
	}
}

// mapPropagation measures how long a shard map change takes to reach every
// node: it opens a Watch stream on each node, then proposes changes
// create_table changes one at a time through node-1 and times each from just
// before Propose until its version (or a later one) has arrived on every
// stream. It returns nil if interrupted before any was measured.
func (b *bench) mapPropagation(ctx context.Context, s *site, changes int) *result {
	res := &result{Workload: propagationName, Target: fmt.Sprintf("%d nodes", len(s.nodes)), Concurrency: 1,
		Nodes: len(s.nodes), LatencyOnly: true, Hist: NewHistogram(), ErrSamples: map[string]uint64{}}
	fail := func(err error) {
		res.Errors++
		if msg := err.Error(); len(res.ErrSamples) < maxErrSamples || res.ErrSamples[msg] > 0 {
			res.ErrSamples[msg]++
		}
	}
	start := time.Now()
	defer func() {
		res.Elapsed = time.Since(start)
		res.Ops = res.Hist.Count()
		res.Interrupted = ctx.Err() != nil
	}()

	type arrival struct {
		node    int
		version uint64
		at      time.Time
		err     error
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// Big enough that a stream never waits for the loop below, so that
	// every arrival is stamped when it is received.
	arrivals := make(chan arrival, len(s.nodes)*(changes+8))
	latest := make([]uint64, len(s.nodes))
	for i, ns := range s.ns {
		m, err := s.getMap(ctx, i)
		if err != nil {
			fail(err)
			return res
		}
		latest[i] = m.Version
		stream, err := ns.Watch(wctx, &pb.WatchRequest{AfterVersion: m.Version})
		if err != nil {
			fail(fmt.Errorf("node-%d: watch: %w", i, err))
			return res
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := stream.Recv()
				a := arrival{node: i, at: time.Now(), err: err}
				if err == nil {
					a.version = m.Version
				}
				select {
				case arrivals <- a:
				case <-wctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	leader := "?"
	if st, err := s.ns[1].Status(ctx, &pb.StatusRequest{}); err == nil {
		leader = st.LeaderId
	}
	b.printf("# %s: %d create_table changes proposed one at a time through node-1 (raft leader %s), each timed until its map version arrived on the Watch streams of all %d nodes\n",
		propagationName, changes, leader, len(s.nodes))

changes:
	for i := range changes {
		if ctx.Err() != nil {
			break
		}
		body, err := json.Marshal(gizzard.Change{Who: "aviary-bench", Steps: []gizzard.Step{{
			Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: fmt.Sprintf("bench_prop_%d", i), Kind: gizzard.TableContent},
		}}})
		if err != nil {
			fail(err)
			continue
		}
		t0 := time.Now()
		resp, err := s.ns[1].Propose(ctx, &pb.ProposeRequest{ChangeJson: body})
		if err != nil {
			if ctx.Err() == nil {
				fail(fmt.Errorf("propose: %w", err))
			}
			continue
		}
		v := resp.Version
		var last time.Time // the latest arrival of v among the nodes
		missing := 0
		for _, l := range latest {
			if l < v {
				missing++
			}
		}
		timeout := time.NewTimer(propagationTimeout)
		for missing > 0 {
			select {
			case a := <-arrivals:
				if a.err != nil {
					timeout.Stop()
					if ctx.Err() == nil {
						fail(fmt.Errorf("node-%d: watch: %w", a.node, a.err))
					}
					return res
				}
				if latest[a.node] < v && a.version >= v {
					missing--
					if a.at.After(last) {
						last = a.at
					}
				}
				latest[a.node] = max(latest[a.node], a.version)
			case <-timeout.C:
				fail(fmt.Errorf("map version %d did not reach %d of %d nodes within %s", v, missing, len(s.nodes), propagationTimeout))
				missing = 0
				last = time.Time{}
			case <-ctx.Done():
				timeout.Stop()
				break changes
			}
		}
		timeout.Stop()
		if !last.IsZero() {
			res.Hist.RecordDuration(last.Sub(t0))
		}
	}
	if res.Hist.Count() == 0 && res.Errors == 0 {
		return nil
	}
	return res
}

// siteRatio prints the throughput ratio of router-put with r replicas to
// that with base replicas, at one consistency, or "-" if either is missing.
func (b *bench) siteRatio(label string, r, base int, num, den *result) {
	rec := jsonRatio{Type: "ratio", Workload: routerPutName, Of: fmt.Sprintf("r=%d/r=%d", r, base), Consistency: label}
	text := "-"
	if num != nil && den != nil && den.OpsPerSec() > 0 {
		v := num.OpsPerSec() / den.OpsPerSec()
		rec.Ratio = &v
		text = fmt.Sprintf("%.2f", v)
	}
	b.printf("%-*s %-7s %s (%s) = %s\n", b.wcol, routerPutName, "ratio", rec.Of, label, text)
	b.records = append(b.records, rec)
}

// hasRouter reports whether the router workload is selected, and whether any
// workload of the single node (not router, not migrate, which start their
// own sites) is.
func hasRouter(workloads []string) (router, others bool) {
	router = slices.Contains(workloads, routerWorkload)
	others = slices.ContainsFunc(workloads, func(w string) bool {
		return w != routerWorkload && w != migrateWorkload && w != relayWorkload
	})
	return router, others
}
