package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aviarydb/aviary/gizzard"
)

// ErrSiteNotActive: this site is not active (a DR drill fenced it), so it
// refuses its clients' writes. Writes replicated from other sites are still
// applied.
var ErrSiteNotActive = errors.New("router: site not active")

// SiteError is how a router of a site that is not active refuses a
// locally-originated write: it names the site, its state and the site to
// write to instead. It matches ErrSiteNotActive.
type SiteError struct {
	Site  string
	State gizzard.SiteState
	// Use is the site the map sends this site's clients to; empty when the
	// map names none (any active site).
	Use string
}

func (e *SiteError) Error() string {
	if e.Use == "" {
		return fmt.Sprintf("site %q is %s and takes no writes; write to an active site", e.Site, e.State)
	}
	return fmt.Sprintf("site %q is %s and takes no writes; write to site %q", e.Site, e.State, e.Use)
}

// Is makes a *SiteError match ErrSiteNotActive.
func (e *SiteError) Is(target error) bool { return target == ErrSiteNotActive }

// siteAdmits returns a *SiteError when m lists the router's site in a state
// that takes no writes. A map that does not list the site (a site with no
// relay yet) admits. A router started recovering (Config.StartRecovering)
// refuses as recovering until m lists the site in a state other than
// active; from then on the map alone decides.
func (r *Router) siteAdmits(m *gizzard.Map) error {
	site := r.cfg.Site
	s, ok := m.Sites[site]
	if r.startHold.Load() {
		if !ok || s.Writable() {
			return &SiteError{Site: site, State: gizzard.SiteRecovering, Use: firstActive(m, site)}
		}
		r.startHold.Store(false)
	}
	if !ok || s.Writable() {
		return nil
	}
	use := s.Use
	if use == "" {
		use = firstActive(m, site)
	}
	return &SiteError{Site: site, State: s.State, Use: use}
}

// Draining reports whether the router's site is draining: its clients'
// writes are held (holdWhileDraining), each until its own deadline, so a
// node does not combine them into one batch, which the first deadline
// would end for all.
func (r *Router) Draining() bool {
	if r.cfg.Site == "" {
		return false
	}
	s, ok := r.cfg.Map().Sites[r.cfg.Site]
	return ok && s.State == gizzard.SiteDraining
}

// firstActive names the first active site of m other than site ("" if
// none).
func firstActive(m *gizzard.Map, site string) string {
	for _, name := range m.SiteNames() {
		if name != site && m.Sites[name].Writable() {
			return name
		}
	}
	return ""
}

// MaxHold bounds how long a draining site holds a client's write; it holds
// it no later than holdMargin before the call's deadline.
const (
	MaxHold    = 2 * time.Second
	holdMargin = 100 * time.Millisecond
)

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// holdWhileDraining returns m if the site takes writes. While the site is
// draining, a client's write is held until the map moves on (fenced: the
// write is refused and its client goes to the site the map names; active
// again: it proceeds) or MaxHold passes (refused as draining): so clients move
// only once what the site acknowledged has reached the other sites, and a
// write never lands at the new site ahead of an older one still draining.
func (r *Router) holdWhileDraining(ctx context.Context, m *gizzard.Map) (*gizzard.Map, error) {
	// Give up in time for the refusal to reach the client.
	until := time.Now().Add(MaxHold)
	if d, ok := ctx.Deadline(); ok {
		until = minTime(until, d.Add(-holdMargin))
	}
	if d, ok := ctx.Value(holdKey{}).(time.Time); ok {
		until = minTime(until, d.Add(-holdMargin))
	}
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	for {
		err := r.siteAdmits(m)
		se, ok := errors.AsType[*SiteError](err)
		if !ok || se.State != gizzard.SiteDraining {
			return m, err
		}
		r.held.Add(1)
		next, werr := r.waitMap(ctx, m.Version+1)
		r.held.Add(-1)
		if werr != nil {
			return nil, err
		}
		m = next
	}
}

type internalKey struct{}

type holdKey struct{}

// HoldUntil bounds how long a write of ctx is held while the site drains
// by deadline, as if it were ctx's deadline, but without ending ctx: for
// a batch that carries writes of several calls (the node's commit queue),
// each refused in time for its own caller's deadline.
func HoldUntil(ctx context.Context, deadline time.Time) context.Context {
	return context.WithValue(ctx, holdKey{}, deadline)
}

// Internal marks ctx as carrying a write of Aviary itself (a timeline
// worker removing the queue entries it delivered, say), which its site's
// state does not stop: only clients' writes are refused by a site that is
// not active. A node serves Aviary's own reads from its own replica when
// it has one.
func Internal(ctx context.Context) context.Context {
	return context.WithValue(ctx, internalKey{}, true)
}

// IsInternal reports whether ctx was marked by Internal.
func IsInternal(ctx context.Context) bool {
	v, _ := ctx.Value(internalKey{}).(bool)
	return v
}

// Held returns how many clients' writes are held while the site drains.
func (r *Router) Held() int { return int(r.held.Load()) }

// Installed tells the router that its node now routes with m: a router
// started recovering lets the map decide from the first map that lists its
// site in a state other than active.
func (r *Router) Installed(m *gizzard.Map) {
	if s, ok := m.Sites[r.cfg.Site]; ok && !s.Writable() {
		r.startHold.Store(false)
	}
}
