package gizzard

import (
	"fmt"
	"slices"
)

// SiteState is what a site does in the multi-site deployment.
type SiteState string

// Site states. Only an active site takes its clients' writes; the others
// refuse them (a router's ErrSiteNotActive) and name the site to use
// instead, while writes replicated from other sites keep being applied. A DR
// drill moves a site active → draining → fenced on failover and fenced →
// recovering → active on failback.
const (
	// SiteActive takes writes and replicates them to the other sites.
	SiteActive SiteState = "active"
	// SiteDraining takes no new writes while those it acknowledged reach
	// the other sites.
	SiteDraining SiteState = "draining"
	// SiteFenced takes no writes: its clients write to another site.
	SiteFenced SiteState = "fenced"
	// SiteRecovering takes no writes while it catches up with the other
	// sites and is verified against them, before it is active again.
	SiteRecovering SiteState = "recovering"
)

// SiteStates lists the states in the order of a drill.
var SiteStates = []SiteState{SiteActive, SiteDraining, SiteFenced, SiteRecovering}

// Valid reports whether s is one of SiteStates.
func (s SiteState) Valid() bool { return slices.Contains(SiteStates, s) }

// Writable reports whether the site takes its clients' writes.
func (s Site) Writable() bool { return s.State == SiteActive }

// MaxSiteID is the largest site id: ids and versions carry 5 bits of it.
const MaxSiteID = 31

// Site is one site (datacenter) of the deployment, as this site knows it:
// every site's map lists every site, itself included.
type Site struct {
	// Name identifies the site (ValidName).
	Name string `json:"name"`
	// ID is the site's number in ids and versions, unique across sites.
	ID uint32 `json:"id"`
	// NATSURL is where the site's replication stream is served.
	NATSURL string    `json:"nats_url"`
	State   SiteState `json:"state"`
	// Use names the site that clients of this one write to while it is
	// not active (empty: any active site).
	Use string `json:"use,omitempty"`
}

func validSite(s Site) error {
	if err := ValidName(s.Name); err != nil {
		return fmt.Errorf("site name: %w", err)
	}
	if s.ID > MaxSiteID {
		return fmt.Errorf("site %q: id %d is above %d", s.Name, s.ID, MaxSiteID)
	}
	if err := validAddr("nats", s.NATSURL); err != nil {
		return fmt.Errorf("site %q: %w", s.Name, err)
	}
	if !s.State.Valid() {
		return fmt.Errorf("site %q: state %q is not one of %v", s.Name, s.State, SiteStates)
	}
	if s.Use != "" {
		if s.State == SiteActive {
			return fmt.Errorf("site %q: an active site sends its clients nowhere else (use %q)", s.Name, s.Use)
		}
		if s.Use == s.Name {
			return fmt.Errorf("site %q: cannot send its clients to itself", s.Name)
		}
		if err := ValidName(s.Use); err != nil {
			return fmt.Errorf("site %q: use: %w", s.Name, err)
		}
	}
	return nil
}

func (a *applier) addSite(s *Site, replace bool) error {
	if s == nil {
		return fmt.Errorf("a site is needed")
	}
	if s.State == "" {
		c := *s
		c.State = SiteActive
		s = &c
	}
	if err := validSite(*s); err != nil {
		return err
	}
	cur, exists := a.m.Sites[s.Name]
	switch {
	case replace && !exists:
		return fmt.Errorf("site %q does not exist", s.Name)
	case !replace && exists:
		return fmt.Errorf("site %q exists already (id %d)", s.Name, cur.ID)
	case replace && cur.ID != s.ID:
		return fmt.Errorf("site %q has id %d; a site's id never changes (ids and versions carry it)", s.Name, cur.ID)
	}
	for _, o := range a.m.Sites {
		if o.Name != s.Name && o.ID == s.ID {
			return fmt.Errorf("site id %d is taken by site %q", s.ID, o.Name)
		}
	}
	if a.m.Sites == nil {
		a.m.Sites = map[string]Site{}
	}
	a.m.Sites[s.Name] = *s
	return nil
}

func (a *applier) removeSite(name string) error {
	if _, ok := a.m.Sites[name]; !ok {
		return fmt.Errorf("site %q does not exist", name)
	}
	delete(a.m.Sites, name)
	return nil
}

// SiteByID returns the site with id, if the map lists it.
func (m *Map) SiteByID(id uint32) (Site, bool) {
	for _, s := range m.Sites {
		if s.ID == id {
			return s, true
		}
	}
	return Site{}, false
}

// SiteNames returns the names of the sites m lists, sorted.
func (m *Map) SiteNames() []string { return sortedKeys(m.Sites) }
