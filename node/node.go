// Package node runs an Aviary storage node: a shard.Store holding physical
// shards, a voter of the site's nameserver (the raft-replicated shard map),
// and a router that sends every write to the shard trees the map names,
// journaled first. It serves the gRPC Data, ShardAdmin, Nameserver and
// Replica services, the standard health and reflection services, Prometheus
// metrics and a health endpoint over HTTP, and collects expired tombstones.
//
// A node started without Config.Join founds a new site: it bootstraps a
// one-voter nameserver and seeds the map with itself, the default tables and
// DefaultShards shard trees. A node started with Join asks that node's site
// to add it (as a raft voter and a node of the map); it then holds whatever
// physical shards the map assigns to it.
//
// A Node is built by New, which opens the store and the listeners (so the
// bound addresses are known before serving), and served by Run until its
// context ends, after which it shuts down gracefully: health turns to
// NOT_SERVING, in-flight requests finish (up to Config.ShutdownTimeout), and
// the store is closed cleanly.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/nameserver"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/hedge"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/shard"
	"github.com/aviarydb/aviary/timeline/home"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// Node is a running storage node.
type Node struct {
	cfg     Config
	log     *slog.Logger
	store   *shard.Store
	hlc     *ids.HLC
	ids     *ids.Generator
	metrics *metrics
	ns      *nameserver.Server
	router  *router.Router
	commits *commitQueue // applies concurrent writes in batches
	// draining ends (drain) when the node starts shutting down.
	draining context.Context
	drain    context.CancelFunc
	// budget bounds the bytes of clients' writes in flight.
	budget *writeBudget
	// readHedge keeps the latencies of remote replica reads, whose p95 is
	// the hedge delay of routed reads (readFrom).
	readHedge *hedge.Latencies
	remotes   remotes
	sec       *netx.Security
	limits    *clientLimits

	// routedVersion is the map version the router routes with; ready is
	// set once the map lists this node and its shards exist.
	routedVersion atomic.Uint64
	ready         atomic.Bool
	readyCh       chan struct{} // closed when ready is set
	// fence admits writes by the fences of the map applied last.
	fence *fence
	// copies are the migration copies running into this node.
	copies copies
	// repl is the node's side of cross-site replication.
	repl *replicator
	// timelines serves home timelines.
	timelines *home.Service

	grpcLis, httpLis net.Listener
	grpcSrv          *grpc.Server
	httpSrv          *http.Server
	health           *health.Server
	serving          atomic.Bool
}

// New opens the node's store (creating the default tables and shards of a
// new node) and its listeners. Call Run to serve.
func New(ctx context.Context, cfg Config) (_ *Node, err error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, hlc: ids.NewHLC(cfg.Clock, cfg.MaxClockSkew), readyCh: make(chan struct{}), fence: newFence()}
	n.commits = &commitQueue{n: n}
	n.draining, n.drain = context.WithCancel(context.Background())
	n.budget = newWriteBudget(cfg.MaxWriteBytesInFlight, n.draining)
	n.readHedge = hedge.New()
	if n.ids, err = ids.NewGenerator(cfg.SiteID, cfg.WorkerID, cfg.Clock); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	n.store, err = shard.Open(cfg.DataDir, shard.Options{
		Limits:        cfg.Limits,
		Clock:         cfg.Clock,
		MaxClockAhead: cfg.MaxClockSkew,
		Logger:        cfg.Logger,
		CacheBytes:    cfg.CacheBytes,

		RescanVersionBound: cfg.RescanVersionBound,
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = n.store.Close() })

	reg := cfg.Registry
	if reg == nil {
		reg = defaultRegistry()
	}
	n.metrics = newMetrics(reg, n.store)
	n.budget.register(reg)

	if n.grpcLis, err = netx.Listen(ctx, cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("node: grpc: %w", err)
	}
	closers = append(closers, func() { _ = n.grpcLis.Close() })
	if n.httpLis, err = netx.Listen(ctx, cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("node: http: %w", err)
	}
	closers = append(closers, func() { _ = n.httpLis.Close() })

	n.sec = &netx.Security{TLS: cfg.TLS, Site: cfg.SiteName, Logger: cfg.Logger, Tokens: cfg.Tokens}
	n.limits = newClientLimits(cfg.ClientRate, cfg.ClientBurst)
	n.remotes.sec = n.sec
	n.ns, err = nameserver.Open(ctx, nameserver.Config{
		Security:  n.sec,
		NodeID:    cfg.NodeID,
		RaftAddr:  cfg.RaftAddr,
		Dir:       filepath.Join(cfg.DataDir, "raft"),
		Bootstrap: cfg.Join == "",
		Logger:    cfg.Logger,
		Clock:     cfg.Clock,
		Fast:      true,
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = n.ns.Close() })
	if err := n.startNATS(); err != nil {
		return nil, err
	}
	closers = append(closers, n.stopNATS)
	n.router = router.New(router.Config{
		NodeID:          cfg.NodeID,
		Site:            cfg.SiteName,
		StartRecovering: cfg.StartRecovering,
		Store:           n.store,
		Map:             n.routedMap,
		Remote:          &n.remotes,
		Logger:          cfg.Logger,
		Clock:           cfg.Clock,
		ReplicaTimeout:  cfg.ReplicaTimeout,
		Registry:        reg,
		Admit:           n.fence.admit,
		WaitMap:         n.waitMap,
		Outbox:          n.replicating(),
	})

	if err := n.newTimelines(reg); err != nil {
		return nil, fmt.Errorf("node: timelines: %w", err)
	}

	n.grpcSrv = grpc.NewServer(netx.ServerOptions(n.sec.ServerOption(),
		grpc.ChainUnaryInterceptor(n.authorizeUnary, n.metrics.unary), grpc.ChainStreamInterceptor(n.authorizeStream))...)
	pb.RegisterDataServer(n.grpcSrv, &dataServer{n: n})
	pb.RegisterShardAdminServer(n.grpcSrv, &adminServer{n: n})
	pb.RegisterNameserverServer(n.grpcSrv, &nameserverServer{n: n})
	pb.RegisterReplicaServer(n.grpcSrv, &replicaServer{n: n})
	pb.RegisterTimelinesServer(n.grpcSrv, n.timelines)
	n.health = health.NewServer()
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(n.grpcSrv, n.health)
	reflection.Register(n.grpcSrv)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", n.healthz)
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return n, nil
}

// GRPCAddr is the bound gRPC address.
func (n *Node) GRPCAddr() string { return n.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address (metrics, health).
func (n *Node) HTTPAddr() string { return n.httpLis.Addr().String() }

// WaitReady waits until the node is part of its site's map and holds the
// shards the map assigns to it (Run must be running).
func (n *Node) WaitReady(ctx context.Context) error {
	select {
	case <-n.readyCh:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Store returns the node's store, for in-process tools and tests.
func (n *Node) Store() *shard.Store { return n.store }

func (n *Node) healthz(w http.ResponseWriter, _ *http.Request) {
	if !n.serving.Load() || !n.ready.Load() {
		http.Error(w, "not serving", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// Run serves until ctx ends or a server fails, then shuts down gracefully
// and closes the store. It returns nil after a shutdown caused by ctx.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := n.grpcSrv.Serve(n.grpcLis); err != nil {
			errc <- fmt.Errorf("node: grpc serve: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := n.httpSrv.Serve(n.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("node: http serve: %w", err)
		}
	}()
	bg, stopBG := context.WithCancel(context.Background())
	for _, f := range []func(context.Context){n.gcLoop, n.reconcile, n.repl.run, n.timelines.Run, func(ctx context.Context) {
		if err := n.membership(ctx); err != nil && ctx.Err() == nil {
			n.log.Error("cannot join the site", "err", err)
		}
	}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(bg)
		}()
	}
	routerCtx, stopRouter := context.WithCancel(context.Background())
	routerDone := make(chan struct{})
	go func() {
		defer close(routerDone)
		n.router.Run(routerCtx)
	}()

	n.serving.Store(true)
	n.log.Info("node serving", "node", n.cfg.NodeID, "grpc", n.GRPCAddr(), "http", n.HTTPAddr(), "raft", n.ns.Addr(),
		"site", n.cfg.SiteName, "site_id", n.cfg.SiteID, "worker_id", n.cfg.WorkerID, "dir", n.cfg.DataDir, "join", n.cfg.Join)

	var runErr error
	select {
	case <-ctx.Done():
		n.log.Info("shutting down", "cause", context.Cause(ctx))
	case runErr = <-errc:
		n.log.Error("server failed, shutting down", "err", runErr)
	}
	n.serving.Store(false)
	n.health.Shutdown()
	stopBG()
	n.drain() // write streams finish what they took and end, and writes waiting for room in the budget give up

	stopped := make(chan struct{})
	go func() {
		n.grpcSrv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(n.cfg.ShutdownTimeout)
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		n.log.Warn("in-flight requests did not finish in time; closing them", "timeout", n.cfg.ShutdownTimeout)
		n.grpcSrv.Stop()
		<-stopped
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	if err := n.httpSrv.Shutdown(shutCtx); err != nil {
		n.log.Warn("http shutdown", "err", err)
	}
	// No call can start a write now: apply what callers that gave up left
	// queued, then let deliveries in flight finish.
	n.commits.close()
	stopRouter()
	<-routerDone
	wg.Wait()
	if err := n.ns.Close(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	n.remotes.close()
	n.stopNATS()
	if err := n.store.Close(); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("node: close store: %w", err))
	}
	n.log.Info("node stopped")
	return runErr
}

// gcLoop collects expired tombstones every GCInterval until ctx ends.
func (n *Node) gcLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := n.collectTombstones(ctx); err != nil && ctx.Err() == nil {
				n.log.Error("tombstone collection failed", "err", err)
			}
		}
	}
}

func (n *Node) collectTombstones(ctx context.Context) (int, error) {
	horizon := n.tombstoneHorizon(ids.MakeTimestamp(n.cfg.Clock.Now().Add(-n.cfg.TombstoneGrace).UnixMilli(), 0))
	start := time.Now()
	c, err := n.store.CollectTombstones(ctx, horizon)
	n.metrics.collected.Add(float64(c))
	n.log.Info("tombstones collected", "count", c, "grace", n.cfg.TombstoneGrace, "took", time.Since(start).Round(time.Millisecond))
	return c, err
}

const healthServing = healthpb.HealthCheckResponse_SERVING
