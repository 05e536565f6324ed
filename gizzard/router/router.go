// Package router sends each write to the physical shards its shard tree
// names, after journaling it durably, and keeps retrying the replicas that
// did not take it.
//
// The write path: resolve every mutation (table → forwarding by key hash →
// shard tree → physical leaves), journal the batch with one job per leaf
// (fsync, group commit), apply it to the leaves in parallel (the local store
// directly, other nodes through their Replica service), and acknowledge per
// the requested consistency. A leaf that fails or times out keeps its job:
// the retry loop delivers it again with exponential backoff and jitter, for
// ever while the leaf is unavailable, and after MaxAttempts failures of any
// other kind moves it to the error queue, which operators list, retry or
// drop. While a node is unavailable its jobs wait unsent (one goes every
// DownFor, as a probe), and once it answers, those that failed before are
// due at once. Applying is idempotent and last-writer-wins, so a retry can
// never revert a newer version.
//
// Consistency: One (the default) acknowledges once the journal holds the
// write and at least one replica of every mutation that serves reads applied
// it (a write_only replica, such as a migration's copy, does not count); the
// others get it from their jobs. All acknowledges once every replica applied
// it. While a migration of a tree is verified or cut over, its writes are
// acknowledged as with All, so that the copy that serves reads next holds
// every acknowledged write.
package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Consistency says how many replicas must apply a write before it is
// acknowledged.
type Consistency int

// Consistency levels.
const (
	// One: the journal holds the write durably and at least one replica of
	// each mutation applied it (durably).
	One Consistency = 1
	// All: every replica applied it.
	All Consistency = 2
	// DefaultConsistency is One: a replica that is down does not stop
	// writes; its job delivers them when it returns.
	DefaultConsistency = One
)

// Errors.
var (
	// ErrNoRoute: the map has no forwarding for the table.
	ErrNoRoute = errors.New("router: no route")
	// ErrRefused: the shard tree refuses writes (blocked or read-only).
	ErrRefused = errors.New("router: write refused by the shard tree")
	// ErrNotEnoughReplicas: fewer replicas applied the write than the
	// consistency asked for. The write is journaled and will be retried.
	ErrNotEnoughReplicas = errors.New("router: not enough replicas applied the write")
)

// Remote applies versioned mutations on another node.
type Remote interface {
	Apply(ctx context.Context, addr string, muts []shard.Mutation, mapVersion uint64) ([]shard.Outcome, error)
}

// Config configures a Router.
type Config struct {
	// NodeID is this node's id in the map; leaves on it are applied to
	// Store directly.
	NodeID string
	// Site names this node's site in the map's site list: while the map
	// lists it in a state other than active, locally-originated writes are
	// refused with a *SiteError.
	Site string
	// StartRecovering: refuse clients' writes as a recovering site would
	// until the map lists Site in a state other than active (a site
	// restarted after it was failed over comes back so, and a DR drill's
	// failback makes it recovering, then active).
	StartRecovering bool
	Store           *shard.Store
	// Map returns the current shard map.
	Map func() *gizzard.Map
	// Remote reaches other nodes.
	Remote Remote
	Logger *slog.Logger
	Clock  ids.Clock
	// ReplicaTimeout bounds one delivery to one replica. Default 5s.
	ReplicaTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between deliveries of a job.
	// Defaults 100ms and 30s. The retry loop looks for due jobs every
	// RetryMin, and scans the journal at least every RetryMax.
	RetryMin, RetryMax time.Duration
	// MaxAttempts is how many failures other than unavailability a job
	// survives before it moves to the error queue. Default 10.
	MaxAttempts int
	// Deliveries bounds concurrent retries. Default 64: the retry loop
	// sends nothing to a node that is down (but its probe), so the bound
	// is for memory, and a node that answers again drains its backlog
	// faster the more of its retries go at once (the deliveries to one
	// node are coalesced into batches).
	Deliveries int
	// DownFor is how long, after a delivery found a node unavailable (it
	// timed out, or the node answered Unavailable), writes leave their
	// deliveries to that node to the journal instead of sending them, and
	// the retry loop holds that node's jobs; then one delivery, a write's
	// or a job's, is sent to see whether it answers again (see skipNode).
	// Default 1s.
	DownFor time.Duration
	// Registry, if set, receives the router's metrics.
	Registry prometheus.Registerer
	// Admit, if set, is asked before writes routed by map version v are
	// applied to shards of this node; it refuses with a *FencedError when
	// a newer change moved one of them, and otherwise holds the admission
	// until release is called.
	Admit func(shards []string, v uint64) (release func(), err error)
	// WaitMap, if set, returns a map at version v or newer once this node
	// has one (default: polling Map).
	WaitMap func(ctx context.Context, v uint64) (*gizzard.Map, error)
	// Outbox: every locally-originated write is journaled and kept in the
	// store's outbox until the other sites have applied it (the node
	// publishes it to its site's replication stream).
	Outbox bool
}

// metrics are the router's Prometheus metrics.
type metrics struct {
	deliveries        *prometheus.CounterVec
	deliveriesExpired prometheus.Counter
	deliveriesSkipped prometheus.Counter
	writes            *prometheus.CounterVec
	reroutes          prometheus.Counter
	scans             prometheus.Counter
	scannedJobs       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_router_deliveries_total",
			Help: "Deliveries of journaled writes to replicas, by kind (first or retry) and result (ok, failed, error_queue).",
		}, []string{"kind", "result"}),
		deliveriesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_router_deliveries_expired_total",
			Help: "Deliveries to a remote replica not sent because their deadline passed while they queued (the replica is behind); the journal delivers them again.",
		}),
		deliveriesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_router_deliveries_skipped_total",
			Help: "Writes' deliveries not sent because a delivery found their node unavailable (timed out, or Unavailable) less than DownFor (1s) ago, or a probe to it is out; they are journaled, and the retry loop delivers them.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_router_writes_total",
			Help: "Routed write batches, by consistency and result (ok, not_enough_replicas, refused, error).",
		}, []string{"consistency", "result"}),
		reroutes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_router_reroutes_total",
			Help: "Writes and replica jobs routed again because a node fenced them: a change moved their shard after the map they were routed by.",
		}),
		scans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_router_retry_scans_total",
			Help: "Scans of the journal by the retry loop. It scans only when a job may be due: one waiting has come due, a node that was down may be probed or answers again, a job was moved back from the error queue, or RetryMax (default 30s) passed since the last scan.",
		}),
		scannedJobs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_router_retry_scanned_jobs_total",
			Help: "Jobs the retry loop's scans read. The jobs of a node that is down are passed over unread until it may be probed.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.deliveries, m.deliveriesExpired, m.deliveriesSkipped, m.writes, m.reroutes, m.scans, m.scannedJobs)
	}
	return m
}

// Router routes writes and retries failed deliveries. It is safe for
// concurrent use.
type Router struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	wake    chan struct{}
	coal    coalescers
	wg      sync.WaitGroup
	trees   treeCache
	// held counts clients' writes held while the site drains.
	held atomic.Int64
	// startHold: started recovering, and the map has not yet taken the
	// site out of active (see siteAdmits).
	startHold atomic.Bool

	// startSeq is the journal's last sequence number when the router
	// started: older jobs were left by a previous process. A newer job
	// belongs to the Write that created it until its first delivery
	// fails, so the retry loop never delivers it twice at once.
	startSeq uint64

	mu struct {
		sync.Mutex
		inflight map[jobID]struct{}
		rng      *rand.Rand
		// scanFrom is the lowest journal seq that may hold a job the
		// retry loop must see: a scan starts there rather than at the
		// journal's start, over which the jobs done lie deleted (an LSM
		// keeps their tombstones for a while, and stepping over them on
		// every scan costs more than the scan's work). 0: scan it all.
		scanFrom uint64
		// failedMin is the lowest seq of a job that failed since the
		// current scan began (math.MaxUint64: none).
		failedMin uint64
		// down holds the nodes whose last delivery found them
		// unavailable, by node id (see skipNode).
		down map[string]*nodeDown
		// upAt is when (router clock) each node last answered again after
		// it was down: its jobs that failed before then are due at once,
		// whatever their backoff.
		upAt map[string]time.Time
		// probed is the last job the retry loop sent to each node that is
		// down as a probe: the next probe is a later job, so that one job
		// that always fails cannot keep its node down.
		probed map[string]jobID

		// The retry loop scans the journal only when a job may be due
		// (scanDue). dirty: a scan must run (jobs left by a previous
		// process, a job back from the error queue, a node that answers
		// again, a scan cut short). nextDue (router clock): when the
		// earliest job known to be waiting, on a node that is not down,
		// falls due. probeAt (Router.wall): when a node that is down, and
		// has jobs, may be probed. A scan resets the three when it starts;
		// what it finds, and the deliveries that fail meanwhile, lower
		// them again.
		dirty    bool
		nextDue  time.Time
		probeAt  time.Time
		lastScan time.Time
	}
	// downs is len(mu.down), so that writes and deliveries take no lock
	// while no node is down.
	downs atomic.Int32
	// wall is the time by which nodes are held down and the retry loop
	// paced: time.Now (tests set it right after New).
	wall func() time.Time
}

// nodeDown is a node a delivery found unavailable.
type nodeDown struct {
	since   time.Time // when (Router.wall, not the router's clock)
	err     error     // what the delivery met
	probing bool      // a delivery went out at probeAt to see whether it answers again
	probeAt time.Time
	byRead  bool // only reads found it unavailable (NodeUnavailable)
}

type jobID struct {
	seq    uint64
	target string
}

// New returns a router. Call Run to start its retry loop.
func New(cfg Config) *Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = ids.SystemClock{}
	}
	if cfg.ReplicaTimeout == 0 {
		cfg.ReplicaTimeout = 5 * time.Second
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 30 * time.Second
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.Deliveries == 0 {
		cfg.Deliveries = 64
	}
	if cfg.DownFor == 0 {
		cfg.DownFor = time.Second
	}
	r := &Router{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registry), wake: make(chan struct{}, 1), startSeq: cfg.Store.JournalSeq(), wall: time.Now}
	r.startHold.Store(cfg.StartRecovering && cfg.Site != "")
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "aviary_router_held_writes",
			Help: "Clients' writes held while this site drains (they go on, or are refused, when it is fenced or active again).",
		}, func() float64 { return float64(r.held.Load()) }))
	}
	r.mu.inflight = map[jobID]struct{}{}
	r.mu.down = map[string]*nodeDown{}
	r.mu.upAt = map[string]time.Time{}
	r.mu.probed = map[string]jobID{}
	r.mu.dirty = true // jobs left by a previous process
	r.mu.rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	return r
}

// Target names a leaf in job and journal records: "node/shard".
func Target(l gizzard.Leaf) string { return l.Node + "/" + l.Shard }

func parseTarget(s string) gizzard.Leaf {
	node, sh, _ := strings.Cut(s, "/")
	return gizzard.Leaf{Node: node, Shard: sh}
}

// RouteHash is the hash a mutation is routed by: its content key, or its
// index owner.
func RouteHash(m *shard.Mutation) uint64 {
	if m.Op == shard.OpPut || m.Op == shard.OpDelete {
		return gizzard.Hash(m.Key)
	}
	return gizzard.OwnerHash(m.Owner)
}

// Result is what a write did to one mutation.
type Result struct {
	// Outcome is the first replica's outcome (replicas agree but for
	// concurrent writes of the same key).
	Outcome shard.Outcome
	// Root is the shard tree the mutation was routed to.
	Root string
	// Replicas is the number of physical shards it goes to; Acked how many
	// had applied it when the write was acknowledged.
	Replicas, Acked int
	// Dropped: the tree is a black hole for writes; nothing was stored.
	Dropped bool

	// readable counts the replicas that serve reads, readableAcked those
	// of them that applied the mutation; syncing: the tree needs every
	// replica (gizzard.Map.Syncing).
	readable, readableAcked int
	syncing                 bool
}

type delivery struct {
	target int
	outs   []shard.Outcome
	err    error
}

// Write routes, journals and applies versioned mutations (their Shard
// fields are ignored) and acknowledges per c. With ErrNotEnoughReplicas it
// may also return the results as they stood (see Satisfied).
func (r *Router) Write(ctx context.Context, muts []shard.Mutation, c Consistency) ([]Result, error) {
	return r.route(ctx, muts, c, writeOptions{})
}

// Origin names where a write applied from another site was first
// accepted: the site, the node, and the entry's sequence in that node's
// journal.
type Origin struct {
	Site uint32
	Node string
	Seq  uint64
}

// WriteRemote routes a write another site accepted (its mutations keep
// their versions): like Write, but its journal entry records the origin
// and is never published again, and state (import-state records, such as a
// relay's watermark) is stored in the same batch as the write.
func (r *Router) WriteRemote(ctx context.Context, muts []shard.Mutation, c Consistency, origin Origin, state map[string][]byte) ([]Result, error) {
	return r.route(ctx, muts, c, writeOptions{origin: &origin, state: state})
}

// writeOptions are what distinguishes a remote-origin write.
type writeOptions struct {
	origin *Origin
	state  map[string][]byte
	// rerouted: an earlier try of this write may have been journaled, so
	// the site's state is not checked again (a refusal says "not applied").
	rerouted bool
}

// checksSite reports whether a write is subject to its site's state: a
// client's write, on its first try.
func (r *Router) checksSite(ctx context.Context, o writeOptions) bool {
	return r.cfg.Site != "" && o.origin == nil && !o.rerouted && !IsInternal(ctx)
}

func (r *Router) route(ctx context.Context, muts []shard.Mutation, c Consistency, o writeOptions) ([]Result, error) {
	res, err := r.write(ctx, muts, c, o)
	// A node refused the write because a change moved its shard after the
	// map it was routed by: route it again by a map at least that new. The
	// mutations keep their versions, so a replica that took the first try
	// supersedes the second.
	for try := 0; err != nil && try < maxReroutes; try++ {
		fe, ok := ParseFenced(err)
		if !ok {
			break
		}
		r.metrics.reroutes.Inc()
		if _, werr := r.waitMap(ctx, fe.Fence); werr != nil {
			break
		}
		o.rerouted = true
		res, err = r.write(ctx, muts, c, o)
	}
	if fe, ok := ParseFenced(err); ok {
		// Still fenced (the map keeps moving, or this node lags): the
		// write is journaled and its jobs are routed again; say so, as
		// not-enough-replicas, which clients retry.
		err = fmt.Errorf("%w (its shard moved while it was routed; the write is journaled and will be delivered): %v", ErrNotEnoughReplicas, fe)
	}
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrNotEnoughReplicas):
		result = "not_enough_replicas"
	case errors.Is(err, ErrRefused), errors.Is(err, ErrSiteNotActive):
		result = "refused"
	default:
		result = "error"
	}
	r.metrics.writes.WithLabelValues(c.String(), result).Inc()
	return res, err
}

// maxReroutes bounds how often one Write is routed again after fencing.
const maxReroutes = 5

// target is a leaf and the indexes of the mutations bound for it.
type target struct {
	leaf gizzard.Leaf
	idx  []int
	// readable: the leaf serves reads of its tree.
	readable bool
}

// treeInfo is what plan learns of a tree from a map: where its writes go,
// which of those leaves serve reads, whether it is syncing.
type treeInfo struct {
	plan     gizzard.WritePlan
	readable map[gizzard.Leaf]bool
	syncing  bool
	err      error // the tree refuses writes, or the map has no route
}

func newTreeInfo(m *gizzard.Map, root string) *treeInfo {
	p, err := m.PlanWrite(root)
	if err != nil {
		return &treeInfo{err: fmt.Errorf("%w: tree %q: %w", ErrNoRoute, root, err)}
	}
	if len(p.Rejected) > 0 {
		rj := p.Rejected[0]
		return &treeInfo{err: fmt.Errorf("%w: shard %q is %s (%s)", ErrRefused, rj.Shard, rj.Kind, rj.Reason)}
	}
	t := &treeInfo{plan: p, readable: map[gizzard.Leaf]bool{}, syncing: m.Syncing(root)}
	if leaves, err := m.PlanRead(root, 0); err == nil {
		for _, l := range leaves {
			t.readable[l] = true
		}
	}
	return t
}

// treeCache keeps the treeInfo of every tree routed to, for one map: a
// published map never changes, so it is computed once per tree and map
// version rather than on every write.
type treeCache struct {
	cur atomic.Pointer[treesOf]
}

type treesOf struct {
	m     *gizzard.Map
	trees sync.Map // root -> *treeInfo
}

func (c *treeCache) get(m *gizzard.Map, root string) (*treeInfo, error) {
	cur := c.cur.Load()
	if cur == nil || cur.m != m {
		cur = &treesOf{m: m}
		c.cur.Store(cur)
	}
	v, ok := cur.trees.Load(root)
	if !ok {
		v, _ = cur.trees.LoadOrStore(root, newTreeInfo(m, root))
	}
	t := v.(*treeInfo)
	return t, t.err
}

// plan routes muts by m: the leaves they go to and a result per mutation.
func plan(m *gizzard.Map, muts []shard.Mutation, trees *treeCache) ([]*target, []Result, error) {
	res := make([]Result, len(muts))
	var targets []*target
	byLeaf := map[gizzard.Leaf]*target{}
	for i := range muts {
		mu := &muts[i]
		if _, ok := m.Tables[mu.Table]; !ok {
			if mu.Table == "" {
				return nil, nil, fmt.Errorf("%w: table name is empty", shard.ErrInvalid)
			}
			return nil, nil, fmt.Errorf("%w: %q is not in the shard map", shard.ErrTableNotFound, mu.Table)
		}
		fw, err := m.Lookup(mu.Table, RouteHash(mu))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: table %q: %w", ErrNoRoute, mu.Table, err)
		}
		tree, err := trees.get(m, fw.Root)
		if err != nil {
			return nil, nil, err
		}
		p := tree.plan
		res[i] = Result{Root: fw.Root, Replicas: len(p.Targets), Dropped: p.Dropped && len(p.Targets) == 0, syncing: tree.syncing}
		for _, l := range p.Targets {
			t := byLeaf[l]
			if t == nil {
				t = &target{leaf: l, readable: tree.readable[l]}
				byLeaf[l] = t
				targets = append(targets, t)
			}
			if t.readable {
				res[i].readable++
			}
			t.idx = append(t.idx, i)
		}
	}
	return targets, res, nil
}

// encodeEntry encodes the journal entry of muts routed to targets by the
// map at version v.
func encodeEntry(v uint64, muts []shard.Mutation, targets []*target, origin *Origin, at time.Time) ([]byte, error) {
	entry := &pb.JournalEntry{MapVersion: v, AtUnixMs: at.UnixMilli()}
	if origin != nil {
		entry.OriginSite, entry.OriginNode, entry.OriginSeq = origin.Site, origin.Node, origin.Seq
	}
	for i := range muts {
		p := ToProto(&muts[i])
		p.Shard = ""
		entry.Mutations = append(entry.Mutations, p)
	}
	for _, t := range targets {
		et := &pb.JournalEntry_Target{Node: t.leaf.Node, Shard: t.leaf.Shard}
		for _, i := range t.idx {
			et.Mutations = append(et.Mutations, uint32(i))
		}
		entry.Targets = append(entry.Targets, et)
	}
	data, err := proto.Marshal(entry)
	if err != nil {
		return nil, fmt.Errorf("router: encode journal entry: %w", err)
	}
	return data, nil
}

// sub returns the mutations of t, naming its shard.
func (t *target) sub(muts []shard.Mutation) []shard.Mutation {
	out := make([]shard.Mutation, len(t.idx))
	for j, i := range t.idx {
		out[j] = muts[i]
		out[j].Shard = t.leaf.Shard
	}
	return out
}

// admit asks the node's fence whether writes routed by version v may be
// applied to shards now; release ends the admission. With checkSite, the
// admission is taken even with no local shard and the site's state is
// checked again under it: the node installs a new map only once the writes
// it admitted have released, so when a map that takes the site out of
// active is installed, every write admitted while it was active has its
// journal (and outbox) entry, and every later one is refused.
func (r *Router) admit(shards []string, v uint64, checkSite bool) (release func(), err error) {
	release = func() {}
	if r.cfg.Admit != nil && (len(shards) > 0 || checkSite) {
		if release, err = r.cfg.Admit(shards, v); err != nil {
			return nil, err
		}
	}
	if checkSite {
		if err := r.siteAdmits(r.cfg.Map()); err != nil {
			release()
			return nil, err
		}
	}
	return release, nil
}

func (r *Router) write(ctx context.Context, muts []shard.Mutation, c Consistency, o writeOptions) ([]Result, error) {
	m := r.cfg.Map()
	checkSite := r.checksSite(ctx, o)
	if checkSite {
		var err error
		if m, err = r.holdWhileDraining(ctx, m); err != nil {
			return nil, err
		}
	}
	targets, res, err := plan(m, muts, &r.trees)
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return res, nil
	}

	// Targets on this node are applied in the same batch (and fsync) as the
	// journal entry, which holds a job for each of the others. With every
	// replica local there is no job, hence no entry.
	var local, remote []int
	var remoteKeys, localShards []string
	for ti, t := range targets {
		if t.leaf.Node == r.cfg.NodeID {
			local = append(local, ti)
			localShards = append(localShards, t.leaf.Shard)
		} else {
			remote = append(remote, ti)
			remoteKeys = append(remoteKeys, Target(t.leaf))
		}
	}
	// The entry is journaled when a replica is remote (its jobs need it)
	// and, for a locally-originated write, when it must be published to
	// the other sites (the outbox keeps it until they have applied it).
	outbox := r.cfg.Outbox && o.origin == nil
	var data []byte
	if len(remote) > 0 || outbox {
		if data, err = encodeEntry(m.Version, muts, targets, o.origin, r.cfg.Clock.Now()); err != nil {
			return nil, err
		}
	}
	var localMuts []shard.Mutation
	for _, ti := range local {
		localMuts = append(localMuts, targets[ti].sub(muts)...)
	}
	release, err := r.admit(localShards, m.Version, checkSite)
	if err != nil {
		return nil, err
	}
	localOuts, seq, err := r.cfg.Store.ApplyLogged(ctx, localMuts, data, remoteKeys, shard.LogOptions{Outbox: outbox, State: o.state})
	release()
	if err != nil {
		return nil, err
	}
	done := make(chan delivery, len(targets))
	off := 0
	for _, ti := range local {
		n := len(targets[ti].idx)
		done <- delivery{target: ti, outs: localOuts[off : off+n]}
		off += n
	}

	// Deliver to the other leaves in parallel. Deliveries outlive the
	// request: they finish (or fail and leave their job) even if the
	// client is gone.
	for k, ti := range remote {
		t := targets[ti]
		if err := r.skipNode(t.leaf.Node); err != nil {
			r.metrics.deliveriesSkipped.Inc()
			r.settle("first", shard.Job{Seq: seq, Target: remoteKeys[k]}, err)
			done <- delivery{target: ti, err: err}
			continue
		}
		muts := t.sub(muts)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			outs, err := r.deliver(m, t.leaf, muts, m.Version)
			r.settle("first", shard.Job{Seq: seq, Target: remoteKeys[k]}, err)
			done <- delivery{target: ti, outs: outs, err: err}
		}()
	}

	pending := len(targets)
	var errs []error
	var fenced *FencedError
	for pending > 0 {
		var d delivery
		select {
		case d = <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("router: %w (the write is journaled and will be delivered)", ctx.Err())
		}
		pending--
		t := targets[d.target]
		if d.err != nil {
			if fe, ok := ParseFenced(d.err); ok && (fenced == nil || fe.Fence > fenced.Fence) {
				fenced = fe
			}
			errs = append(errs, fmt.Errorf("%s: %w", Target(t.leaf), d.err))
			if c == All {
				break
			}
			continue
		}
		for j, i := range t.idx {
			if res[i].Acked == 0 {
				res[i].Outcome = d.outs[j]
			}
			res[i].Acked++
			if t.readable {
				res[i].readableAcked++
			}
		}
		if satisfied(res, c) {
			return res, nil
		}
	}
	if fenced != nil {
		// Its job is routed again by settle; Write routes the whole write
		// again so that it is acknowledged by the shards that now hold it.
		return nil, fenced
	}
	// The results say which mutations had enough replicas: a caller that
	// combined several writes into this one judges each by its own.
	return res, fmt.Errorf("%w (consistency %s; the write is journaled and will be retried): %w", ErrNotEnoughReplicas, c, errors.Join(errs...))
}

// Local reports whether a write of muts with consistency c, routed by the
// current map, is acknowledged on this node's replicas alone: c is not
// All, and every mutation that is stored goes to a replica on this node
// that serves reads (any replica here, for a tree with none that does), of
// a tree that does not need all its replicas (a migration's). A node's
// commit queue combines only such writes, so that a write waiting on other
// nodes never holds back another. A write that cannot be routed is not
// local (it goes alone, to its own error).
func (r *Router) Local(muts []shard.Mutation, c Consistency) bool {
	if c == All {
		return false
	}
	m := r.cfg.Map()
	for i := range muts {
		mu := &muts[i]
		fw, err := m.Lookup(mu.Table, RouteHash(mu)) // an unknown table too
		if err != nil {
			return false
		}
		tree, err := r.trees.get(m, fw.Root)
		if err != nil || !tree.acknowledgedOn(r.cfg.NodeID) {
			return false
		}
	}
	return true
}

// acknowledgedOn reports whether a write to the tree is acknowledged by a
// replica on node alone, as Local says: the tree has no replica (a black
// hole: nothing to wait for), or it is not syncing and node holds one of
// its readable replicas (any of its replicas, if none is readable). It is
// what plan's results say of a mutation of the tree, without building
// them.
func (t *treeInfo) acknowledgedOn(node string) bool {
	if len(t.plan.Targets) == 0 {
		return true
	}
	if t.syncing {
		return false
	}
	anyReadable := slices.ContainsFunc(t.plan.Targets, func(l gizzard.Leaf) bool { return t.readable[l] })
	return slices.ContainsFunc(t.plan.Targets, func(l gizzard.Leaf) bool {
		return l.Node == node && (t.readable[l] || !anyReadable)
	})
}

// Satisfied reports whether every mutation of res (results of a Write, or
// a part of them) was applied by enough replicas for consistency c.
func Satisfied(res []Result, c Consistency) bool { return satisfied(res, c) }

// satisfied reports whether every mutation has been applied by enough
// replicas: One needs a replica that serves reads (any replica if none of
// them does), so that an acknowledged write can be read back; All, and a
// tree whose migration is cutting over, need every replica.
func satisfied(res []Result, c Consistency) bool {
	for _, r := range res {
		switch {
		case r.Replicas == 0:
		case c == All || r.syncing:
			if r.Acked < r.Replicas {
				return false
			}
		case r.readable > 0:
			if r.readableAcked == 0 {
				return false
			}
		case r.Acked == 0:
			return false
		}
	}
	return true
}

func (c Consistency) String() string {
	switch c {
	case One:
		return "ONE"
	case All:
		return "ALL"
	}
	return fmt.Sprintf("consistency(%d)", int(c))
}

// deliver applies muts (whose Shard is set) to one leaf.
func (r *Router) deliver(m *gizzard.Map, leaf gizzard.Leaf, muts []shard.Mutation, mapVersion uint64) ([]shard.Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ReplicaTimeout)
	defer cancel()
	if leaf.Node == r.cfg.NodeID {
		release, err := r.admit([]string{leaf.Shard}, mapVersion, false)
		if err != nil {
			return nil, err
		}
		defer release()
		return r.cfg.Store.Apply(ctx, muts)
	}
	n, ok := m.Nodes[leaf.Node]
	if !ok {
		err := fmt.Errorf("router: node %q of shard %q is not in the map", leaf.Node, leaf.Shard)
		r.nodeAnswered(leaf.Node, err) // not unavailable: gone; its jobs fail on
		return nil, err
	}
	outs, err := r.applyRemote(ctx, n.GRPCAddr, muts, mapVersion)
	r.nodeAnswered(leaf.Node, err)
	if fe, ok := ParseFenced(err); ok {
		return nil, fe
	}
	return outs, err
}

// A write does not send its deliveries to a node that a delivery found
// unavailable less than DownFor ago: it leaves them to the journal's
// retry loop, and settles them as failed at once. Otherwise every write
// to a node that has hung would hold a goroutine and its mutations for
// ReplicaTimeout, and a busy node would pile up thousands. The retry loop
// does not send them either (nor read them: see scan), so that a hung node
// neither holds its bounded deliveries (Deliveries) nor makes it read the
// whole backlog on every tick. After DownFor one delivery, a write's or
// the retry loop's, goes out to see whether the node answers again; the
// others wait in the journal until it does. Any answer from the node ends
// this, and its jobs that failed before are then due at once. A node too
// slow to answer within ReplicaTimeout counts as unavailable. (A delivery
// still out when a probe succeeded can, failing, mark the node down
// again; a probe follows DownFor later.)
//
// skipNode returns the error to settle a delivery to node with instead of
// sending it, or nil to send it.
func (r *Router) skipNode(node string) error {
	if r.downs.Load() == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.mu.down[node]
	if d == nil {
		return nil
	}
	if r.takeProbeLocked(d) {
		return nil
	}
	return status.Errorf(codes.Unavailable, "router: node %q was unavailable %s ago (%v); the write is journaled and will be delivered when it answers",
		node, r.wall().Sub(d.since).Round(time.Millisecond), d.err)
}

// nextProbeLocked is when a delivery may go to node d to see whether it
// answers again: DownFor after it was found down, or, if a probe is out,
// DownFor after that probe must have ended (a probe that never reached
// the node, say its job could not be read, must not hold it down for
// ever). r.mu is held.
func (r *Router) nextProbeLocked(d *nodeDown) time.Time {
	if d.probing {
		return d.probeAt.Add(r.cfg.ReplicaTimeout + r.cfg.DownFor)
	}
	return d.since.Add(r.cfg.DownFor)
}

// mayProbeLocked reports whether a delivery may go to node d now to see
// whether it answers again. r.mu is held.
func (r *Router) mayProbeLocked(d *nodeDown) bool {
	return !r.wall().Before(r.nextProbeLocked(d))
}

// takeProbeLocked reports whether a delivery may go to node d now as the
// probe, and if so records that it is out. r.mu is held.
func (r *Router) takeProbeLocked(d *nodeDown) bool {
	if !r.mayProbeLocked(d) {
		return false
	}
	d.probing, d.probeAt = true, r.wall()
	return true
}

// takesDown reports whether a call that ended with err takes its node for
// down: it timed out, or the node answered Unavailable.
func takesDown(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) ||
		status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
}

// markDownLocked takes node for down from now; its jobs wait in the
// journal, and a probe may go DownFor from now. r.mu is held.
func (r *Router) markDownLocked(node string, err error, byRead bool) {
	now := r.wall()
	r.mu.down[node] = &nodeDown{since: now, err: err, byRead: byRead}
	r.mu.probeAt = earliest(r.mu.probeAt, now.Add(r.cfg.DownFor))
	r.downs.Store(int32(len(r.mu.down)))
}

// NodesDown reports, for each of leaves, whether reads should ask its
// node last: a delivery found it unavailable and none has reached it
// since, or a read found it so less than DownFor ago. It returns nil when
// no node is down.
func (r *Router) NodesDown(leaves []gizzard.Leaf) []bool {
	if r.downs.Load() == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	down := make([]bool, len(leaves))
	for i, l := range leaves {
		if d := r.mu.down[l.Node]; d != nil {
			down[i] = !d.byRead || r.wall().Sub(d.since) < r.cfg.DownFor
		}
	}
	return down
}

// NodeUnavailable records that a read from node timed out, or was refused
// as unavailable (other errors are ignored): the node is taken for down,
// as after a delivery that did (writes leave it to the journal; see
// skipNode), unless a delivery already found it so. Reads ask it last for
// DownFor; a read that then reaches it, or any delivery's answer, takes it
// for up again. The caller must not report a call that ended because its
// own caller gave up.
func (r *Router) NodeUnavailable(node string, err error) {
	if !takesDown(err) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch d := r.mu.down[node]; {
	case d == nil:
		r.markDownLocked(node, err, true)
	case d.byRead:
		d.since, d.err = r.wall(), err
	}
}

// NodeReadAnswered records that a read from node was answered: if only
// reads took it for down, it is up again.
func (r *Router) NodeReadAnswered(node string) {
	if r.downs.Load() == 0 {
		return
	}
	r.mu.Lock()
	d := r.mu.down[node]
	up := d != nil && d.byRead
	if up {
		r.upLocked(node)
	}
	r.mu.Unlock()
	if up {
		r.poke()
	}
}

// nodeAnswered records how a delivery to node ended.
func (r *Router) nodeAnswered(node string, err error) {
	unavailable := takesDown(err)
	if !unavailable && r.downs.Load() == 0 {
		return
	}
	r.mu.Lock()
	up := false
	switch {
	case unavailable:
		r.markDownLocked(node, err, false)
	case r.mu.down[node] != nil:
		r.upLocked(node)
		up = true
	}
	r.mu.Unlock()
	if up {
		r.poke()
	}
}

// upLocked records that node, taken for down, answered: its jobs that
// failed before are due at once. r.mu is held.
func (r *Router) upLocked(node string) {
	delete(r.mu.down, node)
	delete(r.mu.probed, node)
	r.downs.Store(int32(len(r.mu.down)))
	r.mu.upAt[node] = r.cfg.Clock.Now()
	r.mu.dirty = true
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// settle records a delivery's end: the job is done, or failed and due
// again after a backoff, or moved to the error queue.
func (r *Router) settle(kind string, j shard.Job, err error) {
	failed, waits := false, false
	defer func() {
		// One critical section: a scan that found the job in flight
		// (and so did not record when it is due) either starts after this
		// and finds it, or has reset what this records.
		r.mu.Lock()
		delete(r.mu.inflight, jobID{j.Seq, j.Target})
		if failed {
			r.jobFailedLocked(j.Seq)
		}
		if waits {
			r.jobWaitsLocked(j)
		}
		r.mu.Unlock()
		if failed {
			r.poke()
		}
	}()
	if fe, ok := ParseFenced(err); ok {
		// The target no longer takes writes routed by the job's map:
		// journal the job's mutations again for the leaves of a map at
		// least as new as the fence, and retire the job.
		r.metrics.deliveries.WithLabelValues(kind, "fenced").Inc()
		if err = r.reroute(j, fe); err == nil {
			return
		}
		r.log.Warn("cannot route a fenced job again; it stays due", "seq", j.Seq, "target", j.Target, "err", err)
	}
	if err == nil {
		r.metrics.deliveries.WithLabelValues(kind, "ok").Inc()
		if e := r.cfg.Store.JobDone(j.Seq, j.Target); e != nil && !errors.Is(e, shard.ErrClosed) {
			r.log.Error("journal: cannot mark a job done", "seq", j.Seq, "target", j.Target, "err", e)
		}
		return
	}
	now := r.cfg.Clock.Now()
	j.Attempts++
	j.LastError = err.Error()
	j.Failed = now
	j.Next = now.Add(r.backoff(j.Attempts))
	toErrors := !Unavailable(err) && j.Attempts >= r.cfg.MaxAttempts
	result := "failed"
	if toErrors {
		result = "error_queue"
	}
	r.metrics.deliveries.WithLabelValues(kind, result).Inc()
	if e := r.cfg.Store.JobFailed(j, toErrors); e != nil && !errors.Is(e, shard.ErrClosed) {
		r.log.Error("journal: cannot record a failed job", "seq", j.Seq, "target", j.Target, "err", e)
	}
	failed, waits = true, !toErrors
	if toErrors {
		r.log.Warn("replica job moved to the error queue", "seq", j.Seq, "target", j.Target, "attempts", j.Attempts, "err", err)
	}
}

// backoff is exponential in attempts, capped, with full jitter over its
// upper half.
func (r *Router) backoff(attempts int) time.Duration {
	d := r.cfg.RetryMin << min(attempts-1, 20)
	if d > r.cfg.RetryMax || d <= 0 {
		d = r.cfg.RetryMax
	}
	r.mu.Lock()
	f := 0.5 + r.mu.rng.Float64()/2
	r.mu.Unlock()
	return time.Duration(float64(d) * f)
}

// Unavailable reports whether err means the replica is down or slow (to be
// retried for ever) rather than that it refused the write.
func Unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, shard.ErrClosed) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return true
	}
	return false
}

func (r *Router) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run delivers pending jobs until ctx ends, then waits for deliveries in
// flight. Jobs left by a previous process are due at once.
func (r *Router) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.RetryMin)
	defer t.Stop()
	sem := make(chan struct{}, r.cfg.Deliveries)
	for {
		if r.scanDue() {
			r.scan(ctx, sem)
		}
		select {
		case <-ctx.Done():
			r.wg.Wait()
			r.stopCoalescers()
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

// never is later than any job's due time.
var never = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// scanDue reports whether the retry loop should scan the journal: a job
// may be due (see Router.mu), or RetryMax passed since the last scan.
func (r *Router) scanDue() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.dirty || !r.mu.nextDue.After(r.cfg.Clock.Now()) ||
		!r.mu.probeAt.After(r.wall()) || r.wall().Sub(r.mu.lastScan) >= r.cfg.RetryMax
}

// jobWaitsLocked records that job j failed and waits in the journal until
// j.Next, or, if its node is down, until the node may be probed. r.mu is
// held.
func (r *Router) jobWaitsLocked(j shard.Job) {
	if d := r.mu.down[parseTarget(j.Target).Node]; d != nil {
		r.mu.probeAt = earliest(r.mu.probeAt, r.nextProbeLocked(d))
		return
	}
	r.mu.nextDue = earliest(r.mu.nextDue, j.Next)
}

// scan starts a delivery for every due job not already in flight, and a
// probe for every node that is down and may be probed.
//
// It lists the jobs from scanFrom on. Every job it lists that a later
// scan must see again (one left by an earlier process, or one that has
// failed) moves scanFrom no higher than its seq; a job of this process
// that has not failed is being delivered by its Write, and if that fails,
// jobFailedLocked lowers scanFrom to it.
//
// The jobs of a node that is down are passed over unread, so that a scan
// costs little more than reading their keys, but for the probe: once the
// node may be probed, one job of it per page is read, and the first one
// claim takes goes out, due or not. Probes go to ever later jobs (probed),
// starting again from the first once a scan finds none later.
func (r *Router) scan(ctx context.Context, sem chan struct{}) {
	const pageSize = 256
	var afterSeq uint64
	var afterTarget string
	r.mu.Lock()
	if r.mu.scanFrom > 0 {
		afterSeq = r.mu.scanFrom - 1 // Jobs lists after (seq, target); "" sorts first
	}
	r.mu.failedMin = math.MaxUint64
	r.mu.dirty, r.mu.nextDue, r.mu.probeAt, r.mu.lastScan = false, never, never, r.wall()
	r.mu.Unlock()
	r.metrics.scans.Inc()
	lowest := uint64(math.MaxUint64)
	complete := false
	// wrapped: nodes whose jobs up to their last probe were passed over.
	wrapped := map[string]bool{}
	defer func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !complete {
			r.mu.dirty = true // the next scan starts where this one did
			return
		}
		// (JournalSeq reads an atomic: nothing here may wait on the store.)
		r.mu.scanFrom = min(lowest, r.mu.failedMin, r.cfg.Store.JournalSeq()+1)
		for node := range wrapped {
			if d := r.mu.down[node]; d != nil && r.mayProbeLocked(d) {
				delete(r.mu.probed, node) // no later job: start again
				r.mu.dirty = true
			}
		}
	}()
	var offered map[string]bool // nodes whose probe candidate this page holds
	held := func(seq uint64, target []byte) bool {
		if r.downs.Load() == 0 {
			return false
		}
		nodeBytes, _, _ := bytes.Cut(target, []byte("/"))
		r.mu.Lock()
		defer r.mu.Unlock()
		d := r.mu.down[string(nodeBytes)]
		if d == nil {
			return false
		}
		lowest = min(lowest, seq) // unless it is read, below
		if !r.mayProbeLocked(d) {
			r.mu.probeAt = earliest(r.mu.probeAt, r.nextProbeLocked(d))
			return true
		}
		// The node may be probed: read its first job after the last
		// probe that is not in flight, the candidate. What follows is
		// the candidate's probe, or its delivery settling (a job of this
		// process not yet failed is its write's), or the wrap-around,
		// each of which wakes the loop again: the jobs held here do not
		// need to.
		node := string(nodeBytes)
		last, ok := r.mu.probed[node]
		switch {
		case ok && !last.before(seq, target):
			wrapped[node] = true
		case offered[node]:
		default:
			if _, busy := r.mu.inflight[jobID{seq, string(target)}]; !busy {
				offered[node] = true
				return false
			}
		}
		return true
	}
	for ctx.Err() == nil {
		offered = map[string]bool{}
		jobs, page, err := r.cfg.Store.JobsSkipping(false, afterSeq, afterTarget, pageSize, held)
		if err != nil {
			if !errors.Is(err, shard.ErrClosed) {
				r.log.Error("journal: cannot list jobs", "err", err)
			}
			return
		}
		afterSeq, afterTarget = page.Seq, page.Target
		r.metrics.scannedJobs.Add(float64(len(jobs)))
		now := r.cfg.Clock.Now()
		for _, j := range jobs {
			if j.Seq > r.startSeq && j.Failed.IsZero() {
				continue
			}
			lowest = min(lowest, j.Seq)
			if !r.claim(j, now) {
				continue
			}
			id := jobID{j.Seq, j.Target}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				r.mu.Lock()
				delete(r.mu.inflight, id)
				r.mu.Unlock()
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer func() { <-sem }()
				r.settle("retry", j, r.redeliver(j))
			}()
		}
		if page.Done {
			complete = true
			return
		}
	}
}

// before reports whether job id sorts before the job (seq, target), as
// the journal lists them.
func (id jobID) before(seq uint64, target []byte) bool {
	return id.seq < seq || id.seq == seq && id.target < string(target)
}

// claim decides whether the retry loop delivers job j now, and if so marks
// it in flight. A job whose node is down is delivered only as the probe
// (due or not); any other, when due (or when it failed before its node
// last answered again), unless it is in flight already. A job left
// waiting lowers nextDue or probeAt.
func (r *Router) claim(j shard.Job, now time.Time) bool {
	node := parseTarget(j.Target).Node
	id := jobID{j.Seq, j.Target}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.mu.down[node]
	if _, busy := r.mu.inflight[id]; busy {
		return false // its delivery records when it is due as it settles
	}
	if d != nil {
		if !r.takeProbeLocked(d) {
			r.mu.probeAt = earliest(r.mu.probeAt, r.nextProbeLocked(d))
			return false
		}
		r.mu.probed[node] = id
	} else if up, ok := r.mu.upAt[node]; j.Next.After(now) && !(ok && j.Failed.Before(up)) {
		r.mu.nextDue = earliest(r.mu.nextDue, j.Next)
		return false
	}
	r.mu.inflight[id] = struct{}{}
	return true
}

// jobFailedLocked makes the retry loop's scans start no later than seq,
// whose job failed and waits in the journal. r.mu is held.
func (r *Router) jobFailedLocked(seq uint64) {
	r.mu.scanFrom = min(r.mu.scanFrom, seq)
	r.mu.failedMin = min(r.mu.failedMin, seq)
}

// Retried tells the retry loop that job seq is pending again (moved back
// from the error queue) and wakes it.
func (r *Router) Retried(seq uint64) {
	r.mu.Lock()
	r.jobFailedLocked(seq)
	r.mu.dirty = true
	r.mu.Unlock()
	r.poke()
}

// jobMutations returns a job's share of its journal entry (naming the
// target's shard) and the map version the entry was routed by.
func (r *Router) jobMutations(j shard.Job) ([]shard.Mutation, uint64, error) {
	data, err := r.cfg.Store.JournalEntry(j.Seq)
	if err != nil {
		return nil, 0, err
	}
	var e pb.JournalEntry
	if err := proto.Unmarshal(data, &e); err != nil {
		return nil, 0, fmt.Errorf("router: corrupt journal entry %d: %w", j.Seq, err)
	}
	leaf := parseTarget(j.Target)
	i := slices.IndexFunc(e.Targets, func(t *pb.JournalEntry_Target) bool { return t.Node == leaf.Node && t.Shard == leaf.Shard })
	if i < 0 {
		return nil, 0, fmt.Errorf("router: journal entry %d has no target %s", j.Seq, j.Target)
	}
	muts := make([]shard.Mutation, len(e.Targets[i].Mutations))
	for k, mi := range e.Targets[i].Mutations {
		if int(mi) >= len(e.Mutations) {
			return nil, 0, fmt.Errorf("router: journal entry %d: mutation index %d out of range", j.Seq, mi)
		}
		if err := FromProto(e.Mutations[mi], &muts[k]); err != nil {
			return nil, 0, err
		}
		muts[k].Shard = leaf.Shard
	}
	return muts, e.MapVersion, nil
}

// redeliver applies a job's share of its journal entry to its target.
func (r *Router) redeliver(j shard.Job) error {
	muts, v, err := r.jobMutations(j)
	if err != nil {
		return err
	}
	_, err = r.deliver(r.cfg.Map(), parseTarget(j.Target), muts, v)
	if err == nil {
		r.log.Debug("replica job delivered", "seq", j.Seq, "target", j.Target, "attempts", j.Attempts)
	}
	return err
}

// reroute replaces a fenced job: its mutations are journaled again with a
// job for every leaf they go to by a map at least as new as the fence
// (replicas that hold them already supersede them), delivered at once,
// and the old job is done.
func (r *Router) reroute(j shard.Job, fe *FencedError) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ReplicaTimeout)
	defer cancel()
	m, err := r.waitMap(ctx, fe.Fence)
	if err != nil {
		return fmt.Errorf("router: waiting for map version %d: %w", fe.Fence, err)
	}
	muts, _, err := r.jobMutations(j)
	if err != nil {
		return err
	}
	targets, _, err := plan(m, muts, &r.trees)
	if err != nil {
		return err
	}
	keys := make([]string, len(targets))
	for i, t := range targets {
		keys[i] = Target(t.leaf)
	}
	if len(targets) > 0 {
		data, err := encodeEntry(m.Version, muts, targets, nil, r.cfg.Clock.Now())
		if err != nil {
			return err
		}
		seq, err := r.cfg.Store.JournalAppend(ctx, data, keys)
		if err != nil {
			return err
		}
		for i, t := range targets {
			muts := t.sub(muts)
			id := jobID{seq, keys[i]}
			r.mu.Lock()
			r.mu.inflight[id] = struct{}{}
			r.mu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				_, err := r.deliver(m, t.leaf, muts, m.Version)
				r.settle("first", shard.Job{Seq: seq, Target: keys[i]}, err)
			}()
		}
	}
	r.metrics.reroutes.Inc()
	r.log.Info("fenced job routed again", "seq", j.Seq, "target", j.Target, "fence", fe.Fence, "map_version", m.Version, "targets", strings.Join(keys, ","))
	return r.cfg.Store.JobDone(j.Seq, j.Target)
}

// ReadCandidates returns the leaves to try, in order, for a read routed by
// hash h in table.
func (r *Router) ReadCandidates(table string, h uint64) (*gizzard.Map, []gizzard.Leaf, error) {
	m := r.cfg.Map()
	if _, ok := m.Tables[table]; !ok {
		if table == "" {
			return nil, nil, fmt.Errorf("%w: table name is empty", shard.ErrInvalid)
		}
		return nil, nil, fmt.Errorf("%w: %q is not in the shard map", shard.ErrTableNotFound, table)
	}
	fw, err := m.Lookup(table, h)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: table %q: %w", ErrNoRoute, table, err)
	}
	r.mu.Lock()
	pick := r.mu.rng.Uint64()
	r.mu.Unlock()
	leaves, err := m.PlanRead(fw.Root, pick)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: tree %q: %w", ErrNoRoute, fw.Root, err)
	}
	return m, leaves, nil
}
