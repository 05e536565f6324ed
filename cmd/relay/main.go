// Command relay applies the writes of the other sites of an Aviary
// deployment at this site. With no flags it relays to the node on
// 127.0.0.1:7390 and serves /metrics, /healthz and /status on
// 127.0.0.1:7394. With --tls-ca, --tls-cert and --tls-key (a certificate of
// role relay for its site) its connections to the nodes and to the sites'
// NATS are mutual TLS.
//
// Every flag can also be set by an environment variable: --http-addr is
// AVIARY_RELAY_HTTP_ADDR, and so on. A flag given on the command line wins.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/envflag"
	"github.com/aviarydb/aviary/internal/logx"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/replication"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of the flags.
const (
	defaultAddr     = "127.0.0.1:7390"
	defaultHTTPAddr = "127.0.0.1:7394"
)

// Timing of the relay's calls to the local nodes.
const (
	mapInterval     = 5 * time.Second // how often the site map is read again
	rpcTimeout      = 5 * time.Second // one Status or GetMap call
	retryInterval   = time.Second     // while no local node answers at start
	shutdownTimeout = 10 * time.Second
)

func main() {
	if err := newCommand(run).Execute(); err != nil {
		os.Exit(1)
	}
}

type options struct {
	tls        tlsx.Flags
	addrs      []string
	httpAddr   string
	batch      int
	maxWait    time.Duration
	stallAfter time.Duration
	logFormat  string
	logLevel   string
}

// runFunc runs the relay with the parsed options (run; tests replace it).
type runFunc func(ctx context.Context, o options, log *slog.Logger) error

func newCommand(run runFunc) *cobra.Command {
	o := options{
		addrs:      []string{defaultAddr},
		httpAddr:   defaultHTTPAddr,
		batch:      replication.DefaultBatch,
		maxWait:    replication.DefaultMaxWait,
		stallAfter: replication.DefaultStallAfter,
	}
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Apply the other sites' writes at this site",
		Long: `Run an Aviary relay: it applies, at this site, the writes that every other
site of the deployment accepted.

At start it asks the local nodes (--addr) for this site's name and reads the
site map (sites, their ids and NATS URLs); it relays from every site but its
own, and reads the map again every 5s to follow sites added, changed or
removed. For each source site it holds a durable JetStream consumer named
relay-<this site> on that site's stream (AVIARY_<site>, subjects
aviary.repl.<site>.>) and applies what it delivers, in batches, through
Replica.ApplyRemote of a local node, failing over between the --addr nodes
when one is unavailable. A message is acknowledged only after its apply is
durable; the nodes skip anything applied already, so a redelivery changes
nothing, and a restarted relay resumes where its consumer stopped. The
applied watermarks are written back to the source's AVIARY_WM bucket, so the
source can trim its outbox. A gap (entries missing before what arrives) is
reported and a republish after the local watermark is asked for in the
source's AVIARY_REPUBLISH bucket. Every path is watched for freshness through
the sources' heartbeats: lag in messages and seconds, and stalled when
nothing has been applied for --stall-after.

A one-node site, or any site alone in its map, has nothing to relay: the
relay says so in its log, keeps running, and picks up sites added later.

HTTP (--http-addr): /metrics (Prometheus, aviary_relay_* by source site),
/healthz (ok once the local site is known), /status (JSON: each path's
connection, stall, lag, counts and last error). SIGINT or SIGTERM stop it
gracefully: applies in flight finish and are acknowledged.

With --tls-ca, --tls-cert and --tls-key the relay's links are mutual TLS 1.3:
its gRPC connections to this site's nodes (which must present node
certificates of the CA) and its NATS connections to the other sites. Its
certificate has the role relay and this site's name as its site (ops certs
issue relay-SITE --role relay --site SITE); nodes refuse a relay of another
site, and the sites' nats-servers a certificate of another CA. Certificates
are re-read when their files change. Without them the relay connects in
plaintext, which nodes running TLS refuse; it logs a warning (--insecure
silences it). The HTTP address stays plaintext: it serves metrics and status
only.

Every flag can be set by an environment variable named AVIARY_RELAY_ and the
flag name in capitals with '-' as '_' (--http-addr: AVIARY_RELAY_HTTP_ADDR).`,
		Example: `  go run ./cmd/relay
  go run ./cmd/relay --addr 127.0.0.1:7400,127.0.0.1:7410 --http-addr 127.0.0.1:7404
  go run ./cmd/relay --addr 127.0.0.1:7400 --tls-ca certs/ca.crt --tls-cert certs/relay-site-a.crt --tls-key certs/relay-site-a.key
  AVIARY_RELAY_LOG_FORMAT=json go run ./cmd/relay`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return envflag.Apply(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logx.New(o.logFormat, o.logLevel)
			if err != nil {
				return err
			}
			if err := o.check(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := run(ctx, o, logger); err != nil {
				logger.Error("relay stopped with an error", "err", err)
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringSliceVar(&o.addrs, "addr", o.addrs, "gRPC addresses of this site's nodes, comma separated: where the site map is read and writes are applied (the first that answers; the next on Unavailable)")
	f.StringVar(&o.httpAddr, "http-addr", o.httpAddr, "HTTP listen address for /metrics, /healthz and /status")
	f.IntVar(&o.batch, "batch", o.batch, "most messages fetched and applied at once; at most 4×batch are delivered and unacknowledged per source (backpressure)")
	f.DurationVar(&o.maxWait, "max-wait", o.maxWait, "how long an idle source's fetch waits for a message before the relay looks at the path again")
	f.DurationVar(&o.stallAfter, "stall-after", o.stallAfter, "a path from which nothing, not even a heartbeat (sent every second), has been applied for this long is reported stalled")
	o.tls.Register(f, "this relay (role relay, its site's name as site)")
	// The relay listens on HTTP only, plaintext either way.
	f.Lookup("insecure").Usage = "run without TLS without a warning (the relay serves nothing but plaintext HTTP, so nothing is refused)"
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	envflag.Bind(f, "AVIARY_RELAY_")
	return cmd
}

func (o *options) check() error {
	o.addrs = slices.DeleteFunc(o.addrs, func(a string) bool { return strings.TrimSpace(a) == "" })
	for i := range o.addrs {
		o.addrs[i] = strings.TrimSpace(o.addrs[i])
	}
	switch {
	case len(o.addrs) == 0:
		return errors.New("--addr: at least one node address is needed")
	case o.batch < 1:
		return fmt.Errorf("--batch %d: must be at least 1", o.batch)
	case o.maxWait <= 0:
		return fmt.Errorf("--max-wait %s: must be positive", o.maxWait)
	case o.stallAfter <= 0:
		return fmt.Errorf("--stall-after %s: must be positive", o.stallAfter)
	}
	return nil
}

// run relays until ctx ends.
func run(ctx context.Context, o options, log *slog.Logger) error {
	src, err := o.tls.Load(log)
	if err != nil {
		return err
	}
	sec := security(src, log)
	if src == nil && !o.tls.Insecure {
		log.Warn("no TLS (--tls-ca, --tls-cert, --tls-key): the relay connects to its nodes and to the sites' NATS in plaintext, which nodes running TLS refuse")
	}
	site, err := dialSite(o.addrs, sec, log)
	if err != nil {
		return err
	}
	defer site.close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var relay atomic.Pointer[replication.Relay]
	lis, err := netx.Listen(ctx, o.httpAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: httpHandler(reg, &relay), ReadHeaderTimeout: 10 * time.Second}
	httpErr := make(chan error, 1)
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			httpErr <- err
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("relay starting", "nodes", o.addrs, "http", lis.Addr().String())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case err := <-httpErr:
			log.Error("http server failed; stopping", "err", err)
			cancel()
		case <-ctx.Done():
		}
	}()

	local, sources, err := site.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r, err := replication.NewRelay(replication.RelayConfig{
		LocalSite: local, Sources: sources, Applier: site,
		Batch: o.batch, MaxWait: o.maxWait, StallAfter: o.stallAfter,
		Logger: log, Registry: reg, TLS: src,
	})
	if err != nil {
		return err
	}
	relay.Store(r)
	done := make(chan struct{})
	go func() {
		defer close(done)
		site.follow(ctx, r, local, len(sources))
	}()
	err = r.Run(ctx)
	<-done
	return err
}

func httpHandler(reg *prometheus.Registry, relay *atomic.Pointer[replication.Relay]) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if relay.Load() == nil {
			http.Error(w, "waiting for the local site's nodes", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		st := []replication.PathStatus{}
		if r := relay.Load(); r != nil {
			st = r.Status()
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
	return mux
}

// site is the relay's connections to the local site's nodes. It is the
// relay's Applier: a call goes to the first node, in --addr order, that is
// not Unavailable.
type site struct {
	log     *slog.Logger
	addrs   []string
	conns   []*grpc.ClientConn
	replica []pb.ReplicaClient
	ns      []pb.NameserverClient
}

// security is the relay's transport security with src (nil: plaintext),
// its site the one its certificate names.
func security(src *tlsx.Source, log *slog.Logger) *netx.Security {
	if src == nil {
		return nil
	}
	sec := &netx.Security{TLS: src}
	id, err := src.Identity()
	switch {
	case err != nil:
		log.Warn("the relay's certificate names no valid identity; nodes will refuse it", "err", err)
	case id.Role != tlsx.RoleRelay:
		log.Warn("the relay's certificate is not a relay's (ops certs issue relay-SITE --role relay --site SITE)", "identity", id.String())
	}
	return sec
}

func dialSite(addrs []string, sec *netx.Security, log *slog.Logger) (*site, error) {
	s := &site{log: log, addrs: addrs}
	for _, a := range addrs {
		cc, err := netx.Dial(a, sec.DialOption(a, sec.NodePeer()))
		if err != nil {
			s.close()
			return nil, err
		}
		s.conns = append(s.conns, cc)
		s.replica = append(s.replica, pb.NewReplicaClient(cc))
		s.ns = append(s.ns, pb.NewNameserverClient(cc))
	}
	return s, nil
}

func (s *site) close() {
	for _, cc := range s.conns {
		_ = cc.Close()
	}
}

// ApplyRemote applies through the first node that is not Unavailable.
// The nodes are tried in --addr order on every call, so that the relay
// goes back to the first once it returns.
func (s *site) ApplyRemote(ctx context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	var errs []error
	for i, c := range s.replica {
		resp, err := c.ApplyRemote(ctx, r)
		if status.Code(err) != codes.Unavailable {
			return resp, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.addrs[i], err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, status.Errorf(codes.Unavailable, "no node of the site could apply: %v", errors.Join(errs...))
}

// call runs f on the nodes in order until one succeeds, each call bounded
// by rpcTimeout.
func (s *site) call(ctx context.Context, f func(context.Context, pb.NameserverClient) error) error {
	var errs []error
	for i, c := range s.ns {
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		err := f(cctx, c)
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.addrs[i], err))
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// localSite asks the nodes for this site's name.
func (s *site) localSite(ctx context.Context) (string, error) {
	var name string
	err := s.call(ctx, func(ctx context.Context, c pb.NameserverClient) error {
		st, err := c.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return err
		}
		if st.SiteName == "" {
			return fmt.Errorf("node %s reports no site name", st.NodeId)
		}
		name = st.SiteName
		return nil
	})
	return name, err
}

// sources reads the site map and returns every site but local.
func (s *site) sources(ctx context.Context, local string) ([]replication.Source, error) {
	var m gizzard.Map
	err := s.call(ctx, func(ctx context.Context, c pb.NameserverClient) error {
		resp, err := c.GetMap(ctx, &pb.GetMapRequest{})
		if err != nil {
			return err
		}
		if err := json.Unmarshal(resp.MapJson, &m); err != nil {
			return fmt.Errorf("decode the site map: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sourcesOf(&m, local), nil
}

// sourcesOf lists the sites of m other than local, by name.
func sourcesOf(m *gizzard.Map, local string) []replication.Source {
	var out []replication.Source
	for _, st := range m.Sites {
		if st.Name == local {
			continue
		}
		out = append(out, replication.Source{Name: st.Name, ID: st.ID, NATSURL: st.NATSURL})
	}
	slices.SortFunc(out, func(a, b replication.Source) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// start waits until a node tells this site's name and the site map, and
// returns them.
func (s *site) start(ctx context.Context) (string, []replication.Source, error) {
	logged := false
	for {
		local, err := s.localSite(ctx)
		var sources []replication.Source
		if err == nil {
			sources, err = s.sources(ctx, local)
		}
		if err == nil {
			s.log.Info("local site", "site", local, "sources", names(sources))
			if len(sources) == 0 {
				s.logAlone(local)
			}
			return local, sources, nil
		}
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		if !logged {
			s.log.Warn("no local node answers yet; retrying until one does", "nodes", s.addrs, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return "", nil, ctx.Err()
		case <-time.After(retryInterval):
		}
	}
}

func (s *site) logAlone(local string) {
	s.log.Info("no other site in the site map: nothing to relay; the relay keeps running and picks up sites added later", "site", local)
}

// follow reads the site map every mapInterval and gives the relay its
// sources, until ctx ends.
func (s *site) follow(ctx context.Context, r *replication.Relay, local string, had int) {
	t := time.NewTicker(mapInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sources, err := s.sources(ctx, local)
		if err != nil {
			if ctx.Err() == nil && !failing {
				s.log.Warn("cannot read the site map; relaying from the sites known", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			s.log.Info("site map read again")
			failing = false
		}
		if len(sources) == 0 && had > 0 {
			s.logAlone(local)
		}
		had = len(sources)
		r.SetSources(sources)
	}
}

func names(ss []replication.Source) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Name
	}
	return out
}
