package router

import (
	"errors"
	"fmt"

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

// siteAdmits returns a *SiteError when m lists site in a state that takes
// no writes. A map that does not list the site (a site with no relay yet)
// admits.
func siteAdmits(m *gizzard.Map, site string) error {
	s, ok := m.Sites[site]
	if !ok || s.Writable() {
		return nil
	}
	use := s.Use
	if use == "" {
		for _, name := range m.SiteNames() {
			if m.Sites[name].Writable() {
				use = name
				break
			}
		}
	}
	return &SiteError{Site: site, State: s.State, Use: use}
}
