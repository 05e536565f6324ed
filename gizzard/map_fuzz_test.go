package gizzard

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// fuzzMaps returns maps that seed FuzzMapJSON: empty, populated, and with
// sites, a migration and fences.
func fuzzMaps(f *testing.F) []*Map {
	full := NewMap()
	for _, c := range populatedChanges() {
		if err := full.Apply(c); err != nil {
			f.Fatal(err)
		}
	}
	g := Migration{ID: "mig-1", Kind: MigrateMove, Root: "r", Source: "p1", SourceNode: "n1", Dest: "p1-n3", DestNode: "n3", Wrapper: "p1-n3-wo", State: MigrationPlanned, Rate: "20MB/s"}
	for _, c := range []Change{
		change(Step{Op: OpAddSite, Site: &Site{Name: "east", ID: 1, NATSURL: "nats://127.0.0.1:4222"}},
			Step{Op: OpAddSite, Site: &Site{Name: "west", ID: 2, NATSURL: "nats://127.0.0.1:5222", State: SiteDraining, Use: "east"}}),
		change(Step{Op: OpSetMigration, Migration: &g}),
		change(Step{Op: OpNote, Note: "drill report: ok"}),
	} {
		if err := full.Apply(c); err != nil {
			f.Fatal(err)
		}
	}
	return []*Map{NewMap(), full}
}

// FuzzMapJSON decodes arbitrary bytes as a shard map, as a node restores a
// snapshot and as clients and relays read the map a node serves, and uses
// it. Decoding and Validate must never panic. A map that validates must
// re-encode, decode to a map that encodes the same, clone equal, answer
// every lookup and plan without panicking, and take further changes that
// keep it valid.
func FuzzMapJSON(f *testing.F) {
	for _, m := range fuzzMaps(f) {
		b, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{}`,
		`null`,
		`{"version":1,"nodes":null,"tables":null,"shards":null,"forwardings":null,"audit":null}`,
		`{"version":3,"audit":[{"version":3,"at":"2026-01-01T00:00:00+05:00","who":"x","from":"y","what":"z"}]}`,
		`{"version":2,"nodes":{"n1":{"id":"n1"}},"shards":{"a":{"id":"a","kind":"replicating","children":[{"child":"b","weight":1}]},"b":{"id":"b","kind":"replicating","children":[{"child":"a","weight":1}]}}}`,
		`{"version":1,"nodes":{"n1":{"id":"n1"}},"tables":{"t":{"name":"t","kind":"index"}},"shards":{"p":{"id":"p","kind":"physical","node":"n1"}},"forwardings":{"t":[{"table":"t","base":0,"root":"p"},{"table":"t","base":0,"root":"p"}]}}`,
		`{"version":1,"fences":{"p":2},"sites":{"a":{"name":"a","id":1,"state":"active","use":"b"}}}`,
		`{"version":18446744073709551615,"fences":{},"migrations":{},"sites":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMap()
		if json.Unmarshal(data, m) != nil {
			return
		}
		if m.Validate() != nil {
			return
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("a valid map does not encode: %v", err)
		}
		back := NewMap()
		if err := json.Unmarshal(b, back); err != nil {
			t.Fatalf("a valid map's encoding does not decode: %v\n%s", err, b)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("a valid map decodes invalid after a round trip: %v\n%s", err, b)
		}
		if b2, err := json.Marshal(back); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the encoding (%v):\n%s\n%s", err, b, b2)
		}
		if c := m.Clone(); !reflect.DeepEqual(c, m) {
			t.Fatalf("clone differs:\n%+v\n%+v", c, m)
		}

		// Reads of a served map.
		for table, fs := range m.Forwardings {
			for _, fw := range fs {
				for _, h := range []uint64{fw.Base, fw.Base - 1, fw.Base + 1} {
					if got, err := m.Lookup(table, h); err == nil && got.Base > h {
						t.Fatalf("Lookup(%q, %#x) = forwarding at base %#x", table, h, got.Base)
					}
				}
			}
		}
		for id := range m.Shards {
			_ = m.TreeRoot(id)
			_ = m.Parent(id)
			_ = m.Syncing(id)
			_ = m.Fence(id)
		}
		for _, root := range m.Roots() {
			_, _ = m.PlanWrite(root)
			_, _ = m.PlanRead(root, 0)
			_, _ = m.PlanRead(root, ^uint64(0))
		}
		for id := range m.Nodes {
			_ = m.LeavesOnNode(id)
		}
		_ = m.ActiveMigrations()
		_ = m.writeSignatures()
		for _, s := range m.Sites {
			_, _ = m.SiteByID(s.ID)
		}

		// Changes to a restored map.
		for _, c := range []Change{
			change(Step{Op: OpNote, Note: "restored"}),
			change(addNode("zz9"), createPhysical("zz9-p", "zz9")),
			change(Step{Op: OpAddSite, Site: &Site{Name: "zz-site", ID: 31, NATSURL: "nats://x"}}),
		} {
			before, _ := json.Marshal(m)
			next := m.Clone()
			if err := next.Apply(c); err != nil {
				if after, _ := json.Marshal(next); !bytes.Equal(before, after) {
					t.Fatalf("a failed change (%v) altered the map", err)
				}
				continue
			}
			if err := next.Validate(); err != nil {
				t.Fatalf("map invalid after %v: %v", c.Steps, err)
			}
			if next.Version != m.Version+1 {
				t.Fatalf("version %d after a change to version %d", next.Version, m.Version)
			}
		}
	})
}
