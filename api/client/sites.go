package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Site is one site of a deployment, as DialSites takes it.
type Site struct {
	// Name is the site's name in the site map: a refusal names the site to
	// use instead by it.
	Name string
	// Addrs are the gRPC addresses of the site's nodes (at least one).
	Addrs []string
}

// Clock gives the time the failover back-off is measured with.
type Clock = ids.Clock

// Sites' defaults.
const (
	DefaultBackoff      = time.Second
	DefaultMaxBackoff   = 10 * time.Second
	DefaultProbeTimeout = 2 * time.Second
)

type siteOptions struct {
	backoff, maxBackoff time.Duration
	probeTimeout        time.Duration
	onSwitch            func(from, to, reason string)
	clock               Clock
	dial                dialOptions
}

// A SiteOption configures DialSites: WithBackoff, WithProbeTimeout,
// OnSwitch, WithClock, and any DialOption (WithTLS), which applies to the
// connections to every site's nodes.
type SiteOption interface {
	applySite(*siteOptions)
}

// siteOption is a SiteOption that sets siteOptions.
type siteOption func(*siteOptions)

func (f siteOption) applySite(o *siteOptions) { f(o) }

// WithBackoff sets how long a site set aside waits before it is probed
// again: initial after the first failure, doubling with each failure since
// it last served a call, up to max. Defaults DefaultBackoff and
// DefaultMaxBackoff.
func WithBackoff(initial, max time.Duration) SiteOption {
	return siteOption(func(o *siteOptions) { o.backoff, o.maxBackoff = initial, max })
}

// WithProbeTimeout bounds one probe of a site set aside (a health check of
// its nodes). Default DefaultProbeTimeout.
func WithProbeTimeout(d time.Duration) SiteOption {
	return siteOption(func(o *siteOptions) { o.probeTimeout = d })
}

// OnSwitch registers fn to be told each time the site calls go to changes
// (see Sites.Current), with why: a DR drill can record the moment of a
// failover. Calls to fn are made one at a time, in the order of the
// switches, from a goroutine of a call or probe under way; fn may call
// Current, must not call Close, and should return quickly (calls that
// switch wait for it).
func OnSwitch(fn func(from, to, reason string)) SiteOption {
	return siteOption(func(o *siteOptions) { o.onSwitch = fn })
}

// WithClock sets the clock the back-off is measured with. Default the
// system clock.
func WithClock(c Clock) SiteOption {
	return siteOption(func(o *siteOptions) { o.clock = c })
}

// Sites sends calls to the most preferred usable site of a list, one
// Client per site, and fails over between them. It has Client's data
// methods, each returning what Client's returns. It is safe for concurrent
// use.
//
// A call goes to the current site (Current), and on to other sites while
// it fails with:
//   - unavailability of the whole site: its Client tried every node and
//     none answered (Unavailable or DeadlineExceeded, while the call's
//     context lives). The site is set aside as unreachable.
//   - a refusal (ParseSiteRefusal): the site is not active and took
//     nothing. The site is set aside as refusing, and the call goes on to
//     the site the refusal names ("use") if the client knows it and has not
//     tried it, else to the next site. While the site is set aside, its
//     calls go to that named site, in its place in the order.
//
// Sites are tried in order of preference, those set aside last: each site
// at most once per call. Any other answer, success or error, is the
// call's. When every site failed, the call returns FailedPrecondition,
// with the ErrorInfo of the first refusal, if every site refused, and
// Unavailable otherwise; the message holds each site's error.
//
// A site set aside is probed after a back-off (WithBackoff), by the first
// call made once it is due, in the background: a health check of its
// nodes. An unreachable site that answers is usable again. A refusing site
// that answers is given the next write: calls return to it when it accepts
// one (reads alone do not bring them back: a site that refused may be
// recovering, behind the others). Each failure doubles the back-off, each
// call served by a site in good standing resets it. A call that runs out
// of time at a site gets that site probed at once: a site behind a
// partition that drops packets answers nothing, not even an error, until
// gRPC's keepalive gives up on its connections; if the probe fails, the
// site is set aside.
type Sites struct {
	opts  siteOptions
	sites []*siteConn
	index map[string]int

	probes   sync.WaitGroup
	notifyMu sync.Mutex // held while OnSwitch is told, so that calls are in order

	mu struct {
		sync.Mutex
		closed   bool
		current  int          // index of the site calls go to
		switches []siteSwitch // switches OnSwitch has not been told yet
	}
}

// siteConn is one site: its client, and what Sites knows of its health.
type siteConn struct {
	name   string
	client *Client

	// Guarded by Sites.mu.
	unreachable bool   // a call found no node answering, no probe or call has since
	refused     bool   // it refused a write, and has accepted none since
	trial       bool   // refused, then answered a probe: writes try it again
	use         string // where its last refusal sent its clients
	why         string // what last changed its standing, for OnSwitch
	epoch       uint64 // counts changes of standing, to ignore stale reports
	backoff     time.Duration
	retryAt     time.Time // when a site set aside is due for a probe
	probing     bool
}

type siteSwitch struct{ from, to, reason string }

// DialSites returns a client for sites, in order of preference (at least
// one; names unique). Connections are made lazily.
func DialSites(sites []Site, opts ...SiteOption) (*Sites, error) {
	o := siteOptions{backoff: DefaultBackoff, maxBackoff: DefaultMaxBackoff, probeTimeout: DefaultProbeTimeout, clock: ids.SystemClock{}}
	for _, opt := range opts {
		opt.applySite(&o)
	}
	switch {
	case len(sites) == 0:
		return nil, errors.New("client: no site")
	case o.backoff <= 0 || o.maxBackoff < o.backoff:
		return nil, fmt.Errorf("client: back-off %s up to %s: want 0 < initial <= max", o.backoff, o.maxBackoff)
	case o.probeTimeout <= 0:
		return nil, fmt.Errorf("client: probe timeout %s: must be positive", o.probeTimeout)
	case o.clock == nil:
		return nil, errors.New("client: nil clock")
	}
	s := &Sites{opts: o, index: map[string]int{}}
	for i, site := range sites {
		switch {
		case site.Name == "":
			_ = s.Close()
			return nil, fmt.Errorf("client: site %d has no name", i)
		case len(site.Addrs) == 0:
			_ = s.Close()
			return nil, fmt.Errorf("client: site %q has no node address", site.Name)
		}
		if _, dup := s.index[site.Name]; dup {
			_ = s.Close()
			return nil, fmt.Errorf("client: site %q is listed twice", site.Name)
		}
		c, err := dial(site.Addrs, o.dial)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("site %q: %w", site.Name, err)
		}
		s.index[site.Name] = i
		s.sites = append(s.sites, &siteConn{name: site.Name, client: c, backoff: o.backoff})
	}
	return s, nil
}

// Close stops the probes under way and closes every connection. Calls
// after Close fail.
func (s *Sites) Close() error {
	s.mu.Lock()
	closed := s.mu.closed
	s.mu.closed = true
	s.mu.Unlock()
	if closed {
		return nil
	}
	var errs []error
	for _, sc := range s.sites {
		errs = append(errs, sc.client.Close()) // ends the probes' health checks
	}
	s.probes.Wait()
	return errors.Join(errs...)
}

// Current returns the name of the site calls go to now: the most
// preferred site that is not set aside (or the site that one's refusal
// named), or, when every site is set aside, the most preferred one. With
// calls under way it may change at any time; the site that took a write
// is the one whose id its result's version carries.
func (s *Sites) Current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sites[s.mu.current].name
}

// usableLocked reports whether site i takes calls of the kind.
func (s *Sites) usableLocked(i int, write bool) bool {
	sc := s.sites[i]
	return !sc.unreachable && (!sc.refused || write && sc.trial)
}

// orderLocked returns the sites in the order a call tries them, and how
// many of them, first, are usable: by preference, a site set aside for a
// refusal replaced by the site it named (if usable), then the sites set
// aside, by preference.
func (s *Sites) orderLocked(write bool) (order []int, usable int) {
	seen := make([]bool, len(s.sites))
	add := func(i int) {
		if !seen[i] {
			seen[i] = true
			order = append(order, i)
		}
	}
	for i, sc := range s.sites {
		if s.usableLocked(i, write) {
			add(i)
			continue
		}
		if j, ok := s.index[sc.use]; ok && sc.refused && s.usableLocked(j, write) {
			add(j)
		}
	}
	usable = len(order)
	for i := range s.sites {
		add(i)
	}
	return order, usable
}

// sitePlan is what a call knows of the sites when it starts.
type sitePlan struct {
	order  []int
	usable []bool
	epochs []uint64
}

// plan returns the order the call tries the sites in, with their standing,
// and starts the probes that are due.
func (s *Sites) plan(write bool) sitePlan {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.probeDueLocked()
	p := sitePlan{usable: make([]bool, len(s.sites)), epochs: make([]uint64, len(s.sites))}
	var n int
	p.order, n = s.orderLocked(write)
	for _, i := range p.order[:n] {
		p.usable[i] = true
	}
	for i, sc := range s.sites {
		p.epochs[i] = sc.epoch
	}
	return p
}

// siteDo runs call against the sites in the order of the plan, until one
// answers with anything but a refusal or unavailability. write says
// whether the call writes.
func siteDo[T any](ctx context.Context, s *Sites, write bool, call func(*Client) (T, error)) (T, error) {
	p := s.plan(write)
	tried := make([]bool, len(s.sites))
	tried[p.order[0]] = true
	pos := 1
	r, k, failed, err := failover(ctx, p.order[0], func(k int) (T, error) { return call(s.sites[k].client) }, func(k int, err error) int {
		ref, refused := ParseSiteRefusal(err)
		if !refused && !retryable(err) {
			return -1
		}
		s.setAside(k, p.epochs[k], err, ref, refused)
		if j, ok := s.index[ref.Use]; refused && ok && !tried[j] && p.usable[j] {
			tried[j] = true
			return j
		}
		for ; pos < len(p.order); pos++ {
			if j := p.order[pos]; !tried[j] {
				tried[j] = true
				return j
			}
		}
		return -1
	})
	_, refused := ParseSiteRefusal(err)
	switch {
	case ctx.Err() != nil && err != nil:
		// The call ran out of time or was cancelled: that says nothing
		// sure about the site. But a site that stopped answering without
		// closing its connections (a partition that drops packets) looks
		// like this until gRPC's keepalive gives up on them: probe it.
		if status.Code(err) == codes.DeadlineExceeded {
			s.suspect(k, p.epochs[k])
		}
	case err == nil || !refused && !retryable(err):
		// The site answered: reachable, and, if the write succeeded, it
		// takes writes.
		s.answered(k, p.epochs[k], write && err == nil)
	default:
		err = everySiteFailed(s, append(failed, attempt{k, err}))
	}
	s.settle()
	return r, err
}

// everySiteFailed is the error of a call that every site failed.
func everySiteFailed(s *Sites, failed []attempt) error {
	var first error // the first refusal
	allRefused := true
	errs := make([]error, 0, len(failed))
	for _, a := range failed {
		if _, ok := ParseSiteRefusal(a.err); !ok {
			allRefused = false
		} else if first == nil {
			first = a.err
		}
		errs = append(errs, fmt.Errorf("site %q: %s", s.sites[a.target].name, status.Convert(a.err).Message()))
	}
	if allRefused {
		// The first refusal's status, ErrorInfo included, with every
		// site's message.
		p := status.Convert(first).Proto()
		p.Message = fmt.Sprintf("client: no site takes writes: %v", errors.Join(errs...))
		return status.ErrorProto(p)
	}
	return status.Errorf(codes.Unavailable, "client: no site answered: %v", errors.Join(errs...))
}

// setAside records that site k, at epoch, refused a write or did not
// answer.
func (s *Sites) setAside(k int, epoch uint64, err error, ref SiteRefusal, refused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.sites[k]
	if sc.epoch != epoch {
		return // its standing changed since the call looked: the report is stale
	}
	msg := status.Convert(err).Message()
	switch {
	case refused && (!sc.refused || sc.trial):
		sc.refused, sc.trial, sc.use = true, false, ref.Use
		sc.why = fmt.Sprintf("site %q refused a write: %s", sc.name, msg)
	case !refused && !sc.unreachable:
		sc.unreachable, sc.trial = true, false
		sc.why = fmt.Sprintf("site %q is unreachable: %s", sc.name, msg)
	default:
		return // set aside already, and due for a probe when it was
	}
	sc.epoch++
	s.scheduleLocked(sc)
}

// scheduleLocked sets when sc is probed next, and doubles its back-off.
func (s *Sites) scheduleLocked(sc *siteConn) {
	sc.retryAt = s.opts.clock.Now().Add(sc.backoff)
	sc.backoff = min(2*sc.backoff, s.opts.maxBackoff)
}

// answered records that site k, at epoch, answered a call; accepted: it
// took a write.
func (s *Sites) answered(k int, epoch uint64, accepted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.sites[k]
	if sc.epoch != epoch {
		return
	}
	if sc.unreachable {
		sc.unreachable = false
		sc.why = fmt.Sprintf("site %q answers again", sc.name)
		sc.epoch++
	}
	if accepted && sc.refused {
		sc.refused, sc.trial, sc.use = false, false, ""
		sc.why = fmt.Sprintf("site %q accepts writes again", sc.name)
		sc.epoch++
	}
	if !sc.unreachable && !sc.refused {
		sc.backoff = s.opts.backoff
	}
}

// probeDueLocked starts a probe of every site set aside whose back-off has
// passed.
func (s *Sites) probeDueLocked() {
	now := s.opts.clock.Now()
	for i, sc := range s.sites {
		if (sc.unreachable || sc.refused && !sc.trial) && !now.Before(sc.retryAt) {
			s.startProbeLocked(i)
		}
	}
}

// suspect probes site k, at epoch, now: a call ran out of time there.
func (s *Sites) suspect(k int, epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sites[k].epoch == epoch {
		s.startProbeLocked(k)
	}
}

// startProbeLocked starts a probe of site i unless one is under way.
func (s *Sites) startProbeLocked(i int) {
	sc := s.sites[i]
	if s.mu.closed || sc.probing {
		return
	}
	sc.probing = true
	s.probes.Add(1)
	go s.probe(i, sc.epoch)
}

// probe checks whether site i, as it stood at epoch, answers.
func (s *Sites) probe(i int, epoch uint64) {
	defer s.probes.Done()
	sc := s.sites[i]
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.probeTimeout)
	err := sc.client.serving(ctx)
	cancel()
	s.mu.Lock()
	sc.probing = false
	if s.mu.closed || sc.epoch != epoch {
		s.mu.Unlock()
		return
	}
	switch {
	case err != nil:
		// Set aside still, or now (a suspect); a refusing site that
		// stopped answering is unreachable too.
		if !sc.unreachable {
			sc.unreachable, sc.trial = true, false
			sc.why = fmt.Sprintf("site %q is unreachable: %s", sc.name, status.Convert(err).Message())
			sc.epoch++
		}
		s.scheduleLocked(sc)
	case sc.refused && (sc.unreachable || !sc.trial):
		sc.unreachable, sc.trial = false, true
		sc.why = fmt.Sprintf("site %q answers again; the next write tries it", sc.name)
		sc.epoch++
	case sc.unreachable:
		sc.unreachable = false
		sc.why = fmt.Sprintf("site %q answers again", sc.name)
		sc.epoch++
	}
	s.mu.Unlock()
	s.settle()
}

// settle recomputes the current site and tells OnSwitch of a change.
func (s *Sites) settle() {
	s.mu.Lock()
	order, _ := s.orderLocked(false)
	if cur := order[0]; cur != s.mu.current {
		from, to := s.sites[s.mu.current], s.sites[cur]
		// Calls left from because it was set aside, or came to to
		// because it is back.
		why := to.why
		if !s.usableLocked(s.mu.current, false) {
			why = from.why
		}
		s.mu.current = cur
		if s.opts.onSwitch != nil {
			s.mu.switches = append(s.mu.switches, siteSwitch{from.name, to.name, why})
		}
	}
	pending := len(s.mu.switches) > 0
	s.mu.Unlock()
	if pending {
		s.notify()
	}
}

// notify tells OnSwitch of the switches queued, in order. Whoever holds
// notifyMu delivers every switch queued until it finds none.
func (s *Sites) notify() {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	for {
		s.mu.Lock()
		sw := s.mu.switches
		s.mu.switches = nil
		s.mu.Unlock()
		if len(sw) == 0 {
			return
		}
		for _, w := range sw {
			s.opts.onSwitch(w.from, w.to, w.reason)
		}
	}
}

// Put sets (table, key) to value at the current site.
func (s *Sites) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return siteDo(ctx, s, true, func(c *Client) (*pb.WriteResult, error) { return c.Put(ctx, r) })
}

// Delete deletes (table, key) at the current site.
func (s *Sites) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return siteDo(ctx, s, true, func(c *Client) (*pb.WriteResult, error) { return c.Delete(ctx, r) })
}

// Append adds an index entry at the current site.
func (s *Sites) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return siteDo(ctx, s, true, func(c *Client) (*pb.WriteResult, error) { return c.Append(ctx, r) })
}

// Remove deletes an index entry at the current site.
func (s *Sites) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return siteDo(ctx, s, true, func(c *Client) (*pb.WriteResult, error) { return c.Remove(ctx, r) })
}

// Write applies a batch of mutations at the current site.
func (s *Sites) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	return siteDo(ctx, s, true, func(c *Client) (*pb.WriteResponse, error) { return c.Write(ctx, r) })
}

// Get reads (table, key) at the current site.
func (s *Sites) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	return siteDo(ctx, s, false, func(c *Client) (*pb.GetResponse, error) { return c.Get(ctx, r) })
}

// MultiGet reads many keys of one table at the current site.
func (s *Sites) MultiGet(ctx context.Context, r *pb.MultiGetRequest) (*pb.MultiGetResponse, error) {
	return siteDo(ctx, s, false, func(c *Client) (*pb.MultiGetResponse, error) { return c.MultiGet(ctx, r) })
}

// Range lists an owner's entries, newest first, at the current site.
func (s *Sites) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return siteDo(ctx, s, false, func(c *Client) (*pb.RangeResponse, error) { return c.Range(ctx, r) })
}

// Count counts an owner's entries at the current site.
func (s *Sites) Count(ctx context.Context, r *pb.CountRequest) (*pb.CountResponse, error) {
	return siteDo(ctx, s, false, func(c *Client) (*pb.CountResponse, error) { return c.Count(ctx, r) })
}
