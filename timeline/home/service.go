package home

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/hedge"
	"github.com/aviarydb/aviary/timeline"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// The index tables the service uses. A site's map must have them (node's
// DefaultTables do).
const (
	TablePosts       = "user_timeline"
	TableFollowing   = "following"
	TableFollowers   = "followers"
	TableFanout      = "fanout"
	TableCelebrities = "celebrities"
)

// celebritiesOwner is the one owner of the celebrities table.
const celebritiesOwner = 1

// Data is the part of a node's Data service the timelines use: writes and
// reads through the router.
type Data interface {
	Write(context.Context, *pb.WriteRequest) (*pb.WriteResponse, error)
	Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error)
	Count(context.Context, *pb.CountRequest) (*pb.CountResponse, error)
}

// Config configures a Service. Zero fields take the defaults of
// EnsureDefaults.
type Config struct {
	// NodeID is this node's id in the shard map.
	NodeID string
	// Store holds this node's timelines; nil if the node does not have the
	// timeline role.
	Store *timeline.Store
	// Data reaches the index through the node's router.
	Data Data
	// Dial returns a connection to a node's gRPC address.
	Dial func(addr string) (*grpc.ClientConn, error)
	// NewID returns a new time-ordered id, for Post without a status id.
	NewID func() (uint64, error)
	// Capacity is the most entries of a timeline, for rebuilds. Default
	// Store's capacity, else timeline.DefaultCapacity.
	Capacity int
	// CelebrityFollowers: an author with more followers is merged in at
	// read time instead of pushed. Default 10000.
	CelebrityFollowers int
	// FanoutPartitions is the number of fan-out queue partitions per site.
	// Every node of a site must use the same. Default 16.
	FanoutPartitions int
	// FanoutBatch is the most queue entries a worker takes at once.
	// Default 256.
	FanoutBatch int
	// FanoutLinger: a worker that took fewer than FanoutBatch entries waits
	// this long before it looks again, so that the posts arriving meanwhile
	// go out together (fewer calls per post) at the cost of that much
	// delivery latency. Default 0: look again at once.
	FanoutLinger time.Duration
	// HedgeMin and HedgeMax bound the hedge delay. Default 1ms and 50ms.
	HedgeMin, HedgeMax time.Duration
	// ReplicaTimeout bounds one push to a replica. Default 5s.
	ReplicaTimeout time.Duration
	// RepairQueue is the most repairs of single timelines waiting at
	// once. A repair that finds it full marks its node behind: the node
	// is caught up whole once it answers (see catchup.go). Default 4096.
	RepairQueue int
	// Rings configures the placement rings.
	Rings timeline.RingOptions
	// Logger; default slog.Default().
	Logger *slog.Logger
	// OnDelivered, if set, is called when a post has been pushed to every
	// reachable replica of its followers' timelines, with the time the post
	// was accepted (for benchmarks).
	OnDelivered func(statusID uint64, accepted time.Time)
}

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.Capacity == 0 {
		c.Capacity = timeline.DefaultCapacity
		if c.Store != nil {
			c.Capacity = c.Store.Capacity()
		}
	}
	if c.CelebrityFollowers == 0 {
		c.CelebrityFollowers = 10000
	}
	if c.FanoutPartitions == 0 {
		c.FanoutPartitions = 16
	}
	if c.FanoutBatch == 0 {
		c.FanoutBatch = 256
	}
	if c.HedgeMin == 0 {
		c.HedgeMin = hedge.DefaultMin
	}
	if c.HedgeMax == 0 {
		c.HedgeMax = hedge.DefaultMax
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = 5 * time.Second
	}
	if c.RepairQueue == 0 {
		c.RepairQueue = 4096
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Rings.EnsureDefaults()
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("home: NodeID is empty")
	case c.Data == nil || c.Dial == nil || c.NewID == nil:
		return errors.New("home: Data, Dial and NewID are required")
	case c.FanoutPartitions < 1 || c.FanoutPartitions > 1<<16:
		return fmt.Errorf("home: FanoutPartitions %d is not in [1, 65536]", c.FanoutPartitions)
	case c.FanoutBatch < 1 || c.FanoutBatch > 1000:
		return fmt.Errorf("home: FanoutBatch %d is not in [1, 1000]", c.FanoutBatch)
	case c.CelebrityFollowers < 1 || c.CelebrityFollowers > maxFollowing:
		return fmt.Errorf("home: CelebrityFollowers %d is not in [1, %d] (the followers a fan-out reads)", c.CelebrityFollowers, maxFollowing)
	case c.RepairQueue < 1:
		return fmt.Errorf("home: RepairQueue %d is less than 1", c.RepairQueue)
	}
	if err := hedge.CheckBounds(c.HedgeMin, c.HedgeMax); err != nil {
		return fmt.Errorf("home: %w", err)
	}
	return c.Rings.Validate()
}

// Member is a timeline node of the site.
type Member struct {
	ID   string
	Addr string
}

// Members is what the service needs of the shard map.
type Members struct {
	// Timeline lists the site's timeline nodes.
	Timeline []Member
	// Site is this site's id; Sites every site's id (this one included).
	Site  uint32
	Sites []uint32
}

// view is one version of the placement: the rings over the timeline nodes
// and their addresses.
type view struct {
	rings *timeline.Rings // nil: no timeline nodes
	addr  map[string]string
	ids   []string // sorted
	site  uint32
	sites []uint32
}

func (v *view) replicas(owner uint64) [timeline.NumReplicas]string {
	if v.rings == nil {
		return [timeline.NumReplicas]string{}
	}
	return v.rings.Replicas(owner)
}

// Service implements pb.TimelinesServer.
type Service struct {
	pb.UnimplementedTimelinesServer
	cfg     Config
	log     *slog.Logger
	store   *timeline.Store
	metrics *metrics
	hedge   *hedge.Latencies

	mu      sync.Mutex
	view    *view
	changed chan struct{} // closed and replaced on every view change
	down    map[string]*nodeDown
	conns   map[string]pb.TimelinesClient

	celebs celebrities
	// life ends when Run returns: work detached from a request (rebuilds)
	// runs under it.
	life     context.Context
	endLife  context.CancelFunc
	alive    liveness
	building flight
	follows  followCache
	repairs  chan repair
	repairMu sync.Mutex
	queued   map[repair]bool
	attempts map[repair]int
	behind   map[string]*behindNode // under repairMu
	wake     []chan struct{}        // per partition: a local post for it
}

// New returns a service. Call SetMembers with the map's timeline nodes, and
// Run for the background work (fan-out, repair, refill).
func New(cfg Config, reg prometheus.Registerer) (*Service, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Service{
		cfg:      cfg,
		log:      cfg.Logger,
		store:    cfg.Store,
		metrics:  newMetrics(reg, cfg.Store, cfg.FanoutPartitions),
		hedge:    hedge.New(),
		view:     &view{addr: map[string]string{}},
		changed:  make(chan struct{}),
		down:     map[string]*nodeDown{},
		conns:    map[string]pb.TimelinesClient{},
		repairs:  make(chan repair, cfg.RepairQueue),
		queued:   map[repair]bool{},
		attempts: map[repair]int{},
		behind:   map[string]*behindNode{},
		wake:     make([]chan struct{}, cfg.FanoutPartitions),
	}
	s.life, s.endLife = context.WithCancel(context.Background())
	for i := range s.wake {
		s.wake[i] = make(chan struct{}, 1)
	}
	s.follows.entries = map[uint64]followEntry{}
	return s, nil
}

// SetMembers installs the site's timeline nodes and sites from a new map.
func (s *Service) SetMembers(m Members) error {
	v := &view{addr: map[string]string{}, site: m.Site, sites: slices.Clone(m.Sites)}
	for _, n := range m.Timeline {
		v.addr[n.ID] = n.Addr
		v.ids = append(v.ids, n.ID)
	}
	slices.Sort(v.ids)
	if !slices.Contains(v.sites, v.site) {
		v.sites = append(v.sites, v.site)
	}
	s.mu.Lock()
	old := s.view
	s.mu.Unlock()
	if maps.Equal(old.addr, v.addr) && old.site == v.site && slices.Equal(old.sites, v.sites) {
		return nil // ids are addr's keys
	}
	if len(v.ids) > 0 {
		r, err := timeline.NewRings(v.ids, s.cfg.Rings)
		if err != nil {
			return err
		}
		v.rings = r
	}
	s.mu.Lock()
	s.view = v
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.metrics.ringNodes.Set(float64(len(v.ids)))
	return nil
}

func (s *Service) current() (*view, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view, s.changed
}

// client returns the Timelines client of a node by id.
func (s *Service) client(v *view, id string) (pb.TimelinesClient, error) {
	addr, ok := v.addr[id]
	if !ok {
		return nil, fmt.Errorf("home: node %q is not a timeline node of the map", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.conns[addr]; ok {
		return c, nil
	}
	cc, err := s.cfg.Dial(addr)
	if err != nil {
		return nil, err
	}
	c := pb.NewTimelinesClient(cc)
	s.conns[addr] = c
	return c, nil
}

// downFor is how long a replica that failed is asked last, and no push
// goes to it.
const downFor = time.Second

// nodeDown is a timeline node a call failed to.
type nodeDown struct {
	until   time.Time // asked last, and pushed nothing, until then
	probing bool      // a push went out at probeAt to see whether it answers again
	probeAt time.Time
}

// heldLocked reports whether node d is to be asked last and pushed
// nothing now: a call to it failed less than downFor ago, or a probe is
// out and has not outlived the time it may take (a probe whose answer was
// never recorded, say its caller gave up, must not hold the node down for
// ever). s.mu is held.
func (s *Service) heldLocked(d *nodeDown) bool {
	return d.probing && time.Since(d.probeAt) < s.cfg.ReplicaTimeout+downFor || time.Now().Before(d.until)
}

// markDown records that a call to node id failed: it is asked last, and
// pushed nothing, for downFor. A probe that is out stays out: only its
// own answer ends it (pushFailed, markUp, probeAbandoned), so that a read
// that fails meanwhile does not let a second push go to a node that hangs.
func (s *Service) markDown(id string) {
	s.pushFailed(id, false)
}

// pushFailed records that a push to node id failed, as markDown; if it was
// the probe, the probe is over.
func (s *Service) pushFailed(id string, probe bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.down[id]
	if d == nil {
		d = &nodeDown{}
		s.down[id] = d
	}
	d.until = time.Now().Add(downFor)
	if probe {
		d.probing = false
	}
}

// markUp records that a push to node id succeeded.
func (s *Service) markUp(id string) {
	s.mu.Lock()
	delete(s.down, id)
	s.mu.Unlock()
}

// isDown reports whether reads should ask node id last: a call to it
// failed less than downFor ago, or a push is out to see whether it
// answers again.
func (s *Service) isDown(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.down[id]
	return ok && s.heldLocked(d)
}

// skipPush reports whether a push to node id should not be sent: a call
// to it failed less than downFor ago, or another push is out to see
// whether it answers again. The first push after downFor is that probe
// (probe), so that a node that hangs holds one push at a time (for
// ReplicaTimeout) rather than every fan-out batch's.
func (s *Service) skipPush(id string) (skip, probe bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.down[id]
	switch {
	case !ok:
		return false, false
	case s.heldLocked(d):
		return true, false
	}
	d.probing, d.probeAt = true, time.Now()
	return false, true
}

// probeAbandoned records that the probe to node id ended because its
// caller gave up: another may go.
func (s *Service) probeAbandoned(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.down[id]; ok {
		d.probing = false
	}
}

// Run does the background work until ctx ends: fan-out workers for the
// partitions this node owns, repairs, the celebrity set and refills.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		s.endLife()
		s.building.wg.Wait()
	}()
	wg.Go(func() { s.runRepairs(ctx) })
	wg.Go(func() { s.runCatchUps(ctx) })
	wg.Go(func() { s.runCelebrities(ctx) })
	if s.store != nil { // the timeline role
		wg.Go(func() { s.runLiveness(ctx) })
		wg.Go(func() { s.runFanout(ctx) })
		wg.Go(func() { s.runRefill(ctx) })
	}
	wg.Wait()
}

// RingNodes lists the timeline nodes the service places timelines on.
func (s *Service) RingNodes() []string {
	v, _ := s.current()
	return slices.Clone(v.ids)
}

// Held is the number of timelines this node holds (0 without the role).
func (s *Service) Held() int {
	if s.store == nil {
		return 0
	}
	return s.store.Owners()
}

// Celebrities is the number of authors this node knows as celebrities.
func (s *Service) Celebrities() int { return len(s.celebs.all()) }
