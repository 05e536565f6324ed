package gizzard

import "fmt"

// SiteState is what a site does in the multi-site deployment.
type SiteState string

// Site states. Issue 7's DR drills add draining, fenced and recovering.
const (
	// SiteActive takes writes and replicates them to the other sites.
	SiteActive SiteState = "active"
)

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
	if s.State != SiteActive {
		return fmt.Errorf("site %q: state %q is not %q", s.Name, s.State, SiteActive)
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
