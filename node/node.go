// Package node runs an Aviary storage node: a shard.Store behind the gRPC
// Data and ShardAdmin services, the standard gRPC health and reflection
// services, Prometheus metrics and a health endpoint over HTTP, and the
// background collection of expired tombstones.
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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/shard"
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
	place   placement
	metrics *metrics

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
	n := &Node{cfg: cfg, log: cfg.Logger, hlc: ids.NewHLC(cfg.Clock, cfg.MaxClockSkew)}
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
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = n.store.Close() })
	if err := n.initSchema(ctx); err != nil {
		return nil, err
	}

	reg := cfg.Registry
	if reg == nil {
		reg = defaultRegistry()
	}
	n.metrics = newMetrics(reg, n.store)

	if n.grpcLis, err = netx.Listen(ctx, cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("node: grpc: %w", err)
	}
	closers = append(closers, func() { _ = n.grpcLis.Close() })
	if n.httpLis, err = netx.Listen(ctx, cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("node: http: %w", err)
	}
	closers = append(closers, func() { _ = n.httpLis.Close() })

	n.grpcSrv = grpc.NewServer(netx.ServerOptions(grpc.ChainUnaryInterceptor(n.metrics.unary))...)
	pb.RegisterDataServer(n.grpcSrv, &dataServer{n: n})
	pb.RegisterShardAdminServer(n.grpcSrv, &adminServer{n: n})
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

// initSchema creates the default tables and shards of a new node and loads
// the default placement of an existing one.
func (n *Node) initSchema(ctx context.Context) error {
	for _, t := range n.cfg.Tables {
		if _, err := n.store.Table(t.Name); err == nil {
			continue
		}
		if err := n.store.CreateTable(ctx, t.Name, t.Kind); err != nil {
			return fmt.Errorf("node: create table %q: %w", t.Name, err)
		}
	}
	for _, sh := range n.store.Shards() {
		if strings.HasPrefix(sh.Name, "default-") {
			n.place.shards = append(n.place.shards, sh.Name)
		}
	}
	if len(n.place.shards) == 0 {
		for i := range n.cfg.DefaultShards {
			sh, err := n.store.CreateShard(ctx, defaultShardName(i))
			if err != nil {
				return fmt.Errorf("node: create default shard: %w", err)
			}
			n.place.shards = append(n.place.shards, sh.Name)
		}
		n.log.Info("new node initialised", "dir", n.cfg.DataDir, "shards", len(n.place.shards), "tables", len(n.cfg.Tables))
	} else if len(n.place.shards) != n.cfg.DefaultShards {
		n.log.Warn("node keeps the default shard count it was created with", "shards", len(n.place.shards), "configured", n.cfg.DefaultShards)
	}
	return nil
}

// GRPCAddr is the bound gRPC address.
func (n *Node) GRPCAddr() string { return n.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address (metrics, health).
func (n *Node) HTTPAddr() string { return n.httpLis.Addr().String() }

// Store returns the node's store, for in-process tools and tests.
func (n *Node) Store() *shard.Store { return n.store }

func (n *Node) healthz(w http.ResponseWriter, _ *http.Request) {
	if !n.serving.Load() {
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
	gcCtx, stopGC := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.gcLoop(gcCtx)
	}()

	n.serving.Store(true)
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	n.log.Info("node serving", "grpc", n.GRPCAddr(), "http", n.HTTPAddr(), "site", n.cfg.SiteName,
		"site_id", n.cfg.SiteID, "worker_id", n.cfg.WorkerID, "dir", n.cfg.DataDir)

	var runErr error
	select {
	case <-ctx.Done():
		n.log.Info("shutting down", "cause", context.Cause(ctx))
	case runErr = <-errc:
		n.log.Error("server failed, shutting down", "err", runErr)
	}
	n.serving.Store(false)
	n.health.Shutdown()
	stopGC()

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
	wg.Wait()
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
	horizon := ids.MakeTimestamp(n.cfg.Clock.Now().Add(-n.cfg.TombstoneGrace).UnixMilli(), 0)
	start := time.Now()
	c, err := n.store.CollectTombstones(ctx, horizon)
	n.metrics.collected.Add(float64(c))
	n.log.Info("tombstones collected", "count", c, "grace", n.cfg.TombstoneGrace, "took", time.Since(start).Round(time.Millisecond))
	return c, err
}
