package gizzard

import (
	"strings"
	"testing"
)

func TestSites(t *testing.T) {
	m := baseMap(t)
	add := func(op Op, s Site) error { return m.Apply(change(Step{Op: op, Site: &s})) }
	if err := add(OpAddSite, Site{Name: "east", ID: 1, NATSURL: "nats://127.0.0.1:4222"}); err != nil {
		t.Fatal(err)
	}
	if m.Sites["east"].State != SiteActive {
		t.Fatalf("a new site's state: %q", m.Sites["east"].State)
	}
	for _, c := range []struct {
		op   Op
		s    Site
		want string
	}{
		{OpAddSite, Site{Name: "west", ID: 1, NATSURL: "nats://x"}, "taken by site"},
		{OpAddSite, Site{Name: "east", ID: 2, NATSURL: "nats://x"}, "exists already"},
		{OpAddSite, Site{Name: "west", ID: 32, NATSURL: "nats://x"}, "above 31"},
		{OpAddSite, Site{Name: "we st", ID: 3, NATSURL: "nats://x"}, "site name"},
		{OpUpdateSite, Site{Name: "east", ID: 2, NATSURL: "nats://y"}, "never changes"},
		{OpUpdateSite, Site{Name: "north", ID: 4, NATSURL: "nats://y"}, "does not exist"},
	} {
		if err := add(c.op, c.s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want %q", c.op, c.s, err, c.want)
		}
	}
	if err := add(OpUpdateSite, Site{Name: "east", ID: 1, NATSURL: "nats://10.0.0.1:4222"}); err != nil {
		t.Fatal(err)
	}
	if s, ok := m.SiteByID(1); !ok || s.NATSURL != "nats://10.0.0.1:4222" {
		t.Fatalf("SiteByID(1) = %+v, %v", s, ok)
	}
	if err := m.Apply(change(Step{Op: OpRemoveSite, SiteName: "east"})); err != nil {
		t.Fatal(err)
	}
	if len(m.Sites) != 0 {
		t.Fatalf("sites after remove: %v", m.Sites)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSiteStates(t *testing.T) {
	m := baseMap(t)
	apply := func(s Site) error { return m.Apply(change(Step{Op: OpUpdateSite, Site: &s})) }
	for _, s := range []Site{
		{Name: "a", ID: 1, NATSURL: "nats://a"},
		{Name: "b", ID: 2, NATSURL: "nats://b"},
	} {
		if err := m.Apply(change(Step{Op: OpAddSite, Site: &s})); err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range SiteStates {
		if err := apply(Site{Name: "a", ID: 1, NATSURL: "nats://a", State: st}); err != nil {
			t.Fatalf("state %q: %v", st, err)
		}
		if got := m.Sites["a"]; got.State != st || got.Writable() != (st == SiteActive) {
			t.Fatalf("state %q: site %+v writable %v", st, got, got.Writable())
		}
	}
	if err := apply(Site{Name: "a", ID: 1, NATSURL: "nats://a", State: SiteFenced, Use: "b"}); err != nil {
		t.Fatal(err)
	}
	if got := m.Audit[len(m.Audit)-1].What; !strings.Contains(got, `fenced, use "b"`) {
		t.Fatalf("audit: %s", got)
	}
	for _, c := range []struct {
		s    Site
		want string
	}{
		{Site{Name: "a", ID: 1, NATSURL: "nats://a", State: "asleep"}, "not one of"},
		{Site{Name: "a", ID: 1, NATSURL: "nats://a", State: SiteActive, Use: "b"}, "active site sends its clients nowhere"},
		{Site{Name: "a", ID: 1, NATSURL: "nats://a", State: SiteFenced, Use: "a"}, "to itself"},
		{Site{Name: "a", ID: 1, NATSURL: "nats://a", State: SiteFenced, Use: "zz"}, "does not list"},
	} {
		if err := apply(c.s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.s, err, c.want)
		}
	}
	if err := m.Apply(change(Step{Op: OpRemoveSite, SiteName: "b"})); err == nil || !strings.Contains(err.Error(), "does not list") {
		t.Fatalf("removing the site another sends its clients to: %v", err)
	}
}

func TestNote(t *testing.T) {
	m := baseMap(t)
	v := m.Version
	if err := m.Apply(change(Step{Op: OpNote, Note: "drill d-1: failover site-a to site-b: pass"})); err != nil {
		t.Fatal(err)
	}
	if m.Version != v+1 || m.Audit[len(m.Audit)-1].What != "note: drill d-1: failover site-a to site-b: pass" {
		t.Fatalf("version %d, audit %+v", m.Version, m.Audit[len(m.Audit)-1])
	}
	for _, s := range []Step{{Op: OpNote}, {Op: OpNote, Note: strings.Repeat("x", MaxNote+1)}, {Op: OpNote, Note: "x", SiteName: "a"}} {
		if err := m.Apply(change(s)); err == nil {
			t.Errorf("%+v applied", s)
		}
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}
